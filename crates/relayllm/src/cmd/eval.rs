//! `relayllm eval`: a benchmark through the relay (or one model), graded, resumable; and
//! `relayllm report`: the table and plot over several finished runs.
use super::common::{ModelArgs, PolicyArgs, SamplingArgs};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use relay_core::PolicyKind;
use relay_engine::model::ModelPair;
use relay_eval::{Dataset, GradeMode, RelaySolver, RunOptions, RunSettings, Selection};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// The small model: `slm` (the fetched one), a .gguf, a safetensors folder, or an `http://` server.
    #[arg(long, default_value = "slm")]
    pub slm: String,
    /// The large model: `llm`, a .gguf, a safetensors folder, or an `http://` server.
    #[arg(long, default_value = "llm")]
    pub llm: String,
    /// Benchmark JSONL: one `{"problem", "answer"}` a line (`relayllm fetch data` writes GSM8K
    /// and MATH-500; ../shared/data/benchmarks has the six RelayLLM benchmarks).
    #[arg(long)]
    pub data: PathBuf,
    /// Run folder: run.json, results.jsonl (one line per answer, appended as it is done) and
    /// summary.json. Rerunning with the same folder resumes where the last run stopped.
    /// [default: runs/<data file stem>-<policy>[-t<threshold>]]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Answer only the first N problems (after --offset).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip the first K problems.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Attempts per problem (AIME-style avg@k needs a temperature above 0).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Problems solved at once (each with its own KV caches).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Response budget per answer: SLM and LLM tokens together.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Grader: `verify` (math-verify's behaviour, the evaluation grader) or `mathruler`.
    #[arg(long, value_enum, default_value_t = Grader::Verify)]
    pub grader: Grader,
    /// No progress bar (a log line per 10% instead).
    #[arg(long)]
    pub no_progress: bool,
    /// Solve again the answers of an earlier invocation whose LLM failed during a call (a
    /// remote server that went away, a timeout), where the SLM had written on alone. Without
    /// it they count as they are, and the summary's `llm_errors` says how many there are.
    #[arg(long)]
    pub redo_llm_errors: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub models: ModelArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Grader {
    Verify,
    Mathruler,
}

impl From<Grader> for GradeMode {
    fn from(g: Grader) -> GradeMode {
        match g {
            Grader::Verify => GradeMode::Verify,
            Grader::Mathruler => GradeMode::MathRuler,
        }
    }
}

