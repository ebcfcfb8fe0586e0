//! Our own Qwen2 / Qwen3 forward on candle ops.
//!
//! One forward serves prefill, batched decode and scoring: the new tokens of every sequence in
//! the call are stacked into one `[rows, hidden]` matrix, so each weight matmul is one call per
//! layer whatever the batch; only attention (RoPE, KV append, softmax over the sequence's own
//! cache) runs per sequence, in plain Rust over the engine-owned [`KvCache`].

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};
use std::sync::Arc;

use super::kv::KvCache;
use crate::error::Result;

/// The two decoder families we run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Qwen2 / Qwen2.5: q/k/v biases, no q/k norm.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k, no biases, explicit head_dim.
    Qwen3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

/// Shape and hyper-parameters of a loaded model.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub context_length: usize,
}

impl ModelConfig {
    /// How `other`'s shape differs from this one's, one `what: this vs other` line per field
    /// (empty when the two are interchangeable: same architecture and tensor shapes, same
    /// context). rope_theta and rms_norm_eps are not shapes and are not compared.
    pub fn shape_differences(&self, other: &ModelConfig) -> Vec<String> {
        let mut out = Vec::new();
        if self.arch != other.arch {
            out.push(format!(
                "architecture: {} vs {}",
                self.arch.name(),
                other.arch.name()
            ));
        }
        for (what, a, b) in [
            ("vocab_size", self.vocab_size, other.vocab_size),
            ("hidden_size", self.hidden_size, other.hidden_size),
            (
                "intermediate_size",
                self.intermediate_size,
                other.intermediate_size,
            ),
            ("num_layers", self.num_layers, other.num_layers),
            ("num_heads", self.num_heads, other.num_heads),
            ("num_kv_heads", self.num_kv_heads, other.num_kv_heads),
            ("head_dim", self.head_dim, other.head_dim),
            ("context_length", self.context_length, other.context_length),
        ] {
            if a != b {
                out.push(format!("{what}: {a} vs {b}"));
            }
        }
        out
    }
}

/// A weight matrix: candle's `QMatMul` (dense, or quantized types candle runs fast) or our
/// own Q8 kernel for the rest (see [`super::q8`]).
pub(crate) enum Weight {
    Candle(QMatMul),
    /// Our Q8 kernel; `batched` is candle's repacked kernel for the same weight where it has
    /// one (Q8_0 rows a multiple of 256 long), faster for prefill-sized inputs.
    Q8 {
        q8: super::q8::Q8Matrix,
        batched: Option<QMatMul>,
    },
    /// The file's own blocks; `batched` is candle's repacked kernel, faster once many rows
    /// share each weight load (prefill).
    Native {
        native: super::native::NativeMatrix,
        batched: Option<QMatMul>,
    },
}

/// Rows from which one sequence's prefill switches to candle's repacked kernel where there is
/// one, and every forward to candle's thread pool (`pool::run`). Batched decode steps of up to
/// 8 requests stay below it, on our kernels and our pool.
pub(crate) const BATCHED_ROWS: usize = 9;

impl Weight {
    /// `x Wᵀ`. `one_sequence`: every row belongs to one sequence (a prefill or a score), so
    /// candle's repacked kernels may take it. Rows of several sequences (a batched decode
    /// step) always go through our kernels, which give each row exactly what it gets alone:
    /// a request's tokens never depend on which others share its batch.
    pub fn forward(&self, x: &Tensor, one_sequence: bool) -> Result<Tensor> {
        let wide = one_sequence && x.dim(0)? >= BATCHED_ROWS;
        Ok(match self {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Q8 {
                batched: Some(b), ..
            } if wide => b.forward(x)?,
            Weight::Q8 { q8, .. } => q8.forward(x)?,
            Weight::Native {
                batched: Some(b), ..
            } if wide => b.forward(x)?,
            Weight::Native { native, .. } => native.forward(x)?,
        })
    }
}

