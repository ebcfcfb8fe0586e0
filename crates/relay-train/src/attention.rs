//! Grouped-query causal attention, forward and backward, on plain `f32` slices in the
//! token-major layout the projections produce and read: `q` and the output `[n, heads · hd]`,
//! `k` and `v` `[n, kv_heads · hd]`, position = row. The hand-written pass
//! ([`crate::backprop`]) calls it with no layout copies around it.
//!
//! Why not [`crate::fused`]'s attention: built from candle ops one kv head at a time (whole
//! `[group · n, n]` score matrices, masked and softmaxed as tensors, between two matmuls, with
//! transposed copies of q, k, v and the output around it), it took 63 ms forward and 115 ms
//! backward per layer of the 0.5B model at 600 tokens, several times what its FLOPs need, half
//! of them on masked scores. Here a block of positions, with all query heads of one kv head
//! together so that they share every key and value read, goes through its products, softmax
//! and gradients start to finish while its scores are in cache, and keys past the block's last
//! position are never read. As in FlashAttention only the output and each row's log-sum-exp are
//! kept; the backward recomputes the probabilities from them.
//!
//! The products are register-blocked loops written for auto-vectorization, compiled twice: for
//! AVX2 with FMA (picked at run time, so no build flags are needed) and for the baseline. Blocks
//! of positions are dealt to `candle_core::utils::get_num_threads()` threads; the key and value
//! gradients, which every block adds to, are summed per thread and added up at the end. The
//! output, log-sum-exp and dq do not depend on the number of threads, to the bit.

use std::ops::Range;

/// Query rows (positions × the query heads of one kv head) per block, about: a block's scores
/// against 600 keys (~100 KiB) stay in L2, and the wasted work on the masked keys inside the
/// block (at most its positions) stays small.
const TILE_ROWS: usize = 48;

/// The products' register block: `MR × NR` accumulators (12 AVX2 registers).
const MR: usize = 6;
const NR: usize = 16;

/// The products' slice of the summed dimension: `KC` rows of 64 values of B are 16 KiB.
const KC: usize = 64;

/// The attention's shape: `len` positions; query head `h` reads key/value head
/// `h / (heads / kv_heads)`. Scores are scaled by `1 / √head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub len: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    fn scale(&self) -> f32 {
        (self.head_dim as f32).sqrt().recip()
    }

    /// Positions per block: at most [`TILE_ROWS`] query rows, and preferably a multiple of
    /// [`MR`] of them (rows outside whole register blocks take a slower path).
    fn block_len(&self) -> usize {
        let most = (TILE_ROWS / self.group()).max(1);
        (1..=most)
            .rev()
            .find(|r| (r * self.group()).next_multiple_of(MR) == r * self.group())
            .unwrap_or(most)
    }

    fn check(&self, q: &[f32], k: &[f32], v: &[f32]) {
        assert!(
            self.heads > 0
                && self.head_dim > 0
                && self.heads >= self.kv_heads
                && self.group() * self.kv_heads == self.heads,
            "attention: {} query heads cannot share {} kv heads",
            self.heads,
            self.kv_heads
        );
        let (n, qw, kvw) = (self.len, self.q_width(), self.kv_width());
        assert_eq!(q.len(), n * qw, "attention: q is not [{n}, {qw}]");
        assert_eq!(k.len(), n * kvw, "attention: k is not [{n}, {kvw}]");
        assert_eq!(v.len(), n * kvw, "attention: v is not [{n}, {kvw}]");
    }
}

/// `softmax(q kᵀ / √hd + causal mask) v`, `[n, heads · hd]`, and the log-sum-exp of each row's
/// scaled scores, `[n, heads]` (position-major), which [`backward`] reads.
pub fn forward(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape) -> (Vec<f32>, Vec<f32>) {
    forward_on(
        q,
        k,
        v,
        shape,
        candle_core::utils::get_num_threads(),
        Simd::detect(),
    )
}

/// The gradients `(dq, dk, dv)` of [`forward`]'s output for its gradient `dout`, from the
/// forward's inputs, output and log-sum-exp. With P the probabilities (recomputed as
/// `exp(s − lse)`) and `D = rowsum(dout ⊙ out)`: dS = P ⊙ (dout vᵀ − D), dq = dS k / √hd,
/// dk = dSᵀ q / √hd, dv = Pᵀ dout.
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    shape: AttentionShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let saved = Saved { out, lse, dout };
    backward_on(
        q,
        k,
        v,
        saved,
        shape,
        candle_core::utils::get_num_threads(),
        Simd::detect(),
    )
}

