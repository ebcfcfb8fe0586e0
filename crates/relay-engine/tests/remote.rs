//! `RemoteEngine` against a real llama.cpp server serving a tiny GGUF our own code wrote (the
//! evidence that it works), plus error paths against an in-process HTTP stub (timeouts, 5xx,
//! malformed JSON), which only show how failures surface.
//!
//! The llama-server tests are `#[ignore]`d so plain `cargo test` needs no C++ build; `make test`
//! builds llama.cpp (`scripts/build-llama-cpp.sh`) and runs them with `--ignored`. They find the
//! binary through `RELAYLLM_LLAMA_SERVER` or `third_party/llama.cpp/build/bin/llama-server`, and
//! fail (never skip) when neither exists.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::{PolicyKind, RelayConfig, Source};
use relay_engine::candle::{CandleEngine, LoadOptions};
use relay_engine::relay::{relay, LlmRetry, RelayEvent, RelayPair, RelayRequest};
use relay_engine::remote::{RemoteConfig, RemoteEngine};
use relay_engine::sampling::{argmax, SamplingParams};
use relay_engine::testing::LlamaServer;
use relay_engine::tiny::{write_gguf, TinyConfig};
use relay_engine::tokenizer::Tokenizer;
use relay_engine::{tiny_vocab, Engine, EngineError};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// A real llama-server (relay_engine::testing::LlamaServer)

struct Tiny {
    dir: tempfile::TempDir,
    slm: Arc<CandleEngine>,
    llm_path: PathBuf,
    tokenizer: Arc<Tokenizer>,
}

/// The same tiny pair as `tests/relay.rs`: a tiny SLM and a wider, differently-seeded "LLM".
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
    let tokenizer = Arc::new(Tokenizer::load_for_model(&slm_path).unwrap());
    Tiny {
        dir,
        slm,
        llm_path,
        tokenizer,
    }
}

fn remote(url: &str, tokenizer: &Tokenizer) -> RemoteEngine {
    let mut config = RemoteConfig::new(url);
    config.eos_token_ids = tokenizer.eos_ids().to_vec();
    config.timeout = Duration::from_secs(10);
    config.retries = 1;
    config.backoff = Duration::from_millis(20);
    RemoteEngine::connect(config).expect("connect to llama-server")
}

