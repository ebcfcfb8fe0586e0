//! The engine crate's one error type.

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file not found: {0}")]
    NotFound(std::path::PathBuf),
    #[error("unknown sequence {0:?}")]
    UnknownSequence(crate::SeqId),
    #[error("token id {id} is out of the vocabulary (size {vocab_size})")]
    TokenOutOfVocab { id: u32, vocab_size: usize },
    #[error("sequence would hold {len} tokens, past the context length {context_length}")]
    ContextOverflow { len: usize, context_length: usize },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// Weights offered in place of a loaded model's do not fit it (another shape or vocabulary).
    #[error("incompatible weights: {0}")]
    Incompatible(String),
    #[error("malformed model file {path}: {reason}")]
    Malformed {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error reported by llama.cpp (the `llama-cpp` engine).
    #[error("llama.cpp: {0}")]
    LlamaCpp(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("relay protocol: {0}")]
    Relay(#[from] relay_core::RelayError),
    /// A remote model server refused or failed a request: `status` is the HTTP status it
    /// answered with, `None` when it answered without an error status but with something
    /// that cannot be used (not JSON, no log-probs).
    #[error("{url}: {}{message}", .status.map(|s| format!("HTTP {s}: ")).unwrap_or_default())]
    Upstream {
        url: String,
        status: Option<u16>,
        message: String,
    },
    /// A remote model server could not be reached (refused, reset, no such host), or the
    /// connection broke before its answer was in.
    #[error("{url}: cannot reach the server: {message}")]
    Unreachable { url: String, message: String },
    /// A remote model server did not answer within the time allowed.
    #[error("{url}: timed out after {after:?}")]
    Timeout {
        url: String,
        after: std::time::Duration,
    },
    /// A remote model server does not report its vocabulary size, and none was configured.
    #[error("{url} does not report its vocabulary size; pass a tokenizer (--tokenizer) or set vocab_size")]
    VocabSizeUnknown { url: String },
    /// A bug of ours: an engine or the relay broke a contract (not the caller's input).
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    /// Short machine label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::UnknownSequence(_) => "unknown_sequence",
            Self::TokenOutOfVocab { .. } => "token_out_of_vocab",
            Self::ContextOverflow { .. } => "context_overflow",
            Self::InvalidInput(_) => "invalid_input",
            Self::Unsupported(_) => "unsupported",
            Self::Incompatible(_) => "incompatible",
            Self::Malformed { .. } => "malformed",
            Self::Candle(_) => "candle",
            Self::LlamaCpp(_) => "llama_cpp",
            Self::Io(_) => "io",
            Self::Relay(_) => "relay",
            Self::Upstream { .. } => "upstream",
            Self::Unreachable { .. } => "upstream_unreachable",
            Self::Timeout { .. } => "upstream_timeout",
            Self::VocabSizeUnknown { .. } => "vocab_size_unknown",
            Self::Internal(_) => "internal",
        }
    }
}
