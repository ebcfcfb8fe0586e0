//! The OpenAI-compatible endpoints: validation into a [`ValidJob`], then JSON or SSE out.
//! Streamed chunks carry which model wrote them (`source` in the delta); the final chunk and
//! whole responses carry `usage` split per model and the relay trace.
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use relay_core::{PolicyKind, RelayConfig};
use relay_engine::chat::ChatMessage;
use relay_engine::sampling::SamplingParams;
use relay_engine::tokenizer::SpecialTokens;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::admission::GraceOver;
use crate::error::ApiError;
use crate::job::{run_job, ChoiceOutput, JobError, ModelChoice, Piece, ValidJob};
use crate::weights::WeightsVersions;
use crate::AppState;

type Obj = Map<String, Value>;

/// Most choices per request.
const MAX_N: u64 = 8;
/// Most stop strings, as OpenAI allows.
const MAX_STOPS: usize = 4;

/// The served names; `slm` and `llm` say which weights they run (`weights_version`, 0 as
/// started, +1 per weight sync), `relay` both (`weights_versions`).
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let versions = state.served.current().versions;
    let data: Vec<Value> = ModelChoice::ALL
        .iter()
        .map(|m| {
            let mut entry =
                json!({"id": m.name(), "object": "model", "created": 0, "owned_by": "relayllm"});
            match m {
                ModelChoice::Relay => entry["weights_versions"] = json!(versions),
                ModelChoice::Slm => entry["weights_version"] = json!(versions.slm),
                ModelChoice::Llm => entry["weights_version"] = json!(versions.llm),
            }
            entry
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

// ---------------------------------------------------------------- validation at the door

/// The body as a JSON object, or the error to answer (413 for a body over the limit).
pub fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Obj, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("request body too large: {}", e.body_text()))
        } else {
            ApiError::bad_json(e.body_text())
        }
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::bad_json("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_json(format!("invalid JSON body: {e}"))),
    }
}

fn num(obj: &Obj, name: &str, param: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if v.is_finite() && v >= lo && v <= hi {
                Ok(Some(v))
            } else {
                Err(ApiError::invalid(
                    param,
                    format!("{param} must be between {lo} and {hi}, got {v}"),
                ))
            }
        }
        Some(other) => Err(ApiError::invalid(
            param,
            format!("{param} must be a number, got {other}"),
        )),
    }
}

fn int(obj: &Obj, name: &str, param: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= lo && v <= hi => Ok(Some(v)),
            _ => Err(ApiError::invalid(
                param,
                format!("{param} must be an integer from {lo} to {hi}, got {n}"),
            )),
        },
        Some(other) => Err(ApiError::invalid(
            param,
            format!("{param} must be an integer, got {other}"),
        )),
    }
}

fn boolean(obj: &Obj, name: &str, param: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::invalid(
            param,
            format!("{param} must be a boolean, got {other}"),
        )),
    }
}

/// `special_tokens`: how special-token text in a text prompt is tokenized, one of `allowed`
/// (the first is the default). Chats accept only `template`: their content is never parsed.
pub fn special_tokens(obj: &Obj, allowed: &[SpecialTokens]) -> Result<SpecialTokens, ApiError> {
    let names = || {
        allowed
            .iter()
            .map(|m| format!("{:?}", m.name()))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    match obj.get("special_tokens") {
        None | Some(Value::Null) => Ok(allowed[0]),
        Some(Value::String(s)) => {
            allowed
                .iter()
                .copied()
                .find(|m| m.name() == s)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "special_tokens",
                        format!("special_tokens must be {} here, got {s:?}", names()),
                    )
                })
        }
        Some(other) => Err(ApiError::invalid(
            "special_tokens",
            format!("special_tokens must be {}, got {other}", names()),
        )),
    }
}