/// Which build of the loops runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    Baseline,
    /// AVX2 and FMA, detected at run time.
    Avx2,
}

impl Simd {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Simd::Avx2;
        }
        Simd::Baseline
    }
}

/// The inputs both passes read, with `k` (and for the backward `v`) transposed per kv head:
/// `kt[(g · hd + d) · keys + j] = k[j, g · hd + d]` (`keys`: `n` rounded up to [`NR`], the
/// rest 0), so that `q kᵀ` runs over contiguous keys in whole register blocks.
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    kt: Vec<f32>,
    vt: Vec<f32>,
    /// The row length of `kt` and `vt`.
    keys: usize,
    shape: AttentionShape,
}

/// What the backward reads of the forward, and the output's gradient.
struct Saved<'a> {
    out: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
}

/// `[n, width]` → `[width, keys]` (`keys ≥ n`, zero-padded).
fn transpose(x: &[f32], width: usize, keys: usize) -> Vec<f32> {
    let mut t = vec![0f32; width * keys];
    for (j, row) in x.chunks_exact(width).enumerate() {
        for (c, &val) in row.iter().enumerate() {
            t[c * keys + j] = val;
        }
    }
    t
}

/// `n` rounded up to whole register blocks.
fn padded(n: usize) -> usize {
    n.div_ceil(NR) * NR
}

/// One block of positions and its rows of the outputs the block alone writes.
struct Block<'a> {
    positions: Range<usize>,
    /// `[positions, heads · hd]`: the output (forward) or dq (backward).
    rows: &'a mut [f32],
    /// `[positions, heads]`, forward only.
    lse: &'a mut [f32],
}

/// Splits `rows` (`[n, width]`) and `lse` (`[n, heads]`, or empty) into blocks of positions and
/// deals them to at most `threads` workers so that the keys each reads add up about evenly:
/// largest first, each to the least loaded worker.
fn deal<'a>(
    shape: AttentionShape,
    rows: &'a mut [f32],
    lse: &'a mut [f32],
    threads: usize,
) -> Vec<Vec<Block<'a>>> {
    let (n, b) = (shape.len, shape.block_len());
    let blocks = n.div_ceil(b);
    let threads = threads.clamp(1, blocks.max(1));
    let mut shares: Vec<Vec<Block>> = (0..threads).map(|_| Vec::new()).collect();
    let mut load = vec![0usize; threads];
    let mut lse = lse.chunks_mut(b * shape.heads);
    let mut all: Vec<Block> = rows
        .chunks_mut(b * shape.q_width())
        .enumerate()
        .map(|(i, rows)| Block {
            positions: i * b..(i * b + b).min(n),
            rows,
            lse: lse.next().unwrap_or_default(),
        })
        .collect();
    // Last (the most keys) first.
    while let Some(block) = all.pop() {
        let w = (0..threads).min_by_key(|&w| load[w]).unwrap_or(0);
        load[w] += block.positions.end;
        shares[w].push(block);
    }
    shares
}

/// Runs `work` on each share, the first on this thread, the rest on threads of their own.
fn on_threads<S: Send, T: Send>(shares: Vec<S>, work: impl Fn(S) -> T + Sync) -> Vec<T> {
    let work = &work;
    let mut shares = shares.into_iter();
    let Some(first) = shares.next() else {
        return Vec::new();
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = shares.map(|s| scope.spawn(move || work(s))).collect();
        let mut results = vec![work(first)];
        for h in others {
            results.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        results
    })
}

fn forward_on(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    threads: usize,
    simd: Simd,
) -> (Vec<f32>, Vec<f32>) {
    shape.check(q, k, v);
    let n = shape.len;
    let x = Inputs {
        q,
        k,
        v,
        kt: transpose(k, shape.kv_width(), padded(n)),
        vt: Vec::new(),
        keys: padded(n),
        shape,
    };
    let mut out = vec![0f32; n * shape.q_width()];
    let mut lse = vec![0f32; n * shape.heads];
    let shares = deal(shape, &mut out, &mut lse, threads);
    on_threads(shares, |blocks| match simd {
        // SAFETY: AVX2 and FMA were detected at run time.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { forward_blocks_avx2(&x, blocks) },
        _ => forward_blocks::<false>(&x, blocks),
    });
    (out, lse)
}

