//! Our own Q8_0 matmul for weights that candle 0.11 has no fast CPU kernel for without
//! compile-time target features: Q5_0/Q8_0/Q6_K rows whose length is not a multiple of 256
//! (Qwen2.5-0.5B's hidden size is 896) and Q6_K/Q8_0 at decode time. Weights are stored as
//! 32-value blocks with an f32 scale; activations are quantized the same way per row, and the
//! dot products run on AVX-512 VNNI or AVX2 (picked at run time) with a scalar fallback.

use candle_core::{Device, Tensor};

use crate::error::Result;

pub(crate) const QK: usize = 32;

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Block {
    d: f32,
    qs: [i8; QK],
}

/// A `[n, k]` weight matrix in Q8 blocks, row-major (each output row's blocks contiguous).
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    blocks: Vec<Block>,
}

fn quantize_row(x: &[f32], out: &mut [Block]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        b.d = d;
        for (q, v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round().clamp(-127.0, 127.0) as i8;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Vnni,
    Avx2,
    Scalar,
}

fn level() -> Level {
    use std::sync::OnceLock;
    static L: OnceLock<Level> = OnceLock::new();
    *L.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Level::Vnni;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        Level::Scalar
    })
}

impl Q8Matrix {
    /// Quantizes a dense `[n, k]` f32 tensor; `k` must be a multiple of 32.
    pub fn from_tensor(w: &Tensor) -> Result<Self> {
        let (n, k) = w.dims2()?;
        let data = w
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let kb = k / QK;
        let mut blocks = vec![
            Block {
                d: 0.0,
                qs: [0; QK]
            };
            n * kb
        ];
        for (row, out) in data.chunks_exact(k).zip(blocks.chunks_exact_mut(kb)) {
            quantize_row(row, out);
        }
        Ok(Self { n, k, blocks })
    }

    pub fn supports(k: usize) -> bool {
        k % QK == 0
    }

    /// `x @ W^T` for `x` of shape `[m, k]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            return Err(crate::error::EngineError::InvalidInput(format!(
                "matmul: input has {k} columns, weight {}",
                self.k
            )));
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let kb = k / QK;
        let mut act = vec![
            Block {
                d: 0.0,
                qs: [0; QK]
            };
            m * kb
        ];
        for (row, out) in xs.chunks_exact(k).zip(act.chunks_exact_mut(kb)) {
            quantize_row(row, out);
        }
        let n = self.n;
        let mut out = vec![0f32; m * n];
        let out_ptr = out.as_mut_ptr() as usize;
        const TILE: usize = 16;
        let n_tiles = n.div_ceil(TILE);
        let lvl = level();
        let run = |range: std::ops::Range<usize>| {
            let out_ptr = out_ptr as *mut f32;
            for tile in range {
                let c0 = tile * TILE;
                let c1 = (c0 + TILE).min(n);
                for r in 0..m {
                    let a = &act[r * kb..(r + 1) * kb];
                    for c in c0..c1 {
                        let w = &self.blocks[c * kb..(c + 1) * kb];
                        let v = dot(lvl, w, a);
                        // SAFETY: each tile owns columns c0..c1 of every row.
                        unsafe { *out_ptr.add(r * n + c) = v };
                    }
                }
            }
        };
        if n_tiles * m * kb < 4096 {
            run(0..n_tiles);
        } else {
            super::pool::run(m, n_tiles, run);
        }
        Ok(Tensor::from_vec(out, (m, n), &Device::Cpu)?)
    }
}

#[inline]
fn dot(lvl: Level, w: &[Block], a: &[Block]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        match lvl {
            // SAFETY: the level was detected at run time.
            Level::Vnni => return unsafe { x86::dot_vnni(w, a) },
            Level::Avx2 => return unsafe { x86::dot_avx2(w, a) },
            Level::Scalar => {}
        }
    }
    let _ = lvl;
    dot_scalar(w, a)
}

fn dot_scalar(w: &[Block], a: &[Block]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(bw, ba)| {
            let s: i32 = bw
                .qs
                .iter()
                .zip(&ba.qs)
                .map(|(&x, &y)| x as i32 * y as i32)
                .sum();
            bw.d * ba.d * s as f32
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Block;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let lo = _mm256_castps256_ps128(v);
        let s = _mm_add_ps(hi, lo);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(w: &[Block], a: &[Block]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (bw, ba) in w.iter().zip(a) {
            let x = _mm256_loadu_si256(bw.qs.as_ptr() as *const __m256i);
            let y = _mm256_loadu_si256(ba.qs.as_ptr() as *const __m256i);
            let ax = _mm256_sign_epi8(x, x);
            let sy = _mm256_sign_epi8(y, x);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(bw.d * ba.d), _mm256_cvtepi32_ps(p), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_vnni(w: &[Block], a: &[Block]) -> f32 {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        let n = w.len();
        while i + 2 <= n {
            let (w0, a0, w1, a1) = (&w[i], &a[i], &w[i + 1], &a[i + 1]);
            let x0 = _mm256_loadu_si256(w0.qs.as_ptr() as *const __m256i);
            let y0 = _mm256_loadu_si256(a0.qs.as_ptr() as *const __m256i);
            let x1 = _mm256_loadu_si256(w1.qs.as_ptr() as *const __m256i);
            let y1 = _mm256_loadu_si256(a1.qs.as_ptr() as *const __m256i);
            let p0 = _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(x0, x0),
                _mm256_sign_epi8(y0, x0),
            );
            let p1 = _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(x1, x1),
                _mm256_sign_epi8(y1, x1),
            );
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(w0.d * a0.d), _mm256_cvtepi32_ps(p0), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(w1.d * a1.d), _mm256_cvtepi32_ps(p1), acc1);
            i += 2;
        }
        if i < n {
            let (w0, a0) = (&w[i], &a[i]);
            let x0 = _mm256_loadu_si256(w0.qs.as_ptr() as *const __m256i);
            let y0 = _mm256_loadu_si256(a0.qs.as_ptr() as *const __m256i);
            let p0 = _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(x0, x0),
                _mm256_sign_epi8(y0, x0),
            );
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(w0.d * a0.d), _mm256_cvtepi32_ps(p0), acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }
}
