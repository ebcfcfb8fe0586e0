//! `relayllm data warmup`: warm-up examples for SFT (see `relay_train::warmup`); `relayllm
//! data filter`: the training pool, problems the LLM can solve (see `relay_eval::filter`).
use super::common::ModelArgs;
use super::eval::Grader;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use relay_core::{PolicyKind, RelayConfig};
use relay_engine::chat::{ChatMessage, ChatOptions, ChatTemplate};
use relay_engine::model::same_vocabulary;
use relay_engine::tokenizer::Tokenizer;
use relay_eval::{
    item_seed, Dataset, FilterOptions, GradeMode, PoolSummary, Problem, RelaySolver, RunSettings,
    Selection,
};
use relay_train::warmup::{
    build_example, normalize_reference_solution, CallCount, EngineTeacher, NDist, Placement,
    Placer, Teacher, WarmupOptions, WarmupRecord,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Warm-up examples for SFT: correct solutions with 0–3 `<call>n</call>` commands inserted
    /// at random token boundaries, LLM-written tokens masked out of the loss.
    Warmup(WarmupArgs),
    /// The training pool: each problem answered K times by the LLM alone and K times by the
    /// SLM alone (the prompt and grader of `eval`), kept when the LLM solves it at least once.
    /// One JSONL line per problem: its fields plus slm/llm_correct, slm/llm_pass_rate,
    /// samples, keep (and the answers, mean lengths, truncations). Resumable with --resume;
    /// OUT.run.json pins the settings, OUT.summary.json has the pass-rate histograms.
    Filter(FilterArgs),
}

