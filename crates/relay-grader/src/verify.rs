//! The `verify` mode: the evaluation grader, after HF math-verify.
//!
//! Pipeline: extract the answer (see `extract`), normalise the LaTeX as math-verify's
//! `normalize_latex` does (units, `\text{}`, `\left/\right`, percent words, degrees,
//! thousands separators), read it into an [`Answer`] (expression, tuple, set, interval,
//! union, relation, matrix or word), then compare gold against prediction with
//! math-verify's rules: assignments unwrap (`x = 5` vs `5`), sets ignore order, intervals
//! compare their ends, a decimal on either side compares after rounding to 6 places
//! (`1/3` vs `0.333333`), everything else is exact or symbolic equality.
//!
//! Where we knowingly differ from math-verify (each has a case in `tests/corpus`):
//! - a bare answer (`3/4`, `\frac{\pi}{2}`, no `$` and no box) is graded as written, as
//!   math-verify grades it inside `$...$`; math-verify itself extracts nothing from bare
//!   LaTeX, or only a plain `\frac{a}{b}` or the last number in it (so it credits
//!   `\frac{1}{2}+1` for `\frac{1}{2}`);
//! - `\mathbf{..}`/`\text{..}` around math and a period inside the math (`\boxed{24.}`)
//!   are read as the math; math-verify fails to parse them;
//! - a lone `i` is the imaginary unit (`i^2 = -1`); math-verify keeps it a symbol;
//! - choice letters are compared as letters, including `(C)` and `\text{(C)}` golds.

use crate::eval::{self, exprs_equal, rounded, Val};
use crate::expr::{parse_expr, Dialect, Expr};
use num_bigint::BigInt;
use num_rational::BigRational;

/// Most elements we compare in one tuple, set or matrix.
const MAX_ITEMS: usize = 64;
/// Deepest nesting of tuples inside sets inside unions.
const MAX_NEST: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl RelOp {
    fn flipped(self) -> RelOp {
        match self {
            RelOp::Lt => RelOp::Gt,
            RelOp::Le => RelOp::Ge,
            RelOp::Gt => RelOp::Lt,
            RelOp::Ge => RelOp::Le,
            o => o,
        }
    }
}

/// A parsed answer.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A scalar; `percent` when written with `%` (value is then `e / 100`).
    Expr {
        e: Expr,
        percent: bool,
    },
    /// Ordered: `(1, 2, 3)`.
    Tuple(Vec<Answer>),
    /// Unordered: `\{1, 2\}` or a bare list `1, 2`.
    Set(Vec<Answer>),
    Interval {
        lo: Expr,
        hi: Expr,
        lo_closed: bool,
        hi_closed: bool,
    },
    Union(Vec<Answer>),
    /// A chain `t0 op0 t1 op1 t2 ...`.
    Rel {
        terms: Vec<Expr>,
        ops: Vec<RelOp>,
    },
    Matrix(Vec<Vec<Answer>>),
    /// A word answer (`\text{Evelyn}`), lower-cased.
    Word(String),
}

/// math-verify's unit words, removed when they trail a number.
const UNIT_WORDS: &[&str] = &[
    "integer", "point", "feet", "foot", "digit", "pound", "meal", "edge", "student", "children",
    "multiple", "east", "degree", "mph", "kmph", "ft", "mile", "monkey", "prime", "ratio", "gm",
    "lb", "tile", "per", "dm", "lt", "gain", "way", "west", "men", "soldier", "pie", "excess",
    "inches", "inch", "noon", "cent", "gal", "kmh", "acre", "rise", "sq", "mark", "toy", "coin",
    "gallon", "profit", "yr", "women", "am", "pm", "hr", "square", "rupee", "rounds", "cubic",
    "cc", "mtr", "ohm", "number", "day", "hour", "minute", "min", "second", "man", "woman", "sec",
    "cube", "mt", "hectare", "more", "unit", "rs", "kg", "month", "km", "m", "cm", "mm", "apple",
    "liter", "litre", "loss", "yard", "pure", "year", "increase", "decrease", "less", "metre",
    "meter", "dollar", "cents", "units", "g", "s", "h", "t", "l", "d",
];

/// Remove a trailing unit word after a number (`10 cm`, `5 hours`), twice at most.
fn strip_unit_words(s: &str) -> String {
    let mut s = s.trim().to_string();
    for _ in 0..2 {
        let lower = s.to_ascii_lowercase();
        let mut best: Option<usize> = None;
        for u in UNIT_WORDS {
            for suffix in ["es", "s", ""] {
                let w = format!("{u}{suffix}");
                if lower.ends_with(&w) {
                    let cut = s.len() - w.len();
                    let before = s[..cut].chars().last();
                    // Only after a digit, a closing brace or a space, as math-verify requires.
                    if before.is_some_and(|c| c.is_ascii_digit() || c == '}' || c == ' ') {
                        best = Some(best.map_or(cut, |b: usize| b.min(cut)));
                    }
                }
            }
        }
        match best {
            Some(cut) if !s[..cut].trim().is_empty() => s = s[..cut].trim_end().to_string(),
            _ => break,
        }
    }
    s
}

