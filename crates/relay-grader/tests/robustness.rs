//! Hostile input: random strings and random nested LaTeX-ish text never panic and each
//! grade finishes quickly. The time bound is generous (it only catches hangs); the inner
//! functions are called without the `catch_unwind` guard so that a panic fails the test.

use proptest::prelude::*;
use relay_grader::{eval::work, extract, grade, mathruler, verify, GradeMode};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_millis(200);

fn short(s: &str) -> String {
    let head: String = s.chars().take(120).collect();
    if head.len() < s.len() {
        format!("{head}… ({} bytes)", s.len())
    } else {
        head
    }
}

/// Every path a grade takes, unguarded, plus the public guarded entry points.
fn exercise(gold: &str, pred: &str) {
    for mode in [GradeMode::MathRuler, GradeMode::Verify] {
        let t = Instant::now();
        let _ = grade(mode, gold, pred);
        let took = t.elapsed();
        assert!(
            took < BOUND,
            "{mode} took {took:?} on gold {:?} pred {:?}",
            short(gold),
            short(pred)
        );
    }
    work::reset(200_000);
    let _ = extract::extract_boxed(pred);
    let _ = extract::extract_verify(pred);
    let _ = extract::extract_boxed_joined(pred);
    work::reset(200_000);
    let _ = verify::grade_extracted(gold, pred);
    work::reset(200_000);
    let _ = mathruler::grade_answer(pred, gold);
    work::reset(200_000);
    let _ = mathruler::grade_answer(gold, pred);
}

/// LaTeX-ish text: commands, braces, scripts, numbers and operators, nested.
fn latexish() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        "[0-9]{1,12}",
        "[0-9]{1,3}\\.[0-9]{1,4}",
        "[a-zA-Z]",
        Just("\\pi".to_string()),
        Just("\\infty".to_string()),
        Just("i".to_string()),
        Just("e".to_string()),
        Just(",".to_string()),
        Just("\\%".to_string()),
        Just("^\\circ".to_string()),
        Just("\\text{ cm}".to_string()),
        Just("\\left(".to_string()),
        Just("\\right]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("\\\\".to_string()),
        Just("&".to_string()),
        "[-+*/^_=<>|!(),\\[\\] ]",
    ];
    leaf.prop_recursive(6, 64, 4, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("\\frac{{{a}}}{{{b}}}")),
            inner.clone().prop_map(|a| format!("\\sqrt{{{a}}}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}^{{{b}}}")),
            inner.clone().prop_map(|a| format!("\\boxed{{{a}}}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("\\{{{a}\\}}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}{b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}, {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} \\le {b}")),
            inner
                .clone()
                .prop_map(|a| format!("\\begin{{pmatrix}}{a}&{a}\\\\{a}&{a}\\end{{pmatrix}}")),
            inner.clone().prop_map(|a| format!("\\sin^{{2}} {a}")),
            inner.clone().prop_map(|a| format!("\\log_{{2}} {a}")),
            inner.clone().prop_map(|a| format!("{a}!")),
            inner.clone().prop_map(|a| format!("\\binom{{{a}}}{{3}}")),
            inner.prop_map(|a| format!("The final answer is ${a}$. I hope it is correct.")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_strings_never_panic(gold in "\\PC{0,80}", pred in "\\PC{0,300}") {
        exercise(&gold, &pred);
    }

    #[test]
    fn random_latex_never_panics(gold in latexish(), pred in latexish()) {
        exercise(&gold, &pred);
        exercise(&gold, &format!("So the answer is \\boxed{{{pred}}}."));
    }

    #[test]
    fn grading_is_deterministic(gold in latexish(), pred in latexish()) {
        for mode in [GradeMode::MathRuler, GradeMode::Verify] {
            prop_assert_eq!(grade(mode, &gold, &pred), grade(mode, &gold, &pred));
        }
    }
}

#[test]
fn adversarial_inputs_are_cheap() {
    let deep_braces = format!("\\boxed{{{}1{}}}", "{".repeat(20_000), "}".repeat(20_000));
    let deep_parens = format!("\\boxed{{{}1{}}}", "(".repeat(5_000), ")".repeat(5_000));
    let deep_fracs = format!(
        "\\boxed{{{}1{}}}",
        "\\frac{1}{".repeat(2_000),
        "}".repeat(2_000)
    );
    let tower = format!("\\boxed{{{}}}", vec!["9"; 200].join("^"));
    let braced_tower = format!("\\boxed{{{}9{}}}", "9^{".repeat(300), "}".repeat(300));
    let huge_number = format!("\\boxed{{{}}}", "9".repeat(100_000));
    let many_items = format!("\\boxed{{{}}}", vec!["1"; 50_000].join(","));
    let many_boxes = "\\boxed{1} ".repeat(20_000);
    let unclosed = "\\boxed{".repeat(20_000);
    let factorial = "\\boxed{100000!}".to_string();
    let binom = "\\boxed{\\binom{10^{9}}{10^{8}}}".to_string();
    let big_pow = "\\boxed{(10^{400})^{10^{400}}}".to_string();
    let long_text = "word ".repeat(200_000) + "\\boxed{5}";
    let vars = "\\boxed{a b c d e f g h j k l m n o p q r s t u v w x y z}".to_string();
    for pred in [
        deep_braces,
        deep_parens,
        deep_fracs,
        tower,
        braced_tower,
        huge_number,
        many_items,
        many_boxes,
        unclosed,
        factorial,
        binom,
        big_pow,
        long_text,
        vars,
    ] {
        let t = Instant::now();
        exercise("5", &pred);
        exercise(&pred, "5");
        eprintln!("{:>10.2?} for {}", t.elapsed(), short(&pred));
    }
}

#[test]
fn the_tail_of_a_long_response_is_still_graded() {
    let long = "word ".repeat(200_000) + "\\boxed{5}";
    assert!(grade(GradeMode::Verify, "5", &long));
    assert!(grade(GradeMode::MathRuler, "5", &long));
}

#[test]
fn grading_from_many_threads_gives_the_same_answers() {
    // The work budget is per thread; concurrent graders must not starve or disturb each other.
    let cases: Vec<(String, String)> = (0..200)
        .map(|i| {
            (
                format!("\\frac{{{i}}}{{7}}"),
                format!(
                    "so \\boxed{{{}}}",
                    if i % 2 == 0 {
                        format!("{i}/7")
                    } else {
                        format!("{}/7", i + 1)
                    }
                ),
            )
        })
        .collect();
    let expected: Vec<bool> = cases
        .iter()
        .map(|(g, p)| grade(GradeMode::Verify, g, p))
        .collect();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let cases = cases.clone();
            std::thread::spawn(move || {
                cases
                    .iter()
                    .map(|(g, p)| grade(GradeMode::Verify, g, p))
                    .collect::<Vec<bool>>()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("grader thread"), expected);
    }
    assert_eq!(expected.iter().filter(|&&c| c).count(), 100);
}
