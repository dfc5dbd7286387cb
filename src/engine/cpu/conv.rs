//! Convolution as im2col + GEMM, one GEMM per (image, group) "unit"; the shapes a Winograd tile
//! computes go to `winograd` instead (unless the engine is set to im2col).
//!
//! Per unit, with K = Cin/g * kh * kw and P = Ho * Wo:
//! - forward:          y[Cout/g, P] = w_g[Cout/g, K] · col[K, P] (+ bias)
//! - backward data:    col[K, P] = w_g^T · dy[Cout/g, P], then col2im adds col into dx
//! - backward weights: dw_g[Cout/g, K] += dy[Cout/g, P] · col^T
//!
//! Two ways to use the threads. When there are enough units (a training batch), the units are cut
//! into `threads` contiguous runs and each part works through its run with its own im2col buffer
//! and, for the weight gradient, its own partial dw/db that are summed at the end. With fewer
//! units than that (inference on one image), each unit is done in two parallel phases over one
//! shared im2col buffer: the rows of `col` (im2col, or the backward-data GEMM), then the rows of
//! the GEMM output (forward, weight gradient) or the input channels (col2im).

use std::ops::Range;

use super::gemm::{gemm, par_gemm_rows, MatMut, MatRef};
use super::winograd::{self, Plan};
use super::{grown, split_mut, split_ranges, ConvAlgorithm, CpuEngine};
use crate::engine::{check_len, ConvShape};
use crate::error::Result;

/// Derived sizes of one convolution.
#[derive(Clone, Copy)]
struct Geo {
    s: ConvShape,
    ho: usize,
    wo: usize,
    /// Output pixels per plane.
    p: usize,
    /// Input pixels per plane.
    hw: usize,
    /// Input / output channels per group.
    cig: usize,
    cog: usize,
    /// Kernel taps per input channel, and im2col rows per group.
    kk: usize,
    k: usize,
    units: usize,
}

impl Geo {
    fn new(s: &ConvShape, op: &str) -> Result<Geo> {
        s.validate(op)?;
        let (ho, wo) = (s.h_out(), s.w_out());
        let cig = s.c_in / s.groups;
        let kk = s.kh * s.kw;
        Ok(Geo {
            s: *s,
            ho,
            wo,
            p: ho * wo,
            hw: s.h * s.w,
            cig,
            cog: s.c_out / s.groups,
            kk,
            k: cig * kk,
            units: s.n * s.groups,
        })
    }

    /// Whether to cut the batch into runs of units (else: parallel inside each unit). Runs are
    /// balanced when every part gets the same number of units; past a few units per part the
    /// imbalance of one unit no longer matters.
    fn split_units(&self, threads: usize) -> bool {
        self.units.is_multiple_of(threads) || self.units >= 4 * threads
    }

    /// Whether this engine computes the convolution with Winograd tiles: asked for, a batch
    /// split into runs of units, and a shape a tile computes (see `winograd::Plan`).
    fn winograd(&self, eng: &CpuEngine) -> bool {
        eng.conv_algorithm() == ConvAlgorithm::Winograd && self.split_units(eng.threads())
    }

