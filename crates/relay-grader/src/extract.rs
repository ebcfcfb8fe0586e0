//! Finding the answer inside a model response.
//!
//! `mathruler` looks only at the last `\boxed{...}`. `verify` follows math-verify's order of
//! preference: boxed answers (adjacent boxes joined, as `\boxed{1}, \boxed{2}`), then
//! "final answer is ...", then "answer: ...", then the last `$...$`-style math, then a bare
//! answer as written or, in prose, the last plain fraction and the last number. Everything
//! here is linear scanning over a length-capped input.

/// Find the matching `}` for the `{` at byte index `open`; returns the content's end.
fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// For every `{` (by byte index), the byte index of its matching `}`; one linear pass, so
/// thousands of unclosed boxes cost no more than one.
fn brace_matches(text: &str) -> Vec<Option<usize>> {
    let mut m = vec![None; text.len()];
    let mut stack = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '{' => stack.push(i),
            '}' => {
                if let Some(o) = stack.pop() {
                    m[o] = Some(i);
                }
            }
            _ => {}
        }
    }
    m
}

/// The `(start of command, end, content)` of every `\boxed`/`\fbox` group, in text order.
fn boxed_groups(text: &str) -> Vec<(usize, usize, String)> {
    let matches = brace_matches(text);
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find('\\') {
        let start = i + off;
        let rest = &text[start..];
        let cmd_len = if rest.starts_with("\\boxed") {
            6
        } else if rest.starts_with("\\fbox") {
            5
        } else {
            i = start + 1;
            continue;
        };
        // Both reference graders want the brace right after the command.
        let j = start + cmd_len;
        if text[j..].starts_with('{') {
            if let Some(end) = matches[j] {
                out.push((start, end + 1, text[j + 1..end].trim().to_string()));
                // Keep scanning inside: a box nested in a box is the later (last) one.
                i = j + 1;
                continue;
            }
        }
        i = start + cmd_len;
    }
    out
}

/// The content of the last `\boxed{}` or `\fbox{}`, with brace counting. `None` when
/// there is no box or the last one is never closed.
pub fn extract_boxed(text: &str) -> Option<String> {
    let last_cmd = text
        .rfind("\\boxed{")
        .into_iter()
        .chain(text.rfind("\\fbox{"))
        .max()?;
    let groups = boxed_groups(text);
    let (start, _, content) = groups.last()?;
    // An unclosed box after the last closed one means the answer was cut off.
    if *start != last_cmd {
        return None;
    }
    Some(content.clone())
}

/// mathruler's extraction: only `\boxed{` (not `\fbox`), last occurrence, brace counted.
pub fn extract_boxed_mathruler(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")?;
    let open = start + "\\boxed".len();
    let end = matching_brace(text, open)?;
    Some(text[open + 1..end].trim().to_string())
}

/// math-verify joins the last boxes when they sit close together or are separated by
/// "and"/"or"/","/";" (as in `\boxed{1} and \boxed{2}`).
pub fn extract_boxed_joined(text: &str) -> Option<String> {
    let groups = boxed_groups(text);
    let last_cmd = text
        .rfind("\\boxed{")
        .into_iter()
        .chain(text.rfind("\\fbox{"))
        .max()?;
    let last_start = groups.last().map(|g| g.0);
    if last_start != Some(last_cmd) {
        return None;
    }
    let mut picked: Vec<&str> = vec![&groups[groups.len() - 1].2];
    for w in groups.windows(2).rev() {
        let (prev, next) = (&w[0], &w[1]);
        if prev.1 > next.0 {
            break; // nested, not adjacent
        }
        let between = &text[prev.1..next.0];
        let near = between.chars().count() < 10;
        let separated = prev.2 != next.2
            && between.chars().count() < 70
            && (between.contains(',')
                || between.contains(';')
                || has_word(between, "and")
                || has_word(between, "or"));
        if !(near || separated) {
            break;
        }
        if picked.last() != Some(&prev.2.as_str()) {
            picked.push(&prev.2);
        }
    }
    picked.reverse();
    Some(picked.join(","))
}

fn has_word(s: &str, w: &str) -> bool {
    s.split(|c: char| !c.is_alphanumeric()).any(|t| t == w)
}

