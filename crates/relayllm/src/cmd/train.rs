//! `relayllm train sft`: supervised fine-tuning of a model (LoRA or full) on JSONL
//! conversations, with a progress bar (plain lines when stderr is not a terminal), a
//! `train_log.jsonl` and resumable checkpoints in `--out`.
use super::common::resolve_local_model;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use relay_train::optim::Decay;
use relay_train::sft::{train, SftConfig, StepReport};
use relay_train::{Adapter, LoraTarget};
use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning: loss on assistant tokens only (LLM-written tokens masked).
    Sft(SftArgs),
    /// GRPO on relay rollouts with the difficulty-aware reward (the SLM learns when to call).
    Grpo(GrpoArgs),
}

#[derive(Args)]
pub struct GrpoArgs {
    /// The SLM to train: `slm`, a .gguf (frozen dequantized base + adapters) or a safetensors
    /// folder — usually the warm-up SFT's export.
    #[arg(long, default_value = "slm")]
    pub slm: String,
    /// The LLM that serves calls: `llm`, a path, or an `http://` OpenAI-compatible server.
    #[arg(long, default_value = "llm")]
    pub llm: String,
    /// Prompts, one `{"problem" (or "prompt"), "answer"}` a line. Use `math-train.jsonl`
    /// (`relayllm fetch data`), never a benchmark you evaluate on.
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: checkpoints, grpo_log.jsonl (per step) and rollouts.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Rollouts per prompt.
    #[arg(long, default_value_t = 8)]
    pub group: usize,
    /// Prompts per step.
    #[arg(long, default_value_t = 4)]
    pub prompts_per_step: usize,
    /// Optimizer steps to reach (a resumed run counts the steps already done).
    #[arg(long, default_value_t = 100)]
    pub steps: u64,
    /// difficulty (DESIGN.md's table), simple (accuracy − ρ) or accuracy (plain GRPO).
    #[arg(long, default_value = "difficulty")]
    pub reward: relay_core::reward::RewardKind,
    /// What ρ counts: requested (the n the SLM asked for) or served (what the LLM wrote).
    #[arg(long, default_value = "requested")]
    pub rho: relay_core::reward::RhoKind,
    /// Train on the LLM-written tokens too (masked out by default).
    #[arg(long)]
    pub train_llm_tokens: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 16, conflicts_with = "full")]
    pub lora_rank: usize,
    /// LoRA alpha [default: 2 × rank].
    #[arg(long, conflicts_with = "full")]
    pub lora_alpha: Option<f64>,
    /// Train every weight instead of LoRA adapters.
    #[arg(long)]
    pub full: bool,
    /// Learning rate (constant after the warm-up).
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// Steps of linear LR warm-up.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Optimizer passes over each step's rollouts.
    #[arg(long, default_value_t = 1)]
    pub ppo_epochs: usize,
    /// PPO clip below 1 (the ratio is kept above 1 − this for negative advantages).
    #[arg(long, default_value_t = 0.2)]
    pub clip_low: f64,
    /// PPO clip above 1 (the ratio is kept below 1 + this for positive advantages).
    #[arg(long, default_value_t = 0.3)]
    pub clip_high: f64,
    /// Weight of the k3 KL to the start model.
    #[arg(long, default_value_t = 0.01)]
    pub kl_coef: f64,
    /// Rollout sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Rollout nucleus sampling.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Response budget per rollout (SLM + LLM tokens).
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Calls per rollout; later commands are ignored.
    #[arg(long, default_value_t = 4)]
    pub max_calls: usize,
    /// LLM tokens per call at most, whatever the command asks.
    #[arg(long, default_value_t = 512)]
    pub max_call_tokens: usize,
    /// Prompts are plain text, not chat-formatted.
    #[arg(long)]
    pub no_chat: bool,
    /// Do not append the evaluation instruction ("… within \\boxed{}.") to problems.
    #[arg(long)]
    pub no_instruction: bool,
    /// Grader of the reward: mathruler (the training grader) or verify.
    #[arg(long, value_enum, default_value_t = super::eval::Grader::Mathruler)]
    pub grader: super::eval::Grader,
    /// Seed of the prompt order, the rollouts and the LoRA init.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the first N prompts only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Save a checkpoint every N steps (and at the end; 0: only at the end).
    #[arg(long, default_value_t = 10)]
    pub save_every: u64,
    /// Rollout engine weights: q8_0 (fast CPU decoding) or f32 (exact).
    #[arg(long, default_value = "q8_0")]
    pub rollout_weights: relay_train::grpo::RolloutWeights,
    /// Rollouts of a step run at once, their decode steps batched (1: one after another); the
    /// samples are the same either way, and a resumed run may change it.
    #[arg(long, default_value_t = relay_train::grpo::DEFAULT_ROLLOUT_CONCURRENCY)]
    pub rollout_concurrency: usize,
    /// Continue from the newest checkpoint in --out (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// Print a JSON summary at the end.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: super::common::ModelArgs,
}

