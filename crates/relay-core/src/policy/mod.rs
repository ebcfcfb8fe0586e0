//! Call policies: who decides when the LLM writes, and for how long.
//!
//! A policy sees each SLM position before its token is committed (id, text, the SLM's top-1
//! probability) and each well-formed call tag, and answers with a [`CallLength`] or nothing.
//! The session enforces the protocol around it (limits, `n = 0`, budget), so a policy is only
//! its decision rule. Adding one is one file here plus its line in [`PolicyKind`] and
//! [`PolicyConfig::build`].

mod confidence;
mod fixed_n;
mod llm_only;
mod random_query;
mod random_token;
mod slm_only;
mod tag;
mod teacher_free;

pub use confidence::ConfidencePolicy;
pub use fixed_n::FixedNPolicy;
pub use llm_only::LlmOnlyPolicy;
pub use random_query::RandomQueryPolicy;
pub use random_token::RandomTokenPolicy;
pub use slm_only::SlmOnlyPolicy;
pub use tag::TagPolicy;
pub use teacher_free::TeacherFreePolicy;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{RelayError, Result};

/// What the SLM sampled at one position, shown to the policy before the token is committed.
#[derive(Debug, Clone, Copy)]
pub struct TokenInfo<'a> {
    pub id: u32,
    pub text: &'a str,
    /// Highest probability in the SLM's distribution at this position.
    pub top1_prob: f32,
    /// Response position the token would take.
    pub position: usize,
    pub eos: bool,
}

/// How long a call should run; the session clamps it with the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallLength {
    /// Up to `n` tokens (`n = 0` means no call).
    Tokens(u64),
    /// Until the LLM writes a token containing a newline, at most `max` tokens.
    UntilNewline { max: u64 },
    /// The rest of the response (`llm-only`, `random-query`): exempt from `max_calls` and
    /// `max_call_tokens`, bounded by the response budget only.
    RestOfResponse,
}

/// A decision rule for calls. The session calls these hooks in this order: `on_start` once,
/// then per SLM position `before_slm_token` and, for each well-formed tag with `n > 0` that the
/// token completes, `on_tag`; `on_call_end` after every call.
pub trait CallPolicy: Send + fmt::Debug {
    /// The name as [`PolicyKind`] spells it.
    fn name(&self) -> &'static str;

    /// Whether call tags in the SLM's text are commands: parsed, counted, removed from the
    /// LLM view, and passed to `on_tag`. When false, tags are plain text.
    fn reads_tags(&self) -> bool {
        false
    }

    /// Whether this policy ever asks for a call. A driver need not prepare the LLM (read
    /// ahead, open its sequence) for one that does not.
    fn may_call(&self) -> bool {
        true
    }

    /// Before the first token: a call here hands the response to the LLM from the start.
    fn on_start(&mut self) -> Option<CallLength> {
        None
    }

    /// Before an SLM token is committed. A call here replaces the token: the driver drops it
    /// and the LLM writes at this position instead.
    fn before_slm_token(&mut self, _token: &TokenInfo<'_>) -> Option<CallLength> {
        None
    }

    /// A well-formed tag asking for `n > 0` tokens. `None` ignores it (counted in the trace).
    fn on_tag(&mut self, _n: u64) -> Option<CallLength> {
        None
    }

    /// A call has ended (served, cut, or failed).
    fn on_call_end(&mut self) {}
}

