//! Prefill / decode throughput of a loaded engine, for the CLI's `bench decode`.
//! Medians over several runs; the prompt is a fixed, deterministic token pattern.

use std::time::Instant;

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
    engine: &dyn Engine,
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

/// Time per `x @ W^T` of one weight under each kernel that can run it, for comparing kernels
/// in isolation from the rest of the forward.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelTiming {
    pub tensor: String,
    pub dtype: String,
    pub rows: usize,
    pub kernel: &'static str,
    /// Best of the repetitions, microseconds.
    pub micros: f64,
    /// File bytes of the weight over that time.
    pub file_gb_per_s: f64,
}

/// Times `m`-row matmuls against the named tensors of a GGUF file with candle's kernel, our
/// Q8 re-quantized kernel and our native kernel (where each applies); best of `reps`.
pub fn bench_kernels(
    path: &std::path::Path,
    names: &[&str],
    m: usize,
    reps: usize,
) -> Result<Vec<KernelTiming>> {
    use super::native::NativeMatrix;
    use super::q8::Q8Matrix;
    use candle_core::quantized::{gguf_file, QMatMul};
    use candle_core::{Device, Module, Tensor};

    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut out = Vec::new();
    for &name in names {
        let q = content.tensor(&mut file, name, &Device::Cpu)?;
        let (n, k) = q.shape().dims2()?;
        let bytes = q.storage_size_in_bytes() as f64;
        let x = Tensor::rand(-1f32, 1f32, (m, k), &Device::Cpu)?;
        let mut kernels: Vec<(&'static str, Box<dyn Fn(&Tensor) -> Result<Tensor>>)> = Vec::new();
        if let Some(nat) = NativeMatrix::from_qtensor(&q)? {
            kernels.push(("native", Box::new(move |x| nat.forward(x))));
        }
        if k % super::q8::QK == 0 {
            let q8 = Q8Matrix::from_tensor(&q.dequantize(&Device::Cpu)?)?;
            kernels.push(("q8", Box::new(move |x| q8.forward(x))));
        }
        let dtype = format!("{:?}", q.dtype());
        let cq = QMatMul::from_qtensor(q)?;
        kernels.push(("candle", Box::new(move |x| Ok(cq.forward(x)?))));
        for (kernel, f) in kernels {
            f(&x)?;
            let mut best = f64::MAX;
            for _ in 0..reps.max(1) {
                let t = Instant::now();
                f(&x)?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            out.push(KernelTiming {
                tensor: format!("{name} [{n}, {k}]"),
                dtype: dtype.clone(),
                rows: m,
                kernel,
                micros: best * 1e6,
                file_gb_per_s: bytes / best / 1e9,
            });
        }
    }
    Ok(out)
}
