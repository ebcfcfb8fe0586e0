//! LoRA training's forward and backward pass, written out by hand as one autograd op.
//!
//! Built from candle's basic ops, a LoRA step records ~40 ops per layer, each with its own
//! output buffer kept until the backward pass, and candle's backward for each computes what
//! that op's generic rule says (gradients for frozen weights, broadcast reductions, copies
//! for transposes and `cat`). That made a step 3× slower than PyTorch on the same CPU
//! (issue 15). Here the whole model is one [`CustomOp1`] whose input is every LoRA matrix,
//! flattened and concatenated ([`LoraNet::order`]): the forward keeps only what the backward
//! reads (each layer's input, its normalized inputs, the attention's q/k/v and output, the
//! MLP's gate/up/product and the `x Aᵀ` of each adapter), and the backward computes the
//! input gradient of each frozen matrix and the two gradients of each LoRA pair, nothing else.
//! Attention and the output head reuse [`crate::fused`]'s recomputing kernels, so memory stays
//! linear in the sequence length.
//!
//! The math is [`crate::model`]'s written-out forward (tests hold values and gradients equal).
//! Full fine-tuning and the unfused reference path still go through candle's autograd.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

use crate::fused;

/// Frozen linear layers that read the same input (q/k/v, gate/up, or one alone), their
/// matrices stacked by rows so that the forward is one matmul and the input gradient another:
/// `[x W₁ᵀ + b₁ | x W₂ᵀ + b₂ | …]`, each with its LoRA term if adapted.
pub(crate) struct Linear {
    /// `[Σ out, in]`.
    pub w: Tensor,
    /// `[Σ out]`.
    pub bias: Option<Tensor>,
    /// Each layer's output width and LoRA pair.
    pub parts: Vec<(usize, Option<LoraPair>)>,
}

/// `scale · (x Aᵀ) Bᵀ`, with `A: [rank, in]`, `B: [out, rank]`. The tensors share storage
/// with the trainable `Var`s, so an optimizer step is seen by the next forward.
pub(crate) struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    /// Position in [`LoraNet::order`].
    pub slot: usize,
}

/// One decoder block's weights.
pub(crate) struct Block {
    pub input_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    /// Qwen3's per-head q/k RMSNorm weights (`[head_dim]`).
    pub qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// q, k, v.
    pub qkv: Linear,
    pub o: Linear,
    /// gate, up.
    pub gate_up: Linear,
    pub down: Linear,
}

/// The shapes and constants of the forward.
pub(crate) struct Dims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    /// RoPE inverse frequencies (`[head_dim / 2]`).
    pub inv_freq: Vec<f32>,
}

/// The whole model as the hand-written pass sees it.
pub(crate) struct LoraNet {
    pub embed: Tensor,
    pub blocks: Vec<Block>,
    pub final_norm: Vec<f32>,
    /// `[vocab, hidden]` (the embeddings when tied).
    pub head: Tensor,
    pub dims: Dims,
    /// The adapted modules (`model.layers.3.mlp.up_proj`) in slot order: the op's input is
    /// `A` then `B` of each, flattened, in this order.
    pub order: Vec<String>,
}

/// What the backward pass reads of one block's forward.
struct BlockSaved {
    x: Tensor,
    inv1: Vec<f32>,
    h: Tensor,
    qkv_lo: LoraInputs,
    /// Qwen3: q and k before their norms, and the norms' inverse RMS per (row, head).
    q_pre: Option<(Vec<f32>, Vec<f32>)>,
    k_pre: Option<(Vec<f32>, Vec<f32>)>,
    /// Attention inputs in [`fused::causal_attention`]'s layout.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Attention output `[n, heads · head_dim]` (o_proj's input).
    a: Tensor,
    o_lo: LoraInputs,
    x2: Tensor,
    inv2: Vec<f32>,
    h2: Tensor,
    g: Vec<f32>,
    u: Vec<f32>,
    gate_up_lo: LoraInputs,
    m: Tensor,
    down_lo: LoraInputs,
}

