//! The relay loop: one response decoded by two engines together.
//!
//! The rules live in `relay_core::RelaySession`; this module only drives two [`Engine`]s
//! through it. Each request owns one SLM sequence and one LLM sequence, each with its own KV
//! cache. At a call the LLM prefills only the LLM-view delta since its previous call (tags
//! removed), decodes, and its served tokens are prefilled into the SLM's sequence: nothing is
//! ever re-prefilled from the start.
//!
//! LLM calls run on a worker thread that hands tokens back one at a time, so a failing or
//! hanging LLM costs the request at most the call timeout: failures before the first token
//! are retried with backoff; after that (or once retries run out) the SLM goes on alone and
//! the trace records the error. A request never dies because the LLM did.
//!
//! With [`RelayPair::llm_read_ahead`] set, the LLM also reads what the SLM writes while it
//! writes: a background prefill of each run of final tokens, so that a call finds its context
//! already in the LLM's cache. That hides the LLM's reading where the LLM has hardware of its
//! own (a GPU, another server); on CPU cores the two models share, it only competes with the
//! SLM, so it is off by default.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use relay_core::{
    Action, CallProgress, LlmDelta, LlmToken, RelayConfig, RelaySession, RelayTrace, SlmOutcome,
    SlmToken, Source, StopReason, ViewPiece,
};

use crate::engine::{Engine, SeqId};
use crate::error::{EngineError, Result};
use crate::sampling::{LogitStats, Sampler, SamplingParams};
use crate::stream::TokenStreamDecoder;
use crate::tokenizer::Tokenizer;

/// The two models of a relay, with their tokenizers.
#[derive(Clone)]
pub struct RelayPair {
    pub slm: Arc<dyn Engine>,
    pub llm: Arc<dyn Engine>,
    pub slm_tokenizer: Arc<Tokenizer>,
    /// The LLM's own tokenizer when it differs from the SLM's (then the two bridge by text);
    /// `None` when they share one, and token ids pass straight through.
    pub llm_tokenizer: Option<Arc<Tokenizer>>,
    /// Read ahead: once this many final tokens wait unread, the LLM prefills them in the
    /// background while the SLM goes on (0 = off; needs a shared tokenizer). See the module docs.
    pub llm_read_ahead: usize,
}

impl RelayPair {
    fn llm_tok(&self) -> &Tokenizer {
        self.llm_tokenizer.as_deref().unwrap_or(&self.slm_tokenizer)
    }

    fn shared_tokenizer(&self) -> bool {
        self.llm_tokenizer.is_none()
    }
}

/// How hard to try the LLM before the SLM goes on alone.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LlmRetry {
    /// Tries per call (1 = no retry).
    pub attempts: u32,
    /// Wait before the first retry; doubles each time.
    pub backoff: Duration,
    /// Longest wait for the LLM's next token (the first includes its prefill).
    pub token_timeout: Duration,
}

impl Default for LlmRetry {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(100),
            token_timeout: Duration::from_secs(60),
        }
    }
}

/// One relay request, validated: prompts already rendered and tokenized.
#[derive(Debug, Clone)]
pub struct RelayRequest {
    /// The prompt in the SLM's tokens (chat template applied).
    pub slm_prompt: Vec<u32>,
    /// The same prompt in the LLM's tokens (equal to `slm_prompt` with a shared tokenizer).
    pub llm_prompt: Vec<u32>,
    pub config: RelayConfig,
    /// Sampling for both models; the LLM's calls use seeds derived from `seed`.
    pub sampling: SamplingParams,
    pub retry: LlmRetry,
    /// Set from outside to stop the request (a client that went away).
    pub cancel: Option<Arc<AtomicBool>>,
}

/// Something the caller may stream while the response is written.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayEvent {
    /// New response text and which model wrote it.
    Text { text: String, source: Source },
    /// A call starts at this response position and may serve up to `max_tokens`.
    CallStart { at: usize, max_tokens: usize },
    /// A call ended; `error` is set when the LLM failed and the SLM goes on alone.
    CallEnd {
        served: usize,
        error: Option<String>,
    },
}

