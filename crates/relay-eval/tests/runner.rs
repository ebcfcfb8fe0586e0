//! The runner with a scripted solver: one graded line per (problem, sample), and the summary's
//! numbers computed by hand from the script.

mod common;

use common::*;
use relay_eval::{run, Dataset, EvalError, GradeMode, Selection};

#[test]
fn writes_one_graded_line_per_problem_and_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_dataset(tmp.path(), 12)).unwrap();
    let out = tmp.path().join("run");
    let summary = run(
        &ds,
        &ScriptedSolver::new(),
        &settings(&ds),
        &options(&out, None, 1, 3),
    )
    .unwrap();

    let lines = sorted_results(&out);
    assert_eq!(lines.len(), 12);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!((line.index, line.sample), (i, 0));
        assert_eq!(line.gold, (2 * i).to_string());
        assert_eq!(line.correct, scripted_correct(i, 0), "problem {i}");
        let answer = if scripted_correct(i, 0) {
            2 * i
        } else {
            2 * i + 1
        };
        assert_eq!(line.extracted.as_deref(), Some(answer.to_string().as_str()));
        assert!(line.response.ends_with(&format!("\\boxed{{{answer}}}.")));
        assert!(line.problem.starts_with(&format!("What is {i} + {i}?")));
        assert_eq!(
            (line.slm_tokens, line.llm_tokens, line.calls),
            (10 + i, i % 4, usize::from(i % 4 > 0))
        );
        assert_eq!(line.trace["index"], i);
    }

    // By hand: correct unless i % 3 == 0 → 8 of 12.
    let slm: u64 = (0..12).map(|i| 10 + i as u64).sum();
    let llm: u64 = (0..12).map(|i| i as u64 % 4).sum();
    assert_eq!(summary.n, 12);
    assert_eq!(summary.results, 12);
    assert_eq!(summary.accuracy, 8.0 / 12.0);
    assert_eq!(summary.pass_at_k, 8.0 / 12.0);
    assert_eq!(summary.tokens.slm, slm);
    assert_eq!(summary.tokens.llm, llm);
    assert_eq!(summary.tokens.response, slm + llm);
    assert_eq!(
        summary.call_ratio,
        llm as f64 / (slm + llm) as f64,
        "micro-average: Σ LLM / Σ response"
    );
    assert_eq!(summary.calls, 9);
    assert_eq!(summary.timing.items_run, 12);
    assert_eq!(summary.timing.items_resumed, 0);
    assert_eq!(summary.settings.policy, "confidence");
    assert_eq!(summary.settings.threshold, Some(0.7));
    assert_eq!(summary.settings.data_sha256, ds.sha256);

    // summary.json holds the same numbers, and run.json the settings.
    let on_disk: relay_eval::Summary =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk, summary);
    let run_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["settings"]["grader"], "verify");
    assert_eq!(run_json["settings"]["policy"], "confidence");
}

#[test]
fn call_ratio_is_micro_averaged_not_a_mean_of_ratios() {
    // Problem 3 has 13 SLM + 3 LLM tokens, problem 1 has 11 + 1: the mean of per-problem ratios
    // (3/16 + 1/12) / 2 differs from Σ LLM / Σ response = 4 / 28.
    let tmp = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_dataset(tmp.path(), 4)).unwrap();
    let out = tmp.path().join("run");
    let sel = Selection {
        offset: 1,
        limit: Some(3),
        samples: 1,
    };
    let opts = relay_eval::RunOptions {
        selection: sel,
        ..options(&out, None, 1, 1)
    };
    let summary = run(&ds, &ScriptedSolver::new(), &settings(&ds), &opts).unwrap();
    // offset 1, limit 3 → problems 1, 2, 3: SLM 11+12+13 = 36, LLM 1+2+3 = 6.
    assert_eq!(summary.n, 3);
    assert_eq!(summary.call_ratio, 6.0 / 42.0);
    let keys: Vec<_> = sorted_results(&out).iter().map(|l| l.key()).collect();
    assert_eq!(
        keys,
        vec![(1, 0), (2, 0), (3, 0)],
        "offset and limit pick the problems; indices stay file indices"
    );
}

#[test]
fn avg_at_k_is_the_mean_of_per_sample_accuracies_and_pass_at_k_counts_any_correct() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_dataset(tmp.path(), 6)).unwrap();
    let out = tmp.path().join("run");
    let summary = run(
        &ds,
        &ScriptedSolver::new(),
        &settings(&ds),
        &options(&out, None, 3, 2),
    )
    .unwrap();
    assert_eq!(sorted_results(&out).len(), 18);
    // Sample s is correct unless (i + 2s) % 3 == 0: for each s exactly 2 of the 6 problems fail.
    for s in 0..3 {
        let correct = (0..6).filter(|&i| scripted_correct(i, s)).count();
        assert_eq!(
            summary.sample_accuracy[s],
            correct as f64 / 6.0,
            "sample {s}"
        );
    }
    let avg = summary.sample_accuracy.iter().sum::<f64>() / 3.0;
    assert!((summary.accuracy - avg).abs() < 1e-12);
    assert!((summary.accuracy - 4.0 / 6.0).abs() < 1e-12);
    // Every problem has some correct sample (the failing sample rotates with s).
    let pass = (0..6)
        .filter(|&i| (0..3).any(|s| scripted_correct(i, s)))
        .count() as f64
        / 6.0;
    assert_eq!(summary.pass_at_k, pass);
    assert_eq!(summary.pass_at_k, 1.0);
    assert_eq!(summary.samples, 3);
}

