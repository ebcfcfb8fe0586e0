//! The training-pool filter: each line counts its problem's graded samples (pass rate =
//! correct / K) and keeps what the LLM solves; the same seed gives the same file whatever the
//! concurrency; a run cut short (an error, a torn line) and resumed writes the file an
//! uninterrupted run writes; settings and outputs that cannot go together are refused.
//! Scripted solvers pin the counting exactly; the tiny model pair the project writes runs the
//! real path (relay, batching, grading).

use relay_core::{PolicyKind, RelayConfig};
use relay_engine::batching::DEFAULT_JOIN_WINDOW;
use relay_engine::model::{LoadedModel, ModelPair};
use relay_engine::sampling::SamplingParams;
use relay_engine::testing::write_tiny_pair;
use relay_engine::LoadOptions;
use relay_eval::filter::{run_file, summary_file};
use relay_eval::{
    filter, keep, write_kept, Dataset, EvalError, FilterOptions, PoolLine, PoolSummary, Problem,
    RelaySolver, RunSettings, Selection, Solution, SolveError, Solver,
};
use relay_grader::GradeMode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------- scripted solvers

/// Right on a sample when `correct(index, sample)`: `\boxed{gold}`, else `\boxed{gold + 1}`.
struct Scripted<F>(F);

impl<F: Fn(usize, usize) -> bool + Send + Sync> Solver for Scripted<F> {
    fn solve(&self, p: &Problem, sample: usize) -> Result<Solution, SolveError> {
        let answer = if (self.0)(p.index, sample) {
            p.answer.clone()
        } else {
            wrong(&p.answer)
        };
        Ok(Solution {
            text: format!("So the answer is \\boxed{{{answer}}}."),
            slm_tokens: 10 + sample,
            ..Solution::default()
        })
    }
}

fn wrong(gold: &str) -> String {
    (gold.parse::<u64>().unwrap() + 1).to_string()
}

const K: usize = 2;

/// With K = 2 and 9 problems, every (LLM correct, SLM correct) pair in {0,1,2}² once: the LLM
/// is right on `index % 3` samples, the SLM on `index / 3`.
fn llm_script(index: usize, sample: usize) -> bool {
    sample < index % (K + 1)
}
fn slm_script(index: usize, sample: usize) -> bool {
    sample < (index / (K + 1)) % (K + 1)
}