fn replace_word(s: &str, word: &str, with: &str) -> String {
    // Replace `word` only where it is not part of a longer word or a command name.
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(word) {
        let before = rest[..i].chars().last();
        let after = rest[i + word.len()..].chars().next();
        let isolated = !before.is_some_and(|c| c.is_alphabetic() || c == '\\')
            && !after.is_some_and(|c| c.is_alphabetic());
        out.push_str(&rest[..i]);
        out.push_str(if isolated { with } else { word });
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

/// `\ ` (a LaTeX space) becomes a plain space, but `\\ ` (a row break) stays.
fn backslash_space(s: &str) -> String {
    let cs: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < cs.len() {
        if cs[i] == '\\' && i + 1 < cs.len() && cs[i + 1] == '\\' {
            out.push_str("\\\\");
            i += 2;
        } else if cs[i] == '\\' && i + 1 < cs.len() && cs[i + 1] == ' ' {
            out.push(' ');
            i += 2;
        } else {
            out.push(cs[i]);
            i += 1;
        }
    }
    out
}

/// math-verify's `normalize_latex` with units, malformed operators and nits on.
pub fn normalize(s: &str) -> String {
    let mut s = s.replace(['\n', '\t'], " ");
    for (a, b) in [
        ("\\left.", ""),
        ("\\right.", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\qquad", " "),
        ("\\quad", " "),
        ("\\,", " "),
        ("\\;", " "),
        ("\\:", " "),
        ("\\!", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\mathrm{th}", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("{,}", ","),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cfrac", "\\frac"),
        ("\\mathrm", "\\text"),
        ("\\mathbf", "\\text"),
        ("\\mathit", "\\text"),
        ("\\textbf", "\\text"),
        ("\\textit", "\\text"),
        ("\\textrm", "\\text"),
        ("\\textnormal", "\\text"),
        ("\\mbox", "\\text"),
        ("\\text{percentage}", "\\%"),
        ("\\text{percent}", "\\%"),
        ("\\text{ and }", ","),
        ("\\text{ or }", ","),
        ("\\text{and}", ","),
        ("\\text{or}", ","),
        (",\\ldots", " "),
        ("\\ldots", " "),
        ("\\dots", " "),
        ("\\lbrace", "\\{"),
        ("\\rbrace", "\\}"),
        ("\\lbrack", "["),
        ("\\rbrack", "]"),
        ("\\langle", "("),
        ("\\rangle", ")"),
        ("\\infinity", "\\infty"),
        ("\\emptyset", "\\{\\}"),
        ("\\varnothing", "\\{\\}"),
    ] {
        if s.contains(a) {
            s = s.replace(a, b);
        }
    }
    s = backslash_space(&s);
    for w in ["percentage", "percent", "pct"] {
        s = replace_word(&s, w, "\\%");
    }
    s = replace_word(&s, "infinity", "\\infty");
    s = replace_word(&s, "inf", "\\infty");
    s = replace_word(&s, "and", ",");
    s = replace_word(&s, "or", ",");
    // A trailing `\text{...}` (optionally `^2`) is a unit when something precedes it;
    // twice, for `5 \text{ units}\text{ cm}`.
    for _ in 0..2 {
        s = strip_trailing_text_unit(&s);
    }
    s = strip_unit_words(&s);
    let s = s.trim();
    let mut s = s.to_string();
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    s
}

fn strip_trailing_text_unit(s: &str) -> String {
    let t = s.trim_end();
    if let Some(i) = t.rfind("\\text{") {
        let tail = &t[i..];
        let closes_at_end = tail.find('}').is_some_and(|j| {
            let after = tail[j + 1..].trim();
            // Nothing after it but an optional `^2` / `^{2}` (square units).
            let is_power = |a: &str| {
                let d = a
                    .strip_prefix('^')
                    .map(|r| r.trim_start_matches('{').trim_end_matches('}'));
                d.is_some_and(|d| d.len() == 1 && d.chars().all(|c| c.is_ascii_digit()))
            };
            after.is_empty() || is_power(after)
        });
        if closes_at_end && !t[..i].trim().is_empty() {
            return t[..i].to_string();
        }
    }
    s.to_string()
}

/// `1,234,567.5` (thousands separators) as a plain number, if the whole text is one.
fn thousands_number(s: &str) -> Option<String> {
    let t = s.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t),
    };
    let (int, frac) = match body.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (body, None),
    };
    let groups: Vec<&str> = int.split(',').collect();
    if groups.len() < 2 || groups[0].is_empty() || groups[0].len() > 3 {
        return None;
    }
    if !groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit()))
        || groups[1..].iter().any(|g| g.len() != 3)
    {
        return None;
    }
    if frac.is_some_and(|f| f.is_empty() || !f.chars().all(|c| c.is_ascii_digit())) {
        return None;
    }
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    out.push_str(&groups.concat());
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    Some(out)
}