/// A finished relay response.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayOutput {
    /// The response as written (SLM view: call tags included).
    pub text: String,
    /// Response token ids (LLM ids at LLM positions when the tokenizers differ).
    pub tokens: Vec<u32>,
    /// Who wrote each token.
    pub sources: Vec<Source>,
    /// The SLM's log-probability of each token it wrote (`None` at LLM positions): what an
    /// RL trainer needs for its importance ratios.
    pub slm_logprobs: Vec<Option<f32>>,
    /// For each served call, the tokens the LLM's context held once the call's prefill was
    /// done: what re-sending the whole context at every call would have prefilled.
    pub llm_context_at_calls: Vec<usize>,
    /// Tokens the LLM read ahead, in the background (part of the trace's LLM prefill).
    pub llm_read_ahead_tokens: usize,
    pub trace: RelayTrace,
}

/// Messages from the LLM worker to the driver.
enum FromLlm {
    Token {
        id: u32,
    },
    /// The next message comes after a one-shot continuation of up to this many tokens: the
    /// driver waits the per-token timeout plus the remote engine's per-token allowance each.
    Continuing(usize),
    Failed(String),
}

/// Replies from the driver to the LLM worker after each token.
enum ToLlm {
    Step,
    Stop,
}

/// The LLM side of one request: its sequence and what its cache holds.
struct LlmSide {
    seq: Option<SeqId>,
    /// Tokens in the LLM cache that are known good (restored after a failed call).
    synced_len: usize,
    /// An earlier call hung: the worker may still own the sequence; no more calls.
    unavailable: Option<String>,
    /// Context length after each successful call's prefill.
    context_at_calls: Vec<usize>,
    ahead: ReadAhead,
}

/// What the LLM read ahead of the next call.
#[derive(Default)]
struct ReadAhead {
    /// Leading pieces of the session's unread LLM view that the LLM cache already holds.
    pieces: usize,
    /// The read in flight, if any.
    inflight: Option<Read>,
    /// Tokens read ahead so far.
    tokens: usize,
    /// A read failed: no more for this request (the next call prefills what is missing).
    off: bool,
}

struct Read {
    thread: JoinHandle<Result<()>>,
    pieces: usize,
    tokens: usize,
}

/// Decodes one response with the SLM and the LLM together.
pub fn relay(
    pair: &RelayPair,
    request: &RelayRequest,
    mut on_event: impl FnMut(RelayEvent),
) -> Result<RelayOutput> {
    if request.slm_prompt.is_empty() {
        return Err(EngineError::InvalidInput("the prompt is empty".into()));
    }
    let mut session = RelaySession::from_config(&request.config)?;
    let slm = pair.slm.as_ref();
    let slm_seq = slm.create_sequence()?;
    let mut llm = LlmSide {
        seq: None,
        synced_len: 0,
        unavailable: None,
        context_at_calls: Vec::new(),
        ahead: ReadAhead::default(),
    };
    let result = drive(
        pair,
        request,
        &mut session,
        slm_seq,
        &mut llm,
        &mut on_event,
    );
    let _ = slm.free(slm_seq);
    finish_read_ahead(&mut session, &mut llm);
    if llm.unavailable.is_none() {
        if let Some(seq) = llm.seq {
            let _ = pair.llm.free(seq);
        }
    }
    let (slm_logprobs, decoder_tail) = result?;
    let mut text = session.text();
    text.push_str(&decoder_tail);
    Ok(RelayOutput {
        text,
        tokens: session.tokens().to_vec(),
        sources: session.sources().to_vec(),
        slm_logprobs,
        llm_context_at_calls: llm.context_at_calls,
        llm_read_ahead_tokens: llm.ahead.tokens,
        trace: session.trace(),
    })
}

fn cancelled(request: &RelayRequest) -> bool {
    request
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(Ordering::Relaxed))
}