/// `model`: required, one of the served names.
pub fn model_choice(obj: &Obj, default: Option<ModelChoice>) -> Result<ModelChoice, ApiError> {
    match obj.get("model") {
        Some(Value::String(s)) => ModelChoice::parse(s).ok_or_else(|| ApiError::unknown_model(s)),
        None | Some(Value::Null) => {
            default.ok_or_else(|| ApiError::invalid("model", "model is required"))
        }
        Some(other) => Err(ApiError::invalid(
            "model",
            format!("model must be a string, got {other}"),
        )),
    }
}

/// Sampling and relay settings shared by every generating endpoint.
pub struct Settings {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub config: RelayConfig,
}

pub fn settings(state: &AppState, obj: &Obj) -> Result<Settings, ApiError> {
    let served = state.served.current();
    let ctx = served
        .pair
        .slm
        .info()
        .context_length
        .min(served.pair.llm.info().context_length) as u64;
    let max_tokens = match int(
        obj,
        "max_completion_tokens",
        "max_completion_tokens",
        1,
        ctx,
    )? {
        Some(v) => v,
        None => int(obj, "max_tokens", "max_tokens", 1, ctx)?
            .unwrap_or(state.config.default_max_tokens as u64),
    } as usize;
    let mut sampling = SamplingParams::default();
    if let Some(t) = num(obj, "temperature", "temperature", 0.0, 2.0)? {
        sampling.temperature = t as f32;
    }
    if let Some(p) = num(obj, "top_p", "top_p", 0.0, 1.0)? {
        if p == 0.0 {
            return Err(ApiError::invalid("top_p", "top_p must be greater than 0"));
        }
        sampling.top_p = p as f32;
    }
    if let Some(k) = int(obj, "top_k", "top_k", 0, u32::MAX as u64)? {
        sampling.top_k = k as usize;
    }
    match obj.get("seed") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            sampling.seed = n
                .as_u64()
                .or_else(|| n.as_i64().map(|v| v as u64))
                .ok_or_else(|| ApiError::invalid("seed", "seed must be an integer"))?
        }
        Some(_) => return Err(ApiError::invalid("seed", "seed must be an integer")),
    }
    let mut config = RelayConfig::default();
    config.limits.max_response_tokens = max_tokens;
    config.policy.seed = sampling.seed;
    match obj.get("relay") {
        None | Some(Value::Null) => {}
        Some(Value::Object(r)) => relay_settings(r, &mut config)?,
        Some(_) => return Err(ApiError::invalid("relay", "relay must be an object")),
    }
    Ok(Settings {
        max_tokens,
        sampling,
        config,
    })
}

/// The `relay` object: policy and limits.
fn relay_settings(r: &Obj, c: &mut RelayConfig) -> Result<(), ApiError> {
    const KNOWN: [&str; 10] = [
        "policy",
        "threshold",
        "max_calls",
        "max_call_tokens",
        "call_tokens",
        "cooldown",
        "until_newline",
        "token_probability",
        "query_probability",
        "on_llm_eos",
    ];
    if let Some(k) = r.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            &format!("relay.{k}"),
            format!("unknown relay setting {k:?}; known: {}", KNOWN.join(", ")),
        ));
    }
    match r.get("policy") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            c.policy.kind = s
                .parse::<PolicyKind>()
                .map_err(|e| ApiError::invalid("relay.policy", e.to_string()))?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "relay.policy",
                "relay.policy must be a string",
            ))
        }
    }
    if let Some(v) = num(r, "threshold", "relay.threshold", 0.0, 1.0)? {
        c.policy.threshold = v as f32;
    }
    if let Some(v) = int(r, "max_calls", "relay.max_calls", 0, 1024)? {
        c.limits.max_calls = v as usize;
    }
    if let Some(v) = int(r, "max_call_tokens", "relay.max_call_tokens", 1, 1 << 20)? {
        c.limits.max_call_tokens = v as usize;
    }
    if let Some(v) = int(r, "call_tokens", "relay.call_tokens", 1, 1 << 20)? {
        c.policy.call_tokens = v;
    }
    if let Some(v) = int(r, "cooldown", "relay.cooldown", 0, 1 << 20)? {
        c.policy.cooldown = v as usize;
    }
    if let Some(v) = boolean(r, "until_newline", "relay.until_newline")? {
        c.policy.until_newline = v;
    }
    if let Some(v) = num(r, "token_probability", "relay.token_probability", 0.0, 1.0)? {
        c.policy.token_probability = v;
    }
    if let Some(v) = num(r, "query_probability", "relay.query_probability", 0.0, 1.0)? {
        c.policy.query_probability = v;
    }
    match r.get("on_llm_eos") {
        None | Some(Value::Null) => {}
        Some(v) => {
            c.limits.on_llm_eos = serde_json::from_value(v.clone()).map_err(|e| {
                ApiError::invalid("relay.on_llm_eos", format!("relay.on_llm_eos: {e}"))
            })?
        }
    }
    Ok(())
}

