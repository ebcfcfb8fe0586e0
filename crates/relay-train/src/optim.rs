//! AdamW, global-norm gradient clipping, gradient accumulation and the learning-rate schedule.
//!
//! Our own AdamW rather than candle-nn's so that its moments and step count can be saved in a
//! checkpoint and restored exactly: a resumed run then takes the same steps as one that never
//! stopped.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::error::{Result, TrainError};

/// AdamW hyper-parameters (the learning rate comes per step from an [`LrSchedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (`p -= lr · wd · p`).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over a fixed, named parameter list.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps: u64,
    config: AdamWConfig,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let m = params
            .iter()
            .map(|(_, p)| p.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            params,
            m,
            v,
            steps: 0,
            config,
        })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with `grads` (aligned with [`Self::params`]; `None` = no gradient, the
    /// parameter and its moments are left alone, as PyTorch does).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(TrainError::InvalidInput(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let p = &self.params[i].1;
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let decayed = (p.as_tensor() * (1.0 - lr * c.weight_decay))?;
            p.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments by name (`adam.m.<param>`, `adam.v.<param>`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("adam.m.{name}"), self.m[i].clone()));
            out.push((format!("adam.v.{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restores [`Self::state`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("adam.{kind}.{name}");
                let t = tensors.get(&key).ok_or_else(|| {
                    TrainError::InvalidInput(format!("optimizer state `{key}` missing"))
                })?;
                if t.dims() != p.dims() {
                    return Err(TrainError::InvalidInput(format!(
                        "optimizer state `{key}` has shape {:?}, parameter {:?}",
                        t.dims(),
                        p.dims()
                    )));
                }
                *slot = t.clone();
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Gradients of a fixed parameter list, summed over the micro-batches of one step.
pub struct GradAccum {
    grads: Vec<Option<Tensor>>,
}

impl GradAccum {
    pub fn new(num_params: usize) -> Self {
        Self {
            grads: vec![None; num_params],
        }
    }

    /// Adds the gradients `store` holds for `params` (in the optimizer's order).
    pub fn add(&mut self, params: &[(String, Var)], store: &GradStore) -> Result<()> {
        for (slot, (_, p)) in self.grads.iter_mut().zip(params) {
            if let Some(g) = store.get(p.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    /// Multiplies every gradient by `s` (e.g. 1 / tokens for a token mean).
    pub fn scale(&mut self, s: f64) -> Result<()> {
        for g in self.grads.iter_mut().flatten() {
            *g = (&*g * s)?;
        }
        Ok(())
    }

    pub fn grads(&self) -> &[Option<Tensor>] {
        &self.grads
    }

    pub fn grads_mut(&mut self) -> &mut [Option<Tensor>] {
        &mut self.grads
    }

    pub fn clear(&mut self) {
        self.grads.iter_mut().for_each(|g| *g = None);
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (no-op when it already
/// is, or when `max_norm` is not positive); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

/// How the learning rate falls after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

/// Linear warm-up from `peak / warmup_steps` to `peak`, then decay to `peak · min_ratio` at
/// `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
    pub min_ratio: f64,
}

impl LrSchedule {
    /// The learning rate of the update with 0-based index `step`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let min = self.peak * self.min_ratio;
        let frac = match self.decay {
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Decay::Linear => 1.0 - progress,
            Decay::Constant => 1.0,
        };
        min + (self.peak - min) * frac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = LrSchedule {
            peak: 1.0,
            warmup_steps: 4,
            total_steps: 14,
            decay: Decay::Cosine,
            min_ratio: 0.0,
        };
        assert!((s.lr(0) - 0.25).abs() < 1e-12);
        assert!((s.lr(3) - 1.0).abs() < 1e-12);
        assert!((s.lr(9) - 0.5).abs() < 1e-12);
        assert!(s.lr(14).abs() < 1e-12);
        let lin = LrSchedule {
            decay: Decay::Linear,
            ..s
        };
        assert!((lin.lr(9) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let dev = Device::Cpu;
        let mut g = vec![
            Some(Tensor::new(&[3f32, 0.0], &dev).unwrap()),
            None,
            Some(Tensor::new(&[4f32], &dev).unwrap()),
        ];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let after = clip_grad_norm(&mut g, 0.0).unwrap();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr() {
        // With bias correction the first Adam update is lr · sign(g) (|g| ≫ eps).
        let p = Var::new(&[1f32, -2.0, 0.5], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], AdamWConfig::default()).unwrap();
        let g = Tensor::new(&[0.3f32, -5.0, 0.0], &Device::Cpu).unwrap();
        opt.step(&[Some(g)], 0.1).unwrap();
        let v = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.9).abs() < 1e-5 && (v[1] + 1.9).abs() < 1e-5 && v[2] == 0.5);
    }
}