/// What the backward pass reads of a whole forward.
struct Saved {
    blocks: Vec<BlockSaved>,
    last: Tensor,
    inv_last: Vec<f32>,
    /// The head's input rows (normalized final hidden states from `from - 1`).
    head_in: Tensor,
    /// The head's softmax, by chunk, when it fits in [`HEAD_KEEP_ELEMS`].
    head_probs: Option<Vec<Tensor>>,
}

/// The forward keeps the output head's softmax for the backward pass up to this many
/// probabilities (512 MiB: ~880 scored tokens of Qwen's 152k vocabulary) and recomputes it
/// beyond. Keeping it spares the backward the largest matmul it would otherwise redo.
pub const HEAD_KEEP_ELEMS: usize = 128 << 20;

type R<T> = candle_core::Result<T>;

fn vec_of(t: &Tensor) -> R<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

fn tensor(v: Vec<f32>, shape: &[usize]) -> R<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Each part's `x Aᵀ` (`None` where not adapted or the adapters are off).
type LoraInputs = Vec<Option<Tensor>>;

impl Linear {
    /// Each part's output `x Wᵢᵀ + bᵢ + scale · (x Aᵢᵀ) Bᵢᵀ` (contiguous) and its `x Aᵢᵀ`; the
    /// LoRA terms only with `lora`.
    fn forward(&self, x: &Tensor, lora: bool) -> R<(Vec<Tensor>, LoraInputs)> {
        let mut y = x.matmul(&self.w.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let (mut ys, mut xas) = (Vec::new(), Vec::new());
        let mut at = 0;
        for (out, pair) in &self.parts {
            let mut yi = if self.parts.len() == 1 {
                y.clone()
            } else {
                y.narrow(1, at, *out)?.contiguous()?
            };
            at += out;
            match (pair, lora) {
                (Some(l), true) => {
                    let xa = x.matmul(&l.a.t()?)?;
                    yi = (yi + (xa.matmul(&l.b.t()?)? * l.scale)?)?;
                    xas.push(Some(xa));
                }
                _ => xas.push(None),
            }
            ys.push(yi);
        }
        Ok((ys, xas))
    }

    /// The gradient of `x` for the parts' output gradients `dys`; each LoRA pair's gradients
    /// go to `grads[slot]`.
    fn backward(
        &self,
        x: &Tensor,
        xas: &[Option<Tensor>],
        dys: &[Tensor],
        grads: &mut [Option<(Tensor, Tensor)>],
    ) -> R<Tensor> {
        let dy = if dys.len() == 1 {
            dys[0].clone()
        } else {
            Tensor::cat(dys, 1)?
        };
        let mut dx = dy.matmul(&self.w)?;
        for (((_, pair), xa), dy) in self.parts.iter().zip(xas).zip(dys) {
            let (Some(l), Some(xa)) = (pair, xa) else {
                continue;
            };
            let dyb = dy.matmul(&l.b)?;
            let db = (dy.t()?.matmul(xa)? * l.scale)?;
            let da = (dyb.t()?.matmul(x)? * l.scale)?;
            grads[l.slot] = Some((da, db));
            dx = (dx + (dyb.matmul(&l.a)? * l.scale)?)?;
        }
        Ok(dx)
    }
}

/// RMSNorm of each `d`-long row of `x` with weight `w`: the output and each row's inverse RMS.
fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    let mut inv = Vec::with_capacity(x.len() / d);
    for (row, out) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (ms + eps as f32).sqrt();
        for ((o, &v), &wi) in out.iter_mut().zip(row).zip(w) {
            *o = v * r * wi;
        }
        inv.push(r);
    }
    (y, inv)
}

/// The backward of [`rms_norm`]: with x̂ = x · inv and g = dy ⊙ w,
/// dx = inv · (g − x̂ · mean(g ⊙ x̂)).
fn rms_norm_backward(x: &[f32], inv: &[f32], w: &[f32], dy: &[f32]) -> Vec<f32> {
    let d = w.len();
    let mut dx = vec![0f32; x.len()];
    for (((row, g), out), &r) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
        .zip(inv)
    {
        let dot = row
            .iter()
            .zip(g)
            .zip(w)
            .map(|((&v, &gv), &wi)| gv * wi * v * r)
            .sum::<f32>()
            / d as f32;
        for (((o, &v), &gv), &wi) in out.iter_mut().zip(row).zip(g).zip(w) {
            *o = r * (gv * wi - v * r * dot);
        }
    }
    dx
}

