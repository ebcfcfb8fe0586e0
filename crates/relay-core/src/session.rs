//! The relay state machine for one response. An engine driver pushes the SLM's tokens and the
//! LLM's tokens into a [`RelaySession`]; the session applies the policy and the limits, keeps
//! the two views, and says what to do next. It owns no model and does no I/O.
//!
//! A driver's loop (see the crate docs for the full contract):
//!
//! ```text
//! let mut s = RelaySession::from_config(&config)?;
//! slm_logits = slm.prefill(slm_seq, prompt);  s.record_prefill(Slm, prompt.len())
//! loop {
//!     match s.next_action() {
//!         Action::Slm => {
//!             let tok = sample(slm_logits);
//!             let outcome = s.push_slm_token(SlmToken { id, text, top1_prob, eos })?;
//!             if outcome == SlmOutcome::Accepted && !s.is_done() {
//!                 slm_logits = slm.step(tok)           // a Dropped token is never fed
//!             }
//!         }
//!         Action::Llm { .. } => {
//!             let call = s.begin_call()?;              // call.delta: LLM view not yet in its cache
//!             let len_before = llm.seq_len(llm_seq);   // (a new sequence when delta.first_call)
//!             llm_logits = llm.prefill(llm_seq, [prompt if call.delta.first_call] + call.delta)
//!             let served = loop {
//!                 let t = sample(llm_logits);
//!                 match s.push_llm_token(LlmToken { id, text, eos })? {
//!                     CallProgress::More => llm_logits = llm.step(t),
//!                     CallProgress::Done => break s.end_call()?,   // t is NOT fed: the
//!                 }                                                // next delta starts with it
//!             };
//!             // on an engine error after retries: llm.truncate(llm_seq, len_before);
//!             //                                   let served = s.fail_call(err.to_string())?;
//!             if !served.ends_response && !served.tokens.is_empty() {
//!                 slm_logits = slm.prefill(slm_seq, served.tokens)
//!             }
//!         }
//!         Action::Stop(_) => break,
//!     }
//! }
//! let trace = s.trace();
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{RelayError, Result};
use crate::limits::{OnLlmEos, RelayLimits};
use crate::policy::{CallLength, CallPolicy, PolicyConfig, TokenInfo};
use crate::tag::{CallTagParser, TagConfig, TagEvent};
use crate::trace::{CallRecord, PerModel, RelayTrace, Source, Span, StopReason};
use crate::view::{LlmDelta, ViewPiece};

/// Everything a request configures about the relay, in one serde value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RelayConfig {
    pub limits: RelayLimits,
    pub tags: TagConfig,
    pub policy: PolicyConfig,
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Sample the SLM's next token and push it with [`RelaySession::push_slm_token`].
    Slm,
    /// Call the LLM ([`RelaySession::begin_call`]) or, inside a call, keep decoding:
    /// at most `max_tokens` more tokens.
    Llm { max_tokens: usize },
    /// The response is complete.
    Stop(StopReason),
}

/// One sampled SLM token as the driver saw it.
#[derive(Debug, Clone, Copy)]
pub struct SlmToken<'a> {
    pub id: u32,
    /// The token's decoded text (empty when it ends inside a UTF-8 character and the driver's
    /// detokenizer carries the bytes to the next token).
    pub text: &'a str,
    /// Highest probability in the distribution the token was sampled from.
    pub top1_prob: f32,
    /// The token is the SLM's end-of-sequence.
    pub eos: bool,
}

/// One decoded LLM token.
#[derive(Debug, Clone, Copy)]
pub struct LlmToken<'a> {
    pub id: u32,
    pub text: &'a str,
    pub eos: bool,
}

/// What became of a pushed SLM token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlmOutcome {
    /// It is part of the response: feed it to the SLM.
    Accepted,
    /// The policy called the LLM at this position instead: don't feed it; the LLM writes here.
    Dropped,
}

/// Whether a call wants another LLM token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallProgress {
    /// Feed the token to the LLM (step) and push the next one.
    More,
    /// The call is complete (its length, a newline, EOS, or the budget): don't feed this
    /// token, call [`RelaySession::end_call`].
    Done,
}