/// The loop proper; returns the SLM log-probs and any text the detokenizer still held.
fn drive(
    pair: &RelayPair,
    request: &RelayRequest,
    session: &mut RelaySession,
    slm_seq: SeqId,
    llm: &mut LlmSide,
    on_event: &mut dyn FnMut(RelayEvent),
) -> Result<(Vec<Option<f32>>, String)> {
    let slm = pair.slm.as_ref();
    let slm_ctx = slm.info().context_length;
    let mut sampler = Sampler::new(request.sampling.clone());
    let mut decoder = TokenStreamDecoder::new(&pair.slm_tokenizer);
    let mut slm_logprobs: Vec<Option<f32>> = Vec::new();

    let t = Instant::now();
    let mut logits = slm.prefill(slm_seq, &request.slm_prompt)?;
    session.record_time(Source::Slm, t.elapsed());
    session.record_prefill(Source::Slm, request.slm_prompt.len());
    let mut slm_len = request.slm_prompt.len();

    loop {
        if cancelled(request) {
            session.stop(StopReason::Cancelled);
        }
        match session.next_action() {
            Action::Stop(_) => break,
            Action::Slm => {
                if slm_len + 1 > slm_ctx {
                    session.stop(StopReason::ContextFull);
                    continue;
                }
                // One set of statistics over the vocabulary for the greedy token, the confidence
                // signal and the log-prob.
                let stats = LogitStats::new(&logits);
                let id = sampler.sample_with(&logits, &stats);
                let p1 = stats.top1_prob(&logits);
                let logprob = stats.logprob(&logits, id);
                let eos = pair.slm_tokenizer.is_eos(id) || slm.info().eos_token_ids.contains(&id);
                // The detokenizer must not swallow a token the policy drops: decode on a copy.
                // An end-of-sequence token is part of the response but writes no text.
                let mut trial = decoder.clone();
                let text = if eos { String::new() } else { trial.push(id)? };
                let outcome = session.push_slm_token(SlmToken {
                    id,
                    text: &text,
                    top1_prob: p1,
                    eos,
                })?;
                if outcome == SlmOutcome::Dropped {
                    continue;
                }
                decoder = trial;
                slm_logprobs.push(logprob);
                if !text.is_empty() {
                    on_event(RelayEvent::Text {
                        text,
                        source: Source::Slm,
                    });
                }
                match session.next_action() {
                    Action::Stop(_) => break, // nothing will read the SLM's next logits
                    // The LLM reads in the background while the SLM steps.
                    Action::Slm => read_ahead(pair, request, session, llm),
                    Action::Llm { .. } => {}
                }
                let t = Instant::now();
                logits = slm
                    .step(&[(slm_seq, id)])?
                    .pop()
                    .ok_or_else(|| engine_bug("step returned nothing"))?;
                session.record_time(Source::Slm, t.elapsed());
                slm_len += 1;
            }
            Action::Llm { .. } => {
                let t = Instant::now();
                finish_read_ahead(session, llm);
                session.record_time(Source::Llm, t.elapsed());
                let served = run_call(
                    pair,
                    request,
                    session,
                    llm,
                    &mut decoder,
                    &mut slm_logprobs,
                    on_event,
                )?;
                if served.is_empty() || matches!(session.next_action(), Action::Stop(_)) {
                    continue;
                }
                if slm_len + served.len() > slm_ctx {
                    session.stop(StopReason::ContextFull);
                    continue;
                }
                let t = Instant::now();
                logits = slm.prefill(slm_seq, &served)?;
                session.record_time(Source::Slm, t.elapsed());
                session.record_prefill(Source::Slm, served.len());
                slm_len += served.len();
            }
        }
    }
    Ok((slm_logprobs, decoder.finish()))
}

fn engine_bug(what: &str) -> EngineError {
    EngineError::Internal(format!("engine contract broken: {what}"))
}

