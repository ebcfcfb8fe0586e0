//! Matmuls straight on the GGUF's own quantized blocks (Q4_K, Q6_K, Q5_0, Q8_0), with AVX2
//! dot products picked at run time. candle 0.11 has AVX2 versions of these, but only when the
//! crate is compiled with `target-feature=+avx2`; its run-time-dispatched repacked kernels
//! expand Q4_K to ~6 bits per weight, which costs decode bandwidth. Keeping the file's own
//! blocks keeps decode at the file's size per token. The AVX2 kernels for the K-quants follow
//! candle's `quantized/avx.rs` (after llama.cpp's ggml).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use crate::error::{EngineError, Result};

const QK_K: usize = 256;
const QK8_0: usize = 32;

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ4K {
    d: f16,
    dmin: f16,
    scales: [u8; 12],
    qs: [u8; QK_K / 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ6K {
    ql: [u8; QK_K / 2],
    qh: [u8; QK_K / 4],
    scales: [i8; QK_K / 16],
    d: f16,
}

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ5_0 {
    d: f16,
    qh: [u8; 4],
    qs: [u8; QK8_0 / 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ8_0 {
    d: f16,
    qs: [i8; QK8_0],
}

/// Activation block for the K-quants: 256 values, one scale, sums of each 16.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ8K {
    d: f32,
    qs: [i8; QK_K],
    bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

enum Blocks {
    Q4K(Vec<BlockQ4K>),
    Q6K(Vec<BlockQ6K>),
    Q5_0(Vec<BlockQ5_0>),
    Q8_0(Vec<BlockQ8_0>),
}

/// A `[n, k]` weight kept in its GGUF block format.
pub(crate) struct NativeMatrix {
    n: usize,
    k: usize,
    blocks: Blocks,
}

fn cast_blocks<T: Copy>(bytes: &[u8], count: usize) -> Result<Vec<T>> {
    if bytes.len() != count * std::mem::size_of::<T>() {
        return Err(EngineError::InvalidInput(format!(
            "weight data has {} bytes, expected {}",
            bytes.len(),
            count * std::mem::size_of::<T>()
        )));
    }
    let mut v: Vec<T> = Vec::with_capacity(count);
    // SAFETY: T is a repr(C) plain-old-data block with the same layout as ggml's, and the
    // length was checked; every bit pattern is a valid T.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len());
        v.set_len(count);
    }
    Ok(v)
}

/// True when this CPU has the AVX2 + FMA the kernels need.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl NativeMatrix {
    /// Wraps a quantized tensor whose type we have a kernel for; `None` otherwise.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        if !available() {
            return Ok(None);
        }
        let Ok((n, k)) = q.shape().dims2() else {
            return Ok(None);
        };
        let data = q.data()?;
        let blocks = match q.dtype() {
            GgmlDType::Q4K if k % QK_K == 0 => Blocks::Q4K(cast_blocks(&data, n * k / QK_K)?),
            GgmlDType::Q6K if k % QK_K == 0 => Blocks::Q6K(cast_blocks(&data, n * k / QK_K)?),
            GgmlDType::Q5_0 if k % QK8_0 == 0 => Blocks::Q5_0(cast_blocks(&data, n * k / QK8_0)?),
            GgmlDType::Q8_0 if k % QK8_0 == 0 => Blocks::Q8_0(cast_blocks(&data, n * k / QK8_0)?),
            _ => return Ok(None),
        };
        Ok(Some(Self { n, k, blocks }))
    }

    /// `x @ W^T` for `x` of shape `[m, k]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            return Err(EngineError::InvalidInput(format!(
                "matmul: input has {k} columns, weight {}",
                self.k
            )));
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let out = match &self.blocks {
            Blocks::Q4K(w) => {
                let a = quantize_q8k(&xs, m, k);
                matmul(w, &a, m, self.n, k / QK_K, |w, a| unsafe {
                    x86::dot_q4k(w, a)
                })
            }
            Blocks::Q6K(w) => {
                let a = quantize_q8k(&xs, m, k);
                matmul(w, &a, m, self.n, k / QK_K, |w, a| unsafe {
                    x86::dot_q6k(w, a)
                })
            }
            Blocks::Q5_0(w) => {
                let a = quantize_q8_0(&xs, m, k);
                matmul(w, &a, m, self.n, k / QK8_0, |w, a| unsafe {
                    x86::dot_q5_0(w, a)
                })
            }
            Blocks::Q8_0(w) => {
                let a = quantize_q8_0(&xs, m, k);
                matmul(w, &a, m, self.n, k / QK8_0, |w, a| unsafe {
                    x86::dot_q8_0(w, a)
                })
            }
        };
        Ok(Tensor::from_vec(out, (m, self.n), &Device::Cpu)?)
    }
}