#[derive(Args)]
pub struct FilterArgs {
    /// Problems, one `{"problem", "answer", ...}` a line (a training split such as
    /// ../shared/data/train/gsm8k-train.jsonl or math-train.jsonl; never an evaluation set).
    #[arg(long)]
    pub data: PathBuf,
    /// The small model: `slm` (the fetched one), a .gguf, a safetensors folder, or an `http://` server.
    #[arg(long, default_value = "slm")]
    pub slm: String,
    /// The large model: `llm`, a .gguf, a safetensors folder, or an `http://` server.
    #[arg(long, default_value = "llm")]
    pub llm: String,
    /// Samples per model and problem (K; the paper uses 16).
    #[arg(long)]
    pub samples: usize,
    /// Output JSONL, one line per problem in the data file's order, written as problems
    /// finish. An existing file is refused unless --resume.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue an existing --out: its lines are kept and their problems skipped (a torn last
    /// line, and the problems that were in flight, are solved again); the settings must be
    /// those it was written with (OUT.run.json). --limit and --offset may change.
    #[arg(long)]
    pub resume: bool,
    /// Also mark as not kept the problems the SLM solves in all K samples: they teach nothing
    /// about calling.
    #[arg(long)]
    pub drop_slm_solved: bool,
    /// Sampling temperature of both models (the paper's rollout temperature).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Base seed; each (problem, sample) gets its own, as in `eval`, so the same seed gives the
    /// same file (and the SLM's samples are `eval --policy slm-only`'s with this seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Token budget per answer.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Use only the first N problems (after --offset).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip the first K problems.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Samples decoded at once, of one or several problems (their steps run as shared batches).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Grader: `verify` (the evaluation grader, as `eval`) or `mathruler` (the training reward's).
    #[arg(long, value_enum, default_value_t = Grader::Verify)]
    pub grader: Grader,
    /// Also write the kept problems, as the data file has them, to this file: the pool `train
    /// grpo --data` reads. Every kept line of OUT goes in, also those of earlier runs resumed.
    #[arg(long)]
    pub kept: Option<PathBuf>,
    /// Print the summary as JSON on stdout (also written to OUT.summary.json).
    #[arg(long)]
    pub json: bool,
    /// No progress bar (a log line per 10% instead).
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

#[derive(Args)]
pub struct WarmupArgs {
    /// Problems, one `{"problem", "answer"}` a line. Train on `math-train.jsonl` (written by
    /// `relayllm fetch data`: MATH test problems outside MATH-500), never on a benchmark you
    /// evaluate on.
    #[arg(long)]
    pub problems: PathBuf,
    /// Where the examples go (JSONL: messages, input_ids, loss_mask, calls, ...).
    #[arg(long)]
    pub out: PathBuf,
    /// Solutions to use: a JSONL whose lines carry `solution` (matched to problems by `index`,
    /// else by line order — the problems file itself when it has reference solutions), or an
    /// eval run's `results.jsonl` (its correct responses). Every solution is graded against the
    /// problem's answer and dropped when it does not match.
    #[arg(long, conflicts_with = "sample_from")]
    pub solutions: Option<PathBuf>,
    /// Sample solutions from this model (`slm`, a path or an `http://` server) with the eval
    /// harness, keeping the ones the grader says are correct. The sampling run is kept in
    /// OUT.samples/ and resumes when interrupted.
    #[arg(long)]
    pub sample_from: Option<String>,
    /// Tokens a command asks for: fixed:N, uniform:LO-HI, choice:A,B,.. or geometric:MEAN[:CAP].
    #[arg(long, default_value = "uniform:8-64")]
    pub n_dist: NDist,
    /// Commands per example, `N` or `MIN-MAX` (uniform), whatever the placement.
    #[arg(long, default_value = "0-3")]
    pub calls: CallCount,
    /// Where commands go. `random`: --calls of them at random token boundaries (the paper's
    /// warm-up). `unsure[:P]`: before the solution tokens the SLM gives a probability below P
    /// (default 0.3), least likely first. `gap[:NATS]`: before the tokens whose log-probability
    /// under the LLM beats the SLM's by NATS or more (default 1.0), largest gap first; reads
    /// the log-probs of --llm (default: --teacher). Both read the solution teacher-forced (one pass per model and
    /// example) and put as many commands as --calls draws, at the best sites, fewer where fewer
    /// tokens qualify: the count is random placement's, only where they go differs.
    #[arg(long, default_value = "random")]
    pub placement: Placement,
    /// The LLM (`llm` or a path; an embedded engine) whose log-probs `--placement gap` reads,
    /// when it should not also write the LLM's tokens as --teacher does.
    #[arg(long)]
    pub llm: Option<String>,
    /// The LLM (`llm`, a path or an `http://` server): the tokens after each command become its
    /// own greedy continuation at that point, so the data looks like inference. Needs the same
    /// vocabulary as --model.
    #[arg(long)]
    pub teacher: Option<String>,
    /// Tokenizer and chat template to build the ids with [default: --sample-from's model, else slm].
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use only the first N problems (after --offset).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip the first K problems.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// --sample-from: attempts per problem.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// --sample-from: sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// --sample-from: token budget per attempt.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// --sample-from: problems sampled at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Grader that decides which solutions are correct.
    #[arg(long, value_enum, default_value_t = Grader::Verify)]
    pub grader: Grader,
    /// Keep at most this many solutions per problem.
    #[arg(long)]
    pub per_problem: Option<usize>,
    /// Leave out examples longer than this many tokens (prompt + response), rather than have
    /// SFT cut off their answers.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Warmup(a) => warmup(a),
        DataCommand::Filter(a) => filter(a),
    }
}

