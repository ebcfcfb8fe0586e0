//! The `mathruler` mode: the reward grader of the RelayLLM training code
//! (`mathruler.grader.grade_answer`, itself PRM800K's grader).
//!
//! Its rules, in order: (1) equal after the Hendrycks MATH normalisation → correct;
//! (2) equal after PRM800K's normalisation (units, `\text{}`, LaTeX rendered to plain text
//! the way pylatexenc does, lower case) → correct; (3) otherwise split tuples/intervals,
//! require the same brackets and length, and per element: two plain fractions must match
//! as written (unreduced `2/4` ≠ `1/2`), an integer never equals a non-integer, and the
//! rest must be symbolically equal (our evaluator standing in for `sympy.simplify`), but
//! only when sympy would have been allowed to try (≤ 2 unknown letters, no `^{`, no
//! multi-digit exponents).

use crate::eval::exprs_equal;
use crate::expr::{parse_expr, Dialect};
use num_bigint::BigInt;
use num_traits::FromPrimitive;

// ---------------------------------------------------------------------------------------
// Stage 1: the Hendrycks MATH normalisation (`math_normalize.normalize_answer`).
// ---------------------------------------------------------------------------------------

/// Python's `re.search(r"^\\text\{(?P<text>.+?)\}$", s)`: the anchor at `$` makes the lazy
/// group run to the final brace.
fn strip_enclosing_text(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("\\text{")?.strip_suffix('}')?;
    if inner.is_empty() || inner.contains('\n') {
        None
    } else {
        Some(inner)
    }
}

fn fix_fracs_hendrycks(s: &str) -> Result<String, ()> {
    let parts: Vec<&str> = s.split("\\frac").collect();
    let mut out = parts[0].to_string();
    for sub in &parts[1..] {
        out.push_str("\\frac");
        let cs: Vec<char> = sub.chars().collect();
        // `substr[0]` on an empty string raises in Python; the caller then keeps the input.
        let first = *cs.first().ok_or(())?;
        if first == '{' {
            out.push_str(sub);
        } else {
            if cs.len() < 2 {
                return Ok(s.to_string());
            }
            let (a, b) = (cs[0], cs[1]);
            let post: String = cs[2..].iter().collect();
            if b != '{' {
                out.push_str(&format!("{{{a}}}{{{b}}}{post}"));
            } else {
                out.push_str(&format!("{{{a}}}{b}{post}"));
            }
        }
    }
    Ok(out)
}

fn py_int(s: &str) -> Option<BigInt> {
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty()
        || !t
            .trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit())
        || t.trim_start_matches('-').is_empty()
    {
        return None;
    }
    t.parse().ok()
}

fn fix_a_slash_b(s: &str) -> String {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() != 2 {
        return s.to_string();
    }
    match (py_int(parts[0]), py_int(parts[1])) {
        (Some(a), Some(b)) if s == format!("{a}/{b}") => format!("\\frac{{{a}}}{{{b}}}"),
        _ => s.to_string(),
    }
}

fn fix_sqrt(s: &str) -> Result<String, ()> {
    if !s.contains("\\sqrt") {
        return Ok(s.to_string());
    }
    let parts: Vec<&str> = s.split("\\sqrt").collect();
    let mut out = parts[0].to_string();
    for sp in &parts[1..] {
        let mut cs = sp.chars();
        let a = cs.next().ok_or(())?;
        if a != '{' {
            out.push_str(&format!("\\sqrt{{{a}}}{}", cs.as_str()));
        } else {
            out.push_str("\\sqrt");
            out.push_str(sp);
        }
    }
    Ok(out)
}

