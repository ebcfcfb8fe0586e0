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
//! Activations are plain buffers and the products go through [`crate::mm`] straight into them:
//! a residual add, a LoRA term and an input gradient summed over matrices are one accumulating
//! product each, q/k/v and gate/up are column ranges of one packed output, and nothing is
//! copied to make a view contiguous. Attention ([`crate::attention`]) and the output head
//! ([`crate::fused`]) keep what their backward needs and recompute the rest, so memory stays
//! linear in the sequence length.
//!
//! The math is [`crate::model`]'s written-out forward (tests hold values and gradients equal).
//! Full fine-tuning and the unfused reference path still go through candle's autograd.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::attention::{self, AttentionShape};
use crate::fused::{self, with_values};
use crate::mm::{self, Mat, MatMut};

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

/// What the backward pass reads of one block's forward. Matrices are row-major, one row per
/// position.
struct BlockSaved {
    x: Vec<f32>,
    inv1: Vec<f32>,
    h: Vec<f32>,
    qkv_lo: LoraInputs,
    /// Qwen3: q and k before their norms, and the norms' inverse RMS per (row, head).
    q_pre: Option<(Vec<f32>, Vec<f32>)>,
    k_pre: Option<(Vec<f32>, Vec<f32>)>,
    /// Attention inputs (`[n, heads · hd]`, `[n, kv_heads · hd]`; q and k rotated).
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Each (position, head)'s log-sum-exp of the attention scores.
    lse: Vec<f32>,
    /// Attention output `[n, heads · head_dim]` (o_proj's input).
    a: Vec<f32>,
    o_lo: LoraInputs,
    x2: Vec<f32>,
    inv2: Vec<f32>,
    h2: Vec<f32>,
    /// gate_up's output `[n, 2 · inter]`: gate, then up.
    gu: Vec<f32>,
    gate_up_lo: LoraInputs,
    m: Vec<f32>,
    down_lo: LoraInputs,
}

/// What the backward pass reads of a whole forward.
struct Saved {
    blocks: Vec<BlockSaved>,
    last: Vec<f32>,
    inv_last: Vec<f32>,
    /// The head's input rows (normalized final hidden states from `from - 1`).
    head_in: Vec<f32>,
    /// The head's softmax, when it fits in [`HEAD_KEEP_ELEMS`].
    head_probs: Option<Vec<f32>>,
}

/// The forward keeps the output head's softmax for the backward pass up to this many
/// probabilities (512 MiB: ~880 scored tokens of Qwen's 152k vocabulary) and recomputes it
/// beyond. Keeping it spares the backward the largest matmul it would otherwise redo.
pub const HEAD_KEEP_ELEMS: usize = 128 << 20;

type R<T> = candle_core::Result<T>;

fn tensor(v: Vec<f32>, shape: &[usize]) -> R<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Each part's `x Aᵀ` (`[n, rank]`; `None` where not adapted or the adapters are off).
type LoraInputs = Vec<Option<Vec<f32>>>;

/// Each adapted module's `(dA, dB)`, by slot.
type LoraGrads = Vec<Option<(Vec<f32>, Vec<f32>)>>;

/// Columns `at..at + len` of a row-major `[n, width]` buffer, copied.
fn take_cols(buf: &[f32], width: usize, at: usize, len: usize) -> Vec<f32> {
    buf.chunks_exact(width)
        .flat_map(|row| &row[at..at + len])
        .copied()
        .collect()
}

/// `dst += src`, elementwise.
fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

impl Linear {
    /// The stacked output width `Σ out`.
    fn width(&self) -> usize {
        self.parts.iter().map(|(out, _)| out).sum()
    }