fn backward_on(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    saved: Saved,
    shape: AttentionShape,
    threads: usize,
    simd: Simd,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    shape.check(q, k, v);
    let (n, qw) = (shape.len, shape.q_width());
    assert_eq!(saved.out.len(), n * qw, "attention: out is not [{n}, {qw}]");
    assert_eq!(
        saved.dout.len(),
        n * qw,
        "attention: dout is not [{n}, {qw}]"
    );
    assert_eq!(saved.lse.len(), n * shape.heads, "attention: lse size");
    let x = Inputs {
        q,
        k,
        v,
        kt: transpose(k, shape.kv_width(), padded(n)),
        vt: transpose(v, shape.kv_width(), padded(n)),
        keys: padded(n),
        shape,
    };
    let mut dq = vec![0f32; n * qw];
    let shares = deal(shape, &mut dq, &mut [], threads);
    let sums = on_threads(shares, |blocks| match simd {
        // SAFETY: AVX2 and FMA were detected at run time.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { backward_blocks_avx2(&x, &saved, blocks) },
        _ => backward_blocks::<false>(&x, &saved, blocks),
    });
    let (mut dk, mut dv) = (
        vec![0f32; n * shape.kv_width()],
        vec![0f32; n * shape.kv_width()],
    );
    for (k, v) in sums {
        dk.iter_mut().zip(&k).for_each(|(a, b)| *a += b);
        dv.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
    }
    (dq, dk, dv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_blocks_avx2(x: &Inputs, blocks: Vec<Block>) {
    forward_blocks::<true>(x, blocks)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_blocks_avx2(x: &Inputs, s: &Saved, blocks: Vec<Block>) -> (Vec<f32>, Vec<f32>) {
    backward_blocks::<true>(x, s, blocks)
}

/// A block's query rows for kv head `g` (`rows = positions × group`, position-major: row
/// `(p − start) · group + i` is query head `g · group + i` at position `p`).
struct Tile {
    g: usize,
    start: usize,
    rows: usize,
    /// Keys `0..keys`: every position up to the block's last.
    keys: usize,
}

impl Tile {
    fn new(block: &Block, g: usize, group: usize) -> Self {
        Tile {
            g,
            start: block.positions.start,
            rows: block.positions.len() * group,
            keys: block.positions.end,
        }
    }

    /// The position of row `r`.
    fn position(&self, r: usize, group: usize) -> usize {
        self.start + r / group
    }

    /// The tile's rows of a token-major `[n, heads · hd]` matrix.
    fn rows_of<'a>(
        &self,
        m: &'a [f32],
        shape: AttentionShape,
    ) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (w, hd) = (shape.q_width(), shape.head_dim);
        let span = shape.group() * hd;
        let at = self.g * span;
        (self.start..self.start + self.rows / shape.group())
            .flat_map(move |p| m[p * w + at..][..span].chunks_exact(hd))
    }

    /// Copies the tile's rows of `m` times `scale` into `t` (`[rows, hd]`) and `tt` (`[hd,
    /// rows]`).
    fn pack(&self, m: &[f32], scale: f32, shape: AttentionShape, t: &mut [f32], tt: &mut [f32]) {
        let hd = shape.head_dim;
        for (dst, row) in t.chunks_exact_mut(hd).zip(self.rows_of(m, shape)) {
            dst.iter_mut().zip(row).for_each(|(d, &v)| *d = v * scale);
        }
        transpose_into(t, hd, (self.rows, hd), tt);
    }

    /// Writes the tile's rows `t` (`[rows, hd]`, times `scale`) into a block's rows (`[positions,
    /// heads · hd]`).
    fn write(&self, t: &[f32], scale: f32, block: &mut [f32], shape: AttentionShape) {
        let span = shape.group() * shape.head_dim;
        let rows = block.chunks_exact_mut(shape.q_width());
        for (dst, src) in rows.zip(t.chunks_exact(span)) {
            let dst = &mut dst[self.g * span..][..span];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d = s * scale);
        }
    }
}

