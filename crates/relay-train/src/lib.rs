//! relay-train: teaching an SLM to call the LLM, on candle's autograd.
//!
//! - [`warmup`]: warm-up data — correct solutions with 0–3 `<call>n</call>` commands inserted,
//!   LLM-written tokens masked out of the loss.
//! - [`model::TrainModel`]: a differentiable Qwen2/Qwen3 forward over whole sequences that
//!   matches the inference engine's numerics, with LoRA or full fine-tuning. A GGUF base is
//!   dequantized to f32 and kept frozen; LoRA trains low-rank pairs beside it.
//! - [`backprop`]: LoRA's forward and backward written out by hand as one autograd op (the
//!   default for LoRA; several times faster than candle's autograd over the same math).
//! - [`attention`]: causal grouped-query attention, forward and backward, on the projections'
//!   token-major slices, FlashAttention-style (the hand-written pass's).
//! - [`fused`]: attention and the output head as ops that recompute in the backward pass, so
//!   a step's memory stays linear in the sequence length with no vocabulary-sized activations.
//! - [`optim`]: AdamW (checkpointable), gradient accumulation, global-norm clipping, warm-up +
//!   cosine/linear schedule.
//! - [`checkpoint`]: atomic single-file checkpoints (weights + optimizer + step + data position
//!   + settings) and exact resume.
//! - [`data`] and [`sft`]: JSONL conversations → ids + loss mask → the SFT loop.
//! - [`grpo`]: GRPO on the relay's own rollouts with the difficulty-aware reward
//!   (`relay_core::reward`).
//! - [`run`]: what SFT and GRPO share around their loops: refuse or resume, step logs, saves.
//! - [`bench`]: one training step timed by part (`relayllm bench train`).
//! - [`export`]: LoRA merged into the base, written as a safetensors folder or a GGUF.

pub mod attention;
pub mod backprop;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod export;
pub mod fused;
pub mod grpo;
mod mm;
pub mod model;
pub mod optim;
pub mod run;
pub mod sft;
pub mod warmup;

pub use error::{Result, TrainError};
pub use model::{Adapter, LoraTarget, TrainModel};