fn strip_string(s: &str) -> Result<String, ()> {
    let mut s = s.replace('\n', "").replace("\\!", "").replace("\\\\", "\\");
    s = s.replace("tfrac", "frac").replace("dfrac", "frac");
    s = s.replace("\\left", "").replace("\\right", "");
    s = s.replace("^{\\circ}", "").replace("^\\circ", "");
    s = s.replace("\\$", "");
    if s.contains("\\text{ ") {
        let parts: Vec<&str> = s.split("\\text{ ").collect();
        if parts.len() != 2 {
            return Err(());
        }
        s = parts[0].to_string();
    }
    s = s.replace("\\%", "").replace('%', "");
    s = s.replace(" .", " 0.").replace("{.", "{0.");
    if s.is_empty() {
        return Ok(s);
    }
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    let eq: Vec<&str> = s.split('=').collect();
    if eq.len() == 2 && eq[0].chars().count() <= 2 {
        s = eq[1].to_string();
    }
    s = fix_sqrt(&s)?;
    s = s.replace(' ', "");
    s = fix_fracs_hendrycks(&s)?;
    if s == "0.5" {
        s = "\\frac{1}{2}".to_string();
    }
    Ok(fix_a_slash_b(&s))
}

/// `math_normalize.normalize_answer`: on any internal error the (text-stripped) input.
pub fn normalize_mathd(answer: &str) -> String {
    let mut a = answer.trim();
    if let Some(inner) = strip_enclosing_text(a) {
        a = inner.trim();
    }
    strip_string(a).unwrap_or_else(|_| a.to_string())
}

// ---------------------------------------------------------------------------------------
// Stage 2: PRM800K's `_normalize`, with LaTeX rendered to text as pylatexenc would.
// ---------------------------------------------------------------------------------------

const UNITS: &[&str] = &[
    "degree",
    "cm",
    "centimeter",
    "meter",
    "mile",
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
    "foot",
    "feet",
    "inch",
    "yard",
];

/// `re.sub(rf"{unit}(es)?(s)? *(\^[0-9]+)?", "", s)`.
fn remove_unit(s: &str, unit: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(unit) {
        out.push_str(&rest[..i]);
        let mut r = &rest[i + unit.len()..];
        r = r.strip_prefix("es").unwrap_or(r);
        r = r.strip_prefix('s').unwrap_or(r);
        r = r.trim_start_matches(' ');
        if let Some(after) = r.strip_prefix('^') {
            let digits = after.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits > 0 {
                r = &after[digits..];
            }
        }
        rest = r;
    }
    out.push_str(rest);
    out
}

/// `_strip_properly_formatted_commas`: `1,234` → `1234` where the comma sits before
/// exactly three digits and then a non-digit or the end.
fn strip_formatted_commas(s: &str) -> String {
    let mut cur: Vec<char> = s.chars().collect();
    loop {
        let mut out = Vec::with_capacity(cur.len());
        let mut i = 0;
        let mut changed = false;
        while i < cur.len() {
            if i + 4 < cur.len() + 1
                && cur[i] == ','
                && i > 0
                && cur[i - 1].is_ascii_digit()
                && cur
                    .get(i + 1..i + 4)
                    .is_some_and(|d| d.iter().all(|c| c.is_ascii_digit()))
                && cur.get(i + 4).is_none_or(|c| !c.is_ascii_digit())
            {
                changed = true;
                i += 1;
                // Python's sub consumes the trailing non-digit, so the next match cannot
                // start inside this one; copying the digits keeps that behaviour.
                out.extend_from_slice(&cur[i..(i + 4).min(cur.len())]);
                i += 4;
                continue;
            }
            out.push(cur[i]);
            i += 1;
        }
        if !changed {
            return out.into_iter().collect();
        }
        cur = out;
    }
}

fn py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    // Python's float() takes `_` between digits (`2516_8` is 25168).
    let owned;
    let t = if t.contains('_') {
        let cs: Vec<char> = t.chars().collect();
        let ok = cs.iter().enumerate().all(|(i, &c)| {
            c != '_'
                || i > 0
                    && i + 1 < cs.len()
                    && cs[i - 1].is_ascii_digit()
                    && cs[i + 1].is_ascii_digit()
        });
        if !ok {
            return None;
        }
        owned = t.replace('_', "");
        owned.as_str()
    } else {
        t
    };
    let l = t.to_ascii_lowercase();
    let l = l.trim_start_matches(['+', '-']);
    if l.starts_with("inf") || l.starts_with("nan") {
        return if l == "inf" || l == "infinity" || l == "nan" {
            t.parse().ok()
        } else {
            None
        };
    }
    t.parse().ok()
}

