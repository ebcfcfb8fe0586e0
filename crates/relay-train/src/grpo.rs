//! GRPO on the relay's own rollouts (DESIGN.md, "Training" 3–4).
//!
//! A step: for each prompt of the batch, `group` relay runs with the current SLM (the same
//! [`relay_engine::relay::relay`] as inference, no rollback), all the step's runs at once
//! through one pair whose decode steps are batched; each is graded and the group's
//! rewards come from [`relay_core::reward::group_rewards`] (scenarios decided per group);
//! advantages are `(r - mean) / (std + 1e-6)` within the group. The loss is PPO's clipped
//! surrogate (ε_low 0.2, ε_high 0.3) plus `kl_coef` × the k3 estimate of KL to the frozen start
//! model, averaged over every trained token of the batch (token-mean). LLM-written tokens are
//! not trained unless `train_llm_tokens`.

use crate::checkpoint::CheckpointMeta;
use crate::error::{Result, TrainError};
use crate::model::{Adapter, TrainModel};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Decay, GradAccum, LrSchedule};
use crate::run;
use candle_core::{Tensor, D};
use relay_core::reward::{group_rewards, RewardKind, RhoKind, Rollout, RolloutCall, Scenario};
use relay_core::Source;
use relay_core::{PolicyKind, RelayConfig};
use relay_engine::batching::DEFAULT_JOIN_WINDOW;
use relay_engine::chat::ChatMessage;
use relay_engine::model::{same_vocabulary, LoadedModel, ModelPair};
use relay_engine::relay::{relay, LlmRetry, RelayPair, RelayRequest};
use relay_engine::sampling::SamplingParams;
use relay_engine::LoadOptions;
use relay_grader::GradeMode;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The knobs of the objective.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpoObjective {
    pub clip_low: f64,
    pub clip_high: f64,
    pub kl_coef: f64,
    pub train_llm_tokens: bool,
}

impl Default for GrpoObjective {
    fn default() -> Self {
        Self {
            clip_low: 0.2,
            clip_high: 0.3,
            kl_coef: 0.01,
            train_llm_tokens: false,
        }
    }
}

/// Group-relative advantages: `(r - mean) / (std + 1e-6)` (population std); all zero when
/// every reward is equal.
pub fn advantages(rewards: &[f64]) -> Vec<f64> {
    if rewards.is_empty() {
        return Vec::new();
    }
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    rewards.iter().map(|r| (r - mean) / (std + 1e-6)).collect()
}

/// One finished rollout, ready for the loss.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Which prompt of the data file.
    pub index: usize,
    pub prompt_ids: Vec<u32>,
    pub response_ids: Vec<u32>,
    pub sources: Vec<Source>,
    pub text: String,
    pub correct: bool,
    pub calls: Vec<RolloutCall>,
    pub reward: f64,
    pub advantage: f64,
}

impl Sample {
    pub fn rollout(&self) -> Rollout {
        Rollout {
            correct: self.correct,
            calls: self.calls.clone(),
            response_tokens: self.response_ids.len() as u64,
        }
    }

    pub fn llm_tokens(&self) -> usize {
        self.sources.iter().filter(|s| **s == Source::Llm).count()
    }

    /// 1.0 on response tokens the loss trains, per [`GrpoObjective::train_llm_tokens`].
    pub fn loss_mask(&self, objective: &GrpoObjective) -> Vec<f32> {
        self.sources
            .iter()
            .map(|s| f32::from(u8::from(*s == Source::Slm || objective.train_llm_tokens)))
            .collect()
    }

    /// Prompt and response: what the policy scores.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids = self.prompt_ids.clone();
        ids.extend_from_slice(&self.response_ids);
        ids
    }
}

/// Fills in rewards and advantages of one group (all rollouts of one prompt).
pub fn score_group(group: &mut [Sample], reward: RewardKind, rho: RhoKind) -> Scenario {
    let rollouts = relay_core::reward::RolloutGroup {
        rollouts: group.iter().map(Sample::rollout).collect(),
    };
    let scored = group_rewards(&rollouts, reward, rho);
    let adv = advantages(&scored.rewards);
    for ((s, r), a) in group.iter_mut().zip(&scored.rewards).zip(adv) {
        s.reward = *r;
        s.advantage = a;
    }
    scored.scenario
}

/// Per-token terms of one sample's loss, summed (not yet divided by the batch's token count).
pub struct LossTerms {
    /// Σ mask × (clipped surrogate + kl_coef × k3): a scalar, differentiable.
    pub sum: Tensor,
    /// Σ mask × k3 (detached), Σ mask, and how many masked tokens were clipped.
    pub kl_sum: f64,
    pub tokens: f64,
    pub clipped: f64,
}

