//! `RemoteEngine`: the [`Engine`] trait over an OpenAI-compatible completions server (llama.cpp
//! server, vLLM, SGLang). The server owns the weights and the KV cache; this side owns only each
//! sequence's token ids.
//!
//! Why it looks like this:
//! - Sequences are local lists of ids: `prefill` appends, `truncate`/`fork`/`free` never touch
//!   the network. Every request sends the **full token prefix** as a token-id prompt, so the
//!   server's prefix cache (llama.cpp `cache_prompt`, vLLM/SGLang prefix caching) does the reuse
//!   instead of a server-side session we would have to keep in step.
//! - A completions server returns log-probs, not logits. `prefill`/`step` ask for one token with
//!   the top-`k` log-probs and return a "logits" vector holding those log-probs at their ids and
//!   −∞ everywhere else. Softmax of that vector is the server's distribution restricted to the top
//!   `k` and renormalised, so greedy decoding is exact and temperature / top-p sampling happen
//!   over the top `k` only.
//! - [`RemoteEngine::generate`] lets the server decode `n` tokens in one call (server-side
//!   greedy): the cheap path for an LLM call of `n` tokens.
//!
//! Transport is blocking (`ureq`, plain `http://`): the engine API is synchronous and the relay
//! calls it from a worker thread. Connection errors, timeouts, 429 and 5xx are retried with
//! exponential backoff; another 4xx is a refusal that asking again will not change. What fails
//! says whose fault it is: the server's answer is `EngineError::Upstream` (with its status), no
//! answer is `Unreachable` or `Timeout`; only what the caller passed is `InvalidInput`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::{Engine, ModelInfo, SeqId};
use crate::error::{EngineError, Result};

/// How to reach the server and what to ask of it.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080` (a trailing `/v1` is accepted).
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// The `model` field of each request; `None` takes the first model `/v1/models` lists.
    pub model: Option<String>,
    /// Limit for one HTTP request (connect + response).
    pub timeout: Duration,
    /// Extra attempts after a connection error, timeout, 429 or 5xx.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Log-probs asked for per position (llama.cpp and vLLM allow 20 by default).
    pub top_logprobs: usize,
    /// Vocabulary size; `None` reads `meta.n_vocab` from `/v1/models` (llama.cpp). Servers that
    /// do not report it (vLLM, SGLang) need it set, e.g. from the tokenizer.
    pub vocab_size: Option<usize>,
    /// Token ids that end generation (the server does not report ids); empty when unknown.
    pub eos_token_ids: Vec<u32>,
    /// Context length; `None` reads `meta.n_ctx` from `/v1/models`, else unbounded here (the
    /// server then answers 400 past its limit).
    pub context_length: Option<usize>,
    /// Fields merged into every completions request, e.g. `{"return_tokens_as_token_ids": true}`
    /// for vLLM, whose log-probs otherwise name tokens by text only.
    pub extra_body: serde_json::Map<String, Value>,
}

impl RemoteConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: None,
            timeout: Duration::from_secs(60),
            retries: 2,
            backoff: Duration::from_millis(200),
            top_logprobs: 20,
            vocab_size: None,
            eos_token_ids: Vec::new(),
            context_length: None,
            extra_body: serde_json::Map::new(),
        }
    }
}

/// How long a completion may take per token it is asked for, on top of the base timeout: a
/// server slower than one token a second is treated as failed.
pub const PER_TOKEN_ALLOWANCE: Duration = Duration::from_secs(1);

/// One generated position as the server reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteToken {
    /// The token the server chose.
    pub id: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The top-k alternatives `(id, logprob)`, most likely first (may be empty).
    pub top: Vec<(u32, f32)>,
}

/// An [`Engine`] whose model runs behind an OpenAI-compatible HTTP server.
pub struct RemoteEngine {
    config: RemoteConfig,
    /// `base_url` without a trailing `/` or `/v1`.
    root: String,
    model: String,
    agent: ureq::Agent,
    info: ModelInfo,
    seqs: Mutex<HashMap<SeqId, Vec<u32>>>,
    next_seq: AtomicU64,
}