fn filter(args: FilterArgs) -> Result<()> {
    anyhow::ensure!(
        args.samples >= 1,
        "--samples must be at least 1 (K samples per model)"
    );
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.max_tokens >= 1, "--max-tokens must be at least 1");
    let dataset = Dataset::load(&args.data)?;
    let mut models = args.models.load_pair(&args.slm, &args.llm)?;
    if args.concurrency > 1 {
        models.batch_local_engines(relay_engine::batching::DEFAULT_JOIN_WINDOW);
    }
    let sampling = relay_engine::sampling::SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
    };
    // Each model alone, as `eval --policy slm-only / llm-only` answers.
    let alone = |kind: PolicyKind| {
        let mut config = RelayConfig::default();
        config.limits.max_response_tokens = args.max_tokens;
        config.policy.kind = kind;
        RelaySolver::new(models.clone(), config, sampling.clone())
    };
    let (slm, llm) = (alone(PolicyKind::SlmOnly), alone(PolicyKind::LlmOnly));

    let mut settings = RunSettings::new(&dataset, "slm-only,llm-only");
    settings.slm = Some(args.slm.clone());
    settings.llm = Some(args.llm.clone());
    settings.grader = args.grader.into();
    settings.solver = json!({
        "max_tokens": args.max_tokens,
        "chat": true,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
    });
    let options = FilterOptions {
        out: args.out.clone(),
        selection: Selection {
            offset: args.offset,
            limit: args.limit,
            samples: args.samples,
        },
        concurrency: args.concurrency,
        progress: !args.no_progress,
        resume: args.resume,
        drop_slm_solved: args.drop_slm_solved,
    };
    let summary =
        relay_eval::filter(&dataset, &slm, &llm, &settings, &options).with_context(|| {
            format!(
                "filtering {} into {}",
                args.data.display(),
                args.out.display()
            )
        })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", pool_report(&args.out, &summary));
    }
    if let Some(kept) = &args.kept {
        let n = relay_eval::write_kept(&args.out, kept)
            .with_context(|| format!("writing the kept problems to {}", kept.display()))?;
        eprintln!("{}: {n} kept problems", kept.display());
    }
    Ok(())
}

/// The summary for a person: pool size, kept, and both pass-rate histograms side by side.
fn pool_report(out: &Path, s: &PoolSummary) -> String {
    let k = s.samples;
    let mut text = format!(
        "{}: {} problems, K = {k} samples per model · kept {} ({}LLM solves it at least once{})\n",
        out.display(),
        s.problems,
        s.kept,
        if s.problems > 0 {
            format!("{:.1}%: ", 100.0 * s.kept as f64 / s.problems as f64)
        } else {
            String::new()
        },
        if s.drop_slm_solved {
            format!(", SLM not in all {k}")
        } else {
            String::new()
        },
    );
    text.push_str(&format!(
        "LLM solves {} at least once, SLM solves {} every time, {} only the LLM solves · mean pass rate LLM {:.1}%, SLM {:.1}%\n",
        s.llm_solved,
        s.slm_always_solved,
        s.llm_only_solved,
        100.0 * s.llm_mean_pass_rate,
        100.0 * s.slm_mean_pass_rate,
    ));
    text.push_str("correct of K   LLM   SLM\n");
    for (c, (l, m)) in s
        .llm_correct_histogram
        .iter()
        .zip(&s.slm_correct_histogram)
        .enumerate()
    {
        text.push_str(&format!("{:<12} {l:>5} {m:>5}\n", format!("{c}/{k}")));
    }
    text.push_str(&format!(
        "{:.0}s ({} problems run, {} resumed; {:.1}s a problem)\n",
        s.timing.wall_s,
        s.timing.problems_run,
        s.timing.problems_resumed,
        s.timing.seconds_per_problem
    ));
    text
}

/// A solution for one problem, with where it came from.
struct Candidate {
    text: String,
    source: &'static str,
}