    /// `w_g`, group g's `[Cout/g, K]` block of the weights.
    fn w_group<'a>(&self, w: &'a [f32], g: usize) -> MatRef<'a> {
        MatRef::rm(
            &w[g * self.cog * self.k..(g + 1) * self.cog * self.k],
            self.cog,
            self.k,
        )
    }

    /// The output columns `ox` whose input column `ox*stride + kj - pad` lies inside the image.
    fn valid_ox(&self, kj: usize) -> Range<usize> {
        valid_out(kj, self.s.stride, self.s.pad, self.s.w, self.wo)
    }

    /// The input row read by output row `oy` at kernel row `ki`, if inside the image.
    fn input_row(&self, oy: usize, ki: usize) -> Option<usize> {
        (oy * self.s.stride + ki)
            .checked_sub(self.s.pad)
            .filter(|&iy| iy < self.s.h)
    }

    /// Rows `rows` of unit's im2col matrix into `out` (`rows.len() x P`). `x` is the unit's
    /// `[Cin/g, H, W]` input. Row r = (c, ki, kj) holds x[c, oy*stride+ki-pad, ox*stride+kj-pad]
    /// for every output pixel (oy, ox), zero where that falls in the padding.
    fn im2col(&self, x: &[f32], rows: Range<usize>, out: &mut [f32]) {
        let (w, stride) = (self.s.w, self.s.stride);
        for (r, row) in rows.zip(out.chunks_exact_mut(self.p)) {
            let (c, ki, kj) = (r / self.kk, (r / self.s.kw) % self.s.kh, r % self.s.kw);
            let plane = &x[c * self.hw..(c + 1) * self.hw];
            if stride == 1 && self.wo == w {
                self.im2col_row_same(plane, ki, kj, row);
                continue;
            }
            match stride {
                1 => self.im2col_row::<1>(plane, ki, kj, row),
                2 => self.im2col_row::<2>(plane, ki, kj, row),
                4 => self.im2col_row::<4>(plane, ki, kj, row),
                _ => self.im2col_row::<0>(plane, ki, kj, row),
            }
        }
    }

    /// One im2col row (c, ki, kj) from its input plane. `S` is the stride when it is a common
    /// one, 0 otherwise: with the stride a compile-time constant the gather loop is ~4x faster
    /// (conv1's im2col, stride 4, went from 1.2 to 0.7 ms per image, against 2.8 ms of GEMM).
    fn im2col_row<const S: usize>(&self, plane: &[f32], ki: usize, kj: usize, row: &mut [f32]) {
        let (w, stride, pad, wo) = (self.s.w, self.s.stride, self.s.pad, self.wo);
        let ox = self.valid_ox(kj);
        let oy = valid_out(ki, stride, pad, self.s.h, self.ho);
        row[..oy.start * wo].fill(0.0);
        row[oy.end * wo..].fill(0.0);
        if ox.is_empty() {
            row[oy.start * wo..oy.end * wo].fill(0.0);
            return;
        }
        let x0 = ox.start * stride + kj - pad;
        for oy in oy {
            let seg = &mut row[oy * wo..(oy + 1) * wo];
            if ox.start > 0 {
                seg[..ox.start].fill(0.0);
            }
            if ox.end < wo {
                seg[ox.end..].fill(0.0);
            }
            let src = &plane[(oy * stride + ki - pad) * w + x0..];
            let dst = &mut seg[ox.clone()];
            if S == 1 {
                dst.copy_from_slice(&src[..dst.len()]);
            } else if S == 0 {
                for (d, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
                    *d = *s;
                }
            } else {
                for (d, s) in dst.iter_mut().zip(src.chunks(S)) {
                    *d = s[0];
                }
            }
        }
    }

    /// One im2col row for stride 1 and output width = input width (conv2..conv5's "same"
    /// convolutions). Then output row oy is input row oy+ki-pad shifted by kj-pad, so all the
    /// valid output rows together are one contiguous run of the plane, offset by
    /// (ki-pad)*W + kj-pad: one copy instead of a short copy per output row (which made im2col
    /// ~20% of conv2's time), after which the |kj-pad| border columns that wrapped around from
    /// the neighbouring input row are zeroed.
    fn im2col_row_same(&self, plane: &[f32], ki: usize, kj: usize, row: &mut [f32]) {
        let (w, pad) = (self.s.w, self.s.pad);
        let oy_lo = pad.saturating_sub(ki).min(self.ho);
        let oy_hi = (self.s.h + pad).saturating_sub(ki).min(self.ho).max(oy_lo);
        let (d0, d1) = (oy_lo * w, oy_hi * w);
        row[..d0].fill(0.0);
        row[d1..].fill(0.0);
        // destination index d reads plane[d + shift]; clip to the plane
        let shift = (ki * w + kj) as isize - (pad * w + pad) as isize;
        let lo = (d0 as isize).max(-shift) as usize;
        let hi = (d1 as isize).min(self.hw as isize - shift).max(lo as isize) as usize;
        row[d0..lo].fill(0.0);
        row[hi..d1].fill(0.0);
        let src = (lo as isize + shift) as usize;
        row[lo..hi].copy_from_slice(&plane[src..src + (hi - lo)]);
        let ox = self.valid_ox(kj);
        if ox.start > 0 || ox.end < w {
            for seg in row[d0..d1].chunks_exact_mut(w) {
                seg[..ox.start].fill(0.0);
                seg[ox.end..].fill(0.0);
            }
        }
    }

    /// dx[c0..c0+len] = col2im(col): `col` holds the im2col rows of those channels
    /// (`len*kh*kw x P`), `dx` their `[len, H, W]` planes, overwritten.
    fn col2im(&self, col: &[f32], dx: &mut [f32]) {
        let (w, stride, pad) = (self.s.w, self.s.stride, self.s.pad);
        dx.fill(0.0);
        for (r, row) in col
            .chunks_exact(self.p)
            .take(dx.len() / self.hw * self.kk)
            .enumerate()
        {
            let (c, ki, kj) = (r / self.kk, (r / self.s.kw) % self.s.kh, r % self.s.kw);
            let plane = &mut dx[c * self.hw..(c + 1) * self.hw];
            let ox = self.valid_ox(kj);
            if ox.is_empty() {
                continue;
            }
            for (oy, seg) in row.chunks_exact(self.wo).enumerate() {
                let Some(iy) = self.input_row(oy, ki) else {
                    continue;
                };
                let dst = &mut plane[iy * w..(iy + 1) * w][ox.start * stride + kj - pad..];
                let src = &seg[ox.clone()];
                if stride == 1 {
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += *s;
                    }
                } else {
                    for (d, s) in dst.iter_mut().step_by(stride).zip(src) {
                        *d += *s;
                    }
                }
            }
        }
    }
}