/// `buf` as `len` values, grown as needed; what is in it is whatever its last use left.
fn scratch(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// The forward of each block (`FMA`: fuse multiply-adds, for the AVX2 build).
#[inline(always)]
fn forward_blocks<const FMA: bool>(x: &Inputs, blocks: Vec<Block>) {
    let s = x.shape;
    let (hd, group, kvw) = (s.head_dim, s.group(), s.kv_width());
    let (mut qs, mut qt, mut scores, mut o) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut packed = Packed::default();
    for block in blocks {
        for g in 0..s.kv_heads {
            let tile = Tile::new(&block, g, group);
            // Score rows are `width` long: the keys, then 0s to a whole register block.
            let (rows, keys, width) = (tile.rows, tile.keys, padded(tile.keys));
            // q · scale, transposed: [hd, rows].
            let (qs, qt) = (scratch(&mut qs, rows * hd), scratch(&mut qt, hd * rows));
            tile.pack(x.q, s.scale(), s, qs, qt);
            let scores = scratch(&mut scores, rows * width);
            gemm::<true, FMA>(
                &mut packed,
                (rows, width, hd),
                (qt, rows),
                (&x.kt[g * hd * x.keys..], x.keys),
                (scores, width, false),
            );
            for (r, row) in scores.chunks_exact_mut(width).enumerate() {
                let pos = tile.position(r, group);
                // Masked scores are −∞ (probability 0), so that every loop runs over whole
                // vectors.
                row[pos + 1..].fill(f32::NEG_INFINITY);
                let max = max_of(row);
                let sum = exp_shifted::<FMA>(row, max);
                let inv = sum.recip();
                row.iter_mut().for_each(|p| *p *= inv);
                block.lse[(pos - tile.start) * s.heads + g * group + r % group] = max + sum.ln();
            }
            let o = scratch(&mut o, rows * hd);
            gemm::<false, FMA>(
                &mut packed,
                (rows, hd, keys),
                (scores, width),
                (&x.v[g * hd..], kvw),
                (o, hd, false),
            );
            tile.write(o, 1.0, block.rows, s);
        }
    }
}

/// The backward of each block; returns this worker's sums of dk and dv (`[n, kv_heads · hd]`,
/// or shorter: the rows past its blocks' keys, all zero, are left out).
#[inline(always)]
fn backward_blocks<const FMA: bool>(
    x: &Inputs,
    saved: &Saved,
    blocks: Vec<Block>,
) -> (Vec<f32>, Vec<f32>) {
    let s = x.shape;
    let (hd, group, kvw) = (s.head_dim, s.group(), s.kv_width());
    let scale = s.scale();
    let keys_max = blocks.iter().map(|b| b.positions.end).max().unwrap_or(0);
    let mut dk = vec![0f32; keys_max * kvw];
    let mut dv = vec![0f32; keys_max * kvw];
    let (mut qs, mut qt, mut go, mut got) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut lse, mut dsum) = (Vec::new(), Vec::new());
    let (mut p, mut ds, mut dqt) = (Vec::new(), Vec::new(), Vec::new());
    let mut packed = Packed::default();
    for block in blocks {
        for g in 0..s.kv_heads {
            let tile = Tile::new(&block, g, group);
            let (rows, keys, width) = (tile.rows, tile.keys, padded(tile.keys));
            let (qs, qt) = (scratch(&mut qs, rows * hd), scratch(&mut qt, rows * hd));
            tile.pack(x.q, scale, s, qs, qt);
            let (go, got) = (scratch(&mut go, rows * hd), scratch(&mut got, rows * hd));
            tile.pack(saved.dout, 1.0, s, go, got);
            dsum.clear();
            let outs = tile.rows_of(saved.out, s);
            dsum.extend(go.chunks_exact(hd).zip(outs).map(|(g, o)| dot(g, o)));
            lse.clear();
            lse.extend((tile.start..tile.start + rows / group).flat_map(|pos| {
                saved.lse[pos * s.heads + g * group..][..group]
                    .iter()
                    .copied()
            }));

            // P = exp(q kᵀ · scale − lse), 0 past each row's position.
            let p = scratch(&mut p, rows * width);
            gemm::<true, FMA>(
                &mut packed,
                (rows, width, hd),
                (qt, rows),
                (&x.kt[g * hd * x.keys..], x.keys),
                (p, width, false),
            );
            for (r, row) in p.chunks_exact_mut(width).enumerate() {
                row[tile.position(r, group) + 1..].fill(f32::NEG_INFINITY);
                exp_shifted::<FMA>(row, lse[r]);
            }
            // dS = P ⊙ (dout vᵀ − D).
            let ds = scratch(&mut ds, rows * width);
            gemm::<true, FMA>(
                &mut packed,
                (rows, width, hd),
                (got, rows),
                (&x.vt[g * hd * x.keys..], x.keys),
                (ds, width, false),
            );
            let prows = p.chunks_exact(width);
            for ((row, prow), &d) in ds.chunks_exact_mut(width).zip(prows).zip(&dsum) {
                row.iter_mut()
                    .zip(prow)
                    .for_each(|(v, &p)| *v = p * (*v - d));
            }
            // dv += Pᵀ dout, dk += dSᵀ (q · scale), dq = dS k · scale.
            gemm::<true, FMA>(
                &mut packed,
                (keys, hd, rows),
                (p, width),
                (go, hd),
                (&mut dv[g * hd..], kvw, true),
            );
            gemm::<true, FMA>(
                &mut packed,
                (keys, hd, rows),
                (ds, width),
                (qs, hd),
                (&mut dk[g * hd..], kvw, true),
            );
            let dqt = scratch(&mut dqt, rows * hd);
            gemm::<false, FMA>(
                &mut packed,
                (rows, hd, keys),
                (ds, width),
                (&x.k[g * hd..], kvw),
                (dqt, hd, false),
            );
            tile.write(dqt, scale, block.rows, s);
        }
    }
    (dk, dv)
}