/// What the driver needs to start a call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallStart {
    /// The LLM view appended since the LLM's cache was last in sync; prefill exactly this.
    pub delta: LlmDelta,
    /// Most tokens the call may serve: `min(n, max_call_tokens, remaining budget)`.
    pub max_tokens: usize,
    pub requested_n: u64,
}

/// The LLM tokens a call put into the response: what the driver prefills into the SLM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServedCall {
    pub tokens: Vec<u32>,
    pub text: String,
    /// The response ended with this call (LLM EOS, budget): nothing more to prefill.
    pub ends_response: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlannedCall {
    requested_n: u64,
    max_tokens: usize,
    until_newline: bool,
    tag_start: Option<usize>,
}

#[derive(Debug, Clone)]
enum Phase {
    Slm,
    CallPending(PlannedCall),
    InCall {
        plan: PlannedCall,
        /// LLM-view cursor before this call's delta, restored if the call fails.
        cursor_before: usize,
        first_call: bool,
        done: bool,
        llm_eos: bool,
    },
    Done(StopReason),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Slm => "waiting for an SLM token",
            Phase::CallPending(_) => "waiting for a call to begin",
            Phase::InCall { done: false, .. } => "in a call",
            Phase::InCall { done: true, .. } => "waiting for the call to end",
            Phase::Done(_) => "done",
        }
    }
}

/// Tag bookkeeping of the SLM text stream, present when the policy reads tags.
#[derive(Debug, Clone)]
struct TagState {
    parser: CallTagParser,
    /// (byte start in the parser stream, response index) of every accepted SLM token.
    token_starts: Vec<(usize, usize)>,
    /// SLM tokens (response index, byte start) not yet placed in the LLM view because the
    /// parser has not decided all of their text.
    undecided: VecDeque<(usize, usize)>,
    /// Byte ranges of tags (calls and malformed) not yet passed by the conversion.
    removed: VecDeque<(usize, usize)>,
    /// Empty-text tokens waiting for the next non-empty one (their bytes travel with it).
    glue: Vec<usize>,
}

/// The relay state machine of one response. See the module docs for the driver's loop.
#[derive(Debug)]
pub struct RelaySession {
    limits: RelayLimits,
    policy: Box<dyn CallPolicy>,
    tags: Option<TagState>,
    phase: Phase,
    /// The response (SLM view): ids, texts, and who wrote each token.
    tokens: Vec<u32>,
    texts: Vec<String>,
    sources: Vec<Source>,
    /// The LLM view of the response, and how much of it the LLM's cache holds.
    llm_view: Vec<ViewPiece>,
    llm_cursor: usize,
    llm_called: bool,
    calls: Vec<CallRecord>,
    malformed_tags: usize,
    zero_n_tags: usize,
    ignored_calls: usize,
    prefill_tokens: PerModel<usize>,
    time_ms: PerModel<f64>,
}

impl RelaySession {
    /// A session with an already-built policy. The policy's `on_start` runs here, so the
    /// first action may already be a call (`llm-only`, `random-query`).
    pub fn new(limits: RelayLimits, tags: TagConfig, policy: Box<dyn CallPolicy>) -> Result<Self> {
        limits.validate()?;
        let tags = if policy.reads_tags() {
            Some(TagState {
                parser: CallTagParser::new(tags)?,
                token_starts: Vec::new(),
                undecided: VecDeque::new(),
                removed: VecDeque::new(),
                glue: Vec::new(),
            })
        } else {
            tags.validate()?;
            None
        };
        let mut session = RelaySession {
            limits,
            policy,
            tags,
            phase: Phase::Slm,
            tokens: Vec::new(),
            texts: Vec::new(),
            sources: Vec::new(),
            llm_view: Vec::new(),
            llm_cursor: 0,
            llm_called: false,
            calls: Vec::new(),
            malformed_tags: 0,
            zero_n_tags: 0,
            ignored_calls: 0,
            prefill_tokens: PerModel::default(),
            time_ms: PerModel::default(),
        };
        if let Some(length) = session.policy.on_start() {
            if let Some(plan) = session.plan(length, None) {
                session.phase = Phase::CallPending(plan);
            }
        }
        Ok(session)
    }