/// A math environment's content: `$...$`, `$$...$$`, `\(...\)`, `\[...\]`.
fn math_envs(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let (open, close): (&str, &str) = if text[i..].starts_with("$$") {
            ("$$", "$$")
        } else if b[i] == b'$' && (i == 0 || b[i - 1] != b'\\') {
            ("$", "$")
        } else if text[i..].starts_with("\\(") {
            ("\\(", "\\)")
        } else if text[i..].starts_with("\\[") {
            ("\\[", "\\]")
        } else {
            i += 1;
            continue;
        };
        let body_start = i + open.len();
        let mut j = body_start;
        let mut found = None;
        while j < b.len() {
            if text.is_char_boundary(j)
                && text[j..].starts_with(close)
                && (j == 0 || b[j - 1] != b'\\' || close != "$")
            {
                found = Some(j);
                break;
            }
            // Inline `$` and `\(` do not span lines.
            if b[j] == b'\n' && (open == "$" || open == "\\(") {
                break;
            }
            j += 1;
        }
        match found {
            Some(j) => {
                let body = text[body_start..j].trim();
                if !body.is_empty() {
                    out.push((i, j + close.len(), body.to_string()));
                }
                i = j + close.len();
            }
            None => i = body_start,
        }
    }
    out
}

/// Text between two math environments that joins them into one answer:
/// `$1$, $2$`, `$1$ and $2$`, `$1$, or $2$` (math-verify joins up to six).
fn is_joiner(between: &str) -> bool {
    let t = between.trim();
    let t = t.strip_prefix(',').unwrap_or(t).trim();
    t.is_empty() || t == "and" || t == "or"
}

fn chain_forward(text: &str, envs: &[(usize, usize, String)], first: usize) -> String {
    let mut parts = vec![envs[first].2.clone()];
    let mut k = first;
    while k + 1 < envs.len() && parts.len() < 6 && is_joiner(&text[envs[k].1..envs[k + 1].0]) {
        k += 1;
        parts.push(envs[k].2.clone());
    }
    parts.join(",")
}

fn chain_backward(text: &str, envs: &[(usize, usize, String)], last: usize) -> String {
    let mut k = last;
    while k > 0 && last - k < 5 && is_joiner(&text[envs[k - 1].1..envs[k].0]) {
        k -= 1;
    }
    chain_forward(text, &envs[..=last], k)
}

/// The text right after `anchor` (case-insensitive, last occurrence), or `None`.
fn after_last(text: &str, anchor: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    lower.rfind(anchor).map(|i| i + anchor.len())
}

/// Read a math answer at the start of `s`: a math environment, or a number/expression
/// token. Stops at sentence punctuation.
fn answer_at(s: &str) -> Option<String> {
    let t = s.trim_start_matches([' ', ':', '\t', '*']);
    let envs = math_envs(t);
    if let Some((start, _, _)) = envs.first() {
        if t[..*start].trim().is_empty() {
            return Some(chain_forward(t, &envs, 0));
        }
    }
    // A plain token: up to the end of the line or a sentence end.
    let line = t.lines().next().unwrap_or("");
    let mut end = line.len();
    for (i, c) in line.char_indices() {
        let next = line[i + c.len_utf8()..].chars().next();
        if (c == '.' || c == ',') && next.is_none_or(|n| n.is_whitespace()) {
            end = i;
            break;
        }
        if c == ';' || c == '!' && next != Some('=') || c == '?' {
            end = i;
            break;
        }
    }
    let tok = line[..end].trim().trim_end_matches("I hope").trim();
    if tok.is_empty() || tok.chars().count() > 200 {
        None
    } else {
        Some(tok.to_string())
    }
}

/// The last number in the text, with thousands separators and percent kept.
pub fn last_number(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = chars.len();
    while i > 0 {
        i -= 1;
        if !chars[i].is_ascii_digit() {
            continue;
        }
        let end = i + 1;
        let mut start = i;
        while start > 0 {
            let c = chars[start - 1];
            let digit_before = start >= 2 && chars[start - 2].is_ascii_digit();
            if c.is_ascii_digit() || (c == '.' || c == ',') && digit_before {
                start -= 1;
            } else {
                break;
            }
        }
        if start > 0 && chars[start - 1] == '-' {
            start -= 1;
        }
        // math-verify only takes numbers that start a word (after a space, `=` or `*`,
        // maybe then a currency sign): not the 2 of "x2", the 5 of an unclosed "\boxed{5",
        // nor the 70 of "\$70".
        let anchor = |k: usize| k == 0 || matches!(chars[k - 1], ' ' | '\n' | '\t' | '=' | '*');
        // An arithmetic expression ending here (`= 1/2`, `3 * 4`) outranks its last number.
        if let Some(e) = expression_ending_at(&chars, start, end, &anchor) {
            return Some(e);
        }
        let currency = start > 0 && matches!(chars[start - 1], '$' | '€' | '£' | '¥' | '₹');
        if !(anchor(start) || currency && anchor(start - 1)) {
            i = start;
            continue;
        }
        let mut s: String = chars[start..end].iter().collect();
        let rest: String = chars[end..chars.len().min(end + 12)].iter().collect();
        let rest_t = rest.trim_start();
        if rest_t.starts_with('%')
            || rest_t.starts_with("\\%")
            || rest_t.to_ascii_lowercase().starts_with("percent")
        {
            s.push('%');
        }
        return Some(s);
    }
    None
}