/// The outputs o < `out_len` whose input `o*stride + tap - pad` lies in `0..in_len`.
fn valid_out(tap: usize, stride: usize, pad: usize, in_len: usize, out_len: usize) -> Range<usize> {
    let lo = if tap >= pad {
        0
    } else {
        (pad - tap).div_ceil(stride)
    };
    let hi = if in_len + pad > tap {
        out_len.min((in_len - 1 + pad - tap) / stride + 1)
    } else {
        0
    };
    lo.min(hi)..hi
}

/// Sum of a slice, accumulated in f64 over 8 lanes (bias gradients sum up to N*Ho*Wo terms).
pub(super) fn sum(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&x| x as f64).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

// y[N,Cout,Ho,Wo] = conv(x[N,Cin,H,W], w[Cout,Cin/g,kh,kw]) + b[Cout]
pub(super) fn forward(
    eng: &CpuEngine,
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv_forward";
    let g = Geo::new(s, OP)?;
    check_len(OP, "x", x.len(), s.x_len())?;
    check_len(OP, "w", w.len(), s.w_len())?;
    check_len(OP, "b", b.len(), s.c_out)?;
    check_len(OP, "y", y.len(), s.y_len())?;
    if let Some(plan) = Plan::forward(s).filter(|_| g.winograd(eng)) {
        return winograd::forward(eng, &plan, x, w, b, y);
    }
    let (x_unit, y_unit) = (g.cig * g.hw, g.cog * g.p);
    let add_bias = |y: &mut [f32], bias: &[f32]| {
        for (row, &bo) in y.chunks_exact_mut(g.p).zip(bias) {
            row.iter_mut().for_each(|v| *v += bo);
        }
    };

    if g.split_units(eng.threads()) {
        let ranges = split_ranges(g.units, eng.threads());
        let parts = split_mut(y, &ranges, y_unit);
        return eng.run_parts(parts, |i, (units, y)| {
            let mut scratch = eng.scratch(i);
            let col = grown(&mut scratch.col, g.k * g.p);
            for (u, y) in units.zip(y.chunks_exact_mut(y_unit)) {
                let grp = u % s.groups;
                g.im2col(&x[u * x_unit..(u + 1) * x_unit], 0..g.k, col);
                let col = MatRef::rm(col, g.k, g.p);
                gemm(1.0, g.w_group(w, grp), col, 0.0, MatMut::rm(y, g.cog, g.p))?;
                add_bias(y, &b[grp * g.cog..(grp + 1) * g.cog]);
            }
            Ok(())
        });
    }

    let mut scratch = eng.scratch(0);
    let col = grown(&mut scratch.col, g.k * g.p);
    for (u, y) in y.chunks_exact_mut(y_unit).enumerate() {
        let grp = u % s.groups;
        let x = &x[u * x_unit..(u + 1) * x_unit];
        let rows = split_ranges(g.k, eng.threads());
        let parts = split_mut(col, &rows, g.p);
        eng.run_parts(parts, |_, (r, out)| {
            g.im2col(x, r, out);
            Ok(())
        })?;
        par_gemm_rows(eng, g.w_group(w, grp), MatRef::rm(col, g.k, g.p), 0.0, y)?;
        add_bias(y, &b[grp * g.cog..(grp + 1) * g.cog]);
    }
    Ok(())
}

