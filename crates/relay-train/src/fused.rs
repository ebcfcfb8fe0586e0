//! Two fused autograd ops that keep a training step's memory linear in the sequence length and
//! free of vocabulary-sized activations. Written out from basic ops, the output head and
//! attention are where a step's memory goes: autograd keeps every intermediate until the
//! backward pass, and for the real 0.5B SLM at 600 tokens that is ~2 GB of `[len, 151936]`
//! logits, shifted logits and exponentials, plus ~3 GB of `[heads, len, len]` scores per pass.
//!
//! Both ops keep only their inputs and output and recompute the rest, chunk by chunk, in the
//! backward pass (the same trade FlashAttention and "chunked cross-entropy" make):
//! - [`head_logprobs`]: `log_softmax(x Wᵀ)[t, target_t]` over row chunks of at most
//!   [`HEAD_CHUNK_ELEMS`] logits at a time;
//! - [`causal_attention`]: grouped-query causal softmax attention, one kv head at a time.
//!
//! The math is the unfused one's (tests compare values and gradients).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::mm::{self, Mat, MatMut};

/// At most this many logits (`rows × vocab`) exist at once in [`head_logprobs`]: 32 Mi floats,
/// 128 MiB (~220 rows of Qwen's 152k vocabulary; fewer rows per product make the matmul
/// markedly slower).
pub const HEAD_CHUNK_ELEMS: usize = 32 << 20;

/// `log_softmax(x Wᵀ)[t, targets[t]]` for `x: [n, d]`, `w: [vocab, d]`: `[n]`. Differentiable
/// in `x`, and in `w` when `w` is trainable.
pub fn head_logprobs(x: &Tensor, w: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let rows = HEAD_CHUNK_ELEMS / w.dim(0)?.max(1);
    head_logprobs_chunked(x, w, targets, rows)
}