/// The GRPO loss terms of one sample. `new_lp`: the policy's log-probs of the response tokens
/// (a `[n]` tensor, differentiable); `old_lp`: the same under the policy that sampled them;
/// `ref_lp`: under the frozen start model; `mask`: 1.0 where the token is trained.
pub fn loss_terms(
    new_lp: &Tensor,
    old_lp: &[f32],
    ref_lp: &[f32],
    mask: &[f32],
    advantage: f64,
    objective: &GrpoObjective,
) -> candle_core::Result<LossTerms> {
    let n = mask.len();
    let dev = new_lp.device();
    if new_lp.dims1()? != n || old_lp.len() != n || ref_lp.len() != n {
        candle_core::bail!(
            "loss_terms: lengths differ (new {:?}, old {}, ref {}, mask {n})",
            new_lp.dims(),
            old_lp.len(),
            ref_lp.len()
        );
    }
    let old = Tensor::from_slice(old_lp, n, dev)?;
    let reference = Tensor::from_slice(ref_lp, n, dev)?;
    let m = Tensor::from_slice(mask, n, dev)?;
    let ratio = (new_lp - &old)?.exp()?;
    let clipped_ratio = ratio.clamp(1.0 - objective.clip_low, 1.0 + objective.clip_high)?;
    // PPO: maximise min(r A, clip(r) A)  ⇔  minimise max(-r A, -clip(r) A).
    let pg = ratio
        .affine(-advantage, 0.0)?
        .maximum(&clipped_ratio.affine(-advantage, 0.0)?)?;
    // k3 = exp(ref - new) - (ref - new) - 1 ≥ 0.
    let d = (&reference - new_lp)?;
    let k3 = ((d.exp()? - &d)? - 1.0)?;
    let per_token = (pg + k3.affine(objective.kl_coef, 0.0)?)?;
    let sum = (per_token * &m)?.sum(D::Minus1)?;

    let r: Vec<f32> = ratio.to_vec1()?;
    let k: Vec<f32> = k3.to_vec1()?;
    let mut kl_sum = 0.0;
    let mut tokens = 0.0;
    let mut clipped = 0.0;
    for i in 0..n {
        if mask[i] == 0.0 {
            continue;
        }
        tokens += 1.0;
        kl_sum += k[i] as f64;
        let out_low = r[i] < (1.0 - objective.clip_low) as f32 && advantage < 0.0;
        let out_high = r[i] > (1.0 + objective.clip_high) as f32 && advantage > 0.0;
        clipped += f64::from(u8::from(out_low || out_high));
    }
    Ok(LossTerms {
        sum,
        kl_sum,
        tokens,
        clipped,
    })
}

/// What one step logs (a line of `grpo_log.jsonl`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub accuracy: f64,
    /// Rollouts with at least one served call.
    pub call_rate: f64,
    /// LLM tokens / response tokens, over the batch.
    pub call_ratio: f64,
    pub scenarios: ScenarioCounts,
    pub kl: f64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub clip_fraction: f64,
    pub response_tokens_mean: f64,
    pub trained_tokens: usize,
    /// Wall time of the rollouts: the rollout engine's build from the current weights
    /// (`rollout_engine_s`) and the relays.
    pub rollout_s: f64,
    /// Wall time of the update: `logprob_s + update_s` and a little bookkeeping.
    pub train_s: f64,
    /// Response tokens the rollouts produced (SLM and LLM).
    #[serde(default)]
    pub rollout_tokens: usize,
    /// `rollout_tokens` per second of the relays (the engine's build not counted).
    #[serde(default)]
    pub rollout_tok_s: f64,
    /// SLM decode steps per batched forward in the rollouts (1.0: one at a time).
    #[serde(default)]
    pub rollout_batch_mean: f64,
    /// Building the rollout engine: merging the current weights and quantizing them.
    #[serde(default)]
    pub rollout_engine_s: f64,
    /// Log-probs the loss needs besides the policy's own: the reference model's. The old
    /// policy's come free from the first epoch's forward (counted in `update_s`).
    #[serde(default)]
    pub logprob_s: f64,
    /// Forward, backward and optimizer step of the policy loss, every PPO epoch.
    #[serde(default)]
    pub update_s: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ScenarioCounts {
    pub student_solvable: usize,
    pub teacher_dependent: usize,
    pub teacher_unsolvable: usize,
}

impl ScenarioCounts {
    pub fn add(&mut self, s: Scenario) {
        match s {
            Scenario::StudentSolvable => self.student_solvable += 1,
            Scenario::TeacherDependent => self.teacher_dependent += 1,
            Scenario::TeacherUnsolvable => self.teacher_unsolvable += 1,
        }
    }
}

