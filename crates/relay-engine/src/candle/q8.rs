//! Our own Q8_0 matmul for weights that candle 0.11 has no fast CPU kernel for without
//! compile-time target features: Q5_0/Q8_0/Q6_K rows whose length is not a multiple of 256
//! (Qwen2.5-0.5B's hidden size is 896) and Q6_K/Q8_0 at decode time. Weights are quantized to
//! 32-value blocks with an f32 scale; activations the same way per row.
//!
//! On AVX-512 VNNI the weights are repacked into [`Tile`]s: sixteen output rows' block,
//! interleaved so that one `vpdpbusd` multiplies four columns of all sixteen rows by the same
//! four activation values. A 32-value block of sixteen rows then costs one activation row eight
//! `vpdpbusd`s and four more vector ops, the sixteen results land in sixteen lanes (no
//! horizontal sums), and up to eight activation rows share each weight load. Elsewhere the
//! blocks stay row-major and the dot products run on AVX2 (picked at run time) or in scalar code.

use candle_core::{Device, Tensor};

use super::rows::{matmul, tiles_matmul, RowsDot, Strided, TileDot, TILE_ROWS};
use crate::error::Result;

pub(crate) const QK: usize = 32;
/// Output rows per [`Tile`].
const TR: usize = TILE_ROWS;

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Block {
    d: f32,
    qs: [i8; QK],
}

/// Block `b` of sixteen weight rows, laid out for [`x86::tile_dot`]: `qs[64 j + 4 i + t]` is
/// row `i`'s value `4 j + t` plus 128 (`vpdpbusd` wants one unsigned operand), `d[i]` row `i`'s
/// scale. Rows past the matrix's end are zeros with scale 0.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile {
    qs: [u8; TR * QK],
    d: [f32; TR],
}

/// An activation block for [`x86::tile_dot`]: its values, its scale, and `-128 Σ qs`, which
/// takes the weights' offset of 128 back out of the integer sum.
#[derive(Clone, Copy)]
#[repr(C)]
struct ActBlock {
    qs: [i8; QK],
    d: f32,
    bias: i32,
}

enum Layout {
    /// Each output row's blocks contiguous (AVX2 and scalar).
    Rows(Vec<Block>),
    /// Sixteen rows at a time, group-major: group `g`'s block `b` at `g · kb + b` (VNNI).
    Tiles(Vec<Tile>),
}

/// A `[n, k]` weight matrix in Q8 blocks.
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    lvl: Level,
    layout: Layout,
}

/// A block's scale and its inverse for the largest magnitude `amax`. A scale below the
/// smallest normal f32 would have an infinite inverse: such a block is all zeros.
fn scales(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    if d >= f32::MIN_POSITIVE {
        (d, 1.0 / d)
    } else {
        (0.0, 0.0)
    }
}

/// Quantizes 32 values to `qs` with `round`; returns the scale.
fn quantize_block(x: &[f32], qs: &mut [i8; QK], round: fn(f32) -> f32) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (d, id) = scales(amax);
    for (q, v) in qs.iter_mut().zip(x) {
        *q = round(v * id).clamp(-127.0, 127.0) as i8;
    }
    d
}

/// Quantizes a weight row, halves away from zero (as ggml's reference Q8_0 does).
fn quantize_row(x: &[f32], out: &mut [Block]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        b.d = quantize_block(xb, &mut b.qs, f32::round);
    }
}

/// Quantizes an activation row, halves to even (what SIMD conversion does), so that every
/// level multiplies the same integers.
fn quantize_act_row(x: &[f32], out: &mut [Block]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        b.d = quantize_block(xb, &mut b.qs, f32::round_ties_even);
    }
}

/// Quantizes an activation row for the tiles (as [`quantize_act_row`], plus each block's
/// offset correction).
fn quantize_act(x: &[f32], out: &mut [ActBlock]) {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Vnni {
        // SAFETY: AVX-512 F was detected at run time.
        return unsafe { x86::quantize_act(x, out) };
    }
    quantize_act_scalar(x, out)
}

fn quantize_act_scalar(x: &[f32], out: &mut [ActBlock]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        b.d = quantize_block(xb, &mut b.qs, f32::round_ties_even);
        b.bias = -128 * b.qs.iter().map(|&q| q as i32).sum::<i32>();
    }
}