/// Token ids for the LLM from a delta: whole tokens pass as ids where the LLM can read them,
/// and each run of other pieces is tokenized as text.
fn delta_ids(pair: &RelayPair, delta: &LlmDelta) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, ids: &mut Vec<u32>| -> Result<()> {
        if !text.is_empty() {
            ids.extend(pair.llm_tok().encode(text, false)?);
            text.clear();
        }
        Ok(())
    };
    for piece in &delta.pieces {
        match piece {
            ViewPiece::Token { id, source, .. }
                if pair.shared_tokenizer() || *source == Source::Llm =>
            {
                flush(&mut text, &mut ids)?;
                ids.push(*id);
            }
            other => text.push_str(other.text()),
        }
    }
    flush(&mut text, &mut ids)?;
    Ok(ids)
}

/// Runs one call: prefill the delta into the LLM, decode until the session says done.
/// Returns the served tokens as the SLM must prefill them (SLM ids).
fn run_call(
    pair: &RelayPair,
    request: &RelayRequest,
    session: &mut RelaySession,
    llm: &mut LlmSide,
    decoder: &mut TokenStreamDecoder,
    slm_logprobs: &mut Vec<Option<f32>>,
    on_event: &mut dyn FnMut(RelayEvent),
) -> Result<Vec<u32>> {
    let mut start = session.begin_call()?;
    // What the LLM read ahead is in its cache already; should the call fail, the session
    // hands those pieces out again, and they are still in the cache.
    let read = std::mem::take(&mut llm.ahead.pieces).min(start.delta.pieces.len());
    start.delta.pieces.drain(..read);
    let at = session.tokens().len();
    on_event(RelayEvent::CallStart {
        at,
        max_tokens: start.max_tokens,
    });
    let call_index = session.trace().calls.len() as u64;
    let started = Instant::now();

    let outcome = serve_call(
        pair,
        request,
        session,
        llm,
        &start.delta,
        start.max_tokens,
        call_index,
        decoder,
        on_event,
    );
    session.record_time(Source::Llm, started.elapsed());
    let served = match outcome {
        Ok(()) => session.end_call()?,
        Err(error) => {
            tracing::warn!(%error, "LLM call failed; the SLM goes on alone");
            llm.ahead.pieces = read;
            let served = session.fail_call(error.clone())?;
            on_event(RelayEvent::CallEnd {
                served: served.tokens.len(),
                error: Some(error),
            });
            slm_logprobs.extend(std::iter::repeat_n(None, served.tokens.len()));
            return slm_ids_for(pair, &served.tokens, &served.text);
        }
    };
    on_event(RelayEvent::CallEnd {
        served: served.tokens.len(),
        error: None,
    });
    slm_logprobs.extend(std::iter::repeat_n(None, served.tokens.len()));
    if served.ends_response {
        return Ok(Vec::new());
    }
    slm_ids_for(pair, &served.tokens, &served.text)
}

fn slm_ids_for(pair: &RelayPair, tokens: &[u32], text: &str) -> Result<Vec<u32>> {
    if pair.shared_tokenizer() || tokens.is_empty() {
        Ok(tokens.to_vec())
    } else {
        pair.slm_tokenizer.encode(text, false)
    }
}