/// Output columns are split into tiles over candle's thread pool; each tile runs every input
/// row against its weight rows while they are hot in cache.
fn matmul<W: Sync, A: Sync>(
    w: &[W],
    a: &[A],
    m: usize,
    n: usize,
    kb: usize,
    dot: impl Fn(&[W], &[A]) -> f32 + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let out_ptr = out.as_mut_ptr() as usize;
    const TILE: usize = 16;
    let n_tiles = n.div_ceil(TILE);
    let run = |range: std::ops::Range<usize>| {
        let out_ptr = out_ptr as *mut f32;
        for tile in range {
            let (c0, c1) = (tile * TILE, (tile * TILE + TILE).min(n));
            for r in 0..m {
                let ar = &a[r * kb..(r + 1) * kb];
                for c in c0..c1 {
                    let v = dot(&w[c * kb..(c + 1) * kb], ar);
                    // SAFETY: each tile owns columns c0..c1 of every row.
                    unsafe { *out_ptr.add(r * n + c) = v };
                }
            }
        }
    };
    if n_tiles * m * kb < 2048 {
        run(0..n_tiles);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(n_tiles, run);
    }
    out
}

fn quantize_q8k(x: &[f32], m: usize, k: usize) -> Vec<BlockQ8K> {
    let mut out = Vec::with_capacity(m * k / QK_K);
    for xb in x.chunks_exact(QK_K) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut b = BlockQ8K {
            d,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        };
        for (q, v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        out.push(b);
    }
    out
}

