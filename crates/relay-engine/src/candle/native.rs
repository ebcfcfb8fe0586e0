//! Decode-sized matmuls straight on the GGUF's own Q4_K and Q6_K blocks.
//!
//! At decode every weight byte is read once per token, so bytes per weight set the speed.
//! candle 0.11's run-time-dispatched kernels expand Q4_K to 6 bits per weight (f32 sub-block
//! scales in 16-row tiles) and have no fast Q6_K GEMV, which made us re-quantize Q6_K to 8.5
//! bits. Here the file's nibbles and 6-bit values stay as they are (4.75 / 6.6 bits per
//! weight); only each block's header is unpacked once at load (f16 scales to f32, packed 6-bit
//! sub-block scales to bytes), so the inner loop decodes nothing per block. The dot products
//! run on AVX-512 (BW + VNNI), picked at run time, next to a scalar version of the same
//! integer arithmetic that the tests hold them to. Inputs of many rows (prefill) go to
//! candle's repacked kernels instead (see `Weight::Native`), which reuse each weight load.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use super::rows::{matmul, RowsDot, Strided};
use crate::error::{EngineError, Result};

const QK_K: usize = 256;

/// ggml's `block_q4_K`, as the file stores it.
#[derive(Clone, Copy)]
#[repr(C)]
struct FileQ4K {
    d: f16,
    dmin: f16,
    scales: [u8; 12],
    qs: [u8; QK_K / 2],
}

/// ggml's `block_q6_K`, as the file stores it.
#[derive(Clone, Copy)]
#[repr(C)]
struct FileQ6K {
    ql: [u8; QK_K / 2],
    qh: [u8; QK_K / 4],
    scales: [i8; QK_K / 16],
    d: f16,
}

const _: () = assert!(std::mem::size_of::<FileQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<FileQ6K>() == 210);

/// A Q4_K block with its header unpacked. Value `i` of 32-value sub-block `s` is
/// `d * sc[s] * q - dmin * mn[s]`, `q` the file's nibble (chunk `j` of 32 bytes holds
/// sub-block `2j` in its low nibbles and `2j + 1` in its high ones).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Q4KBlock {
    qs: [u8; QK_K / 2],
    d: f32,
    dmin: f32,
    sc: [u8; 8],
    mn: [u8; 8],
}

/// A Q6_K block with its scale in f32; value `i` is `d * sc[i / 16] * (q - 32)`.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Q6KBlock {
    ql: [u8; QK_K / 2],
    qh: [u8; QK_K / 4],
    sc: [i8; QK_K / 16],
    d: f32,
}

/// Where each Q4_K sub-block's 32 activations sit in [`ActQ4K::qs`]: one 64-byte load of
/// nibbles holds sub-blocks (0, 2) in its low and (1, 3) in its high nibbles (and 4..8
/// likewise), so activations are stored in that order. The permutation is its own inverse.
const Q4K_ORDER: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];

/// 256 activations quantized to i8 with one scale, laid out for the Q4_K kernel, plus each
/// sub-block's sum times `d` for the mins term.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct ActQ4K {
    qs: [i8; QK_K],
    d: f32,
    bsum: [f32; 8],
}

/// 256 activations quantized to i8 with one scale, in order, plus the sum of each 16 (for
/// Q6_K's -32 offset).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct ActQ6K {
    qs: [i8; QK_K],
    d: f32,
    bsum: [i16; QK_K / 16],
}

enum Blocks {
    Q4K(Vec<Q4KBlock>),
    Q6K(Vec<Q6KBlock>),
}

/// A `[n, k]` weight kept in (header-unpacked) GGUF blocks, row-major.
pub(crate) struct NativeMatrix {
    n: usize,
    k: usize,
    blocks: Blocks,
}

/// Which implementation of the dot products runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Avx512,
    Scalar,
}

/// The fastest level this CPU runs, detected once.
pub(crate) fn level() -> Level {
    use std::sync::OnceLock;
    static L: OnceLock<Level> = OnceLock::new();
    *L.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
        }
        Level::Scalar
    })
}