/// math-verify's plain expression (`1/2`, `3 * (4 + 1)`): digits and operators, with at
/// least one operator, starting after an anchor. `None` when the number stands alone.
fn expression_ending_at(
    chars: &[char],
    num_start: usize,
    end: usize,
    anchor: &dyn Fn(usize) -> bool,
) -> Option<String> {
    let is_expr_char = |c: char| {
        c.is_ascii_digit()
            || matches!(
                c,
                '.' | ' ' | '\t' | '+' | '-' | '*' | '/' | '^' | '(' | ')' | '×' | '÷'
            )
    };
    let mut start = num_start;
    while start > 0 && is_expr_char(chars[start - 1]) && end - start < 200 {
        start -= 1;
    }
    // Move forward to a valid first character: a digit, `(`, or `-` before one of those.
    loop {
        if start >= num_start {
            return None;
        }
        let c = chars[start];
        let next = chars.get(start + 1).copied();
        let starts = c.is_ascii_digit()
            || c == '('
            || c == '-' && next.is_some_and(|n| n.is_ascii_digit() || n == '(');
        if starts && anchor(start) {
            break;
        }
        start += 1;
    }
    let expr: String = chars[start..end].iter().collect();
    let body = expr.trim_start_matches('-');
    let has_operator = body
        .chars()
        .any(|c| matches!(c, '+' | '-' | '*' | '/' | '^' | '×' | '÷'));
    let balanced =
        expr.chars().filter(|&c| c == '(').count() == expr.chars().filter(|&c| c == ')').count();
    (has_operator && balanced).then(|| expr.trim().to_string())
}

/// math-verify-like extraction for `verify` mode.
pub fn extract_verify(text: &str) -> Option<String> {
    extract_verify_candidates(text).into_iter().next()
}