    /// A session from a request's configuration (builds the policy).
    pub fn from_config(config: &RelayConfig) -> Result<Self> {
        RelaySession::new(config.limits, config.tags.clone(), config.policy.build()?)
    }

    pub fn next_action(&self) -> Action {
        match &self.phase {
            Phase::Slm => Action::Slm,
            Phase::CallPending(plan) => Action::Llm {
                max_tokens: plan.max_tokens,
            },
            Phase::InCall { plan, done, .. } => {
                let served = self.calls.last().map_or(0, |c| c.served);
                Action::Llm {
                    max_tokens: if *done { 0 } else { plan.max_tokens - served },
                }
            }
            Phase::Done(reason) => Action::Stop(*reason),
        }
    }

    /// Offers the SLM's sampled token. The policy may call the LLM at this position instead
    /// ([`SlmOutcome::Dropped`]); otherwise the token joins the response, its text is scanned
    /// for tags, and a completed tag (or the EOS, or the budget) decides the next action.
    pub fn push_slm_token(&mut self, token: SlmToken<'_>) -> Result<SlmOutcome> {
        self.expect_phase("push_slm_token", |p| matches!(p, Phase::Slm))?;
        let info = TokenInfo {
            id: token.id,
            text: token.text,
            top1_prob: token.top1_prob,
            position: self.tokens.len(),
            eos: token.eos,
        };
        if let Some(length) = self.policy.before_slm_token(&info) {
            if let Some(plan) = self.plan(length, None) {
                self.phase = Phase::CallPending(plan);
                return Ok(SlmOutcome::Dropped);
            }
        }

        let index = self.append(token.id, token.text, Source::Slm);
        let mut scheduled = None;
        match self.tags.as_mut() {
            Some(tags) => {
                let byte_start = tags.parser.position();
                tags.token_starts.push((byte_start, index));
                tags.undecided.push_back((index, byte_start));
                let events = tags.parser.push(token.text);
                self.apply_tag_events(events, Some(&mut scheduled));
                self.place_decided_tokens(false);
            }
            None => self.llm_view.push(ViewPiece::Token {
                id: token.id,
                text: token.text.to_string(),
                source: Source::Slm,
            }),
        }

        if token.eos || self.remaining_tokens() == 0 {
            if scheduled.is_some() {
                self.ignored_calls += 1;
            }
            self.finish(if token.eos {
                StopReason::SlmEos
            } else {
                StopReason::TokenBudget
            });
        } else if let Some(plan) = scheduled {
            self.phase = Phase::CallPending(plan);
        }
        Ok(SlmOutcome::Accepted)
    }

    /// Starts the pending call: records it and hands out the LLM-view delta to prefill.
    pub fn begin_call(&mut self) -> Result<CallStart> {
        let Phase::CallPending(plan) = self.phase else {
            return Err(RelayError::WrongPhase {
                action: "begin_call",
                phase: self.phase.name(),
            });
        };
        // The LLM writes next, so the SLM's text stream is interrupted here: whatever the
        // parser held back is decided now and every SLM token so far reaches the LLM view.
        self.flush_tags();
        let first_call = !self.llm_called;
        let delta = LlmDelta {
            first_call,
            pieces: self.llm_view[self.llm_cursor..].to_vec(),
        };
        let cursor_before = self.llm_cursor;
        self.llm_cursor = self.llm_view.len();
        self.llm_called = true;
        self.calls.push(CallRecord {
            at: self.tokens.len(),
            tag_start: plan.tag_start,
            requested_n: plan.requested_n,
            served: 0,
            llm_error: None,
        });
        self.phase = Phase::InCall {
            plan,
            cursor_before,
            first_call,
            done: false,
            llm_eos: false,
        };
        Ok(CallStart {
            delta,
            max_tokens: plan.max_tokens,
            requested_n: plan.requested_n,
        })
    }