/// Serves the call with retries; `Err` carries the error text for the trace. Tokens the LLM
/// wrote are pushed into the session as they come.
#[allow(clippy::too_many_arguments)]
fn serve_call(
    pair: &RelayPair,
    request: &RelayRequest,
    session: &mut RelaySession,
    llm: &mut LlmSide,
    delta: &LlmDelta,
    max_new: usize,
    call_index: u64,
    decoder: &mut TokenStreamDecoder,
    on_event: &mut dyn FnMut(RelayEvent),
) -> std::result::Result<(), String> {
    if let Some(why) = &llm.unavailable {
        return Err(why.clone());
    }
    // The first call reads the prompt too, unless a read ahead of it already did.
    let first_call = delta.first_call && llm.synced_len == 0;
    let mut prefill = Vec::new();
    if first_call {
        prefill.extend_from_slice(&request.llm_prompt);
    }
    prefill.extend(delta_ids(pair, delta).map_err(|e| e.to_string())?);

    let attempts = request.retry.attempts.max(1);
    let mut backoff = request.retry.backoff;
    let mut last_error = String::new();
    for attempt in 0..attempts {
        if attempt > 0 {
            std::thread::sleep(backoff);
            backoff *= 2;
        }
        // Bring the LLM cache back to what is known good before (re)trying.
        let seq = match prepare_llm_seq(pair, llm, first_call) {
            Ok(seq) => seq,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        match attempt_call(
            pair, request, session, llm, seq, &prefill, max_new, call_index, attempt, decoder,
            on_event,
        ) {
            Ok(()) => return Ok(()),
            Err(CallFailure { error, retryable }) => {
                last_error = error;
                if !retryable {
                    break;
                }
            }
        }
    }
    Err(format!(
        "LLM failed after {attempts} attempt(s): {last_error}"
    ))
}

/// Starts a background read of the final tokens the LLM has not read, when at least
/// [`RelayPair::llm_read_ahead`] of them wait and no read is in flight. The last unread piece
/// is left for the call, whose own prefill gives the logits of the LLM's first token; a read
/// stops at a piece that is not a whole token, so what the call tokenizes stays whole.
fn read_ahead(
    pair: &RelayPair,
    request: &RelayRequest,
    session: &mut RelaySession,
    llm: &mut LlmSide,
) {
    let chunk = pair.llm_read_ahead;
    if chunk == 0 || !pair.shared_tokenizer() || llm.unavailable.is_some() {
        return;
    }
    // No call can read it: the budget is spent (a rest-of-response call is exempt, but those
    // policies call before the SLM writes much) or the policy never calls.
    if !session.may_call() {
        return;
    }
    if llm
        .ahead
        .inflight
        .as_ref()
        .is_some_and(|r| !r.thread.is_finished())
    {
        return;
    }
    finish_read_ahead(session, llm);
    if llm.ahead.off {
        return;
    }
    let unread = session.llm_unread();
    let ready = unread
        .get(llm.ahead.pieces..unread.len().saturating_sub(1))
        .unwrap_or_default();
    let mut ids: Vec<u32> = ready
        .iter()
        .map_while(|p| match p {
            ViewPiece::Token { id, .. } => Some(*id),
            ViewPiece::Text { .. } => None,
        })
        .collect();
    if ids.len() < chunk {
        return;
    }
    let pieces = ids.len();
    // Nothing in the cache yet: the prompt goes first.
    let with_prompt = llm.synced_len == 0;
    let seq = match prepare_llm_seq(pair, llm, with_prompt) {
        Ok(seq) => seq,
        Err(error) => {
            tracing::debug!(%error, "LLM read-ahead off for this request");
            llm.ahead.off = true;
            return;
        }
    };
    if with_prompt {
        ids.splice(0..0, request.llm_prompt.iter().copied());
    }
    let tokens = ids.len();
    let engine = pair.llm.clone();
    match std::thread::Builder::new()
        .name("relay-llm-read-ahead".into())
        .spawn(move || engine.prefill(seq, &ids).map(drop))
    {
        Ok(thread) => {
            llm.ahead.inflight = Some(Read {
                thread,
                pieces,
                tokens,
            })
        }
        Err(error) => {
            tracing::debug!(%error, "cannot start the LLM read-ahead");
            llm.ahead.off = true;
        }
    }
}

/// Waits for the read in flight, if any, and books it: on success its tokens are known good
/// in the LLM cache; on failure the next call truncates back to what is.
fn finish_read_ahead(session: &mut RelaySession, llm: &mut LlmSide) {
    let Some(read) = llm.ahead.inflight.take() else {
        return;
    };
    match read.thread.join() {
        Ok(Ok(())) => {
            llm.synced_len += read.tokens;
            llm.ahead.pieces += read.pieces;
            llm.ahead.tokens += read.tokens;
            session.record_prefill(Source::Llm, read.tokens);
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "LLM read-ahead failed; the next call reads the context");
            llm.ahead.off = true;
        }
        Err(_) => {
            tracing::warn!("the LLM read-ahead thread panicked");
            llm.ahead.off = true;
        }
    }
}