fn stops(obj: &Obj) -> Result<Vec<String>, ApiError> {
    let list = match obj.get("stop") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid("stop", "stop must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "stop must be a string or a list of strings",
            ))
        }
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOPS} stop strings"),
        ));
    }
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

pub fn messages(obj: &Obj) -> Result<Vec<ChatMessage>, ApiError> {
    let list = match obj.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid("messages", "messages must not be empty"))
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages", "messages is required"))
        }
        Some(_) => return Err(ApiError::invalid("messages", "messages must be a list")),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let m = m
                .as_object()
                .ok_or_else(|| ApiError::invalid(&param, "each message must be an object"))?;
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid(&format!("{param}.role"), "role is required"))?;
            if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
                return Err(ApiError::invalid(
                    &format!("{param}.role"),
                    format!("unknown role {role:?}"),
                ));
            }
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => Ok(t.to_string()),
                            _ => Err(ApiError::invalid(
                                &format!("{param}.content"),
                                "only text content parts are supported",
                            )),
                        }
                    })
                    .collect::<Result<String, _>>()?,
                None | Some(Value::Null) => String::new(),
                Some(_) => {
                    return Err(ApiError::invalid(
                        &format!("{param}.content"),
                        "content must be a string or a list of parts",
                    ))
                }
            };
            let role = if role == "developer" { "system" } else { role };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// Prompt ids checked against the vocabulary and the context.
pub fn check_prompt(
    state: &AppState,
    ids: &[u32],
    param: &str,
    max_tokens: usize,
) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid(param, "the prompt is empty"));
    }
    let served = state.served.current();
    let vocab = served
        .pair
        .slm
        .info()
        .vocab_size
        .min(served.pair.llm.info().vocab_size);
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            param,
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        ));
    }
    let ctx = served
        .pair
        .slm
        .info()
        .context_length
        .min(served.pair.llm.info().context_length);
    if ids.len() + max_tokens > ctx {
        return Err(ApiError::invalid(
            param,
            format!(
                "prompt ({} tokens) + max_tokens ({max_tokens}) exceed the context length {ctx}",
                ids.len()
            ),
        ));
    }
    Ok(())
}

fn common_job(
    state: &AppState,
    obj: &Obj,
    model: ModelChoice,
    prompts: (Vec<u32>, Vec<u32>),
    param: &str,
) -> Result<(ValidJob, bool), ApiError> {
    let s = settings(state, obj)?;
    check_prompt(state, &prompts.0, param, s.max_tokens)?;
    let n = int(obj, "n", "n", 1, MAX_N)?.unwrap_or(1) as usize;
    let stream = boolean(obj, "stream", "stream")?.unwrap_or(false);
    let job = ValidJob {
        model,
        slm_prompt: prompts.0,
        llm_prompt: prompts.1,
        config: s.config,
        sampling: s.sampling,
        stop: stops(obj)?,
        n,
    };
    Ok((job, stream))
}