impl std::fmt::Debug for RemoteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEngine")
            .field("root", &self.root)
            .field("model", &self.model)
            .finish()
    }
}

impl RemoteEngine {
    /// Connects: reads `/v1/models` (with retries) for the model name, vocabulary size and
    /// context length, so a wrong URL fails here rather than at the first call.
    pub fn connect(config: RemoteConfig) -> Result<Self> {
        let url = config.base_url.trim_end_matches('/');
        if url.starts_with("https://") {
            return Err(EngineError::Unsupported(format!(
                "{url}: https is not built in; put a plain-http endpoint (or a local TLS proxy) in front of the server"
            )));
        }
        if !url.starts_with("http://") {
            return Err(EngineError::InvalidInput(format!(
                "{url}: a remote model URL starts with http://"
            )));
        }
        let root = url.trim_end_matches("/v1").to_string();
        let agent = ureq::AgentBuilder::new().timeout(config.timeout).build();
        let mut engine = Self {
            root,
            model: String::new(),
            agent,
            info: ModelInfo {
                name: String::new(),
                architecture: "remote".into(),
                vocab_size: 0,
                context_length: usize::MAX,
                eos_token_ids: config.eos_token_ids.clone(),
            },
            config,
            seqs: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(0),
        };
        let models = engine.request("GET", "/v1/models", None)?;
        let listed = models["data"].as_array().cloned().unwrap_or_default();
        let entry = match &engine.config.model {
            Some(name) => listed
                .iter()
                .find(|m| m["id"].as_str() == Some(name.as_str()))
                .cloned(),
            None => listed.first().cloned(),
        };
        engine.model = match (&engine.config.model, &entry) {
            (Some(name), _) => name.clone(),
            (None, Some(m)) => m["id"].as_str().unwrap_or_default().to_string(),
            (None, None) => return Err(engine.malformed("/v1/models lists no model")),
        };
        let meta = entry
            .as_ref()
            .map(|m| m["meta"].clone())
            .unwrap_or(Value::Null);
        let as_usize = |v: &Value| v.as_u64().filter(|&n| n > 0).map(|n| n as usize);
        engine.info.vocab_size = match engine
            .config
            .vocab_size
            .or_else(|| as_usize(&meta["n_vocab"]))
        {
            Some(n) => n,
            None => {
                return Err(EngineError::VocabSizeUnknown {
                    url: engine.root.clone(),
                })
            }
        };
        if let Some(n) = engine
            .config
            .context_length
            .or_else(|| as_usize(&meta["n_ctx"]))
        {
            engine.info.context_length = n;
        }
        engine.info.name = engine.model.clone();
        Ok(engine)
    }

    /// The base URL requests go to.
    pub fn url(&self) -> &str {
        &self.root
    }

