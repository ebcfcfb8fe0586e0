//! The relay loop over two real (tiny, random-weight) candle engines that share one tokenizer.
//! Wrappers around the real engines only steer what they say (force a tag, fail, hang);
//! the KV caches, prefill and decode are the engines' own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::{PolicyKind, RelayConfig, Source, StopReason};
use relay_engine::candle::{CandleEngine, LoadOptions};
use relay_engine::relay::{relay, LlmRetry, RelayEvent, RelayPair, RelayRequest};
use relay_engine::sampling::{argmax, SamplingParams};
use relay_engine::testing::StepHook;
use relay_engine::tiny::{write_gguf, TinyConfig};
use relay_engine::tokenizer::Tokenizer;
use relay_engine::{tiny_vocab, Engine, ModelInfo, SeqId};

struct Tiny {
    _dir: tempfile::TempDir,
    slm: Arc<CandleEngine>,
    llm: Arc<CandleEngine>,
    tokenizer: Arc<Tokenizer>,
    llm_path: std::path::PathBuf,
}

/// A tiny SLM and a differently-seeded, wider "LLM", both with the tiny vocabulary.
fn tiny_pair() -> Tiny {
    let dir = tempfile::tempdir().unwrap();
    let meta = tiny_vocab::gguf_metadata();
    let base = TinyConfig {
        vocab_size: tiny_vocab::TINY_VOCAB_SIZE,
        eos_token_id: tiny_vocab::IM_END_ID,
        context_length: 512,
        ..TinyConfig::qwen2()
    };
    let slm_path = dir.path().join("slm.gguf");
    write_gguf(
        &slm_path,
        &TinyConfig {
            seed: 7,
            ..base.clone()
        },
        &meta,
    )
    .unwrap();
    let llm_path = dir.path().join("llm.gguf");
    write_gguf(
        &llm_path,
        &TinyConfig {
            seed: 99,
            hidden_size: 96,
            head_dim: 24,
            num_layers: 3,
            ..base
        },
        &meta,
    )
    .unwrap();
    let slm = Arc::new(CandleEngine::load(&slm_path, LoadOptions::default()).unwrap());
    let llm = Arc::new(CandleEngine::load(&llm_path, LoadOptions::default()).unwrap());
    let tokenizer = Arc::new(Tokenizer::load_for_model(&slm_path).unwrap());
    Tiny {
        _dir: dir,
        slm,
        llm,
        tokenizer,
        llm_path,
    }
}

