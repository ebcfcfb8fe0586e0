//! One training step, timed by part: what `relayllm bench train` measures and compares with
//! PyTorch (`scripts/bench_train_torch.py` does the same step: mean token NLL over the whole
//! text, backward, AdamW). Lives in the library so the benchmark times the code SFT and GRPO
//! run, not a copy of it.

use std::time::Instant;

use candle_core::Tensor;

use crate::error::Result;
use crate::optim::{AdamW, AdamWConfig};
use crate::TrainModel;

/// Seconds spent in each part of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTiming {
    /// Log-probs of every token and the loss (mean NLL).
    pub forward_s: f64,
    /// `loss.backward()`: the gradients of every trainable parameter.
    pub backward_s: f64,
    /// The AdamW update.
    pub optimizer_s: f64,
}

impl StepTiming {
    pub fn step_s(&self) -> f64 {
        self.forward_s + self.backward_s + self.optimizer_s
    }
}

/// A model, its optimizer and the token ids one step trains on.
pub struct StepBench<'a> {
    model: &'a TrainModel,
    opt: AdamW,
    ids: Vec<u32>,
}

impl<'a> StepBench<'a> {
    /// `ids` must hold at least two tokens (the first conditions the rest).
    pub fn new(model: &'a TrainModel, ids: Vec<u32>) -> Result<Self> {
        let opt = AdamW::new(model.trainable_named(), AdamWConfig::default())?;
        Ok(Self { model, opt, ids })
    }

    /// Tokens per step.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// One full step (forward, backward, update at a small learning rate), timed by part.
    /// Returns the timing and the loss.
    pub fn step(&mut self) -> Result<(StepTiming, f64)> {
        let t = Instant::now();
        let logprobs = self.model.token_logprobs(&self.ids)?;
        let loss = logprobs.mean_all()?.neg()?;
        let value = loss.to_scalar::<f32>()? as f64;
        let forward_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let store = loss.backward()?;
        let grads: Vec<Option<Tensor>> = self
            .opt
            .params()
            .iter()
            .map(|(_, v)| store.get(v.as_tensor()).cloned())
            .collect();
        let backward_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        self.opt.step(&grads, 1e-6)?;
        let optimizer_s = t.elapsed().as_secs_f64();
        Ok((
            StepTiming {
                forward_s,
                backward_s,
                optimizer_s,
            },
            value,
        ))
    }
}

/// The median of `xs` (the mean of the middle two for an even count); 0 for none.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The process's peak resident memory (`VmHWM`) in MiB; 0 where /proc is not there.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