fn warmup(args: WarmupArgs) -> Result<()> {
    let dataset = Dataset::load(&args.problems)?;
    let end = match args.limit {
        Some(l) => (args.offset + l).min(dataset.len()),
        None => dataset.len(),
    };
    anyhow::ensure!(
        args.offset < dataset.len(),
        "--offset {} is past the {} problems of {}",
        args.offset,
        dataset.len(),
        args.problems.display()
    );
    let problems = &dataset.problems[args.offset..end];
    let grade_mode: GradeMode = args.grader.into();

    let mut candidates: BTreeMap<usize, Vec<Candidate>> = match (&args.solutions, &args.sample_from)
    {
        (Some(file), None) => read_solutions(file)?,
        (None, Some(model)) => sample_solutions(&args, model)?,
        _ => bail!(
            "give --solutions FILE or --sample-from MODEL (where correct solutions come from)"
        ),
    };

    let model_arg = args
        .model
        .clone()
        .or_else(|| args.sample_from.clone())
        .unwrap_or_else(|| "slm".into());
    if super::common::is_remote(&model_arg) {
        bail!(
            "--model {model_arg} is a server: pass a local GGUF or model folder for the tokenizer"
        );
    }
    let model_path = args.models.resolve(&model_arg);
    let tokenizer = Tokenizer::load_for_model(&model_path)
        .with_context(|| format!("tokenizer of {}", model_path.display()))?;
    let template = ChatTemplate::load_for_model(&model_path)
        .with_context(|| format!("chat template of {}", model_path.display()))?;
    let eos = tokenizer
        .token_to_id("<|im_end|>")
        .or_else(|| tokenizer.eos_ids().first().copied())
        .with_context(|| format!("{} has no end-of-turn token", model_path.display()))?;

    // A model whose token ids must mean what --model's do (`flag` names it in the error).
    let load_same_vocabulary = |flag: &str, name: &Option<String>| -> Result<Option<_>> {
        let Some(name) = name else { return Ok(None) };
        let m = args.models.load(name)?;
        if !same_vocabulary(&m.tokenizer, &tokenizer) {
            bail!("{flag} {name} has another vocabulary than {model_arg}: token ids cannot pass between them");
        }
        Ok(Some(m))
    };
    let teacher_model = load_same_vocabulary("--teacher", &args.teacher)?;
    let gap_llm = load_same_vocabulary("--llm", &args.llm)?;
    if args.placement.needs_llm() && gap_llm.is_none() && teacher_model.is_none() {
        bail!(
            "--placement {} compares the LLM's log-probs with the SLM's: give the LLM as --llm or --teacher",
            args.placement
        );
    }
    let placer_slm = if args.placement.is_informed() {
        Some(args.models.load(&model_arg)?)
    } else {
        None
    };
    let placer = placer_slm.as_ref().map(|m| Placer {
        placement: args.placement,
        slm: m.engine.as_ref(),
        llm: gap_llm
            .as_ref()
            .or(teacher_model.as_ref())
            .map(|t| t.engine.as_ref()),
    });

    let options = WarmupOptions {
        calls: args.calls,
        n_dist: args.n_dist.clone(),
        tags: relay_core::TagConfig::default(),
    };
    let tmp = args.out.with_extension("jsonl.partial");
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut writer = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );

    let total: usize = problems
        .iter()
        .map(|p| candidates.get(&p.index).map_or(0, Vec::len))
        .sum();
    let bar = progress_bar(total as u64, args.no_progress);
    let mut stats = Stats::default();
    for problem in problems {
        let Some(list) = candidates.remove(&problem.index) else {
            stats.no_solution += 1;
            continue;
        };
        let mut kept = 0;
        for (k, cand) in list.into_iter().enumerate() {
            bar.inc(1);
            if args.per_problem.is_some_and(|m| kept >= m) {
                continue;
            }
            if !relay_grader::grade(grade_mode, &problem.answer, &cand.text) {
                stats.wrong_solution += 1;
                continue;
            }
            let mut teacher = teacher_model
                .as_ref()
                .map(|m| EngineTeacher::new(m.engine.as_ref()));
            let record = build_record(
                problem,
                &cand,
                &tokenizer,
                &template,
                eos,
                teacher.as_mut().map(|t| t as &mut dyn Teacher),
                placer.as_ref(),
                &options,
                item_seed(args.seed, problem.index, k),
            )?;
            if args.max_len.is_some_and(|m| record.input_ids.len() > m) {
                stats.too_long += 1;
                continue;
            }
            if record.teacher {
                let text = record.messages[1]["content"].as_str().unwrap_or_default();
                if !relay_grader::grade(grade_mode, &problem.answer, text) {
                    stats.teacher_changed_answer += 1;
                    continue;
                }
            }
            stats.add(&record);
            serde_json::to_writer(&mut writer, &record)?;
            writer.write_all(b"\n")?;
            kept += 1;
        }
    }
    bar.finish_and_clear();
    writer.flush()?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("moving {} to {}", tmp.display(), args.out.display()))?;

    let mut summary = stats.summary(problems.len());
    summary["placement"] = json!(args.placement.to_string());
    summary["teacher"] = json!(args.teacher);
    eprintln!(
        "{}: {} examples from {} problems ({} without a solution, {} solutions graded wrong, {} over --max-len{}) · {} calls ({:.2} a example) · LLM-written {:.1}% of response tokens",
        args.out.display(),
        stats.examples,
        problems.len(),
        stats.no_solution,
        stats.wrong_solution,
        stats.too_long,
        if args.teacher.is_some() {
            format!(", {} whose answer the teacher changed", stats.teacher_changed_answer)
        } else {
            String::new()
        },
        stats.calls,
        summary["calls_per_example"].as_f64().unwrap_or(0.0),
        summary["llm_share"].as_f64().unwrap_or(0.0) * 100.0,
    );
    let summary_path = args.out.with_extension("summary.json");
    std::fs::write(
        &summary_path,
        serde_json::to_string_pretty(&summary)? + "\n",
    )
    .with_context(|| format!("writing {}", summary_path.display()))?;
    if stats.examples == 0 {
        bail!(
            "no example written: of {} problems, {} had no solution, {} solutions were graded wrong, {} examples were over --max-len",
            problems.len(),
            stats.no_solution,
            stats.wrong_solution,
            stats.too_long
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn build_record(
    problem: &Problem,
    cand: &Candidate,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    eos: u32,
    teacher: Option<&mut dyn Teacher>,
    placer: Option<&Placer>,
    options: &WarmupOptions,
    seed: u64,
) -> Result<WarmupRecord> {
    let prompt = template
        .prompt(
            tokenizer,
            &[ChatMessage::user(problem.problem.clone())],
            &ChatOptions {
                add_generation_prompt: true,
                ..ChatOptions::default()
            },
        )?
        .ids;
    let mut solution = tokenizer.encode(&cand.text, false)?;
    solution.push(eos);
    let has_teacher = teacher.is_some();
    let is_eos = |t: u32| t == eos || tokenizer.is_eos(t);
    let mut encode_tag = |n: u64| {
        tokenizer
            .encode(&options.tags.format(n), false)
            .map_err(|e| e.to_string())
    };
    let sites = placer
        .map(|p| p.sites(&prompt, &solution, &is_eos))
        .transpose()
        .with_context(|| format!("placing the commands of problem {}", problem.index))?;
    let built = build_example(
        &solution,
        &is_eos,
        &mut encode_tag,
        &prompt,
        teacher,
        options,
        sites.as_deref(),
        seed,
    )
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("problem {}", problem.index))?;
    let shown: Vec<u32> = built
        .response
        .iter()
        .copied()
        .filter(|&t| !is_eos(t))
        .collect();
    let content = tokenizer.decode(&shown)?;
    let loss_mask = built.loss_mask(prompt.len());
    let mut input_ids = prompt.clone();
    input_ids.extend_from_slice(&built.response);
    Ok(WarmupRecord {
        index: problem.index,
        problem: problem.problem.clone(),
        answer: problem.answer.clone(),
        messages: vec![
            json!({"role": "user", "content": problem.problem}),
            json!({"role": "assistant", "content": content}),
        ],
        input_ids,
        loss_mask,
        prompt_tokens: prompt.len(),
        response_tokens: built.response.len(),
        llm_tokens: built.llm_tokens(),
        calls: built.calls,
        solution_source: cand.source.into(),
        teacher: has_teacher,
    })
}

/// Solutions by problem index, from a file of `solution`s or an eval run's results.
fn read_solutions(path: &Path) -> Result<BTreeMap<usize, Vec<Candidate>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out: BTreeMap<usize, Vec<Candidate>> = BTreeMap::new();
    let mut record = 0;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), n + 1))?;
        let index = match v.get("index") {
            Some(i) => i.as_u64().with_context(|| {
                format!(
                    "{}:{}: `index` is not a whole number",
                    path.display(),
                    n + 1
                )
            })? as usize,
            None => record,
        };
        record += 1;
        let candidate = if let Some(resp) = v.get("response") {
            // An eval run's results line: only correct answers are solutions.
            if v.get("correct").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            Candidate {
                text: resp
                    .as_str()
                    .with_context(|| {
                        format!("{}:{}: `response` is not text", path.display(), n + 1)
                    })?
                    .to_string(),
                source: "slm",
            }
        } else if let Some(sol) = v.get("solution") {
            Candidate {
                text: normalize_reference_solution(sol.as_str().with_context(|| {
                    format!("{}:{}: `solution` is not text", path.display(), n + 1)
                })?),
                source: "file",
            }
        } else {
            bail!(
                "{}:{}: a line needs `solution` (a reference solution) or `response` and `correct` (an eval results line)",
                path.display(),
                n + 1
            );
        };
        out.entry(index).or_default().push(candidate);
    }
    Ok(out)
}

