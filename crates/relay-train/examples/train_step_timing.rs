//! Times one SFT step's worth of work on a real model: `token_logprobs` + backward over ~N
//! tokens with LoRA rank 16, and checks the forward against the engine's `score` (which runs
//! the quantized weights, so expect small differences). Prints peak memory.
//!
//! cargo run -p relay-train --example train_step_timing -- MODEL.gguf [TOKENS]

use relay_engine::{CandleEngine, Engine, LoadOptions};
use relay_train::{Adapter, TrainModel};
use std::time::Instant;

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::PathBuf::from(&args[1]);
    let n: usize = args.get(2).map_or(300, |s| s.parse().unwrap());
    let t = Instant::now();
    let model = TrainModel::load(&path, Adapter::lora(16, 32.0), 0)?;
    println!(
        "load (dequantized to f32): {:.1} s, {} trainable params, peak RSS {:.0} MiB",
        t.elapsed().as_secs_f64(),
        model.num_trainable(),
        peak_rss_mib()
    );
    let text = "Let's solve the problem step by step. We have 3 apples and buy 5 more, \
                so in total we have 3 + 5 = 8 apples. Then we give away half of them. ";
    let mut ids = model.tokenizer().encode(&text.repeat(20), false)?;
    ids.truncate(n);
    let seq = ids.len();
    for i in 0..2 {
        let t = Instant::now();
        let lp = model.token_logprobs(&ids)?;
        let fwd = t.elapsed().as_secs_f64();
        let loss = lp.sum_all()?.neg()?;
        let grads = loss.backward()?;
        let total = t.elapsed().as_secs_f64();
        let with_grad = model
            .trainable()
            .iter()
            .filter(|v| grads.get(v.as_tensor()).is_some())
            .count();
        println!(
            "run {i}: {seq} tokens: forward {fwd:.2} s, forward+backward {total:.2} s \
             ({:.0} tok/s), {with_grad} params with grad, peak RSS {:.0} MiB",
            seq as f64 / total,
            peak_rss_mib()
        );
    }
    let short = &ids[..64.min(seq)];
    let got = model.token_logprobs(short)?.to_vec1::<f32>()?;
    let diff = |want: &[f32]| {
        let d: Vec<f32> = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).collect();
        (
            d.iter().fold(0f32, |m, x| m.max(*x)),
            d.iter().sum::<f32>() / d.len() as f32,
        )
    };
    // Same dense weights in the engine: isolates the forward's math from the quantization.
    let dense = model.to_engine(LoadOptions::default())?;
    let (max, mean) = diff(&dense.score(short)?);
    println!("vs the engine on the same dense f32 weights, {} tokens: max |diff| {max:.5}, mean {mean:.5}", short.len());
    drop(dense);
    let engine = CandleEngine::load(&path, LoadOptions::default())?;
    let (max, mean) = diff(&engine.score(short)?);
    println!("vs the engine on the GGUF's quantized kernels: max |diff| {max:.4}, mean {mean:.4}");
    Ok(())
}