    /// Adds the LLM's next token to the response (an EOS ends the response or, with
    /// `on_llm_eos = hand-back`, is dropped and ends the call).
    pub fn push_llm_token(&mut self, token: LlmToken<'_>) -> Result<CallProgress> {
        let Phase::InCall {
            plan, done: false, ..
        } = self.phase
        else {
            return Err(RelayError::WrongPhase {
                action: "push_llm_token",
                phase: self.phase.name(),
            });
        };
        if token.eos && self.limits.on_llm_eos == OnLlmEos::HandBack {
            self.set_call_done(false);
            return Ok(CallProgress::Done);
        }
        self.append(token.id, token.text, Source::Llm);
        self.llm_view.push(ViewPiece::Token {
            id: token.id,
            text: token.text.to_string(),
            source: Source::Llm,
        });
        let call = self.calls.last_mut().expect("a call is in progress");
        call.served += 1;
        let complete = token.eos
            || call.served >= plan.max_tokens
            || (plan.until_newline && token.text.contains('\n'));
        if complete {
            self.set_call_done(token.eos);
            Ok(CallProgress::Done)
        } else {
            // The driver steps this token into the LLM, so its cache now holds it.
            self.llm_cursor += 1;
            Ok(CallProgress::More)
        }
    }

    /// Ends the current call (normally after [`CallProgress::Done`]; earlier if the driver
    /// must) and returns the served tokens for the SLM's prefill.
    pub fn end_call(&mut self) -> Result<ServedCall> {
        self.close_call("end_call", None)
    }

    /// Records that the LLM failed (after the driver's retries). Tokens it served before the
    /// failure stay in the response; the SLM goes on. The LLM's cache is in an unknown state,
    /// so the next delta starts again from before this call: the driver truncates the LLM's
    /// sequence to its length before this call's prefill (or recreates it on a first call,
    /// which the next delta then says again).
    pub fn fail_call(&mut self, error: impl Into<String>) -> Result<ServedCall> {
        self.close_call("fail_call", Some(error.into()))
    }

    /// Ends the response for a reason of the driver's (`ContextFull`, `Cancelled`). A call in
    /// progress keeps what it served; a pending one is counted as ignored. No-op when done.
    pub fn stop(&mut self, reason: StopReason) {
        match self.phase {
            Phase::Done(_) => return,
            Phase::CallPending(_) => self.ignored_calls += 1,
            Phase::InCall { .. } => self.policy.on_call_end(),
            Phase::Slm => {}
        }
        self.finish(reason);
    }

    /// Adds prefill work the driver did (prompt, deltas, served tokens) to the trace.
    pub fn record_prefill(&mut self, source: Source, tokens: usize) {
        *self.prefill_tokens.get_mut(source) += tokens;
    }

