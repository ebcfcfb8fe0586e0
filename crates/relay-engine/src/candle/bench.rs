//! Prefill / decode throughput of a loaded engine, for the CLI's `bench decode`.
//! Medians over several runs; the prompt is a fixed, deterministic token pattern.

use std::time::Instant;

use super::CandleEngine;
use crate::engine::Engine;
use crate::error::Result;

/// Throughput figures of [`bench_decode`] (tokens per second, medians over runs).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub prefill_tps: f64,
    pub decode_tps: f64,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub runs: usize,
    /// Every run's figures, in order: (prefill tok/s, decode tok/s).
    pub per_run: Vec<(f64, f64)>,
}

/// Prefills `prompt_tokens` tokens into a fresh sequence, then decodes `gen_tokens` tokens
/// greedily one step at a time; repeats `runs` times (after one untimed warm-up run that
/// also packs the weights) and reports the medians.
pub fn bench_decode(
    engine: &CandleEngine,
    prompt_tokens: usize,
    gen_tokens: usize,
    runs: usize,
) -> Result<BenchResult> {
    let vocab = engine.info().vocab_size as u32;
    // Ordinary-text-like ids: spread over the low part of the vocabulary.
    let prompt: Vec<u32> = (0..prompt_tokens.max(1) as u32)
        .map(|i| (i * 7919 + 13) % vocab.min(30_000))
        .collect();
    let one_run = |timed: bool| -> Result<(f64, f64)> {
        let seq = engine.create_sequence()?;
        let t0 = Instant::now();
        let mut logits = engine.prefill(seq, &prompt)?;
        let prefill_s = t0.elapsed().as_secs_f64();
        let n = if timed { gen_tokens } else { gen_tokens.min(4) };
        let t1 = Instant::now();
        for _ in 0..n {
            let tok = crate::sampling::argmax(&logits) as u32;
            logits = engine.step(&[(seq, tok)])?.pop().unwrap_or_default();
        }
        let decode_s = t1.elapsed().as_secs_f64();
        engine.free(seq)?;
        Ok((
            prompt.len() as f64 / prefill_s,
            n as f64 / decode_s.max(1e-9),
        ))
    };
    one_run(false)?;
    let per_run = (0..runs.max(1))
        .map(|_| one_run(true))
        .collect::<Result<Vec<_>>>()?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(BenchResult {
        prefill_tps: median(per_run.iter().map(|r| r.0).collect()),
        decode_tps: median(per_run.iter().map(|r| r.1).collect()),
        prompt_tokens: prompt.len(),
        gen_tokens,
        runs: per_run.len(),
        per_run,
    })
}