/// Runs the eval harness with the SLM alone over the problems (resumable, in OUT.samples/)
/// and reads back its results.
fn sample_solutions(args: &WarmupArgs, model: &str) -> Result<BTreeMap<usize, Vec<Candidate>>> {
    let run_dir = args.out.with_extension("samples");
    let mut argv: Vec<String> = vec![
        "eval".into(),
        "--policy".into(),
        "slm-only".into(),
        "--slm".into(),
        model.into(),
        "--data".into(),
        args.problems.display().to_string(),
        "--out".into(),
        run_dir.display().to_string(),
        "--offset".into(),
        args.offset.to_string(),
        "--samples".into(),
        args.samples.to_string(),
        "--temperature".into(),
        args.temperature.to_string(),
        "--max-tokens".into(),
        args.max_tokens.to_string(),
        "--concurrency".into(),
        args.concurrency.to_string(),
        "--seed".into(),
        args.seed.to_string(),
        "--grader".into(),
        match args.grader {
            Grader::Verify => "verify",
            Grader::Mathruler => "mathruler",
        }
        .into(),
    ];
    if let Some(l) = args.limit {
        argv.extend(["--limit".into(), l.to_string()]);
    }
    if let Some(t) = args.models.threads {
        argv.extend(["--threads".into(), t.to_string()]);
    }
    if let Some(d) = &args.models.models_dir {
        argv.extend(["--models-dir".into(), d.display().to_string()]);
    }
    if args.no_progress {
        argv.push("--no-progress".into());
    }
    #[derive(Parser)]
    struct EvalCli {
        #[command(flatten)]
        args: super::eval::EvalArgs,
    }
    let eval = EvalCli::try_parse_from(&argv)
        .context("building the sampling run's settings")?
        .args;
    super::eval::run(eval).context("sampling solutions from the SLM")?;
    read_solutions(&run_dir.join("results.jsonl"))
}

