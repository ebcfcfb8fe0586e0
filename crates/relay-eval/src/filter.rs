//! The training-pool filter (`relayllm data filter`), after RelayLLM: a problem is worth
//! training the relay on only when the LLM can solve it, so each problem is answered K times
//! by the LLM alone and K times by the SLM alone, graded, and kept when the LLM is right at
//! least once — optionally not when the SLM is right every time, since such a problem teaches
//! nothing about calling. Both pass rates go into the output, so the pool can be cut again
//! later without sampling again.
//!
//! Answers come from two [`Solver`]s (in the CLI, [`RelaySolver`](crate::RelaySolver) under
//! `slm-only` and `llm-only`, so a sample is what `eval` answers for the same seed) and are
//! graded as the eval runner grades them. Output: one [`PoolLine`] per problem, written in the
//! data file's order as soon as all 2K samples of the problem and of those before it are in,
//! and flushed at once. A rerun with `resume` reads the lines back (a torn last line is
//! redone) and skips their problems; `OUT.run.json` pins the settings, and `OUT.summary.json`
//! holds the pool's numbers, computed from the lines alone.

use crate::dataset::{Dataset, Problem};
use crate::error::{EvalError, Result};
use crate::progress::Progress;
use crate::results::{append_line, open_append, read_jsonl, JsonlFile, ResultLine};
use crate::runner::{check_or_store, solve_one, write_json_atomic, RunSettings, Selection, Solver};
use relay_core::Source;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

/// The settings file beside the output: `pool.jsonl` → `pool.run.json`.
pub fn run_file(out: &Path) -> PathBuf {
    out.with_extension("run.json")
}

/// The summary file beside the output: `pool.jsonl` → `pool.summary.json`.
pub fn summary_file(out: &Path) -> PathBuf {
    out.with_extension("summary.json")
}

/// Writes the kept problems of the pool file `pool` to `kept`, each as the data file had it
/// (the filter's own fields dropped), in the pool file's order: a data file `train grpo` reads
/// as is. Returns how many were kept.
pub fn write_kept(pool: &Path, kept: &Path) -> Result<usize> {
    if same_file(kept, pool) {
        return Err(EvalError::Options(format!(
            "the kept file {} is the pool file itself",
            kept.display()
        )));
    }
    let lines: JsonlFile<PoolLine> = read_jsonl(pool)?;
    let mut bytes = Vec::new();
    let mut n = 0;
    for line in lines.lines.iter().filter(|l| l.keep) {
        serde_json::to_writer(&mut bytes, &line.record)
            .map_err(|e| EvalError::Options(format!("writing {}: {e}", kept.display())))?;
        bytes.push(b'\n');
        n += 1;
    }
    crate::runner::write_atomic(kept, &bytes)?;
    Ok(n)
}

/// The paper's rule: keep a problem the LLM solves at least once in its K samples; with
/// `drop_slm_solved`, not one that the SLM solves in all K.
pub fn keep(llm_correct: usize, slm_correct: usize, samples: usize, drop_slm_solved: bool) -> bool {
    llm_correct >= 1 && !(drop_slm_solved && slm_correct == samples)
}

/// One output line: the problem's record as the data file has it, then the filter's fields
/// (which replace same-named fields of the record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolLine {
    #[serde(flatten)]
    pub record: Map<String, Value>,
    /// The problem's position among the data file's records ([`Problem::index`]).
    pub index: usize,
    /// Samples per model (K).
    pub samples: usize,
    /// Correct samples of each model alone.
    pub llm_correct: usize,
    pub slm_correct: usize,
    /// Correct / K.
    pub llm_pass_rate: f64,
    pub slm_pass_rate: f64,
    /// Whether the problem stays in the training pool ([`keep`]).
    pub keep: bool,
    /// The answer the grader took from each sample (`null`: none found), in sample order.
    pub llm_answers: Vec<Option<String>>,
    pub slm_answers: Vec<Option<String>>,
    /// Mean response length in tokens.
    pub llm_mean_tokens: f64,
    pub slm_mean_tokens: f64,
    /// Samples cut off by the token budget or the context: a wrong answer there may only be
    /// an unfinished one.
    pub llm_truncated: usize,
    pub slm_truncated: usize,
}