/// A linear layer: weight and optional bias.
pub(crate) struct Linear {
    pub w: Weight,
    pub b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor, one_sequence: bool) -> Result<Tensor> {
        let y = self.w.forward(x, one_sequence)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

pub(crate) struct Layer {
    pub attn_norm: Tensor,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub ffn_norm: Tensor,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// Token embedding table: kept quantized when rows can be dequantized one at a time.
pub(crate) enum Embedding {
    Quantized(Arc<candle_core::quantized::QTensor>),
    Dense(Tensor),
}

impl Embedding {
    fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        let t = Tensor::new(ids, &Device::Cpu)?;
        Ok(match self {
            Embedding::Quantized(q) => q.embedding(&t)?,
            Embedding::Dense(w) => w.index_select(&t, 0)?,
        })
    }
}

pub(crate) struct Model {
    pub cfg: ModelConfig,
    pub embed: Embedding,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub lm_head: Weight,
    /// RoPE inverse frequencies, `head_dim / 2` of them.
    inv_freq: Vec<f32>,
}

/// New tokens for one sequence in a forward call.
pub(crate) struct Chunk<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
}

/// Which rows' logits a forward returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// The logits after the last token of each chunk.
    LastOfEach,
    /// The logits after every token (scoring).
    All,
}

impl Model {
    pub fn new(
        cfg: ModelConfig,
        embed: Embedding,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Weight,
    ) -> Self {
        let hd = cfg.head_dim;
        let inv_freq = (0..hd / 2)
            .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        Self {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
        }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(
            self.cfg.num_layers,
            self.cfg.num_kv_heads * self.cfg.head_dim,
        )
    }

    /// Runs the new tokens of every chunk through the model, appending to each chunk's cache.
    /// The caller has validated ids, lengths and context; caches change only on success.
    pub fn forward(&self, chunks: &mut [Chunk<'_>], want: Want) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;

        // Row bookkeeping: (first row, rows, start position) per chunk.
        let mut spans = Vec::with_capacity(chunks.len());
        let mut ids = Vec::new();
        for c in chunks.iter_mut() {
            let start = c.cache.len();
            c.cache.reserve(start + c.tokens.len(), cfg.context_length);
            spans.push(Span {
                row0: ids.len(),
                rows: c.tokens.len(),
                start,
            });
            ids.extend_from_slice(c.tokens);
        }
        let n = ids.len();
        let one = chunks.len() == 1;
        let (cos, sin) = self.rope_tables(&spans, n);

        let mut x = self.embed.forward(&ids)?.to_dtype(DType::F32)?;
        let mut attn_out = vec![0f32; n * nh * hd];
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let mut q = to_vec(&layer.q.forward(&h, one)?)?;
            let mut k = to_vec(&layer.k.forward(&h, one)?)?;
            let v = to_vec(&layer.v.forward(&h, one)?)?;
            if let Some(w) = &layer.q_norm {
                head_rms_norm(&mut q, w, eps);
            }
            if let Some(w) = &layer.k_norm {
                head_rms_norm(&mut k, w, eps);
            }
            rope(&mut q, nh, hd, &cos, &sin);
            rope(&mut k, nkv, hd, &cos, &sin);
            let kv_row = nkv * hd;
            for (c, s) in chunks.iter_mut().zip(&spans) {
                let r = s.row0 * kv_row..(s.row0 + s.rows) * kv_row;
                c.cache.write(li, s.start, &k[r.clone()], &v[r]);
            }
            let layers: Vec<&super::kv::LayerKv> =
                chunks.iter().map(|c| c.cache.layer(li)).collect();
            attention(&q, &layers, &spans, nh, nkv, hd, &mut attn_out);
            let a = Tensor::from_slice(&attn_out, (n, nh * hd), &Device::Cpu)?;
            x = (x + layer.o.forward(&a, one)?)?;

            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let g = layer.gate.forward(&h, one)?;
            let u = layer.up.forward(&h, one)?;
            let act = (candle_nn::ops::silu(&g)? * u)?;
            x = (x + layer.down.forward(&act, one)?)?;
        }
        for (c, s) in chunks.iter_mut().zip(&spans) {
            c.cache.commit(s.start + s.rows);
        }

        let x = match want {
            Want::All => x,
            Want::LastOfEach => {
                let rows: Vec<u32> = spans.iter().map(|s| (s.row0 + s.rows - 1) as u32).collect();
                if rows.len() == n {
                    x
                } else {
                    x.index_select(&Tensor::new(rows.as_slice(), &Device::Cpu)?, 0)?
                }
            }
        };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        let logits = self.lm_head.forward(&x, one)?.to_dtype(DType::F32)?;
        Ok(logits.to_vec2::<f32>()?)
    }

