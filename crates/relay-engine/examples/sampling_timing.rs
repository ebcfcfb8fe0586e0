//! What one sampled token costs over a real-sized vocabulary (151,936, Qwen2.5's), against the
//! full sort of the candidates that the sampler used to do for every token. Sampled decoding
//! (eval at t = 0.7, GRPO rollouts and the data filter at t = 1.0) pays this per token on the
//! request's own thread, between the batched steps.
//!
//! `cargo run --release -p relay-engine --example sampling_timing`

use rand::{rngs::StdRng, Rng, SeedableRng};
use relay_engine::sampling::{Sampler, SamplingParams};
use std::time::Instant;

fn main() {
    let vocab = 151_936;
    let mut gen = StdRng::seed_from_u64(1);
    // Logits shaped like a language model's: a few likely tokens over a long flat tail.
    let logits: Vec<f32> = (0..vocab)
        .map(|i| {
            let base = gen.gen::<f32>() * 4.0 - 8.0;
            if i % 9973 == 0 {
                base + 14.0
            } else {
                base
            }
        })
        .collect();
    let rounds = 200;
    for (name, top_p) in [("t=1.0", 1.0f32), ("t=1.0, top-p 0.95", 0.95)] {
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p,
            top_k: 0,
            seed: 3,
        });
        let mut times = Vec::with_capacity(rounds);
        let mut sink = 0u64;
        for _ in 0..rounds {
            let t = Instant::now();
            sink += u64::from(sampler.sample(&logits));
            times.push(t.elapsed().as_secs_f64());
        }
        let mut sorts = Vec::with_capacity(rounds / 10);
        for _ in 0..rounds / 10 {
            let t = Instant::now();
            let mut idx: Vec<usize> = (0..vocab).collect();
            idx.sort_unstable_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
            sink += idx[0] as u64;
            sorts.push(t.elapsed().as_secs_f64());
        }
        let (s, f) = (median(&mut times), median(&mut sorts));
        println!(
            "{name}: sample {:.3} ms (median of {rounds}); the full sort alone {:.3} ms; {:.1}x ({sink})",
            s * 1e3,
            f * 1e3,
            f / s
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
