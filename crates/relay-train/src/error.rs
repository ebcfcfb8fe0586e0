//! The training crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong loading, training, checkpointing or exporting.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Engine(#[from] relay_engine::EngineError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A line of a training data file that cannot be used; `line` counts from 1.
    #[error("{path}:{line}: {reason}")]
    BadData {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// An atomic write that failed (nothing was left at `path`).
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A resumed run whose settings differ from the checkpoint's.
    #[error("cannot resume from {path}: {reason}")]
    Resume { path: PathBuf, reason: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// Short machine label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Engine(e) => e.label(),
            Self::Candle(_) => "candle",
            Self::Io(_) => "io",
            Self::BadData { .. } => "bad_data",
            Self::Write { .. } => "write",
            Self::Checkpoint { .. } => "checkpoint",
            Self::Resume { .. } => "resume",
            Self::InvalidInput(_) => "invalid_input",
            Self::Unsupported(_) => "unsupported",
        }
    }
}
