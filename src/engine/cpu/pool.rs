//! Pooling, parallel over planes: max pooling (overlapping windows, Section 3.4) and average
//! pooling (cuda-convnet's CIFAR-10 nets).
//!
//! Max pooling stores no argmax: backward recomputes it as the first element of the window
//! (row-major) equal to the forward output, so ties go to the first maximum, as the trait
//! specifies.

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
    let parts = split_mut(y, &ranges, ho * wo);
    eng.run_parts(parts, |_, (planes, y)| {
        for (q, y) in planes.zip(y.chunks_exact_mut(ho * wo)) {
            let x = &x[q * hw..(q + 1) * hw];
            // AlexNet's 3/2 gets loops with constant bounds (~1.5x faster); others the general.
            match (s.size, s.stride) {
                (3, 2) => max_plane(x, y, s.w, wo, 3, 2),
                (size, stride) => max_plane(x, y, s.w, wo, size, stride),
            }
        }
        Ok(())
    })
}

/// y = max over each window of one plane x, row by row: the max over the window's first input
/// row, then each further row folded in. Inlined so constant `size`/`stride` specialise it.
#[inline(always)]
fn max_plane(x: &[f32], y: &mut [f32], w: usize, wo: usize, size: usize, stride: usize) {
    for (oy, yrow) in y.chunks_exact_mut(wo).enumerate() {
        for ky in 0..size {
            let xrow = &x[(oy * stride + ky) * w..][..w];
            for (ox, out) in yrow.iter_mut().enumerate() {
                let win = &xrow[ox * stride..ox * stride + size];
                let mut m = win[0];
                for &v in &win[1..] {
                    if v > m {
                        m = v;
                    }
                }
                if ky == 0 || m > *out {
                    *out = m;
                }
            }
        }
    }
}

/// dx (one plane, overwritten) = each dy routed to the first x (row-major) in its window equal
/// to y. A y that matches nothing (a NaN) routes its gradient nowhere. Inlined like
/// [`max_plane`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn route_plane(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    w: usize,
    wo: usize,
    size: usize,
    stride: usize,
) {
    dx.fill(0.0);
    for (o, (&m, &d)) in y.iter().zip(dy).enumerate() {
        let (y0, x0) = ((o / wo) * stride, (o % wo) * stride);
        'window: for iy in y0..y0 + size {
            let row = &x[iy * w + x0..][..size];
            for (kx, &v) in row.iter().enumerate() {
                if v == m {
                    dx[iy * w + x0 + kx] += d;
                    break 'window;
                }
            }
        }
    }
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
    let parts = split_mut(dx, &ranges, hw);
    eng.run_parts(parts, |_, (planes, dx)| {
        for (q, dx) in planes.zip(dx.chunks_exact_mut(hw)) {
            let x = &x[q * hw..(q + 1) * hw];
            let o = q * ho * wo..(q + 1) * ho * wo;
            let (y, dy) = (&y[o.clone()], &dy[o]);
            match (s.size, s.stride) {
                (3, 2) => route_plane(x, y, dy, dx, s.w, wo, 3, 2),
                (size, stride) => route_plane(x, y, dy, dx, s.w, wo, size, stride),
            }
        }
        Ok(())
    })
}

// y[N,C,Ho,Wo] = mean over each size x size window of x[N,C,H,W]
pub(super) fn avg_forward(eng: &CpuEngine, s: &PoolShape, x: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "avgpool_forward";
    validate(s, OP)?;
    check_len(OP, "x", x.len(), s.x_len())?;
    check_len(OP, "y", y.len(), s.y_len())?;
    let (hw, ho, wo) = (s.h * s.w, s.h_out(), s.w_out());
    let inv_area = 1.0 / (s.size * s.size) as f32;
    let ranges = split_ranges(s.n * s.c, eng.threads());
    let parts = split_mut(y, &ranges, ho * wo);
    eng.run_parts(parts, |_, (planes, y)| {
        for (q, y) in planes.zip(y.chunks_exact_mut(ho * wo)) {
            let x = &x[q * hw..(q + 1) * hw];
            for (o, out) in y.iter_mut().enumerate() {
                let (y0, x0) = ((o / wo) * s.stride, (o % wo) * s.stride);
                let sum: f32 = (y0..y0 + s.size)
                    .map(|iy| x[iy * s.w + x0..][..s.size].iter().sum::<f32>())
                    .sum();
                *out = sum * inv_area;
            }
        }
        Ok(())
    })
}

// dx[N,C,H,W] = sum over the windows that hold each x of dy / size^2
pub(super) fn avg_backward(
    eng: &CpuEngine,
    s: &PoolShape,
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    const OP: &str = "avgpool_backward";
    validate(s, OP)?;
    check_len(OP, "dy", dy.len(), s.y_len())?;
    check_len(OP, "dx", dx.len(), s.x_len())?;
    let (hw, ho, wo) = (s.h * s.w, s.h_out(), s.w_out());
    let inv_area = 1.0 / (s.size * s.size) as f32;
    let ranges = split_ranges(s.n * s.c, eng.threads());
    let parts = split_mut(dx, &ranges, hw);
    eng.run_parts(parts, |_, (planes, dx)| {
        for (q, dx) in planes.zip(dx.chunks_exact_mut(hw)) {
            let dy = &dy[q * ho * wo..(q + 1) * ho * wo];
            dx.fill(0.0);
            for (o, &d) in dy.iter().enumerate() {
                let (y0, x0) = ((o / wo) * s.stride, (o % wo) * s.stride);
                for iy in y0..y0 + s.size {
                    for v in &mut dx[iy * s.w + x0..][..s.size] {
                        *v += d * inv_area;
                    }
                }
            }
        }
        Ok(())
    })
}