fn prepare_llm_seq(pair: &RelayPair, llm: &mut LlmSide, first_call: bool) -> Result<SeqId> {
    if first_call {
        llm.synced_len = 0;
    }
    match llm.seq {
        Some(seq) => {
            if pair.llm.seq_len(seq)? != llm.synced_len {
                pair.llm.truncate(seq, llm.synced_len)?;
            }
            Ok(seq)
        }
        None => {
            let seq = pair.llm.create_sequence()?;
            llm.seq = Some(seq);
            llm.synced_len = 0;
            Ok(seq)
        }
    }
}

struct CallFailure {
    error: String,
    /// No token reached the session yet, so the call can be tried again from scratch.
    retryable: bool,
}

/// One try at a call. The LLM decodes on a worker thread and hands each token over; the
/// session decides after each whether the LLM goes on.
#[allow(clippy::too_many_arguments)]
fn attempt_call(
    pair: &RelayPair,
    request: &RelayRequest,
    session: &mut RelaySession,
    llm: &mut LlmSide,
    seq: SeqId,
    prefill: &[u32],
    max_new: usize,
    call_index: u64,
    attempt: u32,
    decoder: &mut TokenStreamDecoder,
    on_event: &mut dyn FnMut(RelayEvent),
) -> std::result::Result<(), CallFailure> {
    let (to_driver, from_llm) = mpsc::channel::<FromLlm>();
    let (to_llm, from_driver) = mpsc::channel::<ToLlm>();
    let engine = pair.llm.clone();
    let prefill_ids = prefill.to_vec();
    let mut sampling = request.sampling.clone();
    sampling.seed = sampling
        .seed
        .wrapping_add((call_index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(attempt as u64);
    let context = engine.info().context_length;
    let base_len = llm.synced_len;
    std::thread::Builder::new()
        .name("relay-llm-call".into())
        .spawn(move || {
            llm_worker(
                engine,
                seq,
                prefill_ids,
                sampling,
                context,
                base_len,
                max_new,
                to_driver,
                from_driver,
            )
        })
        .map_err(|e| CallFailure {
            error: format!("cannot start the LLM worker: {e}"),
            retryable: false,
        })?;

    let llm_tok = pair.llm_tok();
    let mut llm_decoder = (!pair.shared_tokenizer()).then(|| TokenStreamDecoder::new(llm_tok));
    let mut fed = 0usize; // tokens stepped into the LLM cache during this call
    let mut pushed = 0usize;
    let mut wait = request.retry.token_timeout;
    loop {
        let message = match from_llm.recv_timeout(wait) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                // The worker may still hold the sequence: never touch it again.
                let why = format!("LLM timed out after {wait:?} waiting for a token");
                llm.unavailable = Some(why.clone());
                return Err(CallFailure {
                    error: why,
                    retryable: false,
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(CallFailure {
                    error: "LLM worker ended unexpectedly".into(),
                    retryable: pushed == 0,
                });
            }
        };
        wait = request.retry.token_timeout;
        let id = match message {
            FromLlm::Token { id } => id,
            FromLlm::Continuing(n) => {
                wait += crate::remote::PER_TOKEN_ALLOWANCE * n.min(1 << 20) as u32;
                continue;
            }
            FromLlm::Failed(error) => {
                return Err(CallFailure {
                    error,
                    retryable: pushed == 0,
                })
            }
        };
        let eos = llm_tok.is_eos(id) || pair.llm.info().eos_token_ids.contains(&id);
        let text = match (eos, llm_decoder.as_mut()) {
            (true, _) => Ok(String::new()),
            (false, Some(d)) => d.push(id),
            (false, None) => decoder.push(id),
        }
        .map_err(|e| CallFailure {
            error: e.to_string(),
            retryable: pushed == 0,
        })?;
        let progress = session
            .push_llm_token(LlmToken {
                id,
                text: &text,
                eos,
            })
            .map_err(|e| CallFailure {
                error: e.to_string(),
                retryable: false,
            })?;
        pushed += 1;
        if !text.is_empty() {
            on_event(RelayEvent::Text {
                text,
                source: Source::Llm,
            });
        }
        match progress {
            CallProgress::More => {
                fed += 1;
                if to_llm.send(ToLlm::Step).is_err() {
                    return Err(CallFailure {
                        error: "LLM worker ended unexpectedly".into(),
                        retryable: false,
                    });
                }
            }
            CallProgress::Done => {
                let _ = to_llm.send(ToLlm::Stop);
                break;
            }
        }
    }
    // The cache now holds the prefill and every token fed; the last (Done) token is not in
    // it: the next call's delta starts with it.
    llm.synced_len = base_len + prefill.len() + fed;
    llm.context_at_calls.push(base_len + prefill.len());
    session.record_prefill(Source::Llm, prefill.len());
    Ok(())
}

/// The worker: prefill, then sample a token, hand it over, and step it only when told to.
#[allow(clippy::too_many_arguments)]
fn llm_worker(
    engine: Arc<dyn Engine>,
    seq: SeqId,
    prefill: Vec<u32>,
    sampling: SamplingParams,
    context: usize,
    base_len: usize,
    max_new: usize,
    to_driver: mpsc::Sender<FromLlm>,
    from_driver: mpsc::Receiver<ToLlm>,
) {
    let fail = |e: String| {
        let _ = to_driver.send(FromLlm::Failed(e));
    };
    let mut len = base_len + prefill.len();
    if prefill.is_empty() {
        return fail("nothing to prefill for the LLM".into());
    }
    if len + 1 > context {
        return fail(format!("LLM context full ({len} of {context} tokens)"));
    }
    // Greedy calls on an engine that continues in one go (a remote server): ask for the whole
    // call at once and hand the tokens over one by one; what the session does not take is
    // cut off the sequence before the next call.
    if sampling.temperature <= 0.0 && engine.continues_in_one_go() {
        let room = context.saturating_sub(len);
        let _ = to_driver.send(FromLlm::Continuing(max_new.min(room)));
        if let Some(first) = engine.generate_greedy(seq, &prefill, max_new.min(room)) {
            let mut batch = match first {
                Ok(ids) => ids,
                Err(e) => return fail(e.to_string()),
            };
            loop {
                for id in batch.drain(..) {
                    if to_driver.send(FromLlm::Token { id }).is_err() {
                        return;
                    }
                    match from_driver.recv() {
                        Ok(ToLlm::Step) => len += 1,
                        Ok(ToLlm::Stop) | Err(_) => return,
                    }
                }
                // The session wants more than was asked for (it never should): continue.
                let room = context.saturating_sub(len);
                if room == 0 {
                    return fail(format!("LLM context full ({len} of {context} tokens)"));
                }
                let _ = to_driver.send(FromLlm::Continuing(max_new.min(room)));
                batch = match engine.generate_greedy(seq, &[], max_new.min(room)) {
                    Some(Ok(ids)) if !ids.is_empty() => ids,
                    Some(Ok(_)) => return fail("the LLM returned no tokens".into()),
                    Some(Err(e)) => return fail(e.to_string()),
                    None => return fail("the LLM stopped offering continuations".into()),
                };
            }
        }
    }
    let mut logits = match engine.prefill(seq, &prefill) {
        Ok(l) => l,
        Err(e) => return fail(e.to_string()),
    };
    let mut sampler = Sampler::new(sampling);
    loop {
        let id = sampler.sample(&logits);
        if to_driver.send(FromLlm::Token { id }).is_err() {
            return; // the driver gave up on us
        }
        match from_driver.recv() {
            Ok(ToLlm::Step) => {}
            Ok(ToLlm::Stop) | Err(_) => return,
        }
        if len + 1 > context {
            return fail(format!("LLM context full ({len} of {context} tokens)"));
        }
        logits = match engine.step(&[(seq, id)]).map(|mut v| v.pop()) {
            Ok(Some(l)) => l,
            Ok(None) => return fail("LLM step returned nothing".into()),
            Err(e) => return fail(e.to_string()),
        };
        len += 1;
    }
}
