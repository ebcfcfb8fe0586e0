//! relay-core: the RelayLLM protocol as pure logic.
//!
//! The SLM writes the answer; when it writes `<call>n</call>` the LLM writes the next `n`
//! tokens into the same context, then the SLM goes on. This crate owns every rule of that
//! exchange and nothing else: no I/O, no tensors, no engine. Engines drive it, so each rule is
//! tested without a model.
//!
//! Modules, in the order data flows through them:
//!
//! - [`tag`]: the streaming call-tag parser over the SLM's decoded text.
//! - [`policy`]: who decides when the LLM writes and for how long (`tag`, `confidence`, …).
//! - [`limits`]: the per-request limits and what LLM EOS means.
//! - [`session`]: the relay state machine of one response ([`RelaySession`]); it applies the
//!   policy and limits and keeps the two views.
//! - [`view`]: the LLM view's pieces, handed to the driver as a delta at each call.
//! - [`trace`]: the [`RelayTrace`] returned with every response.
//! - [`reward`]: the difficulty-aware GRPO reward computed from traces.
//!
//! ## Contract with a driver (relay-engine)
//!
//! - Ask [`RelaySession::next_action`]; on `Slm`, sample and [`push_slm_token`]: feed the token
//!   to the SLM only if it comes back `Accepted` (a `Dropped` one was replaced by a call).
//! - On `Llm`, [`begin_call`] gives the LLM-view delta: the pieces the LLM's cache lacks. Prefill
//!   exactly that (after the prompt when `first_call`); nothing is re-sent from the start.
//!   Push each decoded token; step it into the LLM on `More`; on `Done` stop without stepping
//!   (the next delta begins with that token). [`end_call`] returns the served tokens to
//!   prefill into the SLM. On an engine failure, [`fail_call`] instead.
//! - Tokens count against the budget when pushed; an EOS token that ends the response is part
//!   of it (training needs it); an LLM EOS handed back to the SLM is not.
//!
//! [`push_slm_token`]: RelaySession::push_slm_token
//! [`begin_call`]: RelaySession::begin_call
//! [`end_call`]: RelaySession::end_call
//! [`fail_call`]: RelaySession::fail_call

pub mod error;
pub mod limits;
pub mod policy;
pub mod reward;
pub mod session;
pub mod tag;
pub mod trace;
pub mod view;

pub use error::{RelayError, Result};
pub use limits::{OnLlmEos, RelayLimits};
pub use policy::{CallLength, CallPolicy, PolicyConfig, PolicyKind, TokenInfo};
pub use session::{
    Action, CallProgress, CallStart, LlmToken, RelayConfig, RelaySession, ServedCall, SlmOutcome,
    SlmToken,
};
pub use tag::{coalesce_text, CallTagParser, MalformedKind, TagConfig, TagEvent};
pub use trace::{CallRecord, PerModel, RelayTrace, Source, Span, StopReason};
pub use view::{LlmDelta, ViewPiece};
