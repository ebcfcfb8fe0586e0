//! The llama.cpp engine against the candle engine on the same tiny GGUF files: the same
//! logits up to kernel differences, and the same greedy tokens. Only with the `llama-cpp`
//! feature (`make test-llama-cpp`).
//!
//! Tolerance (max |Δlogit|; these random models have logits of order 10): with the engine's
//! defaults (F32 KV cache, no flash attention) F32 and Q4_K files agree to ~1e-5, only
//! summation order differing, so 1e-4. Q8_0 differs by ~0.24: candle's Q8 kernels quantize the
//! activations per row, ggml's per 32-value block, so 0.5 there; greedy tokens still agree.
#![cfg(feature = "llama-cpp")]

use relay_engine::testing::max_diff;
use std::sync::Arc;

use relay_engine::model::load_engine;
use relay_engine::sampling::argmax;
use relay_engine::testing::write_tiny_pair;
use relay_engine::tiny::{tiny_engines, TinyConfig, TinyWeights};
use relay_engine::{Engine, EngineKind, LoadOptions};

/// The candle engine and the llama.cpp engine on one tiny model.
fn pair(cfg: &TinyConfig) -> (Arc<dyn Engine>, Arc<dyn Engine>, tempfile::TempDir) {
    let (es, dir) = tiny_engines(cfg, LoadOptions::default()).unwrap();
    assert_eq!(
        es.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [EngineKind::Candle, EngineKind::LlamaCpp]
    );
    let mut it = es.into_iter().map(|(_, e)| e);
    (it.next().unwrap(), it.next().unwrap(), dir)
}

/// Prefill `prompt`, then `n` greedy tokens, one `step` each.
fn greedy(e: &dyn Engine, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let s = e.create_sequence().unwrap();
    let mut logits = e.prefill(s, prompt).unwrap();
    let mut out = Vec::new();
    let mut all = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits) as u32;
        out.push(t);
        all.push(logits);
        logits = e.step(&[(s, t)]).unwrap().remove(0);
    }
    e.free(s).unwrap();
    (out, all)
}

#[test]
fn same_info_logits_and_greedy_tokens_on_tiny_models() {
    let prompt: Vec<u32> = vec![5, 17, 300, 42, 9, 111, 250, 3];
    for (cfg, tol) in [
        (TinyConfig::qwen2(), 1e-4),
        (TinyConfig::qwen3(), 1e-4),
        (TinyConfig::qwen2().with_weights(TinyWeights::Q8_0), 0.5),
        (TinyConfig::qwen3().with_weights(TinyWeights::Q4K), 1e-4),
    ] {
        let (candle, llama, _d) = pair(&cfg);
        let (ci, li) = (candle.info(), llama.info());
        assert_eq!(ci.vocab_size, li.vocab_size);
        assert_eq!(ci.context_length, li.context_length);
        assert_eq!(ci.eos_token_ids, li.eos_token_ids);
        assert_eq!(ci.architecture, li.architecture);
        let (ct, cl) = greedy(candle.as_ref(), &prompt, 24);
        let (lt, ll) = greedy(llama.as_ref(), &prompt, 24);
        let worst = cl
            .iter()
            .zip(&ll)
            .map(|(a, b)| max_diff(a, b))
            .fold(0.0, f32::max);
        eprintln!(
            "{:?} {:?}: max |Δlogit| candle vs llama.cpp over 24 steps: {worst:.2e}",
            cfg.arch, cfg.weights
        );
        assert!(
            worst <= tol,
            "{:?} {:?}: candle vs llama.cpp logits differ by {worst}",
            cfg.arch,
            cfg.weights
        );
        // Near-ties could flip a token; at this tolerance on these seeds none does.
        assert_eq!(
            ct, lt,
            "{:?} {:?}: greedy tokens differ",
            cfg.arch, cfg.weights
        );
        // Scores agree too.
        let cs = candle.score(&prompt).unwrap();
        let ls = llama.score(&prompt).unwrap();
        assert!(
            max_diff(&cs, &ls) <= 2.0 * tol,
            "{:?}: scores differ",
            cfg.arch
        );
    }
}

#[test]
fn the_tiny_pair_with_its_vocabulary_loads_and_decodes_alike() {
    // The files the CLI and server tests use: a real BPE vocabulary and chat template in the
    // GGUF, which llama.cpp parses (our tokenizer stays the one in use).
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    for path in [slm, llm] {
        let load = |engine| {
            load_engine(
                &path,
                LoadOptions {
                    engine,
                    ..LoadOptions::default()
                },
            )
            .unwrap()
        };
        let (candle, llama) = (load(EngineKind::Candle), load(EngineKind::LlamaCpp));
        assert_eq!(candle.info().vocab_size, llama.info().vocab_size);
        assert_eq!(candle.info().eos_token_ids, llama.info().eos_token_ids);
        let prompt: Vec<u32> = (0..20).map(|i| (i * 37 + 11) % 200).collect();
        let (ct, _) = greedy(candle.as_ref(), &prompt, 16);
        let (lt, _) = greedy(llama.as_ref(), &prompt, 16);
        assert_eq!(ct, lt, "{}: greedy tokens differ", path.display());
    }
}