/// `n` problems `What is i + i?` (gold 2i) with a `solution` field, and a `keep` field that the
/// filter's own must replace.
fn write_pool(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("train.jsonl");
    let text: String = (0..n)
        .map(|i| {
            json!({"problem": format!("What is {i} + {i}?"), "answer": (2 * i).to_string(),
                   "solution": format!("{i} + {i} = {}", 2 * i), "keep": "from the file"})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn settings(ds: &Dataset) -> RunSettings {
    let mut s = RunSettings::new(ds, "slm-only,llm-only");
    s.slm = Some("slm".into());
    s.llm = Some("llm".into());
    s.solver = json!({"temperature": 1.0, "seed": 0});
    s
}

fn options(out: &Path, limit: Option<usize>, samples: usize, concurrency: usize) -> FilterOptions {
    FilterOptions {
        out: out.to_path_buf(),
        selection: Selection {
            offset: 0,
            limit,
            samples,
        },
        concurrency,
        progress: false,
        resume: false,
        drop_slm_solved: false,
    }
}

fn resuming(mut o: FilterOptions) -> FilterOptions {
    o.resume = true;
    o
}

fn read_lines(out: &Path) -> Vec<PoolLine> {
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn without_timing(s: &PoolSummary) -> Value {
    let mut v = serde_json::to_value(s).unwrap();
    v.as_object_mut().unwrap().remove("timing");
    v
}

#[test]
fn each_line_counts_its_graded_samples_and_keeps_what_the_llm_solves() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_pool(dir.path(), 9)).unwrap();
    let out = dir.path().join("pool/pool.jsonl");
    let summary = filter(
        &ds,
        &Scripted(slm_script),
        &Scripted(llm_script),
        &settings(&ds),
        &options(&out, None, K, 3),
    )
    .unwrap();

    let lines = read_lines(&out);
    let indices: Vec<usize> = lines.iter().map(|l| l.index).collect();
    assert_eq!(indices, (0..9).collect::<Vec<_>>(), "the data file's order");
    for l in &lines {
        let i = l.index;
        let (llm, slm) = (i % 3, i / 3);
        assert_eq!((l.llm_correct, l.slm_correct, l.samples), (llm, slm, K));
        assert_eq!(l.llm_pass_rate, llm as f64 / K as f64);
        assert_eq!(l.slm_pass_rate, slm as f64 / K as f64);
        assert_eq!(l.keep, llm >= 1, "problem {i}");
        let gold = (2 * i).to_string();
        let expect = |right: usize| -> Vec<Option<String>> {
            (0..K)
                .map(|s| {
                    Some(if s < right {
                        gold.clone()
                    } else {
                        wrong(&gold)
                    })
                })
                .collect()
        };
        assert_eq!(l.llm_answers, expect(llm));
        assert_eq!(l.slm_answers, expect(slm));
        assert_eq!(l.slm_mean_tokens, 10.5, "(10 + 11) / 2");
        assert_eq!((l.llm_truncated, l.slm_truncated), (0, 0));
        // The record as the file has it: no instruction added; our `keep` replaces its own.
        assert_eq!(l.record["problem"], format!("What is {i} + {i}?"));
        assert_eq!(l.record["answer"], gold);
        assert_eq!(l.record["solution"], format!("{i} + {i} = {gold}"));
        assert!(!l.record.contains_key("keep"));
    }
    // The raw line has each key once.
    let raw = std::fs::read_to_string(&out).unwrap();
    let first = raw.lines().next().unwrap();
    assert_eq!(first.matches("\"keep\"").count(), 1, "{first}");

    assert_eq!(summary.problems, 9);
    assert_eq!(summary.samples, K);
    assert_eq!(summary.kept, 6);
    assert_eq!(summary.llm_solved, 6);
    assert_eq!(summary.slm_always_solved, 3);
    assert_eq!(summary.llm_only_solved, 2);
    assert_eq!(summary.llm_correct_histogram, vec![3, 3, 3]);
    assert_eq!(summary.slm_correct_histogram, vec![3, 3, 3]);
    assert_eq!(summary.llm_mean_pass_rate, 0.5);
    assert_eq!(summary.timing.problems_run, 9);
    let stored: PoolSummary =
        serde_json::from_slice(&std::fs::read(summary_file(&out)).unwrap()).unwrap();
    assert_eq!(stored, summary);
    assert!(run_file(&out).exists());

    // The kept problems as a data file: the records of the kept lines, in order, which load
    // back as the same problems.
    let kept = dir.path().join("pool/kept.jsonl");
    assert_eq!(write_kept(&out, &kept).unwrap(), 6);
    let back = Dataset::load(&kept).unwrap();
    let want: Vec<usize> = (0..9).filter(|i| i % 3 >= 1).collect();
    assert_eq!(back.problems.len(), want.len());
    for (p, i) in back.problems.iter().zip(&want) {
        assert_eq!(p.answer, (2 * i).to_string());
        assert!(
            p.problem.starts_with(&format!("What is {i} + {i}?")),
            "{}",
            p.problem
        );
    }
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&kept)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(
        first.get("keep").is_none() && first.get("llm_correct").is_none(),
        "{first}"
    );
    assert!(
        write_kept(&out, &out).is_err(),
        "the pool file is not overwritten"
    );
}

#[test]
fn drop_slm_solved_also_leaves_out_what_the_slm_always_solves() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_pool(dir.path(), 9)).unwrap();
    let out = dir.path().join("pool.jsonl");
    let mut o = options(&out, None, K, 2);
    o.drop_slm_solved = true;
    let summary = filter(
        &ds,
        &Scripted(slm_script),
        &Scripted(llm_script),
        &settings(&ds),
        &o,
    )
    .unwrap();
    for l in read_lines(&out) {
        assert_eq!(l.keep, l.llm_correct >= 1 && l.slm_correct < K, "{l:?}");
    }
    assert_eq!(summary.kept, 4);
    assert!(summary.drop_slm_solved);
    // The rule itself.
    assert!(keep(1, 0, 4, true) && keep(4, 3, 4, true) && keep(1, 4, 4, false));
    assert!(!keep(0, 0, 4, false) && !keep(0, 4, 4, false) && !keep(2, 4, 4, true));
}