/// Batch statistics of the rollouts (the reward and call columns of [`StepLog`]).
pub fn rollout_stats(samples: &[Sample], log: &mut StepLog) {
    let n = samples.len().max(1) as f64;
    log.reward_mean = samples.iter().map(|s| s.reward).sum::<f64>() / n;
    log.reward_std = (samples
        .iter()
        .map(|s| (s.reward - log.reward_mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    log.accuracy = samples.iter().filter(|s| s.correct).count() as f64 / n;
    log.call_rate = samples.iter().filter(|s| s.rollout().called()).count() as f64 / n;
    let response: usize = samples.iter().map(|s| s.response_ids.len()).sum();
    let llm: usize = samples.iter().map(Sample::llm_tokens).sum();
    log.call_ratio = if response == 0 {
        0.0
    } else {
        llm as f64 / response as f64
    };
    log.response_tokens_mean = response as f64 / n;
}

// ---------------------------------------------------------------- the training loop

pub const GRPO_LOG: &str = "grpo_log.jsonl";
pub const ROLLOUTS_LOG: &str = "rollouts.jsonl";

/// Everything a GRPO run is, besides the LLM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpoConfig {
    pub slm: PathBuf,
    pub adapter: Adapter,
    /// JSONL: `{"problem" (or "prompt"), "answer"}` a line.
    pub data: PathBuf,
    /// Rollouts per prompt.
    pub group: usize,
    /// Prompts per step.
    pub prompts_per_step: usize,
    pub steps: u64,
    pub lr: f64,
    pub warmup_steps: u64,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    /// Optimizer passes over each step's rollouts (PPO epochs; the clip matters from the 2nd).
    pub ppo_epochs: usize,
    pub objective: GrpoObjective,
    pub reward: RewardKind,
    pub rho: RhoKind,
    pub temperature: f32,
    pub top_p: f32,
    /// Response budget (SLM + LLM tokens).
    pub max_tokens: usize,
    pub max_calls: usize,
    pub max_call_tokens: usize,
    /// Render prompts with the chat template (else the problem text is the prompt).
    pub chat: bool,
    /// Append the evaluation instruction ("… put your final answer within \boxed{}.").
    pub instruction: bool,
    pub grader: GradeMode,
    pub seed: u64,
    pub limit: Option<usize>,
    pub threads: Option<usize>,
    /// Save every N steps (and at the end); 0 = only at the end.
    pub save_every: u64,
    /// How the rollout engine stores the current weights: `q8_0` (several times faster
    /// decoding on a CPU; the update still scores tokens in f32) or `f32` (exact).
    pub rollout_weights: RolloutWeights,
    /// Rollouts of a step run at once, their decode steps batched (1: one after another).
    /// A speed knob: the samples are the same either way, so a resumed run may change it.
    #[serde(default = "default_rollout_concurrency")]
    pub rollout_concurrency: usize,
}

/// Rollouts at once unless told otherwise (never more than a step has): two groups of 8 in
/// one batch, while the KV caches of the sequences held at once stay small.
pub const DEFAULT_ROLLOUT_CONCURRENCY: usize = 16;

fn default_rollout_concurrency() -> usize {
    DEFAULT_ROLLOUT_CONCURRENCY
}

/// Storage of the rollout engine's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutWeights {
    F32,
    Q8_0,
}

impl std::str::FromStr for RolloutWeights {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            other => Err(format!("unknown rollout weights `{other}` (f32, q8_0)")),
        }
    }
}

impl GrpoConfig {
    pub fn new(slm: PathBuf, data: PathBuf) -> Self {
        Self {
            slm,
            adapter: Adapter::lora(16, 32.0),
            data,
            group: 8,
            prompts_per_step: 4,
            steps: 100,
            lr: 1e-5,
            warmup_steps: 0,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            ppo_epochs: 1,
            objective: GrpoObjective::default(),
            reward: RewardKind::Difficulty,
            rho: RhoKind::Requested,
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 1024,
            max_calls: 4,
            max_call_tokens: 512,
            chat: true,
            instruction: true,
            grader: GradeMode::MathRuler,
            seed: 0,
            limit: None,
            threads: None,
            save_every: 10,
            rollout_weights: RolloutWeights::Q8_0,
            rollout_concurrency: DEFAULT_ROLLOUT_CONCURRENCY,
        }
    }

    fn pinned(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        if let Some(o) = v.as_object_mut() {
            for k in [
                "save_every",
                "steps",
                "threads",
                "rollout_weights",
                "rollout_concurrency",
            ] {
                o.remove(k);
            }
        }
        v
    }

    fn relay_config(&self, seed: u64) -> RelayConfig {
        let mut c = RelayConfig::default();
        c.limits.max_response_tokens = self.max_tokens;
        c.limits.max_calls = self.max_calls;
        c.limits.max_call_tokens = self.max_call_tokens;
        c.policy.kind = PolicyKind::Tag;
        c.policy.seed = seed;
        c
    }
}

/// One training prompt.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub index: usize,
    pub problem: String,
    pub answer: String,
}