/// Quantizes `m` activation rows of `k` values (`xs`, row-major) for the tiles.
fn quantize_acts(xs: &[f32], k: usize) -> Vec<ActBlock> {
    let kb = k / QK;
    let empty = ActBlock {
        qs: [0; QK],
        d: 0.0,
        bias: 0,
    };
    let mut act = vec![empty; xs.len() / k * kb];
    for (row, out) in xs.chunks_exact(k).zip(act.chunks_exact_mut(kb)) {
        quantize_act(row, out);
    }
    act
}

/// Interleaves row-major blocks (`kb` per row, `n` rows) into tiles.
fn repack(blocks: &[Block], n: usize, kb: usize) -> Vec<Tile> {
    let empty = Tile {
        qs: [128; TR * QK],
        d: [0.0; TR],
    };
    let mut tiles = vec![empty; n.div_ceil(TR) * kb];
    for (g, group) in tiles.chunks_exact_mut(kb).enumerate() {
        for (b, t) in group.iter_mut().enumerate() {
            for i in 0..TR.min(n - g * TR) {
                let src = &blocks[(g * TR + i) * kb + b];
                t.d[i] = src.d;
                for (c, &q) in src.qs.iter().enumerate() {
                    t.qs[64 * (c / 4) + 4 * i + c % 4] = (q as u8) ^ 0x80;
                }
            }
        }
    }
    tiles
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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
                && is_x86_feature_detected!("avx512f")
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
        Self::from_tensor_at(w, level())
    }

    /// [`Self::from_tensor`] for the kernels of `lvl` (which must be available).
    fn from_tensor_at(w: &Tensor, lvl: Level) -> Result<Self> {
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
        let layout = if lvl == Level::Vnni {
            Layout::Tiles(repack(&blocks, n, kb))
        } else {
            Layout::Rows(blocks)
        };
        Ok(Self { n, k, lvl, layout })
    }

    pub fn supports(k: usize) -> bool {
        k.is_multiple_of(QK)
    }

    /// `x @ W^T` for `x` of shape `[m, k]`. Each row's result is the same whatever `m` is.
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
        let out = match &self.layout {
            Layout::Rows(blocks) => {
                let mut act = vec![
                    Block {
                        d: 0.0,
                        qs: [0; QK]
                    };
                    m * kb
                ];
                for (row, out) in xs.chunks_exact(k).zip(act.chunks_exact_mut(kb)) {
                    quantize_act_row(row, out);
                }
                let w = Strided {
                    data: blocks,
                    stride: kb,
                };
                let a = Strided {
                    data: &act,
                    stride: kb,
                };
                matmul(w, a, m, self.n, 4096, &BlockDot(self.lvl))
            }
            Layout::Tiles(tiles) => {
                let act = quantize_acts(&xs, k);
                tiles_matmul(tiles, &act, kb, m, self.n, 4096, &VnniTiles)
            }
        };
        Ok(Tensor::from_vec(out, (m, self.n), &Device::Cpu)?)
    }
}

/// [`x86::tile_dot`] as a [`TileDot`]. Only built for tiles, which exist only at
/// `Level::Vnni`.
struct VnniTiles;

