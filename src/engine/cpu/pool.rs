//! Max pooling (overlapping windows, Section 3.4), parallel over planes.
//!
//! No argmax is stored: backward recomputes it as the first element of the window (row-major)
//! equal to the forward output, so ties go to the first maximum, as the trait specifies.

use super::{split_mut, split_ranges, CpuEngine};
use crate::engine::{check_len, PoolShape};
use crate::error::{Error, Result};

fn validate(s: &PoolShape, op: &str) -> Result<()> {
    if s.size == 0 || s.stride == 0 || s.h < s.size || s.w < s.size {
        return Err(Error::shape(op, format!("invalid pooling geometry {s:?}")));
    }
    Ok(())
}

// y[N,C,Ho,Wo] = max over each size x size window of x[N,C,H,W]
pub(super) fn forward(eng: &CpuEngine, s: &PoolShape, x: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "maxpool_forward";
    validate(s, OP)?;
    check_len(OP, "x", x.len(), s.x_len())?;
    check_len(OP, "y", y.len(), s.y_len())?;
    let (hw, ho, wo) = (s.h * s.w, s.h_out(), s.w_out());
    let ranges = split_ranges(s.n * s.c, eng.threads());
    let parts: Vec<_> = ranges
        .iter()
        .cloned()
        .zip(split_mut(y, &ranges, ho * wo))
        .collect();
    eng.run_parts(parts, |_, (planes, y)| {
        for (q, y) in planes.zip(y.chunks_exact_mut(ho * wo)) {
            let x = &x[q * hw..(q + 1) * hw];
            for (oy, yrow) in y.chunks_exact_mut(wo).enumerate() {
                for (ox, out) in yrow.iter_mut().enumerate() {
                    let (y0, x0) = (oy * s.stride, ox * s.stride);
                    let mut m = x[y0 * s.w + x0];
                    for row in x[y0 * s.w..].chunks(s.w).take(s.size) {
                        for &v in &row[x0..x0 + s.size] {
                            if v > m {
                                m = v;
                            }
                        }
                    }
                    *out = m;
                }
            }
        }
        Ok(())
    })
}

// dx[N,C,H,W] = sum over windows of dy, each routed to its window's first x equal to y
pub(super) fn backward(
    eng: &CpuEngine,
    s: &PoolShape,
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    const OP: &str = "maxpool_backward";
    validate(s, OP)?;
    check_len(OP, "x", x.len(), s.x_len())?;
    check_len(OP, "y", y.len(), s.y_len())?;
    check_len(OP, "dy", dy.len(), s.y_len())?;
    check_len(OP, "dx", dx.len(), s.x_len())?;
    let (hw, ho, wo) = (s.h * s.w, s.h_out(), s.w_out());
    let ranges = split_ranges(s.n * s.c, eng.threads());
    let parts: Vec<_> = ranges
        .iter()
        .cloned()
        .zip(split_mut(dx, &ranges, hw))
        .collect();
    eng.run_parts(parts, |_, (planes, dx)| {
        for (q, dx) in planes.zip(dx.chunks_exact_mut(hw)) {
            dx.fill(0.0);
            let x = &x[q * hw..(q + 1) * hw];
            let (y, dy) = (
                &y[q * ho * wo..(q + 1) * ho * wo],
                &dy[q * ho * wo..(q + 1) * ho * wo],
            );
            for (o, (&m, &d)) in y.iter().zip(dy).enumerate() {
                let (y0, x0) = ((o / wo) * s.stride, (o % wo) * s.stride);
                // A y that matches nothing (a NaN) routes its gradient nowhere.
                let hit = (y0..y0 + s.size)
                    .flat_map(|iy| (x0..x0 + s.size).map(move |ix| iy * s.w + ix))
                    .find(|&i| x[i] == m);
                if let Some(i) = hit {
                    dx[i] += d;
                }
            }
        }
        Ok(())
    })
}
