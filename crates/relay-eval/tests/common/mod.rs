//! Shared test helpers: a scripted solver whose answers, token counts and traces are a fixed
//! function of (problem index, sample), and a small benchmark file.
#![allow(dead_code)]

use relay_eval::{
    Dataset, Problem, RunOptions, RunSettings, Selection, Solution, SolveError, Solver, Summary,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Writes a benchmark of `n` problems `What is i + i?` with gold `2i`.
pub fn write_dataset(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("bench.jsonl");
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{{\"problem\": \"What is {i} + {i}?\", \"answer\": \"{}\"}}\n",
                2 * i
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Whether the scripted solver answers item (index, sample) correctly.
pub fn scripted_correct(index: usize, sample: usize) -> bool {
    (index + 2 * sample) % 3 != 0
}

/// Answers `\boxed{2i}` when [`scripted_correct`], else `\boxed{2i+1}`; SLM tokens 10 + i,
/// LLM tokens i % 4, one call when the LLM wrote anything.
pub struct ScriptedSolver {
    pub delay: Duration,
}

impl ScriptedSolver {
    pub fn new() -> Self {
        ScriptedSolver {
            delay: Duration::ZERO,
        }
    }
}

pub fn scripted_solution(problem: &Problem, sample: usize) -> Solution {
    let i = problem.index;
    let gold: usize = problem.answer.parse().unwrap();
    let answer = if scripted_correct(i, sample) {
        gold
    } else {
        gold + 1
    };
    let llm = i % 4;
    Solution {
        text: format!("Adding gives {answer}. The answer is \\boxed{{{answer}}}."),
        slm_tokens: 10 + i,
        llm_tokens: llm,
        calls: usize::from(llm > 0),
        trace: json!({"policy": "scripted", "index": i, "sample": sample}),
    }
}

impl Solver for ScriptedSolver {
    fn solve(&self, problem: &Problem, sample: usize) -> Result<Solution, SolveError> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        Ok(scripted_solution(problem, sample))
    }
}

/// How a [`FailingSolver`] fails.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    Panic,
    Error,
}

/// The scripted solver, except that the call numbered `fail_at` (0-based, counted over all
/// threads) fails; every later call also fails, like a crashed engine.
pub struct FailingSolver {
    pub fail_at: usize,
    pub how: Failure,
    pub calls: AtomicUsize,
}

impl FailingSolver {
    pub fn new(fail_at: usize, how: Failure) -> Self {
        FailingSolver {
            fail_at,
            how,
            calls: AtomicUsize::new(0),
        }
    }
}

impl Solver for FailingSolver {
    fn solve(&self, problem: &Problem, sample: usize) -> Result<Solution, SolveError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) >= self.fail_at {
            match self.how {
                Failure::Panic => panic!("engine crashed on problem {}", problem.index),
                Failure::Error => {
                    return Err(format!("engine lost on problem {}", problem.index).into())
                }
            }
        }
        Ok(scripted_solution(problem, sample))
    }
}

pub fn settings(dataset: &Dataset) -> RunSettings {
    let mut s = RunSettings::new(dataset, "confidence");
    s.threshold = Some(0.7);
    s.slm = Some("slm".into());
    s.llm = Some("llm".into());
    s.solver = json!({"max_tokens": 512, "temperature": 0.0});
    s
}

pub fn options(out: &Path, limit: Option<usize>, samples: usize, concurrency: usize) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        selection: Selection {
            offset: 0,
            limit,
            samples,
        },
        concurrency,
        progress: false,
        redo_llm_errors: false,
    }
}

/// A summary as JSON without the timing, which is the only part allowed to differ between a
/// resumed run and an uninterrupted one.
pub fn without_timing(summary: &Summary) -> serde_json::Value {
    let mut v = serde_json::to_value(summary).unwrap();
    v.as_object_mut().unwrap().remove("timing");
    v
}

/// The lines of a results file, sorted by key, with the measured times zeroed.
pub fn sorted_results(out: &Path) -> Vec<relay_eval::ResultLine> {
    let mut lines = relay_eval::read_results(&out.join("results.jsonl"))
        .unwrap()
        .lines;
    for l in &mut lines {
        l.wall_ms = 0.0;
    }
    lines.sort_by_key(|l| l.key());
    lines
}
