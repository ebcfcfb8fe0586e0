//! KV cache behaviour of every engine this build has (candle; llama.cpp with the `llama-cpp`
//! feature) on tiny random models: a warm cache gives the same logits as recomputing from
//! scratch, chunks can be prefilled mid-sequence, truncate and fork behave, and `score` agrees
//! with step-by-step log-softmax.
//!
//! Tolerance: max |Δlogit| ≤ 1e-4 for F32 weights (only summation order differs between a
//! cached and a recomputed run); 1e-3 for Q8_0 (activations are quantized per row, so rows see
//! the same inputs either way, leaving only float reassociation).

use relay_engine::testing::max_diff;
use relay_engine::tiny::{tiny_engine, tiny_engines, TinyConfig, TinyFormat, TinyWeights};
use relay_engine::{CandleEngine, Engine, EngineKind, LoadOptions};
use std::sync::Arc;

fn configs() -> Vec<(TinyConfig, f32)> {
    vec![
        (TinyConfig::qwen2(), 1e-4),
        (TinyConfig::qwen3(), 1e-4),
        (TinyConfig::qwen2().with_weights(TinyWeights::Q8_0), 1e-3),
        (TinyConfig::qwen3().with_weights(TinyWeights::Q4K), 1e-3),
    ]
}

fn candle(cfg: &TinyConfig) -> (CandleEngine, tempfile::TempDir) {
    tiny_engine(cfg, TinyFormat::Gguf, LoadOptions::default()).unwrap()
}

/// Every engine of this build on the tiny model `cfg`.
fn engines(cfg: &TinyConfig) -> (Vec<(EngineKind, Arc<dyn Engine>)>, tempfile::TempDir) {
    tiny_engines(cfg, LoadOptions::default()).unwrap()
}

/// Logits after the last token of a fresh, one-shot prefill of `tokens`.
fn fresh(e: &dyn Engine, tokens: &[u32]) -> Vec<f32> {
    let s = e.create_sequence().unwrap();
    let l = e.prefill(s, tokens).unwrap();
    e.free(s).unwrap();
    l
}

const TOKENS: [u32; 16] = [
    5, 17, 300, 42, 9, 111, 250, 3, 77, 180, 64, 12, 199, 8, 140, 31,
];

#[test]
fn incremental_decode_matches_recompute() {
    for (cfg, tol) in configs() {
        let (es, _d) = engines(&cfg);
        for (kind, e) in &es {
            let e: &dyn Engine = e.as_ref();
            let s = e.create_sequence().unwrap();
            let mut logits = e.prefill(s, &TOKENS[..4]).unwrap();
            assert_eq!(logits.len(), cfg.vocab_size);
            for i in 4..TOKENS.len() {
                let d = max_diff(&logits, &fresh(e, &TOKENS[..i]));
                assert!(
                    d <= tol,
                    "{kind:?} {:?} {:?}: after {i} tokens, cached vs recomputed differ by {d}",
                    cfg.arch,
                    cfg.weights
                );
                logits = e.step(&[(s, TOKENS[i])]).unwrap().remove(0);
            }
            assert_eq!(e.seq_len(s).unwrap(), TOKENS.len());
            assert!(max_diff(&logits, &fresh(e, &TOKENS)) <= tol);
        }
    }
}

#[test]
fn logits_depend_on_context() {
    // Guards the tests above against a model whose output ignores the cache.
    let (es, _d) = engines(&TinyConfig::qwen2());
    for (kind, e) in &es {
        let a = fresh(e.as_ref(), &[1, 2, 3, 4]);
        let b = fresh(e.as_ref(), &[9, 2, 3, 4]);
        assert!(
            max_diff(&a, &b) > 1e-2,
            "{kind:?}: different prefixes must give different logits"
        );
    }
}

#[test]
fn foreign_chunk_mid_sequence_equals_one_prefill() {
    for (cfg, tol) in configs() {
        let (es, _d) = engines(&cfg);
        for (kind, e) in &es {
            let e: &dyn Engine = e.as_ref();
            let s = e.create_sequence().unwrap();
            e.prefill(s, &TOKENS[..5]).unwrap();
            e.step(&[(s, TOKENS[5])]).unwrap();
            e.step(&[(s, TOKENS[6])]).unwrap();
            // Another model's tokens arrive as a chunk, then decoding goes on.
            e.prefill(s, &TOKENS[7..12]).unwrap();
            let l = e.step(&[(s, TOKENS[12])]).unwrap().remove(0);
            let d = max_diff(&l, &fresh(e, &TOKENS[..13]));
            assert!(
                d <= tol,
                "{kind:?} {:?}: chunked vs one prefill differ by {d}",
                cfg.arch
            );
            assert_eq!(e.seq_len(s).unwrap(), 13);
        }
    }
}

