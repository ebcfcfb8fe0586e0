//! Per-request limits of the relay, all configurable; defaults as DESIGN.md.

use serde::{Deserialize, Serialize};

use crate::error::{RelayError, Result};

/// What happens when the LLM writes its end-of-sequence token during a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnLlmEos {
    /// The response ends there, EOS token included (the reference behaviour).
    #[default]
    End,
    /// The EOS token is dropped and the SLM goes on writing.
    HandBack,
}

/// Per-request limits. Round-trips through serde; missing fields take the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RelayLimits {
    /// Response tokens (SLM + LLM, tags and EOS included).
    pub max_response_tokens: usize,
    /// Calls per response (failed calls count: they were made).
    pub max_calls: usize,
    /// LLM tokens per call; a call is also never served past `max_response_tokens`.
    pub max_call_tokens: usize,
    pub on_llm_eos: OnLlmEos,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_response_tokens: 8192,
            max_calls: 4,
            max_call_tokens: 512,
            on_llm_eos: OnLlmEos::End,
        }
    }
}

impl RelayLimits {
    pub fn validate(&self) -> Result<()> {
        if self.max_response_tokens == 0 {
            return Err(RelayError::InvalidConfig {
                field: "limits.max_response_tokens",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// Tokens a call asking for `n` may serve when `remaining` response tokens are left:
    /// `min(n, max_call_tokens, remaining)`, computed without overflow for any `n`.
    pub fn call_tokens(&self, n: u64, remaining: usize) -> usize {
        let cap = self.max_call_tokens.min(remaining);
        usize::try_from(n).map_or(cap, |n| n.min(cap))
    }
}