/// What the filter keeps of one graded sample.
#[derive(Debug, Clone)]
struct Sample {
    correct: bool,
    answer: Option<String>,
    tokens: usize,
    truncated: bool,
}

impl Sample {
    fn of(line: &ResultLine) -> Sample {
        let stop = line.trace.get("stop").and_then(Value::as_str);
        Sample {
            correct: line.correct,
            answer: line.extracted.clone(),
            tokens: line.response_tokens(),
            truncated: matches!(stop, Some("token_budget" | "context_full")),
        }
    }
}

/// One model's K samples of a problem, in sample order.
struct ModelSamples<'a>(&'a [Sample]);

impl ModelSamples<'_> {
    fn correct(&self) -> usize {
        self.0.iter().filter(|s| s.correct).count()
    }
    fn answers(&self) -> Vec<Option<String>> {
        self.0.iter().map(|s| s.answer.clone()).collect()
    }
    fn mean_tokens(&self) -> f64 {
        self.0.iter().map(|s| s.tokens as f64).sum::<f64>() / self.0.len().max(1) as f64
    }
    fn truncated(&self) -> usize {
        self.0.iter().filter(|s| s.truncated).count()
    }
}

impl PoolLine {
    fn new(
        record: &Map<String, Value>,
        index: usize,
        llm: &[Sample],
        slm: &[Sample],
        drop_slm_solved: bool,
    ) -> PoolLine {
        let samples = llm.len();
        let (llm, slm) = (ModelSamples(llm), ModelSamples(slm));
        let (llm_correct, slm_correct) = (llm.correct(), slm.correct());
        let mut line = PoolLine {
            record: Map::new(),
            index,
            samples,
            llm_correct,
            slm_correct,
            llm_pass_rate: llm_correct as f64 / samples as f64,
            slm_pass_rate: slm_correct as f64 / samples as f64,
            keep: keep(llm_correct, slm_correct, samples, drop_slm_solved),
            llm_answers: llm.answers(),
            slm_answers: slm.answers(),
            llm_mean_tokens: llm.mean_tokens(),
            slm_mean_tokens: slm.mean_tokens(),
            llm_truncated: llm.truncated(),
            slm_truncated: slm.truncated(),
        };
        // Our fields win: a record field of the same name would be a duplicate key.
        let ours = serde_json::to_value(&line).unwrap_or_default();
        let mut record = record.clone();
        if let Value::Object(ours) = ours {
            record.retain(|k, _| !ours.contains_key(k));
        }
        line.record = record;
        line
    }
}

/// How to run the filter (the settings that change a line are pinned in `OUT.run.json`).
#[derive(Debug, Clone)]
pub struct FilterOptions {
    /// The output JSONL file.
    pub out: PathBuf,
    /// Problems `offset..offset+limit` of the data file; `samples` is K, per model.
    pub selection: Selection,
    /// Samples solved at once (their decode steps batch when the engines are batched).
    pub concurrency: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Continue an existing output file (its settings must match); without it an existing
    /// output is refused.
    pub resume: bool,
    /// Also leave out problems the SLM solves in all K samples.
    pub drop_slm_solved: bool,
}

/// What `OUT.run.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FilterRun {
    settings: RunSettings,
    samples: usize,
    drop_slm_solved: bool,
    /// The latest invocation's selection (informational).
    selection: Selection,
}