/// True when the SIMD kernels run here; without them the scalar code would be slower than
/// the alternatives, so the loader keeps those.
pub(crate) fn available() -> bool {
    level() == Level::Avx512
}

fn read_blocks<T: Copy>(bytes: &[u8], count: usize) -> Result<impl Iterator<Item = T> + '_> {
    let size = std::mem::size_of::<T>();
    if bytes.len() != count * size {
        return Err(EngineError::InvalidInput(format!(
            "weight data has {} bytes, expected {}",
            bytes.len(),
            count * size
        )));
    }
    // SAFETY: T is a repr(C) block of plain integers / f16 with ggml's layout, every bit
    // pattern is valid, and each chunk is exactly size_of::<T>() bytes.
    Ok(bytes
        .chunks_exact(size)
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr() as *const T) }))
}

/// ggml's packing of Q4_K's eight 6-bit scales and mins into 12 bytes.
fn q4k_scale_min(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

impl Q4KBlock {
    fn from_file(b: FileQ4K) -> Self {
        let mut sc = [0u8; 8];
        let mut mn = [0u8; 8];
        for j in 0..8 {
            (sc[j], mn[j]) = q4k_scale_min(j, &b.scales);
        }
        Self {
            qs: b.qs,
            d: b.d.to_f32(),
            dmin: b.dmin.to_f32(),
            sc,
            mn,
        }
    }
}

impl Q6KBlock {
    fn from_file(b: FileQ6K) -> Self {
        Self {
            ql: b.ql,
            qh: b.qh,
            sc: b.scales,
            d: b.d.to_f32(),
        }
    }
}

impl NativeMatrix {
    /// Wraps a Q4_K or Q6_K `[n, k]` tensor with `k` a multiple of 256; `None` otherwise.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let Ok((n, k)) = q.shape().dims2() else {
            return Ok(None);
        };
        if k % QK_K != 0 {
            return Ok(None);
        }
        let data = q.data()?;
        let count = n * k / QK_K;
        let blocks = match q.dtype() {
            GgmlDType::Q4K => Blocks::Q4K(
                read_blocks::<FileQ4K>(&data, count)?
                    .map(Q4KBlock::from_file)
                    .collect(),
            ),
            GgmlDType::Q6K => Blocks::Q6K(
                read_blocks::<FileQ6K>(&data, count)?
                    .map(Q6KBlock::from_file)
                    .collect(),
            ),
            _ => return Ok(None),
        };
        Ok(Some(Self { n, k, blocks }))
    }

    /// `x @ W^T` for `x` of shape `[m, k]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_at(level(), x)
    }

    pub(crate) fn forward_at(&self, lvl: Level, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            return Err(EngineError::InvalidInput(format!(
                "matmul: input has {k} columns, weight {}",
                self.k
            )));
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let kb = k / QK_K;
        let out = match &self.blocks {
            Blocks::Q4K(w) => {
                let a: Vec<ActQ4K> = xs.chunks_exact(QK_K).map(quantize_q4k_act).collect();
                block_rows_matmul(w, &a, kb, m, self.n, &Q4KDot(lvl))
            }
            Blocks::Q6K(w) => {
                let a: Vec<ActQ6K> = xs.chunks_exact(QK_K).map(quantize_q6k_act).collect();
                block_rows_matmul(w, &a, kb, m, self.n, &Q6KDot(lvl))
            }
        };
        Ok(Tensor::from_vec(out, (m, self.n), &Device::Cpu)?)
    }
}

/// `n` weight rows against `m` activation rows, both `kb` super-blocks long.
fn block_rows_matmul<W: Sync, A: Sync>(
    w: &[W],
    a: &[A],
    kb: usize,
    m: usize,
    n: usize,
    d: &impl RowsDot<W, A>,
) -> Vec<f32> {
    let (w, a) = (
        Strided {
            data: w,
            stride: kb,
        },
        Strided {
            data: a,
            stride: kb,
        },
    );
    matmul(w, a, m, n, 256, d)
}

struct Q4KDot(Level);
struct Q6KDot(Level);

