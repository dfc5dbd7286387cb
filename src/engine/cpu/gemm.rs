//! The one GEMM entry point of the CPU engine: a bounds-checked safe wrapper over a strided
//! single-threaded sgemm, whose stride arguments express transposed operands (A^T, B^T) without
//! copying them. Two backends:
//!
//! - `csrc/sgemm_avx512.c` and `csrc/sgemm_avx2.c` (x86_64 only, compiled by `build.rs`): one
//!   BLIS-style loop nest of packing and cache blocking (`csrc/sgemm_blis.inc`) around a 12x32
//!   AVX-512 or a 6x16 AVX2/FMA micro-kernel; the widest this CPU has is used.
//! - `matrixmultiply::sgemm`: everywhere else.
//!
//! The environment variable `ALEXNET_GEMM` (read once, at the first GEMM) picks one by name
//! (`avx512`, `avx2`, `matrixmultiply`; default `auto`), e.g. to compare them or to rule a C
//! kernel out when chasing a numerical difference.

use std::sync::OnceLock;

use super::{grown, split_mut, split_ranges, CpuEngine};
use crate::error::{Error, Result};

/// Which sgemm [`gemm`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `csrc/sgemm_avx512.c`, with the proof that this CPU has AVX-512F and FMA.
    #[cfg(target_arch = "x86_64")]
    Avx512(HasAvx512),
    /// `csrc/sgemm_avx2.c`, with the proof that this CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2(HasAvx2Fma),
    MatrixMultiply,
}

/// Made only by [`HasAvx2Fma::detect`], after it found AVX2 and FMA (its field is private to
/// this module), so a `Backend::Avx2` (or a call of the AVX2 Winograd transforms) cannot be
/// named on a CPU that lacks them.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HasAvx2Fma(());

#[cfg(target_arch = "x86_64")]
impl HasAvx2Fma {
    /// The proof, if this CPU has AVX2 and FMA.
    pub(crate) fn detect() -> Option<HasAvx2Fma> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
            .then_some(HasAvx2Fma(()))
    }
}

/// Made only by [`Backend::avx512`], after it found AVX-512F and FMA; as [`HasAvx2Fma`].
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HasAvx512(());

impl Backend {
    /// The AVX2 kernel if this CPU can run it, else `None`.
    pub(crate) fn avx2() -> Option<Backend> {
        #[cfg(target_arch = "x86_64")]
        return HasAvx2Fma::detect().map(Backend::Avx2);
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// The AVX-512 kernel if this CPU can run it, else `None`.
    pub(crate) fn avx512() -> Option<Backend> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            return Some(Backend::Avx512(HasAvx512(())));
        }
        None
    }

    /// The backend [`gemm`] uses, decided once per process from `ALEXNET_GEMM`: `auto` (or
    /// unset) takes the widest kernel this CPU runs; a name takes that one, falling back to
    /// `auto` with a warning when this CPU cannot run it.
    pub(crate) fn selected() -> Backend {
        static SELECTED: OnceLock<Backend> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            let auto = || {
                Backend::avx512()
                    .or_else(Backend::avx2)
                    .unwrap_or(Backend::MatrixMultiply)
            };
            let named = match std::env::var("ALEXNET_GEMM").as_deref() {
                Ok("auto") | Err(_) => return auto(),
                Ok("matrixmultiply") => Some(Backend::MatrixMultiply),
                Ok("avx512") => Backend::avx512(),
                Ok("avx2") => Backend::avx2(),
                Ok(other) => {
                    eprintln!(
                        "warning: ALEXNET_GEMM={other:?} ignored (expected `auto`, `avx512`, \
                         `avx2` or `matrixmultiply`)"
                    );
                    return auto();
                }
            };
            named.unwrap_or_else(|| {
                eprintln!("warning: ALEXNET_GEMM names a kernel this CPU cannot run; using auto");
                auto()
            })
        })
    }
}