/// Brackets that nest, for top-level scanning. `\{`/`\}` count as brackets too.
fn depth_delta(chars: &[char], i: usize) -> i32 {
    match chars[i] {
        '(' | '[' | '{' => 1,
        ')' | ']' | '}' => -1,
        _ => 0,
    }
}

/// Split at top-level occurrences of a separator matched by `sep` (returns its length).
fn split_top(s: &str, sep: impl Fn(&[char], usize) -> usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() && matches!(chars[i + 1], '{' | '}') {
            depth += if chars[i + 1] == '{' { 1 } else { -1 };
            i += 2;
            continue;
        }
        if chars[i] == '\\' && i + 1 < chars.len() && chars[i + 1] == '\\' {
            // `\\` is a matrix row break; never a separator by itself.
            if depth == 0 {
                let n = sep(&chars, i);
                if n > 0 {
                    parts.push(chars[start..i].iter().collect());
                    i += n;
                    start = i;
                    continue;
                }
            }
            i += 2;
            continue;
        }
        depth += depth_delta(&chars, i);
        if depth == 0 {
            let n = sep(&chars, i);
            if n > 0 {
                parts.push(chars[start..i].iter().collect());
                i += n;
                start = i;
                continue;
            }
        }
        i += 1;
    }
    parts.push(chars[start..].iter().collect());
    parts
}

fn starts_with_at(chars: &[char], i: usize, pat: &str) -> bool {
    let mut k = i;
    for p in pat.chars() {
        if chars.get(k) != Some(&p) {
            return false;
        }
        k += 1;
    }
    // A command must end at a non-letter (`\le` is not `\left`).
    !(pat.starts_with('\\')
        && pat[1..].chars().all(|c| c.is_ascii_alphabetic())
        && chars.get(k).is_some_and(|c| c.is_ascii_alphabetic()))
}

const REL_TOKENS: &[(&str, RelOp)] = &[
    ("\\leqslant", RelOp::Le),
    ("\\geqslant", RelOp::Ge),
    ("\\leq", RelOp::Le),
    ("\\geq", RelOp::Ge),
    ("\\le", RelOp::Le),
    ("\\ge", RelOp::Ge),
    ("\\neq", RelOp::Ne),
    ("\\ne", RelOp::Ne),
    ("\\lt", RelOp::Lt),
    ("\\gt", RelOp::Gt),
    ("\\approx", RelOp::Eq),
    ("<=", RelOp::Le),
    (">=", RelOp::Ge),
    ("!=", RelOp::Ne),
    ("≤", RelOp::Le),
    ("≥", RelOp::Ge),
    ("≠", RelOp::Ne),
    ("<", RelOp::Lt),
    (">", RelOp::Gt),
    ("=", RelOp::Eq),
];

fn rel_at(chars: &[char], i: usize) -> Option<(usize, RelOp)> {
    REL_TOKENS
        .iter()
        .find(|(t, _)| starts_with_at(chars, i, t))
        .map(|(t, op)| (t.chars().count(), *op))
}

fn parse_scalar(s: &str) -> Option<Answer> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    let (body, percent) = match t.strip_suffix("\\%").or_else(|| t.strip_suffix('%')) {
        Some(b) => (b.trim(), true),
        None => (t, false),
    };
    let body_owned = thousands_number(body);
    let body = body_owned.as_deref().unwrap_or(body);
    match parse_expr(body, Dialect::Latex) {
        Ok(e) => Some(Answer::Expr { e, percent }),
        Err(_) => {
            // A word answer: `\text{Evelyn}`, `Evelyn`, `(C)`.
            let w = word_of(body)?;
            Some(Answer::Word(w))
        }
    }
}

/// The word in `\text{...}`, `\text{(C)}`, `(C)` or plain letters.
fn word_of(s: &str) -> Option<String> {
    let mut t = s.trim();
    if let Some(inner) = t.strip_prefix("\\text{").and_then(|r| r.strip_suffix('}')) {
        t = inner.trim();
    }
    if let Some(inner) = t.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        t = inner.trim();
    }
    let w: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    if !w.is_empty() && w.chars().all(|c| c.is_alphabetic()) {
        Some(w.to_lowercase())
    } else {
        None
    }
}

