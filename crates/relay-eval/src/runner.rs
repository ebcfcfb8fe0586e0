//! The eval runner: solves each selected (problem, sample) with a [`Solver`], grades it, and
//! appends one line to `OUT/results.jsonl` as soon as it is done (flushed), so a killed run
//! loses at most the items in flight. Rerunning with the same `OUT` skips what is done.
//!
//! `OUT/run.json` pins the settings that decide what a result line contains (data file,
//! policy, models, grader, solver knobs); a rerun with other settings is refused rather than
//! mixing results. The selection (`--offset`, `--limit`, `--samples`) may change between runs:
//! widening it reuses the lines already there, and the summary covers the current selection.

use crate::dataset::{Dataset, Problem};
use crate::error::{EvalError, Result};
use crate::progress::Progress;
use crate::results::{append_line, open_append, read_results, ResultLine};
use crate::summary::{summarize, Summary, Timing};
use relay_grader::GradeMode;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

/// File names inside a run folder.
pub const RESULTS_FILE: &str = "results.jsonl";
pub const RUN_FILE: &str = "run.json";
pub const SUMMARY_FILE: &str = "summary.json";

/// Any error a solver returns; `anyhow::Error` converts into it with `?` / `.into()`.
pub type SolveError = Box<dyn std::error::Error + Send + Sync>;

/// Solves one problem: the seam between the runner and whatever produces answers (the relay
/// over two models, one model alone, or a scripted stand-in in tests).
pub trait Solver: Send + Sync {
    /// One attempt at `problem`. `sample` numbers the attempts (0..samples); a solver that
    /// samples should seed from `(problem.index, sample)` so that a resumed run reproduces an
    /// uninterrupted one. An error stops the run (the item is redone on rerun).
    fn solve(&self, problem: &Problem, sample: usize) -> Result<Solution, SolveError>;
}

/// What a solver returns for one attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Solution {
    /// The full response text; the grader extracts the answer from it.
    pub text: String,
    /// Response tokens written by the SLM and by the LLM.
    pub slm_tokens: usize,
    pub llm_tokens: usize,
    /// LLM calls made.
    pub calls: usize,
    /// The relay trace as JSON (`serde_json::to_value(&relay_trace)`), or `null`.
    pub trace: serde_json::Value,
}

/// The settings that decide what a result line contains. Stored in `OUT/run.json`; a rerun
/// must match them (all but the data file's path, which may move as long as its bytes don't).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The data file, as given.
    pub data: String,
    /// sha256 of the data file's bytes.
    pub data_sha256: String,
    /// Policy name (`slm-only`, `llm-only`, `confidence`, …).
    pub policy: String,
    /// The policy's threshold, where it has one.
    pub threshold: Option<f64>,
    /// The models, as given (path or `slm` / `llm`); `None` where the run does not use one.
    pub slm: Option<String>,
    pub llm: Option<String>,
    #[serde(with = "grade_mode_serde")]
    pub grader: GradeMode,
    /// Every other knob that changes a response (sampling, token limits, seed…), as the solver
    /// reports it.
    #[serde(default)]
    pub solver: serde_json::Value,
}

impl RunSettings {
    /// Settings for `dataset` under `policy`, with the `verify` grader and nothing else set.
    pub fn new(dataset: &Dataset, policy: impl Into<String>) -> RunSettings {
        RunSettings {
            data: dataset.path.display().to_string(),
            data_sha256: dataset.sha256.clone(),
            policy: policy.into(),
            threshold: None,
            slm: None,
            llm: None,
            grader: GradeMode::Verify,
            solver: serde_json::Value::Null,
        }
    }

    /// One line per setting that differs from `stored`: `name: stored → now`.
    pub fn differences(&self, stored: &RunSettings) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, was: String, now: String| {
            if was != now {
                out.push(format!("  {name}: {was} (stored) → {now} (now)"));
            }
        };
        check(
            "data file contents (sha256)",
            stored.data_sha256.clone(),
            self.data_sha256.clone(),
        );
        check("policy", stored.policy.clone(), self.policy.clone());
        check(
            "threshold",
            format!("{:?}", stored.threshold),
            format!("{:?}", self.threshold),
        );
        check(
            "slm",
            format!("{:?}", stored.slm),
            format!("{:?}", self.slm),
        );
        check(
            "llm",
            format!("{:?}", stored.llm),
            format!("{:?}", self.llm),
        );
        check("grader", stored.grader.to_string(), self.grader.to_string());
        check("solver", stored.solver.to_string(), self.solver.to_string());
        out
    }
}

