//! relay-grader: answer extraction and math equivalence, in pure Rust.
//!
//! Two modes, chosen by [`GradeMode`]:
//! - `mathruler`: the reward grader of the RelayLLM training code (`mathruler.grader`, i.e.
//!   PRM800K's grader): last `\boxed{}`, MATH normalisation, strict rules for fractions and
//!   integers, symbolic equality otherwise. See [`mathruler`].
//! - `verify`: the evaluation grader, behaving like HF math-verify: lenient extraction,
//!   units, percentages, sets, intervals, relations, matrices. See [`verify`].
//!
//! Both share one LaTeX/plain-text expression parser ([`expr`]) and one exact
//! rational / complex-float evaluator ([`eval`]). Grading never panics and
//! never hangs: inputs, nesting, numbers and exponents are capped, every call has a work
//! budget, and the top level is wrapped in `catch_unwind` as a last guard. Garbage in
//! gives `false`.

pub mod eval;
pub mod expr;
pub mod extract;
pub mod mathruler;
pub mod verify;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;

/// Longest response we look at; a response's answer is near its end, so we keep the tail.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest extracted answer or gold answer we try to grade.
const MAX_ANSWER_CHARS: usize = 1000;
/// Work units per grading call (one unit is roughly one node evaluation).
const WORK_BUDGET: u64 = 200_000;

/// Which grader to behave like. Serialises as `"mathruler"` / `"verify"`, as it parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradeMode {
    /// The training reward grader (`mathruler.grader.grade_answer`).
    MathRuler,
    /// The evaluation grader (math-verify).
    Verify,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown grade mode {0:?}: expected \"mathruler\" or \"verify\"")]
pub struct UnknownGradeMode(pub String);

impl FromStr for GradeMode {
    type Err = UnknownGradeMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mathruler" => Ok(GradeMode::MathRuler),
            "verify" => Ok(GradeMode::Verify),
            _ => Err(UnknownGradeMode(s.to_string())),
        }
    }
}

impl std::fmt::Display for GradeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GradeMode::MathRuler => "mathruler",
            GradeMode::Verify => "verify",
        })
    }
}

/// The last `\boxed{...}` or `\fbox{...}` content, with nested braces counted. `None`
/// when there is no box or the last box never closes.
pub fn extract_boxed(text: &str) -> Option<String> {
    guarded(|| extract::extract_boxed(tail(text))).flatten()
}

/// The answer a mode would grade in `text` (a full response or a bare answer).
pub fn extract_answer(mode: GradeMode, text: &str) -> Option<String> {
    guarded(|| extract_inner(mode, tail(text))).flatten()
}

fn extract_inner(mode: GradeMode, text: &str) -> Option<String> {
    match mode {
        GradeMode::MathRuler => {
            if text.contains("\\boxed{") {
                extract::extract_boxed_mathruler(text)
            } else {
                // A bare answer (no box, no prose) is graded as written; a response without a
                // box has no answer, as in the training reward.
                extract::bare_answer(text).map(str::to_string)
            }
        }
        GradeMode::Verify => pick_verify_answer(text),
    }
}

/// The first extraction candidate that reads as math; else the first, compared as text.
fn pick_verify_answer(text: &str) -> Option<String> {
    let candidates: Vec<String> = extract::extract_verify_candidates(text)
        .into_iter()
        .filter(|c| c.chars().count() <= MAX_ANSWER_CHARS)
        .collect();
    let pick = candidates
        .iter()
        .position(|c| verify::parses(c))
        .unwrap_or(0);
    candidates.into_iter().nth(pick)
}