/// The scripted solver, except that every call from the `fail_at`-th on fails.
struct FailAfter<S> {
    inner: S,
    fail_at: usize,
    calls: AtomicUsize,
}

impl<S> FailAfter<S> {
    fn new(inner: S, fail_at: usize) -> Self {
        FailAfter {
            inner,
            fail_at,
            calls: AtomicUsize::new(0),
        }
    }
}

impl<S: Solver> Solver for FailAfter<S> {
    fn solve(&self, p: &Problem, sample: usize) -> Result<Solution, SolveError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) >= self.fail_at {
            return Err(format!("engine lost on problem {}", p.index).into());
        }
        self.inner.solve(p, sample)
    }
}

#[test]
fn a_failed_run_resumes_to_the_file_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_pool(dir.path(), 9)).unwrap();
    let whole = dir.path().join("whole.jsonl");
    let expected = filter(
        &ds,
        &Scripted(slm_script),
        &Scripted(llm_script),
        &settings(&ds),
        &options(&whole, None, K, 3),
    )
    .unwrap();

    let out = dir.path().join("cut.jsonl");
    let failing = FailAfter::new(Scripted(llm_script), 7);
    let err = filter(
        &ds,
        &Scripted(slm_script),
        &failing,
        &settings(&ds),
        &options(&out, None, K, 3),
    )
    .unwrap_err();
    assert!(
        matches!(&err, EvalError::Solver { message, .. } if message.contains("engine lost")),
        "{err}"
    );
    let partial = read_lines(&out);
    assert!(
        !partial.is_empty() && partial.len() < 9,
        "{} lines",
        partial.len()
    );
    assert!(
        !summary_file(&out).exists(),
        "no summary for an unfinished run"
    );

    // Without --resume the lines are not overwritten.
    let before = std::fs::read(&out).unwrap();
    let refused = filter(
        &ds,
        &Scripted(slm_script),
        &Scripted(llm_script),
        &settings(&ds),
        &options(&out, None, K, 3),
    )
    .unwrap_err();
    assert!(
        matches!(refused, EvalError::OutputExists { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("--resume"), "{refused}");
    assert_eq!(std::fs::read(&out).unwrap(), before);

    let summary = filter(
        &ds,
        &Scripted(slm_script),
        &Scripted(llm_script),
        &settings(&ds),
        &resuming(options(&out, None, K, 3)),
    )
    .unwrap();
    assert_eq!(summary.timing.problems_resumed, partial.len());
    assert_eq!(summary.timing.problems_run, 9 - partial.len());
    assert_eq!(without_timing(&summary), without_timing(&expected));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&whole).unwrap());
}

#[test]
fn a_torn_last_line_is_redone_and_a_wider_limit_reuses_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_pool(dir.path(), 9)).unwrap();
    let whole = dir.path().join("whole.jsonl");
    let run = |out: &Path, o: FilterOptions| {
        filter(
            &ds,
            &Scripted(slm_script),
            &Scripted(llm_script),
            &settings(&ds),
            &FilterOptions {
                out: out.to_path_buf(),
                ..o
            },
        )
    };
    run(&whole, options(&whole, None, K, 2)).unwrap();
    let full = std::fs::read_to_string(&whole).unwrap();

    // The first 4 problems, then widened to all 9.
    let out = dir.path().join("grown.jsonl");
    let first = run(&out, options(&out, Some(4), K, 2)).unwrap();
    assert_eq!(first.problems, 4);
    // Killed in the middle of writing the fifth line.
    let five: Vec<&str> = full.lines().take(5).collect();
    let torn = format!(
        "{}\n{}",
        five[..4].join("\n"),
        &five[4][..five[4].len() / 2]
    );
    std::fs::write(&out, torn).unwrap();
    let summary = run(&out, resuming(options(&out, None, K, 2))).unwrap();
    assert_eq!(summary.timing.problems_resumed, 4);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), full);

    // A damaged line before the last one is not silently redone.
    let mut lines: Vec<&str> = full.lines().collect();
    lines[2] = "{\"index\": 2, \"samp";
    std::fs::write(&out, lines.join("\n") + "\n").unwrap();
    let err = run(&out, resuming(options(&out, None, K, 2))).unwrap_err();
    assert!(
        matches!(err, EvalError::CorruptResults { line: 3, .. }),
        "{err}"
    );
}

