//! Element-wise ops: ReLU, tanh, dropout, the SGD update. Memory-bound, so they run over chunks
//! of `CHUNK` elements on the pool (small buffers stay on the calling thread).

use rayon::prelude::*;

use super::CpuEngine;
use crate::engine::{check_len, MaskSlice};
use crate::error::{Error, Result};
use crate::rng::dropout_keep;

/// Elements per parallel task: 128 KiB of f32, large enough that task overhead is noise.
pub(super) const CHUNK: usize = 32 * 1024;

/// Applies `f(chunk of a, matching chunk of b)` in parallel.
fn zip_chunks<F>(eng: &CpuEngine, a: &mut [f32], b: &[f32], f: F)
where
    F: Fn(&mut [f32], &[f32]) + Sync,
{
    eng.par_chunks(a, |off, a| f(a, &b[off..off + a.len()]));
}

// x[i] = max(x[i], 0)
pub(super) fn relu_forward(eng: &CpuEngine, x: &mut [f32]) -> Result<()> {
    eng.par_chunks(x, |_, c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
    Ok(())
}

// dy[i] *= (y[i] > 0)
pub(super) fn relu_backward(eng: &CpuEngine, y: &[f32], dy: &mut [f32]) -> Result<()> {
    check_len("relu_backward", "y", y.len(), dy.len())?;
    zip_chunks(eng, dy, y, |d, y| {
        // A select, not a conditional store: it vectorises (the branch took 84 ms for relu1's
        // 37M elements at batch 128, 10x the forward, on half-mispredicted branches).
        for (d, &y) in d.iter_mut().zip(y) {
            *d = if y <= 0.0 { 0.0 } else { *d };
        }
    });
    Ok(())
}

// x[i] = tanh(x[i])
pub(super) fn tanh_forward(eng: &CpuEngine, x: &mut [f32]) -> Result<()> {
    eng.par_chunks(x, |_, c| c.iter_mut().for_each(|v| *v = v.tanh()));
    Ok(())
}

// dy[i] *= 1 - y[i]^2
pub(super) fn tanh_backward(eng: &CpuEngine, y: &[f32], dy: &mut [f32]) -> Result<()> {
    check_len("tanh_backward", "y", y.len(), dy.len())?;
    zip_chunks(eng, dy, y, |d, y| {
        for (d, &y) in d.iter_mut().zip(y) {
            *d *= 1.0 - y * y;
        }
    });
    Ok(())
}

// x[i] = keep(seed, i, p) ? x[i] * keep_scale : 0   (forward and backward alike)
pub(super) fn dropout(
    eng: &CpuEngine,
    op: &str,
    x: &mut [f32],
    p: f32,
    keep_scale: f32,
    m: &MaskSlice,
) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::Config(format!(
            "{op}: drop probability {p} is outside [0, 1]"
        )));
    }
    m.check(op, x.len())?;
    eng.par_chunks(x, |off, c| {
        for (i, v) in c.iter_mut().enumerate() {
            *v = if dropout_keep(m.seed, m.index(off + i), p) {
                *v * keep_scale
            } else {
                0.0
            };
        }
    });
    Ok(())
}

// v = momentum*v - weight_decay*lr*w - lr*dw ; w += v
pub(super) fn sgd_update(
    eng: &CpuEngine,
    w: &mut [f32],
    dw: &[f32],
    v: &mut [f32],
    lr: f32,
    momentum: f32,
    weight_decay: f32,
) -> Result<()> {
    check_len("sgd_update", "dw", dw.len(), w.len())?;
    check_len("sgd_update", "v", v.len(), w.len())?;
    let step = |w: &mut [f32], v: &mut [f32], dw: &[f32]| {
        for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(dw) {
            *v = momentum * *v - weight_decay * lr * *w - lr * g;
            *w += *v;
        }
    };
    if w.len() <= CHUNK || eng.threads == 1 {
        step(w, v, dw);
        return Ok(());
    }
    eng.pool.install(|| {
        w.par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(dw.par_chunks(CHUNK))
            .for_each(|((w, v), dw)| step(w, v, dw))
    });
    Ok(())
}