impl FilterRun {
    fn differences(&self, stored: &FilterRun) -> Vec<String> {
        let mut out = self.settings.differences(&stored.settings);
        if self.samples != stored.samples {
            out.push(format!(
                "  samples: {} (stored) → {} (now)",
                stored.samples, self.samples
            ));
        }
        if self.drop_slm_solved != stored.drop_slm_solved {
            out.push(format!(
                "  drop_slm_solved: {} (stored) → {} (now)",
                stored.drop_slm_solved, self.drop_slm_solved
            ));
        }
        out
    }
}

/// How long a filter run took: the only part of a summary that differs between a resumed run
/// and an uninterrupted one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolTiming {
    /// Wall time of the invocation that wrote this summary.
    pub wall_s: f64,
    /// Problems answered by this invocation, and found done in the output.
    pub problems_run: usize,
    pub problems_resumed: usize,
    /// wall_s / problems_run (0 when none ran).
    pub seconds_per_problem: f64,
}

/// The pool's numbers (`OUT.summary.json`), from the output lines of the selected problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSummary {
    /// Problems selected: the pool before filtering.
    pub problems: usize,
    /// Samples per model (K).
    pub samples: usize,
    /// Problems kept.
    pub kept: usize,
    /// Problems the LLM solves at least once (all kept unless `drop_slm_solved`).
    pub llm_solved: usize,
    /// Problems the SLM solves in all K samples.
    pub slm_always_solved: usize,
    /// Problems the LLM solves at least once and the SLM never: where a call matters most.
    pub llm_only_solved: usize,
    pub drop_slm_solved: bool,
    /// `[k]` = problems with k of K samples correct, k = 0..=K.
    pub llm_correct_histogram: Vec<usize>,
    pub slm_correct_histogram: Vec<usize>,
    /// Mean pass rate over the problems.
    pub llm_mean_pass_rate: f64,
    pub slm_mean_pass_rate: f64,
    pub settings: RunSettings,
    pub selection: Selection,
    pub timing: PoolTiming,
}

/// Summarises the lines whose index is in `indices` (one per index: the first wins).
pub fn summarize_pool(
    lines: &[PoolLine],
    indices: &[usize],
    samples: usize,
    drop_slm_solved: bool,
    settings: &RunSettings,
    selection: &Selection,
    timing: PoolTiming,
) -> PoolSummary {
    let wanted: HashSet<usize> = indices.iter().copied().collect();
    let mut by_index: BTreeMap<usize, &PoolLine> = BTreeMap::new();
    for line in lines.iter().filter(|l| wanted.contains(&l.index)) {
        by_index.entry(line.index).or_insert(line);
    }
    let mut s = PoolSummary {
        problems: indices.len(),
        samples,
        kept: 0,
        llm_solved: 0,
        slm_always_solved: 0,
        llm_only_solved: 0,
        drop_slm_solved,
        llm_correct_histogram: vec![0; samples + 1],
        slm_correct_histogram: vec![0; samples + 1],
        llm_mean_pass_rate: 0.0,
        slm_mean_pass_rate: 0.0,
        settings: settings.clone(),
        selection: selection.clone(),
        timing,
    };
    for line in by_index.values() {
        s.kept += line.keep as usize;
        s.llm_solved += (line.llm_correct > 0) as usize;
        s.slm_always_solved += (line.slm_correct == samples) as usize;
        s.llm_only_solved += (line.llm_correct > 0 && line.slm_correct == 0) as usize;
        s.llm_correct_histogram[line.llm_correct.min(samples)] += 1;
        s.slm_correct_histogram[line.slm_correct.min(samples)] += 1;
        s.llm_mean_pass_rate += line.llm_pass_rate;
        s.slm_mean_pass_rate += line.slm_pass_rate;
    }
    let n = by_index.len().max(1) as f64;
    s.llm_mean_pass_rate /= n;
    s.slm_mean_pass_rate /= n;
    s
}

/// One model's samples of one problem as they come in.
struct Tally {
    llm: Vec<Option<Sample>>,
    slm: Vec<Option<Sample>>,
    missing: usize,
}

