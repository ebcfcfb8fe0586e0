//! The difficulty-aware reward of RelayLLM's GRPO stage, and its two ablations.
//!
//! The scenario is decided **per group** (all rollouts of one prompt), never per batch: the
//! reference code decides per batch, which lets an easy prompt change a hard prompt's rewards.
//! One function backs `relayllm reward`, the server's `/reward/group` and training.

use serde::{Deserialize, Serialize};

/// Requested call lengths count at most this much towards ρ.
pub const REQUESTED_N_CAP: u64 = 4096;

/// Which reward to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardKind {
    /// DESIGN.md's table: scenarios per group.
    #[default]
    Difficulty,
    /// accuracy − ρ.
    Simple,
    /// 1 when correct, else 0 (plain GRPO).
    Accuracy,
}

/// What ρ (the help a rollout asked for) counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RhoKind {
    /// Σ min(requested n, 4096): what the SLM asked for.
    #[default]
    Requested,
    /// Σ served: what the LLM actually wrote.
    Served,
}

impl std::str::FromStr for RewardKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "difficulty" => Ok(Self::Difficulty),
            "simple" => Ok(Self::Simple),
            "accuracy" => Ok(Self::Accuracy),
            other => Err(format!(
                "unknown reward {other:?} (expected difficulty, simple or accuracy)"
            )),
        }
    }
}

impl std::str::FromStr for RhoKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "requested" => Ok(Self::Requested),
            "served" => Ok(Self::Served),
            other => Err(format!(
                "unknown rho {other:?} (expected requested or served)"
            )),
        }
    }
}

/// One call of a rollout, as the trace records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutCall {
    pub requested_n: u64,
    pub served: u64,
}

/// One rollout of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub correct: bool,
    #[serde(default)]
    pub calls: Vec<RolloutCall>,
    pub response_tokens: u64,
}

impl Rollout {
    /// At least one call served a token.
    pub fn called(&self) -> bool {
        self.calls.iter().any(|c| c.served > 0)
    }

    /// ρ = min(Σ help / response tokens, 1); 0 for an empty response.
    pub fn rho(&self, kind: RhoKind) -> f64 {
        if self.response_tokens == 0 {
            return 0.0;
        }
        // Saturating: the counts come from clients, and a sum past u64::MAX that wrapped
        // would turn full help into none (ρ is capped at 1 anyway).
        let help = self
            .calls
            .iter()
            .map(|c| match kind {
                RhoKind::Requested => c.requested_n.min(REQUESTED_N_CAP),
                RhoKind::Served => c.served,
            })
            .fold(0u64, u64::saturating_add);
        (help as f64 / self.response_tokens as f64).min(1.0)
    }
}

/// All rollouts of one prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutGroup {
    pub rollouts: Vec<Rollout>,
}

/// How hard the group's prompt is for the SLM, decided from the whole group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Some rollout is correct without a call.
    StudentSolvable,
    /// No rollout is correct alone, but one is correct with a call.
    TeacherDependent,
    /// No rollout is correct.
    TeacherUnsolvable,
}

impl Scenario {
    pub fn of(group: &RolloutGroup) -> Self {
        if group.rollouts.iter().any(|r| r.correct && !r.called()) {
            Scenario::StudentSolvable
        } else if group.rollouts.iter().any(|r| r.correct) {
            Scenario::TeacherDependent
        } else {
            Scenario::TeacherUnsolvable
        }
    }
}

/// The rewards of one group, in rollout order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupReward {
    pub scenario: Scenario,
    pub rewards: Vec<f64>,
}

/// The reward of one rollout in a group of the given scenario (DESIGN.md's table).
pub fn difficulty_reward(scenario: Scenario, rollout: &Rollout, rho: RhoKind) -> f64 {
    let rho = rollout.rho(rho);
    match (scenario, rollout.correct, rollout.called()) {
        (Scenario::StudentSolvable, true, false) => 1.5,
        (_, true, true) => 1.0 - rho,
        (Scenario::TeacherDependent, false, false) => -1.0,
        (Scenario::TeacherUnsolvable, false, true) => rho,
        // wrong without a call elsewhere, wrong with a call when the student could: 0.
        // (correct without a call can only happen in a student-solvable group.)
        _ => 0.0,
    }
}

/// Rewards for every rollout of one group.
pub fn group_rewards(group: &RolloutGroup, kind: RewardKind, rho: RhoKind) -> GroupReward {
    let scenario = Scenario::of(group);
    let rewards = group
        .rollouts
        .iter()
        .map(|r| match kind {
            RewardKind::Difficulty => difficulty_reward(scenario, r, rho),
            RewardKind::Simple => f64::from(u8::from(r.correct)) - r.rho(rho),
            RewardKind::Accuracy => f64::from(u8::from(r.correct)),
        })
        .collect();
    GroupReward { scenario, rewards }
}