#[cfg(target_arch = "x86_64")]
extern "C" {
    /// `csrc/sgemm.h`: C = alpha A B + beta C with A(i, l) = a[i rsa + l csa],
    /// B(l, j) = b[l rsb + j csb], C(i, j) = c[i rsc + j]; beta == 0 does not read C. Returns 0,
    /// or -1 with C untouched when its packing buffers cannot be allocated.
    fn alexnet_sgemm_avx2(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: usize,
        csa: usize,
        b: *const f32,
        rsb: usize,
        csb: usize,
        beta: f32,
        c: *mut f32,
        rsc: usize,
    ) -> i32;
    /// The same contract on AVX-512F.
    fn alexnet_sgemm_avx512(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: usize,
        csa: usize,
        b: *const f32,
        rsb: usize,
        csb: usize,
        beta: f32,
        c: *mut f32,
        rsc: usize,
    ) -> i32;
}

/// The signature both C kernels share (`csrc/sgemm.h`).
#[cfg(target_arch = "x86_64")]
type SgemmFn = unsafe extern "C" fn(
    usize,
    usize,
    usize,
    f32,
    *const f32,
    usize,
    usize,
    *const f32,
    usize,
    usize,
    f32,
    *mut f32,
    usize,
) -> i32;

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
    gemm_with(Backend::selected(), alpha, a, b, beta, c)
}

