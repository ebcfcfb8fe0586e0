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

/// At most this many logits (`rows × vocab`) exist at once in [`head_logprobs`]: 8 Mi floats,
/// 32 MiB.
pub const HEAD_CHUNK_ELEMS: usize = 8 << 20;

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

/// `exp(logits - rowmax)` of `[rows, vocab]` logits, its row sums and the row maxima.
fn shifted_exp(logits: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let max = logits.max_keepdim(D::Minus1)?;
    let e = logits.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok((e, sum, max))
}

/// Softmax over the rows of `[rows, vocab]` logits.
fn softmax_rows(logits: &Tensor) -> candle_core::Result<Tensor> {
    let (e, sum, _) = shifted_exp(logits)?;
    e.broadcast_div(&sum)
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
        let x = tensor_of(s1, l1)?;
        let w = tensor_of(s2, l2)?;
        let (out, _) = head_forward(&x, &w, &self.targets, self.rows, false)?;
        Ok((CpuStorage::F32(out), Shape::from(x.dim(0)?)))
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
        let (dx, dw) = head_backward(
            &x.detach(),
            &w.detach(),
            &self.targets,
            &g,
            self.rows,
            want_w,
            None,
        )?;
        Ok((Some(dx), dw))
    }
}

/// The rows' chunks: `(start, len)` with at most `rows` rows each.
fn chunks(n: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows = rows.max(1);
    (0..n).step_by(rows).map(move |r| (r, rows.min(n - r)))
}

/// `log_softmax(x Wᵀ)[t, targets[t]]` for each row of `x: [n, d]` (`w: [vocab, d]`), computed
/// `rows` rows of logits at a time. The forward of [`head_logprobs`], also called directly by
/// [`crate::backprop`], which can `keep` each chunk's softmax for [`head_backward`] (it then
/// skips the recomputation, the largest matmul of the backward pass).
pub(crate) fn head_forward(
    x: &Tensor,
    w: &Tensor,
    targets: &[u32],
    rows: usize,
    keep: bool,
) -> candle_core::Result<(Vec<f32>, Option<Vec<Tensor>>)> {
    let n = x.dim(0)?;
    let mut out = Vec::with_capacity(n);
    let mut probs = Vec::new();
    for (r, len) in chunks(n, rows) {
        let logits = x.narrow(0, r, len)?.matmul(&w.t()?)?;
        let (e, sum, max) = shifted_exp(&logits)?;
        if keep {
            probs.push(e.broadcast_div(&sum)?);
        }
        let lse = (sum.log()? + max)?.flatten_all()?.to_vec1::<f32>()?;
        let idx = Tensor::new(&targets[r..r + len], &Device::Cpu)?.unsqueeze(1)?;
        let picked = logits.gather(&idx, 1)?.flatten_all()?.to_vec1::<f32>()?;
        out.extend(picked.iter().zip(&lse).map(|(p, l)| p - l));
    }
    Ok((out, keep.then_some(probs)))
}

/// The backward of [`head_forward`] for an upstream gradient `g` (one value per row): the
/// gradient of `x` and, with `want_w`, of `w`. Recomputes the softmax chunk by chunk unless
/// the forward kept it (`probs`, the same values).
pub(crate) fn head_backward(
    x: &Tensor,
    w: &Tensor,
    targets: &[u32],
    g: &[f32],
    rows: usize,
    want_w: bool,
    probs: Option<Vec<Tensor>>,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let (n, vocab) = (x.dim(0)?, w.dim(0)?);
    let mut kept = probs.map(|p| p.into_iter());
    let mut dx = Vec::with_capacity(n / rows.max(1) + 1);
    let mut dw: Option<Tensor> = None;
    for (r, len) in chunks(n, rows) {
        let xc = x.narrow(0, r, len)?;
        let p = match kept.as_mut().and_then(|k| k.next()) {
            Some(p) => p,
            None => softmax_rows(&xc.matmul(&w.t()?)?)?,
        };
        let mut d = p.flatten_all()?.to_vec1::<f32>()?;
        drop(p);
        for i in 0..len {
            let gi = g[r + i];
            let row = &mut d[i * vocab..(i + 1) * vocab];
            row.iter_mut().for_each(|v| *v *= -gi);
            row[targets[r + i] as usize] += gi;
        }
        let d = Tensor::from_vec(d, (len, vocab), &Device::Cpu)?;
        dx.push(d.matmul(w)?);
        if want_w {
            let part = d.t()?.matmul(&xc)?;
            dw = Some(match dw {
                None => part,
                Some(acc) => (acc + part)?,
            });
        }
    }
    Ok((Tensor::cat(&dx, 0)?, dw))
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
pub(crate) fn attention_forward(
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
pub(crate) fn attention_backward(
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
