//! Supervised fine-tuning: token-mean cross-entropy over the masked-in tokens (assistant text
//! the SLM itself should write; prompts and LLM-written spans are masked out), AdamW with
//! warm-up + cosine decay, gradient accumulation and clipping, atomic checkpoints and exact
//! resume.
//!
//! The data order is a pure function of the seed (one shuffle per epoch), and a checkpoint
//! records the optimizer step and the number of examples consumed, so a run resumed from any
//! checkpoint takes the same updates as one that never stopped.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointMeta;
use crate::data::{read_sft_jsonl, SftData, SftExample, Vocab};
use crate::error::{Result, TrainError};
use crate::model::{Adapter, TrainModel};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Decay, GradAccum, LrSchedule};
use crate::run;

/// Name of the per-step log written into the output folder.
pub const TRAIN_LOG: &str = "train_log.jsonl";

/// Checkpoints kept in the output folder (older ones are removed after each save).

/// Every setting of an SFT run. The ones that change the result are pinned in each checkpoint
/// and must match on `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    pub model: PathBuf,
    pub data: PathBuf,
    pub adapter: Adapter,
    pub epochs: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub decay: Decay,
    /// Examples (sequences) per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub max_len: usize,
    pub seed: u64,
    pub limit: Option<usize>,
    /// Save every N steps (and always at the end); 0 = only at the end.
    pub save_every: u64,
}

impl SftConfig {
    /// Defaults for everything but the paths.
    pub fn new(model: PathBuf, data: PathBuf) -> Self {
        Self {
            model,
            data,
            adapter: Adapter::lora(16, 32.0),
            epochs: 1,
            lr: 1e-4,
            warmup_steps: 0,
            decay: Decay::Cosine,
            grad_accum: 1,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            max_len: 2048,
            seed: 0,
            limit: None,
            save_every: 100,
        }
    }

    /// The settings a resumed run must share with its checkpoint (all but `save_every`).
    fn pinned(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        if let Some(o) = v.as_object_mut() {
            o.remove("save_every");
        }
        v
    }
}

/// One optimizer step, as reported to the caller and written to `train_log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: usize,
    /// Token-mean cross-entropy over the step's masked-in tokens, before the update.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Masked-in (learned) tokens in the step.
    pub tokens: usize,
    /// All tokens run through the model in the step, per second of the step.
    pub tokens_per_s: f64,
}

/// What a finished run did.
#[derive(Debug, Clone, Serialize)]
pub struct SftSummary {
    pub steps: u64,
    pub examples: usize,
    pub skipped_lines: Vec<usize>,
    pub resumed_from: Option<u64>,
    pub final_loss: Option<f64>,
    pub checkpoint: PathBuf,
    pub trainable_params: usize,
    pub seconds: f64,
    /// `on_step` stopped the run before the end (no save at the stop).
    pub stopped_early: bool,
}

/// Masked cross-entropy of one example: (sum of −log p over masked-in tokens, their count).
/// The sum is a scalar tensor, differentiable in the trainable parameters.
pub fn example_loss(model: &TrainModel, ex: &SftExample) -> Result<(Tensor, usize)> {
    let lp = model.token_logprobs(&ex.input_ids)?;
    let mask: Vec<f32> = ex.loss_mask[1..].iter().map(|&m| m as f32).collect();
    let mask = Tensor::from_vec(mask, lp.dims1()?, &Device::Cpu)?;
    let nll = (lp * mask)?.sum_all()?.neg()?;
    Ok((nll, ex.loss_tokens()))
}

/// Mean masked loss over `examples` (no update); `mask_out` scores the masked-*out* tokens
/// instead (positions ≥ 1 with mask 0), which is how tests see what was not trained.
pub fn eval_loss(model: &TrainModel, examples: &[SftExample], mask_out: bool) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for ex in examples {
        let lp = model.token_logprobs(&ex.input_ids)?.to_vec1::<f32>()?;
        for (t, &m) in ex.loss_mask.iter().enumerate().skip(1) {
            if (m == 1) != mask_out {
                sum -= lp[t - 1] as f64;
                n += 1;
            }
        }
    }
    Ok(if n == 0 { 0.0 } else { sum / n as f64 })
}

/// The order examples are visited in epoch `epoch`.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        StdRng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// Reads the data file against a loaded model.
pub fn read_data(model: &TrainModel, cfg: &SftConfig) -> Result<SftData> {
    let vocab = Vocab {
        tokenizer: model.tokenizer(),
        template: model.chat_template(),
        vocab_size: model.config().vocab_size,
    };
    read_sft_jsonl(&cfg.data, &vocab, cfg.max_len, cfg.limit)
}

