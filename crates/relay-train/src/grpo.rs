//! GRPO on the relay's own rollouts (DESIGN.md, "Training" 3–4).
//!
//! A step: for each prompt of the batch, `group` relay runs with the current SLM (the same
//! [`relay_engine::relay::relay`] as inference, no rollback); each is graded and the group's
//! rewards come from [`relay_core::reward::group_rewards`] (scenarios decided per group);
//! advantages are `(r - mean) / (std + 1e-6)` within the group. The loss is PPO's clipped
//! surrogate (ε_low 0.2, ε_high 0.3) plus `kl_coef` × the k3 estimate of KL to the frozen start
//! model, averaged over every trained token of the batch (token-mean). LLM-written tokens are
//! not trained unless `train_llm_tokens`.

use candle_core::{Tensor, D};
use relay_core::reward::{group_rewards, RewardKind, RhoKind, Rollout, RolloutCall, Scenario};
use relay_core::Source;
use serde::{Deserialize, Serialize};

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
    pub rollout_s: f64,
    pub train_s: f64,
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