fn prompt(t: &Tiny) -> Vec<u32> {
    t.tokenizer
        .encode(
            "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap()
}

fn relay_request(prompt: Vec<u32>) -> RelayRequest {
    let mut config = RelayConfig::default();
    config.policy.kind = PolicyKind::Confidence;
    config.policy.threshold = 0.9; // random weights are never confident: calls happen
    config.policy.call_tokens = 3;
    config.policy.cooldown = 4;
    config.limits.max_calls = 5;
    config.limits.max_response_tokens = 48;
    RelayRequest {
        slm_prompt: prompt.clone(),
        llm_prompt: prompt,
        config,
        sampling: SamplingParams::greedy(),
        retry: LlmRetry {
            attempts: 2,
            backoff: Duration::from_millis(10),
            token_timeout: Duration::from_secs(30),
        },
        cancel: None,
    }
}

#[test]
#[ignore = "needs llama-server: run scripts/build-llama-cpp.sh, then cargo test --test remote -- --ignored"]
fn greedy_tokens_equal_llama_server_completion() {
    let t = tiny_pair();
    let server = LlamaServer::start(&t.llm_path);
    let engine = remote(&server.url, &t.tokenizer);
    assert_eq!(
        engine.info().vocab_size,
        tiny_vocab::TINY_VOCAB_SIZE,
        "vocab size from /v1/models"
    );
    let prompt = prompt(&t);
    const N: usize = 24;

    // llama-server's own greedy continuation, through its native endpoint.
    let native: Value = ureq::post(&format!("{}/completion", server.url))
        .send_json(
            json!({"prompt": prompt, "n_predict": N, "temperature": 0.0, "top_k": 1,
                          "ignore_eos": true, "return_tokens": true, "cache_prompt": false}),
        )
        .unwrap()
        .into_json()
        .unwrap();
    let expected: Vec<u32> = native["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(expected.len(), N, "{native}");

    // Ours: prefill + step over the engine trait, argmax of the returned top-k "logits".
    let seq = engine.create_sequence().unwrap();
    let mut logits = engine.prefill(seq, &prompt).unwrap();
    let mut got = Vec::new();
    for _ in 0..N {
        assert_eq!(logits.len(), tiny_vocab::TINY_VOCAB_SIZE);
        let finite = logits.iter().filter(|x| x.is_finite()).count();
        assert!(
            (1..=20).contains(&finite),
            "top-k log-probs only, got {finite} finite entries"
        );
        let tok = argmax(&logits) as u32;
        got.push(tok);
        logits = engine.step(&[(seq, tok)]).unwrap().pop().unwrap();
    }
    eprintln!("llama-server greedy: {expected:?}");
    let distinct: std::collections::HashSet<_> = expected.iter().collect();
    assert!(
        distinct.len() > 1,
        "a degenerate continuation would prove little: {expected:?}"
    );
    assert_eq!(
        got, expected,
        "RemoteEngine greedy vs llama-server /completion"
    );
    assert_eq!(engine.seq_len(seq).unwrap(), prompt.len() + N);

    // Truncate back and let the server decode the same tokens in one call.
    engine.truncate(seq, prompt.len()).unwrap();
    let fork = engine.fork(seq).unwrap();
    let batch = engine.generate(fork, 8).unwrap();
    let ids: Vec<u32> = batch.iter().map(|t| t.id).collect();
    // The server stops at EOS in `generate`; compare what came back.
    assert!(
        !ids.is_empty() && ids[..] == expected[..ids.len()],
        "generate {ids:?} vs {expected:?}"
    );
    assert_eq!(engine.seq_len(fork).unwrap(), prompt.len() + ids.len());
    assert_eq!(
        engine.seq_len(seq).unwrap(),
        prompt.len(),
        "the fork evolves alone"
    );
    engine.free(fork).unwrap();
    engine.free(seq).unwrap();
    assert!(matches!(
        engine.free(seq),
        Err(EngineError::UnknownSequence(_))
    ));

    // More contexts (random weights settle into repeats; other prompts move them).
    for text in [
        "hello world",
        "<|im_start|>system\nBe brief.<|im_end|>\n",
        "12 + 30 = 42. 7 * 6",
    ] {
        let p = t.tokenizer.encode(text, false).unwrap();
        let native: Value = ureq::post(&format!("{}/completion", server.url))
            .send_json(
                json!({"prompt": p, "n_predict": 8, "temperature": 0.0, "top_k": 1,
                              "ignore_eos": true, "return_tokens": true}),
            )
            .unwrap()
            .into_json()
            .unwrap();
        let want: Vec<u32> = native["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let seq = engine.create_sequence().unwrap();
        let mut logits = engine.prefill(seq, &p).unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let tok = argmax(&logits) as u32;
            got.push(tok);
            logits = engine.step(&[(seq, tok)]).unwrap().pop().unwrap();
        }
        assert_eq!(got, want, "prompt {text:?}");
        engine.free(seq).unwrap();
    }
}

/// llama.cpp reads our GGUF as candle does: the server's top log-probs after a prompt equal
/// candle's log-softmax on the same file (ids exactly, values closely).
#[test]
#[ignore = "needs llama-server: run scripts/build-llama-cpp.sh, then cargo test --test remote -- --ignored"]
fn llama_server_log_probs_match_candle_on_our_gguf() {
    let t = tiny_pair();
    let server = LlamaServer::start(&t.llm_path);
    let engine = remote(&server.url, &t.tokenizer);
    let candle = CandleEngine::load(&t.llm_path, LoadOptions::default()).unwrap();
    let prompt = prompt(&t);
    let remote_logits = {
        let seq = engine.create_sequence().unwrap();
        engine.prefill(seq, &prompt).unwrap()
    };
    let local = {
        let seq = candle.create_sequence().unwrap();
        let logits = candle.prefill(seq, &prompt).unwrap();
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + logits.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
        logits.iter().map(|x| x - lse).collect::<Vec<f32>>()
    };
    let mut top: Vec<(usize, f32)> = remote_logits
        .iter()
        .cloned()
        .enumerate()
        .filter(|(_, x)| x.is_finite())
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!("llama-server top-5: {:?}", &top[..5]);
    assert_eq!(top[0].0, argmax(&local), "top-1 id");
    for &(id, lp) in &top[..5] {
        assert!(
            (lp - local[id]).abs() < 0.05,
            "token {id}: llama.cpp {lp} vs candle {}",
            local[id]
        );
    }
}

#[test]
#[ignore = "needs llama-server: run scripts/build-llama-cpp.sh, then cargo test --test remote -- --ignored"]
fn relay_serves_calls_through_llama_server() {
    let t = tiny_pair();
    let server = LlamaServer::start(&t.llm_path);
    let llm = Arc::new(remote(&server.url, &t.tokenizer));
    let pair = RelayPair {
        slm: t.slm.clone(),
        llm: llm.clone(),
        slm_tokenizer: t.tokenizer.clone(),
        llm_tokenizer: None,
        llm_read_ahead: 0,
    };
    let req = relay_request(prompt(&t));
    let out = relay(&pair, &req, |_| {}).expect("relay");
    let trace = &out.trace;
    eprintln!("calls: {:?}", trace.calls);
    assert!(
        !trace.calls.is_empty(),
        "the confidence policy calls the LLM"
    );
    assert!(
        trace
            .calls
            .iter()
            .all(|c| c.llm_error.is_none() && c.served > 0),
        "{:?}",
        trace.calls
    );
    let llm_tokens = out.sources.iter().filter(|s| **s == Source::Llm).count();
    assert_eq!(
        llm_tokens,
        trace.calls.iter().map(|c| c.served as usize).sum::<usize>()
    );
    // Every LLM token is the server's greedy choice for its context (LLM view = ids here).
    let mut context = prompt(&t);
    for (&tok, &src) in out.tokens.iter().zip(&out.sources) {
        if src == Source::Llm {
            let next = llm.complete(&context, 1, 20, false).unwrap();
            let best = next[0]
                .top
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap()
                .0;
            assert_eq!(best, tok, "LLM token at context length {}", context.len());
        }
        context.push(tok);
    }

    // A context where the LLM's greedy choice is EOS (llama.cpp then reports no log-probs
    // unless asked to ignore EOS): calls still get a distribution, nothing fails.
    let mut req = relay_request(t.tokenizer.encode("What is 12 + 30?", false).unwrap());
    req.config.limits.max_response_tokens = 40;
    let out = relay(&pair, &req, |_| {}).expect("relay");
    eprintln!("calls: {:?}", out.trace.calls);
    assert!(
        out.trace.calls.iter().all(|c| c.llm_error.is_none()),
        "{:?}",
        out.trace.calls
    );
    drop(t.dir);
}

#[test]
#[ignore = "needs llama-server: run scripts/build-llama-cpp.sh, then cargo test --test remote -- --ignored"]
fn killing_llama_server_mid_run_leaves_the_slm_to_finish() {
    let t = tiny_pair();
    let mut server = Some(LlamaServer::start(&t.llm_path));
    let url = server.as_ref().unwrap().url.clone();
    let llm = Arc::new(remote(&url, &t.tokenizer));
    let pair = RelayPair {
        slm: t.slm.clone(),
        llm,
        slm_tokenizer: t.tokenizer.clone(),
        llm_tokenizer: None,
        llm_read_ahead: 0,
    };
    let mut req = relay_request(prompt(&t));
    req.config.limits.max_calls = 8;
    req.config.limits.max_response_tokens = 64;
    let mut killed_at = None;
    let mut position = 0usize;
    let out = relay(&pair, &req, |e| {
        if let RelayEvent::Text {
            source: Source::Llm,
            ..
        } = e
        {
            if let Some(mut s) = server.take() {
                s.kill(); // mid-call: the call's next token already fails
                killed_at = Some(position);
            }
        }
        if let RelayEvent::Text { .. } = e {
            position += 1;
        }
    })
    .expect("the request completes without the LLM");
    assert!(killed_at.is_some(), "the LLM was called before the kill");
    let trace = &out.trace;
    eprintln!("calls: {:?}", trace.calls);
    let errors: Vec<&str> = trace
        .calls
        .iter()
        .filter_map(|c| c.llm_error.as_deref())
        .collect();
    assert!(
        !errors.is_empty(),
        "the trace records the LLM error: {:?}",
        trace.calls
    );
    assert!(
        errors.iter().all(|e| e.contains("127.0.0.1")),
        "errors name the server: {errors:?}"
    );
    assert!(
        out.sources.iter().any(|s| *s == Source::Llm),
        "tokens served before the kill stay"
    );
    assert!(
        out.sources
            .iter()
            .rev()
            .take_while(|s| **s == Source::Slm)
            .count()
            > 0,
        "the SLM wrote on after the failure: {:?}",
        out.sources
    );
}

// ---------------------------------------------------------------------------------------------
// Error paths against an in-process stub (not evidence that the engine works)

/// What the stub answers to the n-th request (counting from 0): a status and body, or `None`
/// to hold the connection without answering.
type Reply = Box<dyn Fn(usize, &str) -> Option<(u16, String)> + Send + Sync>;

struct Stub {
    url: String,
    requests: Arc<AtomicUsize>,
}

fn stub(reply: Reply) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let reply = Arc::new(reply);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let reply = reply.clone();
            std::thread::spawn(move || serve_one(stream, n, &*reply));
        }
    });
    Stub { url, requests }
}