/// `abs(x - int(round(x))) <= 1e-7`, false for inf/nan (Python raises there).
fn float_is_int(x: f64) -> bool {
    x.is_finite() && (x - x.round()).abs() <= 1e-7
}

fn float_to_int_string(x: f64) -> String {
    // Python's int() of a float is exact (1e20 → 100000000000000000000).
    BigInt::from_f64(x.trunc())
        .map(|b| b.to_string())
        .unwrap_or_default()
}

/// Render LaTeX to plain text the way `pylatexenc.latex2text` does for answers, then map
/// its symbols back to ASCII as `_parse_latex` does.
fn latex_to_text(s: &str) -> String {
    let s = s
        .replace("\\tfrac", "\\frac")
        .replace("\\dfrac", "\\frac")
        .replace("\\frac", " \\frac");
    let chars: Vec<char> = s.chars().collect();
    let mut pos = 0;
    let mut out = String::new();
    render(&chars, &mut pos, &mut out, 0, None);
    out.replace('√', "sqrt")
        .replace('π', "pi")
        .replace('∞', "inf")
        .replace('∪', "U")
        .replace(['·', '×'], "*")
        .trim()
        .to_string()
}

/// One macro argument: a braced group or a single character.
fn render_arg(chars: &[char], pos: &mut usize, depth: usize) -> String {
    while *pos < chars.len() && chars[*pos] == ' ' {
        *pos += 1;
    }
    let mut out = String::new();
    if *pos >= chars.len() {
        return out;
    }
    if chars[*pos] == '{' {
        *pos += 1;
        render(chars, pos, &mut out, depth + 1, Some('}'));
    } else if chars[*pos] == '\\' {
        let mut p = *pos;
        let mut sub = String::new();
        render_command(chars, &mut p, &mut sub, depth + 1);
        *pos = p;
        out = sub;
    } else {
        out.push(chars[*pos]);
        *pos += 1;
    }
    out
}

