//! relay-train: warm-up data, SFT, GRPO with the difficulty-aware reward, LoRA, checkpoints.
//!
//! Not built yet: see the training issue.
