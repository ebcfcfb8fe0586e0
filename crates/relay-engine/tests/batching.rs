//! Batched decode: one `step` over several sequences equals stepping each alone, on every
//! engine this build has (candle; llama.cpp with the `llama-cpp` feature).
//! Tolerance: max |Δlogit| ≤ 1e-4 (F32), 1e-3 (Q8_0/Q4_K) — rows are independent in every
//! matmul, so only summation order may differ.

use relay_engine::testing::max_diff;
use relay_engine::tiny::{tiny_engine, tiny_engines, TinyConfig, TinyFormat, TinyWeights};
use relay_engine::{Engine, EngineError, EngineKind, LoadOptions};

/// Every engine of this build on `cfg` in `format` (safetensors folders are candle's alone).
fn engines(
    cfg: &TinyConfig,
    format: TinyFormat,
) -> (Vec<(EngineKind, Arc<dyn Engine>)>, tempfile::TempDir) {
    match format {
        TinyFormat::Gguf => tiny_engines(cfg, LoadOptions::default()).unwrap(),
        TinyFormat::Safetensors => {
            let (e, d) = tiny_engine(cfg, format, LoadOptions::default()).unwrap();
            (
                vec![(EngineKind::Candle, Arc::new(e) as Arc<dyn Engine>)],
                d,
            )
        }
    }
}

#[test]
fn batched_step_equals_per_sequence_steps() {
    let cases = [
        (TinyConfig::qwen2(), TinyFormat::Gguf, 1e-4),
        (TinyConfig::qwen3(), TinyFormat::Gguf, 1e-4),
        (TinyConfig::qwen2(), TinyFormat::Safetensors, 1e-4),
        (
            TinyConfig::qwen2().with_weights(TinyWeights::Q8_0),
            TinyFormat::Gguf,
            1e-3,
        ),
        (
            TinyConfig::qwen2().with_weights(TinyWeights::Q4K),
            TinyFormat::Gguf,
            1e-3,
        ),
    ];
    for (cfg, format, tol) in cases {
        let (es, _d) = engines(&cfg, format);
        for (kind, e) in &es {
            let e: &dyn Engine = e.as_ref();
            // Three sequences of different lengths.
            let prompts: [&[u32]; 3] = [&[1, 2, 3], &[10, 20, 30, 40, 50, 60, 70], &[99]];
            let batch: Vec<_> = prompts
                .iter()
                .map(|p| {
                    let s = e.create_sequence().unwrap();
                    e.prefill(s, p).unwrap();
                    s
                })
                .collect();
            let alone: Vec<_> = batch.iter().map(|&s| e.fork(s).unwrap()).collect();
            for round in 0..4u32 {
                let toks = [5 + round, 100 + round, 200 + round];
                let together = e
                    .step(&[
                        (batch[0], toks[0]),
                        (batch[1], toks[1]),
                        (batch[2], toks[2]),
                    ])
                    .unwrap();
                assert_eq!(together.len(), 3);
                for i in 0..3 {
                    let single = e.step(&[(alone[i], toks[i])]).unwrap().remove(0);
                    let d = max_diff(&together[i], &single);
                    assert!(
                        d <= tol,
                        "{kind:?} {:?} {:?} {:?} round {round} seq {i}: batched vs alone differ by {d}",
                        cfg.arch,
                        cfg.weights,
                        format
                    );
                }
            }
            // Order of the batch does not matter.
            let r1 = e.step(&[(batch[2], 7), (batch[0], 8)]).unwrap();
            let r2 = e.step(&[(alone[0], 8), (alone[2], 7)]).unwrap();
            assert!(max_diff(&r1[0], &r2[1]) <= tol && max_diff(&r1[1], &r2[0]) <= tol);
            for (s, p) in batch.iter().zip(prompts) {
                assert!(e.seq_len(*s).unwrap() >= p.len() + 4);
            }
        }
    }
}

#[test]
fn empty_step_is_empty_and_duplicates_are_rejected() {
    let (es, _d) = engines(&TinyConfig::qwen2(), TinyFormat::Gguf);
    for (kind, e) in &es {
        assert!(e.step(&[]).unwrap().is_empty());
        let s = e.create_sequence().unwrap();
        e.prefill(s, &[1, 2]).unwrap();
        let err = e.step(&[(s, 3), (s, 4)]).unwrap_err();
        assert!(
            matches!(err, EngineError::InvalidInput(_)),
            "{kind:?}: {err}"
        );
        assert_eq!(e.seq_len(s).unwrap(), 2);
    }
}