/// `a · b + acc`, fused (one rounding) with `FMA`.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FMA {
        a.mul_add(b, acc)
    } else {
        a * b + acc
    }
}

/// Scratch for [`gemm`]'s copies of its operands (one per worker).
#[derive(Default)]
struct Packed {
    a: Vec<f32>,
    b: Vec<f32>,
}

/// `C = A B`, or `C += A B` with `add`, for `(m, n, k)`: `A` is `m × k`, given as `(a, lda)`
/// with `A[i][kk] = a[kk · lda + i]` when `A_T` (stored transposed) and `a[i · lda + kk]`
/// otherwise; `B[kk][j] = b[kk · ldb + j]`; `C[i][j] = c[i · ldc + j]`.
#[inline(always)]
fn gemm<const A_T: bool, const FMA: bool>(
    packed: &mut Packed,
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc, add): (&mut [f32], usize, bool),
) {
    if A_T || m == 0 || n == 0 || k == 0 {
        return gemm_t::<FMA>((m, n, k), (a, lda), (b, ldb), (c, ldc, add));
    }
    // A row-major: KC columns of it at a time are copied transposed, and the same rows of B
    // (whose row stride, a power of two, would have them compete for the same cache sets)
    // copied contiguous.
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let at = scratch(&mut packed.a, kc * m);
        transpose_into(&a[k0..], lda, (m, kc), at);
        let bc = scratch(&mut packed.b, kc * n);
        for (kk, row) in bc.chunks_exact_mut(n).enumerate() {
            row.copy_from_slice(&b[(k0 + kk) * ldb..][..n]);
        }
        gemm_t::<FMA>((m, n, kc), (at, m), (bc, n), (&mut *c, ldc, add || k0 > 0));
    }
}

/// `t[kk · m + i] = a[i · lda + kk]` for `(m, k)`: 8 × 8 squares at a time, which compile to
/// vector shuffles, then the rest one by one.
#[inline(always)]
fn transpose_into(a: &[f32], lda: usize, (m, k): (usize, usize), t: &mut [f32]) {
    let (m8, k8) = (m - m % LANES, k - k % LANES);
    for i0 in (0..m8).step_by(LANES) {
        for k0 in (0..k8).step_by(LANES) {
            let src: [&[f32; LANES]; LANES] =
                std::array::from_fn(|i| a[(i0 + i) * lda + k0..][..LANES].try_into().unwrap());
            for kk in 0..LANES {
                let dst: &mut [f32; LANES] =
                    (&mut t[(k0 + kk) * m + i0..][..LANES]).try_into().unwrap();
                for i in 0..LANES {
                    dst[i] = src[i][kk];
                }
            }
        }
    }
    for i in 0..m {
        let ks = if i < m8 { k8..k } else { 0..k };
        for kk in ks {
            t[kk * m + i] = a[i * lda + kk];
        }
    }
}