fn valid_chat(state: &AppState, obj: &Obj) -> Result<(ValidJob, bool), ApiError> {
    let model = model_choice(obj, None)?;
    let msgs = messages(obj)?;
    special_tokens(obj, &[SpecialTokens::Template])?;
    let served = state.served.current();
    if served.models.slm.template.is_none() || served.models.llm.template.is_none() {
        return Err(ApiError::bad_json(
            "the served models have no chat template; use /v1/completions",
        ));
    }
    let prompts = served
        .models
        .prompt_ids(&msgs, true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    common_job(state, obj, model, prompts, "messages")
}

fn valid_completion(state: &AppState, obj: &Obj) -> Result<(ValidJob, bool), ApiError> {
    let model = model_choice(obj, None)?;
    let mode = special_tokens(obj, &[SpecialTokens::Parse, SpecialTokens::Plain])?;
    let served = state.served.current();
    let text_prompt = |p: &str| {
        served
            .models
            .text_prompt_ids(p, mode)
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))
    };
    let prompts = match obj.get("prompt") {
        Some(Value::String(s)) => text_prompt(s)?,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            text_prompt(a[0].as_str().unwrap_or_default())?
        }
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
            let ids: Vec<u32> = a
                .iter()
                .map(|v| v.as_u64().unwrap_or(u64::MAX).min(u32::MAX as u64) as u32)
                .collect();
            if served.pair.llm_tokenizer.is_some() {
                return Err(ApiError::invalid(
                    "prompt",
                    "token-id prompts need models that share a tokenizer",
                ));
            }
            (ids.clone(), ids)
        }
        None | Some(Value::Null) => return Err(ApiError::invalid("prompt", "prompt is required")),
        Some(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "prompt must be a string, a list of one string, or a list of token ids",
            ))
        }
    };
    common_job(state, obj, model, prompts, "prompt")
}

// ---------------------------------------------------------------- running a job

/// Messages from the job's thread.
pub enum JobMsg {
    Piece(Piece),
    Done(Result<Vec<ChoiceOutput>, ApiError>),
}

/// A running job: its messages, and the cancel flag that is set when this is dropped (the
/// client went away) or the request timeout fires.
pub struct Running {
    /// The weights the job runs on (those in service when it started).
    pub versions: WeightsVersions,
    rx: mpsc::UnboundedReceiver<JobMsg>,
    grace: GraceOver,
    _cancel: CancelOnDrop,
}

impl Running {
    /// The job's next message; once a shutdown's grace is over, a final 503 instead (the job
    /// itself is cancelled when this is dropped), so that a stream ends with a last event and
    /// `[DONE]` even while the job is stuck in an engine call.
    pub async fn next(&mut self) -> Option<JobMsg> {
        let over = || Some(JobMsg::Done(Err(ApiError::shutting_down())));
        if self.grace.is_over() {
            return over();
        }
        tokio::select! {
            msg = self.rx.recv() => msg,
            _ = self.grace.wait() => over(),
        }
    }
}

struct CancelOnDrop {
    cancel: Arc<AtomicBool>,
    timer: tokio::task::JoinHandle<()>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.timer.abort();
    }
}