/// NEOX RoPE (rotate halves) in place over `[n, heads, hd]`, position = row; `sign` −1
/// rotates back, which is the backward pass of the rotation.
fn rope(x: &mut [f32], heads: usize, inv_freq: &[f32], sign: f32) {
    let half = inv_freq.len();
    let hd = 2 * half;
    let (cos, sin): (Vec<f32>, Vec<f32>) = (0..x.len() / (heads * hd))
        .flat_map(|pos| inv_freq.iter().map(move |&f| (pos as f32 * f).sin_cos()))
        .map(|(s, c)| (c, s))
        .unzip();
    for (pos, row) in x.chunks_exact_mut(heads * hd).enumerate() {
        let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
        for head in row.chunks_exact_mut(hd) {
            let (x1, x2) = head.split_at_mut(half);
            for j in 0..half {
                let (a, b) = (x1[j], x2[j]);
                let sj = sign * s[j];
                x1[j] = a * c[j] - b * sj;
                x2[j] = a * sj + b * c[j];
            }
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `[n, heads, hd]` ↔ `[heads, n, hd]`.
fn swap01(x: &Tensor, a: usize, b: usize, hd: usize) -> R<Tensor> {
    x.reshape((a, b, hd))?.transpose(0, 1)?.contiguous()
}

impl LoraNet {
    /// log p(ids[t] | ids[..t]) for t = from..len, with (`lora`) or without the adapters, and
    /// what the backward pass needs when `save`.
    fn forward(
        &self,
        ids: &[u32],
        from: usize,
        lora: bool,
        save: bool,
    ) -> R<(Vec<f32>, Option<Saved>)> {
        let d = &self.dims;
        let n = ids.len() - 1;
        let (nh, nkv, hd) = (d.heads, d.kv_heads, d.head_dim);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let hidden = self.embed.dim(1)?;
        let mut x = self
            .embed
            .index_select(&Tensor::new(&ids[..n], &Device::Cpu)?, 0)?;
        let mut saved = Vec::with_capacity(if save { self.blocks.len() } else { 0 });
        for b in &self.blocks {
            let xv = vec_of(&x)?;
            let (h, inv1) = rms_norm(&xv, &b.input_norm, d.eps);
            let h = tensor(h, &[n, hidden])?;
            let (qkv, qkv_lo) = b.qkv.forward(&h, lora)?;
            let [q, k, v] = <[Tensor; 3]>::try_from(qkv)
                .map_err(|_| candle_core::Error::Msg("q/k/v: three parts expected".into()))?;
            let (mut q, mut k) = (vec_of(&q)?, vec_of(&k)?);
            let (mut q_pre, mut k_pre) = (None, None);
            if let Some((qn, kn)) = &b.qk_norm {
                let (qy, qi) = rms_norm(&q, qn, d.eps);
                let (ky, ki) = rms_norm(&k, kn, d.eps);
                q_pre = Some((std::mem::replace(&mut q, qy), qi));
                k_pre = Some((std::mem::replace(&mut k, ky), ki));
            }
            rope(&mut q, nh, &d.inv_freq, 1.0);
            rope(&mut k, nkv, &d.inv_freq, 1.0);
            // Query head h reads kv head h / group: [n, nh, hd] → [nkv, group · n, hd].
            let qa = swap01(&tensor(q, &[n, nh, hd])?, n, nh, hd)?.reshape((nkv, group * n, hd))?;
            let ka = swap01(&tensor(k, &[n, nkv, hd])?, n, nkv, hd)?;
            let va = swap01(&v, n, nkv, hd)?;
            let att = fused::attention_forward(&qa, &ka, &va, scale)?;
            let a = swap01(&tensor(att, &[nh, n, hd])?, nh, n, hd)?.reshape((n, nh * hd))?;
            let (o, o_lo) = b.o.forward(&a, lora)?;
            let x2 = (&x + &o[0])?;

            let x2v = vec_of(&x2)?;
            let (h2, inv2) = rms_norm(&x2v, &b.post_norm, d.eps);
            let h2 = tensor(h2, &[n, hidden])?;
            let (gu, gate_up_lo) = b.gate_up.forward(&h2, lora)?;
            let (g, u) = (vec_of(&gu[0])?, vec_of(&gu[1])?);
            let m: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| g * sigmoid(g) * u)
                .collect();
            let m = tensor(m, &[n, g.len() / n])?;
            let (down, down_lo) = b.down.forward(&m, lora)?;
            let next = (&x2 + &down[0])?;
            if save {
                saved.push(BlockSaved {
                    x,
                    inv1,
                    h,
                    qkv_lo,
                    q_pre,
                    k_pre,
                    q: qa,
                    k: ka,
                    v: va,
                    a,
                    o_lo,
                    x2,
                    inv2,
                    h2,
                    g,
                    u,
                    gate_up_lo,
                    m,
                    down_lo,
                });
            }
            x = next;
        }
        let last = vec_of(&x)?;
        let (xf, inv_last) = rms_norm(&last, &self.final_norm, d.eps);
        let head_in = tensor(xf, &[n, hidden])?.narrow(0, from - 1, n + 1 - from)?;
        let keep = save && head_in.dim(0)? * self.head.dim(0)? <= HEAD_KEEP_ELEMS;
        let (out, head_probs) =
            fused::head_forward(&head_in, &self.head, &ids[from..], self.head_rows(), keep)?;
        let saved = save.then(|| Saved {
            blocks: saved,
            last: x,
            inv_last,
            head_in,
            head_probs,
        });
        Ok((out, saved))
    }

    fn head_rows(&self) -> usize {
        fused::HEAD_CHUNK_ELEMS / self.head.dim(0).unwrap_or(1).max(1)
    }

    /// The gradient of every LoRA matrix, flattened in [`Self::order`], for the upstream
    /// gradient `g` of the log-probs of [`Self::forward`].
    fn backward(&self, ids: &[u32], from: usize, s: Saved, g: &[f32]) -> R<Vec<f32>> {
        let d = &self.dims;
        let n = ids.len() - 1;
        let (nh, nkv, hd) = (d.heads, d.kv_heads, d.head_dim);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let hidden = self.embed.dim(1)?;
        let (dxf, _) = fused::head_backward(
            &s.head_in,
            &self.head,
            &ids[from..],
            g,
            self.head_rows(),
            false,
            s.head_probs,
        )?;
        let mut dfull = vec![0f32; n * hidden];
        dfull[(from - 1) * hidden..].copy_from_slice(&vec_of(&dxf)?);
        let dlast = rms_norm_backward(&vec_of(&s.last)?, &s.inv_last, &self.final_norm, &dfull);
        let mut dy = tensor(dlast, &[n, hidden])?;
        let mut grads: Vec<Option<(Tensor, Tensor)>> = vec![None; self.order.len()];
        for (b, sv) in self.blocks.iter().zip(s.blocks).rev() {
            // MLP.
            let dm = b
                .down
                .backward(&sv.m, &sv.down_lo, std::slice::from_ref(&dy), &mut grads)?;
            let dm = vec_of(&dm)?;
            let inter = sv.g.len() / n;
            let (mut dg, mut du) = (vec![0f32; dm.len()], vec![0f32; dm.len()]);
            for i in 0..dm.len() {
                let (gv, uv) = (sv.g[i], sv.u[i]);
                let sg = sigmoid(gv);
                du[i] = dm[i] * gv * sg;
                dg[i] = dm[i] * uv * sg * (1.0 + gv * (1.0 - sg));
            }
            let dh2 = b.gate_up.backward(
                &sv.h2,
                &sv.gate_up_lo,
                &[tensor(dg, &[n, inter])?, tensor(du, &[n, inter])?],
                &mut grads,
            )?;
            let dx2 = (&dy
                + tensor(
                    rms_norm_backward(&vec_of(&sv.x2)?, &sv.inv2, &b.post_norm, &vec_of(&dh2)?),
                    &[n, hidden],
                )?)?;

            // Attention.
            let da =
                b.o.backward(&sv.a, &sv.o_lo, std::slice::from_ref(&dx2), &mut grads)?;
            let go = swap01(&da, n, nh, hd)?.reshape((nkv, group * n, hd))?;
            let (dq, dk, dv) = fused::attention_backward(&sv.q, &sv.k, &sv.v, &go, scale)?;
            let mut dq = vec_of(&swap01(&dq, nh, n, hd)?)?;
            let mut dk = vec_of(&swap01(&dk, nkv, n, hd)?)?;
            let dv = swap01(&dv, nkv, n, hd)?.reshape((n, nkv * hd))?;
            rope(&mut dq, nh, &d.inv_freq, -1.0);
            rope(&mut dk, nkv, &d.inv_freq, -1.0);
            if let Some((qn, kn)) = &b.qk_norm {
                let (pre, inv) = sv.q_pre.as_ref().expect("saved with the norms");
                dq = rms_norm_backward(pre, inv, qn, &dq);
                let (pre, inv) = sv.k_pre.as_ref().expect("saved with the norms");
                dk = rms_norm_backward(pre, inv, kn, &dk);
            }
            let dh = b.qkv.backward(
                &sv.h,
                &sv.qkv_lo,
                &[
                    tensor(dq, &[n, nh * hd])?,
                    tensor(dk, &[n, nkv * hd])?,
                    dv.contiguous()?,
                ],
                &mut grads,
            )?;
            dy = (dx2
                + tensor(
                    rms_norm_backward(&vec_of(&sv.x)?, &sv.inv1, &b.input_norm, &vec_of(&dh)?),
                    &[n, hidden],
                )?)?;
        }
        let mut flat = Vec::new();
        for (slot, g) in grads.into_iter().enumerate() {
            let (da, db) = g.ok_or_else(|| {
                candle_core::Error::Msg(format!("no gradient for LoRA module {}", self.order[slot]))
            })?;
            flat.extend(vec_of(&da)?);
            flat.extend(vec_of(&db)?);
        }
        Ok(flat)
    }

    /// log p(ids[t] | ids[..t]) for t = from..len without the adapters (the reference model),
    /// no gradient.
    pub fn base_logprobs(&self, ids: &[u32], from: usize) -> R<Vec<f32>> {
        Ok(self.forward(ids, from, false, false)?.0)
    }

    /// The same with the adapters, differentiable in `flat`: every LoRA matrix flattened and
    /// concatenated in [`Self::order`] (the op reads the current values through the shared
    /// tensors; `flat` is what carries the gradient back to the `Var`s).
    pub fn logprobs(self: &Arc<Self>, flat: &Tensor, ids: &[u32], from: usize) -> R<Tensor> {
        flat.apply_op1(LogprobsOp {
            net: Arc::clone(self),
            ids: ids.to_vec(),
            from,
            saved: Mutex::new(None),
        })
    }
}

/// The op: forward saves what its backward reads (freed by the backward, or with the graph).
struct LogprobsOp {
    net: Arc<LoraNet>,
    ids: Vec<u32>,
    from: usize,
    saved: Mutex<Option<Saved>>,
}

impl CustomOp1 for LogprobsOp {
    fn name(&self) -> &'static str {
        "lora-logprobs"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> R<(CpuStorage, Shape)> {
        let (out, saved) = self.net.forward(&self.ids, self.from, true, true)?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = saved;
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> R<Option<Tensor>> {
        let taken = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take();
        // A second backward over the same graph recomputes what the first one consumed.
        let saved = match taken {
            Some(s) => s,
            None => self
                .net
                .forward(&self.ids, self.from, true, true)?
                .1
                .expect("saved when asked"),
        };
        let g = grad.detach().to_vec1::<f32>()?;
        let flat = self.net.backward(&self.ids, self.from, saved, &g)?;
        Ok(Some(tensor(flat, arg.dims())?))
    }
}
