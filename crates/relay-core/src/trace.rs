//! The trace returned with every response: who wrote which tokens, every call, the counters
//! the paper reports (`call_ratio`), and the cost per model. Field names follow DESIGN.md.
//!
//! Positions are indices into the response tokens (the SLM view of the response: every SLM
//! token, call tags included, and every LLM token; the prompt is not counted).

use serde::{Deserialize, Serialize};

/// Which model wrote a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Slm,
    Llm,
}

/// A maximal run `start..end` of response tokens written by one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub source: Source,
}

impl Span {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// One call to the LLM, served or failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Response position of the call's first LLM token (= response tokens before the call).
    pub at: usize,
    /// Response position of the SLM token in which the call tag began; absent for calls a
    /// policy made without a tag (`confidence`, `random-token`, `llm-only`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_start: Option<usize>,
    /// What was asked for before the limits applied: the tag's `n` (or the policy's, for
    /// `fixed-n` and the tag-less policies).
    pub requested_n: u64,
    /// LLM tokens that went into the response.
    pub served: usize,
    /// Set when the LLM failed (after the driver's retries); the SLM went on alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_error: Option<String>,
}

/// Why a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The SLM wrote its end-of-sequence token.
    SlmEos,
    /// The LLM wrote end-of-sequence during a call (with `on_llm_eos = end`).
    LlmEos,
    /// `max_response_tokens` reached (possibly in the middle of a call).
    TokenBudget,
    /// The driver stopped: an engine's context is full.
    ContextFull,
    /// The driver stopped: the client went away or the request was cancelled.
    Cancelled,
}

impl StopReason {
    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            StopReason::SlmEos => "slm_eos",
            StopReason::LlmEos => "llm_eos",
            StopReason::TokenBudget => "token_budget",
            StopReason::ContextFull => "context_full",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// A pair of figures, one per model.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PerModel<T> {
    pub slm: T,
    pub llm: T,
}

impl<T> PerModel<T> {
    pub fn get(&self, source: Source) -> &T {
        match source {
            Source::Slm => &self.slm,
            Source::Llm => &self.llm,
        }
    }

    pub fn get_mut(&mut self, source: Source) -> &mut T {
        match source {
            Source::Slm => &mut self.slm,
            Source::Llm => &mut self.llm,
        }
    }
}

/// Everything a response's relay did, serializable as returned to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayTrace {
    /// The policy's name (`tag`, `confidence`, …).
    pub policy: String,
    /// Maximal same-source runs; together they cover `0..response_tokens` in order.
    pub spans: Vec<Span>,
    pub calls: Vec<CallRecord>,
    /// Tag-shaped text that was not a command (`<call></call>`, `<call>x</call>`, …).
    pub malformed_tags: usize,
    /// Well-formed tags with `n = 0`: no call, by the protocol.
    pub zero_n_tags: usize,
    /// Calls asked for (by a tag or a policy) but not made: max calls reached, no budget left,
    /// a second tag in the same token, or a policy that never serves (`teacher-free`).
    pub ignored_calls: usize,
    pub response_tokens: usize,
    /// Response tokens written by each model.
    pub tokens: PerModel<usize>,
    /// Tokens each model prefilled (prompt, the other model's tokens, the LLM's view deltas),
    /// as reported by the driver.
    pub prefill_tokens: PerModel<usize>,
    /// Wall time in each model, as reported by the driver.
    pub time_ms: PerModel<f64>,
    /// LLM tokens / response tokens: the paper's metric (0 for an empty response).
    pub call_ratio: f64,
    /// Absent while the response is still being written.
    pub stop: Option<StopReason>,
}

impl RelayTrace {
    /// Checks the accounting invariants: spans are non-empty, contiguous, alternate source,
    /// and cover the response exactly; per-model counts match the spans; served tokens add up
    /// to the LLM's count; calls are in order and inside the response; the ratio matches.
    pub fn check(&self) -> Result<(), String> {
        let mut pos = 0;
        let mut by_source = PerModel::<usize>::default();
        for (i, span) in self.spans.iter().enumerate() {
            if span.start != pos {
                return Err(format!("span {i} starts at {}, expected {pos}", span.start));
            }
            if span.is_empty() {
                return Err(format!("span {i} is empty"));
            }
            if i > 0 && self.spans[i - 1].source == span.source {
                return Err(format!(
                    "spans {} and {i} have the same source and should be one",
                    i - 1
                ));
            }
            *by_source.get_mut(span.source) += span.len();
            pos = span.end;
        }
        if pos != self.response_tokens {
            return Err(format!(
                "spans cover {pos} tokens, response has {}",
                self.response_tokens
            ));
        }
        if by_source != self.tokens {
            return Err(format!(
                "spans count {by_source:?}, tokens say {:?}",
                self.tokens
            ));
        }
        if self.tokens.slm + self.tokens.llm != self.response_tokens {
            return Err(format!(
                "{:?} does not add up to {}",
                self.tokens, self.response_tokens
            ));
        }
        let served: usize = self.calls.iter().map(|c| c.served).sum();
        if served != self.tokens.llm {
            return Err(format!(
                "calls served {served} tokens, the LLM wrote {}",
                self.tokens.llm
            ));
        }
        let mut last_end = 0;
        for (i, call) in self.calls.iter().enumerate() {
            if call.at < last_end || call.at + call.served > self.response_tokens {
                return Err(format!(
                    "call {i} at {} serving {} is out of order or outside the response",
                    call.at, call.served
                ));
            }
            if call.served > 0
                && !self.spans.iter().any(|s| {
                    s.source == Source::Llm && s.start <= call.at && call.at + call.served <= s.end
                })
            {
                return Err(format!("call {i} at {} is not inside an LLM span", call.at));
            }
            last_end = call.at + call.served;
        }
        let ratio = if self.response_tokens == 0 {
            0.0
        } else {
            self.tokens.llm as f64 / self.response_tokens as f64
        };
        if (ratio - self.call_ratio).abs() > 1e-12 {
            return Err(format!(
                "call_ratio {} but tokens give {ratio}",
                self.call_ratio
            ));
        }
        Ok(())
    }

    /// Number of calls that served at least one token (the reward's "called").
    pub fn served_calls(&self) -> usize {
        self.calls.iter().filter(|c| c.served > 0).count()
    }
}