#[test]
fn resuming_with_other_settings_or_without_a_settings_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset::load(write_pool(dir.path(), 4)).unwrap();
    let out = dir.path().join("pool.jsonl");
    let go = |settings: &RunSettings, o: FilterOptions| {
        filter(
            &ds,
            &Scripted(slm_script),
            &Scripted(llm_script),
            settings,
            &o,
        )
    };
    go(&settings(&ds), options(&out, Some(2), K, 1)).unwrap();

    let other_k = go(&settings(&ds), resuming(options(&out, None, K + 1, 1))).unwrap_err();
    assert!(
        other_k
            .to_string()
            .contains("samples: 2 (stored) → 3 (now)"),
        "{other_k}"
    );
    let mut dropping = resuming(options(&out, None, K, 1));
    dropping.drop_slm_solved = true;
    let other_rule = go(&settings(&ds), dropping).unwrap_err();
    assert!(
        other_rule.to_string().contains("drop_slm_solved"),
        "{other_rule}"
    );
    let mut s = settings(&ds);
    s.solver = json!({"temperature": 0.7, "seed": 0});
    let other_t = go(&s, resuming(options(&out, None, K, 1))).unwrap_err();
    assert!(
        matches!(other_t, EvalError::SettingsMismatch { .. }),
        "{other_t}"
    );
    assert_eq!(read_lines(&out).len(), 2, "nothing was written");

    std::fs::remove_file(run_file(&out)).unwrap();
    let orphan = go(&settings(&ds), resuming(options(&out, None, K, 1))).unwrap_err();
    assert!(
        matches!(orphan, EvalError::MissingRunFile { .. }),
        "{orphan}"
    );
}

#[test]
fn no_samples_and_an_output_that_is_the_input_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_pool(dir.path(), 3);
    let ds = Dataset::load(&data).unwrap();
    let go = |o: FilterOptions| {
        filter(
            &ds,
            &Scripted(slm_script),
            &Scripted(llm_script),
            &settings(&ds),
            &o,
        )
    };
    let out = dir.path().join("pool.jsonl");
    let zero = go(options(&out, None, 0, 1)).unwrap_err();
    assert!(matches!(zero, EvalError::Options(_)), "{zero}");
    assert!(zero.to_string().contains("K = 0"), "{zero}");
    assert!(!out.exists());
    let onto_input = go(resuming(options(&data, None, K, 1))).unwrap_err();
    assert!(
        onto_input.to_string().contains("is the data file itself"),
        "{onto_input}"
    );
    assert_eq!(Dataset::load(&data).unwrap().len(), 3);
}

// ---------------------------------------------------------------- the tiny model pair

/// The tiny random models never write an answer, so this appends one that follows from what
/// they wrote: `\boxed{d}` with d = (sum of the response's bytes) mod 3. Which samples are
/// right then depends on the sampled tokens, as with a real model.
struct BoxedDigit<S>(S);

impl<S: Solver> Solver for BoxedDigit<S> {
    fn solve(&self, p: &Problem, sample: usize) -> Result<Solution, SolveError> {
        let mut solution = self.0.solve(p, sample)?;
        let d = solution.text.bytes().map(u64::from).sum::<u64>() % 3;
        solution.text.push_str(&format!(" \\boxed{{{d}}}"));
        Ok(solution)
    }
}

struct Tiny {
    _dir: tempfile::TempDir,
    models: ModelPair,
}

