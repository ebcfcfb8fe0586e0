//! The paper's comparison numbers (DESIGN.md, "Evaluation"). Accuracies and shares are
//! fractions in [0, 1]. Where a formula divides by the SLM→LLM gap and there is no gap
//! (LLM ≤ SLM), the answer is `None` or a named case, never NaN.

use serde::{Deserialize, Serialize};

/// Fraction of the SLM→LLM accuracy gap that the relay closes: (relay − SLM) / (LLM − SLM).
/// Negative when the relay is below the SLM, above 1 when it beats the LLM. `None` without a
/// gap (LLM ≤ SLM) or for non-finite inputs.
pub fn gap_recovered(slm: f64, llm: f64, relay: f64) -> Option<f64> {
    let gap = llm - slm;
    if !(gap.is_finite() && relay.is_finite()) || gap <= 0.0 {
        return None;
    }
    Some((relay - slm) / gap)
}

/// Accuracy of a random query router that sends a fraction `share` of the queries to the LLM:
/// SLM + share·(LLM − SLM). `share` is clamped to [0, 1].
pub fn random_router_accuracy(slm: f64, llm: f64, share: f64) -> f64 {
    let p = if share.is_nan() {
        0.0
    } else {
        share.clamp(0.0, 1.0)
    };
    slm + p * (llm - slm)
}

/// How the relay's cost compares with a random router of the same accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "case", content = "value", rename_all = "kebab-case")]
pub enum CostReduction {
    /// 1 − call_ratio / p, where p = gap recovered is the router's LLM share at the relay's
    /// accuracy. Negative: the relay spends more LLM tokens than the router would.
    Reduction(f64),
    /// The relay is no more accurate than the SLM alone: a router matches it with no LLM at all.
    NotAboveSlm,
    /// The relay beats the LLM alone, which no router mix can reach; the value is the reduction
    /// against the LLM-only router (1 − call_ratio), a lower bound.
    AboveLlm(f64),
    /// LLM ≤ SLM (or a non-finite input): there is no gap to route across.
    NoGap,
}

impl CostReduction {
    /// The number to plot or compare, when there is one.
    pub fn value(&self) -> Option<f64> {
        match self {
            CostReduction::Reduction(v) | CostReduction::AboveLlm(v) => Some(*v),
            CostReduction::NotAboveSlm | CostReduction::NoGap => None,
        }
    }
}

impl std::fmt::Display for CostReduction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CostReduction::Reduction(v) => write!(f, "{:.1}%", v * 100.0),
            CostReduction::AboveLlm(v) => write!(f, "≥ {:.1}% (above LLM)", v * 100.0),
            CostReduction::NotAboveSlm => f.write_str("n/a (not above SLM)"),
            CostReduction::NoGap => f.write_str("n/a (LLM ≤ SLM)"),
        }
    }
}

/// Cost reduction against a random router at equal accuracy: 1 − call_ratio / p with
/// p = (relay − SLM) / (LLM − SLM), the router's LLM share at the relay's accuracy.
pub fn cost_reduction(slm: f64, llm: f64, relay: f64, call_ratio: f64) -> CostReduction {
    if !call_ratio.is_finite() {
        return CostReduction::NoGap;
    }
    let Some(p) = gap_recovered(slm, llm, relay) else {
        return CostReduction::NoGap;
    };
    if p <= 0.0 {
        CostReduction::NotAboveSlm
    } else if p > 1.0 {
        CostReduction::AboveLlm(1.0 - call_ratio)
    } else {
        CostReduction::Reduction(1.0 - call_ratio / p)
    }
}

/// Micro-averaged call ratio: Σ LLM tokens / Σ response tokens (0 with no tokens).
pub fn call_ratio(llm_tokens: u64, response_tokens: u64) -> f64 {
    if response_tokens == 0 {
        0.0
    } else {
        llm_tokens as f64 / response_tokens as f64
    }
}