#[derive(Args)]
pub struct SftArgs {
    /// `slm` (the fetched SLM), a .gguf file (trained as a dequantized, frozen base plus
    /// adapters), or a folder with config.json + safetensors.
    #[arg(long)]
    pub model: String,
    /// JSONL: `{"messages": [...]}` (rendered with the chat template, loss on assistant
    /// turns) or `{"messages": [...], "input_ids": [...], "loss_mask": [0|1, ...]}` (as given).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: checkpoints and train_log.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// LoRA rank.
    #[arg(long, default_value_t = 16, conflicts_with = "full")]
    pub lora_rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank) [default: 2 × rank].
    #[arg(long, conflicts_with = "full")]
    pub lora_alpha: Option<f64>,
    /// Layers LoRA adapts, comma-separated, from q,k,v,o,gate,up,down.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q,k,v,o,gate,up,down",
        conflicts_with = "full"
    )]
    pub lora_targets: Vec<String>,
    /// Train every weight instead of LoRA adapters.
    #[arg(long)]
    pub full: bool,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Steps of linear warm-up before the decay.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Decay after warm-up: cosine, linear or constant.
    #[arg(long, default_value = "cosine", value_parser = parse_decay)]
    pub decay: Decay,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Cut sequences to this many tokens.
    #[arg(long, default_value_t = 2048)]
    pub max_len: usize,
    /// Save a checkpoint every N steps (and always at the end; 0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub save_every: u64,
    /// Continue from the newest checkpoint in --out (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// Seed for the data order and the LoRA init.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N examples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Compute threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Folder of the fetched pair, for `slm` [default: $RELAYLLM_MODELS_DIR or the repo's models/].
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Print a JSON summary at the end instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

fn parse_decay(s: &str) -> Result<Decay, String> {
    match s {
        "cosine" => Ok(Decay::Cosine),
        "linear" => Ok(Decay::Linear),
        "constant" => Ok(Decay::Constant),
        other => Err(format!(
            "unknown decay `{other}` (cosine, linear, constant)"
        )),
    }
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Sft(args) => sft(args),
        TrainCommand::Grpo(args) => grpo(args),
    }
}

fn grpo(mut args: GrpoArgs) -> Result<()> {
    use relay_train::grpo::{train, GrpoConfig, GrpoObjective};
    set_threads(args.models.threads);
    let slm = resolve_local_model(&args.slm, args.models.models_dir.as_deref())?;
    // A remote LLM reads the SLM's tokenizer unless told otherwise: they must share it.
    if super::common::is_remote(&args.llm) && args.models.tokenizer.is_none() {
        args.models.tokenizer = Some(slm.clone());
    }
    let llm = args.models.load(&args.llm)?;
    let adapter = if args.full {
        Adapter::Full
    } else {
        Adapter::lora(
            args.lora_rank,
            args.lora_alpha.unwrap_or(2.0 * args.lora_rank as f64),
        )
    };
    let mut cfg = GrpoConfig::new(slm.clone(), args.data.clone());
    cfg.adapter = adapter;
    cfg.group = args.group;
    cfg.prompts_per_step = args.prompts_per_step;
    cfg.steps = args.steps;
    cfg.lr = args.lr;
    cfg.warmup_steps = args.warmup_steps;
    cfg.max_grad_norm = args.max_grad_norm;
    cfg.ppo_epochs = args.ppo_epochs;
    cfg.objective = GrpoObjective {
        clip_low: args.clip_low,
        clip_high: args.clip_high,
        kl_coef: args.kl_coef,
        train_llm_tokens: args.train_llm_tokens,
    };
    cfg.reward = args.reward;
    cfg.rho = args.rho;
    cfg.temperature = args.temperature;
    cfg.top_p = args.top_p;
    cfg.max_tokens = args.max_tokens;
    cfg.max_calls = args.max_calls;
    cfg.max_call_tokens = args.max_call_tokens;
    cfg.chat = !args.no_chat;
    cfg.instruction = !args.no_instruction;
    cfg.grader = args.grader.into();
    cfg.seed = args.seed;
    cfg.limit = args.limit;
    cfg.threads = args.models.threads;
    cfg.save_every = args.save_every;
    cfg.rollout_weights = args.rollout_weights;
    cfg.rollout_concurrency = args.rollout_concurrency;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(args.steps);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed}<{eta}] {msg}")
                .expect("valid template"),
        );
        bar
    });
    let summary = train(&cfg, &llm, &args.out, args.resume, |l| {
        let msg = format!(
            "reward {:.3}  acc {:.2}  calls {:.2}  LLM share {:.3}  kl {:.4}  ({:.0}s rollouts at {:.1} tok/s, {:.0}s update)",
            l.reward_mean, l.accuracy, l.call_rate, l.call_ratio, l.kl, l.rollout_s, l.rollout_tok_s, l.train_s
        );
        match &bar {
            Some(b) => {
                b.set_position(l.step as u64);
                b.set_message(msg);
            }
            None => eprintln!("step {}/{}  {msg}", l.step, args.steps),
        }
        ControlFlow::Continue(())
    })
    .with_context(|| format!("GRPO of {} on {}", slm.display(), args.data.display()))?;
    if let Some(b) = &bar {
        b.finish();
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{} steps{} in {:.0} s; checkpoint {}; curves: relayllm report {}",
            summary.steps,
            summary
                .resumed_from
                .map(|s| format!(" (resumed from step {s})"))
                .unwrap_or_default(),
            summary.seconds,
            summary.checkpoint.display(),
            args.out.display()
        );
    }
    Ok(())
}