/// [`gemm`] with A stored transposed.
#[inline(always)]
fn gemm_t<const FMA: bool>(
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc, add): (&mut [f32], usize, bool),
) {
    let (mf, nf) = (m - m % MR, n - n % NR);
    if !add {
        // What the blocks do not overwrite.
        for i in 0..m {
            let cols = if i < mf && k > 0 { nf..n } else { 0..n };
            c[i * ldc..][cols].fill(0.0);
        }
    }
    // KC-long slices of k, so that the slice of B the blocks share stays in L1.
    for k0 in (0..k).step_by(KC) {
        let (kc, add) = (KC.min(k - k0), add || k0 > 0);
        let (a, b) = (&a[k0 * lda..], &b[k0 * ldb..]);
        // The operand with more blocks is read once, the other once per block of it.
        if mf / MR >= nf / NR {
            for i0 in (0..mf).step_by(MR) {
                for j0 in (0..nf).step_by(NR) {
                    block::<FMA>((i0, j0, kc), (a, lda), (b, ldb), (c, ldc, add));
                }
            }
        } else {
            for j0 in (0..nf).step_by(NR) {
                for i0 in (0..mf).step_by(MR) {
                    block::<FMA>((i0, j0, kc), (a, lda), (b, ldb), (c, ldc, add));
                }
            }
        }
        edge::<FMA>(0..mf, nf..n, kc, (a, lda), (b, ldb), (c, ldc));
        edge::<FMA>(mf..m, 0..n, kc, (a, lda), (b, ldb), (c, ldc));
    }
}

/// One `MR × NR` block of [`gemm_t`] in registers: a function of its own (one per build), so
/// that the accumulators get all the registers wherever it is called from.
fn block<const FMA: bool>(
    (i0, j0, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc, add): (&mut [f32], usize, bool),
) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: the FMA build runs only where AVX2 and FMA were detected.
        return unsafe { block_avx2((i0, j0, k), (a, lda), (b, ldb), (c, ldc, add)) };
    }
    block_baseline((i0, j0, k), (a, lda), (b, ldb), (c, ldc, add))
}

#[inline(never)]
fn block_baseline(
    (i0, j0, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc, add): (&mut [f32], usize, bool),
) {
    block_body::<false>((i0, j0, k), (a, lda), (b, ldb), (c, ldc, add))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn block_avx2(
    (i0, j0, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc, add): (&mut [f32], usize, bool),
) {
    block_body::<true>((i0, j0, k), (a, lda), (b, ldb), (c, ldc, add))
}

/// `$body` once for each row of a block, with `$i` the row as a constant: accumulators indexed
/// only by constants stay in registers (a loop over the rows, unless the compiler unrolls it
/// first, keeps them in memory).
macro_rules! each_row {
    ($i:ident => $body:expr) => {{
        const _: () = assert!(MR == 6);
        each_row!(@ $i => $body; 0 1 2 3 4 5)
    }};
    (@ $i:ident => $body:expr; $($n:literal)*) => {{
        $({
            const $i: usize = $n;
            $body;
        })*
    }};
}

#[inline(always)]
fn block_body<const FMA: bool>(
    (i0, j0, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc, add): (&mut [f32], usize, bool),
) {
    let mut acc = [[0f32; NR]; MR];
    for kk in 0..k {
        let av: &[f32; MR] = a[kk * lda + i0..][..MR].try_into().unwrap();
        let bv: &[f32; NR] = b[kk * ldb + j0..][..NR].try_into().unwrap();
        each_row!(I => {
            for j in 0..NR {
                acc[I][j] = madd::<FMA>(av[I], bv[j], acc[I][j]);
            }
        });
    }
    each_row!(I => {
        let row: &mut [f32; NR] = (&mut c[(i0 + I) * ldc + j0..][..NR]).try_into().unwrap();
        for j in 0..NR {
            row[j] = if add { row[j] + acc[I][j] } else { acc[I][j] };
        }
    });
}

/// [`gemm_t`] (adding) over the rows and columns that do not fill a block.
#[inline(always)]
fn edge<const FMA: bool>(
    rows: Range<usize>,
    cols: Range<usize>,
    k: usize,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
) {
    if cols.is_empty() {
        return;
    }
    for i in rows {
        let crow = &mut c[i * ldc..][cols.clone()];
        for kk in 0..k {
            let av = a[kk * lda + i];
            let brow = &b[kk * ldb..][cols.clone()];
            crow.iter_mut()
                .zip(brow)
                .for_each(|(c, &b)| *c = madd::<FMA>(av, b, *c));
        }
    }
}

/// Lanes of the reductions below: independent partial results that vectorize.
const LANES: usize = 8;

#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    for &v in chunks.remainder() {
        m[0] = if v > m[0] { v } else { m[0] };
    }
    for c in chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    m.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `x ← exp(x − shift)` in place; returns the sum.