#[test]
fn truncate_then_redecode_equals_fresh_run() {
    for (cfg, tol) in configs() {
        let (es, _d) = engines(&cfg);
        for (kind, e) in &es {
            let e: &dyn Engine = e.as_ref();
            let s = e.create_sequence().unwrap();
            e.prefill(s, &TOKENS).unwrap();
            e.truncate(s, 6).unwrap();
            assert_eq!(e.seq_len(s).unwrap(), 6);
            // Different continuation than the one that was cut off.
            let l = e.prefill(s, &[100, 101, 102]).unwrap();
            let mut expect: Vec<u32> = TOKENS[..6].to_vec();
            expect.extend([100, 101, 102]);
            let d = max_diff(&l, &fresh(e, &expect));
            assert!(
                d <= tol,
                "{kind:?} {:?}: truncated+redecoded vs fresh differ by {d}",
                cfg.arch
            );
            let l = e.step(&[(s, 7)]).unwrap().remove(0);
            expect.push(7);
            assert!(max_diff(&l, &fresh(e, &expect)) <= tol);
            // Truncate to zero empties the sequence; it can be refilled.
            e.truncate(s, 0).unwrap();
            assert_eq!(e.seq_len(s).unwrap(), 0);
            let l = e.prefill(s, &TOKENS[..3]).unwrap();
            assert!(max_diff(&l, &fresh(e, &TOKENS[..3])) <= tol);
        }
    }
}

#[test]
fn fork_is_independent() {
    for (cfg, tol) in configs() {
        let (es, _d) = engines(&cfg);
        for (kind, e) in &es {
            let e: &dyn Engine = e.as_ref();
            let a = e.create_sequence().unwrap();
            e.prefill(a, &TOKENS[..6]).unwrap();
            let b = e.fork(a).unwrap();
            assert_ne!(a, b);
            assert_eq!(e.seq_len(b).unwrap(), 6);
            let la = e.prefill(a, &[50, 51]).unwrap();
            let lb = e.prefill(b, &[60, 61, 62]).unwrap();
            let mut ta = TOKENS[..6].to_vec();
            ta.extend([50, 51]);
            let mut tb = TOKENS[..6].to_vec();
            tb.extend([60, 61, 62]);
            assert!(
                max_diff(&la, &fresh(e, &ta)) <= tol,
                "{kind:?} {:?}: original changed by fork",
                cfg.arch
            );
            assert!(
                max_diff(&lb, &fresh(e, &tb)) <= tol,
                "{kind:?} {:?}: fork diverged wrongly",
                cfg.arch
            );
            // Freeing or truncating one leaves the other intact.
            e.truncate(a, 2).unwrap();
            e.free(a).unwrap();
            assert_eq!(e.seq_len(b).unwrap(), 9);
            let lb = e.step(&[(b, 7)]).unwrap().remove(0);
            tb.push(7);
            assert!(max_diff(&lb, &fresh(e, &tb)) <= tol);
        }
    }
}

#[test]
fn cache_grows_geometrically_and_truncate_keeps_capacity() {
    let cfg = TinyConfig {
        context_length: 4096,
        ..TinyConfig::qwen2()
    };
    let (e, _d) = candle(&cfg);
    let s = e.create_sequence().unwrap();
    assert_eq!(e.cache_capacity(s).unwrap(), 0);
    e.prefill(s, &[1]).unwrap();
    let mut caps = vec![e.cache_capacity(s).unwrap()];
    for i in 0..300u32 {
        e.step(&[(s, i % 300)]).unwrap();
        let c = e.cache_capacity(s).unwrap();
        assert!(c >= e.seq_len(s).unwrap());
        if c != *caps.last().unwrap() {
            caps.push(c);
        }
    }
    // 301 tokens in a handful of doublings, not one reallocation per token.
    assert_eq!(caps, vec![64, 128, 256, 512]);
    e.truncate(s, 10).unwrap();
    assert_eq!(e.cache_capacity(s).unwrap(), 512);
    assert_eq!(e.num_sequences(), 1);
    e.free(s).unwrap();
    assert_eq!(e.num_sequences(), 0);
}

#[test]
fn score_matches_step_by_step_log_softmax() {
    for (cfg, tol) in configs() {
        let (es, _d) = engines(&cfg);
        for (kind, e) in &es {
            let e: &dyn Engine = e.as_ref();
            let scores = e.score(&TOKENS[..10]).unwrap();
            assert_eq!(scores.len(), 9);
            let s = e.create_sequence().unwrap();
            let mut logits = e.prefill(s, &TOKENS[..1]).unwrap();
            for i in 1..10 {
                let lp = relay_engine::sampling::log_softmax(&logits)[TOKENS[i] as usize];
                assert!(
                    (lp - scores[i - 1]).abs() <= tol * 2.0,
                    "{kind:?} {:?}: position {i}: score {} vs step {lp}",
                    cfg.arch,
                    scores[i - 1]
                );
                assert!(lp < 0.0);
                if i < 9 {
                    logits = e.step(&[(s, TOKENS[i])]).unwrap().remove(0);
                }
            }
            // Scoring touches no sequence: a score while `s` is live leaves its cache as it was.
            assert_eq!(e.seq_len(s).unwrap(), 9);
            e.score(&TOKENS[2..14]).unwrap();
            assert_eq!(e.seq_len(s).unwrap(), 9);
            let l = e.step(&[(s, TOKENS[9])]).unwrap().remove(0);
            assert!(
                max_diff(&l, &fresh(e, &TOKENS[..10])) <= tol,
                "{kind:?} {:?}: score disturbed a live sequence",
                cfg.arch
            );
            assert!(e.score(&[3]).unwrap().is_empty());
        }
    }
}
