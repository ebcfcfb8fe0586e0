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
        self.choose(logits, None)
    }

    /// [`Self::sample`] when the step's [`LogitStats`] are already at hand: greedy decoding
    /// takes their argmax instead of scanning the vocabulary again.
    pub fn sample_with(&mut self, logits: &[f32], stats: &LogitStats) -> u32 {
        self.choose(logits, Some(stats.argmax))
    }

    fn choose(&mut self, logits: &[f32], known_argmax: Option<u32>) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 || logits.len() <= 1 {
            return known_argmax.unwrap_or_else(|| argmax(logits) as u32);
        }
        // Candidates ordered by logit, descending, ties by id, and walked in that order. Only
        // the head of the order is sorted up front: a draw (or the nucleus) almost always ends
        // within the most likely few hundred of a 150k vocabulary, and sorting all of it cost
        // ~10 ms a token. Past the head, the rest is sorted when the walk gets there.
        let mut idx: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| !logits[i as usize].is_nan())
            .collect();
        if idx.is_empty() {
            return 0;
        }
        let cmp = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let k = if p.top_k == 0 {
            idx.len()
        } else {
            p.top_k.min(idx.len())
        };
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, cmp);
            idx.truncate(k);
        }
        let head = SORTED_HEAD.min(idx.len());
        if head < idx.len() {
            idx.select_nth_unstable_by(head - 1, cmp);
        }
        idx[..head].sort_unstable_by(cmp);

        let max = logits[idx[0] as usize];
        let inv_t = 1.0 / p.temperature;
        let weight = |i: u32| ((logits[i as usize] - max) * inv_t).exp();
        let mut probs: Vec<f32> = idx.iter().map(|&i| weight(i)).collect();
        // Sums in f64: the tail's order is arbitrary until sorted, and an f64 sum does not
        // depend on the order at any precision that an f32 draw can see.
        let sum = probs.iter().map(|&x| f64::from(x)).sum::<f64>() as f32;
        probs.iter_mut().for_each(|x| *x /= sum);
        // Sorts the tail (and its probabilities with it) the first time a walk needs it.
        let mut tail_sorted = head == idx.len();
        let mut sort_tail = |idx: &mut Vec<u32>, probs: &mut Vec<f32>| {
            if !tail_sorted {
                idx[head..].sort_unstable_by(cmp);
                for (q, &i) in probs[head..].iter_mut().zip(&idx[head..]) {
                    *q = weight(i) / sum;
                }
                tail_sorted = true;
            }
        };

        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0f64;
            let mut i = 0;
            while i < probs.len() {
                if i == head {
                    sort_tail(&mut idx, &mut probs);
                }
                acc += f64::from(probs[i]);
                if acc >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
                i += 1;
            }
            keep = keep.max(1);
        }
        let total: f64 = probs[..keep].iter().map(|&x| f64::from(x)).sum();
        let mut r = f64::from(self.rng.gen::<f32>()) * total;
        for j in 0..keep {
            if j == head {
                sort_tail(&mut idx, &mut probs);
            }
            r -= f64::from(probs[j]);
            if r <= 0.0 {
                return idx[j];
            }
        }
        sort_tail(&mut idx, &mut probs);
        idx[keep - 1]
    }
}

/// How many of the most likely candidates [`Sampler`] sorts before walking them.
const SORTED_HEAD: usize = 256;

/// Index of the largest logit (the first one on ties); 0 for an empty slice.
pub fn argmax(logits: &[f32]) -> usize {
    argmax_and_max(logits).0
}

/// The first index of the largest value, and that value (NaN ignored; `(0, -inf)` when no
/// value is above -inf).
fn argmax_and_max(logits: &[f32]) -> (usize, f32) {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    (best, best_v)
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
/// Runs once per decoded token over the whole vocabulary (152k logits for Qwen2.5), so it is
/// written for the vectorizer: 16 independent lanes, a polynomial `exp`, f32 partial sums of
/// at most 1024 terms added up in f64.
fn max_and_ln_sum(logits: &[f32]) -> (f32, f32) {
    let max = max_of(logits);
    (max, ln_sum_below(logits, max))
}

/// `ln Σ exp(x - max)` given the maximum (0 when the maximum is not finite).
fn ln_sum_below(logits: &[f32], max: f32) -> f32 {
    if !max.is_finite() {
        return 0.0;
    }
    let mut total = 0f64;
    for chunk in logits.chunks(1024) {
        let mut lanes = [0f32; 16];
        let mut it = chunk.chunks_exact(16);
        for c in &mut it {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l += exp_nonpos(x - max);
            }
        }
        let rest: f32 = it.remainder().iter().map(|&x| exp_nonpos(x - max)).sum();
        total += (lanes.iter().sum::<f32>() + rest) as f64;
    }
    total.ln() as f32
}

/// The largest value (NaN ignored, as `f32::max` does); -inf for an empty slice.
fn max_of(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = l.max(x);
        }
    }
    it.remainder()
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `e^x` for `x ≤ 0` (a logit minus the maximum) within a few ulp, in straight-line
/// arithmetic (Cephes' `expf`: Cody-Waite reduction by ln 2, a degree-6 polynomial, the power
/// of two built in the exponent bits). Below -87 the result is flushed towards 0 (≤ 1.7e-38).
#[inline(always)]
fn exp_nonpos(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// What the relay needs of one step's logits, computed once per step: the greedy token, its
/// probability, and any token's log-probability.
#[derive(Debug, Clone, Copy)]
pub struct LogitStats {
    pub argmax: u32,
    max: f32,
    ln_sum: f32,
}

impl LogitStats {
    /// Two passes over the logits: the argmax (which is also the maximum), then the sum.
    pub fn new(logits: &[f32]) -> Self {
        let (argmax, max) = argmax_and_max(logits);
        LogitStats {
            argmax: argmax as u32,
            max,
            ln_sum: ln_sum_below(logits, max),
        }
    }

    /// log p(token).
    pub fn logprob(&self, logits: &[f32], token: u32) -> Option<f32> {
        logits
            .get(token as usize)
            .map(|&l| (l - self.max) - self.ln_sum)
    }

    /// p(greedy token): the confidence policy's signal.
    pub fn top1_prob(&self, logits: &[f32]) -> f32 {
        self.logprob(logits, self.argmax).map_or(0.0, f32::exp)
    }
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