mod grade_mode_serde {
    use relay_grader::GradeMode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &GradeMode, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(mode)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<GradeMode, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Which items a run covers: problems `offset..offset+limit` of the file, `samples` each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    pub offset: usize,
    pub limit: Option<usize>,
    pub samples: usize,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            offset: 0,
            limit: None,
            samples: 1,
        }
    }
}

impl Selection {
    /// The selected problems of `dataset`; an error if there are none.
    pub fn apply<'a>(&self, dataset: &'a Dataset) -> Result<&'a [Problem]> {
        let start = self.offset.min(dataset.len());
        let end = match self.limit {
            Some(limit) => start.saturating_add(limit).min(dataset.len()),
            None => dataset.len(),
        };
        if start >= end || self.samples == 0 {
            return Err(EvalError::EmptySelection {
                path: dataset.path.clone(),
                offset: self.offset,
                len: dataset.len(),
            });
        }
        Ok(&dataset.problems[start..end])
    }
}

/// How to run (nothing here changes the results).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder: run.json, results.jsonl, summary.json.
    pub out: PathBuf,
    pub selection: Selection,
    /// Worker threads solving items at once.
    pub concurrency: usize,
    /// Draw a progress bar with ETA on stderr.
    pub progress: bool,
    /// Solve again the items already done whose LLM failed during a call (a server that went
    /// away, a timeout): their lines are removed from results.jsonl first.
    pub redo_llm_errors: bool,
}

/// What `OUT/run.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunFile {
    settings: RunSettings,
    /// The latest invocation's selection (informational).
    selection: Selection,
}