fn parse_matrix(s: &str, depth: usize) -> Option<Answer> {
    let t = s.trim();
    let rest = t.strip_prefix("\\begin{")?;
    let close = rest.find('}')?;
    let env = &rest[..close];
    if !env.ends_with("matrix") && env != "array" {
        return None;
    }
    let mut body = &rest[close + 1..];
    let end = format!("\\end{{{env}}}");
    body = body.strip_suffix(end.as_str())?;
    if env == "array" {
        // Skip the column spec `{cc}`.
        let b = body.trim_start();
        if b.starts_with('{') {
            body = &b[b.find('}')? + 1..];
        }
    }
    let mut rows = Vec::new();
    for row in body.split("\\\\") {
        if row.trim().is_empty() {
            continue;
        }
        let mut cells = Vec::new();
        for cell in row.split('&') {
            cells.push(parse_answer_at(cell, depth + 1)?);
        }
        rows.push(cells);
    }
    if rows.is_empty()
        || rows.len() * rows[0].len() > MAX_ITEMS
        || rows.iter().any(|r| r.len() != rows[0].len())
    {
        return None;
    }
    Some(Answer::Matrix(rows))
}

/// Read normalised answer text into an [`Answer`].
pub fn parse_answer(s: &str) -> Option<Answer> {
    parse_answer_at(s, 0)
}

fn parse_answer_at(s: &str, depth: usize) -> Option<Answer> {
    if depth > MAX_NEST {
        return None;
    }
    let t = s.trim().trim_end_matches(['.', ' ']).trim();
    if t.is_empty() {
        return None;
    }
    if let Some(n) = thousands_number(t) {
        return parse_scalar(&n);
    }
    // A redundant outer group: `{3, 5, 7}`, `{13535\%}`.
    if t.starts_with('{') && t.ends_with('}') && wraps_whole(t) {
        return parse_answer_at(&t[1..t.len() - 1], depth + 1);
    }
    if t.starts_with("\\begin{") {
        return parse_matrix(t, depth);
    }
    // `x \in [1, 2]` is the interval itself.
    if let Some(i) = t.find("\\in") {
        let lhs = t[..i].trim();
        if lhs.chars().count() <= 2 && !t[i + 3..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            return parse_answer_at(&t[i + 3..], depth + 1);
        }
    }
    let union = split_top(t, |c, i| {
        if starts_with_at(c, i, "\\cup") {
            4
        } else if c[i] == '∪' {
            1
        } else {
            0
        }
    });
    if union.len() > 1 {
        let parts: Option<Vec<Answer>> = union
            .iter()
            .map(|p| parse_answer_at(p, depth + 1))
            .collect();
        return Some(Answer::Union(parts?));
    }
    let items = split_top(t, |c, i| usize::from(c[i] == ',' || c[i] == ';'));
    if items.len() > MAX_ITEMS {
        return None;
    }
    if items.len() > 1 {
        let parsed: Option<Vec<Answer>> = items
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| parse_answer_at(p, depth + 1))
            .collect();
        return Some(Answer::Set(parsed?));
    }
    if let Some(inner) = t.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}")) {
        if split_top(inner, |_, _| 0).len() == 1 && wraps_whole(t) {
            let parts = split_top(inner, |c, i| usize::from(c[i] == ',' || c[i] == ';'));
            if parts.len() > MAX_ITEMS {
                return None;
            }
            let parsed: Option<Vec<Answer>> = parts
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| parse_answer_at(p, depth + 1))
                .collect();
            return Some(Answer::Set(parsed?));
        }
    }
    let first = t.chars().next()?;
    let last = t.chars().last()?;
    // Redundant parentheses around a whole answer: `((2,12) \cup (12,102))`, `(17.5\%)`.
    if first == '('
        && last == ')'
        && wraps_whole(t)
        && split_top(&t[1..t.len() - 1], |c, i| usize::from(c[i] == ',')).len() == 1
    {
        if let Some(a) = parse_answer_at(&t[1..t.len() - 1], depth + 1) {
            return Some(a);
        }
    }
    if matches!(first, '(' | '[') && matches!(last, ')' | ']') && wraps_whole(t) {
        let inner: String = {
            let cs: Vec<char> = t.chars().collect();
            cs[1..cs.len() - 1].iter().collect()
        };
        let parts = split_top(&inner, |c, i| usize::from(c[i] == ','));
        if parts.len() > MAX_ITEMS {
            return None;
        }
        if parts.len() == 2 {
            let lo = parse_expr(parts[0].trim(), Dialect::Latex).ok();
            let hi = parse_expr(parts[1].trim(), Dialect::Latex).ok();
            if let (Some(lo), Some(hi)) = (lo, hi) {
                return Some(Answer::Interval {
                    lo,
                    hi,
                    lo_closed: first == '[',
                    hi_closed: last == ']',
                });
            }
        }
        if parts.len() >= 2 {
            let parsed: Option<Vec<Answer>> = parts
                .iter()
                .map(|p| parse_answer_at(p, depth + 1))
                .collect();
            return Some(Answer::Tuple(parsed?));
        }
    }
    // `a \pm b` is the two answers `a + b` and `a - b`.
    if let Some(i) = t.find("\\pm") {
        if !t[i + 3..].contains("\\pm")
            && !t[i + 3..].starts_with(|c: char| c.is_ascii_alphabetic())
        {
            let (a, b) = (&t[..i], &t[i + 3..]);
            let plus = parse_answer_at(&format!("{a}+{b}"), depth + 1)?;
            let minus = parse_answer_at(&format!("{a}-{b}"), depth + 1)?;
            return Some(Answer::Set(vec![plus, minus]));
        }
    }
    // Relations and chains: `x = 5`, `1 < x \le 3`.
    let mut ops = Vec::new();
    let pieces = {
        let chars: Vec<char> = t.chars().collect();
        let mut found = Vec::new();
        let mut depth_b = 0i32;
        let mut i = 0;
        let mut start = 0;
        while i < chars.len() {
            depth_b += depth_delta(&chars, i);
            if depth_b == 0 {
                if let Some((n, op)) = rel_at(&chars, i) {
                    found.push(chars[start..i].iter().collect::<String>());
                    ops.push(op);
                    i += n;
                    start = i;
                    continue;
                }
            }
            i += 1;
        }
        found.push(chars[start..].iter().collect::<String>());
        found
    };
    if !ops.is_empty() {
        let terms: Option<Vec<Expr>> = pieces
            .iter()
            .map(|p| parse_expr(p.trim(), Dialect::Latex).ok())
            .collect();
        if let Some(terms) = terms {
            return Some(Answer::Rel { terms, ops });
        }
        // `x = (3, 4]`: an assignment whose value is a tuple, set or interval.
        let lhs = pieces[0].trim();
        if ops == [RelOp::Eq]
            && !lhs.is_empty()
            && lhs.chars().count() <= 2
            && lhs.chars().all(|c| c.is_alphabetic())
        {
            return parse_answer_at(&pieces[1], depth + 1);
        }
        return None;
    }
    parse_scalar(t)
}