fn quantize_q8_0(x: &[f32], m: usize, k: usize) -> Vec<BlockQ8_0> {
    let mut out = Vec::with_capacity(m * k / QK8_0);
    for xb in x.chunks_exact(QK8_0) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut b = BlockQ8_0 {
            d: f16::from_f32(d),
            qs: [0; QK8_0],
        };
        for (q, v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
        out.push(b);
    }
    out
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::*;
    pub(super) unsafe fn dot_q4k(_: &[BlockQ4K], _: &[BlockQ8K]) -> f32 {
        unreachable!("native kernels are x86-only")
    }
    pub(super) unsafe fn dot_q6k(_: &[BlockQ6K], _: &[BlockQ8K]) -> f32 {
        unreachable!("native kernels are x86-only")
    }
    pub(super) unsafe fn dot_q5_0(_: &[BlockQ5_0], _: &[BlockQ8_0]) -> f32 {
        unreachable!("native kernels are x86-only")
    }
    pub(super) unsafe fn dot_q8_0(_: &[BlockQ8_0], _: &[BlockQ8_0]) -> f32 {
        unreachable!("native kernels are x86-only")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(x: __m256) -> f32 {
        let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        let r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn mul_sum_i8_pairs(x: __m256i, y: __m256i) -> __m256 {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        let dot = _mm256_maddubs_epi16(ax, sy);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            let d = _mm256_set1_ps(x.d.to_f32() * y.d.to_f32());
            let qx = _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i);
            let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs(qx, qy), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn bytes_from_nibbles_32(p: *const u8) -> __m256i {
        let tmp = _mm_loadu_si128(p as *const __m128i);
        let bytes =
            _mm256_insertf128_si256::<1>(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4));
        _mm256_and_si256(_mm256_set1_epi8(0xF), bytes)
    }

    /// 0xFF in byte j where bit j of `x` is set.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bytes_from_bits_32(x: u32) -> __m256i {
        let shuf = _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0x0000000000000000,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
        let bit_mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
        let bytes = _mm256_or_si256(bytes, bit_mask);
        _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q5_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            let d = _mm256_set1_ps(x.d.to_f32() * y.d.to_f32());
            let mut qx = bytes_from_nibbles_32(x.qs.as_ptr());
            // value = nibble + 16 * high_bit - 16: set the upper nibble (−16) where the bit is 0.
            let bxhi = bytes_from_bits_32(u32::from_le_bytes(x.qh));
            let bxhi = _mm256_andnot_si256(bxhi, _mm256_set1_epi8(0xF0u8 as i8));
            qx = _mm256_or_si256(qx, bxhi);
            let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs(qx, qy), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn scale_shuffle(i: usize) -> __m128i {
        const K: [u8; 128] = {
            let mut k = [0u8; 128];
            let mut i = 0;
            while i < 128 {
                k[i] = (i / 8) as u8;
                i += 1;
            }
            k
        };
        _mm_loadu_si128((K.as_ptr() as *const __m128i).add(i))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn scale_shuffle_k4(i: usize) -> __m256i {
        const K: [u8; 256] = {
            let mut k = [0u8; 256];
            let mut i = 0;
            while i < 256 {
                k[i] = (2 * (i / 32) + (i % 2)) as u8;
                i += 1;
            }
            k
        };
        _mm256_loadu_si256((K.as_ptr() as *const __m256i).add(i))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q6k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        let m32s = _mm256_set1_epi8(32);
        let mut acc = _mm256_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            let d = y.d * x.d.to_f32();
            let mut q4 = x.ql.as_ptr();
            let mut qh = x.qh.as_ptr();
            let mut q8 = y.qs.as_ptr();
            let scales = _mm_loadu_si128(x.scales.as_ptr() as *const __m128i);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 128 {
                let is = j * 4;
                let s0 = _mm_shuffle_epi8(scales, scale_shuffle(is));
                let s1 = _mm_shuffle_epi8(scales, scale_shuffle(is + 1));
                let s2 = _mm_shuffle_epi8(scales, scale_shuffle(is + 2));
                let s3 = _mm_shuffle_epi8(scales, scale_shuffle(is + 3));
                let b1 = _mm256_loadu_si256(q4 as *const __m256i);
                q4 = q4.add(32);
                let b2 = _mm256_loadu_si256(q4 as *const __m256i);
                q4 = q4.add(32);
                let bh = _mm256_loadu_si256(qh as *const __m256i);
                qh = qh.add(32);
                let h0 = _mm256_slli_epi16(_mm256_and_si256(bh, m2), 4);
                let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 2), m2), 4);
                let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 4), m2), 4);
                let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 6), m2), 4);
                let v0 = _mm256_or_si256(_mm256_and_si256(b1, m4), h0);
                let v1 = _mm256_or_si256(_mm256_and_si256(b2, m4), h1);
                let v2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), h2);
                let v3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4), h3);
                let y0 = _mm256_loadu_si256(q8 as *const __m256i);
                let y1 = _mm256_loadu_si256(q8.add(32) as *const __m256i);
                let y2 = _mm256_loadu_si256(q8.add(64) as *const __m256i);
                let y3 = _mm256_loadu_si256(q8.add(96) as *const __m256i);
                q8 = q8.add(128);
                let p0 =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(v0, y0), _mm256_maddubs_epi16(m32s, y0));
                let p1 =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(v1, y1), _mm256_maddubs_epi16(m32s, y1));
                let p2 =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(v2, y2), _mm256_maddubs_epi16(m32s, y2));
                let p3 =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(v3, y3), _mm256_maddubs_epi16(m32s, y3));
                let p0 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(s0), p0);
                let p1 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(s1), p1);
                let p2 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(s2), p2);
                let p3 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(s3), p3);
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p2, p3));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q4k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
        const KMASK1: u32 = 0x3f3f3f3f;
        const KMASK2: u32 = 0x0f0f0f0f;
        const KMASK3: u32 = 0x03030303;
        let m4 = _mm256_set1_epi8(0xF);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            let d = y.d * x.d.to_f32();
            let dmin = -y.d * x.dmin.to_f32();
            let mut utmp = [0u32; 4];
            for (i, u) in utmp.iter_mut().take(3).enumerate() {
                *u = u32::from_le_bytes([
                    x.scales[4 * i],
                    x.scales[4 * i + 1],
                    x.scales[4 * i + 2],
                    x.scales[4 * i + 3],
                ]);
            }
            utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
            let uaux = utmp[1] & KMASK1;
            utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
            utmp[2] = uaux;
            utmp[0] &= KMASK1;
            let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
                utmp[3] as i32,
                utmp[2] as i32,
                utmp[1] as i32,
                utmp[0] as i32,
            ));
            let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let q8s = _mm_hadd_epi16(
                _mm256_extracti128_si256::<0>(q8sums),
                _mm256_extracti128_si256::<1>(q8sums),
            );
            let prod = _mm_madd_epi16(_mm256_extracti128_si256::<1>(mins_and_scales), q8s);
            acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
            let sc128 = _mm256_extracti128_si256::<0>(mins_and_scales);
            let scales = _mm256_insertf128_si256::<1>(_mm256_castsi128_si256(sc128), sc128);
            let mut sumi = _mm256_setzero_si256();
            let mut q4 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();
            for j in 0..QK_K / 64 {
                let scale_l = _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * j));
                let scale_h = _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * j + 1));
                let bits = _mm256_loadu_si256(q4 as *const __m256i);
                q4 = q4.add(32);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                let yl = _mm256_loadu_si256(q8 as *const __m256i);
                let yh = _mm256_loadu_si256(q8.add(32) as *const __m256i);
                q8 = q8.add(64);
                sumi = _mm256_add_epi32(
                    sumi,
                    _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(lo, yl)),
                );
                sumi = _mm256_add_epi32(
                    sumi,
                    _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(hi, yh)),
                );
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        let acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
        let acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
        hsum(acc) + _mm_cvtss_f32(acc_m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    /// Our kernels against candle's kernels on the same blocks and against the dequantized
    /// weights. Both quantize activations to 8 bits, though not always with the same block
    /// size (candle's repacked Q8_0 uses 256-value blocks), so they agree to 1% of the output
    /// scale, and to 2% of it with the exact product.
    #[test]
    fn kernels_match_candle() {
        if !available() {
            return;
        }
        let (n, k, m) = (48, 512, 3);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| (i * 104729 % 997) as f32 / 498.0 - 1.0)
            .collect();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        for dt in [
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
        ] {
            let q = QTensor::quantize(&wt, dt).unwrap();
            let ours = NativeMatrix::from_qtensor(&q)
                .unwrap()
                .unwrap()
                .forward(&xt)
                .unwrap();
            let reference = xt
                .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
                .unwrap();
            let theirs = candle_core::quantized::QMatMul::from_qtensor(q)
                .unwrap()
                .forward(&xt)
                .unwrap();
            let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let r = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = r.iter().fold(0f32, |s, v| s.max(v.abs()));
            for i in 0..a.len() {
                assert!(
                    (a[i] - b[i]).abs() <= 1e-2 * scale,
                    "{dt:?} [{i}]: ours {} candle {}",
                    a[i],
                    b[i]
                );
                assert!(
                    (a[i] - r[i]).abs() <= 2e-2 * scale,
                    "{dt:?} [{i}]: ours {} dequantized {}",
                    a[i],
                    r[i]
                );
            }
        }
    }
}