fn tiny() -> Tiny {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 1024);
    let opts = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    let models = ModelPair::new(
        LoadedModel::load(&slm, opts.clone()).unwrap(),
        LoadedModel::load(&llm, opts).unwrap(),
    );
    Tiny { _dir: dir, models }
}

/// Each model alone, as `data filter` (and `eval --policy slm-only / llm-only`) answers.
fn alone(models: &ModelPair, kind: PolicyKind, seed: u64) -> BoxedDigit<RelaySolver> {
    let mut config = RelayConfig::default();
    config.limits.max_response_tokens = 24;
    config.policy.kind = kind;
    let sampling = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        seed,
    };
    BoxedDigit(RelaySolver::new(models.clone(), config, sampling))
}

const N: usize = 6;
const TINY_K: usize = 3;

/// `N` problems. Problem 0's gold is the LLM's own first answer (so the LLM solves it at least
/// once), problem 1's can never be written (so it is not kept), the others' are `i mod 3`.
fn tiny_pool(dir: &Path, models: &ModelPair) -> Dataset {
    let path = dir.join("tiny.jsonl");
    let write = |gold0: &str| {
        let text: String = (0..N)
            .map(|i| {
                let gold = match i {
                    0 => gold0.to_string(),
                    1 => "never".to_string(),
                    _ => (i % 3).to_string(),
                };
                json!({"problem": format!("What is {i} plus {i}?"), "answer": gold, "id": i})
                    .to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(&path, text).unwrap();
        Dataset::load(&path).unwrap()
    };
    let draft = write("0");
    let first = alone(models, PolicyKind::LlmOnly, 0)
        .solve(&draft.problems[0], 0)
        .unwrap();
    let gold0 = relay_grader::extract_answer(GradeMode::Verify, &first.text).unwrap();
    write(&gold0)
}

fn tiny_options(out: &Path, concurrency: usize) -> FilterOptions {
    options(out, None, TINY_K, concurrency)
}

#[test]
fn tiny_pair_lines_count_each_sample_as_eval_grades_it() {
    let t = tiny();
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_pool(dir.path(), &t.models);
    let mut batched = t.models.clone();
    batched.batch_local_engines(DEFAULT_JOIN_WINDOW);
    let (slm, llm) = (
        alone(&batched, PolicyKind::SlmOnly, 0),
        alone(&batched, PolicyKind::LlmOnly, 0),
    );
    let out = dir.path().join("pool.jsonl");
    let summary = filter(&ds, &slm, &llm, &settings(&ds), &tiny_options(&out, 4)).unwrap();
    let lines = read_lines(&out);
    assert_eq!(lines.len(), N);

    // Each model alone through the eval runner, K samples: the same answers, graded the same.
    for (kind, name) in [(PolicyKind::SlmOnly, "slm"), (PolicyKind::LlmOnly, "llm")] {
        let run_dir = dir.path().join(format!("eval-{name}"));
        let eval_opts = relay_eval::RunOptions {
            out: run_dir.clone(),
            selection: Selection {
                offset: 0,
                limit: None,
                samples: TINY_K,
            },
            concurrency: 2,
            progress: false,
            redo_llm_errors: false,
        };
        relay_eval::run(
            &ds,
            &alone(&t.models, kind, 0),
            &RunSettings::new(&ds, name),
            &eval_opts,
        )
        .unwrap();
        let results = relay_eval::read_results(&run_dir.join("results.jsonl"))
            .unwrap()
            .lines;
        for l in &lines {
            let mut mine: Vec<_> = results.iter().filter(|r| r.index == l.index).collect();
            mine.sort_by_key(|r| r.sample);
            let answers: Vec<Option<String>> = mine.iter().map(|r| r.extracted.clone()).collect();
            let correct = mine.iter().filter(|r| r.correct).count();
            let tokens = mine.iter().map(|r| r.response_tokens()).sum::<usize>() as f64;
            let (line_answers, line_correct, line_rate, line_tokens) = match kind {
                PolicyKind::SlmOnly => (
                    &l.slm_answers,
                    l.slm_correct,
                    l.slm_pass_rate,
                    l.slm_mean_tokens,
                ),
                _ => (
                    &l.llm_answers,
                    l.llm_correct,
                    l.llm_pass_rate,
                    l.llm_mean_tokens,
                ),
            };
            assert_eq!(
                line_answers, &answers,
                "{name} answers of problem {}",
                l.index
            );
            assert_eq!(
                line_correct, correct,
                "{name} correct on problem {}",
                l.index
            );
            assert_eq!(line_rate, correct as f64 / TINY_K as f64);
            assert_eq!(line_tokens, tokens / TINY_K as f64);
        }
    }
    for l in &lines {
        assert_eq!(l.keep, keep(l.llm_correct, l.slm_correct, TINY_K, false));
        assert_eq!(l.record["id"], l.index);
        // The tiny models never stop on their own within 24 tokens.
        assert_eq!((l.llm_truncated, l.slm_truncated), (TINY_K, TINY_K));
    }
    assert!(
        lines[0].keep,
        "problem 0's gold is the LLM's own first answer"
    );
    assert!(!lines[1].keep, "problem 1's gold cannot be written");
    let hist_total: usize = summary.llm_correct_histogram.iter().sum();
    assert_eq!(hist_total, N);
    assert_eq!(
        summary.kept,
        lines.iter().filter(|l| l.keep).count(),
        "{summary:?}"
    );
}

#[test]
fn tiny_pair_same_seed_same_file_at_any_concurrency() {
    let t = tiny();
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_pool(dir.path(), &t.models);
    let run = |models: &ModelPair, seed: u64, concurrency: usize, name: &str| {
        let out = dir.path().join(name);
        filter(
            &ds,
            &alone(models, PolicyKind::SlmOnly, seed),
            &alone(models, PolicyKind::LlmOnly, seed),
            &settings(&ds),
            &tiny_options(&out, concurrency),
        )
        .unwrap();
        std::fs::read(&out).unwrap()
    };
    let mut batched = t.models.clone();
    batched.batch_local_engines(DEFAULT_JOIN_WINDOW);
    let one_at_a_time = run(&t.models, 0, 1, "a.jsonl");
    assert_eq!(run(&batched, 0, 5, "b.jsonl"), one_at_a_time);
    assert_eq!(run(&t.models, 0, 1, "c.jsonl"), one_at_a_time);
    assert_ne!(
        run(&t.models, 1, 1, "d.jsonl"),
        one_at_a_time,
        "another seed samples other answers"
    );
}

#[test]
fn tiny_pair_resumed_after_a_failure_and_a_torn_line_writes_the_uninterrupted_file() {
    let t = tiny();
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_pool(dir.path(), &t.models);
    let mut batched = t.models.clone();
    batched.batch_local_engines(DEFAULT_JOIN_WINDOW);
    let slm = alone(&batched, PolicyKind::SlmOnly, 0);
    let llm = alone(&batched, PolicyKind::LlmOnly, 0);
    let whole = dir.path().join("whole.jsonl");
    filter(&ds, &slm, &llm, &settings(&ds), &tiny_options(&whole, 3)).unwrap();
    let expected = std::fs::read(&whole).unwrap();

    // The SLM's engine "dies" after 8 samples.
    let out = dir.path().join("cut.jsonl");
    let dying = FailAfter::new(alone(&batched, PolicyKind::SlmOnly, 0), 8);
    filter(&ds, &dying, &llm, &settings(&ds), &tiny_options(&out, 3)).unwrap_err();
    let written = std::fs::read(&out).unwrap();
    assert!(
        !written.is_empty() && written.len() < expected.len(),
        "cut short: {} of {} bytes",
        written.len(),
        expected.len()
    );
    assert!(expected.starts_with(&written), "what was written is final");
    // ... and the process died in the middle of the next line.
    let next_end = written.len() + 40;
    std::fs::write(&out, &expected[..next_end]).unwrap();

    filter(
        &ds,
        &slm,
        &llm,
        &settings(&ds),
        &resuming(tiny_options(&out, 3)),
    )
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), expected);
}