#[test]
fn many_sequences_forks_and_long_prefill() {
    // Past one llama_batch (512 tokens) in a prefill and in a score, and more live sequences
    // than a handful, with forks sharing a prefix.
    let cfg = TinyConfig {
        context_length: 1200,
        ..TinyConfig::qwen2()
    };
    let (candle, llama, _d) = pair(&cfg);
    let long: Vec<u32> = (0..1100u32).map(|i| (i * 31 + 7) % 320).collect();
    for e in [&candle, &llama] {
        let s = e.create_sequence().unwrap();
        let l = e.prefill(s, &long).unwrap();
        assert_eq!(l.len(), 320);
        assert_eq!(e.seq_len(s).unwrap(), 1100);
        let forks: Vec<_> = (0..40).map(|_| e.fork(s).unwrap()).collect();
        let batch: Vec<_> = forks
            .iter()
            .enumerate()
            .map(|(i, &f)| (f, i as u32))
            .collect();
        let out = e.step(&batch).unwrap();
        assert_eq!(out.len(), 40);
        for f in forks {
            e.free(f).unwrap();
        }
        e.free(s).unwrap();
    }
    let a = candle.score(&long).unwrap();
    let b = llama.score(&long).unwrap();
    assert_eq!(a.len(), 1099);
    assert!(
        max_diff(&a, &b) <= 1e-3,
        "long score differs by {}",
        max_diff(&a, &b)
    );
}

/// The relay loop itself on two llama.cpp engines (what `relayllm relay|eval|serve --engine
/// llama-cpp` run): the same tokens, sources and calls as on two candle engines, with calls
/// served.
#[test]
fn the_relay_runs_alike_on_both_engines() {
    use relay_core::{PolicyKind, RelayConfig, Source};
    use relay_engine::relay::{relay, LlmRetry, RelayPair, RelayRequest};
    use relay_engine::sampling::SamplingParams;
    use relay_engine::tokenizer::Tokenizer;

    let dir = tempfile::tempdir().unwrap();
    let (slm_path, llm_path) = write_tiny_pair(dir.path(), 512);
    let tokenizer = Arc::new(Tokenizer::load_for_model(&slm_path).unwrap());
    let prompt = tokenizer
        .encode(
            "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let mut config = RelayConfig::default();
    config.policy.kind = PolicyKind::Confidence;
    config.policy.threshold = 0.9; // random weights are never this sure: calls happen
    config.policy.call_tokens = 3;
    config.policy.cooldown = 4;
    config.limits.max_calls = 4;
    config.limits.max_response_tokens = 40;
    let request = RelayRequest {
        slm_prompt: prompt.clone(),
        llm_prompt: prompt,
        config,
        sampling: SamplingParams::greedy(),
        retry: LlmRetry {
            attempts: 1,
            backoff: std::time::Duration::from_millis(1),
            token_timeout: std::time::Duration::from_secs(30),
        },
        cancel: None,
    };
    let run = |engine: EngineKind| {
        let load = |p: &std::path::Path| {
            load_engine(
                p,
                LoadOptions {
                    engine,
                    ..LoadOptions::default()
                },
            )
            .unwrap()
        };
        let pair = RelayPair {
            slm: load(&slm_path),
            llm: load(&llm_path),
            slm_tokenizer: tokenizer.clone(),
            llm_tokenizer: None,
            llm_read_ahead: 0,
        };
        let out = relay(&pair, &request, |_| {}).unwrap();
        out.trace.check().unwrap();
        out
    };
    let (candle, llama) = (run(EngineKind::Candle), run(EngineKind::LlamaCpp));
    assert!(
        llama.sources.contains(&Source::Llm) && llama.sources.contains(&Source::Slm),
        "no call was served on llama.cpp: {:?}",
        llama.trace
    );
    assert_eq!(candle.tokens, llama.tokens);
    assert_eq!(candle.sources, llama.sources);
    let calls = |o: &relay_engine::relay::RelayOutput| {
        o.trace
            .calls
            .iter()
            .map(|c| (c.requested_n, c.served))
            .collect::<Vec<_>>()
    };
    assert_eq!(calls(&candle), calls(&llama));
}