/// [`head_logprobs`] with `rows` rows of logits per chunk.
pub fn head_logprobs_chunked(
    x: &Tensor,
    w: &Tensor,
    targets: &[u32],
    rows: usize,
) -> candle_core::Result<Tensor> {
    let (n, _) = x.dims2()?;
    if targets.len() != n {
        candle_core::bail!("head_logprobs: {n} rows but {} targets", targets.len());
    }
    let vocab = w.dim(0)?;
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("head_logprobs: target {t} is outside the vocabulary ({vocab})");
    }
    let op = HeadLogprobs {
        targets: targets.to_vec(),
        rows: rows.max(1),
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

struct HeadLogprobs {
    targets: Vec<u32>,
    /// Rows per chunk.
    rows: usize,
}

/// Softmax over the rows of `[rows, cols]` logits.
fn softmax_rows(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let e = logits.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

impl CustomOp2 for HeadLogprobs {
    fn name(&self) -> &'static str {
        "head-logprobs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (values(s1, l1)?, values(s2, l2)?);
        let d = l1.dims()[1];
        let (out, _) = head_forward(x, w, d, &self.targets, self.rows, false);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    /// d out_t / d logits_t = onehot(target_t) − softmax(logits_t).
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let want_w = w.track_op();
        let g = grad.detach().to_vec1::<f32>()?;
        let (n, d) = x.dims2()?;
        let (dx, dw) = with_values(x, |xs| {
            with_values(w, |ws| {
                Ok(head_backward(
                    xs,
                    ws,
                    d,
                    &self.targets,
                    &g,
                    self.rows,
                    want_w,
                    None,
                ))
            })
        })?;
        let dx = Tensor::from_vec(dx, (n, d), &Device::Cpu)?;
        let dw = dw
            .map(|dw| Tensor::from_vec(dw, w.shape(), &Device::Cpu))
            .transpose()?;
        Ok((Some(dx), dw))
    }
}

/// The rows' chunks: `(start, len)` with at most `rows` rows each.
fn chunks(n: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows = rows.max(1);
    (0..n).step_by(rows).map(move |r| (r, rows.min(n - r)))
}

/// Turns a row of logits into its softmax in place and returns `log_softmax[target]`.
fn softmax_row(row: &mut [f32], target: usize) -> f32 {
    let picked = row[target];
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
    picked - (max + sum.ln())
}

/// Softmax rows into the head's output gradient in place: `g (onehot(target) − p)`.
fn softmax_grad_rows(p: &mut [f32], vocab: usize, targets: &[u32], g: &[f32]) {
    p.par_chunks_mut(vocab)
        .zip(targets.par_iter().zip(g.par_iter()))
        .for_each(|(row, (&t, &gi))| {
            row.iter_mut().for_each(|v| *v *= -gi);
            row[t as usize] += gi;
        });
}

/// Logits of `x` rows (`[len, d]`) into `buf`, then each row's softmax in place; the rows'
/// log-probs of `targets` are appended to `out`.
fn softmax_chunk(
    x: &[f32],
    w: &[f32],
    d: usize,
    targets: &[u32],
    buf: &mut [f32],
    out: &mut Vec<f32>,
) {
    let (len, vocab) = (targets.len(), w.len() / d);
    let buf = &mut buf[..len * vocab];
    mm::gemm(
        MatMut::new(buf, len, vocab),
        Mat::new(x, len, d),
        Mat::new(w, vocab, d).t(),
        false,
        1.0,
    );
    let mut lp = vec![0f32; len];
    buf.par_chunks_mut(vocab)
        .zip(targets.par_iter().zip(lp.par_iter_mut()))
        .for_each(|(row, (&t, lp))| *lp = softmax_row(row, t as usize));
    out.extend(lp);
}

/// `log_softmax(x Wᵀ)[t, targets[t]]` for each row of `x: [n, d]` (`w: [vocab, d]`, both
/// row-major), computed `rows` rows of logits at a time into one reused buffer. The forward of
/// [`head_logprobs`], also called directly by [`crate::backprop`], which can `keep` the
/// softmax of all rows for [`head_backward`] (it then skips the recomputation, the largest
/// matmul of the backward pass, and the logits are computed in one product).
pub(crate) fn head_forward(
    x: &[f32],
    w: &[f32],
    d: usize,
    targets: &[u32],
    rows: usize,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (n, vocab) = (targets.len(), w.len() / d.max(1));
    let mut out = Vec::with_capacity(n);
    if keep {
        let mut probs = vec![0f32; n * vocab];
        softmax_chunk(x, w, d, targets, &mut probs, &mut out);
        return (out, Some(probs));
    }
    let mut buf = vec![0f32; rows.clamp(1, n.max(1)) * vocab];
    for (r, len) in chunks(n, rows) {
        softmax_chunk(
            &x[r * d..(r + len) * d],
            w,
            d,
            &targets[r..r + len],
            &mut buf,
            &mut out,
        );
    }
    (out, None)
}

/// The backward of [`head_forward`] for an upstream gradient `g` (one value per row): the
/// gradient of `x` (`[n, d]`) and, with `want_w`, of `w` (`[vocab, d]`). Recomputes the
/// softmax chunk by chunk unless the forward kept it (`probs`, the same values).
#[allow(clippy::too_many_arguments)]
pub(crate) fn head_backward(
    x: &[f32],
    w: &[f32],
    d: usize,
    targets: &[u32],
    g: &[f32],
    rows: usize,
    want_w: bool,
    probs: Option<Vec<f32>>,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (n, vocab) = (targets.len(), w.len() / d.max(1));
    let mut dx = vec![0f32; n * d];
    let mut dw = want_w.then(|| vec![0f32; vocab * d]);
    let mut step = |p: &mut [f32], r: usize, len: usize| {
        softmax_grad_rows(p, vocab, &targets[r..r + len], &g[r..r + len]);
        let p = Mat::new(p, len, vocab);
        mm::gemm(
            MatMut::new(&mut dx[r * d..(r + len) * d], len, d),
            p,
            Mat::new(w, vocab, d),
            false,
            1.0,
        );
        if let Some(dw) = dw.as_mut() {
            let xc = Mat::new(&x[r * d..(r + len) * d], len, d);
            mm::gemm(MatMut::new(dw, vocab, d), p.t(), xc, true, 1.0);
        }
    };
    match probs {
        Some(mut p) => step(&mut p, 0, n),
        None => {
            let mut buf = vec![0f32; rows.clamp(1, n.max(1)) * vocab];
            let mut scratch = Vec::new();
            for (r, len) in chunks(n, rows) {
                scratch.clear();
                softmax_chunk(
                    &x[r * d..(r + len) * d],
                    w,
                    d,
                    &targets[r..r + len],
                    &mut buf,
                    &mut scratch,
                );
                step(&mut buf[..len * vocab], r, len);
            }
        }
    }
    (dx, dw)
}

/// Grouped-query causal attention. `q: [kv_heads, group · n, hd]` (the query heads of kv head
/// `h` are rows `g · n + i`, position `i`), `k`, `v: [kv_heads, n, hd]`; returns softmax(q kᵀ ·
/// scale + causal mask) v in `q`'s layout. Only the inputs and the output are kept for the
/// backward pass, which recomputes the probabilities one kv head at a time.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        CausalAttention { scale },
    )
}

