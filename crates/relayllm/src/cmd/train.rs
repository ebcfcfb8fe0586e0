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
    }
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