/// Reads `{"problem"|"prompt", "answer"}` lines (blank lines skipped; a bad line is an error
/// naming it).
pub fn read_prompts(path: &Path, limit: Option<usize>) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TrainError::BadData {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let problem = v
            .get("problem")
            .or_else(|| v.get("prompt"))
            .and_then(|p| p.as_str())
            .ok_or_else(|| bad("needs a `problem` (or `prompt`) string".into()))?;
        let answer = match v.get("answer") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(n @ serde_json::Value::Number(_)) => n.to_string(),
            _ => return Err(bad("needs an `answer` (string or number)".into())),
        };
        out.push(Prompt {
            index: out.len(),
            problem: problem.to_string(),
            answer,
        });
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
    }
    if out.is_empty() {
        return Err(TrainError::InvalidInput(format!(
            "{} has no prompts",
            path.display()
        )));
    }
    Ok(out)
}

/// A seed per (base, step, prompt, rollout) (splitmix64 of their mix).
fn mix_seed(parts: &[u64]) -> u64 {
    let mut z = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        z = z.wrapping_add(p).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

/// The prompts' order in one pass over the data (a seeded shuffle per epoch).
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix_seed(&[seed, epoch, 0x6e70]));
    order.shuffle(&mut rng);
    order
}

/// The relay rollouts of one group: `group` runs of `prompt` with the pair (see
/// [`rollout_step`]).
pub fn rollout_group(
    pair: &ModelPair,
    cfg: &GrpoConfig,
    prompt: &Prompt,
    step: u64,
) -> Result<Vec<Sample>> {
    Ok(rollout_step(pair, cfg, &[prompt], step)?
        .groups
        .pop()
        .unwrap_or_default())
}

/// A step's rollouts, and how well their decoding batched.
#[derive(Debug, Clone)]
pub struct StepRollouts {
    /// One group per prompt in the prompts' order, each in rollout order.
    pub groups: Vec<Vec<Sample>>,
    /// SLM decode steps per forward (1.0 one at a time): how full the batches were.
    pub slm_batch_mean: f64,
}