impl Tally {
    fn new(k: usize) -> Tally {
        Tally {
            llm: vec![None; k],
            slm: vec![None; k],
            missing: 2 * k,
        }
    }

    /// Records one sample; true once all 2K are in.
    fn put(&mut self, source: Source, sample: usize, s: Sample) -> bool {
        let slot = match source {
            Source::Llm => &mut self.llm[sample],
            Source::Slm => &mut self.slm[sample],
        };
        if slot.replace(s).is_none() {
            self.missing -= 1;
        }
        self.missing == 0
    }

    fn samples(self) -> (Vec<Sample>, Vec<Sample>) {
        (
            self.llm.into_iter().flatten().collect(),
            self.slm.into_iter().flatten().collect(),
        )
    }
}

/// Runs the filter over the selected problems that `options.out` does not have yet, then
/// writes and returns the summary. `settings` says what produced the answers (models, grader,
/// sampling in `solver`); it is stored with K and `drop_slm_solved` in `OUT.run.json`, and a
/// resumed run must match it. On a solver error or panic the lines already written are kept
/// and the error is returned; the problems in flight are redone by the next run.
pub fn filter(
    dataset: &Dataset,
    slm: &dyn Solver,
    llm: &dyn Solver,
    settings: &RunSettings,
    options: &FilterOptions,
) -> Result<PoolSummary> {
    let started = Instant::now();
    let k = options.selection.samples;
    if k == 0 {
        return Err(EvalError::Options(
            "K = 0 samples per model: the filter needs at least one (--samples)".into(),
        ));
    }
    let problems = options.selection.apply(dataset)?;
    let out = &options.out;
    if same_file(out, &dataset.path) {
        return Err(EvalError::Options(format!(
            "the output {} is the data file itself",
            out.display()
        )));
    }
    let run_path = run_file(out);
    let has_lines = std::fs::metadata(out).is_ok_and(|m| m.len() > 0);
    if has_lines && !options.resume {
        return Err(EvalError::OutputExists { path: out.clone() });
    }
    if has_lines && !run_path.exists() {
        return Err(EvalError::MissingRunFile {
            path: out.clone(),
            run: run_path,
        });
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(EvalError::io(dir))?;
    }
    let mut settings = settings.clone();
    settings.data_sha256 = dataset.sha256.clone();
    let run = FilterRun {
        settings: settings.clone(),
        samples: k,
        drop_slm_solved: options.drop_slm_solved,
        selection: options.selection.clone(),
    };
    if has_lines {
        check_or_store(&run_path, &run, |stored| run.differences(stored))?;
    } else {
        // Nothing written yet: whatever settings file is there describes no line.
        write_json_atomic(&run_path, &run)?;
    }

    let existing: JsonlFile<PoolLine> = if has_lines {
        read_jsonl(out)?
    } else {
        JsonlFile::default()
    };
    let done: HashSet<usize> = existing.lines.iter().map(|l| l.index).collect();
    let pending: Vec<&Problem> = problems
        .iter()
        .filter(|p| !done.contains(&p.index))
        .collect();
    let resumed = problems.len() - pending.len();
    // Problem by problem, so that problems finish (and are written) in order.
    let items: Vec<(usize, Source, usize)> = (0..pending.len())
        .flat_map(|pos| {
            [Source::Llm, Source::Slm]
                .into_iter()
                .flat_map(move |source| (0..k).map(move |s| (pos, source, s)))
        })
        .collect();
    let mut writer = open_append(out, existing.valid_len)?;

    let mut bar = Progress::new(options.progress, items.len(), "samples");
    if resumed > 0 {
        bar.println(format!(
            "{}: {resumed} of {} problems already done",
            out.display(),
            problems.len()
        ));
    }
    if existing.torn_tail {
        bar.println(format!(
            "{}: a torn last line was dropped and will be redone",
            out.display()
        ));
    }

    let mode = settings.grader;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let workers = options.concurrency.max(1).min(items.len().max(1));
    let mut first_error: Option<EvalError> = None;
    let mut write_error: Option<EvalError> = None;
    let mut written: Vec<PoolLine> = Vec::new();
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<Result<(usize, Source, usize, ResultLine)>>();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, stop, items, pending) = (&next, &stop, &items, &pending);
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(pos, source, sample)) = items.get(i) else {
                    break;
                };
                let problem = pending[pos];
                let solver = match source {
                    Source::Llm => llm,
                    Source::Slm => slm,
                };
                let item = solve_one(solver, mode, problem, sample)
                    .and_then(|line| no_failed_llm_call(line, source))
                    .map(|line| (pos, source, sample, line));
                if item.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                if tx.send(item).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut tallies: HashMap<usize, Tally> = HashMap::new();
        let mut finished: BTreeMap<usize, PoolLine> = BTreeMap::new();
        let mut next_to_write = 0usize;
        let mut samples_in = 0usize;
        for item in rx {
            let (pos, source, sample, line) = match item {
                Ok(item) => item,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            samples_in += 1;
            let tally = tallies.entry(pos).or_insert_with(|| Tally::new(k));
            if tally.put(source, sample, Sample::of(&line)) {
                let (llm_samples, slm_samples) = tallies.remove(&pos).expect("present").samples();
                let problem = pending[pos];
                finished.insert(
                    pos,
                    PoolLine::new(
                        &dataset.records[problem.index],
                        problem.index,
                        &llm_samples,
                        &slm_samples,
                        options.drop_slm_solved,
                    ),
                );
            }
            // Write in the data file's order, so a run's file does not depend on timing; what
            // finishes while a failed run winds down is still written.
            while let Some(line) = finished.remove(&next_to_write) {
                next_to_write += 1;
                if write_error.is_some() {
                    continue;
                }
                if let Err(e) = append_line(&mut writer, &line) {
                    write_error = Some(EvalError::Io {
                        path: out.clone(),
                        source: e,
                    });
                    stop.store(true, Ordering::SeqCst);
                    continue;
                }
                written.push(line);
            }
            let kept = written.iter().filter(|l| l.keep).count();
            bar.inc(
                samples_in,
                format!("{}/{} problems, {kept} kept", written.len(), pending.len()),
            );
        }
    });
    bar.finish();
    if let Some(e) = write_error.or(first_error) {
        return Err(e);
    }

    let problems_run = written.len();
    let wall_s = started.elapsed().as_secs_f64();
    let timing = PoolTiming {
        wall_s,
        problems_run,
        problems_resumed: resumed,
        seconds_per_problem: if problems_run == 0 {
            0.0
        } else {
            wall_s / problems_run as f64
        },
    };
    let mut lines = existing.lines;
    lines.extend(written);
    let indices: Vec<usize> = problems.iter().map(|p| p.index).collect();
    let summary = summarize_pool(
        &lines,
        &indices,
        k,
        options.drop_slm_solved,
        &settings,
        &options.selection,
        timing,
    );
    write_json_atomic(&summary_file(out), &summary)?;
    Ok(summary)
}

/// A sample whose LLM failed mid-answer (a server gone, a timeout) is not that model's
/// answer: the run stops, and a rerun with `resume` answers it again.
fn no_failed_llm_call(line: ResultLine, source: Source) -> Result<ResultLine> {
    if line.failed_llm_calls() == 0 {
        return Ok(line);
    }
    let why = line.trace["calls"]
        .as_array()
        .and_then(|calls| calls.iter().find_map(|c| c.get("llm_error")))
        .and_then(Value::as_str)
        .unwrap_or("unknown error")
        .to_string();
    Err(EvalError::Solver {
        index: line.index,
        sample: line.sample,
        message: format!(
            "the LLM failed during the {} sample: {why}",
            match source {
                Source::Llm => "LLM's",
                Source::Slm => "SLM's",
            }
        ),
    })
}

/// Whether two paths name one file (compared after resolving links, where both exist).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
