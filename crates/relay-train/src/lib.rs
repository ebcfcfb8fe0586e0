//! relay-train: teaching an SLM to call the LLM.
//!
//! - [`warmup`]: warm-up data — correct solutions with 0–3 `<call>n</call>` commands inserted,
//!   LLM-written tokens masked out of the loss.
//! - SFT, GRPO with the difficulty-aware reward (`relay_core::reward`), LoRA and checkpoints
//!   are built on top (see the training issue).

pub mod grpo;
pub mod warmup;
