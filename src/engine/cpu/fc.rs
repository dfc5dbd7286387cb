//! Fully connected layers: one big GEMM each, its output dimension split across the threads
//! (see `par_gemm_cols`). Why not split the batch rows instead, which needs no copy-back: each
//! thread would then pack the whole weight matrix (fc6: 151 MB) for only half the FLOPs, and at
//! batch 1 one thread would get all the work. The column split's copy-back is N*out floats
//! (2 MB at batch 128), noise next to fc6's 10 GFLOP. Measured at batch 128 (one core's worth
//! of CPU, see `mod.rs`): fc6 forward 65-71 GFLOP/s, backward 65-67, against 76-83 for a plain
//! square sgemm.

use super::gemm::{par_gemm_cols, par_gemm_rows, MatRef};
use super::CpuEngine;
use crate::engine::{check_len, FcShape};
use crate::error::Result;

// y[N,out] = x[N,in] w[out,in]^T + b[out]
pub(super) fn forward(
    eng: &CpuEngine,
    s: &FcShape,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "fc_forward";
    check_len(OP, "x", x.len(), s.n * s.d_in)?;
    check_len(OP, "w", w.len(), s.d_out * s.d_in)?;
    check_len(OP, "b", b.len(), s.d_out)?;
    check_len(OP, "y", y.len(), s.n * s.d_out)?;
    let wt = MatRef::rm(w, s.d_out, s.d_in).t();
    let _exclusive = eng.exclusive();
    par_gemm_cols(eng, MatRef::rm(x, s.n, s.d_in), wt, y)?;
    for row in y.chunks_exact_mut(s.d_out) {
        for (v, &bo) in row.iter_mut().zip(b) {
            *v += bo;
        }
    }
    Ok(())
}

// dx[N,in] = dy[N,out] w[out,in] ; dw[out,in] = dy^T x ; db[out] = sum_n dy
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    eng: &CpuEngine,
    s: &FcShape,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
) -> Result<()> {
    const OP: &str = "fc_backward";
    check_len(OP, "x", x.len(), s.n * s.d_in)?;
    check_len(OP, "w", w.len(), s.d_out * s.d_in)?;
    check_len(OP, "dy", dy.len(), s.n * s.d_out)?;
    check_len(OP, "dw", dw.len(), s.d_out * s.d_in)?;
    check_len(OP, "db", db.len(), s.d_out)?;
    if let Some(dx) = &dx {
        check_len(OP, "dx", dx.len(), s.n * s.d_in)?;
    }
    let dy_m = MatRef::rm(dy, s.n, s.d_out);
    let _exclusive = eng.exclusive();
    if let Some(dx) = dx {
        par_gemm_cols(eng, dy_m, MatRef::rm(w, s.d_out, s.d_in), dx)?;
    }
    // dw's rows are contiguous, so split them directly (no copy back).
    par_gemm_rows(eng, dy_m.t(), MatRef::rm(x, s.n, s.d_in), 0.0, dw)?;
    let mut acc = vec![0.0f64; s.d_out];
    for row in dy.chunks_exact(s.d_out) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v as f64;
        }
    }
    for (o, a) in db.iter_mut().zip(acc) {
        *o = a as f32;
    }
    Ok(())
}
