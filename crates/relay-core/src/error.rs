//! The crate's one error type. Every variant says what was expected and what came instead,
//! and has a short machine label for logs and metrics.

/// Errors from relay-core: bad configuration, or a driver calling the session out of turn.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RelayError {
    /// A policy name that `PolicyKind` does not know.
    #[error("unknown policy `{name}`; valid policies: {valid}")]
    UnknownPolicy { name: String, valid: String },

    /// A configuration value out of its range.
    #[error("invalid {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    /// The driver asked the session to do something the current phase does not allow
    /// (e.g. pushing an SLM token while a call is in progress).
    #[error("`{action}` is not allowed while the session is {phase}")]
    WrongPhase {
        action: &'static str,
        phase: &'static str,
    },
}

impl RelayError {
    /// Short label used in logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RelayError::UnknownPolicy { .. } => "unknown_policy",
            RelayError::InvalidConfig { .. } => "invalid_config",
            RelayError::WrongPhase { .. } => "wrong_phase",
        }
    }
}

pub type Result<T, E = RelayError> = std::result::Result<T, E>;