/// True when the first bracket of `t` closes at its last character.
fn wraps_whole(t: &str) -> bool {
    let chars: Vec<char> = t.chars().collect();
    let mut depth = 0i32;
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() && matches!(chars[i + 1], '{' | '}') {
            depth += if chars[i + 1] == '{' { 1 } else { -1 };
            i += 2;
            if depth == 0 && i < chars.len() {
                return false;
            }
            continue;
        }
        depth += depth_delta(&chars, i);
        if depth == 0 && i + 1 < chars.len() {
            return false;
        }
        i += 1;
    }
    depth == 0
}

fn is_plain_numberish(e: &Expr) -> bool {
    match e {
        Expr::Num { .. } => true,
        Expr::Neg(a) => is_plain_numberish(a),
        Expr::Add(v) | Expr::Mul(v) => v.iter().all(is_plain_numberish),
        Expr::Div(a, b) => is_plain_numberish(a) && is_plain_numberish(b),
        Expr::Pow(a, b) => {
            is_plain_numberish(a) && matches!(b.as_number(), Some((r, false)) if r.is_integer())
        }
        _ => false,
    }
}

fn has_decimal(e: &Expr) -> bool {
    match e {
        Expr::Num { decimal, .. } => *decimal,
        Expr::Neg(a) => has_decimal(a),
        Expr::Add(v) | Expr::Mul(v) | Expr::Call(_, v) => v.iter().any(has_decimal),
        Expr::Div(a, b) | Expr::Pow(a, b) => has_decimal(a) || has_decimal(b),
        _ => false,
    }
}

fn with_percent(e: &Expr, percent: bool) -> Expr {
    if percent {
        Expr::Div(Box::new(e.clone()), Box::new(Expr::int(100)))
    } else {
        e.clone()
    }
}

/// An "atomic number" in sympy's sense: arithmetic on literals, which sympy folds.
fn atomic(e: &Expr) -> Option<(BigRational, bool)> {
    if !is_plain_numberish(e) {
        return None;
    }
    match eval::eval(e, &[]) {
        Ok(Val::Exact(r)) => Some((r, has_decimal(e))),
        _ => None,
    }
}

/// Scalar equality with math-verify's numeric rules.
fn scalar_eq(g: &Expr, gp: bool, p: &Expr, pp: bool) -> bool {
    let ga = atomic(g);
    let pa = atomic(p);
    if ga.is_some() || pa.is_some() {
        let g_dec = ga.as_ref().is_some_and(|a| a.1);
        let p_dec = pa.as_ref().is_some_and(|a| a.1);
        if g_dec || p_dec {
            let gv = eval::eval(&with_percent(g, gp), &[]);
            let pv = eval::eval(&with_percent(p, pp), &[]);
            let is_int = |v: &Val| matches!(v, Val::Exact(r) if r.is_integer());
            return match (gv, pv) {
                // sympy keeps an Integer as it is when rounding, and a rounded Float never
                // equals it unless it was exactly that integer: 1 ≠ 0.9999999, 2 = 2.0.
                (Ok(a), Ok(b)) if !g_dec && is_int(&a) || !p_dec && is_int(&b) => {
                    eval::values_equal(&a, &b)
                }
                (Ok(a), Ok(b)) => match (rounded(&a, 6), rounded(&b, 6)) {
                    (Some(x), Some(y)) => x == y,
                    _ => false,
                },
                _ => false,
            };
        }
        if let (Some((a, _)), Some((b, _))) = (&ga, &pa) {
            // `9%` against `9`: integers compare by their written value.
            if a.is_integer() && b.is_integer() && a == b {
                return true;
            }
        }
    }
    exprs_equal(&with_percent(g, gp), &with_percent(p, pp))
}