#[derive(Args)]
pub struct ReportArgs {
    /// Finished run folders (each with summary.json), all on the same benchmark file; or
    /// training folders (grpo_log.jsonl / train_log.jsonl), whose curves are drawn into them.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where report.md, plot.svg and plot.png go [default: the first run's parent folder].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The run folder's default name: `runs/gsm8k-confidence-t0.4`.
fn default_out(args: &EvalArgs) -> PathBuf {
    let stem = args
        .data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let mut name = format!("{stem}-{}", args.policy.policy);
    if args.policy.policy == PolicyKind::Confidence {
        name.push_str(&format!("-t{}", args.policy.threshold));
    }
    PathBuf::from("runs").join(name)
}

/// Everything besides policy, models and data that changes an answer: pinned in run.json so a
/// resumed run cannot silently mix settings.
fn solver_settings(args: &EvalArgs) -> serde_json::Value {
    let p = &args.policy;
    let s = &args.sampling;
    json!({
        "max_tokens": args.max_tokens,
        "chat": true,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "seed": s.seed,
        "call_tokens": p.call_tokens,
        "until_newline": p.until_newline,
        "cooldown": p.cooldown,
        "token_probability": p.token_probability,
        "query_probability": p.query_probability,
        "max_calls": p.max_calls,
        "max_call_tokens": p.max_call_tokens,
    })
}

pub fn run(args: EvalArgs) -> Result<()> {
    anyhow::ensure!(args.samples >= 1, "--samples must be at least 1");
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.max_tokens >= 1, "--max-tokens must be at least 1");
    if args.samples > 1 && args.sampling.temperature == 0.0 {
        eprintln!(
            "note: --samples {} with --temperature 0 repeats the same greedy answer; pass --temperature for avg@k",
            args.samples
        );
    }
    let dataset = Dataset::load(&args.data)?;
    let out = args.out.clone().unwrap_or_else(|| default_out(&args));
    let kind = args.policy.policy;
    // One model alone needs only that model; the relay needs both.
    let models = match kind {
        PolicyKind::SlmOnly => {
            // The LLM slot is never called: it shares the SLM's engine rather than loading
            // the model a second time.
            let slm = args.models.load(&args.slm)?;
            ModelPair::new(slm.clone(), slm)
        }
        _ => args.models.load_pair(&args.slm, &args.llm)?,
    };
    // Several problems at once: their decode steps run as shared batches.
    let mut models = models;
    if args.concurrency > 1 {
        models.batch_local_engines(relay_engine::batching::DEFAULT_JOIN_WINDOW);
    }
    let mut settings = RunSettings::new(&dataset, kind.to_string());
    settings.threshold = (kind == PolicyKind::Confidence).then_some(args.policy.threshold as f64);
    settings.slm = Some(args.slm.clone());
    settings.llm = (kind != PolicyKind::SlmOnly).then(|| args.llm.clone());
    settings.grader = args.grader.into();
    settings.solver = solver_settings(&args);
    // The policy's seed is set per item by the solver.
    let solver = RelaySolver::new(
        models,
        args.policy.config(args.max_tokens, 0),
        args.sampling.params(),
    );
    let options = RunOptions {
        out: out.clone(),
        selection: Selection {
            offset: args.offset,
            limit: args.limit,
            samples: args.samples,
        },
        concurrency: args.concurrency,
        progress: !args.no_progress,
        redo_llm_errors: args.redo_llm_errors,
    };
    let summary = relay_eval::run(&dataset, &solver, &settings, &options)
        .with_context(|| format!("run folder {}", out.display()))?;
    println!(
        "{}: accuracy {:.1}% ({} problems{}) · call ratio {:.2}% · tokens SLM {} LLM {} · {} calls · {:.0}s",
        out.display(),
        summary.accuracy * 100.0,
        summary.n,
        if summary.samples > 1 {
            format!(" × {} samples, avg@{}", summary.samples, summary.samples)
        } else {
            String::new()
        },
        summary.call_ratio * 100.0,
        summary.tokens.slm,
        summary.tokens.llm,
        summary.calls,
        summary.timing.wall_s,
    );
    if summary.llm_errors > 0 {
        eprintln!(
            "warning: {} answers had a failed LLM call, where the SLM wrote on alone (see `llm_error` in their traces); rerun with --redo-llm-errors to solve them again",
            summary.llm_errors
        );
    }
    let t = summary.tags;
    if t.parsed + t.malformed > 0 {
        println!(
            "call tags: {} parsed, {} malformed ({:.1}% parse)",
            t.parsed,
            t.malformed,
            t.parse_rate * 100.0
        );
    }
    Ok(())
}

pub fn report(args: ReportArgs) -> Result<()> {
    use relay_eval::train_report::{is_training_dir, training_curves, write_curves};
    // Training folders get their curves; eval runs get the accuracy/share report.
    let (train, runs): (Vec<PathBuf>, Vec<PathBuf>) =
        args.runs.iter().cloned().partition(|d| is_training_dir(d));
    for dir in &train {
        let curves = training_curves(dir)?;
        println!("{}", curves.markdown);
        for f in write_curves(&curves, dir)? {
            eprintln!("wrote {}", f.display());
        }
    }
    if runs.is_empty() {
        return Ok(());
    }
    let report = relay_eval::report(&runs)?;
    let out = args.out.clone().unwrap_or_else(|| {
        runs[0]
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    });
    let files = relay_eval::write_report(&report, &out)?;
    println!("{}", report.markdown);
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}
