//! Batched decode: one `step` over several sequences equals stepping each alone.
//! Tolerance: max |Δlogit| ≤ 1e-4 (F32), 1e-3 (Q8_0/Q4_K) — rows are independent in every
//! matmul, so only summation order may differ.

use relay_engine::tiny::{tiny_engine, TinyConfig, TinyFormat, TinyWeights};
use relay_engine::{Engine, EngineError, LoadOptions};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
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
        let (e, _d) = tiny_engine(&cfg, format, LoadOptions::default()).unwrap();
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
                    "{:?} {:?} {:?} round {round} seq {i}: batched vs alone differ by {d}",
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

#[test]
fn empty_step_is_empty_and_duplicates_are_rejected() {
    let (e, _d) = tiny_engine(
        &TinyConfig::qwen2(),
        TinyFormat::Gguf,
        LoadOptions::default(),
    )
    .unwrap();
    assert!(e.step(&[]).unwrap().is_empty());
    let s = e.create_sequence().unwrap();
    e.prefill(s, &[1, 2]).unwrap();
    let err = e.step(&[(s, 3), (s, 4)]).unwrap_err();
    assert!(matches!(err, EngineError::InvalidInput(_)), "{err}");
    assert_eq!(e.seq_len(s).unwrap(), 2);
}

#[test]
fn engine_is_shareable_across_threads() {
    let (e, _d) = tiny_engine(
        &TinyConfig::qwen3(),
        TinyFormat::Gguf,
        LoadOptions::default(),
    )
    .unwrap();
    let e = std::sync::Arc::new(e);
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
        assert!(max_diff(&h.join().unwrap(), &expect) <= 1e-4);
    }
}