    /// The packed output `[x W₁ᵀ + b₁ + scale · (x A₁ᵀ) B₁ᵀ | …]` for `x: [n, in]` (the LoRA
    /// terms only with `lora`), added into `acc` when given (a residual stream), and each
    /// part's `x Aᵢᵀ`.
    fn forward(
        &self,
        x: &[f32],
        n: usize,
        lora: bool,
        acc: Option<Vec<f32>>,
    ) -> R<(Vec<f32>, LoraInputs)> {
        let (width, inp) = (self.width(), x.len() / n.max(1));
        let accumulate = acc.is_some();
        let mut y = acc.unwrap_or_else(|| vec![0f32; n * width]);
        if y.len() != n * width {
            candle_core::bail!(
                "linear: {} values to add into, {n} × {width} expected",
                y.len()
            );
        }
        with_values(&self.w, |w| {
            let w = Mat::new(w, width, inp);
            mm::gemm(
                MatMut::new(&mut y, n, width),
                Mat::new(x, n, inp),
                w.t(),
                accumulate,
                1.0,
            );
            Ok(())
        })?;
        if let Some(b) = &self.bias {
            with_values(b, |b| {
                y.chunks_exact_mut(width).for_each(|row| add_into(row, b));
                Ok(())
            })?;
        }
        let mut xas = Vec::with_capacity(self.parts.len());
        let mut at = 0;
        for (out, pair) in &self.parts {
            match (pair, lora) {
                (Some(l), true) => {
                    let rank = l.a.dim(0)?;
                    let mut xa = vec![0f32; n * rank];
                    with_values(&l.a, |a| {
                        let a = Mat::new(a, rank, inp);
                        mm::gemm(
                            MatMut::new(&mut xa, n, rank),
                            Mat::new(x, n, inp),
                            a.t(),
                            false,
                            1.0,
                        );
                        Ok(())
                    })?;
                    with_values(&l.b, |b| {
                        mm::gemm(
                            MatMut::new(&mut y, n, width).cols(at, *out),
                            Mat::new(&xa, n, rank),
                            Mat::new(b, *out, rank).t(),
                            true,
                            l.scale as f32,
                        );
                        Ok(())
                    })?;
                    xas.push(Some(xa));
                }
                _ => xas.push(None),
            }
            at += out;
        }
        Ok((y, xas))
    }