/// Sets the compute threads before any pool starts (they are process-wide).
pub fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
            std::env::set_var(var, n.max(1).to_string());
        }
    }
}

fn sft(args: SftArgs) -> Result<()> {
    set_threads(args.threads);
    let model = resolve_local_model(&args.model, args.models_dir.as_deref())?;
    let adapter = if args.full {
        Adapter::Full
    } else {
        let targets = args
            .lora_targets
            .iter()
            .map(|t| t.trim().parse::<LoraTarget>())
            .collect::<Result<Vec<_>, _>>()?;
        Adapter::Lora {
            rank: args.lora_rank,
            alpha: args.lora_alpha.unwrap_or(2.0 * args.lora_rank as f64),
            targets,
        }
    };
    let cfg = SftConfig {
        model: model.clone(),
        data: args.data.clone(),
        adapter,
        epochs: args.epochs,
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        decay: args.decay,
        grad_accum: args.grad_accum,
        max_grad_norm: args.max_grad_norm,
        weight_decay: args.weight_decay,
        max_len: args.max_len,
        seed: args.seed,
        limit: args.limit,
        save_every: args.save_every,
    };
    let progress = Progress::new();
    let summary = train(&cfg, &args.out, args.resume, |r| {
        progress.step(r);
        ControlFlow::Continue(())
    })
    .with_context(|| format!("training {} on {}", model.display(), args.data.display()))?;
    progress.finish();
    if !summary.skipped_lines.is_empty() {
        eprintln!(
            "note: {} example(s) had no assistant token within --max-len {} and were left out (lines {:?})",
            summary.skipped_lines.len(),
            args.max_len,
            summary.skipped_lines
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{} steps on {} examples{}, final loss {}, {:.1} s; checkpoint {}",
            summary.steps,
            summary.examples,
            summary
                .resumed_from
                .map(|s| format!(" (resumed from step {s})"))
                .unwrap_or_default(),
            summary
                .final_loss
                .map_or("-".to_string(), |l| format!("{l:.4}")),
            summary.seconds,
            summary.checkpoint.display()
        );
    }
    Ok(())
}

/// A bar on a terminal, one line per step otherwise (logs, CI).
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed}<{eta}] {msg}")
                    .expect("valid template"),
            );
            bar
        });
        Self { bar }
    }

    fn step(&self, r: &StepReport) {
        let msg = format!(
            "loss {:.4}  lr {:.2e}  |g| {:.3}  {:.0} tok/s",
            r.loss, r.lr, r.grad_norm, r.tokens_per_s
        );
        match &self.bar {
            Some(bar) => {
                bar.set_length(r.total_steps);
                bar.set_position(r.step);
                bar.set_message(msg);
            }
            None => eprintln!("step {}/{}  {msg}", r.step, r.total_steps),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