/// Waits for a slot (or 429s) and starts the job on a blocking thread.
pub async fn start(
    state: &Arc<AppState>,
    job: ValidJob,
    arrived: Instant,
) -> Result<Running, ApiError> {
    let deadline = arrived + state.config.request_timeout;
    let slot = tokio::select! {
        waited = tokio::time::timeout_at(
            deadline.into(),
            state.slots.acquire(&state.metrics.queue_depth),
        ) => match waited {
            Ok(slot) => slot?,
            Err(_) => return Err(ApiError::timeout()),
        },
        _ = state.grace_over.wait() => return Err(ApiError::shutting_down()),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer = {
        let (cancel, timed_out) = (cancel.clone(), timed_out.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            timed_out.store(true, Ordering::Relaxed);
            cancel.store(true, Ordering::Relaxed);
        })
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let st = state.clone();
    let flag = cancel.clone();
    // The job holds this pair to its end, whatever a weight sync swaps in meanwhile.
    let served = state.served.current();
    let versions = served.versions;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        st.metrics.running.fetch_add(1, Ordering::Relaxed);
        let mut first = true;
        let result = run_job(&served.pair, &job, &flag, |piece| {
            if first && matches!(piece, Piece::Text { .. }) {
                first = false;
                st.metrics.first_token(arrived.elapsed().as_secs_f64());
            }
            let _ = tx.send(JobMsg::Piece(piece));
        });
        st.metrics.running.fetch_sub(1, Ordering::Relaxed);
        let result = match result {
            Ok(choices) => {
                for c in &choices {
                    st.metrics.tokens(c.trace());
                }
                st.metrics.request("ok");
                Ok(choices)
            }
            Err(JobError::Cancelled) if timed_out.load(Ordering::Relaxed) => {
                st.metrics.request("timeout");
                Err(ApiError::timeout())
            }
            Err(JobError::Cancelled) => {
                st.metrics.request("cancelled");
                Err(ApiError::internal("cancelled"))
            }
            Err(JobError::Engine(e)) => {
                // The full text (with an upstream's URL) goes to the log; the client gets less.
                tracing::warn!(error = %e, kind = e.label(), "request failed in an engine");
                st.metrics.request("engine_error");
                Err(ApiError::from(e))
            }
        };
        let _ = tx.send(JobMsg::Done(result));
    });
    Ok(Running {
        versions,
        rx,
        grace: state.grace_over.clone(),
        _cancel: CancelOnDrop { cancel, timer },
    })
}

/// Waits for the whole job (the caller's future being dropped cancels it).
pub async fn finish(mut running: Running) -> Result<Vec<ChoiceOutput>, ApiError> {
    while let Some(msg) = running.next().await {
        if let JobMsg::Done(r) = msg {
            return r;
        }
    }
    Err(ApiError::internal("the job ended without a result"))
}

/// Records a request refused before it ran.
pub fn refused(state: &AppState, e: ApiError) -> Response {
    state.metrics.request(e.kind);
    e.into_response()
}

/// Token counts, split per model, and the weights that wrote them.
pub fn usage(job: &ValidJob, choices: &[ChoiceOutput], versions: WeightsVersions) -> Value {
    let (mut slm, mut llm, mut total) = (0, 0, 0);
    for c in choices {
        slm += c.trace().tokens.slm;
        llm += c.trace().tokens.llm;
        total += c.trace().response_tokens;
    }
    let prompt = job.slm_prompt.len();
    json!({"prompt_tokens": prompt, "completion_tokens": total, "total_tokens": prompt + total,
           "slm_tokens": slm, "llm_tokens": llm, "weights_versions": versions})
}

fn segments(c: &ChoiceOutput) -> Value {
    c.segments
        .iter()
        .map(|(t, s)| json!({"text": t, "source": s}))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{prefix}-{:x}{:06x}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------- handlers

/// Runs CPU-bound request work (JSON parsing, tokenizing) on the blocking pool, so a large
/// body never stalls the async runtime's threads; a panic in it is our bug, a 500.
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(ApiError::internal(format!(
            "request validation failed: {e}"
        )))
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(state, body, Kind::Chat).await
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(state, body, Kind::Completion).await
}

async fn respond(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Response {
    let arrived = Instant::now();
    // Parsing and tokenizing a body of megabytes takes a CPU for a second: off the async
    // runtime, whose few threads also serve every other connection and stream.
    let st = state.clone();
    let valid = off_runtime(move || {
        json_object(body).and_then(|obj| match kind {
            Kind::Chat => valid_chat(&st, &obj),
            Kind::Completion => valid_completion(&st, &obj),
        })
    })
    .await;
    let (job, stream) = match valid {
        Ok(v) => v,
        Err(e) => return refused(&state, e),
    };
    let running = match start(&state, job.clone(), arrived).await {
        Ok(r) => r,
        Err(e) => return refused(&state, e),
    };
    let (id, created, model) = (
        request_id(if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        }),
        now(),
        job.model.name(),
    );
    if stream {
        return sse(running, job, id, created, model, kind).into_response();
    }
    let versions = running.versions;
    let choices = match finish(running).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let list: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| match kind {
            Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason, "logprobs": null, "segments": segments(c), "trace": c.trace()}),
            Kind::Completion => json!({"index": i, "text": c.text, "finish_reason": c.finish_reason,
                "logprobs": null, "segments": segments(c), "trace": c.trace()}),
        })
        .collect();
    let object = if kind == Kind::Chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    Json(
        json!({"id": id, "object": object, "created": created, "model": model, "choices": list,
        "usage": usage(&job, &choices, versions), "trace": choices[0].trace()}),
    )
    .into_response()
}

