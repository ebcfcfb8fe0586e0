//! The [`Solver`] that answers with real models: the chat-formatted problem through the relay
//! over a [`ModelPair`] under one relay config (`slm-only` and `llm-only` are policies too, so a
//! model alone goes through the same loop, prompt and accounting). It lives here, below the
//! CLI, because `eval`, `data warmup --sample-from` and `data filter` must all answer a problem
//! the same way: the filter's "SLM alone" samples are exactly `eval --policy slm-only`'s.

use crate::dataset::Problem;
use crate::runner::{Solution, SolveError, Solver};
use relay_core::RelayConfig;
use relay_engine::chat::ChatMessage;
use relay_engine::model::ModelPair;
use relay_engine::relay::{relay, LlmRetry, RelayPair, RelayRequest};
use relay_engine::sampling::SamplingParams;

/// A seed per (problem, sample), mixed from the base seed (splitmix64), so neighbouring
/// problems do not share random streams and a resumed run repeats an uninterrupted one.
pub fn item_seed(base: u64, index: usize, sample: usize) -> u64 {
    let mut z = base
        .wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add((sample as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Answers problems with the relay: the problem as one user turn in each model's chat
/// template, `config` (its policy decides who writes), and the seed of both the sampler and
/// the policy taken from [`item_seed`]`(sampling.seed, problem, sample)`.
pub struct RelaySolver {
    pair: RelayPair,
    models: ModelPair,
    config: RelayConfig,
    sampling: SamplingParams,
}

impl RelaySolver {
    /// `sampling.seed` is the run's base seed; `config.policy.seed` is replaced per item.
    pub fn new(models: ModelPair, config: RelayConfig, sampling: SamplingParams) -> RelaySolver {
        RelaySolver {
            pair: models.relay_pair(),
            models,
            config,
            sampling,
        }
    }
}

impl Solver for RelaySolver {
    fn solve(&self, problem: &Problem, sample: usize) -> Result<Solution, SolveError> {
        let messages = [ChatMessage::user(problem.problem.clone())];
        let (slm_prompt, llm_prompt) = self.models.prompt_ids(&messages, true)?;
        let seed = item_seed(self.sampling.seed, problem.index, sample);
        let mut sampling = self.sampling.clone();
        sampling.seed = seed;
        let mut config = self.config.clone();
        config.policy.seed = seed;
        let request = RelayRequest {
            slm_prompt,
            llm_prompt,
            config,
            sampling,
            retry: LlmRetry::default(),
            cancel: None,
        };
        let out = relay(&self.pair, &request, |_| {})?;
        Ok(Solution {
            text: out.text,
            slm_tokens: out.trace.tokens.slm,
            llm_tokens: out.trace.tokens.llm,
            calls: out.trace.calls.len(),
            trace: serde_json::to_value(&out.trace)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::item_seed;

    #[test]
    fn item_seeds_differ_by_problem_and_sample_and_repeat() {
        let a = item_seed(0, 1, 0);
        assert_eq!(a, item_seed(0, 1, 0));
        assert_ne!(a, item_seed(0, 2, 0));
        assert_ne!(a, item_seed(0, 1, 1));
        assert_ne!(a, item_seed(1, 1, 0));
    }
}