/// [`gemm`] through the given backend.
pub(crate) fn gemm_with(
    backend: Backend,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: MatMut,
) -> Result<()> {
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
    // SAFETY: the checks above guarantee that every element either sgemm reads,
    // (i,j) -> i*rs + j*cs for i < rows and j < cols, lies inside `a.data`/`b.data`, and every
    // element it writes lies inside `c.data`, whose rows (stride rs >= n, column stride 1) do not
    // alias each other. The borrow checker guarantees that C (a &mut slice) overlaps neither A nor
    // B. All strides are below isize::MAX because they index into live slices. A `Backend::Avx2`
    // or `Backend::Avx512` exists only after `Backend::avx2()`/`avx512()` found its instruction
    // set on this CPU (`HasAvx2Fma`, `HasAvx512`), which that C kernel's instructions need. The C
    // kernels read and write nothing else: each keeps no
    // state between calls (it allocates its packing buffers per call), so the engine's threads
    // may call it concurrently.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            let kernel = match backend {
                Backend::Avx512(_) => Some(alexnet_sgemm_avx512 as SgemmFn),
                Backend::Avx2(_) => Some(alexnet_sgemm_avx2 as SgemmFn),
                Backend::MatrixMultiply => None,
            };
            if let Some(kernel) = kernel {
                let status = kernel(
                    m,
                    k,
                    n,
                    alpha,
                    a.data.as_ptr(),
                    a.rs,
                    a.cs,
                    b.data.as_ptr(),
                    b.rs,
                    b.cs,
                    beta,
                    c.data.as_mut_ptr(),
                    c.rs,
                );
                if status == 0 {
                    return Ok(());
                }
                // Its packing buffers could not be allocated (C is untouched): matrixmultiply
                // needs less, so let it try.
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = backend;
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
    let parts = split_mut(c, &ranges, n);
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

    /// The backends to test: matrixmultiply, and each C kernel this CPU can run.
    fn backends() -> Vec<Backend> {
        let mut v = vec![Backend::MatrixMultiply];
        match Backend::avx2() {
            Some(b) => v.push(b),
            None => eprintln!("skipped: the AVX2/FMA kernel (this CPU lacks AVX2 or FMA)"),
        }
        match Backend::avx512() {
            Some(b) => v.push(b),
            None => eprintln!("skipped: the AVX-512 kernel (this CPU lacks AVX-512F)"),
        }
        v
    }

    /// Values in [-1, 1), from a seed.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        (0..len as u64)
            .map(|i| crate::rng::uniform_at(seed, i) * 2.0 - 1.0)
            .collect()
    }

    /// C = alpha A B + beta C through `backend` against an f64 product, with A (m x k) and B
    /// (k x n) stored transposed or not and with padded leading dimensions, and C with a padded
    /// row stride whose padding must stay untouched. beta == 0 poisons C with NaN.
    #[allow(clippy::too_many_arguments)]
    fn check(
        backend: Backend,
        (m, k, n): (usize, usize, usize),
        ta: bool,
        tb: bool,
        alpha: f32,
        beta: f32,
        seed: u64,
    ) {
        // Stored A: m x k row-major, or k x m row-major viewed transposed; leading dim + 3.
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let a_store = values(ar * (ac + 3), seed);
        let mut av = MatRef {
            data: &a_store,
            rows: ar,
            cols: ac,
            rs: ac + 3,
            cs: 1,
        };
        if ta {
            av = av.t();
        }
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let b_store = values(br * (bc + 1), seed + 1);
        let mut bv = MatRef {
            data: &b_store,
            rows: br,
            cols: bc,
            rs: bc + 1,
            cs: 1,
        };
        if tb {
            bv = bv.t();
        }
        let rsc = n + 2;
        const PAD: f32 = 1234.5;
        let c0: Vec<f32> = values(m * rsc, seed + 2)
            .into_iter()
            .enumerate()
            .map(|(i, v)| match (i % rsc >= n, beta == 0.0) {
                (true, _) => PAD,
                (false, true) => f32::NAN,
                (false, false) => v,
            })
            .collect();
        let mut c = c0.clone();
        let mc = MatMut {
            data: &mut c,
            rows: m,
            cols: n,
            rs: rsc,
        };
        gemm_with(backend, alpha, av, bv, beta, mc).unwrap();
        for i in 0..m {
            for j in 0..n {
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for l in 0..k {
                    let p = av.data[i * av.rs + l * av.cs] as f64
                        * bv.data[l * bv.rs + j * bv.cs] as f64;
                    want += p;
                    mag += p.abs();
                }
                let c_old = if beta == 0.0 {
                    0.0
                } else {
                    c0[i * rsc + j] as f64
                };
                want = alpha as f64 * want + beta as f64 * c_old;
                mag = (alpha as f64 * mag).abs() + (beta as f64 * c_old).abs();
                // Each f32 multiply-add rounds once (relative error <= u = 2^-24), so a length-k
                // dot product summed in any order (the kernel sums k in blocks, then adds the
                // blocks' partials into C) is off by at most ~k u sum|a||b|; scaling by alpha and
                // adding beta C round twice more: (k + 2) u (|alpha| sum|a||b| + |beta C|). The
                // f64 products are exact and their sum is 2^29 times more accurate.
                let tol = (k + 2) as f64 * 2f64.powi(-24) * mag;
                let got = c[i * rsc + j] as f64;
                assert!(
                    (got - want).abs() <= tol,
                    "{backend:?} m{m} k{k} n{n} ta{ta} tb{tb} beta{beta}: C[{i}][{j}] = {got}, \
                     want {want} (tol {tol:e})"
                );
            }
            assert!(
                c[i * rsc + n..(i + 1) * rsc].iter().all(|&v| v == PAD),
                "{backend:?} m{m} k{k} n{n}: wrote past row {i}"
            );
        }
    }

    #[test]
    fn matches_f64_on_odd_shapes_strides_and_betas() {
        // 13 = 12 + 1 and 33 = 32 + 1: one past the AVX-512 kernel's tile (12 x 32).
        let dims = [1, 5, 6, 7, 13, 17, 95];
        let ks = [1, 7, 16, 17, 255, 257, 600];
        for backend in backends() {
            let mut seed = 0;
            for &m in &dims {
                for &n in dims.iter().chain(&[16, 33]) {
                    for &k in &ks {
                        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)]
                        {
                            for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (-0.5, 0.75)] {
                                seed += 3;
                                check(backend, (m, k, n), ta, tb, alpha, beta, seed);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matches_f64_across_cache_blocks() {
        // m past MC (144 AVX2, 240 AVX-512), n past NC (4080, 4096), k past KC (256) and over
        // several of its blocks.
        let shapes = [
            (300, 300, 40),
            (145, 33, 50),
            (7, 20, 4100),
            (13, 1200, 17),
            (8, 2304, 37),
            (5, 9216, 19),
        ];
        for backend in backends() {
            for (s, &shape) in shapes.iter().enumerate() {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    for beta in [0.0, 1.0] {
                        check(backend, shape, ta, tb, 1.0, beta, 1000 + s as u64);
                    }
                }
            }
        }
    }

    /// Single-threaded GFLOP/s of every backend this CPU runs on the engine's AlexNet shapes (per
    /// image and group; the FC layers as the two-thread column/row split calls them), timed
    /// alternately so that machine noise hits them alike. `cargo test --release --lib gemm_rates
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn gemm_rates() {
        let backends = backends();
        // (name, m, k, n, A transposed, B transposed, beta)
        let shapes = [
            ("conv1 fwd", 96, 363, 3025, false, false, 0.0),
            ("conv2 fwd", 128, 1200, 729, false, false, 0.0),
            ("conv3 fwd", 384, 2304, 169, false, false, 0.0),
            ("conv4 fwd", 192, 1728, 169, false, false, 0.0),
            ("conv5 fwd", 128, 1728, 169, false, false, 0.0),
            ("conv2 bwd-data", 1200, 128, 729, true, false, 0.0),
            ("conv3 bwd-data", 2304, 384, 169, true, false, 0.0),
            ("conv4 bwd-data", 1728, 192, 169, true, false, 0.0),
            ("conv1 bwd-weights", 96, 3025, 363, false, true, 1.0),
            ("conv2 bwd-weights", 128, 729, 1200, false, true, 1.0),
            ("conv3 bwd-weights", 384, 169, 2304, false, true, 1.0),
            ("fc6 fwd (half)", 128, 9216, 2048, false, true, 0.0),
            ("fc6 bwd-data (half)", 128, 4096, 4608, false, false, 0.0),
            ("fc6 bwd-weights (half)", 2048, 128, 9216, true, false, 0.0),
            ("square 2048", 2048, 2048, 2048, false, false, 0.0),
        ];
        print!("{:<22} {:>5} {:>5} {:>5}", "shape (GFLOP/s)", "m", "k", "n");
        for backend in &backends {
            let name = format!("{backend:?}");
            print!(" {:>14}", name.split('(').next().unwrap_or(&name));
        }
        println!();
        for (name, m, k, n, ta, tb, beta) in shapes {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let mut c = values(m * n, 3);
            let av = if ta {
                MatRef::rm(&a, k, m).t()
            } else {
                MatRef::rm(&a, m, k)
            };
            let bv = if tb {
                MatRef::rm(&b, n, k).t()
            } else {
                MatRef::rm(&b, k, n)
            };
            let flops = 2.0 * (m * k * n) as f64;
            // At least 3 rounds and ~0.4 s per backend.
            let reps = ((0.3e9 / flops) as usize).max(1);
            let mut best = vec![f64::INFINITY; backends.len()];
            let mut spent = 0.0;
            let mut round = 0;
            while round < 3 || spent < 0.4 * backends.len() as f64 {
                for (slot, &backend) in backends.iter().enumerate() {
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        gemm_with(backend, 1.0, av, bv, beta, MatMut::rm(&mut c, m, n)).unwrap();
                    }
                    let s = t.elapsed().as_secs_f64();
                    spent += s;
                    best[slot] = best[slot].min(s / reps as f64);
                }
                round += 1;
            }
            print!("{name:<22} {m:>5} {k:>5} {n:>5}");
            for t in best {
                print!(" {:>14.1}", flops / t / 1e9);
            }
            println!();
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