fn serve_one(
    mut stream: TcpStream,
    n: usize,
    reply: &(dyn Fn(usize, &str) -> Option<(u16, String)> + Send + Sync),
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    match reply(n, &path) {
        Some((status, body)) => {
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        None => std::thread::sleep(Duration::from_secs(5)),
    }
}

const MODELS: &str = r#"{"object":"list","data":[{"id":"stub","meta":{"n_vocab":50,"n_ctx":64}}]}"#;

fn completion(id: u32, top: &[(u32, f32)]) -> String {
    let top: Vec<Value> = top
        .iter()
        .map(|(i, lp)| json!({"id": i, "token": "t", "logprob": lp}))
        .collect();
    json!({"choices": [{"text": "t", "index": 0, "finish_reason": "length",
        "logprobs": {"content": [{"id": id, "token": "t", "logprob": -0.1, "top_logprobs": top}]}}]})
    .to_string()
}

fn stub_config(url: &str) -> RemoteConfig {
    let mut c = RemoteConfig::new(url);
    c.timeout = Duration::from_millis(500);
    c.retries = 2;
    c.backoff = Duration::from_millis(5);
    c
}

#[test]
fn logits_hold_the_top_k_at_their_ids_and_sequences_stay_local() {
    let s = stub(Box::new(|_, path| {
        Some(if path == "/v1/models" {
            (200, MODELS.into())
        } else {
            (200, completion(7, &[(7, -0.1), (3, -2.5)]))
        })
    }));
    let e = RemoteEngine::connect(stub_config(&s.url)).unwrap();
    assert_eq!(
        (
            e.info().vocab_size,
            e.info().context_length,
            e.info().name.as_str()
        ),
        (50, 64, "stub")
    );
    let seq = e.create_sequence().unwrap();
    let logits = e.prefill(seq, &[1, 2, 3]).unwrap();
    assert_eq!(logits.len(), 50);
    assert_eq!((logits[7], logits[3]), (-0.1, -2.5));
    assert_eq!(logits.iter().filter(|x| x.is_finite()).count(), 2);
    assert_eq!(argmax(&logits), 7usize);
    let before = s.requests.load(Ordering::SeqCst);
    let fork = e.fork(seq).unwrap();
    e.truncate(fork, 1).unwrap();
    assert_eq!((e.seq_len(seq).unwrap(), e.seq_len(fork).unwrap()), (3, 1));
    e.free(fork).unwrap();
    assert_eq!(
        s.requests.load(Ordering::SeqCst),
        before,
        "truncate/fork/free send nothing"
    );
    assert!(matches!(
        e.prefill(seq, &[50]),
        Err(EngineError::TokenOutOfVocab { id: 50, .. })
    ));
    assert!(matches!(
        e.prefill(seq, &[1; 62]),
        Err(EngineError::ContextOverflow { .. })
    ));
    assert_eq!(
        e.seq_len(seq).unwrap(),
        3,
        "a rejected prefill leaves the sequence as it was"
    );
}

#[test]
fn a_5xx_is_retried_with_backoff() {
    let s = stub(Box::new(|n, path| {
        Some(match (n, path) {
            (_, "/v1/models") => (200, MODELS.into()),
            (1 | 2, _) => (503, r#"{"error":"loading"}"#.into()),
            _ => (200, completion(4, &[(4, -0.2)])),
        })
    }));
    let e = RemoteEngine::connect(stub_config(&s.url)).unwrap();
    let seq = e.create_sequence().unwrap();
    let logits = e.prefill(seq, &[1]).unwrap();
    assert_eq!(argmax(&logits), 4);
    assert_eq!(
        s.requests.load(Ordering::SeqCst),
        4,
        "models + 2 failures + success"
    );
}

#[test]
fn a_persistent_5xx_fails_after_the_retries_and_leaves_the_sequence() {
    let s = stub(Box::new(|_, path| {
        Some(if path == "/v1/models" {
            (200, MODELS.into())
        } else {
            (500, r#"{"error":"boom"}"#.into())
        })
    }));
    let e = RemoteEngine::connect(stub_config(&s.url)).unwrap();
    let seq = e.create_sequence().unwrap();
    let err = e.prefill(seq, &[1, 2]).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Upstream {
                status: Some(500),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("HTTP 500") && err.to_string().contains("boom"),
        "{err}"
    );
    assert_eq!(
        s.requests.load(Ordering::SeqCst),
        1 + 3,
        "models + 1 try + 2 retries"
    );
    assert_eq!(e.seq_len(seq).unwrap(), 0);
}

#[test]
fn a_4xx_is_not_retried() {
    let s = stub(Box::new(|_, path| {
        Some(if path == "/v1/models" {
            (200, MODELS.into())
        } else {
            (400, r#"{"error":"bad prompt"}"#.into())
        })
    }));
    let e = RemoteEngine::connect(stub_config(&s.url)).unwrap();
    let seq = e.create_sequence().unwrap();
    let err = e.prefill(seq, &[1]).unwrap_err();
    assert!(
        matches!(&err, EngineError::Upstream { status: Some(400), message, .. } if message.contains("bad prompt")),
        "{err:?}"
    );
    assert_eq!(s.requests.load(Ordering::SeqCst), 2);
}

#[test]
fn malformed_json_and_missing_logprobs_are_clear_errors() {
    let s = stub(Box::new(|n, path| {
        Some(match (n, path) {
            (_, "/v1/models") => (200, MODELS.into()),
            (1, _) => (200, "{not json".into()),
            _ => (200, r#"{"choices":[{"text":"x","logprobs":null}]}"#.into()),
        })
    }));
    let e = RemoteEngine::connect(stub_config(&s.url)).unwrap();
    let seq = e.create_sequence().unwrap();
    let err = e.prefill(seq, &[1]).unwrap_err().to_string();
    assert!(
        err.contains("malformed response") && err.contains("not JSON"),
        "{err}"
    );
    let err = e.prefill(seq, &[1]).unwrap_err().to_string();
    assert!(err.contains("no logprobs"), "{err}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    let s = stub(Box::new(|_, path| {
        if path == "/v1/models" {
            Some((200, MODELS.into()))
        } else {
            None
        }
    }));
    let mut c = stub_config(&s.url);
    c.retries = 1;
    let e = RemoteEngine::connect(c).unwrap();
    let seq = e.create_sequence().unwrap();
    let start = Instant::now();
    let err = e.prefill(seq, &[1]).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(&err, EngineError::Timeout { after, .. } if *after == Duration::from_millis(500)),
        "{err:?}"
    );
    assert_eq!(
        s.requests.load(Ordering::SeqCst),
        3,
        "models + 1 try + 1 retry"
    );
}

/// Whose fault a failure is shows in its type, never only in its text: a server that refuses
/// (401: not retried), one that fails (500) or is overloaded (503: both retried), and one that
/// never answers.
#[test]
fn refused_failed_and_silent_servers_give_typed_errors_with_their_status() {
    for (status, tries) in [(401, 1), (500, 3), (503, 3)] {
        let s = stub(Box::new(move |_, path| {
            Some(if path == "/v1/models" {
                (200, MODELS.into())
            } else {
                (status, r#"{"error":{"message":"nope"}}"#.into())
            })
        }));
        let e = RemoteEngine::connect(stub_config(&s.url)).unwrap();
        let seq = e.create_sequence().unwrap();
        let err = e.prefill(seq, &[1]).unwrap_err();
        match &err {
            EngineError::Upstream {
                url,
                status: Some(got),
                message,
            } => {
                assert_eq!(*got, status, "{err}");
                assert_eq!(*url, format!("{}/v1/completions", s.url));
                assert!(message.contains("nope"), "{err}");
                assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
            }
            other => panic!("HTTP {status}: {other:?}"),
        }
        assert_eq!(err.label(), "upstream");
        assert_eq!(
            s.requests.load(Ordering::SeqCst),
            1 + tries,
            "HTTP {status}"
        );
    }

    let silent = stub(Box::new(|_, path| {
        (path == "/v1/models").then(|| (200, MODELS.into()))
    }));
    let mut c = stub_config(&silent.url);
    c.retries = 0;
    let e = RemoteEngine::connect(c).unwrap();
    let seq = e.create_sequence().unwrap();
    let err = e.prefill(seq, &[1]).unwrap_err();
    assert!(
        matches!(&err, EngineError::Timeout { url, after }
            if *url == format!("{}/v1/completions", silent.url) && *after == Duration::from_millis(500)),
        "{err:?}"
    );
    assert_eq!(err.label(), "upstream_timeout");
}

#[test]
fn connection_refused_and_bad_urls_fail_at_connect() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // freed: refused
    let mut c = stub_config(&format!("http://127.0.0.1:{port}"));
    c.retries = 0;
    let err = RemoteEngine::connect(c).unwrap_err();
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(matches!(err, EngineError::Unreachable { .. }), "{err:?}");
    assert!(matches!(
        RemoteEngine::connect(RemoteConfig::new("ftp://x")),
        Err(EngineError::InvalidInput(_))
    ));
    assert!(matches!(
        RemoteEngine::connect(RemoteConfig::new("https://x")),
        Err(EngineError::Unsupported(_))
    ));
}

#[test]
fn vocab_size_must_come_from_the_server_or_the_caller() {
    let s = stub(Box::new(|_, _| {
        Some((200, r#"{"data":[{"id":"m"}]}"#.into()))
    }));
    let err = RemoteEngine::connect(stub_config(&s.url)).unwrap_err();
    assert!(
        matches!(&err, EngineError::VocabSizeUnknown { url } if *url == s.url),
        "{err:?}"
    );
    let mut c = stub_config(&s.url);
    c.vocab_size = Some(10);
    let e = RemoteEngine::connect(c).unwrap();
    assert_eq!((e.info().vocab_size, e.info().name.as_str()), (10, "m"));
}

#[test]
fn openai_legacy_logprobs_with_token_ids_parse() {
    let v = json!({"tokens": ["token_id:5"], "token_logprobs": [-0.3],
                   "top_logprobs": [{"token_id:5": -0.3, "token_id:9": -1.0}]});
    let t = relay_engine::remote::parse_logprobs(&v).unwrap();
    assert_eq!(
        (t[0].id, t[0].logprob, t[0].top.clone()),
        (5, -0.3, vec![(5, -0.3), (9, -1.0)])
    );
    let err = relay_engine::remote::parse_logprobs(
        &json!({"tokens": ["hello"], "token_logprobs": [-0.3]}),
    )
    .unwrap_err();
    assert!(err.contains("return_tokens_as_token_ids"), "{err}");
}
