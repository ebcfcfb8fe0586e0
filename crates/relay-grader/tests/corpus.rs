//! The grader corpus: `tests/corpus/cases.jsonl`, whose expectations come from running the
//! Python graders (see `tests/corpus/make_cases.py`). Every case must agree, except the
//! ones that carry a `divergence` note: those are deliberate differences, listed on each run.

use relay_grader::{grade, GradeMode};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    gold: String,
    pred: String,
    expected: bool,
    mode: String,
    follows: String,
    category: String,
    #[serde(default)]
    divergence: Option<String>,
}

fn load() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/cases.jsonl");
    let text = std::fs::read_to_string(path).expect("read cases.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("cases.jsonl line {}: {e}", i + 1))
        })
        .collect()
}

#[test]
fn corpus_has_the_promised_coverage() {
    let cases = load();
    assert!(cases.len() >= 300, "only {} cases", cases.len());
    let mut cats: Vec<&str> = cases.iter().map(|c| c.category.as_str()).collect();
    cats.sort_unstable();
    cats.dedup();
    for want in [
        "boxed_extraction",
        "left_right",
        "dfrac_tfrac",
        "degrees",
        "dollars",
        "percent",
        "units_text",
        "assignment",
        "frac_shorthand",
        "sqrt_shorthand",
        "a_slash_b",
        "leading_dot",
        "spaces",
        "tuple",
        "interval",
        "unreduced_fraction",
        "integer_vs_noninteger",
        "symbolic",
        "thousands_separator",
        "fraction_decimal",
        "set_order",
        "matrix",
        "inequality",
        "complex",
        "multiple_choice",
        "final_answer_fallback",
        "garbage",
        "bare_as_written",
    ] {
        assert!(cats.contains(&want), "no case in category {want}");
    }
    for c in &cases {
        assert!(
            matches!(c.follows.as_str(), "math-verify" | "mathruler"),
            "bad follows {:?}",
            c.follows
        );
    }
}

#[test]
fn corpus_agrees_with_the_python_graders() {
    let cases = load();
    let mut failures = Vec::new();
    let mut noted = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mode: GradeMode = c.mode.parse().expect("mode");
        let got = grade(mode, &c.gold, &c.pred);
        if got == c.expected {
            continue;
        }
        let line = format!(
            "#{:<4} [{} / {}] expected {} got {}\n      gold: {:?}\n      pred: {:?}",
            i + 1,
            c.mode,
            c.category,
            c.expected,
            got,
            c.gold,
            c.pred
        );
        match &c.divergence {
            Some(why) => noted.push(format!("{line}\n      why:  {why}")),
            None => failures.push(line),
        }
    }
    if !noted.is_empty() {
        eprintln!(
            "{} documented divergences from the Python graders:\n{}",
            noted.len(),
            noted.join("\n")
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree with the Python graders:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