impl RowsDot<Q4KBlock, ActQ4K> for Q4KDot {
    #[inline]
    fn dot<const R: usize>(&self, w: &[Q4KBlock], a: [&[ActQ4K]; R]) -> [f32; R] {
        #[cfg(target_arch = "x86_64")]
        if self.0 == Level::Avx512 && R > 1 {
            // SAFETY: the level was detected at run time (or a test checked it).
            return unsafe { x86::dot_q4k_rows(w, a) };
        }
        a.map(|a| dot_q4k(self.0, w, a))
    }
}

impl RowsDot<Q6KBlock, ActQ6K> for Q6KDot {
    #[inline]
    fn dot<const R: usize>(&self, w: &[Q6KBlock], a: [&[ActQ6K]; R]) -> [f32; R] {
        #[cfg(target_arch = "x86_64")]
        if self.0 == Level::Avx512 && R > 1 {
            // SAFETY: as above.
            return unsafe { x86::dot_q6k_rows(w, a) };
        }
        a.map(|a| dot_q6k(self.0, w, a))
    }
}

/// Symmetric 8-bit quantization of 256 values: the scale and the values in order.
fn quantize_256(x: &[f32]) -> (f32, [i8; QK_K]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; QK_K];
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * id).round().clamp(-127.0, 127.0) as i8;
    }
    (d, q)
}

fn quantize_q4k_act(x: &[f32]) -> ActQ4K {
    let (d, q) = quantize_256(x);
    let mut a = ActQ4K {
        qs: [0; QK_K],
        d,
        bsum: [0.0; 8],
    };
    for (s, src) in q.chunks_exact(32).enumerate() {
        let p = Q4K_ORDER[s];
        a.qs[32 * p..32 * p + 32].copy_from_slice(src);
        a.bsum[s] = d * src.iter().map(|&v| v as i32).sum::<i32>() as f32;
    }
    a
}

fn quantize_q6k_act(x: &[f32]) -> ActQ6K {
    let (d, qs) = quantize_256(x);
    let mut bsum = [0i16; QK_K / 16];
    for (s, src) in bsum.iter_mut().zip(qs.chunks_exact(16)) {
        *s = src.iter().map(|&v| v as i16).sum();
    }
    ActQ6K { qs, d, bsum }
}

#[inline]
fn dot_q4k(lvl: Level, w: &[Q4KBlock], a: &[ActQ4K]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if lvl == Level::Avx512 {
        // SAFETY: the level was detected at run time (or a test checked it).
        return unsafe { x86::dot_q4k(w, a) };
    }
    let _ = lvl;
    dot_q4k_scalar(w, a)
}

#[inline]
fn dot_q6k(lvl: Level, w: &[Q6KBlock], a: &[ActQ6K]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if lvl == Level::Avx512 {
        // SAFETY: as above.
        return unsafe { x86::dot_q6k(w, a) };
    }
    let _ = lvl;
    dot_q6k_scalar(w, a)
}

fn dot_q4k_scalar(w: &[Q4KBlock], a: &[ActQ4K]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut isum = 0i32;
        for j in 0..4 {
            let (lo, hi) = (2 * j, 2 * j + 1);
            let (alo, ahi) = (32 * Q4K_ORDER[lo], 32 * Q4K_ORDER[hi]);
            let (mut dlo, mut dhi) = (0i32, 0i32);
            for l in 0..32 {
                let b = x.qs[32 * j + l];
                dlo += (b & 0x0F) as i32 * y.qs[alo + l] as i32;
                dhi += (b >> 4) as i32 * y.qs[ahi + l] as i32;
            }
            isum += x.sc[lo] as i32 * dlo + x.sc[hi] as i32 * dhi;
        }
        let mins: f32 = x.mn.iter().zip(&y.bsum).map(|(&m, &s)| m as f32 * s).sum();
        sum += x.d * y.d * isum as f32 - x.dmin * mins;
    }
    sum
}