/// Grade a prediction (full response or bare answer) against a bare gold answer.
///
/// `MathRuler` grades the last `\boxed{}`; with no box, a bare answer (no prose) is graded
/// as written and anything else is wrong. `Verify` extracts as math-verify does (box, "final
/// answer is", "answer:", last math, last number) and a bare answer is graded as written.
pub fn grade(mode: GradeMode, gold: &str, pred: &str) -> bool {
    guarded(|| {
        eval::work::reset(WORK_BUDGET);
        let gold = gold.trim();
        if gold.is_empty() || gold.chars().count() > MAX_ANSWER_CHARS {
            return false;
        }
        match mode {
            GradeMode::MathRuler => match extract_inner(mode, tail(pred)) {
                Some(answer) if answer.chars().count() <= MAX_ANSWER_CHARS => {
                    mathruler::grade_answer(&answer, gold)
                }
                _ => false,
            },
            GradeMode::Verify if choice_letter(gold).is_some() => {
                // Multiple choice: compare letters (math-verify's string extraction, A-E).
                extract::extract_choice(tail(pred)).is_some_and(|c| Some(c) == choice_letter(gold))
            }
            GradeMode::Verify => {
                // A gold that does not read as math can only match as text, and math-verify
                // compares it with the first thing it extracted.
                let answer = if verify::parses(gold) {
                    pick_verify_answer(tail(pred))
                } else {
                    extract::extract_verify(tail(pred))
                };
                answer.is_some_and(|answer| verify::grade_extracted(gold, &answer))
            }
        }
    })
    .unwrap_or(false)
}

/// A gold answer that is a choice letter: `C`, `(C)`, `\text{(C)}`, `\textbf{C}`.
fn choice_letter(gold: &str) -> Option<char> {
    let t = gold.trim().trim_matches('$');
    let t = t
        .strip_prefix("\\text{")
        .or_else(|| t.strip_prefix("\\textbf{"))
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or(t);
    let t = t
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(t)
        .trim();
    let mut cs = t.chars();
    match (cs.next(), cs.next()) {
        (Some(c @ 'A'..='E'), None) => Some(c),
        _ => None,
    }
}

/// The last `MAX_RESPONSE_BYTES` of a response, cut at a character boundary.
fn tail(text: &str) -> &str {
    if text.len() <= MAX_RESPONSE_BYTES {
        return text;
    }
    let mut start = text.len() - MAX_RESPONSE_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Run `f`, turning a panic into `None` (a last guard; the code paths do not panic by design).
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    // The panic hook is process-global, so we leave it alone (swapping it would race
    // between grading threads); a panic here is a bug worth seeing on stderr anyway.
    catch_unwind(AssertUnwindSafe(f)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_round_trip() {
        for m in [GradeMode::MathRuler, GradeMode::Verify] {
            assert_eq!(m.to_string().parse::<GradeMode>(), Ok(m));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{m}\""));
            assert_eq!(serde_json::from_str::<GradeMode>(&json).unwrap(), m);
        }
        assert!("sympy".parse::<GradeMode>().is_err());
    }

    #[test]
    fn public_api_basics() {
        assert!(grade(
            GradeMode::Verify,
            "\\frac{1}{2}",
            "so the answer is \\boxed{0.5}"
        ));
        assert!(grade(
            GradeMode::MathRuler,
            "\\frac{1}{2}",
            "\\boxed{\\dfrac12}"
        ));
        assert!(!grade(GradeMode::MathRuler, "\\frac{1}{2}", "\\boxed{2/4}"));
        assert_eq!(
            extract_boxed("a \\boxed{\\frac{1}{2}} b").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(
            extract_answer(
                GradeMode::Verify,
                "The final answer is 18. I hope it is correct."
            )
            .as_deref(),
            Some("18")
        );
        assert!(!grade(GradeMode::Verify, "", "5"));
    }

    #[test]
    fn an_unboxed_answer_is_graded_as_written() {
        let half = "\\frac{1}{2}";
        // A part of a bare answer is not the answer.
        for pred in [
            "\\frac{1}{2}+1",
            "\\sqrt{\\frac{1}{2}}",
            "2\\frac{1}{2}",
            "\\frac{1}{2}x",
        ] {
            assert!(
                !grade(GradeMode::Verify, half, pred),
                "{pred} graded as {half}"
            );
        }
        let row = "\\begin{pmatrix}1 & 1\\end{pmatrix}";
        assert!(!grade(GradeMode::Verify, "1", row));
        // The whole is.
        assert!(grade(GradeMode::Verify, "\\frac{3}{2}", "\\frac{1}{2}+1"));
        assert!(grade(GradeMode::Verify, "\\frac{5}{2}", "2\\frac{1}{2}"));
        assert!(grade(GradeMode::Verify, row, row));
        // Prose keeps its fallbacks: the last number, the last plain fraction.
        assert!(grade(GradeMode::Verify, "72", "... so the answer is 72."));
        assert!(grade(
            GradeMode::Verify,
            half,
            "So the probability is \\frac{1}{2}."
        ));
    }
}