    /// Adds time the driver spent in a model to the trace.
    pub fn record_time(&mut self, source: Source, elapsed: Duration) {
        *self.time_ms.get_mut(source) += elapsed.as_secs_f64() * 1000.0;
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done(_))
    }

    /// Whether the call budget (`max_calls`) has room for another call. Calls for the rest of
    /// the response (`llm-only`, `random-query`) are exempt from it and may come regardless.
    pub fn call_budget_left(&self) -> bool {
        self.calls.len() < self.limits.max_calls
    }

    /// Whether a budgeted call may still come: the policy calls at all and
    /// [`call_budget_left`](Self::call_budget_left).
    pub fn may_call(&self) -> bool {
        self.policy.may_call() && self.call_budget_left()
    }

    /// Response tokens still allowed.
    pub fn remaining_tokens(&self) -> usize {
        self.limits
            .max_response_tokens
            .saturating_sub(self.tokens.len())
    }

    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Response token ids (SLM view: tags and both models' tokens).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Who wrote each response token.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The response text as written (SLM view, tags included).
    pub fn text(&self) -> String {
        self.texts.concat()
    }

    /// The response's LLM view so far (tags removed). Tokens whose text the parser still
    /// holds back are missing until the next call or the end.
    pub fn llm_view(&self) -> &[ViewPiece] {
        &self.llm_view
    }

    /// The LLM-view pieces no call has handed out yet: the next call's delta starts with
    /// them. Every piece here is final (undecided tag text is not in the view yet), so a
    /// driver may feed the LLM from them ahead of the call.
    pub fn llm_unread(&self) -> &[ViewPiece] {
        &self.llm_view[self.llm_cursor..]
    }

    pub fn llm_view_text(&self) -> String {
        self.llm_view.iter().map(ViewPiece::text).collect()
    }

    /// The trace as of now (final once [`is_done`](Self::is_done)).
    pub fn trace(&self) -> RelayTrace {
        let mut spans: Vec<Span> = Vec::new();
        for (i, &source) in self.sources.iter().enumerate() {
            match spans.last_mut() {
                Some(span) if span.source == source => span.end = i + 1,
                _ => spans.push(Span {
                    start: i,
                    end: i + 1,
                    source,
                }),
            }
        }
        let mut tokens = PerModel::<usize>::default();
        for &source in &self.sources {
            *tokens.get_mut(source) += 1;
        }
        let response_tokens = self.tokens.len();
        RelayTrace {
            policy: self.policy.name().to_string(),
            spans,
            calls: self.calls.clone(),
            malformed_tags: self.malformed_tags,
            zero_n_tags: self.zero_n_tags,
            ignored_calls: self.ignored_calls,
            response_tokens,
            tokens,
            prefill_tokens: self.prefill_tokens,
            time_ms: self.time_ms,
            call_ratio: if response_tokens == 0 {
                0.0
            } else {
                tokens.llm as f64 / response_tokens as f64
            },
            stop: match self.phase {
                Phase::Done(reason) => Some(reason),
                _ => None,
            },
        }
    }

    // ---- internals ----

    fn expect_phase(&self, action: &'static str, ok: impl Fn(&Phase) -> bool) -> Result<()> {
        if ok(&self.phase) {
            Ok(())
        } else {
            Err(RelayError::WrongPhase {
                action,
                phase: self.phase.name(),
            })
        }
    }

    fn append(&mut self, id: u32, text: &str, source: Source) -> usize {
        self.tokens.push(id);
        self.texts.push(text.to_string());
        self.sources.push(source);
        self.tokens.len() - 1
    }

    /// Applies the limits to a requested call: `None` when no call is made (counted as
    /// ignored unless nothing was asked for).
    fn plan(&mut self, length: CallLength, tag_start: Option<usize>) -> Option<PlannedCall> {
        let remaining = self.remaining_tokens();
        let (n, until_newline) = match length {
            CallLength::RestOfResponse => {
                if remaining == 0 {
                    self.ignored_calls += 1;
                    return None;
                }
                let plan = PlannedCall {
                    requested_n: remaining as u64,
                    max_tokens: remaining,
                    until_newline: false,
                    tag_start,
                };
                return Some(plan);
            }
            CallLength::Tokens(n) => (n, false),
            CallLength::UntilNewline { max } => (max, true),
        };
        if n == 0 {
            return None;
        }
        let max_tokens = self.limits.call_tokens(n, remaining);
        if self.calls.len() >= self.limits.max_calls || max_tokens == 0 {
            self.ignored_calls += 1;
            return None;
        }
        Some(PlannedCall {
            requested_n: n,
            max_tokens,
            until_newline,
            tag_start,
        })
    }

    /// Counts the parser's findings and plans at most one call (`scheduled`) from them; a
    /// second tag completed by the same token is ignored, since the call follows the token.
    /// With `scheduled = None` (at an interruption) no call can be planned.
    fn apply_tag_events(
        &mut self,
        events: Vec<TagEvent>,
        mut scheduled: Option<&mut Option<PlannedCall>>,
    ) {
        for event in events {
            match event {
                TagEvent::Text { .. } => {}
                TagEvent::Malformed { start, end, .. } => {
                    self.tags
                        .as_mut()
                        .expect("reading tags")
                        .removed
                        .push_back((start, end));
                    self.malformed_tags += 1;
                }
                TagEvent::Call { start, end, n } => {
                    let tags = self.tags.as_mut().expect("reading tags");
                    tags.removed.push_back((start, end));
                    let starts = &tags.token_starts;
                    let tag_start = starts[starts
                        .partition_point(|&(b, _)| b <= start)
                        .saturating_sub(1)]
                    .1;
                    if n == 0 {
                        self.zero_n_tags += 1;
                        continue;
                    }
                    match scheduled.as_deref_mut() {
                        Some(slot @ None) => match self.policy.on_tag(n) {
                            Some(length) => *slot = self.plan(length, Some(tag_start)),
                            None => self.ignored_calls += 1,
                        },
                        _ => self.ignored_calls += 1,
                    }
                }
            }
        }
    }

    /// Moves SLM tokens whose text the parser has decided into the LLM view: whole tokens
    /// untouched by tags as ids, cut tokens as their remaining text. With `flush`, empty
    /// tokens still waiting for a neighbour are placed too.
    fn place_decided_tokens(&mut self, flush: bool) {
        let Some(tags) = self.tags.as_mut() else {
            return;
        };
        let decided = tags.parser.decided();
        while let Some(&(index, start)) = tags.undecided.front() {
            let text = &self.texts[index];
            let end = start + text.len();
            if end > decided {
                break;
            }
            tags.undecided.pop_front();
            if text.is_empty() {
                tags.glue.push(index);
                continue;
            }
            while tags.removed.front().is_some_and(|&(_, e)| e <= start) {
                tags.removed.pop_front();
            }
            let (mut kept, mut cut, mut at) = (String::new(), false, start);
            for &(rs, re) in tags.removed.iter().take_while(|&&(rs, _)| rs < end) {
                cut = true;
                if rs > at {
                    kept.push_str(&text[at - start..rs - start]);
                }
                at = at.max(re);
            }
            if at < end {
                kept.push_str(&text[at - start..]);
            }
            if cut {
                // The glued tokens' bytes are inside this token's text, which is now `kept`.
                tags.glue.clear();
                if !kept.is_empty() {
                    self.llm_view.push(ViewPiece::Text { text: kept });
                }
            } else {
                for g in tags.glue.drain(..) {
                    self.llm_view.push(ViewPiece::Token {
                        id: self.tokens[g],
                        text: String::new(),
                        source: Source::Slm,
                    });
                }
                self.llm_view.push(ViewPiece::Token {
                    id: self.tokens[index],
                    text: text.clone(),
                    source: Source::Slm,
                });
            }
        }
        if flush {
            for g in tags.glue.drain(..) {
                self.llm_view.push(ViewPiece::Token {
                    id: self.tokens[g],
                    text: String::new(),
                    source: Source::Slm,
                });
            }
        }
    }

    /// Decides everything the parser holds back (the stream is interrupted or over).
    fn flush_tags(&mut self) {
        if let Some(tags) = self.tags.as_mut() {
            let events = tags.parser.finish();
            self.apply_tag_events(events, None);
            self.place_decided_tokens(true);
        }
    }

    fn set_call_done(&mut self, eos_ends: bool) {
        if let Phase::InCall { done, llm_eos, .. } = &mut self.phase {
            *done = true;
            *llm_eos = eos_ends;
        }
    }

    fn close_call(&mut self, action: &'static str, error: Option<String>) -> Result<ServedCall> {
        let Phase::InCall {
            cursor_before,
            first_call,
            llm_eos,
            ..
        } = self.phase
        else {
            return Err(RelayError::WrongPhase {
                action,
                phase: self.phase.name(),
            });
        };
        let call = self.calls.last_mut().expect("a call is in progress");
        if let Some(error) = error {
            call.llm_error = Some(error);
            self.llm_cursor = cursor_before;
            self.llm_called = !first_call;
        }
        let served = call.at..call.at + call.served;
        self.policy.on_call_end();
        let ends = if llm_eos {
            Some(StopReason::LlmEos)
        } else if self.remaining_tokens() == 0 {
            Some(StopReason::TokenBudget)
        } else {
            None
        };
        match ends {
            Some(reason) => self.finish(reason),
            None => self.phase = Phase::Slm,
        }
        Ok(ServedCall {
            tokens: self.tokens[served.clone()].to_vec(),
            text: self.texts[served].concat(),
            ends_response: ends.is_some(),
        })
    }

    fn finish(&mut self, reason: StopReason) {
        self.flush_tags();
        self.phase = Phase::Done(reason);
    }
}