fn is_symbol_only(e: &Expr) -> bool {
    matches!(e, Expr::Sym(_)) || e.as_word().is_some() && !matches!(e, Expr::E | Expr::I)
}

fn is_assignment(a: &Answer) -> bool {
    matches!(a, Answer::Rel { terms, ops } if ops.iter().all(|o| *o == RelOp::Eq) && is_symbol_only(&terms[0]))
}

fn is_equation(a: &Answer) -> bool {
    matches!(a, Answer::Rel { ops, .. } if ops.iter().all(|o| *o == RelOp::Eq))
}

fn last_rhs(a: &Answer) -> Answer {
    match a {
        Answer::Rel { terms, .. } => Answer::Expr {
            e: terms[terms.len() - 1].clone(),
            percent: false,
        },
        a => a.clone(),
    }
}

fn infinity_sign(e: &Expr) -> Option<i8> {
    match e {
        Expr::Inf => Some(1),
        Expr::Neg(a) => infinity_sign(a).map(|s| -s),
        _ => None,
    }
}

fn endpoint_eq(a: &Expr, b: &Expr) -> bool {
    match (infinity_sign(a), infinity_sign(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => scalar_eq(a, false, b, false),
        _ => false,
    }
}

/// A one-variable relation as the interval it describes (`x < 3` → `(-∞, 3)`).
fn relation_as_interval(terms: &[Expr], ops: &[RelOp]) -> Option<Answer> {
    let is_var = |e: &Expr| matches!(e, Expr::Sym(_));
    let neg_inf = Expr::Neg(Box::new(Expr::Inf));
    match (terms, ops) {
        ([a, b], [op]) => {
            let (var_left, bound) = if is_var(a) {
                (true, b)
            } else if is_var(b) {
                (false, a)
            } else {
                return None;
            };
            let op = if var_left { *op } else { op.flipped() };
            Some(match op {
                RelOp::Lt => Answer::Interval {
                    lo: neg_inf,
                    hi: bound.clone(),
                    lo_closed: false,
                    hi_closed: false,
                },
                RelOp::Le => Answer::Interval {
                    lo: neg_inf,
                    hi: bound.clone(),
                    lo_closed: false,
                    hi_closed: true,
                },
                RelOp::Gt => Answer::Interval {
                    lo: bound.clone(),
                    hi: Expr::Inf,
                    lo_closed: false,
                    hi_closed: false,
                },
                RelOp::Ge => Answer::Interval {
                    lo: bound.clone(),
                    hi: Expr::Inf,
                    lo_closed: true,
                    hi_closed: false,
                },
                _ => return None,
            })
        }
        ([a, x, b], [o1, o2]) if is_var(x) => {
            let (lo_op, hi_op, lo, hi) = match (o1, o2) {
                (RelOp::Lt | RelOp::Le, RelOp::Lt | RelOp::Le) => (*o1, *o2, a, b),
                (RelOp::Gt | RelOp::Ge, RelOp::Gt | RelOp::Ge) => {
                    (o2.flipped(), o1.flipped(), b, a)
                }
                _ => return None,
            };
            Some(Answer::Interval {
                lo: lo.clone(),
                hi: hi.clone(),
                lo_closed: lo_op == RelOp::Le,
                hi_closed: hi_op == RelOp::Le,
            })
        }
        _ => None,
    }
}

/// `a op b` and `c op' d` say the same: same direction and `a-b` a positive multiple of
/// `c-d` (or the flipped direction and a negative multiple). Equations allow any nonzero
/// multiple, which is what solving both sides (math-verify) amounts to.
fn relation_eq(g: (&Expr, RelOp, &Expr), p: (&Expr, RelOp, &Expr)) -> bool {
    let dg = Expr::Add(vec![g.0.clone(), Expr::Neg(Box::new(g.2.clone()))]);
    let dp = Expr::Add(vec![p.0.clone(), Expr::Neg(Box::new(p.2.clone()))]);
    let same = g.1 == p.1;
    let flipped = g.1.flipped() == p.1 && g.1 != p.1;
    if (same || g.1 == RelOp::Eq && p.1 == RelOp::Eq || g.1 == RelOp::Ne && p.1 == RelOp::Ne)
        && exprs_equal(&dg, &dp)
    {
        return true;
    }
    if (flipped || g.1 == RelOp::Eq && p.1 == RelOp::Eq || g.1 == RelOp::Ne && p.1 == RelOp::Ne)
        && exprs_equal(&dg, &Expr::Neg(Box::new(dp.clone())))
    {
        return true;
    }
    // Scaled: the ratio of the two differences is a constant.
    let ratio = Expr::Div(Box::new(dg), Box::new(dp));
    let mut syms = Vec::new();
    ratio.symbols(&mut syms);
    if syms.is_empty() {
        return false;
    }
    for k in 1..=6i64 {
        for c in [
            BigRational::from_integer(BigInt::from(k)),
            BigRational::new(BigInt::from(1), BigInt::from(k)),
        ] {
            for sign in [1i64, -1] {
                let cval = c.clone() * BigRational::from_integer(BigInt::from(sign));
                // Only equations: math-verify's `solve` fails on inequalities, so `2x < 6`
                // and `x < 3` stay different there.
                let ok_dir = matches!((g.1, p.1), (RelOp::Eq, RelOp::Eq));
                if ok_dir
                    && exprs_equal(
                        &ratio,
                        &Expr::Num {
                            value: cval,
                            decimal: false,
                        },
                    )
                {
                    return true;
                }
            }
        }
    }
    false
}

fn items_eq_ordered(g: &[Answer], p: &[Answer], depth: usize) -> bool {
    g.len() == p.len() && g.iter().zip(p).all(|(a, b)| answers_eq_at(a, b, depth + 1))
}

/// A set's distinct elements (`{5, 5}` is `{5}`).
fn dedup(items: &[Answer], depth: usize) -> Vec<Answer> {
    let mut out: Vec<Answer> = Vec::new();
    for a in items {
        if !out.iter().any(|b| answers_eq_at(b, a, depth + 1)) {
            out.push(a.clone());
        }
    }
    out
}

fn items_eq_unordered(g: &[Answer], p: &[Answer], depth: usize) -> bool {
    let (g, p) = (&dedup(g, depth)[..], &dedup(p, depth)[..]);
    if g.len() != p.len() {
        return false;
    }
    let mut used = vec![false; p.len()];
    'outer: for a in g {
        for (j, b) in p.iter().enumerate() {
            if !used[j] && answers_eq_at(a, b, depth + 1) {
                used[j] = true;
                continue 'outer;
            }
        }
        return false;
    }
    true
}