#[test]
fn avg_at_k_differs_from_pass_at_k_when_a_problem_is_never_solved() {
    struct HalfRight;
    impl relay_eval::Solver for HalfRight {
        fn solve(
            &self,
            p: &relay_eval::Problem,
            sample: usize,
        ) -> Result<relay_eval::Solution, relay_eval::SolveError> {
            // Problem 0: never right; problem 1: right on even samples.
            let right = p.index == 1 && sample % 2 == 0;
            let text = if right {
                format!("\\boxed{{{}}}", p.answer)
            } else {
                "\\boxed{-1}".into()
            };
            Ok(relay_eval::Solution {
                text,
                slm_tokens: 1,
                ..Default::default()
            })
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_dataset(tmp.path(), 2)).unwrap();
    let summary = run(
        &ds,
        &HalfRight,
        &settings(&ds),
        &options(&tmp.path().join("r"), None, 4, 1),
    )
    .unwrap();
    assert_eq!(summary.sample_accuracy, vec![0.5, 0.0, 0.5, 0.0]);
    assert_eq!(summary.accuracy, 0.25);
    assert_eq!(summary.pass_at_k, 0.5);
}

#[test]
fn the_grader_mode_is_applied() {
    // A (gold, response) pair on which the two graders disagree, so the mode is visible.
    let candidates = [
        ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"),
        ("1000", "\\boxed{1,000}"),
        ("\\frac{1}{2}", "\\boxed{0.5}"),
        ("50", "\\boxed{50\\%}"),
        ("5", "The final answer is 5"),
    ];
    let (gold, response) = candidates
        .into_iter()
        .find(|(g, r)| {
            relay_grader::grade(GradeMode::Verify, g, r)
                != relay_grader::grade(GradeMode::MathRuler, g, r)
        })
        .expect("some pair on which verify and mathruler disagree");
    struct Fixed(&'static str);
    impl relay_eval::Solver for Fixed {
        fn solve(
            &self,
            _: &relay_eval::Problem,
            _: usize,
        ) -> Result<relay_eval::Solution, relay_eval::SolveError> {
            Ok(relay_eval::Solution {
                text: self.0.into(),
                ..Default::default()
            })
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("one.jsonl");
    std::fs::write(
        &path,
        serde_json::json!({"problem": "p", "answer": gold}).to_string(),
    )
    .unwrap();
    let ds = Dataset::load(&path).unwrap();
    let mut accuracies = Vec::new();
    for mode in [GradeMode::Verify, GradeMode::MathRuler] {
        let mut s = settings(&ds);
        s.grader = mode;
        let summary = run(
            &ds,
            &Fixed(response),
            &s,
            &options(&tmp.path().join(mode.to_string()), None, 1, 1),
        )
        .unwrap();
        assert_eq!(summary.settings.grader, mode);
        assert_eq!(
            summary.accuracy,
            f64::from(u8::from(relay_grader::grade(mode, gold, response))),
            "{mode}"
        );
        accuracies.push(summary.accuracy);
    }
    assert_ne!(accuracies[0], accuracies[1]);
}

#[test]
fn an_offset_past_the_end_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_dataset(tmp.path(), 3)).unwrap();
    let opts = relay_eval::RunOptions {
        selection: Selection {
            offset: 3,
            limit: None,
            samples: 1,
        },
        ..options(tmp.path(), None, 1, 1)
    };
    let err = run(&ds, &ScriptedSolver::new(), &settings(&ds), &opts).unwrap_err();
    assert!(
        matches!(
            err,
            EvalError::EmptySelection {
                offset: 3,
                len: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn results_do_not_depend_on_concurrency() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_dataset(tmp.path(), 20)).unwrap();
    let one = run(
        &ds,
        &ScriptedSolver::new(),
        &settings(&ds),
        &options(&tmp.path().join("a"), None, 2, 1),
    )
    .unwrap();
    let four = run(
        &ds,
        &ScriptedSolver::new(),
        &settings(&ds),
        &options(&tmp.path().join("b"), None, 2, 4),
    )
    .unwrap();
    assert_eq!(without_timing(&one), without_timing(&four));
    assert_eq!(
        sorted_results(&tmp.path().join("a")),
        sorted_results(&tmp.path().join("b"))
    );
}

#[test]
fn summary_floats_survive_the_json_file_bit_for_bit() {
    // A resumed run and `report` read summary.json back; every f64 must come back exactly.
    // serde_json's default parser is off by one ulp on some shortest representations (CI once
    // read 1.1560000000000005e-5 back as …03e-5), hence its `float_roundtrip` feature.
    let mut x = 1.1560000000000005e-5_f64;
    for i in 0..2000 {
        let text = serde_json::to_string(&x).unwrap();
        let back: f64 = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_bits(), x.to_bits(), "{text} came back as {back:e}");
        x = x * 1.37 + (i as f64) * 1e-9;
        if x > 1e6 {
            x /= 7.3e9;
        }
    }
}