    /// The gradient of `x` (`[n, in]`) for the packed output gradient `dy` (`[n, Σ out]`),
    /// or nothing without `want_dx` (the first layer's input is the frozen embeddings); each
    /// LoRA pair's gradients go to `grads[slot]`.
    fn backward(
        &self,
        x: &[f32],
        n: usize,
        xas: &[Option<Vec<f32>>],
        dy: &[f32],
        grads: &mut LoraGrads,
        want_dx: bool,
    ) -> R<Vec<f32>> {
        let (width, inp) = (self.width(), x.len() / n.max(1));
        let dy_all = Mat::new(dy, n, width);
        let x = Mat::new(x, n, inp);
        let mut dx = Vec::new();
        if want_dx {
            dx = vec![0f32; n * inp];
            with_values(&self.w, |w| {
                let w = Mat::new(w, width, inp);
                mm::gemm(MatMut::new(&mut dx, n, inp), dy_all, w, false, 1.0);
                Ok(())
            })?;
        }
        let mut at = 0;
        for ((out, pair), xa) in self.parts.iter().zip(xas) {
            let dyi = dy_all.cols(at, *out);
            at += out;
            let (Some(l), Some(xa)) = (pair, xa) else {
                continue;
            };
            let (rank, scale) = (l.a.dim(0)?, l.scale as f32);
            let xa = Mat::new(xa, n, rank);
            // dB = scale · dyᵢᵀ (x Aᵀ); with dyb = dyᵢ B: dA = scale · dybᵀ x, dx += scale · dyb A.
            let mut db = vec![0f32; out * rank];
            mm::gemm(MatMut::new(&mut db, *out, rank), dyi.t(), xa, false, scale);
            let mut dyb = vec![0f32; n * rank];
            with_values(&l.b, |b| {
                mm::gemm(
                    MatMut::new(&mut dyb, n, rank),
                    dyi,
                    Mat::new(b, *out, rank),
                    false,
                    1.0,
                );
                Ok(())
            })?;
            let dyb = Mat::new(&dyb, n, rank);
            let mut da = vec![0f32; rank * inp];
            mm::gemm(MatMut::new(&mut da, rank, inp), dyb.t(), x, false, scale);
            if want_dx {
                with_values(&l.a, |a| {
                    let a = Mat::new(a, rank, inp);
                    mm::gemm(MatMut::new(&mut dx, n, inp), dyb, a, true, scale);
                    Ok(())
                })?;
            }
            grads[l.slot] = Some((da, db));
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

/// The backward of [`rms_norm`], added into `acc`: with x̂ = x · inv and g = dy ⊙ w,
/// dx = inv · (g − x̂ · mean(g ⊙ x̂)).
fn rms_norm_backward(x: &[f32], inv: &[f32], w: &[f32], dy: &[f32], acc: &mut [f32]) {
    let d = w.len();
    for (((row, g), out), &r) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(acc.chunks_exact_mut(d))
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
            *o += r * (gv * wi - v * r * dot);
        }
    }
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

/// SwiGLU over the rows of gate_up's packed output `[n, 2 · inter]`: `silu(gate) ⊙ up`.
fn swiglu(gu: &[f32], inter: usize) -> Vec<f32> {
    let mut m = vec![0f32; gu.len() / 2];
    m.par_chunks_mut(inter)
        .zip(gu.par_chunks(2 * inter))
        .for_each(|(m, gu)| {
            let (g, u) = gu.split_at(inter);
            for ((m, &g), &u) in m.iter_mut().zip(g).zip(u) {
                *m = g * sigmoid(g) * u;
            }
        });
    m
}

/// The backward of [`swiglu`]: the packed `[d gate | d up]` for the output gradient `dm`.
fn swiglu_backward(gu: &[f32], dm: &[f32], inter: usize) -> Vec<f32> {
    let mut dgu = vec![0f32; gu.len()];
    dgu.par_chunks_mut(2 * inter)
        .zip(gu.par_chunks(2 * inter).zip(dm.par_chunks(inter)))
        .for_each(|(dgu, (gu, dm))| {
            let (g, u) = gu.split_at(inter);
            let (dg, du) = dgu.split_at_mut(inter);
            for i in 0..inter {
                let sg = sigmoid(g[i]);
                du[i] = dm[i] * g[i] * sg;
                dg[i] = dm[i] * u[i] * sg * (1.0 + g[i] * (1.0 - sg));
            }
        });
    dgu
}

impl LoraNet {
    /// The embeddings of `ids`, `[ids.len(), hidden]`.
    fn embed_rows(&self, ids: &[u32]) -> R<Vec<f32>> {
        let (vocab, hidden) = self.embed.dims2()?;
        with_values(&self.embed, |e| {
            let mut x = Vec::with_capacity(ids.len() * hidden);
            for &id in ids {
                if id as usize >= vocab {
                    candle_core::bail!("token id {id} is outside the vocabulary ({vocab})");
                }
                x.extend_from_slice(&e[id as usize * hidden..][..hidden]);
            }
            Ok(x)
        })
    }

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
        let shape = AttentionShape {
            len: n,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        };
        let hidden = self.embed.dim(1)?;
        let mut x = self.embed_rows(&ids[..n])?;
        let mut saved = Vec::with_capacity(if save { self.blocks.len() } else { 0 });
        for b in &self.blocks {
            let (h, inv1) = rms_norm(&x, &b.input_norm, d.eps);
            let (qkv, qkv_lo) = b.qkv.forward(&h, n, lora, None)?;
            let width = b.qkv.width();
            let (mut q, mut k) = (
                take_cols(&qkv, width, 0, nh * hd),
                take_cols(&qkv, width, nh * hd, nkv * hd),
            );
            let v = take_cols(&qkv, width, (nh + nkv) * hd, nkv * hd);
            let (mut q_pre, mut k_pre) = (None, None);
            if let Some((qn, kn)) = &b.qk_norm {
                let (qy, qi) = rms_norm(&q, qn, d.eps);
                let (ky, ki) = rms_norm(&k, kn, d.eps);
                q_pre = Some((std::mem::replace(&mut q, qy), qi));
                k_pre = Some((std::mem::replace(&mut k, ky), ki));
            }
            rope(&mut q, nh, &d.inv_freq, 1.0);
            rope(&mut k, nkv, &d.inv_freq, 1.0);
            let (a, lse) = attention::forward(&q, &k, &v, shape);
            let resid = if save {
                x.clone()
            } else {
                std::mem::take(&mut x)
            };
            let (x2, o_lo) = b.o.forward(&a, n, lora, Some(resid))?;

            let (h2, inv2) = rms_norm(&x2, &b.post_norm, d.eps);
            let (gu, gate_up_lo) = b.gate_up.forward(&h2, n, lora, None)?;
            let m = swiglu(&gu, gu.len() / (2 * n));
            let (next, down_lo) = b.down.forward(&m, n, lora, Some(x2.clone()))?;
            if save {
                saved.push(BlockSaved {
                    x,
                    inv1,
                    h,
                    qkv_lo,
                    q_pre,
                    k_pre,
                    q,
                    k,
                    v,
                    lse,
                    a,
                    o_lo,
                    x2,
                    inv2,
                    h2,
                    gu,
                    gate_up_lo,
                    m,
                    down_lo,
                });
            }
            x = next;
        }
        let (xf, inv_last) = rms_norm(&x, &self.final_norm, d.eps);
        let head_in = xf[(from - 1) * hidden..].to_vec();
        let rows = n + 1 - from;
        let keep = save && rows * self.head.dim(0)? <= HEAD_KEEP_ELEMS;
        let (out, head_probs) = with_values(&self.head, |w| {
            Ok(fused::head_forward(
                &head_in,
                w,
                hidden,
                &ids[from..],
                self.head_rows(),
                keep,
            ))
        })?;
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
        let shape = AttentionShape {
            len: n,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        };
        let hidden = self.embed.dim(1)?;
        let (dxf, _) = with_values(&self.head, |w| {
            Ok(fused::head_backward(
                &s.head_in,
                w,
                hidden,
                &ids[from..],
                g,
                self.head_rows(),
                false,
                s.head_probs,
            ))
        })?;
        let mut dfull = vec![0f32; n * hidden];
        dfull[(from - 1) * hidden..].copy_from_slice(&dxf);
        let mut dy = vec![0f32; n * hidden];
        rms_norm_backward(&s.last, &s.inv_last, &self.final_norm, &dfull, &mut dy);
        let mut grads: LoraGrads = vec![None; self.order.len()];
        for (layer, (b, sv)) in self.blocks.iter().zip(s.blocks).enumerate().rev() {
            // MLP.
            let dm = b
                .down
                .backward(&sv.m, n, &sv.down_lo, &dy, &mut grads, true)?;
            let dgu = swiglu_backward(&sv.gu, &dm, dm.len() / n);
            let dh2 = b
                .gate_up
                .backward(&sv.h2, n, &sv.gate_up_lo, &dgu, &mut grads, true)?;
            let mut dx2 = dy;
            rms_norm_backward(&sv.x2, &sv.inv2, &b.post_norm, &dh2, &mut dx2);

            // Attention.
            let da = b.o.backward(&sv.a, n, &sv.o_lo, &dx2, &mut grads, true)?;
            let (mut dq, mut dk, dv) =
                attention::backward(&sv.q, &sv.k, &sv.v, &sv.a, &sv.lse, &da, shape);
            rope(&mut dq, nh, &d.inv_freq, -1.0);
            rope(&mut dk, nkv, &d.inv_freq, -1.0);
            if let Some((qn, kn)) = &b.qk_norm {
                let (pre, inv) = sv.q_pre.as_ref().expect("saved with the norms");
                let mut dqn = vec![0f32; dq.len()];
                rms_norm_backward(pre, inv, qn, &dq, &mut dqn);
                dq = dqn;
                let (pre, inv) = sv.k_pre.as_ref().expect("saved with the norms");
                let mut dkn = vec![0f32; dk.len()];
                rms_norm_backward(pre, inv, kn, &dk, &mut dkn);
                dk = dkn;
            }
            let (qw, kw) = (nh * hd, nkv * hd);
            let mut dqkv = Vec::with_capacity(n * (qw + 2 * kw));
            for i in 0..n {
                dqkv.extend_from_slice(&dq[i * qw..][..qw]);
                dqkv.extend_from_slice(&dk[i * kw..][..kw]);
                dqkv.extend_from_slice(&dv[i * kw..][..kw]);
            }
            let first = layer == 0;
            let dh = b
                .qkv
                .backward(&sv.h, n, &sv.qkv_lo, &dqkv, &mut grads, !first)?;
            dy = dx2;
            if !first {
                rms_norm_backward(&sv.x, &sv.inv1, &b.input_norm, &dh, &mut dy);
            }
        }
        let mut flat = Vec::new();
        for (slot, g) in grads.into_iter().enumerate() {
            let (da, db) = g.ok_or_else(|| {
                candle_core::Error::Msg(format!("no gradient for LoRA module {}", self.order[slot]))
            })?;
            flat.extend(da);
            flat.extend(db);
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
