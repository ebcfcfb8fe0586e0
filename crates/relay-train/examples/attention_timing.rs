//! Times one layer's causal attention of the 0.5B model at 600 tokens (14 query heads on 2 kv
//! heads of 64), forward and backward separately: `relay_train::attention` against what the
//! hand-written pass ran before it, `fused`'s candle-op attention with the `[n, heads, hd]` ↔
//! `[heads, n, hd]` copies around it. Old and new runs alternate (so that load from elsewhere
//! hits both alike); medians of 7 after one warm-up.
//!
//! cargo run --release -p relay-train --example attention_timing -- [TOKENS] [THREADS]
//!
//! THREADS (default 2) sets `RAYON_NUM_THREADS`, which both sides read.

use candle_core::{Device, Tensor};
use relay_train::attention::{self, AttentionShape};
use relay_train::fused;
use std::time::Instant;

const RUNS: usize = 7;

fn noise(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 8388608.0 - 1.0
        })
        .collect()
}

/// `[a, b, hd]` → `[b, a, hd]`, as the hand-written pass did around `fused`'s attention.
fn swap01(x: &Tensor, a: usize, b: usize, hd: usize) -> candle_core::Result<Tensor> {
    x.reshape((a, b, hd))?.transpose(0, 1)?.contiguous()
}

fn ms(f: impl FnOnce() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(600, |s| s.parse().expect("TOKENS"));
    let threads: usize = args.get(2).map_or(2, |s| s.parse().expect("THREADS"));
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let (nh, nkv, hd) = (14, 2, 64);
    let shape = AttentionShape {
        len: n,
        heads: nh,
        kv_heads: nkv,
        head_dim: hd,
    };
    let scale = 1.0 / (hd as f64).sqrt();
    let (q, k, v) = (
        noise(n * nh * hd, 1),
        noise(n * nkv * hd, 2),
        noise(n * nkv * hd, 3),
    );
    let dout = noise(n * nh * hd, 4);
    let cpu = &Device::Cpu;

    // Old: token-major → fused's layout, fused's kernel, and back.
    let to_fused = |x: &[f32], heads: usize| -> candle_core::Result<Tensor> {
        swap01(&Tensor::from_slice(x, (n, heads, hd), cpu)?, n, heads, hd)?.reshape((
            nkv,
            heads / nkv * n,
            hd,
        ))
    };
    let from_fused = |t: &Tensor, heads: usize| -> candle_core::Result<Vec<f32>> {
        swap01(t, heads, n, hd)?.flatten_all()?.to_vec1::<f32>()
    };
    let old_forward = || -> candle_core::Result<Vec<f32>> {
        let (qa, ka, va) = (to_fused(&q, nh)?, to_fused(&k, nkv)?, to_fused(&v, nkv)?);
        let att = fused::attention_forward(&qa, &ka, &va, scale)?;
        from_fused(&Tensor::from_vec(att, (nh, n, hd), cpu)?, nh)
    };
    // The backward reads the forward's inputs in fused's layout, as the pass saved them.
    let (qa, ka, va) = (to_fused(&q, nh)?, to_fused(&k, nkv)?, to_fused(&v, nkv)?);
    let old_backward = || -> candle_core::Result<Vec<f32>> {
        let go = to_fused(&dout, nh)?;
        let (dq, dk, dv) = fused::attention_backward(&qa, &ka, &va, &go, scale)?;
        from_fused(&dk, nkv)?;
        from_fused(&dv, nkv)?;
        from_fused(&dq, nh)
    };
    let (out, lse) = attention::forward(&q, &k, &v, shape);

    // The two agree before anything is timed.
    let (dq, _, _) = attention::backward(&q, &k, &v, &out, &lse, &dout, shape);
    println!(
        "{n} tokens, {nh} query heads on {nkv} kv heads of {hd}, {threads} threads; \
         max |diff| old vs new: out {:.1e}, dq {:.1e}",
        max_diff(&out, &old_forward()?),
        max_diff(&dq, &old_backward()?)
    );

    let mut t: [Vec<f64>; 4] = Default::default();
    for run in 0..=RUNS {
        let times = [
            ms(|| old_forward().map(drop))?,
            ms(|| {
                attention::forward(&q, &k, &v, shape);
                Ok(())
            })?,
            ms(|| old_backward().map(drop))?,
            ms(|| {
                attention::backward(&q, &k, &v, &out, &lse, &dout, shape);
                Ok(())
            })?,
        ];
        if run > 0 {
            t.iter_mut().zip(times).for_each(|(t, x)| t.push(x));
        }
    }
    let [of, nf, ob, nb] = t.map(median);
    println!("ms per layer (median of {RUNS})   fused + swap01   attention   old / new");
    println!(
        "forward               {of:14.1} {nf:11.1} {:10.2}x",
        of / nf
    );
    println!(
        "backward              {ob:14.1} {nb:11.1} {:10.2}x",
        ob / nb
    );
    println!(
        "forward + backward    {:14.1} {:11.1} {:10.2}x",
        of + ob,
        nf + nb,
        (of + ob) / (nf + nb)
    );
    Ok(())
}
