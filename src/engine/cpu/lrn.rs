//! Cross-channel local response normalisation (Section 3.3), parallel over planes.
//!
//! Every output plane (image, channel) reads only the input planes of its window, so the
//! `N*C` planes are cut into `threads` contiguous runs. The inner loops run over the H*W pixels
//! of a plane, so they vectorise; the window sums are recomputed per plane (size adds per
//! element) rather than slid, which costs little and accumulates no rounding drift.
//! x^-beta: for the paper's beta = 0.75, s^-0.75 = 1 / (sqrt(s) * sqrt(sqrt(s))), two vector
//! square roots instead of a scalar `powf` per element; other betas use `powf`.

use std::ops::Range;

use super::{grown, split_mut, split_ranges, CpuEngine};
use crate::engine::{check_len, LrnParams, LrnShape};
use crate::error::{Error, Result};

/// Derived sizes: planes are numbered `img * c + channel`.
#[derive(Clone, Copy)]
struct Geo {
    hw: usize,
    /// Channels per column.
    cg: usize,
    half: usize,
}

impl Geo {
    fn new(s: &LrnShape, p: &LrnParams, op: &str) -> Result<Geo> {
        if s.groups == 0 || !s.c.is_multiple_of(s.groups) || p.size == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "{} channels cannot form {} columns (window {})",
                    s.c, s.groups, p.size
                ),
            ));
        }
        Ok(Geo {
            hw: s.h * s.w,
            cg: s.c / s.groups,
            half: p.size / 2,
        })
    }

    /// The planes of `plane`'s column: its window is clamped to them.
    fn column(&self, plane: usize) -> Range<usize> {
        let start = plane - plane % self.cg;
        start..start + self.cg
    }

    /// The planes of `plane`'s window: channels i - n/2 ..= i + n/2 within its column.
    fn window(&self, plane: usize) -> Range<usize> {
        let col = self.column(plane);
        plane.saturating_sub(self.half).max(col.start)..(plane + self.half + 1).min(col.end)
    }
}

/// out[i] = s[i]^-beta.
fn pow_neg_beta(beta: f32, s: &[f32], out: &mut [f32]) {
    if beta == 0.75 {
        for (o, &v) in out.iter_mut().zip(s) {
            let r = v.sqrt();
            *o = 1.0 / (r * r.sqrt());
        }
    } else {
        for (o, &v) in out.iter_mut().zip(s) {
            *o = v.powf(-beta);
        }
    }
}

/// out = sum over the planes `win` of `src` (planes of `hw`, numbered from `src_first`).
fn window_sum(src: &[f32], src_first: usize, win: Range<usize>, hw: usize, out: &mut [f32]) {
    let plane = |j: usize| &src[(j - src_first) * hw..(j - src_first + 1) * hw];
    let mut planes = win.map(plane);
    match planes.next() {
        Some(first) => out.copy_from_slice(first),
        None => out.fill(0.0),
    }
    for p in planes {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
}

fn check(op: &str, s: &LrnShape, bufs: &[(&str, usize)]) -> Result<()> {
    bufs.iter()
        .try_for_each(|&(name, len)| check_len(op, name, len, s.len()))
}

// y[N,C,H,W] = x / scale^beta ; scale = k + alpha' * sum_window x^2
pub(super) fn forward(
    eng: &CpuEngine,
    s: &LrnShape,
    p: &LrnParams,
    x: &[f32],
    y: &mut [f32],
    scale: &mut [f32],
) -> Result<()> {
    const OP: &str = "lrn_forward";
    let g = Geo::new(s, p, OP)?;
    check(
        OP,
        s,
        &[("x", x.len()), ("y", y.len()), ("scale", scale.len())],
    )?;
    let (k, alpha) = (p.k, p.effective_alpha());
    let ranges = split_ranges(s.n * s.c, eng.threads());
    let parts: Vec<_> = split_mut(y, &ranges, g.hw)
        .into_iter()
        .zip(split_mut(scale, &ranges, g.hw))
        .collect();
    eng.run_parts(parts, |_, ((planes, y), (_, scale))| {
        let ys = y.chunks_exact_mut(g.hw);
        for ((q, y), sc) in planes.zip(ys).zip(scale.chunks_exact_mut(g.hw)) {
            let mut win = g.window(q);
            let first = win.next().unwrap_or(q);
            for (o, &v) in sc.iter_mut().zip(&x[first * g.hw..(first + 1) * g.hw]) {
                *o = v * v;
            }
            for j in win {
                for (o, &v) in sc.iter_mut().zip(&x[j * g.hw..(j + 1) * g.hw]) {
                    *o += v * v;
                }
            }
            sc.iter_mut().for_each(|v| *v = k + alpha * *v);
            pow_neg_beta(p.beta, sc, y);
            for (o, &v) in y.iter_mut().zip(&x[q * g.hw..(q + 1) * g.hw]) {
                *o *= v;
            }
        }
        Ok(())
    })
}

// dx[N,C,H,W] = dy * scale^-beta - 2 alpha' beta x * sum_{j: i in window(j)} dy[j] y[j] / scale[j]
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    eng: &CpuEngine,
    s: &LrnShape,
    p: &LrnParams,
    x: &[f32],
    y: &[f32],
    scale: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    const OP: &str = "lrn_backward";
    let g = Geo::new(s, p, OP)?;
    check(
        OP,
        s,
        &[
            ("x", x.len()),
            ("y", y.len()),
            ("scale", scale.len()),
            ("dy", dy.len()),
            ("dx", dx.len()),
        ],
    )?;
    let coef = 2.0 * p.effective_alpha() * p.beta;
    let ranges = split_ranges(s.n * s.c, eng.threads());
    let parts = split_mut(dx, &ranges, g.hw);
    eng.run_parts(parts, |i, (planes, dx)| {
        let mut scratch = eng.scratch(i);
        let scratch = &mut *scratch;
        let pw = grown(&mut scratch.acc, g.hw);
        // Block by column so t = dy*y/scale of the planes in reach stays in cache. The window is
        // symmetric, so plane q's gradient reads t over window(q).
        let mut q0 = planes.start;
        while q0 < planes.end {
            let col = g.column(q0);
            let q1 = planes.end.min(col.end);
            let t0 = q0.saturating_sub(g.half).max(col.start);
            let t1 = (q1 + g.half).min(col.end);
            let t = grown(&mut scratch.col, (t1 - t0) * g.hw);
            for (j, tj) in (t0..t1).zip(t.chunks_exact_mut(g.hw)) {
                let r = j * g.hw..(j + 1) * g.hw;
                for (((o, &d), &yv), &sv) in tj
                    .iter_mut()
                    .zip(&dy[r.clone()])
                    .zip(&y[r.clone()])
                    .zip(&scale[r])
                {
                    *o = d * yv / sv;
                }
            }
            for q in q0..q1 {
                let out = &mut dx[(q - planes.start) * g.hw..(q - planes.start + 1) * g.hw];
                window_sum(t, t0, g.window(q), g.hw, out);
                let r = q * g.hw..(q + 1) * g.hw;
                pow_neg_beta(p.beta, &scale[r.clone()], pw);
                for (((o, &pv), &d), &xv) in out.iter_mut().zip(&*pw).zip(&dy[r.clone()]).zip(&x[r])
                {
                    *o = d * pv - coef * xv * *o;
                }
            }
            q0 = q1;
        }
        Ok(())
    })
}
