//! The one GEMM entry point of the CPU engine: a bounds-checked safe wrapper over
//! `matrixmultiply::sgemm`, whose stride arguments express transposed operands (A^T, B^T) without
//! copying them.

use super::{grown, split_mut, split_ranges, CpuEngine};
use crate::error::{Error, Result};

/// Narrowest column block worth its own thread in [`par_gemm_cols`].
const MIN_COLS: usize = 16;

/// A read-only strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix starting at `data[0]`.
    pub fn rm(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// Rows `r` of this matrix (a view starting at row `r.start`).
    pub fn rows_block(self, r: std::ops::Range<usize>) -> Self {
        MatRef {
            data: self.data.get(r.start * self.rs..).unwrap_or_default(),
            rows: r.len(),
            ..self
        }
    }

    /// Columns `r` of this matrix.
    pub fn cols_block(self, r: std::ops::Range<usize>) -> Self {
        MatRef {
            data: self.data.get(r.start * self.cs..).unwrap_or_default(),
            cols: r.len(),
            ..self
        }
    }

    /// The transpose (swaps the strides; no data moves).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A mutable row-major matrix view `rows x cols` with row stride `rs` (>= cols).
pub(crate) struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
}

impl<'a> MatMut<'a> {
    pub fn rm(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            rs: cols,
        }
    }
}

/// Index one past the last element a `rows x cols` view with strides (rs, cs) touches.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// C = alpha * A B + beta * C. With beta == 0, C is not read (it may hold NaN).
pub(crate) fn gemm(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: MatMut) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let bad = |msg: String| Err(Error::shape("gemm", msg));
    if b.rows != k || c.rows != m || c.cols != n {
        return bad(format!(
            "A {}x{} B {}x{} C {}x{}",
            a.rows, a.cols, b.rows, b.cols, c.rows, c.cols
        ));
    }
    if extent(m, k, a.rs, a.cs) > a.data.len()
        || extent(k, n, b.rs, b.cs) > b.data.len()
        || extent(m, n, c.rs, 1) > c.data.len()
        || (m > 1 && c.rs < n)
    {
        return bad("a matrix view does not fit its buffer".into());
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // A B is the zero matrix; matrixmultiply would still honour beta, but say it plainly.
        for row in c.data.chunks_mut(c.rs).take(m) {
            for v in &mut row[..n] {
                *v = if beta == 0.0 { 0.0 } else { beta * *v };
            }
        }
        return Ok(());
    }
    // SAFETY: the checks above guarantee that every element sgemm reads, (i,j) -> i*rs + j*cs
    // for i < rows and j < cols, lies inside `a.data`/`b.data`, and every element it writes lies
    // inside `c.data`, whose rows (stride rs >= n, column stride 1) do not alias each other. The
    // borrow checker guarantees that C (a &mut slice) overlaps neither A nor B. All strides are
    // below isize::MAX because they index into live slices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.data.as_mut_ptr(),
            c.rs as isize,
            1,
        );
    }
    Ok(())
}

/// C[m x n] (row-major, contiguous) = A B + beta C, with the rows of C split across the engine's
/// threads: each part multiplies its block of A's rows by all of B.
pub(crate) fn par_gemm_rows(
    eng: &CpuEngine,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
) -> Result<()> {
    let (m, n) = (a.rows, b.cols);
    let Some(c) = c.get_mut(..m * n) else {
        return Err(Error::shape(
            "gemm",
            format!("C has {} elements, needs {m}x{n}", c.len()),
        ));
    };
    let ranges = split_ranges(m, eng.threads());
    let parts: Vec<_> = ranges
        .iter()
        .cloned()
        .zip(split_mut(c, &ranges, n))
        .collect();
    eng.run_parts(parts, |_, (r, cp)| {
        let rows = r.len();
        gemm(1.0, a.rows_block(r), b, beta, MatMut::rm(cp, rows, n))
    })
}

/// C[m x n] (row-major, contiguous) = A B, with the columns of C split across the engine's
/// threads: each part multiplies all of A by its block of B's columns into its own scratch block,
/// and the blocks are copied into C at the end (C's column blocks interleave in memory, so the
/// parts cannot write them directly). This is the split for the fully connected layers, where B
/// is the big weight matrix: each part packs only its half of it.
pub(crate) fn par_gemm_cols(eng: &CpuEngine, a: MatRef, b: MatRef, c: &mut [f32]) -> Result<()> {
    let (m, n) = (a.rows, b.cols);
    let Some(c) = c.get_mut(..m * n) else {
        return Err(Error::shape(
            "gemm",
            format!("C has {} elements, needs {m}x{n}", c.len()),
        ));
    };
    let ranges = split_ranges(n, eng.threads().min(n.div_ceil(MIN_COLS)));
    if ranges.len() <= 1 {
        return gemm(1.0, a, b, 0.0, MatMut::rm(c, m, n));
    }
    eng.run_parts(ranges.clone(), |i, r| {
        let mut s = eng.scratch(i);
        let cols = r.len();
        gemm(
            1.0,
            a,
            b.cols_block(r),
            0.0,
            MatMut::rm(grown(&mut s.col, m * cols), m, cols),
        )
    })?;
    for (i, r) in ranges.iter().enumerate() {
        let s = eng.scratch(i);
        let cols = r.len();
        for (row, block) in c.chunks_mut(n).zip(s.col.chunks(cols)) {
            row[r.clone()].copy_from_slice(block);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &MatRef, b: &MatRef) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    c[i * n + j] +=
                        a.data[i * a.rs + l * a.cs] as f64 * b.data[l * b.rs + j * b.cs] as f64;
                }
            }
        }
        c
    }

    #[test]
    fn transposed_operands_through_strides() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let av = MatRef::rm(&a, m, k);
        let bv = MatRef::rm(&bt, n, k).t();
        let want = naive(m, k, n, &av, &bv);
        let mut c = vec![f32::NAN; m * n];
        gemm(1.0, av, bv, 0.0, MatMut::rm(&mut c, m, n)).unwrap();
        for (g, w) in c.iter().zip(&want) {
            // k = 7 products of O(1) numbers: a few f32 ulps.
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn rejects_views_that_do_not_fit() {
        let a = vec![0.0f32; 6];
        let mut c = vec![0.0f32; 4];
        let err = gemm(
            1.0,
            MatRef::rm(&a, 2, 3),
            MatRef::rm(&a, 3, 3),
            0.0,
            MatMut::rm(&mut c, 2, 3),
        );
        assert!(matches!(err, Err(Error::Shape { .. })));
    }
}