#[inline(always)]
fn exp_shifted<const FMA: bool>(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (acc, v) in acc.iter_mut().zip(c) {
            *v = exp::<FMA>(*v - shift);
            *acc += *v;
        }
    }
    let mut tail = 0.0;
    for v in chunks.into_remainder() {
        *v = exp::<FMA>(*v - shift);
        tail += *v;
    }
    acc.iter().sum::<f32>() + tail
}

/// `eˣ`, branch-free so that loops over it vectorize (libm's `expf` is a call per value):
/// Cephes' `expf`, i.e. `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, a polynomial for `eʳ`, and
/// `2ⁿ` built in the exponent bits. Within 2 ulp of libm's; 0 below −87.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    // Adding 1.5 · 2²³ rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.0);
    let t = madd::<FMA>(xc, std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, xc));
    let mut p = 1.987_569_1e-4;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ] {
        p = madd::<FMA>(p, r, c);
    }
    let y = madd::<FMA>(p, r * r, r) + 1.0;
    let pow2 = (t.to_bits().wrapping_sub(ROUND.to_bits()) as i32 + 127) << 23;
    let e = y * f32::from_bits(pow2 as u32);
    if x < -87.0 {
        0.0
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused;
    use candle_core::{Device, Tensor};

    fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// `[n, heads · hd]` → `[kv_heads, group · n, hd]` ([`fused::causal_attention`]'s layout).
    fn to_fused(x: &[f32], n: usize, heads: usize, kv: usize, hd: usize) -> Tensor {
        Tensor::from_slice(x, (n, heads, hd), &Device::Cpu)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((kv, heads / kv * n, hd))
            .unwrap()
    }

    fn from_fused(t: &Tensor, n: usize, heads: usize, hd: usize) -> Vec<f32> {
        t.reshape((heads, n, hd))
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// `|got − want| ≤ tol · max(1, max |want|)` elementwise.
    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(1f32, |m, w| m.max(w.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * scale,
                "{what}[{i}]: {g} vs {w} (scale {scale})"
            );
        }
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    /// Every SIMD build this machine runs: the baseline and, where detected, AVX2.
    fn builds() -> Vec<Simd> {
        let mut b = vec![Simd::Baseline];
        if Simd::detect() != Simd::Baseline {
            b.push(Simd::detect());
        }
        b
    }

    /// The log-sum-exp of each (position, head) row's scaled causal scores, in f64.
    fn lse_f64(q: &[f32], k: &[f32], shape: AttentionShape) -> Vec<f32> {
        let AttentionShape {
            len: n,
            heads,
            kv_heads: kv,
            head_dim: hd,
        } = shape;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut lse = Vec::new();
        for i in 0..n {
            for h in 0..heads {
                let g = h / (heads / kv);
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        let qi = &q[(i * heads + h) * hd..][..hd];
                        let kj = &k[(j * kv + g) * hd..][..hd];
                        qi.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::MIN, f64::max);
                lse.push((max + s.iter().map(|x| (x - max).exp()).sum::<f64>().ln()) as f32);
            }
        }
        lse
    }

    #[test]
    fn exp_is_within_two_ulps_of_libm_and_zero_far_below() {
        // Both builds' arithmetic: separate and fused multiply-adds.
        for e in [exp::<false>, exp::<true>] {
            let mut x = -87.0f32;
            while x < 88.0 {
                let (got, want) = (e(x), x.exp());
                let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                assert!(ulps <= 2, "exp({x}) = {got}, libm {want}");
                x += 0.0137;
            }
            assert_eq!(e(0.0), 1.0);
            assert_eq!(e(-100.0), 0.0);
            assert_eq!(e(f32::NEG_INFINITY), 0.0);
        }
    }

    /// Values, log-sum-exps and gradients against [`fused`]'s candle-op attention (and the
    /// log-sum-exp against f64), for each shape, thread count and SIMD build. Within a build,
    /// the forward and dq come out bit-equal at any thread count; dk and dv are per-thread
    /// sums, equal up to rounding. (The builds differ in rounding: AVX2 fuses multiply-adds.)
    #[test]
    fn forward_and_backward_match_the_candle_op_attention_at_any_threads_and_build() {
        let mut seed = 1;
        for (group, kv) in [(1, 1), (1, 2), (7, 1), (7, 2), (2, 2), (5, 1)] {
            for hd in [8, 16, 32, 64] {
                for n in [1, 2, 5, 37, 130] {
                    let heads = group * kv;
                    let shape = AttentionShape {
                        len: n,
                        heads,
                        kv_heads: kv,
                        head_dim: hd,
                    };
                    let case = format!("group {group} kv {kv} hd {hd} n {n}");
                    seed += 4;
                    // Larger q spreads the softmax so that it is neither uniform nor one-hot.
                    let q: Vec<f32> = noise(n * heads * hd, seed)
                        .iter()
                        .map(|x| 3.0 * x)
                        .collect();
                    let k = noise(n * kv * hd, seed + 1);
                    let v = noise(n * kv * hd, seed + 2);
                    let dout = noise(n * heads * hd, seed + 3);

                    let scale = 1.0 / (hd as f64).sqrt();
                    let (fq, fk, fv) = (
                        to_fused(&q, n, heads, kv, hd),
                        to_fused(&k, n, kv, kv, hd),
                        to_fused(&v, n, kv, kv, hd),
                    );
                    let want = fused::attention_forward(&fq, &fk, &fv, scale).unwrap();
                    let want = from_fused(
                        &Tensor::from_vec(want, fq.shape(), &Device::Cpu).unwrap(),
                        n,
                        heads,
                        hd,
                    );
                    let fdo = to_fused(&dout, n, heads, kv, hd);
                    let (wdq, wdk, wdv) =
                        fused::attention_backward(&fq, &fk, &fv, &fdo, scale).unwrap();
                    let wdq = from_fused(&wdq, n, heads, hd);
                    let (wdk, wdv) = (from_fused(&wdk, n, kv, hd), from_fused(&wdv, n, kv, hd));
                    let want_lse = lse_f64(&q, &k, shape);

                    for simd in builds() {
                        let mut first: Option<(Vec<f32>, Vec<f32>, Vec<f32>)> = None;
                        for threads in [1, 2, 3] {
                            let at = format!("{case}, {simd:?}, {threads} threads");
                            let (out, lse) = forward_on(&q, &k, &v, shape, threads, simd);
                            assert_close(&out, &want, 1e-5, &format!("out ({at})"));
                            assert_close(&lse, &want_lse, 1e-5, &format!("lse ({at})"));
                            let saved = Saved {
                                out: &out,
                                lse: &lse,
                                dout: &dout,
                            };
                            let (dq, dk, dv) = backward_on(&q, &k, &v, saved, shape, threads, simd);
                            assert_close(&dq, &wdq, 1e-5, &format!("dq ({at})"));
                            assert_close(&dk, &wdk, 1e-5, &format!("dk ({at})"));
                            assert_close(&dv, &wdv, 1e-5, &format!("dv ({at})"));
                            match &first {
                                None => first = Some((out, lse, dq)),
                                Some((o, l, d)) => {
                                    assert_eq!(bits(&out), bits(o), "out bits ({at})");
                                    assert_eq!(bits(&lse), bits(l), "lse bits ({at})");
                                    assert_eq!(bits(&dq), bits(d), "dq bits ({at})");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