/// The job's pieces as OpenAI SSE chunks; `data: [DONE]` last. Dropping the stream (the
/// client went away) drops `running`, which cancels the job.
fn sse(
    running: Running,
    job: ValidJob,
    id: String,
    created: u64,
    model: &'static str,
    kind: Kind,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choices: Value, extra: Option<(Value, Value)>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
        if let Some((usage, trace)) = extra {
            v["usage"] = usage;
            v["trace"] = trace;
        }
        v.to_string()
    };
    let choice = move |index: usize, delta: Value, finish: Value| match kind {
        Kind::Chat => {
            json!({"index": index, "delta": delta, "finish_reason": finish, "logprobs": null})
        }
        Kind::Completion => {
            let mut c = json!({"index": index, "text": delta.get("content").cloned().unwrap_or(json!("")),
                "finish_reason": finish, "logprobs": null});
            for (k, v) in delta.as_object().into_iter().flatten() {
                if k != "content" && k != "role" {
                    c[k] = v.clone();
                }
            }
            c
        }
    };
    let mut opening: Vec<String> = Vec::new();
    if kind == Kind::Chat {
        for i in 0..job.n {
            opening.push(chunk(
                json!([choice(
                    i,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null
                )]),
                None,
            ));
        }
    }
    let events = stream::unfold(Some(running), move |state| {
        let chunk = chunk.clone();
        let job = job.clone();
        async move {
            let mut running = state?;
            let out: Vec<String> = match running.next().await {
                Some(JobMsg::Piece(Piece::Text {
                    choice: i,
                    text,
                    source,
                })) => {
                    vec![chunk(
                        json!([choice(
                            i,
                            json!({"content": text, "source": source}),
                            Value::Null
                        )]),
                        None,
                    )]
                }
                Some(JobMsg::Piece(Piece::CallStart {
                    choice: i,
                    at,
                    max_tokens,
                })) => {
                    vec![chunk(
                        json!([choice(
                            i,
                            json!({"relay_call": {"at": at, "max_tokens": max_tokens}}),
                            Value::Null
                        )]),
                        None,
                    )]
                }
                Some(JobMsg::Piece(Piece::CallEnd {
                    choice: i,
                    served,
                    error,
                })) => {
                    vec![chunk(
                        json!([choice(
                            i,
                            json!({"relay_call_end": {"served": served, "error": error}}),
                            Value::Null
                        )]),
                        None,
                    )]
                }
                Some(JobMsg::Done(Ok(choices))) => {
                    let last = choices.len() - 1;
                    let mut out: Vec<String> = choices
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let mut ch = choice(i, json!({}), json!(c.finish_reason));
                            ch["trace"] = serde_json::to_value(c.trace()).unwrap_or(Value::Null);
                            let extra = (i == last).then(|| {
                                (
                                    usage(&job, &choices, running.versions),
                                    serde_json::to_value(choices[0].trace()).unwrap_or(Value::Null),
                                )
                            });
                            chunk(json!([ch]), extra)
                        })
                        .collect();
                    out.push("[DONE]".into());
                    return Some((out, None));
                }
                Some(JobMsg::Done(Err(e))) => {
                    return Some((vec![e.body().to_string(), "[DONE]".into()], None))
                }
                None => return None,
            };
            Some((out, Some(running)))
        }
    });
    let all = stream::iter(vec![opening])
        .chain(events)
        .flat_map(|v| stream::iter(v.into_iter().map(|d| Ok(Event::default().data(d)))));
    Sse::new(all)
}