/// Every rollout of one step: `cfg.group` relay runs of each prompt, one group per prompt in
/// the prompts' order, each in rollout order, whatever finished first. Up to
/// [`GrpoConfig::rollout_concurrency`] run at once; the pair's in-process engines then get a
/// batcher, so their decode steps run as shared batches. Each rollout has its own seed from
/// (seed, step, prompt, rollout), so a fixed seed samples the same batched or one at a time:
/// exactly with Q8_0 weights (a batched step's logits are a lone step's), and with F32 up to
/// the batched matmul's rounding (~1e-5 in a logit), which moves a sample only on a near-tie.
/// The first error is returned; it stops the rollouts still running.
pub fn rollout_step(
    pair: &ModelPair,
    cfg: &GrpoConfig,
    prompts: &[&Prompt],
    step: u64,
) -> Result<StepRollouts> {
    let prompt_ids = prompts
        .iter()
        .map(|p| {
            let text = if cfg.instruction {
                relay_grader_instruction(&p.problem)
            } else {
                p.problem.clone()
            };
            pair.prompt_ids(&[ChatMessage::user(text)], cfg.chat)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let jobs: Vec<(usize, usize)> = (0..prompts.len())
        .flat_map(|p| (0..cfg.group).map(move |g| (p, g)))
        .collect();
    let workers = cfg.rollout_concurrency.max(1).min(jobs.len().max(1));
    let mut pair = pair.clone();
    let batchers = if workers > 1 {
        pair.batch_local_engines(DEFAULT_JOIN_WINDOW)
    } else {
        Vec::new()
    };
    let relay_pair = pair.relay_pair();
    let run = |&(p, g): &(usize, usize), cancel: &Arc<AtomicBool>| {
        let seed = mix_seed(&[cfg.seed, step, prompts[p].index as u64, g as u64]);
        rollout_one(&relay_pair, cfg, prompts[p], &prompt_ids[p], seed, cancel)
    };
    let mut samples = run_in_order(&jobs, workers, run)?.into_iter();
    let slm_batch_mean = batchers
        .iter()
        .find(|(name, _)| *name == "slm")
        .map(|(_, b)| b.stats())
        .filter(|s| s.batches > 0)
        .map_or(1.0, |s| s.steps as f64 / s.batches as f64);
    Ok(StepRollouts {
        groups: prompts
            .iter()
            .map(|_| samples.by_ref().take(cfg.group).collect())
            .collect(),
        slm_batch_mean,
    })
}

/// One relay run of `prompt` (its (SLM, LLM) token ids given), graded; `cancel` stops it.
fn rollout_one(
    pair: &RelayPair,
    cfg: &GrpoConfig,
    prompt: &Prompt,
    (slm_prompt, llm_prompt): &(Vec<u32>, Vec<u32>),
    seed: u64,
    cancel: &Arc<AtomicBool>,
) -> Result<Sample> {
    let request = RelayRequest {
        slm_prompt: slm_prompt.clone(),
        llm_prompt: llm_prompt.clone(),
        config: cfg.relay_config(seed),
        sampling: SamplingParams {
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            top_k: 0,
            seed,
        },
        retry: LlmRetry::default(),
        cancel: Some(cancel.clone()),
    };
    let r = relay(pair, &request, |_| {})?;
    let correct = relay_grader::grade(cfg.grader, &prompt.answer, &r.text);
    Ok(Sample {
        index: prompt.index,
        prompt_ids: slm_prompt.clone(),
        response_ids: r.tokens,
        sources: r.sources,
        text: r.text,
        correct,
        calls: r
            .trace
            .calls
            .iter()
            .map(|c| RolloutCall {
                requested_n: c.requested_n,
                served: c.served as u64,
            })
            .collect(),
        reward: 0.0,
        advantage: 0.0,
    })
}

/// `f` over `jobs` on up to `workers` threads (on this one when `workers` is 1), results in
/// the jobs' order. The first error sets the stop flag `f` is given (running jobs may watch
/// it), no job starts after it, and it is what comes back.
fn run_in_order<J: Sync, T: Send>(
    jobs: &[J],
    workers: usize,
    f: impl Fn(&J, &Arc<AtomicBool>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let stop = Arc::new(AtomicBool::new(false));
    if workers <= 1 {
        return jobs.iter().map(|j| f(j, &stop)).collect();
    }
    let next = AtomicUsize::new(0);
    let first_error = Mutex::new(None);
    let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(jobs.len()).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (next, stop, first_error, f) = (&next, &stop, &first_error, &f);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(job) = jobs.get(i) else { break };
                        match f(job, stop) {
                            Ok(t) => done.push((i, t)),
                            Err(e) => {
                                stop.store(true, Ordering::SeqCst);
                                let mut first =
                                    first_error.lock().unwrap_or_else(|p| p.into_inner());
                                first.get_or_insert(e);
                            }
                        }
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            // A worker's panic is this thread's panic, as it would be without threads.
            let done = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            for (i, t) in done {
                slots[i] = Some(t);
            }
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(slots
        .into_iter()
        .map(|s| s.expect("with no error, every job ran"))
        .collect())
}

fn relay_grader_instruction(problem: &str) -> String {
    const INSTRUCTION: &str =
        "Please reason step by step, and put your final answer within \\boxed{}.";
    if problem.contains(INSTRUCTION) {
        problem.to_string()
    } else {
        format!("{}\n{INSTRUCTION}", problem.trim_end())
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Serialize)]
pub struct GrpoSummary {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub checkpoint: PathBuf,
    pub last: Option<StepLog>,
    pub seconds: f64,
    pub stopped_early: bool,
}

/// Runs GRPO into `out` with `llm` as the teacher (any engine: embedded or remote). With
/// `resume`, continues from the newest checkpoint there (settings must match). `on_step`
/// sees each step's log; `Break` stops there without a save, as a kill would.
pub fn train(
    cfg: &GrpoConfig,
    llm: &LoadedModel,
    out: &Path,
    resume: bool,
    mut on_step: impl FnMut(&StepLog) -> ControlFlow<()>,
) -> Result<GrpoSummary> {
    let started = Instant::now();
    if cfg.group < 2
        || cfg.prompts_per_step == 0
        || cfg.ppo_epochs == 0
        || cfg.rollout_concurrency == 0
    {
        return Err(TrainError::InvalidInput(
            "--group must be at least 2, --prompts-per-step, --ppo-epochs and --rollout-concurrency at least 1".into(),
        ));
    }
    let existing = run::prepare(out, resume)?;
    let prompts = read_prompts(&cfg.data, cfg.limit)?;
    let model = TrainModel::load(&cfg.slm, cfg.adapter.clone(), cfg.seed)?;
    if !same_vocabulary(model.tokenizer(), &llm.tokenizer) {
        return Err(TrainError::InvalidInput(
            "the SLM and the LLM have different vocabularies: GRPO needs token ids to pass between them".into(),
        ));
    }
    let params = model.trainable_named();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let schedule = LrSchedule {
        peak: cfg.lr,
        warmup_steps: cfg.warmup_steps,
        total_steps: cfg.steps,
        decay: Decay::Constant,
        min_ratio: 0.0,
    };
    let pinned = serde_json::json!({"grpo": cfg.pinned(), "prompts": prompts.len()});
    let (mut step, mut pos, resumed_from) =
        run::restore(existing.as_deref(), resume, &pinned, &model, &mut opt)?;
    let mut log = run::open_step_log(&out.join(GRPO_LOG), resumed_from)?;
    let mut rollouts_log = run::open_step_log(&out.join(ROLLOUTS_LOG), resumed_from)?;
    let opts = LoadOptions {
        threads: cfg.threads,
        ..LoadOptions::default()
    };
    let mut accum = GradAccum::new(params.len());
    let mut last = None;
    let mut final_path = existing.clone();
    let n = prompts.len() as u64;
    while step < cfg.steps {
        let t0 = Instant::now();
        // Rollouts with the current weights.
        let slm = rollout_model(&model, cfg.rollout_weights, &opts)?;
        let pair = ModelPair::new(slm, llm.clone());
        let rollout_engine_s = t0.elapsed().as_secs_f64();
        let step_prompts: Vec<&Prompt> = (pos..pos + cfg.prompts_per_step as u64)
            .map(|p| {
                let order = epoch_order(prompts.len(), cfg.seed, p / n);
                &prompts[order[(p % n) as usize]]
            })
            .collect();
        let mut samples = Vec::new();
        let mut scenarios = ScenarioCounts::default();
        let rollouts = rollout_step(&pair, cfg, &step_prompts, step)?;
        for mut group in rollouts.groups {
            scenarios.add(score_group(&mut group, cfg.reward, cfg.rho));
            samples.extend(group);
        }
        drop(pair);
        let rollout_s = t0.elapsed().as_secs_f64();
        let rollout_tokens: usize = samples.iter().map(|s| s.response_ids.len()).sum();

        // The update.
        let t1 = Instant::now();
        let masks: Vec<Vec<f32>> = samples
            .iter()
            .map(|s| s.loss_mask(&cfg.objective))
            .collect();
        let trained: f32 = masks.iter().flatten().sum();
        let mut entry = StepLog {
            step: step as usize + 1,
            scenarios,
            rollout_s,
            rollout_engine_s,
            rollout_tokens,
            rollout_tok_s: rollout_tokens as f64 / (rollout_s - rollout_engine_s).max(1e-9),
            rollout_batch_mean: rollouts.slm_batch_mean,
            trained_tokens: trained as usize,
            lr: schedule.lr(step),
            ..StepLog::default()
        };
        rollout_stats(&samples, &mut entry);
        // The reference model's log-probs, a forward of their own once per step. The old
        // policy's need none: they are the first epoch's forward of the policy (the weights
        // that sampled the rollouts), kept, so they are timed in `update_s`.
        let t_ref = Instant::now();
        let refs: Vec<Option<Vec<f32>>> = samples
            .iter()
            .zip(&masks)
            .map(|(s, m)| {
                if m.iter().all(|m| *m == 0.0) {
                    return Ok(None);
                }
                model
                    .reference_logprobs_from(&s.ids(), s.prompt_ids.len())
                    .map(Some)
            })
            .collect::<Result<_>>()?;
        entry.logprob_s = t_ref.elapsed().as_secs_f64();
        let t_update = Instant::now();
        let mut old: Vec<Option<Vec<f32>>> = vec![None; samples.len()];
        if trained > 0.0 {
            for epoch in 0..cfg.ppo_epochs {
                accum.clear();
                let (mut loss_sum, mut kl_sum, mut clipped) = (0.0, 0.0, 0.0);
                for (i, s) in samples.iter().enumerate() {
                    if masks[i].iter().all(|m| *m == 0.0) {
                        continue;
                    }
                    let ids = s.ids();
                    let start = s.prompt_ids.len();
                    let new = model.token_logprobs_from(&ids, start)?;
                    let old_i = old[i]
                        .get_or_insert_with(|| new.to_vec1::<f32>().unwrap_or_default())
                        .clone();
                    let terms = loss_terms(
                        &new,
                        &old_i,
                        refs[i].as_deref().unwrap_or_default(),
                        &masks[i],
                        s.advantage,
                        &cfg.objective,
                    )?;
                    let scaled = (terms.sum / trained as f64)?;
                    accum.add(&params, &scaled.backward()?)?;
                    loss_sum += scaled.to_scalar::<f32>()? as f64;
                    kl_sum += terms.kl_sum;
                    clipped += terms.clipped;
                }
                let grad_norm = clip_grad_norm(accum.grads_mut(), cfg.max_grad_norm)?;
                opt.step(accum.grads(), entry.lr)?;
                if epoch == 0 {
                    entry.loss = loss_sum;
                    entry.kl = kl_sum / trained as f64;
                    entry.grad_norm = grad_norm;
                }
                entry.clip_fraction = clipped / trained as f64;
            }
        }
        entry.update_s = t_update.elapsed().as_secs_f64();
        entry.train_s = t1.elapsed().as_secs_f64();
        step += 1;
        pos += cfg.prompts_per_step as u64;
        writeln!(
            log,
            "{}",
            serde_json::to_string(&entry).expect("log serializes")
        )?;
        log.flush()?;
        for s in &samples {
            let line = serde_json::json!({
                "step": step, "index": s.index, "text": s.text, "correct": s.correct,
                "calls": s.calls, "reward": s.reward, "advantage": s.advantage,
                "response_tokens": s.response_ids.len(), "llm_tokens": s.llm_tokens(),
            });
            writeln!(rollouts_log, "{line}")?;
        }
        rollouts_log.flush()?;
        let stop = on_step(&entry).is_break();
        last = Some(entry);
        if stop {
            return Ok(GrpoSummary {
                steps: step,
                resumed_from,
                checkpoint: final_path.unwrap_or_default(),
                last,
                seconds: started.elapsed().as_secs_f64(),
                stopped_early: true,
            });
        }
        if (cfg.save_every > 0 && step % cfg.save_every == 0) || step == cfg.steps {
            final_path = Some(save(out, step, pos, cfg, &pinned, &model, &opt)?);
        }
    }
    let checkpoint = match final_path {
        Some(p) => p,
        None => save(out, step, pos, cfg, &pinned, &model, &opt)?,
    };
    Ok(GrpoSummary {
        steps: step,
        resumed_from,
        checkpoint,
        last,
        seconds: started.elapsed().as_secs_f64(),
        stopped_early: false,
    })
}

/// The current weights as an inference model for the relay.
fn rollout_model(
    model: &TrainModel,
    weights: RolloutWeights,
    opts: &LoadOptions,
) -> Result<LoadedModel> {
    let dtype = match weights {
        RolloutWeights::F32 => candle_core::quantized::GgmlDType::F32,
        RolloutWeights::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
    };
    Ok(LoadedModel {
        path: model.source().to_path_buf(),
        engine: std::sync::Arc::new(model.to_engine_with(opts.clone(), dtype)?),
        tokenizer: std::sync::Arc::new(model.tokenizer().clone()),
        template: model.chat_template().cloned().map(std::sync::Arc::new),
    })
}

fn save(
    out: &Path,
    step: u64,
    position: u64,
    cfg: &GrpoConfig,
    pinned: &serde_json::Value,
    model: &TrainModel,
    opt: &AdamW,
) -> Result<PathBuf> {
    let meta = CheckpointMeta {
        step,
        position,
        adapter: cfg.adapter.clone(),
        config: pinned.clone(),
    };
    run::save(out, &meta, model, opt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn advantages_are_standardised_within_the_group() {
        let a = advantages(&[1.5, 0.5, 0.0, 0.0]);
        let mean: f64 = a.iter().sum::<f64>() / 4.0;
        let var: f64 = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-9 && (var - 1.0).abs() < 1e-4, "{a:?}");
        assert!(a[0] > a[1] && a[1] > a[2]);
        assert_eq!(advantages(&[0.3, 0.3, 0.3]), vec![0.0; 3]);
        assert!(advantages(&[]).is_empty());
    }

    fn grad_of(new: &[f32], old: &[f32], rf: &[f32], mask: &[f32], adv: f64) -> (f64, Vec<f32>) {
        let obj = GrpoObjective::default();
        let v = Var::from_slice(new, new.len(), &Device::Cpu).unwrap();
        let t = loss_terms(v.as_tensor(), old, rf, mask, adv, &obj).unwrap();
        let loss = t.sum.to_scalar::<f32>().unwrap() as f64;
        let g = t.sum.backward().unwrap();
        (loss, g.get(v.as_tensor()).unwrap().to_vec1().unwrap())
    }

    #[test]
    fn the_loss_has_the_clipped_surrogate_and_k3_gradients() {
        // Token 0: ratio 1 (on-policy); token 1: ratio e^0.5 > 1.3, positive advantage → clipped,
        // only the KL term's gradient remains; token 2: masked out.
        let new = [-1.0f32, -0.5, -2.0];
        let old = [-1.0f32, -1.0, -2.0];
        let rf = [-1.2f32, -0.5, -3.0];
        let mask = [1.0f32, 1.0, 0.0];
        let (loss, g) = grad_of(&new, &old, &rf, &mask, 2.0);
        let k3 = |n: f64, r: f64| (r - n).exp() - (r - n) - 1.0;
        let want_loss = -2.0 * 1.0 + 0.01 * k3(-1.0, -1.2) - 2.0 * 1.3 + 0.01 * k3(-0.5, -0.5);
        assert!((loss - want_loss).abs() < 1e-4, "{loss} vs {want_loss}");
        // d/dnew of -A r = -A r; of k3 = 1 - exp(ref - new).
        let dk3 = |n: f64, r: f64| 1.0 - (r - n).exp();
        assert!(
            (g[0] as f64 - (-2.0 + 0.01 * dk3(-1.0, -1.2))).abs() < 1e-4,
            "{g:?}"
        );
        assert!(
            (g[1] as f64 - 0.01 * dk3(-0.5, -0.5)).abs() < 1e-5,
            "clipped: {g:?}"
        );
        assert_eq!(g[2], 0.0, "masked");
        // Negative advantage below the low clip: no surrogate gradient either.
        let (_, g) = grad_of(&[-2.0], &[-1.0], &[-2.0], &[1.0], -1.0);
        assert!(g[0].abs() < 1e-6, "{g:?}");
        // ...but inside the range it pushes the token down.
        let (_, g) = grad_of(&[-1.1], &[-1.0], &[-1.1], &[1.0], -1.0);
        assert!(g[0] > 0.5, "{g:?}");
    }

    #[test]
    fn finite_differences_agree_with_backprop() {
        let new = [-0.7f32, -1.9, -0.2, -3.0];
        let old = [-0.8f32, -1.7, -0.25, -2.9];
        let rf = [-0.6f32, -2.0, -0.3, -3.1];
        let mask = [1.0f32, 1.0, 1.0, 0.0];
        for adv in [1.3, -0.8] {
            let (_, g) = grad_of(&new, &old, &rf, &mask, adv);
            for i in 0..4 {
                let h = 1e-3f32;
                let mut up = new;
                up[i] += h;
                let mut down = new;
                down[i] -= h;
                let fd = (grad_of(&up, &old, &rf, &mask, adv).0
                    - grad_of(&down, &old, &rf, &mask, adv).0)
                    / (2.0 * h as f64);
                assert!(
                    (fd - g[i] as f64).abs() < 2e-3,
                    "adv {adv} token {i}: fd {fd} vs {}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn jobs_come_back_in_their_order_whatever_finishes_first() {
        use std::time::Duration;
        let jobs: Vec<u64> = (0..40).collect();
        let want: Vec<u64> = jobs.iter().map(|j| j * 10).collect();
        for workers in [1, 3, 8, 64] {
            let out = run_in_order(&jobs, workers, |&j, _| {
                // Uneven times: jobs finish out of order.
                std::thread::sleep(Duration::from_millis((40 - j) % 7));
                Ok(j * 10)
            })
            .unwrap();
            assert_eq!(out, want, "{workers} workers");
        }
    }

    #[test]
    fn the_first_error_comes_back_and_stops_the_other_jobs() {
        use std::time::Duration;
        let jobs: Vec<u64> = (0..40).collect();
        for workers in [1, 4] {
            let started = AtomicUsize::new(0);
            let t = Instant::now();
            let r = run_in_order(&jobs, workers, |&j, stop| {
                started.fetch_add(1, Ordering::SeqCst);
                match j {
                    0..=4 => Ok(j),
                    5 => Err(TrainError::InvalidInput(format!("job {j} failed"))),
                    // Running jobs end when the flag is set (as a relay does on `cancel`).
                    _ => {
                        let t = Instant::now();
                        while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(5) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Ok(j)
                    }
                }
            });
            assert!(
                matches!(&r, Err(TrainError::InvalidInput(m)) if m == "job 5 failed"),
                "{workers} workers: {r:?}"
            );
            let started = started.into_inner();
            assert!(
                // Jobs 0–5, and at most one more per other worker (running or just taken).
                started < 6 + workers,
                "{workers} workers: {started} jobs started, none should after the error"
            );
            assert!(
                t.elapsed() < Duration::from_secs(4),
                "the stop flag reached the running jobs"
            );
        }
    }

    fn sample(correct: bool, calls: &[(u64, u64)], response: usize, llm: usize) -> Sample {
        let mut sources = vec![Source::Slm; response - llm];
        sources.extend(vec![Source::Llm; llm]);
        Sample {
            index: 0,
            prompt_ids: vec![1, 2],
            response_ids: vec![7; response],
            sources,
            text: String::new(),
            correct,
            calls: calls
                .iter()
                .map(|&(requested_n, served)| RolloutCall {
                    requested_n,
                    served,
                })
                .collect(),
            reward: 0.0,
            advantage: 0.0,
        }
    }

    #[test]
    fn groups_are_scored_with_the_difficulty_table() {
        let mut g = vec![
            sample(true, &[], 10, 0),
            sample(true, &[(5, 5)], 10, 5),
            sample(false, &[], 10, 0),
        ];
        assert_eq!(
            score_group(&mut g, RewardKind::Difficulty, RhoKind::Requested),
            Scenario::StudentSolvable
        );
        assert_eq!(
            g.iter().map(|s| s.reward).collect::<Vec<_>>(),
            vec![1.5, 0.5, 0.0]
        );
        assert!(g[0].advantage > g[1].advantage && g[1].advantage > g[2].advantage);
        let mut log = StepLog::default();
        rollout_stats(&g, &mut log);
        assert!((log.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert!((log.call_rate - 1.0 / 3.0).abs() < 1e-9);
        assert!((log.call_ratio - 5.0 / 30.0).abs() < 1e-9);
        let obj = GrpoObjective::default();
        assert_eq!(g[1].loss_mask(&obj).iter().sum::<f32>(), 5.0);
        let all = GrpoObjective {
            train_llm_tokens: true,
            ..obj
        };
        assert_eq!(g[1].loss_mask(&all).iter().sum::<f32>(), 10.0);
    }
}