#[test]
fn engine_is_shareable_across_threads() {
    let (es, _d) = engines(&TinyConfig::qwen3(), TinyFormat::Gguf);
    for (kind, e) in es {
        let expect = {
            let s = e.create_sequence().unwrap();
            let l = e.prefill(s, &[4, 5, 6, 7]).unwrap();
            e.free(s).unwrap();
            l
        };
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let e = e.clone();
                std::thread::spawn(move || {
                    let s = e.create_sequence().unwrap();
                    e.prefill(s, &[4, 5, 6]).unwrap();
                    let l = e.step(&[(s, 7)]).unwrap().remove(0);
                    e.free(s).unwrap();
                    l
                })
            })
            .collect();
        for h in handles {
            assert!(max_diff(&h.join().unwrap(), &expect) <= 1e-4, "{kind:?}");
        }
    }
}

// ---- continuous batching (BatchingEngine) ---------------------------------------------------

use relay_engine::batching::BatchingEngine;
use relay_engine::sampling::argmax;
use std::sync::Arc;
use std::time::Duration;

/// `n` greedy tokens after `prompt`, one `step` at a time, as a request thread decodes.
fn greedy(engine: &dyn Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    greedy_after(engine, prompt, n, None)
}

/// As [`greedy`]; with a barrier, decoding starts when every thread has prefilled (tiny
/// models step in microseconds, so unsynchronised threads would barely overlap).
fn greedy_after(
    engine: &dyn Engine,
    prompt: &[u32],
    n: usize,
    start: Option<&std::sync::Barrier>,
) -> Vec<u32> {
    let seq = engine.create_sequence().unwrap();
    let mut logits = engine.prefill(seq, prompt).unwrap();
    if let Some(b) = start {
        b.wait();
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let id = argmax(&logits) as u32;
        out.push(id);
        logits = engine.step(&[(seq, id)]).unwrap().pop().unwrap();
    }
    engine.free(seq).unwrap();
    out
}

#[test]
fn concurrent_requests_share_batches_and_decode_what_they_decode_alone() {
    let (plain, _dir) = tiny_engine(
        &TinyConfig::qwen2(),
        TinyFormat::Gguf,
        LoadOptions::default(),
    )
    .unwrap();
    let plain: Arc<dyn Engine> = Arc::new(plain);
    let prompts: Vec<Vec<u32>> = (0..8u32)
        .map(|i| (1..=i + 2).map(|t| t * 7 + i).collect())
        .collect();
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| greedy(plain.as_ref(), p, 24))
        .collect();

    let batching = BatchingEngine::new(plain.clone(), Duration::from_millis(50));
    let start = std::sync::Barrier::new(prompts.len());
    let together: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| s.spawn(|| greedy_after(&batching, p, 24, Some(&start))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    let stats = batching.stats();
    assert_eq!(stats.steps, 8 * 24);
    assert!(
        stats.max_batch >= 4 && stats.batches * 2 < stats.steps,
        "steps were not batched: {stats:?}"
    );
}

#[test]
fn one_request_alone_never_waits_for_company() {
    let (plain, _dir) = tiny_engine(
        &TinyConfig::qwen2(),
        TinyFormat::Gguf,
        LoadOptions::default(),
    )
    .unwrap();
    let plain: Arc<dyn Engine> = Arc::new(plain);
    // A long join window would make 40 lone steps take 40 × 10 s if the leader waited for it.
    let batching = BatchingEngine::new(plain.clone(), Duration::from_secs(10));
    let start = std::time::Instant::now();
    let out = greedy(&batching, &[3, 4, 5], 40);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(out, greedy(plain.as_ref(), &[3, 4, 5], 40));
    assert_eq!(batching.stats().batches, 40);
}

#[test]
fn a_bad_step_fails_alone_and_the_rest_of_its_batch_goes_on() {
    let (plain, _dir) = tiny_engine(
        &TinyConfig::qwen2(),
        TinyFormat::Gguf,
        LoadOptions::default(),
    )
    .unwrap();
    let plain: Arc<dyn Engine> = Arc::new(plain);
    let batching = BatchingEngine::new(plain.clone(), Duration::from_millis(200));
    let good = batching.create_sequence().unwrap();
    let logits = batching.prefill(good, &[1, 2, 3]).unwrap();
    let gone = batching.create_sequence().unwrap();
    batching.prefill(gone, &[4, 5]).unwrap();
    // Make both sequences "active" so that the next leader waits for the pair.
    batching.step(&[(good, 1)]).unwrap();
    batching.step(&[(gone, 1)]).unwrap();
    plain.free(gone).unwrap(); // behind the batcher's back: its next step must fail
    let id = argmax(&logits) as u32;
    let (ok, bad) = std::thread::scope(|s| {
        let a = s.spawn(|| batching.step(&[(good, id)]));
        let b = s.spawn(|| batching.step(&[(gone, id)]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(ok.unwrap().len(), 1);
    assert!(
        matches!(bad, Err(EngineError::UnknownSequence(_))),
        "{bad:?}"
    );
    assert!(batching.stats().max_batch >= 2, "{:?}", batching.stats());
}