    /// Asks the server to continue `prompt` by up to `max_tokens` tokens (server-side greedy,
    /// temperature 0) with the top-`top_logprobs` log-probs at each position. Stateless.
    /// `stop_at_eos: false` sends `ignore_eos` (llama.cpp, vLLM, SGLang): the server then never
    /// picks EOS, but still reports EOS's log-prob among the top-k, so the caller can choose it
    /// (a server that picks EOS returns no log-probs for that position).
    pub fn complete(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        top_logprobs: usize,
        stop_at_eos: bool,
    ) -> Result<Vec<RemoteToken>> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidInput("empty prompt".into()));
        }
        if max_tokens == 0 {
            return Ok(Vec::new());
        }
        let mut body = json!({
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "logprobs": top_logprobs.max(1),
            "stream": false,
        });
        if !stop_at_eos {
            body["ignore_eos"] = Value::Bool(true);
        }
        for (k, v) in &self.config.extra_body {
            body[k] = v.clone();
        }
        // The base timeout covers the round trip, the prefill and the first token; each
        // further token adds its allowance.
        let more = (max_tokens - 1).min(1 << 20) as u32;
        let timeout = self.config.timeout + PER_TOKEN_ALLOWANCE * more;
        let response = self.request_within("POST", "/v1/completions", Some(&body), timeout)?;
        let choice = &response["choices"][0];
        if choice.is_null() {
            return Err(self.malformed("no choices in the completion"));
        }
        if choice["logprobs"].is_null() && max_tokens == 1 && !stop_at_eos {
            // llama.cpp drops the log-probs of a token that ends inside a UTF-8 character.
            return self.llama_cpp_probe(prompt, top_logprobs);
        }
        let tokens =
            parse_logprobs(&choice["logprobs"]).map_err(|reason| self.malformed(&reason))?;
        // llama.cpp leaves out the log-probs (and so the id) of a token that ends inside a UTF-8
        // character: then the ids do not spell the completion, and must not be used.
        let generated = response["usage"]["completion_tokens"].as_u64();
        if generated.is_some_and(|n| n as usize != tokens.len()) {
            return Err(self.malformed(&format!(
                "{} token ids for {} generated tokens",
                tokens.len(),
                generated.unwrap_or_default()
            )));
        }
        Ok(tokens)
    }

    /// llama.cpp's native `/completion`: learn the id it picked (`return_tokens`), then ask again
    /// with that id banned through `logit_bias`; the reported log-probs are pre-sampling, so
    /// they still hold the banned token's own.
    fn llama_cpp_probe(&self, prompt: &[u32], top_logprobs: usize) -> Result<Vec<RemoteToken>> {
        let mut body = json!({"prompt": prompt, "n_predict": 1, "temperature": 0.0, "ignore_eos": true,
                              "n_probs": top_logprobs.max(1), "return_tokens": true});
        let first = self.request("POST", "/completion", Some(&body))?;
        let picked = first["tokens"][0]
            .as_u64()
            .ok_or_else(|| self.malformed("no logprobs and no token ids"))?;
        body["logit_bias"] = json!([[picked, false]]);
        let second = self.request("POST", "/completion", Some(&body))?;
        let probs = json!({"content": second["completion_probabilities"].clone()});
        parse_logprobs(&probs).map_err(|reason| self.malformed(&reason))
    }

    /// Decodes up to `n` tokens after `seq` in **one** request (server-side greedy, stops at the
    /// server's EOS) and appends them to the sequence. Fewer than `n` come back when the model
    /// ended. This is the cheap path for an LLM call of `n` tokens: one round trip and one
    /// prefix-cache lookup instead of `n`.
    pub fn generate(&self, seq: SeqId, n: usize) -> Result<Vec<RemoteToken>> {
        let prefix = self.tokens(seq)?;
        let room = self.info.context_length.saturating_sub(prefix.len());
        let out = self.complete(&prefix, n.min(room), self.config.top_logprobs, true)?;
        let mut seqs = self.seqs.lock().unwrap();
        let held = seqs
            .get_mut(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?;
        held.extend(out.iter().map(|t| t.id));
        Ok(out)
    }

    /// Up to `n` greedy tokens after `prefix`, one request each; stops after an EOS.
    fn greedy_by_steps(&self, prefix: &[u32], n: usize) -> Result<Vec<u32>> {
        let mut context = prefix.to_vec();
        let mut ids = Vec::new();
        while ids.len() < n {
            let logits = self.next_logits(&context)?;
            let id = crate::sampling::argmax(&logits) as u32;
            ids.push(id);
            context.push(id);
            if self.info.eos_token_ids.contains(&id) {
                break;
            }
        }
        Ok(ids)
    }

    /// The ids `seq` holds.
    pub fn tokens(&self, seq: SeqId) -> Result<Vec<u32>> {
        self.seqs
            .lock()
            .unwrap()
            .get(&seq)
            .cloned()
            .ok_or(EngineError::UnknownSequence(seq))
    }

    /// Logits for the position after `prefix`: the top-k log-probs at their ids, −∞ elsewhere.
    fn next_logits(&self, prefix: &[u32]) -> Result<Vec<f32>> {
        let tokens = self.complete(prefix, 1, self.config.top_logprobs, false)?;
        let first = tokens
            .first()
            .ok_or_else(|| self.malformed("the completion holds no token"))?;
        let vocab = self.info.vocab_size;
        let mut logits = vec![f32::NEG_INFINITY; vocab];
        for &(id, lp) in first
            .top
            .iter()
            .chain(std::iter::once(&(first.id, first.logprob)))
        {
            let slot = logits.get_mut(id as usize).ok_or_else(|| {
                self.malformed(&format!(
                    "token id {id} is past the vocabulary size {vocab}"
                ))
            })?;
            *slot = if lp.is_nan() { f32::NEG_INFINITY } else { lp };
        }
        Ok(logits)
    }

    fn check_ids(&self, tokens: &[u32], held: usize) -> Result<()> {
        if let Some(&id) = tokens
            .iter()
            .find(|&&id| id as usize >= self.info.vocab_size)
        {
            return Err(EngineError::TokenOutOfVocab {
                id,
                vocab_size: self.info.vocab_size,
            });
        }
        let len = held + tokens.len();
        if len > self.info.context_length {
            return Err(EngineError::ContextOverflow {
                len,
                context_length: self.info.context_length,
            });
        }
        Ok(())
    }

    /// `seq`'s tokens with `tokens` appended, without storing them yet (a failed request leaves
    /// the sequence as it was).
    fn extended(&self, seq: SeqId, tokens: &[u32]) -> Result<Vec<u32>> {
        let mut prefix = self.tokens(seq)?;
        self.check_ids(tokens, prefix.len())?;
        prefix.extend_from_slice(tokens);
        Ok(prefix)
    }

    fn store(&self, seq: SeqId, prefix: Vec<u32>) -> Result<()> {
        let mut seqs = self.seqs.lock().unwrap();
        let held = seqs
            .get_mut(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?;
        *held = prefix;
        Ok(())
    }

    /// The server answered, but with something that cannot be used.
    fn malformed(&self, reason: &str) -> EngineError {
        EngineError::Upstream {
            url: self.root.clone(),
            status: None,
            message: format!("malformed response: {reason}"),
        }
    }

    /// One JSON request with retries on connection errors, timeouts and 5xx.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.request_within(method, path, body, self.config.timeout)
    }

    /// As [`Self::request`], each try allowed `timeout` (a long completion needs more than a
    /// one-token one).
    fn request_within(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.root);
        let mut attempt = 0u32;
        loop {
            match self.request_once(method, &url, body, timeout) {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retryable(e)) if attempt >= self.config.retries => return Err(e),
                Err(Failure::Retryable(e)) => {
                    let wait = self.config.backoff.saturating_mul(1u32 << attempt.min(16));
                    tracing::debug!(error = %e, attempt, ?wait, "retrying {url}");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
            }
        }
    }

    fn request_once(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> std::result::Result<Value, Failure> {
        let mut req = self.agent.request(method, url).timeout(timeout);
        if let Some(key) = &self.config.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let sent = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match sent {
            Ok(resp) => {
                let text = resp.into_string().map_err(|e| {
                    Failure::Retryable(if is_timeout(&e) {
                        EngineError::Timeout {
                            url: url.to_string(),
                            after: timeout,
                        }
                    } else {
                        EngineError::Unreachable {
                            url: url.to_string(),
                            message: format!("reading the response: {e}"),
                        }
                    })
                })?;
                serde_json::from_str(&text).map_err(|e| {
                    let head: String = text.chars().take(200).collect();
                    Failure::Final(self.malformed(&format!("not JSON ({e}): {head}")))
                })
            }
            Err(ureq::Error::Status(code, resp)) => {
                let message: String = resp
                    .into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(500)
                    .collect();
                let error = EngineError::Upstream {
                    url: url.to_string(),
                    status: Some(code),
                    message,
                };
                // A 4xx is a refusal that asking again will not change; 429 and 5xx may pass.
                if code >= 500 || code == 429 {
                    Err(Failure::Retryable(error))
                } else {
                    Err(Failure::Final(error))
                }
            }
            Err(ureq::Error::Transport(t)) => {
                let url = url.to_string();
                let error = if transport_timed_out(&t) {
                    EngineError::Timeout {
                        url,
                        after: timeout,
                    }
                } else {
                    EngineError::Unreachable {
                        url,
                        message: transport_text(&t),
                    }
                };
                Err(Failure::Retryable(error))
            }
        }
    }
}