struct CausalAttention {
    scale: f64,
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (tensor_of(s1, l1)?, tensor_of(s2, l2)?, tensor_of(s3, l3)?);
        let out = attention_forward(&q, &k, &v, self.scale)?;
        Ok((CpuStorage::F32(out), q.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = attention_backward(
            &q.detach(),
            &k.detach(),
            &v.detach(),
            &grad.detach(),
            self.scale,
        )?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The attention probabilities of one kv head: `[group · n, n]` for `q: [group · n, hd]`,
/// `k: [n, hd]`.
fn attention_probs(q: &Tensor, k: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let n = k.dim(0)?;
    let rows = q.dim(0)?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let mut s = scores.flatten_all()?.to_vec1::<f32>()?;
    // Row r is position r % n: it sees keys 0..=r % n. The masked scores are -inf, so
    // their probabilities are exactly 0 and no gradient reaches them.
    for (r, row) in s.chunks_mut(n).enumerate() {
        row[r % n + 1..].fill(f32::NEG_INFINITY);
    }
    softmax_rows(&Tensor::from_vec(s, (rows, n), &Device::Cpu)?)
}

/// The forward of [`causal_attention`] on contiguous inputs, flattened in `q`'s layout.
/// Public as the baseline `examples/attention_timing.rs` measures [`crate::attention`] against.
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> candle_core::Result<Vec<f32>> {
    let heads = k.dim(0)?;
    let mut out = Vec::with_capacity(q.elem_count());
    for h in 0..heads {
        let p = attention_probs(&q.get(h)?, &k.get(h)?, scale)?;
        out.extend(p.matmul(&v.get(h)?)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// The backward of [`causal_attention`] for the output's gradient `go`: `(dq, dk, dv)`.
/// With P the probabilities: dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)),
/// dQ = dS K · scale, dK = dSᵀ Q · scale.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    go: &Tensor,
    scale: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let heads = k.dim(0)?;
    let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
    for h in 0..heads {
        let (qh, kh, vh, goh) = (q.get(h)?, k.get(h)?, v.get(h)?, go.get(h)?);
        let p = attention_probs(&qh, &kh, scale)?;
        dv.push(p.t()?.matmul(&goh)?);
        let dp = goh.matmul(&vh.t()?)?;
        let row = (&dp * &p)?.sum_keepdim(D::Minus1)?;
        let ds = ((dp.broadcast_sub(&row))? * &p)?;
        dq.push((ds.matmul(&kh)? * scale)?);
        dk.push((ds.t()?.matmul(&qh)? * scale)?);
    }
    Ok((
        Tensor::stack(&dq, 0)?,
        Tensor::stack(&dk, 0)?,
        Tensor::stack(&dv, 0)?,
    ))
}

/// A custom op's contiguous f32 input, borrowed.
pub(crate) fn values<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op: input not contiguous".into()))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// Runs `f` on a contiguous f32 CPU tensor's values, borrowed (no copy).
pub(crate) fn with_values<T>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<T>,
) -> candle_core::Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused op: CPU tensors only");
    };
    f(values(cpu, layout)?)
}

/// A (copied) tensor over a custom op's f32 input.
pub(crate) fn tensor_of(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op: input not contiguous".into()))?;
    Tensor::from_slice(
        &storage.as_slice::<f32>()?[start..end],
        layout.shape(),
        &Device::Cpu,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn randn(shape: &[usize], seed: u64) -> Var {
        let n: usize = shape.iter().product();
        let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect();
        Var::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn head_logprobs_match_log_softmax_in_value_and_gradient_at_any_chunk_size() {
        let (n, d, vocab) = (7, 5, 11);
        let x = randn(&[n, d], 1);
        let w = randn(&[vocab, d], 2);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 5 + 3) % vocab as u32).collect();
        let weights =
            Tensor::new(&[1.0f32, -2.0, 0.5, 3.0, -1.0, 0.25, 2.0], &Device::Cpu).unwrap();
        // Unfused: log_softmax written out.
        let logits = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        let lse = logits.exp().unwrap().sum_keepdim(1).unwrap().log().unwrap();
        let idx = Tensor::new(targets.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let want = (logits.gather(&idx, 1).unwrap() - lse)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let want_grads = (&want * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for rows in [1, 3, 7, 100] {
            let got = head_logprobs_chunked(x.as_tensor(), w.as_tensor(), &targets, rows).unwrap();
            assert!(max_diff(&got, &want) < 1e-5, "rows {rows}: values differ");
            let grads = (&got * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("x", &x), ("w", &w)] {
                let d = max_diff(
                    grads.get(v.as_tensor()).unwrap(),
                    want_grads.get(v.as_tensor()).unwrap(),
                );
                assert!(d < 1e-5, "rows {rows}: d{name} differs by {d}");
            }
        }
        // A frozen head gets no gradient, and bad targets are refused.
        let frozen = w.as_tensor().detach();
        let got = head_logprobs(x.as_tensor(), &frozen, &targets).unwrap();
        let grads = got.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&frozen).is_none() && grads.get(x.as_tensor()).is_some());
        assert!(head_logprobs(x.as_tensor(), &frozen, &[11; 7]).is_err());
        assert!(head_logprobs(x.as_tensor(), &frozen, &[0; 6]).is_err());
    }

    #[test]
    fn causal_attention_matches_the_written_out_softmax_in_value_and_gradient() {
        let (kv, group, n, hd) = (2, 3, 5, 4);
        let scale = 0.5;
        let q = randn(&[kv, group * n, hd], 3);
        let k = randn(&[kv, n, hd], 4);
        let v = randn(&[kv, n, hd], 5);
        let upstream = randn(&[kv, group * n, hd], 6).as_tensor().detach();
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j <= i { 0.0 } else { -1e9 }))
            .collect();
        let mask = Tensor::from_vec(mask, (n, n), &Device::Cpu).unwrap();
        let scores = (q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap() * scale)
            .unwrap()
            .reshape((kv * group, n, n))
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let e = scores
            .broadcast_sub(&scores.max_keepdim(2).unwrap())
            .unwrap()
            .exp()
            .unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(2).unwrap()).unwrap();
        let want = p
            .reshape((kv, group * n, n))
            .unwrap()
            .matmul(v.as_tensor())
            .unwrap();
        let got = causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), scale).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
        let loss = |t: &Tensor| (t * &upstream).unwrap().sum_all().unwrap();
        let want_grads = loss(&want).backward().unwrap();
        let grads = loss(&got).backward().unwrap();
        for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let d = max_diff(
                grads.get(t.as_tensor()).unwrap(),
                want_grads.get(t.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "d{name} differs by {d}");
        }
        // Causal: the first position of every head sees only the first value.
        let first = got.get(0).unwrap().get(0).unwrap();
        assert!(max_diff(&first, &v.as_tensor().get(0).unwrap().get(0).unwrap()) < 1e-6);
    }
}