/// Runs SFT into `out`. With `resume`, continues from the newest checkpoint there (the
/// settings must match); without it, a folder that already holds checkpoints is an error.
/// `on_step` sees each step as it finishes (progress display); `Break` stops the run there
/// without a save, as a kill would (the run resumes from its last checkpoint).
pub fn train(
    cfg: &SftConfig,
    out: &Path,
    resume: bool,
    mut on_step: impl FnMut(&StepReport) -> ControlFlow<()>,
) -> Result<SftSummary> {
    let started = Instant::now();
    if cfg.grad_accum == 0 || cfg.epochs == 0 {
        return Err(TrainError::InvalidInput(
            "--grad-accum and --epochs must be at least 1".into(),
        ));
    }
    let existing = run::prepare(out, resume)?;

    let model = TrainModel::load(&cfg.model, cfg.adapter.clone(), cfg.seed)?;
    let data = read_data(&model, cfg)?;
    let n = data.examples.len();
    let total_examples = (n * cfg.epochs) as u64;
    let k = cfg.grad_accum as u64;
    let total_steps = total_examples.div_ceil(k);
    let schedule = LrSchedule {
        peak: cfg.lr,
        warmup_steps: cfg.warmup_steps,
        total_steps,
        decay: cfg.decay,
        min_ratio: 0.0,
    };
    let params = model.trainable_named();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
    )?;

    let pinned = serde_json::json!({"sft": cfg.pinned(), "examples": n});
    let (mut step, mut pos, resumed_from) =
        run::restore(existing.as_deref(), resume, &pinned, &model, &mut opt)?;
    let mut log = run::open_step_log(&out.join(TRAIN_LOG), resumed_from)?;

    let mut accum = GradAccum::new(params.len());
    let mut order_epoch = usize::MAX;
    let mut order = Vec::new();
    let mut last_loss = None;
    let mut final_path = existing.clone();
    while pos < total_examples {
        let t0 = Instant::now();
        let end = (pos + k).min(total_examples);
        accum.clear();
        let (mut loss_sum, mut loss_tokens, mut seen_tokens) = (0f64, 0usize, 0usize);
        let epoch = (pos / n as u64) as usize;
        for p in pos..end {
            let e = (p / n as u64) as usize;
            if e != order_epoch {
                order = epoch_order(n, cfg.seed, e);
                order_epoch = e;
            }
            let ex = &data.examples[order[(p % n as u64) as usize]];
            let (nll, count) = example_loss(&model, ex)?;
            accum.add(&params, &nll.backward()?)?;
            loss_sum += nll.to_scalar::<f32>()? as f64;
            loss_tokens += count;
            seen_tokens += ex.input_ids.len();
        }
        // Token mean over the whole step, not a mean of per-example means.
        accum.scale(1.0 / loss_tokens as f64)?;
        let grad_norm = clip_grad_norm(accum.grads_mut(), cfg.max_grad_norm)?;
        let lr = schedule.lr(step);
        opt.step(accum.grads(), lr)?;
        step += 1;
        pos = end;
        let loss = loss_sum / loss_tokens as f64;
        last_loss = Some(loss);
        let report = StepReport {
            step,
            total_steps,
            epoch,
            loss,
            lr,
            grad_norm,
            tokens: loss_tokens,
            tokens_per_s: seen_tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9),
        };
        writeln!(
            log,
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        )?;
        log.flush()?;
        if on_step(&report).is_break() {
            return Ok(SftSummary {
                steps: step,
                examples: n,
                skipped_lines: data.skipped_lines,
                resumed_from,
                final_loss: last_loss,
                checkpoint: final_path.unwrap_or_default(),
                trainable_params: model.num_trainable(),
                seconds: started.elapsed().as_secs_f64(),
                stopped_early: true,
            });
        }
        if (cfg.save_every > 0 && step % cfg.save_every == 0) || pos == total_examples {
            let meta = CheckpointMeta {
                step,
                position: pos,
                adapter: cfg.adapter.clone(),
                config: pinned.clone(),
            };
            final_path = Some(run::save(out, &meta, &model, &opt)?);
        }
    }
    // A resumed run with nothing left still names its checkpoint.
    let checkpoint = match final_path {
        Some(p) => p,
        None => {
            let meta = CheckpointMeta {
                step,
                position: pos,
                adapter: cfg.adapter.clone(),
                config: pinned.clone(),
            };
            run::save(out, &meta, &model, &opt)?
        }
    };
    Ok(SftSummary {
        steps: step,
        examples: n,
        skipped_lines: data.skipped_lines,
        resumed_from,
        final_loss: last_loss,
        checkpoint,
        trainable_params: model.num_trainable(),
        seconds: started.elapsed().as_secs_f64(),
        stopped_early: false,
    })
}