/// Every answer math-verify's patterns would find, best first. math-verify moves on to the
/// next match when one fails to parse, so the grader takes the first candidate that parses.
pub fn extract_verify_candidates(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: Option<String>| {
        if let Some(s) = s {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    };
    // "The final answer is $X$. I hope it is correct." outranks boxes in math-verify.
    if let Some(i) = after_last(text, "final answer is") {
        let tail = &text[i..];
        if tail.len() < 400 && tail.contains("I hope") {
            push(answer_at(tail));
        }
    }
    push(extract_boxed_joined(text));
    push(extract_boxed(text));
    if let Some(i) = after_last(text, "final answer") {
        let tail = &text[i..];
        let window: String = tail.chars().take(110).collect();
        if let Some(k) = window.find(" is") {
            push(answer_at(&tail[k + 3..]));
        }
    }
    for anchor in ["answer:", "answer is", "answer"] {
        if let Some(i) = after_last(text, anchor) {
            let tail = &text[i..];
            // An answer word followed closely by math.
            let envs = math_envs(tail);
            if let Some((start, _, _)) = envs.first() {
                if tail[..*start].chars().count() <= 50 {
                    push(Some(chain_forward(tail, &envs, 0)));
                }
            }
            push(last_number(&tail.chars().take(60).collect::<String>()));
        }
    }
    let envs = math_envs(text);
    if !envs.is_empty() {
        push(Some(chain_backward(text, &envs, envs.len() - 1)));
    }
    match bare_answer(text) {
        // A bare answer is graded as written, as math-verify grades it inside `$...$`: its
        // parts (the `\frac{1}{2}` of `\frac{1}{2}+1`, a matrix's last entry) are not answers.
        Some(t) => push(Some(t.to_string())),
        None => {
            push(last_plain_fraction(text));
            push(last_number(text));
        }
    }
    out.truncate(8);
    out
}

/// A multiple-choice letter A-E in a response: from the box, else after "answer"
/// (`The answer is (C)`, `**Answer:** C`), else a lone `(C)` at the end, as math-verify's
/// string extraction finds it.
pub fn extract_choice(text: &str) -> Option<char> {
    let letter_of = |s: &str| -> Option<char> {
        let t = s.trim().trim_start_matches("\\$").trim_start_matches('$');
        let t = t
            .trim_start_matches("\\text{")
            .trim_start_matches("\\textbf{")
            .trim_end_matches('}');
        let t = t
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .trim();
        let mut cs = t.chars();
        match (cs.next(), cs.next()) {
            (Some(c @ 'A'..='E'), None) => Some(c),
            _ => None,
        }
    };
    if let Some(b) = extract_boxed(text) {
        return letter_of(&b);
    }
    // A standalone letter token: `C`, `(C)`, `C.`, `**C**`.
    let token_letter = |w: &str| -> Option<char> {
        let t = w.trim_matches(|c: char| matches!(c, '*' | '.' | ',' | ':' | '$'));
        letter_of(t)
    };
    if let Some(i) = after_last(text, "answer") {
        let window: String = text[i..].chars().take(60).collect();
        if let Some(c) = window.split_whitespace().find_map(token_letter) {
            return Some(c);
        }
    }
    let last_line = text.trim_end().lines().last().unwrap_or("");
    last_line.split_whitespace().rev().find_map(|w| {
        let t = w.trim_matches(|c: char| matches!(c, '*' | '.' | ',' | ':'));
        (t.starts_with('(') && t.ends_with(')'))
            .then(|| letter_of(t))
            .flatten()
    })
}

/// The last `\frac{a}{b}` with plain numbers, found anywhere (math-verify's last resort
/// for LaTeX outside math delimiters).
fn last_plain_fraction(text: &str) -> Option<String> {
    let mut from = text.len();
    while let Some(i) = text[..from].rfind("\\frac{") {
        let rest = &text[i + 6..];
        let num_end = rest.find('}')?;
        let num = &rest[..num_end];
        let after = &rest[num_end + 1..];
        if let Some(den_rest) = after.strip_prefix('{') {
            if let Some(den_end) = den_rest.find('}') {
                let den = &den_rest[..den_end];
                let simple = |x: &str| {
                    let x = x.strip_prefix('-').unwrap_or(x);
                    !x.is_empty()
                        && x.chars()
                            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
                };
                if simple(num) && simple(den) {
                    let neg = text[..i].ends_with('-');
                    return Some(format!(
                        "{}\\frac{{{num}}}{{{den}}}",
                        if neg { "-" } else { "" }
                    ));
                }
            }
        }
        from = i;
    }
    None
}

/// The trimmed text when it is a bare answer (short, no prose), else `None`.
pub fn bare_answer(text: &str) -> Option<&str> {
    let t = text.trim();
    (!t.is_empty() && t.chars().count() <= 200 && looks_like_bare_answer(t)).then_some(t)
}

/// A short text with no prose: a bare answer such as `3/4`, `\frac{\pi}{2}`, `(1, 2)`.
pub fn looks_like_bare_answer(t: &str) -> bool {
    // Words outside LaTeX commands are prose, except the names of functions.
    const WORDS: &[&str] = &["sqrt", "sin", "cos", "tan", "log", "ln", "exp", "pi"];
    let mut in_command = false;
    let mut command = String::new();
    let mut in_environment_name = false;
    let mut word = String::new();
    let mut ok = true;
    let mut check = |w: &mut String| {
        if w.chars().count() > 1 && !WORDS.contains(&w.as_str()) {
            ok = false;
        }
        w.clear();
    };
    for c in t.chars() {
        if in_environment_name {
            in_environment_name = c != '}';
            continue;
        }
        if c == '\\' {
            check(&mut word);
            in_command = true;
            command.clear();
            continue;
        }
        if c.is_alphabetic() {
            if in_command {
                command.push(c);
            } else {
                word.push(c);
            }
        } else {
            // The `pmatrix` of `\begin{pmatrix}` is LaTeX, not prose.
            in_environment_name =
                in_command && c == '{' && matches!(command.as_str(), "begin" | "end");
            in_command = false;
            check(&mut word);
        }
    }
    check(&mut word);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_with_nested_braces() {
        assert_eq!(
            extract_boxed(r"so \boxed{\frac{1}{2}} done").as_deref(),
            Some(r"\frac{1}{2}")
        );
        assert_eq!(
            extract_boxed(r"\boxed{1} then \fbox{2}").as_deref(),
            Some("2")
        );
        assert_eq!(extract_boxed(r"\boxed{1} then \boxed{2"), None);
        assert_eq!(extract_boxed("none"), None);
    }

    #[test]
    fn joined_boxes() {
        assert_eq!(
            extract_boxed_joined(r"\boxed{1} and \boxed{2}").as_deref(),
            Some("1,2")
        );
    }

    #[test]
    fn fallbacks() {
        assert_eq!(
            extract_verify("The final answer is 18. I hope it is correct.").as_deref(),
            Some("18")
        );
        assert_eq!(
            extract_verify("so the answer is $\\frac{1}{2}$.").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(
            extract_verify("we get 1,234 apples").as_deref(),
            Some("1,234")
        );
    }
}