/// Whether an I/O error is a timeout: ureq sets read and write timeouts on its sockets, which
/// some platforms report as `WouldBlock`.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// Whether a transport error is a timeout: ureq carries the `io::Error` (connect or read) in
/// the error's source chain.
fn transport_timed_out(t: &ureq::Transport) -> bool {
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some_and(is_timeout) {
            return true;
        }
        source = e.source();
    }
    false
}

/// A transport error's text without its URL (the error variant holds that).
fn transport_text(t: &ureq::Transport) -> String {
    let mut text = t.kind().to_string();
    if let Some(m) = t.message() {
        text.push_str(": ");
        text.push_str(m);
    }
    if let Some(source) = std::error::Error::source(t) {
        text.push_str(": ");
        text.push_str(&source.to_string());
    }
    text
}

enum Failure {
    Retryable(EngineError),
    Final(EngineError),
}

/// Reads generated tokens from a completion choice's `logprobs`, in either of the two shapes
/// servers use: llama.cpp's `{"content": [{"id", "logprob", "top_logprobs": [{"id", "logprob"}]}]}`
/// or the OpenAI legacy `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}]}`, whose
/// tokens must then name ids as `token_id:N` (vLLM's `return_tokens_as_token_ids`).
pub fn parse_logprobs(logprobs: &Value) -> std::result::Result<Vec<RemoteToken>, String> {
    let lp = |v: &Value| v.as_f64().map(|x| x as f32).unwrap_or(f32::NEG_INFINITY);
    if let Some(content) = logprobs["content"].as_array() {
        return content
            .iter()
            .map(|c| {
                let id = json_id(&c["id"])
                    .ok_or_else(|| format!("a logprobs entry has no token id: {c}"))?;
                let top = c["top_logprobs"]
                    .as_array()
                    .map(|alts| {
                        alts.iter()
                            .filter_map(|a| Some((json_id(&a["id"])?, lp(&a["logprob"]))))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(RemoteToken {
                    id,
                    logprob: lp(&c["logprob"]),
                    top,
                })
            })
            .collect();
    }
    if let Some(tokens) = logprobs["tokens"].as_array() {
        let named = |s: &str| {
            s.strip_prefix("token_id:")
                .and_then(|n| n.parse::<u32>().ok())
        };
        return tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let text = t.as_str().unwrap_or_default();
                let id = named(text).ok_or_else(|| {
                    format!("token {text:?} carries no id; ask the server for ids (vLLM: extra_body return_tokens_as_token_ids)")
                })?;
                let mut top: Vec<(u32, f32)> = logprobs["top_logprobs"][i]
                    .as_object()
                    .map(|m| m.iter().filter_map(|(k, v)| Some((named(k)?, lp(v)))).collect())
                    .unwrap_or_default();
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
                Ok(RemoteToken { id, logprob: lp(&logprobs["token_logprobs"][i]), top })
            })
            .collect();
    }
    Err(format!(
        "no logprobs in the completion (got {logprobs}); the server must support `logprobs`"
    ))
}