/// Compare gold against prediction (not symmetric, like math-verify).
pub fn answers_eq(gold: &Answer, pred: &Answer) -> bool {
    answers_eq_at(gold, pred, 0)
}

fn answers_eq_at(gold: &Answer, pred: &Answer, depth: usize) -> bool {
    if depth > MAX_NEST || !eval::work::spend(10) {
        return false;
    }
    let mut g = gold.clone();
    let mut p = pred.clone();
    // Follow the gold's format: `x = 5` against `5` compares 5 with 5.
    if is_equation(&p) && !is_equation(&g) {
        p = last_rhs(&p);
    } else if is_assignment(&g) && !is_equation(&p) {
        g = last_rhs(&g);
    }
    if let (Answer::Rel { terms, ops }, Answer::Interval { .. } | Answer::Union(_)) = (&g, &p) {
        if let Some(i) = relation_as_interval(terms, ops) {
            g = i;
        }
    }
    match (&g, &p) {
        (Answer::Expr { e: a, percent: ap }, Answer::Expr { e: b, percent: bp }) => {
            if let (Some(wa), Some(wb)) = (a.as_word(), b.as_word()) {
                if wa.chars().count() > 1 || wb.chars().count() > 1 {
                    return wa.to_lowercase() == wb.to_lowercase();
                }
            }
            scalar_eq(a, *ap, b, *bp)
        }
        (Answer::Word(a), Answer::Word(b)) => a == b,
        (Answer::Word(w), Answer::Expr { e, .. }) | (Answer::Expr { e, .. }, Answer::Word(w)) => {
            e.as_word().is_some_and(|x| x.to_lowercase() == *w)
        }
        (Answer::Rel { terms: gt, ops: go }, Answer::Rel { terms: pt, ops: po }) => {
            if go.len() != po.len() {
                return false;
            }
            if is_assignment(&g) && is_assignment(&p) {
                // `x = 5` vs `y = 5` differ; compare the names and the last values.
                return gt[0].as_word() == pt[0].as_word()
                    && scalar_eq(&gt[gt.len() - 1], false, &pt[pt.len() - 1], false);
            }
            (0..go.len())
                .all(|k| relation_eq((&gt[k], go[k], &gt[k + 1]), (&pt[k], po[k], &pt[k + 1])))
        }
        (
            Answer::Interval {
                lo: a0,
                hi: a1,
                lo_closed: ac0,
                hi_closed: ac1,
            },
            Answer::Interval {
                lo: b0,
                hi: b1,
                lo_closed: bc0,
                hi_closed: bc1,
            },
        ) => ac0 == bc0 && ac1 == bc1 && endpoint_eq(a0, b0) && endpoint_eq(a1, b1),
        (
            Answer::Interval {
                lo,
                hi,
                lo_closed: false,
                hi_closed: false,
            },
            Answer::Set(items) | Answer::Tuple(items),
        ) => {
            let pair = [
                Answer::Expr {
                    e: lo.clone(),
                    percent: false,
                },
                Answer::Expr {
                    e: hi.clone(),
                    percent: false,
                },
            ];
            items_eq_ordered(&pair, items, depth)
        }
        (
            Answer::Set(items) | Answer::Tuple(items),
            Answer::Interval {
                lo,
                hi,
                lo_closed: false,
                hi_closed: false,
            },
        ) => {
            let pair = [
                Answer::Expr {
                    e: lo.clone(),
                    percent: false,
                },
                Answer::Expr {
                    e: hi.clone(),
                    percent: false,
                },
            ];
            items_eq_ordered(items, &pair, depth)
        }
        (Answer::Tuple(a), Answer::Tuple(b)) => items_eq_ordered(a, b, depth),
        (Answer::Tuple(a), Answer::Set(b)) => items_eq_ordered(a, b, depth),
        (Answer::Set(a), Answer::Set(b) | Answer::Tuple(b)) => items_eq_unordered(a, b, depth),
        (Answer::Union(a), Answer::Union(b)) => items_eq_unordered(a, b, depth),
        (Answer::Matrix(a), Answer::Matrix(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(ra, rb)| items_eq_ordered(ra, rb, depth))
        }
        // A single column/row matrix and a tuple are the same vector in answers.
        (Answer::Matrix(m), Answer::Tuple(t)) | (Answer::Tuple(t), Answer::Matrix(m)) => {
            let flat: Vec<Answer> = m.iter().flatten().cloned().collect();
            (m.len() == 1 || m.iter().all(|r| r.len() == 1)) && items_eq_ordered(&flat, t, depth)
        }
        // A lone value against a one-element set.
        (Answer::Set(a), b) if dedup(a, depth).len() == 1 => answers_eq_at(&a[0], b, depth + 1),
        (a, Answer::Set(b)) if dedup(b, depth).len() == 1 => answers_eq_at(a, &b[0], depth + 1),
        _ => false,
    }
}

