//! The tiling our quantized kernels share (`q8.rs`, `native.rs`): output columns split into
//! tiles over our compute pool, and in each tile every weight row meets the input rows in
//! groups of up to 8. A kernel that unpacks a weight block once per group ([`RowsDot`] with
//! `R > 1`) pays that once for 8 rows, and `m` rows cost no more weight traffic than one.

/// Runs `body` for the rows `0..m` in groups of 8, then one group each of 4, 2 and 1 as
/// needed, with `r` the group's first row and `R` its size (a constant, for const generics).
macro_rules! by_row_groups {
    ($m:expr, |$r:ident, $R:ident| $body:expr) => {{
        let m: usize = $m;
        let mut $r = 0usize;
        while m - $r >= 8 {
            const $R: usize = 8;
            $body;
            $r += 8;
        }
        if m - $r >= 4 {
            const $R: usize = 4;
            $body;
            $r += 4;
        }
        if m - $r >= 2 {
            const $R: usize = 2;
            $body;
            $r += 2;
        }
        if m - $r == 1 {
            const $R: usize = 1;
            $body;
        }
    }};
}

/// Dot products of one weight row with `R` activation rows at once. Each row's result must
/// not depend on the others (a batched request decodes exactly what it would alone).
pub(crate) trait RowsDot<W, A>: Sync {
    fn dot<const R: usize>(&self, w: &[W], a: [&[A]; R]) -> [f32; R];
}

/// Rows of `stride` items each, back to back.
pub(crate) struct Strided<'a, T> {
    pub data: &'a [T],
    pub stride: usize,
}

impl<T> Strided<'_, T> {
    fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.stride..(i + 1) * self.stride]
    }
}

/// `out[r][c] = dot(w row c, a row r)` for `m` input rows and `n` weight rows, `[m, n]`
/// row-major. Below `serial_below` units of work (`tiles · m · w.stride`) it runs on the
/// calling thread.
pub(crate) fn matmul<W: Sync, A: Sync>(
    w: Strided<'_, W>,
    a: Strided<'_, A>,
    m: usize,
    n: usize,
    serial_below: usize,
    d: &impl RowsDot<W, A>,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let out_ptr = out.as_mut_ptr() as usize;
    const TILE: usize = 16;
    let n_tiles = n.div_ceil(TILE);
    let run = |range: std::ops::Range<usize>| {
        let out_ptr = out_ptr as *mut f32;
        let put = |r: usize, c: usize, v: &[f32]| {
            for (i, v) in v.iter().enumerate() {
                // SAFETY: each tile owns columns c0..c1 of every row.
                unsafe { *out_ptr.add((r + i) * n + c) = *v };
            }
        };
        for tile in range {
            let (c0, c1) = (tile * TILE, (tile * TILE + TILE).min(n));
            for c in c0..c1 {
                let wc = w.row(c);
                by_row_groups!(m, |r, R| put(
                    r,
                    c,
                    &d.dot::<R>(wc, std::array::from_fn(|i| a.row(r + i)))
                ));
            }
        }
    };
    if n_tiles * m * w.stride < serial_below {
        run(0..n_tiles);
    } else {
        super::pool::run(m, n_tiles, run);
    }
    out
}

/// Output rows per weight tile of the tile kernels (today the Q8 one in `q8.rs`): a tile holds
/// one block of 16 weight rows, interleaved so that each vector op covers all 16.
pub(crate) const TILE_ROWS: usize = 16;

/// Dot products of one group of 16 weight rows (`w`: its tiles, one per block) with `R`
/// activation rows: `out[r][i]` is weight row `i` against activation row `r`. Each row's result
/// must not depend on `R`.
pub(crate) trait TileDot<W, A>: Sync {
    fn dot<const R: usize>(&self, w: &[W], a: [&[A]; R]) -> [[f32; TILE_ROWS]; R];
}

/// `x @ W^T` on tiles (group `g`'s block `b` at `w[g · kb + b]`) against `m` activation rows of
/// `kb` blocks: each group of 16 output rows meets the input rows up to 8 at a time, so `m`
/// rows cost no more weight traffic than one. `[m, n]` row-major. Below `serial_below` units of
/// work (`groups · m · kb`) it runs on the calling thread.
pub(crate) fn tiles_matmul<W: Sync, A: Sync>(
    w: &[W],
    a: &[A],
    kb: usize,
    m: usize,
    n: usize,
    serial_below: usize,
    d: &impl TileDot<W, A>,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let out_ptr = out.as_mut_ptr() as usize;
    let groups = n.div_ceil(TILE_ROWS);
    let row = |r: usize| &a[r * kb..(r + 1) * kb];
    let run = |range: std::ops::Range<usize>| {
        let out_ptr = out_ptr as *mut f32;
        for g in range {
            let wg = &w[g * kb..(g + 1) * kb];
            let cols = TILE_ROWS.min(n - g * TILE_ROWS);
            let put = |r: usize, v: &[[f32; TILE_ROWS]]| {
                for (i, v) in v.iter().enumerate() {
                    // SAFETY: group `g` owns columns 16g..16g+cols of every row.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            v.as_ptr(),
                            out_ptr.add((r + i) * n + g * TILE_ROWS),
                            cols,
                        )
                    };
                }
            };
            by_row_groups!(m, |r, R| put(
                r,
                &d.dot::<R>(wg, std::array::from_fn(|i| row(r + i)))
            ));
        }
    };
    if groups * m * kb < serial_below {
        run(0..groups);
    } else {
        super::pool::run(m, groups, run);
    }
    out
}
