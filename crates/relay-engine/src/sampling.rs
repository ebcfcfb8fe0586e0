//! Turning logits into a token: greedy, temperature, top-k, top-p, all deterministic for a seed.
//! Also the log-softmax helpers the relay's confidence policy and training need.

use rand::{rngs::StdRng, Rng, SeedableRng};

/// How to pick the next token. `temperature == 0` means greedy (argmax).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Nucleus: keep the smallest set of tokens whose probability sums to at least `top_p`.
    /// `1.0` (or more) keeps everything.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; `0` keeps everything.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }
}

/// Picks tokens from logits. Holds its own RNG so a run with the same seed and the same logits
/// picks the same tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token id. Empty logits give token 0 (engines never return them).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 || logits.len() <= 1 {
            return argmax(logits) as u32;
        }
        // Candidates sorted by logit, descending; ties broken by id so the order is stable.
        let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
        if idx.is_empty() {
            return 0;
        }
        let k = if p.top_k == 0 {
            idx.len()
        } else {
            p.top_k.min(idx.len())
        };
        let cmp = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, cmp);
            idx.truncate(k);
        }
        idx.sort_unstable_by(cmp);

        let max = logits[idx[0]];
        let inv_t = 1.0 / p.temperature;
        let mut probs: Vec<f32> = idx
            .iter()
            .map(|&i| ((logits[i] - max) * inv_t).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);

        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, &pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.gen::<f32>() * total;
        for (j, &pr) in probs.iter().enumerate() {
            r -= pr;
            if r <= 0.0 {
                return idx[j] as u32;
            }
        }
        idx[probs.len() - 1] as u32
    }
}

/// Index of the largest logit (the first one on ties); 0 for an empty slice.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// Log-probabilities over the vocabulary.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let (max, ln_sum) = max_and_ln_sum(logits);
    logits.iter().map(|&x| (x - max) - ln_sum).collect()
}

/// `log Σ exp(x)`, computed stably.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let (max, ln_sum) = max_and_ln_sum(logits);
    max + ln_sum
}

/// The maximum and `ln Σ exp(x - max)`, kept apart so `x - max` stays exact for large logits.
fn max_and_ln_sum(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return (max, 0.0);
    }
    let s: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    (max, s.ln() as f32)
}

/// Log-probability of one token under the logits.
pub fn token_logprob(logits: &[f32], token: u32) -> f32 {
    let (max, ln_sum) = max_and_ln_sum(logits);
    (logits[token as usize] - max) - ln_sum
}

/// The most likely token and its probability: the relay's confidence policy calls the LLM
/// when this probability falls below a threshold.
pub fn top1_prob(logits: &[f32]) -> (u32, f32) {
    let i = argmax(logits);
    if logits.is_empty() {
        return (0, 0.0);
    }
    (i as u32, token_logprob(logits, i as u32).exp())
}