/// The policies by name, as requests and the CLI spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    #[default]
    Tag,
    Confidence,
    RandomToken,
    RandomQuery,
    SlmOnly,
    LlmOnly,
    TeacherFree,
    FixedN,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 8] = [
        PolicyKind::Tag,
        PolicyKind::Confidence,
        PolicyKind::RandomToken,
        PolicyKind::RandomQuery,
        PolicyKind::SlmOnly,
        PolicyKind::LlmOnly,
        PolicyKind::TeacherFree,
        PolicyKind::FixedN,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            PolicyKind::Tag => "tag",
            PolicyKind::Confidence => "confidence",
            PolicyKind::RandomToken => "random-token",
            PolicyKind::RandomQuery => "random-query",
            PolicyKind::SlmOnly => "slm-only",
            PolicyKind::LlmOnly => "llm-only",
            PolicyKind::TeacherFree => "teacher-free",
            PolicyKind::FixedN => "fixed-n",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = RelayError;

    fn from_str(s: &str) -> Result<Self> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| RelayError::UnknownPolicy {
                name: s.to_string(),
                valid: PolicyKind::ALL.map(|k| k.name()).join(", "),
            })
    }
}

/// A policy and its knobs, as a request or config file gives them. Knobs a policy does not
/// use are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    pub kind: PolicyKind,
    /// `confidence`: call when the SLM's top-1 probability is below this.
    pub threshold: f32,
    /// `confidence`, `random-token`: tokens per call (the cap, with `until_newline`);
    /// `fixed-n`: the n that replaces every tag's n.
    pub call_tokens: u64,
    /// `confidence`: the call runs until the LLM ends a line (at most `call_tokens`).
    pub until_newline: bool,
    /// `confidence`: SLM positions after a call before the next may start.
    pub cooldown: usize,
    /// `random-token`: chance of a call at each SLM position.
    pub token_probability: f64,
    /// `random-query`: chance the whole query goes to the LLM.
    pub query_probability: f64,
    /// Seed of the random policies; derive one per request (e.g. seed + problem index) so
    /// that draws differ between requests yet reproduce.
    pub seed: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            kind: PolicyKind::Tag,
            threshold: 0.5,
            call_tokens: 16,
            until_newline: false,
            cooldown: 16,
            token_probability: 0.01,
            query_probability: 0.5,
            seed: 0,
        }
    }
}

impl PolicyConfig {
    pub fn new(kind: PolicyKind) -> Self {
        PolicyConfig {
            kind,
            ..PolicyConfig::default()
        }
    }

    /// Validates the knobs the chosen policy uses and builds it.
    pub fn build(&self) -> Result<Box<dyn CallPolicy>> {
        let probability = |field: &'static str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(p)
            } else {
                Err(RelayError::InvalidConfig {
                    field,
                    reason: format!("a probability in [0, 1], got {p}"),
                })
            }
        };
        let call_tokens = || {
            if self.call_tokens == 0 {
                Err(RelayError::InvalidConfig {
                    field: "policy.call_tokens",
                    reason: "must be at least 1".into(),
                })
            } else {
                Ok(self.call_tokens)
            }
        };
        Ok(match self.kind {
            PolicyKind::Tag => Box::new(TagPolicy),
            PolicyKind::Confidence => {
                if !(0.0..=1.0).contains(&self.threshold) {
                    return Err(RelayError::InvalidConfig {
                        field: "policy.threshold",
                        reason: format!("a probability in [0, 1], got {}", self.threshold),
                    });
                }
                let length = if self.until_newline {
                    CallLength::UntilNewline {
                        max: call_tokens()?,
                    }
                } else {
                    CallLength::Tokens(call_tokens()?)
                };
                Box::new(ConfidencePolicy::new(self.threshold, length, self.cooldown))
            }
            PolicyKind::RandomToken => Box::new(RandomTokenPolicy::new(
                probability("policy.token_probability", self.token_probability)?,
                call_tokens()?,
                self.seed,
            )),
            PolicyKind::RandomQuery => Box::new(RandomQueryPolicy::new(
                probability("policy.query_probability", self.query_probability)?,
                self.seed,
            )),
            PolicyKind::SlmOnly => Box::new(SlmOnlyPolicy),
            PolicyKind::LlmOnly => Box::new(LlmOnlyPolicy),
            PolicyKind::TeacherFree => Box::new(TeacherFreePolicy),
            PolicyKind::FixedN => Box::new(FixedNPolicy::new(call_tokens()?)),
        })
    }
}
