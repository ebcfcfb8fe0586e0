//! Matrix products on borrowed f32 buffers, for the hand-written LoRA pass.
//!
//! candle's `matmul` always allocates and zero-fills a fresh output and wants views it can
//! describe as a tensor. The training step's hot loop needs more: products that add into an
//! existing buffer (a residual stream, a LoRA term on top of the base output, an input gradient
//! summed over several matrices), that read or write a column range of a packed buffer (q/k/v
//! or gate/up, stacked), and that reuse one buffer chunk after chunk (the output head). The
//! same `gemm` crate candle calls does all of that through strides and `read_dst`, so this file
//! wraps it once, with the bounds it needs checked, and the rest of the pass stays safe code.

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A writable matrix view, laid out as [`Mat`].
pub(crate) struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// The index one past a view's last element (0 when empty).
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// Where the view of columns `at..at + len` of a `cols`-wide view starts in its buffer.
fn column_start(cols: usize, cs: usize, buffer: usize, at: usize, len: usize) -> usize {
    assert!(at + len <= cols, "columns {at}..{} of {cols}", at + len);
    (at * cs).min(buffer)
}

impl<'a> Mat<'a> {
    /// `data` as a row-major `[rows, cols]` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    pub fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(
            extent(rows, cols, rs, cs) <= data.len(),
            "matrix view [{rows}, {cols}] (strides {rs}, {cs}) outside a buffer of {}",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The transpose (a view, no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Columns `at..at + len`.
    pub fn cols(self, at: usize, len: usize) -> Self {
        let start = column_start(self.cols, self.cs, self.data.len(), at, len);
        Self::strided(&self.data[start..], self.rows, len, self.rs, self.cs)
    }
}

impl<'a> MatMut<'a> {
    /// `data` as a row-major `[rows, cols]` matrix.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert!(
            rows * cols <= data.len(),
            "matrix [{rows}, {cols}] outside a buffer of {}",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// Columns `at..at + len`.
    pub fn cols(self, at: usize, len: usize) -> Self {
        let start = column_start(self.cols, self.cs, self.data.len(), at, len);
        let (rows, rs, cs) = (self.rows, self.rs, self.cs);
        Self {
            data: &mut self.data[start..],
            rows,
            cols: len,
            rs,
            cs,
        }
    }
}

/// `dst = scale · a b`, or `dst += scale · a b` with `accumulate`, on the threads candle uses.
pub(crate) fn gemm(dst: MatMut, a: Mat, b: Mat, accumulate: bool, scale: f32) {
    assert!(
        a.cols == b.rows && dst.rows == a.rows && dst.cols == b.cols,
        "gemm: [{}, {}] = [{}, {}] x [{}, {}]",
        dst.rows,
        dst.cols,
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    assert!(extent(dst.rows, dst.cols, dst.rs, dst.cs) <= dst.data.len());
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return;
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every view was checked to lie inside its buffer (`Mat::strided`, the extent
    // assert above), the shapes agree, and `dst` is borrowed mutably, so it aliases neither
    // input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat, b: Mat) -> Vec<f32> {
        let mut out = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|l| a.data[i * a.rs + l * a.cs] * b.data[l * b.rs + j * b.cs])
                    .sum();
            }
        }
        out
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn products_of_views_match_the_written_out_sum() {
        let (m, k, n) = (7, 5, 9);
        let a = data(m * k, 1);
        let b = data(n * k, 2);
        // a bᵀ with b stored [n, k].
        let want = naive(Mat::new(&a, m, k), Mat::new(&b, n, k).t());
        let mut got = vec![f32::NAN; m * n];
        gemm(
            MatMut::new(&mut got, m, n),
            Mat::new(&a, m, k),
            Mat::new(&b, n, k).t(),
            false,
            1.0,
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        // Accumulating 0.5 · the product into columns 2..11 of a wider buffer leaves the
        // other columns alone.
        let wide = 12;
        let mut buf = vec![1f32; m * wide];
        gemm(
            MatMut::new(&mut buf, m, wide).cols(2, n),
            Mat::new(&a, m, k),
            Mat::new(&b, n, k).t(),
            true,
            0.5,
        );
        for i in 0..m {
            for j in 0..wide {
                let v = buf[i * wide + j];
                let w = if (2..2 + n).contains(&j) {
                    1.0 + 0.5 * want[i * n + j - 2]
                } else {
                    1.0
                };
                assert!((v - w).abs() < 1e-5, "({i}, {j}): {v} vs {w}");
            }
        }
        // A column range of an input.
        let sub = Mat::new(&b, n, k).cols(1, 3);
        let a = data(m * n, 3);
        let want = naive(Mat::new(&a, m, n), sub);
        let mut got = vec![0f32; m * 3];
        gemm(
            MatMut::new(&mut got, m, 3),
            Mat::new(&a, m, n),
            sub,
            false,
            1.0,
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5);
        }
    }

    #[test]
    #[should_panic(expected = "outside a buffer")]
    fn a_view_past_its_buffer_is_refused() {
        let v = vec![0f32; 10];
        let _ = Mat::new(&v, 3, 4);
    }
}