impl TileDot<Tile, ActBlock> for VnniTiles {
    #[inline]
    fn dot<const R: usize>(&self, w: &[Tile], a: [&[ActBlock]; R]) -> [[f32; TR]; R] {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: tiles are built only at `Level::Vnni`; every row holds `w.len()` blocks.
            unsafe { x86::tile_dot(w, a) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "tiles are built only at Level::Vnni (x86_64) {}",
            w.len() + a.len()
        )
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

#[inline]
fn dot(lvl: Level, w: &[Block], a: &[Block]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if lvl != Level::Scalar {
        // SAFETY: AVX2 and FMA were detected at run time (both levels above scalar check them).
        return unsafe { x86::dot_avx2(w, a) };
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
    use super::{ActBlock, Block, Tile, TR};
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

    /// [`super::quantize_act_scalar`], sixteen values per instruction.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn quantize_act(x: &[f32], out: &mut [ActBlock]) {
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        for (xb, b) in x.chunks_exact(super::QK).zip(out.iter_mut()) {
            let v0 = _mm512_loadu_ps(xb.as_ptr());
            let v1 = _mm512_loadu_ps(xb.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let (d, id) = super::scales(amax);
            let id = _mm512_set1_ps(id);
            // The default rounding mode: to nearest, halves to even.
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, id));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, id));
            let q0 = _mm512_min_epi32(_mm512_max_epi32(q0, lo), hi);
            let q1 = _mm512_min_epi32(_mm512_max_epi32(q1, lo), hi);
            let p = b.qs.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(p, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(p.add(1), _mm512_cvtepi32_epi8(q1));
            b.d = d;
            b.bias = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
    }

    /// Sixteen weight rows (`w`: their tiles, one per block) against `R` activation rows:
    /// `out[r][i]` is row `i`'s dot product with activation row `r`. Per block the tile's eight
    /// vectors are loaded once; per activation row, eight `vpdpbusd`s with its values
    /// broadcast four at a time, then one scale and one fused add per 16 outputs. The blocks
    /// are summed in order, so a row's result does not depend on `R`.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn tile_dot<const R: usize>(
        w: &[Tile],
        a: [&[ActBlock]; R],
    ) -> [[f32; TR]; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        debug_assert!(a.iter().all(|r| r.len() == w.len()));
        for (b, t) in w.iter().enumerate() {
            let p = t.qs.as_ptr() as *const __m512i;
            let mut wq = [_mm512_setzero_si512(); 8];
            for (j, v) in wq.iter_mut().enumerate() {
                *v = _mm512_load_si512(p.add(j) as *const _);
            }
            let wd = _mm512_load_ps(t.d.as_ptr());
            for r in 0..R {
                let ab = a[r].get_unchecked(b);
                let q = ab.qs.as_ptr() as *const i32;
                let mut s = _mm512_set1_epi32(ab.bias);
                if R <= 2 {
                    // Few rows: two chains, so that one row is not one long dependency chain.
                    let mut s1 = _mm512_setzero_si512();
                    for j in (0..8).step_by(2) {
                        s = _mm512_dpbusd_epi32(
                            s,
                            wq[j],
                            _mm512_set1_epi32(q.add(j).read_unaligned()),
                        );
                        s1 = _mm512_dpbusd_epi32(
                            s1,
                            wq[j + 1],
                            _mm512_set1_epi32(q.add(j + 1).read_unaligned()),
                        );
                    }
                    s = _mm512_add_epi32(s, s1);
                } else {
                    for (j, &v) in wq.iter().enumerate() {
                        s = _mm512_dpbusd_epi32(s, v, _mm512_set1_epi32(q.add(j).read_unaligned()));
                    }
                }
                let scale = _mm512_mul_ps(wd, _mm512_set1_ps(ab.d));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r]);
            }
        }
        let mut out = [[0f32; TR]; R];
        for r in 0..R {
            _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
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

    /// The levels this machine can run, slowest first.
    fn levels() -> Vec<Level> {
        match level() {
            Level::Vnni => vec![Level::Scalar, Level::Avx2, Level::Vnni],
            Level::Avx2 => vec![Level::Scalar, Level::Avx2],
            Level::Scalar => vec![Level::Scalar],
        }
    }

    /// What [`x86::tile_dot`] computes, in scalar code and in the same order: the exact integer
    /// sum of each block, then one fused multiply-add per block.
    fn tiles_reference(tiles: &[Tile], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let kb = k / QK;
        let act = quantize_acts(x, k);
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let (g, i) = (c / TR, c % TR);
                let mut acc = 0f32;
                for b in 0..kb {
                    let (t, a) = (&tiles[g * kb + b], &act[r * kb + b]);
                    let s = a.bias
                        + (0..QK)
                            .map(|v| t.qs[64 * (v / 4) + 4 * i + v % 4] as i32 * a.qs[v] as i32)
                            .sum::<i32>();
                    acc = (s as f32).mul_add(t.d[i] * a.d, acc);
                }
                out[r * n + c] = acc;
            }
        }
        out
    }

    /// The SIMD activation quantizer equals the scalar one bit for bit, halves and all.
    #[test]
    fn simd_activation_quantizer_matches_the_scalar_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut x: Vec<f32> = (0..64 * QK).map(|_| rng.gen_range(-3.0..3.0)).collect();
        // A block whose scaled values fall on halves (amax 127 → scale 1), one of zeros, one
        // with a single huge value, one of subnormals.
        for (i, v) in x[..QK].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[0] = 127.0;
        x[QK..2 * QK].fill(0.0);
        x[2 * QK + 7] = 3e38;
        x[3 * QK..4 * QK].fill(1e-40);
        let empty = ActBlock {
            qs: [0; QK],
            d: 0.0,
            bias: 0,
        };
        let (mut a, mut b) = (vec![empty; 64], vec![empty; 64]);
        quantize_act(&x, &mut a);
        quantize_act_scalar(&x, &mut b);
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert_eq!(
                (a.qs, a.d.to_bits(), a.bias),
                (b.qs, b.d.to_bits(), b.bias),
                "block {i}"
            );
        }
        // Halves went to even: 14.5 → 14, -15.5 → -16.
        assert_eq!((a[0].qs[30], a[0].qs[0]), (14, 127));
        assert_eq!(a[0].qs[1], -14);
    }

    /// At every kernel level: a row's result is bit-equal whether it is alone or in a batch of
    /// any size (a batched request decodes exactly what it would alone), all levels agree up to
    /// float summation order, and all are close to the exact f32 product. The VNNI tiles are
    /// also bit-equal to their scalar mirror, which checks the interleaving and the offset.
    #[test]
    fn every_kernel_gives_a_row_the_same_result_in_any_batch_and_close_to_exact() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (n, k) in [(1, 64), (16, 32), (37, 896), (20, 4864)] {
            let w: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-0.1..0.1)).collect();
            let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            let matrices: Vec<Q8Matrix> = levels()
                .into_iter()
                .map(|l| Q8Matrix::from_tensor_at(&w, l).unwrap())
                .collect();
            for m in [1, 2, 3, 5, 8, 11, 19] {
                let mut xv: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
                // One row with an outlier, one all zeros (scale 0).
                xv[k / 3] = 40.0;
                if m > 2 {
                    xv[2 * k..3 * k].fill(0.0);
                }
                let x = Tensor::from_vec(xv.clone(), (m, k), &Device::Cpu).unwrap();
                let exact = rows(&x.matmul(&w.t().unwrap()).unwrap());
                let scale = exact.iter().fold(1e-6f32, |s, v| s.max(v.abs()));
                let scalar = rows(&matrices[0].forward(&x).unwrap());
                for q in &matrices {
                    let lvl = q.lvl;
                    let batched = rows(&q.forward(&x).unwrap());
                    let alone: Vec<f32> = (0..m)
                        .flat_map(|r| rows(&q.forward(&x.narrow(0, r, 1).unwrap()).unwrap()))
                        .collect();
                    assert!(
                        batched
                            .iter()
                            .zip(&alone)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{lvl:?} n={n} k={k} m={m}: batched rows differ from rows alone"
                    );
                    if let Layout::Tiles(tiles) = &q.layout {
                        let mirror = tiles_reference(tiles, &xv, m, n, k);
                        for i in 0..m * n {
                            assert_eq!(
                                batched[i].to_bits(),
                                mirror[i].to_bits(),
                                "n={n} k={k} m={m} [{i}]: tiles {} mirror {}",
                                batched[i],
                                mirror[i]
                            );
                        }
                    }
                    for i in 0..m * n {
                        assert!(
                            (batched[i] - scalar[i]).abs() <= 1e-4 * scale,
                            "{lvl:?} n={n} k={k} m={m} [{i}]: {} scalar {}",
                            batched[i],
                            scalar[i]
                        );
                        // Row 0's outlier coarsens its block's quantization; the others must
                        // be close to exact.
                        assert!(
                            i < n || (batched[i] - exact[i]).abs() <= 2e-2 * scale,
                            "{lvl:?} n={n} k={k} m={m} [{i}]: q8 {} exact {}",
                            batched[i],
                            exact[i]
                        );
                    }
                }
            }
        }
    }
}