#[derive(Default)]
struct Stats {
    examples: usize,
    calls: usize,
    by_calls: BTreeMap<usize, usize>,
    response_tokens: usize,
    llm_tokens: usize,
    no_solution: usize,
    wrong_solution: usize,
    teacher_changed_answer: usize,
    too_long: usize,
    from_slm: usize,
}

impl Stats {
    fn add(&mut self, r: &WarmupRecord) {
        self.examples += 1;
        self.calls += r.calls.len();
        *self.by_calls.entry(r.calls.len()).or_default() += 1;
        self.response_tokens += r.response_tokens;
        self.llm_tokens += r.llm_tokens;
        self.from_slm += usize::from(r.solution_source == "slm");
    }

    fn summary(&self, problems: usize) -> Value {
        let per = |x: usize| {
            if self.examples == 0 {
                0.0
            } else {
                x as f64 / self.examples as f64
            }
        };
        json!({
            "problems": problems,
            "examples": self.examples,
            "from_slm_samples": self.from_slm,
            "problems_without_solution": self.no_solution,
            "solutions_graded_wrong": self.wrong_solution,
            "teacher_changed_answer": self.teacher_changed_answer,
            "too_long": self.too_long,
            "calls": self.calls,
            "calls_per_example": per(self.calls),
            "examples_by_calls": self.by_calls,
            "response_tokens": self.response_tokens,
            "llm_tokens": self.llm_tokens,
            "llm_share": if self.response_tokens == 0 { 0.0 } else { self.llm_tokens as f64 / self.response_tokens as f64 },
        })
    }
}

fn progress_bar(total: u64, hidden: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if hidden || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} solutions · {elapsed} elapsed · ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