fn render_command(chars: &[char], pos: &mut usize, out: &mut String, depth: usize) {
    *pos += 1;
    let start = *pos;
    while *pos < chars.len() && chars[*pos].is_ascii_alphabetic() {
        *pos += 1;
    }
    if *pos == start && *pos < chars.len() {
        // A one-character command: `\{`, `\%`, `\,`.
        let c = chars[*pos];
        *pos += 1;
        match c {
            '{' | '}' | '%' | '$' | '&' | '#' | '_' => out.push(c),
            ',' | ';' | ' ' | ':' => out.push(' '),
            '\\' => out.push('\n'),
            _ => {}
        }
        return;
    }
    let name: String = chars[start..*pos].iter().collect();
    match name.as_str() {
        "frac" => {
            let a = render_arg(chars, pos, depth);
            let b = render_arg(chars, pos, depth);
            out.push_str(&format!("{a}/{b}"));
        }
        "sqrt" => {
            if *pos < chars.len() && chars[*pos] == '[' {
                // pylatexenc drops the root index.
                while *pos < chars.len() && chars[*pos] != ']' {
                    *pos += 1;
                }
                *pos += 1;
            }
            let a = render_arg(chars, pos, depth);
            out.push_str(&format!("√({a})"));
        }
        "mathbf" => {
            // pylatexenc writes bold math letters as Unicode bold (𝐱), digits unchanged.
            let a = render_arg(chars, pos, depth);
            out.extend(a.chars().map(|c| match c {
                'A'..='Z' => char::from_u32(0x1D400 + (c as u32 - 'A' as u32)).unwrap_or(c),
                'a'..='z' => char::from_u32(0x1D41A + (c as u32 - 'a' as u32)).unwrap_or(c),
                c => c,
            }));
        }
        "mbox" => {
            // pylatexenc renders `\mbox{..}` as nothing.
            let _ = render_arg(chars, pos, depth);
        }
        "text" | "textbf" | "textit" | "mathrm" | "textrm" | "mathit" | "operatorname"
        | "boxed" => {
            let a = render_arg(chars, pos, depth);
            out.push_str(&a);
        }
        "begin" => {
            let env = render_arg(chars, pos, depth);
            let end_tag: Vec<char> = format!("\\end{{{env}}}").chars().collect();
            let end = (*pos..chars.len()).find(|&k| chars[k..].starts_with(&end_tag));
            if let (true, Some(end)) = (env.ends_with("matrix"), end) {
                // pylatexenc renders a matrix as `[a b; c d]`.
                let body: String = chars[*pos..end].iter().collect();
                let rows: Vec<String> = body
                    .split("\\\\")
                    .map(|row| {
                        row.split('&')
                            .map(|cell| latex_cell(cell, depth))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect();
                out.push_str(&format!("[{}]", rows.join("; ")));
                *pos = end + end_tag.len();
            }
        }
        "end" => {
            let _ = render_arg(chars, pos, depth);
        }
        "left" | "right" | "displaystyle" | "big" | "Big" | "bigl" | "bigr" => {}
        "pi" => out.push('π'),
        "infty" => out.push('∞'),
        "cup" => out.push('∪'),
        "cdot" => out.push('·'),
        "times" => out.push('×'),
        "div" => out.push('÷'),
        "le" | "leq" => out.push('≤'),
        "ge" | "geq" => out.push('≥'),
        "ne" | "neq" => out.push('≠'),
        "pm" => out.push('±'),
        "circ" => out.push('∘'),
        "in" => out.push('∈'),
        "quad" | "qquad" => out.push(' '),
        "alpha" => out.push('α'),
        "beta" => out.push('β'),
        "gamma" => out.push('γ'),
        "theta" => out.push('θ'),
        "lambda" => out.push('λ'),
        "mu" => out.push('μ'),
        "sigma" => out.push('σ'),
        "phi" => out.push('φ'),
        "omega" => out.push('ω'),
        "sin" | "cos" | "tan" | "log" | "ln" | "exp" | "sec" | "csc" | "cot" | "arcsin"
        | "arccos" | "arctan" => out.push_str(&name),
        _ => {}
    }
}

fn latex_cell(cell: &str, depth: usize) -> String {
    let cs: Vec<char> = cell.chars().collect();
    let mut out = String::new();
    let mut p = 0;
    render(&cs, &mut p, &mut out, depth + 1, None);
    out.trim().to_string()
}

fn render(chars: &[char], pos: &mut usize, out: &mut String, depth: usize, close: Option<char>) {
    if depth > 32 {
        *pos = chars.len();
        return;
    }
    while *pos < chars.len() {
        let c = chars[*pos];
        if Some(c) == close {
            *pos += 1;
            return;
        }
        match c {
            '\\' => render_command(chars, pos, out, depth),
            '{' => {
                *pos += 1;
                render(chars, pos, out, depth + 1, Some('}'));
            }
            '~' => {
                out.push(' ');
                *pos += 1;
            }
            '$' => *pos += 1,
            _ => {
                out.push(c);
                *pos += 1;
            }
        }
    }
}

/// PRM800K's `_normalize`.
pub fn normalize_prm(expr: &str) -> String {
    let mut e = expr.to_string();
    if let Some(inner) = strip_enclosing_text(&e) {
        e = inner.to_string();
    }
    e = e
        .replace("\\%", "%")
        .replace("\\$", "$")
        .replace(['$', '%'], "");
    e = e.replace(" or ", " , ").replace(" and ", " , ");
    e = e
        .replace("million", "*10^6")
        .replace("billion", "*10^9")
        .replace("trillion", "*10^12");
    for u in UNITS {
        e = remove_unit(&e, u);
    }
    // `\^ *\\circ`, wherever it occurs.
    let mut from = 0;
    while let Some(k) = e[from..].find('^') {
        let i = from + k;
        let rest = e[i + 1..].trim_start_matches(' ');
        if let Some(after) = rest.strip_prefix("\\circ") {
            e = format!("{}{}", &e[..i], after);
            from = i;
        } else {
            from = i + 1;
        }
    }
    if e.len() >= 2 && e.starts_with('{') && e.ends_with('}') {
        e = e[1..e.len() - 1].to_string();
    }
    // `,\\! *`
    while let Some(i) = e.find(",\\!") {
        let rest = e[i + 3..].trim_start_matches(' ').to_string();
        e = format!("{}{}", &e[..i], rest);
    }
    if let Some(x) = py_float(&e) {
        if float_is_int(x) {
            e = float_to_int_string(x.round());
        }
    }
    if e.contains('\\') {
        e = latex_to_text(&e);
    }
    // `- *` → `-`
    let mut t = String::new();
    let mut chars = e.chars().peekable();
    while let Some(c) = chars.next() {
        t.push(c);
        if c == '-' {
            while chars.peek() == Some(&' ') {
                chars.next();
            }
        }
    }
    // Mixed numbers: `7 3/4` → `7+3/4`.
    let cs: Vec<char> = t.chars().collect();
    let mut m = String::new();
    let mut i = 0;
    while i < cs.len() {
        if cs[i].is_ascii_digit() {
            let mut j = i + 1;
            while j < cs.len() && cs[j] == ' ' {
                j += 1;
            }
            if j > i + 1 && j < cs.len() && cs[j].is_ascii_digit() {
                m.push(cs[i]);
                m.push('+');
                m.push(cs[j]);
                i = j + 1;
                continue;
            }
        }
        m.push(cs[i]);
        i += 1;
    }
    let mut e: String = m
        .chars()
        .filter(|c| !matches!(c, ' ' | '{' | '}'))
        .collect();
    e = e.to_lowercase();
    if str_is_int(&e) {
        if let Some(x) = py_float(&e.replace(',', "")) {
            e = float_to_int_string(x);
        }
    }
    e
}

fn str_is_int(s: &str) -> bool {
    py_float(&strip_formatted_commas(s)).is_some_and(float_is_int)
}

/// `_is_frac`: `^-?[0-9]+.?/0*[1-9][0-9]*.?$`.
fn is_frac(s: &str) -> bool {
    let cs: Vec<char> = s.strip_prefix('-').unwrap_or(s).chars().collect();
    let left_ok = |l: &[char]| {
        let digits = |d: &[char]| !d.is_empty() && d.iter().all(|c| c.is_ascii_digit());
        digits(l) || (l.len() >= 2 && digits(&l[..l.len() - 1]))
    };
    let right_ok = |r: &[char]| {
        let core = |d: &[char]| {
            let z = d.iter().take_while(|c| **c == '0').count();
            let d = &d[z..];
            !d.is_empty()
                && ('1'..='9').contains(&d[0])
                && d[1..].iter().all(|c| c.is_ascii_digit())
        };
        core(r) || (!r.is_empty() && core(&r[..r.len() - 1]))
    };
    (0..cs.len()).any(|k| cs[k] == '/' && left_ok(&cs[..k]) && right_ok(&cs[k + 1..]))
}

const TUPLE_CHARS: &[char] = &['(', ')', '[', ']'];

fn split_tuple(expr: &str) -> Vec<String> {
    let e = strip_formatted_commas(expr);
    if e.is_empty() {
        return Vec::new();
    }
    let cs: Vec<char> = e.chars().collect();
    if cs.len() > 2
        && TUPLE_CHARS.contains(&cs[0])
        && TUPLE_CHARS.contains(&cs[cs.len() - 1])
        && !cs[1..cs.len() - 1].iter().any(|c| TUPLE_CHARS.contains(c))
    {
        let inner: String = cs[1..cs.len() - 1].iter().collect();
        inner.split(',').map(|x| x.trim().to_string()).collect()
    } else {
        vec![e]
    }
}

/// Whether PRM800K would hand the difference to sympy at all.
fn should_allow_eval(expr: &str) -> bool {
    let stripped = expr.replace("sqrt", "").replace("frac", "");
    let mut letters: Vec<char> = stripped.chars().filter(|c| c.is_alphabetic()).collect();
    letters.sort_unstable();
    letters.dedup();
    if letters.len() > 2 || expr.contains("^{") || expr.contains("^(") {
        return false;
    }
    // `\^[0-9]+\^` and `\^[0-9][0-9]+`.
    let cs: Vec<char> = expr.chars().collect();
    for i in 0..cs.len() {
        if cs[i] == '^' {
            let n = cs[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if n >= 2 || n >= 1 && cs.get(i + 1 + n) == Some(&'^') {
                return false;
            }
        }
    }
    true
}

fn equal_under_sympy(gt: &str, given: &str) -> bool {
    if !should_allow_eval(&format!("({gt})-({given})")) {
        return false;
    }
    match (
        parse_expr(gt, Dialect::Plain),
        parse_expr(given, Dialect::Plain),
    ) {
        (Ok(a), Ok(b)) => exprs_equal(&a, &b),
        _ => false,
    }
}

/// `grade_answer(given_answer, ground_truth)` on an already extracted answer.
pub fn grade_answer(given: &str, ground_truth: &str) -> bool {
    if normalize_mathd(ground_truth) == normalize_mathd(given) {
        return true;
    }
    let gt = normalize_prm(ground_truth);
    let gv = normalize_prm(given);
    if gt == gv {
        return true;
    }
    if gv.is_empty() {
        return false;
    }
    let gt_elems = split_tuple(&gt);
    let gv_elems = split_tuple(&gv);
    let (gt_first, gt_last) = (gt.chars().next(), gt.chars().last());
    let (gv_first, gv_last) = (gv.chars().next(), gv.chars().last());
    if gt_elems.len() > 1 && (gt_first != gv_first || gt_last != gv_last) {
        return false;
    }
    if gt_elems.len() != gv_elems.len() {
        return false;
    }
    for (a, b) in gt_elems.iter().zip(&gv_elems) {
        let ok = if is_frac(a) && is_frac(b) {
            a == b
        } else if str_is_int(a) != str_is_int(b) {
            false
        } else {
            equal_under_sympy(a, b)
        };
        if !ok {
            return false;
        }
    }
    // An empty tuple on both sides leaves Python's `is_correct` unbound; treat as wrong.
    !gt_elems.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(gold: &str, given: &str) -> bool {
        crate::eval::work::reset(1_000_000);
        grade_answer(given, gold)
    }

    #[test]
    fn normalisations() {
        assert_eq!(normalize_mathd(r"\dfrac12"), r"\frac{1}{2}");
        assert_eq!(normalize_mathd("x = 3"), "3");
        assert_eq!(normalize_mathd(r"\sqrt3"), r"\sqrt{3}");
        assert_eq!(normalize_mathd(".5"), r"\frac{1}{2}");
        assert_eq!(normalize_prm(r"\frac{1}{2}"), "1/2");
        assert_eq!(
            normalize_prm(r"\left( 3, \frac{\pi}{2} \right)"),
            "(3,pi/2)"
        );
        assert_eq!(normalize_prm(r"3\frac{1}{2}"), "3+1/2");
        assert_eq!(normalize_prm("1,000"), "1000");
        assert_eq!(normalize_prm(r"2\sqrt{3}"), "2sqrt(3)");
    }

    #[test]
    fn rules() {
        assert!(g(r"\frac{1}{2}", "0.5"));
        assert!(!g(r"\frac{1}{2}", "2/4"));
        assert!(!g("2", "2.5"));
        assert!(g(r"2\sqrt{3}", r"\sqrt{12}"));
        assert!(g("(1,2)", "(1, 2)"));
        assert!(!g("(1,2)", "[1,2]"));
        assert!(!g("1024", "2^{10}"));
        assert!(is_frac("3/4") && is_frac("-12/05") && !is_frac("3/0"));
    }
}
