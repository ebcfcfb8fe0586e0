//! relay-engine: the `Engine` trait (sequences with owned KV caches: prefill, step, truncate,
//! fork, score) and its implementations, plus tokenizers, chat templates and model loading.

pub mod batching;
pub mod candle;
pub mod chat;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod generate;
#[cfg(feature = "llama-cpp")]
pub mod llama_cpp;
pub mod model;
pub mod relay;
pub mod remote;
pub mod sampling;
pub mod stream;
pub mod testing;
pub mod tiny;
pub mod tiny_vocab;
pub mod tokenizer;

pub use candle::{CandleEngine, EngineKind, LoadOptions};
pub use engine::{Engine, ModelInfo, SeqId};
pub use error::{EngineError, Result};
#[cfg(feature = "llama-cpp")]
pub use llama_cpp::LlamaCppEngine;