/// Runs every selected item that `OUT` does not have yet, then writes and returns the
/// summary. On a solver error or panic, the items already finished are kept (also those that
/// other workers finish while the run stops) and the error is returned; rerun to go on.
pub fn run(
    dataset: &Dataset,
    solver: &dyn Solver,
    settings: &RunSettings,
    options: &RunOptions,
) -> Result<Summary> {
    let started = Instant::now();
    let out = &options.out;
    let mut settings = settings.clone();
    settings.data_sha256 = dataset.sha256.clone();
    let problems = options.selection.apply(dataset)?;
    std::fs::create_dir_all(out).map_err(EvalError::io(out))?;
    check_or_store_settings(out, &settings, &options.selection)?;

    let results_path = out.join(RESULTS_FILE);
    let mut existing = read_results(&results_path)?;
    let mut redone = 0;
    if options.redo_llm_errors {
        let before = existing.lines.len();
        existing.lines.retain(|l| l.failed_llm_calls() == 0);
        redone = before - existing.lines.len();
        if redone > 0 {
            let mut kept = Vec::new();
            for line in &existing.lines {
                append_line(&mut kept, line).map_err(EvalError::io(&results_path))?;
            }
            write_atomic(&results_path, &kept)?;
            existing.valid_len = kept.len() as u64;
            existing.torn_tail = false;
        }
    }
    let mut lines = existing.lines;
    let done: HashSet<(usize, usize)> = lines.iter().map(ResultLine::key).collect();
    let pending: Vec<(&Problem, usize)> = problems
        .iter()
        .flat_map(|p| (0..options.selection.samples).map(move |s| (p, s)))
        .filter(|(p, s)| !done.contains(&(p.index, *s)))
        .collect();
    let total = problems.len() * options.selection.samples;
    let resumed = total - pending.len();

    // Drop a torn last line, then append.
    let mut writer = open_append(&results_path, existing.valid_len)?;

    let mut bar = Progress::new(options.progress, pending.len(), "items");
    if resumed > 0 {
        bar.println(format!(
            "{}: {resumed} of {total} items already done",
            out.display()
        ));
    }
    if redone > 0 {
        bar.println(format!(
            "{}: {redone} answers with a failed LLM call removed, to be solved again",
            out.display()
        ));
    }
    if existing.torn_tail {
        bar.println(format!(
            "{}: a torn last line was dropped and will be redone",
            results_path.display()
        ));
    }

    let mode = settings.grader;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let workers = options.concurrency.max(1).min(pending.len().max(1));
    let mut first_error: Option<EvalError> = None;
    let mut write_error: Option<EvalError> = None;
    let (mut ran, mut correct) = (0usize, 0usize);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<Result<ResultLine>>();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, stop, pending) = (&next, &stop, &pending);
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(problem, sample)) = pending.get(i) else {
                    break;
                };
                let item = solve_one(solver, mode, problem, sample);
                if item.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                if tx.send(item).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for item in rx {
            match item {
                Ok(line) => {
                    if write_error.is_none() {
                        if let Err(e) = append_line(&mut writer, &line) {
                            write_error = Some(EvalError::Io {
                                path: results_path.clone(),
                                source: e,
                            });
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                    ran += 1;
                    correct += line.correct as usize;
                    let acc = 100.0 * correct as f64 / ran as f64;
                    bar.inc(ran, format!("acc {acc:.1}%"));
                    lines.push(line);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    bar.finish();
    if let Some(e) = write_error.or(first_error) {
        return Err(e);
    }

    let indices: Vec<usize> = problems.iter().map(|p| p.index).collect();
    let timing = Timing {
        wall_s: started.elapsed().as_secs_f64(),
        solve_s: 0.0,
        items_run: ran,
        items_resumed: resumed,
    };
    let summary = summarize(&settings, &options.selection, &indices, &lines, timing);
    write_json_atomic(&out.join(SUMMARY_FILE), &summary)?;
    Ok(summary)
}

/// Solves one item and grades it; a solver error or panic becomes an [`EvalError`].
pub(crate) fn solve_one(
    solver: &dyn Solver,
    mode: GradeMode,
    problem: &Problem,
    sample: usize,
) -> Result<ResultLine> {
    let t0 = Instant::now();
    let solved = catch_unwind(AssertUnwindSafe(|| solver.solve(problem, sample)));
    let wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let solution = match solved {
        Ok(Ok(solution)) => solution,
        Ok(Err(e)) => {
            return Err(EvalError::Solver {
                index: problem.index,
                sample,
                message: error_chain(&*e),
            })
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            return Err(EvalError::SolverPanic {
                index: problem.index,
                sample,
                message,
            });
        }
    };
    let correct = relay_grader::grade(mode, &problem.answer, &solution.text);
    Ok(ResultLine {
        index: problem.index,
        sample,
        problem: problem.problem.clone(),
        gold: problem.answer.clone(),
        extracted: relay_grader::extract_answer(mode, &solution.text),
        correct,
        response: solution.text,
        slm_tokens: solution.slm_tokens,
        llm_tokens: solution.llm_tokens,
        calls: solution.calls,
        wall_ms,
        trace: solution.trace,
    })
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

fn check_or_store_settings(
    out: &Path,
    settings: &RunSettings,
    selection: &Selection,
) -> Result<()> {
    let now = RunFile {
        settings: settings.clone(),
        selection: selection.clone(),
    };
    check_or_store(&out.join(RUN_FILE), &now, |stored: &RunFile| {
        settings.differences(&stored.settings)
    })
}

/// Refuses to go on when the settings stored at `path` (by an earlier invocation) differ from
/// `now` — `differences(stored)` lists how — then stores `now`. No file there: just stores.
pub(crate) fn check_or_store<T: Serialize + serde::de::DeserializeOwned>(
    path: &Path,
    now: &T,
    differences: impl FnOnce(&T) -> Vec<String>,
) -> Result<()> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let stored: T =
                serde_json::from_slice(&bytes).map_err(|e| EvalError::SettingsMismatch {
                    path: path.to_path_buf(),
                    diff: format!("  it is not a run file this version can read: {e}"),
                })?;
            let diff = differences(&stored);
            if !diff.is_empty() {
                return Err(EvalError::SettingsMismatch {
                    path: path.to_path_buf(),
                    diff: diff.join("\n"),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(EvalError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    }
    write_json_atomic(path, now)
}

/// Writes pretty JSON to a temporary file beside `path` and renames it into place.
pub(crate) fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| EvalError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file in `path`'s folder and renames it over `path`: readers
/// see the old file or the new one, never half of one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(EvalError::io(dir))?;
    tmp.write_all(bytes).map_err(EvalError::io(path))?;
    // tempfile creates 0600; results and reports are meant to be read by others too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(EvalError::io(path))?;
    }
    tmp.as_file().sync_all().map_err(EvalError::io(path))?;
    tmp.persist(path).map_err(|e| EvalError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}