    /// cos/sin of every row's position, `head_dim / 2` values per row.
    fn rope_tables(&self, spans: &[Span], n: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for s in spans {
            for i in 0..s.rows {
                let pos = (s.start + i) as f32;
                for &f in &self.inv_freq {
                    let (sn, cs) = (pos * f).sin_cos();
                    cos.push(cs);
                    sin.push(sn);
                }
            }
        }
        (cos, sin)
    }
}

#[derive(Debug, Clone, Copy)]
struct Span {
    row0: usize,
    rows: usize,
    start: usize,
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// RMSNorm over each `head_dim` slice (Qwen3's q_norm / k_norm).
fn head_rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let hd = w.len();
    for head in x.chunks_exact_mut(hd) {
        let ms = head.iter().map(|v| v * v).sum::<f32>() / hd as f32;
        let s = 1.0 / (ms + eps).sqrt();
        for (v, wi) in head.iter_mut().zip(w) {
            *v = *v * s * wi;
        }
    }
}

/// NEOX-style rotary embedding (rotate halves), as Qwen uses, in place over `[rows, heads, hd]`.
fn rope(x: &mut [f32], heads: usize, hd: usize, cos: &[f32], sin: &[f32]) {
    let half = hd / 2;
    for (row, xr) in x.chunks_exact_mut(heads * hd).enumerate() {
        let c = &cos[row * half..(row + 1) * half];
        let s = &sin[row * half..(row + 1) * half];
        for head in xr.chunks_exact_mut(hd) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * c[i] - x1 * s[i];
                b[i] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

/// Causal attention of each new row against its own sequence's cache (GQA: query head `h`
/// reads kv head `h / (nh / nkv)`). Work items are (row, head) pairs, spread over our compute
/// pool (`pool.rs`) when there is enough of them to pay for it.
fn attention(
    q: &[f32],
    layers: &[&super::kv::LayerKv],
    spans: &[Span],
    nh: usize,
    nkv: usize,
    hd: usize,
    out: &mut [f32],
) {
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let kv_row = nkv * hd;
    // Map each row to its chunk.
    let mut row_chunk = Vec::with_capacity(out.len() / (nh * hd));
    for (ci, s) in spans.iter().enumerate() {
        row_chunk.extend(std::iter::repeat_n(ci, s.rows));
    }
    let n_items = row_chunk.len() * nh;
    let work: usize = spans
        .iter()
        .map(|s| s.rows * (s.start + s.rows))
        .sum::<usize>()
        * nh
        * hd;
    let out_ptr = out.as_mut_ptr() as usize;

    let run = |range: std::ops::Range<usize>| {
        let mut scores = Vec::new();
        for item in range {
            let (row, h) = (item / nh, item % nh);
            let ci = row_chunk[row];
            let s = spans[ci];
            let pos = s.start + (row - s.row0);
            let len = pos + 1;
            let kvh = h / group;
            let qh = &q[(row * nh + h) * hd..(row * nh + h + 1) * hd];
            let l = layers[ci];
            // SAFETY: each (row, head) item owns its own disjoint `hd` slice of `out`.
            let o = unsafe {
                std::slice::from_raw_parts_mut((out_ptr as *mut f32).add((row * nh + h) * hd), hd)
            };
            let head = HeadKv {
                k: &l.k,
                v: &l.v,
                row: kv_row,
                col: kvh * hd,
            };
            attend(qh, head, len, scale, &mut scores, o);
        }
    };
    if work < (1 << 16) {
        run(0..n_items);
    } else {
        super::pool::run(row_chunk.len(), n_items, run);
    }
}

/// One KV head of one layer's cache: position `j`'s key is `k[j · row + col..][..hd]`.
#[derive(Clone, Copy)]
struct HeadKv<'a> {
    k: &'a [f32],
    v: &'a [f32],
    row: usize,
    col: usize,
}

/// `o = softmax(q · K[..len] · scale) V[..len]` for one query row and head. Compiled twice: for
/// AVX-512 (picked at run time, so the loops run on wide vectors with no build flags) and for
/// the baseline. Rust neither fuses nor reorders float operations, so both give the same bits.
fn attend(q: &[f32], kv: HeadKv, len: usize, scale: f32, scores: &mut Vec<f32>, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::native::available() {
        // SAFETY: AVX-512 F, AVX2 and FMA were detected at run time.
        return unsafe { attend_avx512(q, kv, len, scale, scores, o) };
    }
    attend_body(q, kv, len, scale, scores, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_avx512(
    q: &[f32],
    kv: HeadKv,
    len: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    attend_body(q, kv, len, scale, scores, o)
}

#[inline(always)]
fn attend_body(
    q: &[f32],
    kv: HeadKv,
    len: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    let hd = q.len();
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for j in 0..len {
        let kj = &kv.k[j * kv.row + kv.col..][..hd];
        let sc = dot(q, kj) * scale;
        max = max.max(sc);
        scores.push(sc);
    }
    let mut sum = 0.0;
    for sc in scores.iter_mut() {
        *sc = (*sc - max).exp();
        sum += *sc;
    }
    let inv = 1.0 / sum;
    o.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let vj = &kv.v[j * kv.row + kv.col..][..hd];
        let p = p * inv;
        for (oi, vi) in o.iter_mut().zip(vj) {
            *oi += p * vi;
        }
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The AVX-512 build of the attention loops gives the same bits as the baseline build, and
    /// both equal softmax(q·K)·V computed plainly in f64 to within rounding.
    #[test]
    fn attention_for_avx512_equals_the_baseline_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for (hd, len, heads) in [(64, 1, 2), (64, 37, 2), (128, 300, 3), (24, 5, 1)] {
            let row = heads * hd;
            let k: Vec<f32> = (0..len * row).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let v: Vec<f32> = (0..len * row).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let q: Vec<f32> = (0..hd).map(|_| rng.gen_range(-3.0..3.0)).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            for h in 0..heads {
                let kv = HeadKv {
                    k: &k,
                    v: &v,
                    row,
                    col: h * hd,
                };
                let (mut s, mut base) = (Vec::new(), vec![0f32; hd]);
                attend_body(&q, kv, len, scale, &mut s, &mut base);
                let mut fast = vec![f32::NAN; hd];
                attend(&q, kv, len, scale, &mut s, &mut fast);
                assert_eq!(
                    base.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "hd={hd} len={len} head {h}"
                );
                let sc: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..hd)
                            .map(|i| q[i] as f64 * k[j * row + h * hd + i] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let max = sc.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|s| (s - max).exp()).sum();
                for i in 0..hd {
                    let want: f64 = (0..len)
                        .map(|j| (sc[j] - max).exp() / z * v[j * row + h * hd + i] as f64)
                        .sum();
                    assert!(
                        (base[i] as f64 - want).abs() < 1e-4,
                        "hd={hd} len={len} head {h} [{i}]: {} vs {want}",
                        base[i]
                    );
                }
            }
        }
    }
}