// dx[N,Cin,H,W] = conv_transpose(dy[N,Cout,Ho,Wo], w[Cout,Cin/g,kh,kw])
pub(super) fn backward_data(
    eng: &CpuEngine,
    s: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv_backward_data";
    let g = Geo::new(s, OP)?;
    check_len(OP, "dy", dy.len(), s.y_len())?;
    check_len(OP, "w", w.len(), s.w_len())?;
    check_len(OP, "dx", dx.len(), s.x_len())?;
    if let Some(plan) = Plan::backward_data(s).filter(|_| g.winograd(eng)) {
        return winograd::backward_data(eng, &plan, dy, w, dx);
    }
    let (x_unit, y_unit) = (g.cig * g.hw, g.cog * g.p);

    if g.split_units(eng.threads()) {
        let ranges = split_ranges(g.units, eng.threads());
        let parts = split_mut(dx, &ranges, x_unit);
        return eng.run_parts(parts, |i, (units, dx)| {
            let mut scratch = eng.scratch(i);
            let col = grown(&mut scratch.col, g.k * g.p);
            for (u, dx) in units.zip(dx.chunks_exact_mut(x_unit)) {
                let dy = MatRef::rm(&dy[u * y_unit..(u + 1) * y_unit], g.cog, g.p);
                let wt = g.w_group(w, u % s.groups).t();
                gemm(1.0, wt, dy, 0.0, MatMut::rm(col, g.k, g.p))?;
                g.col2im(col, dx);
            }
            Ok(())
        });
    }

    let mut scratch = eng.scratch(0);
    let col = grown(&mut scratch.col, g.k * g.p);
    for (u, dx) in dx.chunks_exact_mut(x_unit).enumerate() {
        let dy = MatRef::rm(&dy[u * y_unit..(u + 1) * y_unit], g.cog, g.p);
        par_gemm_rows(eng, g.w_group(w, u % s.groups).t(), dy, 0.0, col)?;
        let chans = split_ranges(g.cig, eng.threads());
        let parts = split_mut(dx, &chans, g.hw);
        let col = &*col;
        eng.run_parts(parts, |_, (c, dx)| {
            g.col2im(&col[c.start * g.kk * g.p..c.end * g.kk * g.p], dx);
            Ok(())
        })?;
    }
    Ok(())
}

// dw[Cout,Cin/g,kh,kw] = sum_n dy[n] ⋆ x[n] ; db[Cout] = sum_{n,h,w} dy
pub(super) fn backward_weights(
    eng: &CpuEngine,
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv_backward_weights";
    let g = Geo::new(s, OP)?;
    let _exclusive = eng.exclusive();
    check_len(OP, "x", x.len(), s.x_len())?;
    check_len(OP, "dy", dy.len(), s.y_len())?;
    check_len(OP, "dw", dw.len(), s.w_len())?;
    check_len(OP, "db", db.len(), s.c_out)?;
    if let Some(plan) = Plan::forward(s).filter(|_| g.winograd(eng)) {
        return winograd::backward_weights(eng, &plan, x, dy, dw, db);
    }
    let (x_unit, y_unit, w_group) = (g.cig * g.hw, g.cog * g.p, g.cog * g.k);

    if g.split_units(eng.threads()) {
        // Each part sums its units into its own `acc` = [dw | db], zeroed first.
        let ranges = split_ranges(g.units, eng.threads());
        let acc_len = dw.len() + db.len();
        eng.run_parts(ranges.clone(), |i, units| {
            let mut scratch = eng.scratch(i);
            let scratch = &mut *scratch;
            let col = grown(&mut scratch.col, g.k * g.p);
            let acc = grown(&mut scratch.acc, acc_len);
            acc.fill(0.0);
            let (acc_w, acc_b) = acc.split_at_mut(s.w_len());
            for u in units {
                let grp = u % s.groups;
                let dy = &dy[u * y_unit..(u + 1) * y_unit];
                g.im2col(&x[u * x_unit..(u + 1) * x_unit], 0..g.k, col);
                let colt = MatRef::rm(col, g.k, g.p).t();
                let dw = MatMut::rm(&mut acc_w[grp * w_group..(grp + 1) * w_group], g.cog, g.k);
                gemm(1.0, MatRef::rm(dy, g.cog, g.p), colt, 1.0, dw)?;
                for (bo, row) in acc_b[grp * g.cog..].iter_mut().zip(dy.chunks_exact(g.p)) {
                    *bo += sum(row) as f32;
                }
            }
            Ok(())
        })?;
        return eng.sum_partials(ranges.len(), dw, db);
    }

    let mut scratch = eng.scratch(0);
    let col = grown(&mut scratch.col, g.k * g.p);
    for u in 0..g.units {
        let (img, grp) = (u / s.groups, u % s.groups);
        let x = &x[u * x_unit..(u + 1) * x_unit];
        let rows = split_ranges(g.k, eng.threads());
        let parts = split_mut(col, &rows, g.p);
        eng.run_parts(parts, |_, (r, out)| {
            g.im2col(x, r, out);
            Ok(())
        })?;
        let dy = MatRef::rm(&dy[u * y_unit..(u + 1) * y_unit], g.cog, g.p);
        let beta = if img == 0 { 0.0 } else { 1.0 };
        let dw = &mut dw[grp * w_group..(grp + 1) * w_group];
        par_gemm_rows(eng, dy, MatRef::rm(col, g.k, g.p).t(), beta, dw)?;
    }
    for (o, bo) in db.iter_mut().enumerate() {
        let (grp, og) = (o / g.cog, o % g.cog);
        *bo = (0..s.n)
            .map(|img| {
                let start = ((img * s.groups + grp) * g.cog + og) * g.p;
                sum(&dy[start..start + g.p])
            })
            .sum::<f64>() as f32;
    }
    Ok(())
}
