//! Our own Q8_0 matmul for weights that candle 0.11 has no fast CPU kernel for without
//! compile-time target features: Q5_0/Q8_0/Q6_K rows whose length is not a multiple of 256
//! (Qwen2.5-0.5B's hidden size is 896) and Q6_K/Q8_0 at decode time. Weights are stored as
//! 32-value blocks with an f32 scale; activations are quantized the same way per row, and the
//! dot products run on AVX-512 VNNI or AVX2 (picked at run time) with a scalar fallback.

use candle_core::{Device, Tensor};

use super::rows::{matmul, RowsDot, Strided};
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
        k.is_multiple_of(QK)
    }

    /// `x @ W^T` for `x` of shape `[m, k]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_at(level(), x, true)
    }

    /// [`Self::forward`] at a given kernel level; `multi_row` lets inputs of several rows take
    /// the kernel that reads each weight block once for up to 8 rows (AVX-512 VNNI only).
    fn forward_at(&self, lvl: Level, x: &Tensor, multi_row: bool) -> Result<Tensor> {
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
        let (n, w) = (
            self.n,
            Strided {
                data: &self.blocks,
                stride: kb,
            },
        );
        let out = if multi_row && lvl == Level::Vnni && m >= 2 && kb.is_multiple_of(2) {
            let pairs = pair_up(&act);
            let a = Strided {
                data: &pairs,
                stride: kb / 2,
            };
            matmul(w, a, m, n, 4096, &PairDot)
        } else {
            let a = Strided {
                data: &act,
                stride: kb,
            };
            matmul(w, a, m, n, 4096, &BlockDot(lvl))
        };
        Ok(Tensor::from_vec(out, (m, n), &Device::Cpu)?)
    }
}

/// One row at a time: each row reads the weight again (from cache).
struct BlockDot(Level);

impl RowsDot<Block, Block> for BlockDot {
    #[inline]
    fn dot<const R: usize>(&self, w: &[Block], a: [&[Block]; R]) -> [f32; R] {
        a.map(|a| dot(self.0, w, a))
    }
}

/// Several rows at once on AVX-512 VNNI ([`x86::dot_rows`]): each pair of weight blocks is
/// loaded, made absolute and its scales spread once for up to 8 rows, two blocks per
/// instruction. At decode with a batch of requests this is most of the work. Only built
/// after `Level::Vnni` was detected.
struct PairDot;

impl RowsDot<Block, ActPair> for PairDot {
    #[inline]
    fn dot<const R: usize>(&self, w: &[Block], a: [&[ActPair]; R]) -> [f32; R] {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `PairDot` is used only at `Level::Vnni`; every row holds `kp` pairs and
            // `w` holds `2 kp` blocks.
            unsafe { x86::dot_rows(w, a) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("PairDot runs only at Level::Vnni (x86_64)")
    }
}

/// A row's blocks two by two, laid out for [`x86::dot_rows`].
fn pair_up(act: &[Block]) -> Vec<ActPair> {
    act.chunks_exact(2)
        .map(|b| {
            let mut p = ActPair {
                qs: [0; 2 * QK],
                d: [0.0; 16],
            };
            p.qs[..QK].copy_from_slice(&b[0].qs);
            p.qs[QK..].copy_from_slice(&b[1].qs);
            p.d[..8].fill(b[0].d);
            p.d[8..].fill(b[1].d);
            p
        })
        .collect()
}

/// Two consecutive activation blocks laid out for [`x86::dot_rows`]: their 64 values, and each
/// block's scale repeated over the 8 lanes its dot product lands in.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct ActPair {
    qs: [i8; 2 * QK],
    d: [f32; 16],
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
    use super::{ActPair, Block};
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
    /// Dot products of one weight row (`2 · a[r].len()` blocks) with `R` activation rows.
    /// Per pair of blocks: |w| and w's sign mask once, then per row a sign-adjusted VNNI
    /// dot product of 64 values (lanes 0-7 the first block, 8-15 the second) scaled by
    /// `w.d · a.d` lane-wise.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_rows<const R: usize>(w: &[Block], a: [&[ActPair]; R]) -> [f32; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        let pairs = a.first().map_or(0, |r| r.len());
        debug_assert!(w.len() >= 2 * pairs && a.iter().all(|r| r.len() == pairs));
        for p in 0..pairs {
            let (b0, b1) = (w.get_unchecked(2 * p), w.get_unchecked(2 * p + 1));
            let x = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(b0.qs.as_ptr() as *const __m256i)),
                _mm256_loadu_si256(b1.qs.as_ptr() as *const __m256i),
                1,
            );
            let ax = _mm512_abs_epi8(x);
            let neg = _mm512_movepi8_mask(x);
            let wd = _mm512_mask_mov_ps(_mm512_set1_ps(b0.d), 0xFF00, _mm512_set1_ps(b1.d));
            for r in 0..R {
                let ap = a[r].get_unchecked(p);
                let y = _mm512_load_si512(ap.qs.as_ptr() as *const _);
                let sy = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
                let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, sy);
                let scale = _mm512_mul_ps(wd, _mm512_load_ps(ap.d.as_ptr()));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rows(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The multi-row kernel equals one dot product per row (same integer sums, only the float
    /// summation order differs), and both are close to the exact f32 product.
    #[test]
    fn multi_row_kernel_matches_row_by_row_and_the_exact_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (n, k) in [(1, 64), (37, 896), (20, 4864)] {
            let w: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-0.1..0.1)).collect();
            let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            let q = Q8Matrix::from_tensor(&w).unwrap();
            for m in [1, 2, 3, 5, 8, 11, 19] {
                let mut x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
                // One row with an outlier, one all zeros (scale 0).
                x[k / 3] = 40.0;
                if m > 2 {
                    x[2 * k..3 * k].fill(0.0);
                }
                let x = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
                let exact = rows(&x.matmul(&w.t().unwrap()).unwrap());
                let one = rows(&q.forward_at(level(), &x, false).unwrap());
                let multi = rows(&q.forward(&x).unwrap());
                // Each row alone through the one-row kernel: bit-equal (a batch of requests
                // decodes exactly what each would alone).
                let alone: Vec<f32> = (0..m)
                    .flat_map(|r| rows(&q.forward(&x.narrow(0, r, 1).unwrap()).unwrap()))
                    .collect();
                assert!(
                    multi
                        .iter()
                        .zip(&alone)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "n={n} k={k} m={m}: batched rows differ from rows alone"
                );
                let scale = exact.iter().fold(1e-6f32, |s, v| s.max(v.abs()));
                for i in 0..m * n {
                    assert!(
                        (multi[i] - one[i]).abs() <= 1e-4 * scale,
                        "n={n} k={k} m={m} [{i}]: multi-row {} row-by-row {}",
                        multi[i],
                        one[i]
                    );
                    // Row 0's outlier coarsens its block's quantization; the others must be
                    // close to exact.
                    assert!(
                        i < n || (one[i] - exact[i]).abs() <= 2e-2 * scale,
                        "n={n} k={k} m={m} [{i}]: q8 {} exact {}",
                        one[i],
                        exact[i]
                    );
                }
            }
        }
    }
}