fn dot_q6k_scalar(w: &[Q6KBlock], a: &[ActQ6K]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut isum = 0i32;
        for half in 0..2 {
            for l in 0..32 {
                let (qa, qb) = (x.ql[64 * half + l], x.ql[64 * half + l + 32]);
                let h = x.qh[32 * half + l];
                let vals = [
                    (qa & 0x0F) | ((h & 3) << 4),
                    (qb & 0x0F) | (((h >> 2) & 3) << 4),
                    (qa >> 4) | (((h >> 4) & 3) << 4),
                    (qb >> 4) | (((h >> 6) & 3) << 4),
                ];
                for (t, &v) in vals.iter().enumerate() {
                    let i = 128 * half + 32 * t + l;
                    isum += x.sc[i / 16] as i32 * (v as i32 - 32) * y.qs[i] as i32;
                }
            }
        }
        sum += x.d * y.d * isum as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Byte-shuffle indices that spread two of the eight i16 sub-block scales (broadcast to
    /// every 128-bit lane) over a vector of maddubs pair sums: lanes 0-1 get scale `a`, lanes
    /// 2-3 scale `b`, matching one 64-byte nibble load (see `Q4K_ORDER`).
    const fn q4k_scale_idx(a: u8, b: u8) -> [u8; 64] {
        let mut idx = [0u8; 64];
        let mut i = 0;
        while i < 64 {
            let s = if i < 32 { a } else { b };
            idx[i] = 2 * s + (i % 2) as u8;
            i += 1;
        }
        idx
    }
    const Q4K_SCALE_IDX: [[u8; 64]; 4] = [
        q4k_scale_idx(0, 2),
        q4k_scale_idx(1, 3),
        q4k_scale_idx(4, 6),
        q4k_scale_idx(5, 7),
    ];

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum256(x: __m256) -> f32 {
        let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        let r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn dot_q4k(w: &[Q4KBlock], a: &[ActQ4K]) -> f32 {
        let m4 = _mm512_set1_epi8(0x0F);
        let idx = Q4K_SCALE_IDX.map(|i| _mm512_loadu_si512(i.as_ptr() as *const _));
        let mut acc = _mm512_setzero_ps();
        let mut acc_min = _mm256_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            let q0 = _mm512_loadu_si512(x.qs.as_ptr() as *const _);
            let q1 = _mm512_loadu_si512(x.qs.as_ptr().add(64) as *const _);
            let sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64(
                x.sc.as_ptr() as *const __m128i
            )));
            let ya = y.qs.as_ptr();
            let y0 = _mm512_load_si512(ya as *const _);
            let y1 = _mm512_load_si512(ya.add(64) as *const _);
            let y2 = _mm512_load_si512(ya.add(128) as *const _);
            let y3 = _mm512_load_si512(ya.add(192) as *const _);
            let p0 = _mm512_maddubs_epi16(_mm512_and_si512(q0, m4), y0);
            let p1 = _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(q0, 4), m4), y1);
            let p2 = _mm512_maddubs_epi16(_mm512_and_si512(q1, m4), y2);
            let p3 = _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(q1, 4), m4), y3);
            let s =
                _mm512_dpwssd_epi32(_mm512_setzero_si512(), p0, _mm512_shuffle_epi8(sc, idx[0]));
            let s = _mm512_dpwssd_epi32(s, p1, _mm512_shuffle_epi8(sc, idx[1]));
            let s = _mm512_dpwssd_epi32(s, p2, _mm512_shuffle_epi8(sc, idx[2]));
            let s = _mm512_dpwssd_epi32(s, p3, _mm512_shuffle_epi8(sc, idx[3]));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(x.d * y.d), acc);
            let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                x.mn.as_ptr() as *const __m128i
            )));
            let bs = _mm256_loadu_ps(y.bsum.as_ptr());
            acc_min = _mm256_fmadd_ps(_mm256_mul_ps(mn, bs), _mm256_set1_ps(x.dmin), acc_min);
        }
        _mm512_reduce_add_ps(acc) - hsum256(acc_min)
    }

    /// Word-permute indices giving 128-bit lane `l` of a vector the scale of 16-value group
    /// `first + l` (Q6_K has one scale per 16 values, 4 groups per 64-byte load).
    const fn q6k_scale_idx(first: u16) -> [u16; 32] {
        let mut idx = [0u16; 32];
        let mut i = 0;
        while i < 32 {
            idx[i] = first + (i / 8) as u16;
            i += 1;
        }
        idx
    }
    const Q6K_SCALE_IDX: [[u16; 32]; 4] = [
        q6k_scale_idx(0),
        q6k_scale_idx(4),
        q6k_scale_idx(8),
        q6k_scale_idx(12),
    ];
    /// Per-word shifts that bring a 64-value load's two high bits to bits 4-5: the low
    /// nibbles' values take qh bits 0-1 (first 32) and 2-3 (next 32), shifted left; the high
    /// nibbles' take bits 4-5 and 6-7, shifted right.
    const fn q6k_shifts(first: u16, second: u16) -> [u16; 32] {
        let mut s = [0u16; 32];
        let mut i = 0;
        while i < 32 {
            s[i] = if i < 16 { first } else { second };
            i += 1;
        }
        s
    }
    const Q6K_SHL_LO: [u16; 32] = q6k_shifts(4, 2);
    const Q6K_SHR_HI: [u16; 32] = q6k_shifts(0, 2);

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn dot_q6k(w: &[Q6KBlock], a: &[ActQ6K]) -> f32 {
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        let idx = Q6K_SCALE_IDX.map(|i| _mm512_loadu_si512(i.as_ptr() as *const _));
        let shl = _mm512_loadu_si512(Q6K_SHL_LO.as_ptr() as *const _);
        let shr = _mm512_loadu_si512(Q6K_SHR_HI.as_ptr() as *const _);
        let mut acc = _mm512_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.sc.as_ptr() as *const __m128i));
            let scz = _mm512_zextsi256_si512(sc16);
            // Σ sc * (q - 32) * a = Σ sc * q * a - 32 * Σ_groups sc * (Σ a).
            let corr = _mm256_madd_epi16(sc16, _mm256_loadu_si256(y.bsum.as_ptr() as *const _));
            let mut s = _mm512_zextsi256_si512(_mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_slli_epi32(corr, 5),
            ));
            for half in 0..2 {
                let ql = _mm512_loadu_si512(x.ql.as_ptr().add(64 * half) as *const _);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    x.qh.as_ptr().add(32 * half) as *const __m256i
                ));
                let vlo = _mm512_or_si512(
                    _mm512_and_si512(ql, m4),
                    _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30),
                );
                let vhi = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                    _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30),
                );
                let ya = y.qs.as_ptr().add(128 * half);
                let plo = _mm512_maddubs_epi16(vlo, _mm512_load_si512(ya as *const _));
                let phi = _mm512_maddubs_epi16(vhi, _mm512_load_si512(ya.add(64) as *const _));
                s = _mm512_dpwssd_epi32(s, plo, _mm512_permutexvar_epi16(idx[2 * half], scz));
                s = _mm512_dpwssd_epi32(s, phi, _mm512_permutexvar_epi16(idx[2 * half + 1], scz));
            }
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(x.d * y.d), acc);
        }
        _mm512_reduce_add_ps(acc)
    }

    /// [`dot_q4k`] against `R` activation rows: each block's nibbles and scale vectors are
    /// unpacked once for all of them.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn dot_q4k_rows<const R: usize>(
        w: &[Q4KBlock],
        a: [&[ActQ4K]; R],
    ) -> [f32; R] {
        let m4 = _mm512_set1_epi8(0x0F);
        let idx = Q4K_SCALE_IDX.map(|i| _mm512_loadu_si512(i.as_ptr() as *const _));
        let mut acc = [_mm512_setzero_ps(); R];
        let mut acc_min = [_mm256_setzero_ps(); R];
        for (b, x) in w.iter().enumerate() {
            let q0 = _mm512_loadu_si512(x.qs.as_ptr() as *const _);
            let q1 = _mm512_loadu_si512(x.qs.as_ptr().add(64) as *const _);
            let n0 = _mm512_and_si512(q0, m4);
            let n1 = _mm512_and_si512(_mm512_srli_epi16(q0, 4), m4);
            let n2 = _mm512_and_si512(q1, m4);
            let n3 = _mm512_and_si512(_mm512_srli_epi16(q1, 4), m4);
            let sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64(
                x.sc.as_ptr() as *const __m128i
            )));
            let s0 = _mm512_shuffle_epi8(sc, idx[0]);
            let s1 = _mm512_shuffle_epi8(sc, idx[1]);
            let s2 = _mm512_shuffle_epi8(sc, idx[2]);
            let s3 = _mm512_shuffle_epi8(sc, idx[3]);
            let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                x.mn.as_ptr() as *const __m128i
            )));
            let dmin = _mm256_set1_ps(x.dmin);
            for r in 0..R {
                let y = a[r].get_unchecked(b);
                let ya = y.qs.as_ptr();
                let p0 = _mm512_maddubs_epi16(n0, _mm512_load_si512(ya as *const _));
                let p1 = _mm512_maddubs_epi16(n1, _mm512_load_si512(ya.add(64) as *const _));
                let p2 = _mm512_maddubs_epi16(n2, _mm512_load_si512(ya.add(128) as *const _));
                let p3 = _mm512_maddubs_epi16(n3, _mm512_load_si512(ya.add(192) as *const _));
                let s = _mm512_dpwssd_epi32(_mm512_setzero_si512(), p0, s0);
                let s = _mm512_dpwssd_epi32(s, p1, s1);
                let s = _mm512_dpwssd_epi32(s, p2, s2);
                let s = _mm512_dpwssd_epi32(s, p3, s3);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(x.d * y.d), acc[r]);
                // (mn · bsum) · dmin, in dot_q4k's order, so one row's result is bit-equal.
                let mb = _mm256_mul_ps(mn, _mm256_loadu_ps(y.bsum.as_ptr()));
                acc_min[r] = _mm256_fmadd_ps(mb, dmin, acc_min[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]) - hsum256(acc_min[r]);
        }
        out
    }

    /// [`dot_q6k`] against `R` activation rows: each block's 6-bit values and scale vectors
    /// are unpacked once for all of them.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn dot_q6k_rows<const R: usize>(
        w: &[Q6KBlock],
        a: [&[ActQ6K]; R],
    ) -> [f32; R] {
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        let idx = Q6K_SCALE_IDX.map(|i| _mm512_loadu_si512(i.as_ptr() as *const _));
        let shl = _mm512_loadu_si512(Q6K_SHL_LO.as_ptr() as *const _);
        let shr = _mm512_loadu_si512(Q6K_SHR_HI.as_ptr() as *const _);
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, x) in w.iter().enumerate() {
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.sc.as_ptr() as *const __m128i));
            let scz = _mm512_zextsi256_si512(sc16);
            let mut v = [_mm512_setzero_si512(); 4];
            for half in 0..2 {
                let ql = _mm512_loadu_si512(x.ql.as_ptr().add(64 * half) as *const _);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    x.qh.as_ptr().add(32 * half) as *const __m256i
                ));
                v[2 * half] = _mm512_or_si512(
                    _mm512_and_si512(ql, m4),
                    _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30),
                );
                v[2 * half + 1] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                    _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30),
                );
            }
            let sv = [
                _mm512_permutexvar_epi16(idx[0], scz),
                _mm512_permutexvar_epi16(idx[1], scz),
                _mm512_permutexvar_epi16(idx[2], scz),
                _mm512_permutexvar_epi16(idx[3], scz),
            ];
            for r in 0..R {
                let y = a[r].get_unchecked(b);
                let corr = _mm256_madd_epi16(sc16, _mm256_loadu_si256(y.bsum.as_ptr() as *const _));
                let mut s = _mm512_zextsi256_si512(_mm256_sub_epi32(
                    _mm256_setzero_si256(),
                    _mm256_slli_epi32(corr, 5),
                ));
                let ya = y.qs.as_ptr();
                for (j, (vj, sj)) in v.iter().zip(&sv).enumerate() {
                    let p =
                        _mm512_maddubs_epi16(*vj, _mm512_load_si512(ya.add(64 * j) as *const _));
                    s = _mm512_dpwssd_epi32(s, p, *sj);
                }
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(x.d * y.d), acc[r]);
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
    use candle_core::quantized::ggml_file::qtensor_from_ggml;
    use rand::{Rng, SeedableRng};

    /// Random but well-formed raw blocks: any bytes for the quants and packed scales, finite
    /// small f16 block scales.
    fn random_blocks(dt: GgmlDType, count: usize, rng: &mut rand::rngs::StdRng) -> Vec<u8> {
        let size = dt.type_size();
        let mut bytes = vec![0u8; count * size];
        rng.fill(bytes.as_mut_slice());
        for b in bytes.chunks_exact_mut(size) {
            let mut put = |at: usize, v: f32| {
                b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
            };
            match dt {
                GgmlDType::Q4K => {
                    put(0, rng.gen_range(0.0..0.01));
                    put(2, rng.gen_range(0.0..0.01));
                }
                GgmlDType::Q6K => put(208, rng.gen_range(-0.01..0.01)),
                _ => unreachable!(),
            }
        }
        bytes
    }

    fn check(dt: GgmlDType, n: usize, k: usize, x: Vec<f32>, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let m = x.len() / k;
        let raw = random_blocks(dt, n * k / QK_K, &mut rng);
        let q = qtensor_from_ggml(dt, &raw, vec![n, k], &Device::Cpu).unwrap();
        let w = NativeMatrix::from_qtensor(&q).unwrap().unwrap();
        let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        let reference = xt
            .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let scalar = w.forward_at(Level::Scalar, &xt).unwrap();
        let scalar = scalar.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = reference.iter().fold(1e-6f32, |s, v| s.max(v.abs()));
        for (i, (s, r)) in scalar.iter().zip(&reference).enumerate() {
            // 8-bit activations: within 2% of the output scale of the exact product.
            assert!(
                (s - r).abs() <= 2e-2 * scale,
                "{dt:?} n={n} k={k} [{i}]: scalar {s} exact {r}"
            );
        }
        if level() == Level::Avx512 {
            // Several rows at once give each row exactly what it gets alone (a batch of
            // requests decodes the same tokens as each request by itself).
            let rows: Vec<f32> = (0..m)
                .flat_map(|r| {
                    let row = xt.narrow(0, r, 1).unwrap();
                    let y = w.forward_at(Level::Avx512, &row).unwrap();
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                })
                .collect();
            let all = w.forward_at(Level::Avx512, &xt).unwrap();
            let all = all.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                all.iter()
                    .zip(&rows)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dt:?} n={n} k={k} m={m}: batched rows differ from rows alone"
            );
            let simd = w.forward_at(Level::Avx512, &xt).unwrap();
            let simd = simd.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, (v, s)) in simd.iter().zip(&scalar).enumerate() {
                // Same integer sums; only the float summation order differs.
                assert!(
                    (v - s).abs() <= 1e-4 * scale,
                    "{dt:?} n={n} k={k} [{i}]: simd {v} scalar {s}"
                );
            }
        }
    }

    #[test]
    fn kernels_match_dequantized_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for dt in [GgmlDType::Q4K, GgmlDType::Q6K] {
            for (n, k, m) in [
                (1, 256, 1),
                (37, 512, 1),
                (48, 1536, 3),
                (20, 256, 9),
                (9, 768, 7),
            ] {
                let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
                check(dt, n, k, x, n as u64);
            }
            // Edge cases: an all-zero row (scale 0), a constant row that saturates every
            // value at ±127, and one huge value among tiny ones.
            let k = 512;
            let mut x = vec![0f32; k];
            x.extend(std::iter::repeat_n(-3.5f32, k));
            x.extend((0..k).map(|i| if i == 300 { 1e4 } else { 1e-3 * i as f32 }));
            check(dt, 17, k, x, 99);
        }
    }
}