fn request(t: &Tiny, policy: PolicyKind, max_tokens: usize) -> RelayRequest {
    let prompt = t
        .tokenizer
        .encode(
            "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let mut config = RelayConfig::default();
    config.policy.kind = policy;
    config.limits.max_response_tokens = max_tokens;
    RelayRequest {
        slm_prompt: prompt.clone(),
        llm_prompt: prompt,
        config,
        sampling: SamplingParams::greedy(),
        retry: LlmRetry {
            attempts: 2,
            backoff: Duration::from_millis(1),
            token_timeout: Duration::from_secs(30),
        },
        cancel: None,
    }
}

fn pair(t: &Tiny, slm: Arc<dyn Engine>, llm: Arc<dyn Engine>) -> RelayPair {
    RelayPair {
        slm,
        llm,
        slm_tokenizer: t.tokenizer.clone(),
        llm_tokenizer: None,
        llm_read_ahead: 0,
    }
}

/// Greedy choice of `engine` after `context`, computed in one fresh prefill.
fn from_scratch_logits(engine: &dyn Engine, context: &[u32]) -> Vec<f32> {
    let seq = engine.create_sequence().unwrap();
    let logits = engine.prefill(seq, context).unwrap();
    engine.free(seq).unwrap();
    logits
}

#[test]
fn confidence_policy_serves_calls_and_accounting_holds() {
    let t = tiny_pair();
    let mut req = request(&t, PolicyKind::Confidence, 48);
    req.config.policy.threshold = 0.9; // random weights are never confident: calls happen
    req.config.policy.call_tokens = 3;
    req.config.policy.cooldown = 4;
    req.config.limits.max_calls = 5;
    let mut streamed = String::new();
    let mut stream_sources = Vec::new();
    let out = relay(&pair(&t, t.slm.clone(), t.llm.clone()), &req, |e| {
        if let RelayEvent::Text { text, source } = e {
            streamed.push_str(&text);
            stream_sources.push(source);
        }
    })
    .unwrap();
    let trace = &out.trace;
    trace.check().unwrap();
    assert!(trace.calls.len() >= 2, "expected calls, trace: {trace:?}");
    assert!(trace
        .calls
        .iter()
        .all(|c| c.llm_error.is_none() && c.served > 0));
    assert_eq!(out.tokens.len(), out.sources.len());
    assert_eq!(out.slm_logprobs.len(), out.tokens.len());
    let llm_tokens = out.sources.iter().filter(|s| **s == Source::Llm).count();
    assert_eq!(
        llm_tokens,
        trace.calls.iter().map(|c| c.served).sum::<usize>()
    );
    for (lp, src) in out.slm_logprobs.iter().zip(&out.sources) {
        assert_eq!(lp.is_some(), *src == Source::Slm);
    }
    assert!(stream_sources.contains(&Source::Llm) && stream_sources.contains(&Source::Slm));
    assert_eq!(streamed, out.text, "streamed text reassembles the response");
    assert_eq!(out.text, t.tokenizer.decode(&out.tokens).unwrap());
    // Both caches are freed with the request.
    assert_eq!(t.slm.num_sequences(), 0);
    assert_eq!(t.llm.num_sequences(), 0);
}

#[test]
fn llm_prefill_is_incremental_and_output_equals_from_scratch() {
    let t = tiny_pair();
    let mut req = request(&t, PolicyKind::Confidence, 40);
    req.config.policy.threshold = 0.99999; // calls whenever the cool-down allows
    req.config.policy.call_tokens = 3;
    req.config.policy.cooldown = 3;
    req.config.limits.max_calls = 6;
    let out = relay(&pair(&t, t.slm.clone(), t.llm.clone()), &req, |_| {}).unwrap();
    let trace = &out.trace;
    let calls = &trace.calls;
    assert!(
        calls.len() >= 3,
        "need several calls to tell reuse from re-sending: {calls:?}"
    );
    let prompt = req.llm_prompt.len();
    let last = calls.last().unwrap();
    // At its last call the LLM view is prompt + response so far (no tags with this policy).
    // The LLM got there by prefill plus the tokens it stepped itself: all it served in
    // earlier calls but the last token of each (that one is not stepped; the next delta
    // carries it). So prefill = view − self-stepped, and nothing is ever sent twice.
    let self_stepped: usize = calls[..calls.len() - 1].iter().map(|c| c.served - 1).sum();
    assert_eq!(trace.prefill_tokens.llm, prompt + last.at - self_stepped);
    let resend_cost: usize = calls.iter().map(|c| prompt + c.at).sum();
    let contexts: Vec<usize> = calls.iter().map(|c| prompt + c.at).collect();
    assert_eq!(
        out.llm_context_at_calls, contexts,
        "the context the LLM held at each call"
    );
    assert!(
        trace.prefill_tokens.llm < resend_cost,
        "{} vs re-sending {}",
        trace.prefill_tokens.llm,
        resend_cost
    );
    // The SLM prefilled its prompt and the served tokens that it wrote after, nothing else.
    let served_then_slm: usize = calls
        .iter()
        .filter(|c| c.at + c.served < out.tokens.len())
        .map(|c| c.served)
        .sum();
    assert_eq!(
        trace.prefill_tokens.slm,
        req.slm_prompt.len() + served_then_slm
    );

    // Every token is the greedy choice of the model that wrote it, recomputed from scratch
    // over the same interleaving (the SLM over its prompt, the LLM over its own).
    for (i, (&tok, &src)) in out.tokens.iter().zip(&out.sources).enumerate() {
        let (engine, prompt): (&dyn Engine, &[u32]) = match src {
            Source::Slm => (t.slm.as_ref(), &req.slm_prompt),
            Source::Llm => (t.llm.as_ref(), &req.llm_prompt),
        };
        let mut ctx = prompt.to_vec();
        ctx.extend_from_slice(&out.tokens[..i]);
        let logits = from_scratch_logits(engine, &ctx);
        let best = argmax(&logits);
        assert!(
            best as u32 == tok || (logits[best] - logits[tok as usize]).abs() < 1e-4,
            "position {i} ({src:?}): relay chose {tok}, from scratch {best}"
        );
    }
}

/// Forces the SLM to write given tokens at given absolute positions of its sequence.
struct ScriptedSlm {
    inner: Arc<CandleEngine>,
    force: HashMap<usize, u32>,
}

impl ScriptedSlm {
    fn steer(&self, seq: SeqId, mut logits: Vec<f32>) -> relay_engine::Result<Vec<f32>> {
        let pos = self.inner.seq_len(seq)?;
        if let Some(&tok) = self.force.get(&pos) {
            logits.iter_mut().for_each(|l| *l = -30.0);
            logits[tok as usize] = 30.0;
        }
        Ok(logits)
    }
}

impl Engine for ScriptedSlm {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn create_sequence(&self) -> relay_engine::Result<SeqId> {
        self.inner.create_sequence()
    }
    fn prefill(&self, seq: SeqId, tokens: &[u32]) -> relay_engine::Result<Vec<f32>> {
        let l = self.inner.prefill(seq, tokens)?;
        self.steer(seq, l)
    }
    fn step(&self, batch: &[(SeqId, u32)]) -> relay_engine::Result<Vec<Vec<f32>>> {
        let out = self.inner.step(batch)?;
        batch
            .iter()
            .zip(out)
            .map(|(&(s, _), l)| self.steer(s, l))
            .collect()
    }
    fn seq_len(&self, seq: SeqId) -> relay_engine::Result<usize> {
        self.inner.seq_len(seq)
    }
    fn truncate(&self, seq: SeqId, len: usize) -> relay_engine::Result<()> {
        self.inner.truncate(seq, len)
    }
    fn fork(&self, seq: SeqId) -> relay_engine::Result<SeqId> {
        self.inner.fork(seq)
    }
    fn free(&self, seq: SeqId) -> relay_engine::Result<()> {
        self.inner.free(seq)
    }
    fn score(&self, tokens: &[u32]) -> relay_engine::Result<Vec<f32>> {
        self.inner.score(tokens)
    }
}

#[test]
fn tag_policy_hands_the_pen_to_the_llm_for_n_tokens() {
    let t = tiny_pair();
    let req = request(&t, PolicyKind::Tag, 40);
    let p = req.slm_prompt.len();
    // The SLM writes 4 tokens of its own, then "<call>3</call>", then goes on.
    let tag = t.tokenizer.encode("<call>3</call>", false).unwrap();
    let force: HashMap<usize, u32> = tag
        .iter()
        .enumerate()
        .map(|(i, &id)| (p + 4 + i, id))
        .collect();
    let slm = Arc::new(ScriptedSlm {
        inner: t.slm.clone(),
        force,
    });
    let out = relay(&pair(&t, slm, t.llm.clone()), &req, |_| {}).unwrap();
    let trace = &out.trace;
    trace.check().unwrap();
    assert_eq!(trace.calls.len(), 1, "{trace:?}");
    let call = &trace.calls[0];
    assert_eq!(
        (call.requested_n, call.served, call.at),
        (3, 3, 4 + tag.len())
    );
    assert!(
        out.text.contains("<call>3</call>"),
        "the SLM view keeps the tag: {:?}",
        out.text
    );
    let llm_span: Vec<_> = trace
        .spans
        .iter()
        .filter(|s| s.source == Source::Llm)
        .collect();
    assert_eq!(llm_span.len(), 1);
    assert_eq!(
        (llm_span[0].start, llm_span[0].end),
        (4 + tag.len(), 7 + tag.len())
    );
    // The LLM saw the prompt and the SLM's 4 tokens, without the tag.
    assert_eq!(trace.prefill_tokens.llm, p + 4);
}

/// An LLM that fails its first `fail_first` prefills, or hangs in prefill.
struct FlakyLlm {
    inner: Arc<CandleEngine>,
    fail_first: AtomicUsize,
    always_fail: bool,
    hang: Option<Duration>,
    /// Fail every background read (a prefill on the relay's read-ahead thread)...
    fail_reads: bool,
    /// ...and count them.
    reads: AtomicUsize,
}

impl FlakyLlm {
    /// A wrapper that fails nothing until told to.
    fn new(inner: Arc<CandleEngine>) -> Self {
        Self {
            inner,
            fail_first: AtomicUsize::new(0),
            always_fail: false,
            hang: None,
            fail_reads: false,
            reads: AtomicUsize::new(0),
        }
    }
}

impl Engine for FlakyLlm {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn create_sequence(&self) -> relay_engine::Result<SeqId> {
        self.inner.create_sequence()
    }
    fn prefill(&self, seq: SeqId, tokens: &[u32]) -> relay_engine::Result<Vec<f32>> {
        if let Some(d) = self.hang {
            std::thread::sleep(d);
        }
        let read = std::thread::current().name() == Some("relay-llm-read-ahead");
        if read {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
        if self.always_fail
            || (read && self.fail_reads)
            || self
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            // Fail after a partial prefill, as a real crash might leave the cache.
            self.inner.prefill(seq, &tokens[..tokens.len() / 2 + 1])?;
            return Err(relay_engine::EngineError::InvalidInput(
                "backend unavailable (test)".into(),
            ));
        }
        self.inner.prefill(seq, tokens)
    }
    fn step(&self, batch: &[(SeqId, u32)]) -> relay_engine::Result<Vec<Vec<f32>>> {
        self.inner.step(batch)
    }
    fn seq_len(&self, seq: SeqId) -> relay_engine::Result<usize> {
        self.inner.seq_len(seq)
    }
    fn truncate(&self, seq: SeqId, len: usize) -> relay_engine::Result<()> {
        self.inner.truncate(seq, len)
    }
    fn fork(&self, seq: SeqId) -> relay_engine::Result<SeqId> {
        self.inner.fork(seq)
    }
    fn free(&self, seq: SeqId) -> relay_engine::Result<()> {
        self.inner.free(seq)
    }
    fn score(&self, tokens: &[u32]) -> relay_engine::Result<Vec<f32>> {
        self.inner.score(tokens)
    }
}

fn confident_calls(t: &Tiny) -> RelayRequest {
    let mut req = request(t, PolicyKind::Confidence, 32);
    req.config.policy.threshold = 0.9;
    req.config.policy.call_tokens = 2;
    req.config.policy.cooldown = 3;
    req
}

#[test]
fn a_failing_llm_is_retried_and_then_the_slm_goes_on_alone() {
    let t = tiny_pair();
    let req = confident_calls(&t);
    // Fails once: the retry serves the call, the trace shows no error.
    let flaky = Arc::new(FlakyLlm {
        fail_first: AtomicUsize::new(1),
        ..FlakyLlm::new(t.llm.clone())
    });
    let out = relay(&pair(&t, t.slm.clone(), flaky), &req, |_| {}).unwrap();
    assert!(
        out.trace
            .calls
            .iter()
            .all(|c| c.llm_error.is_none() && c.served > 0),
        "{:?}",
        out.trace.calls
    );

    // Always fails: every call records the error, the response is the SLM's alone.
    let dead = Arc::new(FlakyLlm {
        always_fail: true,
        ..FlakyLlm::new(t.llm.clone())
    });
    let out = relay(&pair(&t, t.slm.clone(), dead), &req, |_| {}).unwrap();
    out.trace.check().unwrap();
    assert!(!out.trace.calls.is_empty());
    for call in &out.trace.calls {
        let err = call.llm_error.as_deref().expect("error recorded");
        assert!(
            err.contains("backend unavailable") && err.contains("2 attempt"),
            "{err}"
        );
        assert_eq!(call.served, 0);
    }
    assert!(out.sources.iter().all(|s| *s == Source::Slm));
    assert_eq!(out.tokens.len(), 32, "the SLM wrote the whole budget");
    assert_eq!(
        t.llm.num_sequences(),
        0,
        "the LLM sequence is freed after failures"
    );
}

#[test]
fn a_hanging_llm_costs_at_most_the_timeout() {
    let t = tiny_pair();
    let mut req = confident_calls(&t);
    req.retry.token_timeout = Duration::from_millis(300);
    let hung = Arc::new(FlakyLlm {
        hang: Some(Duration::from_secs(3)),
        ..FlakyLlm::new(t.llm.clone())
    });
    let started = Instant::now();
    let out = relay(&pair(&t, t.slm.clone(), hung), &req, |_| {}).unwrap();
    // One timeout (later calls fail at once), not one per call.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(out.trace.calls.len() >= 2);
    assert!(out.trace.calls[0]
        .llm_error
        .as_deref()
        .unwrap()
        .contains("timed out"));
    assert!(out.trace.calls.iter().all(|c| c.llm_error.is_some()));
    assert_eq!(out.tokens.len(), 32);
}

#[test]
fn different_tokenizers_bridge_by_text() {
    let t = tiny_pair();
    let mut p = pair(&t, t.slm.clone(), t.llm.clone());
    // A second, separately loaded tokenizer makes the driver take the text bridge.
    p.llm_tokenizer = Some(Arc::new(Tokenizer::load_for_model(&t.llm_path).unwrap()));
    let req = confident_calls(&t);
    let bridged = relay(&p, &req, |_| {}).unwrap();
    bridged.trace.check().unwrap();
    assert!(bridged.trace.calls.iter().any(|c| c.served > 0));
    // What each call served, decoded with the LLM's tokenizer, is in the response text, and
    // the SLM's view (its text) is the concatenation of all the pieces.
    let llm_tok = p.llm_tokenizer.as_ref().unwrap();
    for span in bridged
        .trace
        .spans
        .iter()
        .filter(|s| s.source == Source::Llm)
    {
        let served = llm_tok
            .decode(&bridged.tokens[span.start..span.end])
            .unwrap();
        assert!(
            bridged.text.contains(&served),
            "{served:?} not in {:?}",
            bridged.text
        );
    }
    // Re-tokenizing by text loses nothing: the LLM's prefill counts the text, not the ids.
    assert!(bridged.trace.prefill_tokens.llm > req.llm_prompt.len());
}

#[test]
fn llm_only_and_slm_only_policies() {
    let t = tiny_pair();
    let out = relay(
        &pair(&t, t.slm.clone(), t.llm.clone()),
        &request(&t, PolicyKind::LlmOnly, 16),
        |_| {},
    )
    .unwrap();
    assert!(
        out.sources.iter().all(|s| *s == Source::Llm),
        "{:?}",
        out.sources
    );
    assert!((out.trace.call_ratio - 1.0).abs() < 1e-9);
    let out = relay(
        &pair(&t, t.slm.clone(), t.llm.clone()),
        &request(&t, PolicyKind::SlmOnly, 16),
        |_| {},
    )
    .unwrap();
    assert!(out.sources.iter().all(|s| *s == Source::Slm));
    assert_eq!(out.trace.call_ratio, 0.0);
    assert_eq!(out.trace.prefill_tokens.llm, 0);
}

#[test]
fn cancellation_stops_the_request_and_frees_caches() {
    let t = tiny_pair();
    let mut req = request(&t, PolicyKind::SlmOnly, 200);
    let cancel = Arc::new(AtomicBool::new(false));
    req.cancel = Some(cancel.clone());
    let mut seen = 0;
    let out = relay(&pair(&t, t.slm.clone(), t.llm.clone()), &req, |e| {
        if matches!(e, RelayEvent::Text { .. }) {
            seen += 1;
            if seen == 5 {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    })
    .unwrap();
    assert_eq!(out.trace.stop, Some(StopReason::Cancelled));
    assert!(out.tokens.len() < 10);
    assert_eq!(t.slm.num_sequences(), 0);
}

/// An LLM that continues in one go, as a remote server does: `generate_greedy` runs the
/// inner engine's prefill and greedy steps itself and counts the calls; `step` from outside
/// is an error, so the test fails if the relay ever falls back to token-by-token calls.
struct OneShotLlm {
    inner: Arc<CandleEngine>,
    continuations: AtomicUsize,
}

impl Engine for OneShotLlm {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn create_sequence(&self) -> relay_engine::Result<SeqId> {
        self.inner.create_sequence()
    }
    fn prefill(&self, seq: SeqId, tokens: &[u32]) -> relay_engine::Result<Vec<f32>> {
        self.inner.prefill(seq, tokens)
    }
    fn step(&self, _batch: &[(SeqId, u32)]) -> relay_engine::Result<Vec<Vec<f32>>> {
        Err(relay_engine::EngineError::InvalidInput(
            "step called on a one-shot LLM".into(),
        ))
    }
    fn seq_len(&self, seq: SeqId) -> relay_engine::Result<usize> {
        self.inner.seq_len(seq)
    }
    fn truncate(&self, seq: SeqId, len: usize) -> relay_engine::Result<()> {
        self.inner.truncate(seq, len)
    }
    fn fork(&self, seq: SeqId) -> relay_engine::Result<SeqId> {
        self.inner.fork(seq)
    }
    fn free(&self, seq: SeqId) -> relay_engine::Result<()> {
        self.inner.free(seq)
    }
    fn score(&self, tokens: &[u32]) -> relay_engine::Result<Vec<f32>> {
        self.inner.score(tokens)
    }
    fn continues_in_one_go(&self) -> bool {
        true
    }
    fn generate_greedy(
        &self,
        seq: SeqId,
        tokens: &[u32],
        max_new: usize,
    ) -> Option<relay_engine::Result<Vec<u32>>> {
        self.continuations.fetch_add(1, Ordering::SeqCst);
        let run = || {
            let mut logits = self.inner.prefill(seq, tokens)?;
            let mut ids = Vec::new();
            while ids.len() < max_new {
                let id = argmax(&logits) as u32;
                ids.push(id);
                if self.inner.info().eos_token_ids.contains(&id) {
                    break;
                }
                logits = self.inner.step(&[(seq, id)])?.pop().unwrap();
            }
            Ok(ids)
        };
        Some(run())
    }
}

#[test]
fn greedy_calls_on_a_one_shot_llm_take_one_continuation_each_and_match_stepping() {
    let t = tiny_pair();
    let mut req = request(&t, PolicyKind::Confidence, 48);
    req.config.policy.threshold = 0.99999;
    req.config.policy.call_tokens = 4;
    req.config.policy.cooldown = 3;
    req.config.limits.max_calls = 6;
    let stepped = relay(&pair(&t, t.slm.clone(), t.llm.clone()), &req, |_| {}).unwrap();
    let one_shot = Arc::new(OneShotLlm {
        inner: t.llm.clone(),
        continuations: AtomicUsize::new(0),
    });
    let out = relay(&pair(&t, t.slm.clone(), one_shot.clone()), &req, |_| {}).unwrap();
    assert!(out.trace.calls.len() >= 3, "{:?}", out.trace.calls);
    assert!(out.trace.calls.iter().all(|c| c.llm_error.is_none()));
    assert_eq!(
        one_shot.continuations.load(Ordering::SeqCst),
        out.trace.calls.len()
    );
    assert_eq!(out.tokens, stepped.tokens);
    assert_eq!(out.sources, stepped.sources);
    assert_eq!(out.text, stepped.text);
    // Continuations past what a call served are cut off, so the LLM's prefill is the same.
    assert_eq!(out.trace.prefill_tokens, stepped.trace.prefill_tokens);
    assert_eq!(out.llm_context_at_calls, stepped.llm_context_at_calls);
    assert_eq!(t.llm.num_sequences(), 0);

    // Sampling is the client's business: a sampled call never takes the one-shot path.
    let mut sampled = req.clone();
    sampled.sampling.temperature = 0.8;
    let out = relay(&pair(&t, t.slm.clone(), one_shot.clone()), &sampled, |_| {}).unwrap();
    assert!(out.trace.calls.iter().all(|c| c
        .llm_error
        .as_deref()
        .is_some_and(|e| e.contains("one-shot"))));
}

/// Read-ahead moves where the LLM reads the context (in the background, while the SLM writes)
/// and nothing else: the same response, the same context at every call, each token read once.
/// A read that fails part-way (the cache left half-filled) turns read-ahead off for the
/// request, and the calls read what is missing themselves.
#[test]
fn read_ahead_changes_where_the_llm_reads_and_nothing_else() {
    let t = tiny_pair();
    let mut req = request(&t, PolicyKind::Confidence, 60);
    req.config.policy.threshold = 0.99999; // calls whenever the cool-down allows
    req.config.policy.call_tokens = 2;
    req.config.policy.cooldown = 12;
    req.config.limits.max_calls = 4;
    let plain = relay(&pair(&t, t.slm.clone(), t.llm.clone()), &req, |_| {}).unwrap();
    assert!(plain.trace.calls.len() >= 3, "{:?}", plain.trace.calls);
    assert_eq!(plain.llm_read_ahead_tokens, 0, "off by default");

    let same_as_plain = |out: &relay_engine::relay::RelayOutput, what: &str| {
        out.trace.check().unwrap();
        assert_eq!(out.tokens, plain.tokens, "{what}: tokens");
        assert_eq!(out.sources, plain.sources, "{what}: sources");
        assert_eq!(
            out.slm_logprobs, plain.slm_logprobs,
            "{what}: SLM log-probs"
        );
        assert_eq!(
            out.llm_context_at_calls, plain.llm_context_at_calls,
            "{what}: the LLM's context at each call"
        );
        assert!(out.trace.calls.iter().all(|c| c.llm_error.is_none()));
    };

    let mut ahead = pair(&t, t.slm.clone(), t.llm.clone());
    ahead.llm_read_ahead = 3;
    let out = relay(&ahead, &req, |_| {}).unwrap();
    same_as_plain(&out, "read-ahead");
    // A read starts once 3 tokens wait (the cool-down leaves 12 between calls), and every read
    // that starts is waited for and booked, so this does not depend on timing.
    assert!(
        out.llm_read_ahead_tokens >= 3,
        "some of the response was read ahead: {}",
        out.llm_read_ahead_tokens
    );
    assert_eq!(
        out.trace.prefill_tokens.llm, plain.trace.prefill_tokens.llm,
        "each token is read once, ahead or at a call"
    );
    assert_eq!(t.llm.num_sequences(), 0, "the LLM sequence is freed");

    // Reads fail half-way (the cache left half-filled); calls do not.
    let failing = Arc::new(FlakyLlm {
        fail_reads: true,
        ..FlakyLlm::new(t.llm.clone())
    });
    let mut ahead = pair(&t, t.slm.clone(), failing.clone());
    ahead.llm_read_ahead = 3;
    let out = relay(&ahead, &req, |_| {}).unwrap();
    same_as_plain(&out, "failed read-ahead");
    assert_eq!(
        failing.reads.load(Ordering::SeqCst),
        1,
        "one read, then off"
    );
    assert_eq!(out.llm_read_ahead_tokens, 0);
    assert_eq!(t.llm.num_sequences(), 0);
}

/// A broken engine contract is our bug (a server answers 500), not the caller's bad input.
#[test]
fn an_engine_that_breaks_its_contract_is_an_internal_error() {
    let t = tiny_pair();
    // An SLM whose `step` answers no logits: it breaks the engine contract.
    let slm = Arc::new(StepHook::new(t.slm.clone(), |_, _| Ok(Vec::new())));
    let err = relay(
        &pair(&t, slm, t.llm.clone()),
        &request(&t, PolicyKind::SlmOnly, 8),
        |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&err, relay_engine::EngineError::Internal(m) if m.contains("step")),
        "{err:?}"
    );
    assert_eq!(err.label(), "internal");
}