fn json_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

impl Engine for RemoteEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn create_sequence(&self) -> Result<SeqId> {
        let seq = SeqId(self.next_seq.fetch_add(1, Ordering::Relaxed));
        self.seqs.lock().unwrap().insert(seq, Vec::new());
        Ok(seq)
    }

    fn prefill(&self, seq: SeqId, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(EngineError::InvalidInput(
                "prefill needs at least one token".into(),
            ));
        }
        let prefix = self.extended(seq, tokens)?;
        let logits = self.next_logits(&prefix)?;
        self.store(seq, prefix)?;
        Ok(logits)
    }

    /// One request per listed sequence (a completions server batches concurrent requests
    /// itself; the relay steps one LLM sequence at a time).
    fn step(&self, batch: &[(SeqId, u32)]) -> Result<Vec<Vec<f32>>> {
        let prefixes = batch
            .iter()
            .map(|&(seq, tok)| self.extended(seq, &[tok]))
            .collect::<Result<Vec<_>>>()?;
        let logits = prefixes
            .iter()
            .map(|p| self.next_logits(p))
            .collect::<Result<Vec<_>>>()?;
        for (&(seq, _), prefix) in batch.iter().zip(prefixes) {
            self.store(seq, prefix)?;
        }
        Ok(logits)
    }

    /// One request for the whole continuation (the server's prefix cache holds the context).
    /// Should the server's ids not spell its completion, the same tokens are taken one request
    /// at a time instead.
    fn continues_in_one_go(&self) -> bool {
        true
    }

    fn generate_greedy(
        &self,
        seq: SeqId,
        tokens: &[u32],
        max_new: usize,
    ) -> Option<Result<Vec<u32>>> {
        let run = || -> Result<Vec<u32>> {
            let prefix = self.extended(seq, tokens)?;
            let room = self.info.context_length.saturating_sub(prefix.len());
            let n = max_new.min(room);
            let ids = match self.complete(&prefix, n, 1, true) {
                Ok(out) => {
                    let mut ids: Vec<u32> = out.into_iter().map(|t| t.id).collect();
                    // Fewer than asked means the model ended; some servers leave the EOS out.
                    let ended = ids
                        .last()
                        .is_some_and(|id| self.info.eos_token_ids.contains(id));
                    if ids.len() < n && !ended {
                        ids.extend(self.info.eos_token_ids.first());
                    }
                    ids
                }
                Err(error) => {
                    tracing::debug!(%error, "one-request continuation failed; going token by token");
                    self.greedy_by_steps(&prefix, n)?
                }
            };
            let mut held = prefix;
            held.extend_from_slice(&ids);
            self.store(seq, held)?;
            Ok(ids)
        };
        Some(run())
    }

    fn seq_len(&self, seq: SeqId) -> Result<usize> {
        self.seqs
            .lock()
            .unwrap()
            .get(&seq)
            .map(Vec::len)
            .ok_or(EngineError::UnknownSequence(seq))
    }

    fn truncate(&self, seq: SeqId, len: usize) -> Result<()> {
        let mut seqs = self.seqs.lock().unwrap();
        let held = seqs
            .get_mut(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?;
        if len > held.len() {
            return Err(EngineError::InvalidInput(format!(
                "cannot truncate {} tokens to {len}",
                held.len()
            )));
        }
        held.truncate(len);
        Ok(())
    }

    fn fork(&self, seq: SeqId) -> Result<SeqId> {
        let copy = self.tokens(seq)?;
        let new = SeqId(self.next_seq.fetch_add(1, Ordering::Relaxed));
        self.seqs.lock().unwrap().insert(new, copy);
        Ok(new)
    }

    fn free(&self, seq: SeqId) -> Result<()> {
        self.seqs
            .lock()
            .unwrap()
            .remove(&seq)
            .map(|_| ())
            .ok_or(EngineError::UnknownSequence(seq))
    }

    /// Needs prompt log-probs (`echo`), which llama.cpp's server does not offer.
    fn score(&self, _tokens: &[u32]) -> Result<Vec<f32>> {
        Err(EngineError::Unsupported(format!(
            "{}: scoring needs prompt log-probs, which a remote engine does not get",
            self.root
        )))
    }
}