/// Strip boxes inside an answer (`\boxed{\boxed{3}}`, a gold written as `\boxed{3}`).
fn unbox(s: &str) -> String {
    let mut cur = s.to_string();
    for _ in 0..4 {
        match crate::extract::extract_boxed_joined(&cur) {
            Some(inner) if inner != cur => cur = inner,
            _ => break,
        }
    }
    cur
}

/// Whether an extracted answer reads as math at all.
pub fn parses(answer: &str) -> bool {
    parse_answer(&normalize(&unbox(answer))).is_some()
}

/// Grade a bare gold answer against an extracted prediction.
pub fn grade_extracted(gold: &str, pred: &str) -> bool {
    let gold_text = unbox(gold);
    let pred = &unbox(pred);
    let (Some(g), Some(p)) = (
        parse_answer(&normalize(&gold_text)),
        parse_answer(&normalize(pred)),
    ) else {
        // Neither side parses: math-verify falls back to comparing the strings.
        let (a, b) = (normalize(&gold_text), normalize(pred));
        return !a.is_empty() && a == b;
    };
    answers_eq(&g, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(gold: &str, pred: &str) -> bool {
        eval::work::reset(1_000_000);
        grade_extracted(gold, pred)
    }

    #[test]
    fn basics() {
        assert!(g("1000", "1,000"));
        assert!(g(r"\frac{1}{3}", "0.333333"));
        assert!(!g(r"\frac{1}{3}", "0.33"));
        assert!(g(r"\{1,2\}", "2,1"));
        assert!(g("(1,2)", "1,2"));
        assert!(!g("[1,2]", "(1,2)"));
        assert!(g("x=5", "5"));
        assert!(g("5", "x=5"));
        assert!(g(r"50\%", "0.5"));
        assert!(g("50", r"50\%"));
        assert!(g("3+4i", "4i+3"));
        assert!(g("x<3", "3>x"));
        assert!(g(r"\text{Evelyn}", "Evelyn"));
        assert!(g("10", r"10\text{ cm}"));
        assert!(g(r"90^\circ", "90"));
        assert!(g(
            r"\begin{pmatrix}1\\2\end{pmatrix}",
            r"\begin{pmatrix}1\\2\end{pmatrix}"
        ));
    }
}
