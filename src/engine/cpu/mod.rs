//! The fast CPU engine (f32): convolutions as Winograd tiles where a tile computes them (stride
//! 1, 3x3 and 5x5: [`winograd`]) and as im2col + GEMM elsewhere ([`conv`], or everywhere with
//! [`ConvAlgorithm::Im2col`]), parallel over the images of the batch on the engine's own rayon
//! pool. The GEMM is the widest C kernel the CPU runs (`csrc/sgemm_avx512.c`,
//! `csrc/sgemm_avx2.c`), else `matrixmultiply` (see [`gemm`]).
//!
//! How the work is split (the machine this was tuned on has 2 cores; see `benches/layers.rs`):
//! one single-threaded GEMM per core reaches 62-79 GFLOP/s on AlexNet's shapes and two concurrent
//! streams 139-152, while one GEMM threaded internally only 72-81. So every op cuts its work into
//! exactly `threads` contiguous parts that each run single-threaded GEMMs on their own scratch
//! buffers (`Scratch`, one per part, reused across calls): images of the batch for convolution,
//! output columns for the fully connected layers, planes for LRN and pooling (max and average).
//!
//! Measured on the 2-core machine while other jobs held about one core (so per CPU-second):
//! conv layers at batch 128 run at 55-69 GFLOP/s per core against 76-83 for a plain 2048^3
//! sgemm; im2col is ~5% of conv2..conv5's time and ~20% of conv1's (stride 4 gather).
//! `matrixmultiply`'s own threading (its `threading` feature, on unless `MATMUL_NUM_THREADS=1`)
//! must stay off under this engine: its thread tree has one worker that both engine threads'
//! GEMMs queue on, yield-spinning while they wait (conv2 forward: 52 GFLOP per CPU-second with
//! it, 64 without).
//!
//! One file per layer family: [`conv`] (with [`winograd`]), [`fc`], [`lrn`], [`pool`],
//! [`pointwise`], [`loss`]; the GEMM entry point is [`gemm`].

mod conv;
mod fc;
pub(crate) mod gemm;
mod loss;
mod lrn;
mod pointwise;
mod pool;
mod winograd;

use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use rayon::prelude::*;

use super::{
    check_len, Blocks, ConvShape, Engine, FcShape, LrnParams, LrnShape, MaskSlice, PoolShape,
};
use crate::error::{Error, Result};

/// Per-part scratch memory, grown on demand and kept between calls.
#[derive(Default)]
struct Scratch {
    /// im2col columns, LRN's dy*y/scale planes, GEMM output blocks.
    col: Vec<f32>,
    /// Per-part partial sums (convolution weight gradients).
    acc: Vec<f32>,
}

/// `v[..len]`, growing `v` first if it is shorter. Contents are unspecified: callers overwrite.
fn grown(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// Splits `0..total` into at most `parts` contiguous, non-empty ranges whose lengths differ by at
/// most one.
fn split_ranges(total: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, total.max(1));
    let (base, extra) = (total / parts, total % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .filter(|r| !r.is_empty())
        .collect()
}

/// Cuts `buf` into consecutive pieces of `r.len() * unit` elements, one per range (the ranges
/// being consecutive from 0, as `split_ranges` makes them), each paired with its range: the
/// parts that `run_parts` hands to the threads.
fn split_mut<'a>(
    mut buf: &'a mut [f32],
    ranges: &[Range<usize>],
    unit: usize,
) -> Vec<(Range<usize>, &'a mut [f32])> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(r.len() * unit);
        out.push((r.clone(), head));
        buf = tail;
    }
    out
}

/// How the CPU engine computes convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvAlgorithm {
    /// Winograd's minimal filtering (`winograd`) for the stride-1 3x3 and 5x5 convolutions of a
    /// batch (F(4x4, 3x3), F(3x3, 5x5): 2.6x and 4.6x fewer multiply-adds on AlexNet's maps),
    /// im2col + GEMM for every other.
    #[default]
    Winograd,
    /// im2col + GEMM for every convolution.
    Im2col,
}

/// The CPU engine: f32 buffers in host memory (`Vec<f32>`), its own rayon thread pool.
pub struct CpuEngine {
    pool: rayon::ThreadPool,
    threads: usize,
    conv: ConvAlgorithm,
    scratch: Vec<Mutex<Scratch>>,
    /// Winograd's transformed filters (or their gradient), shared by the parts of one op.
    filters: Mutex<Vec<f32>>,
    /// Held by the ops whose parts leave results in their scratch for a final combine step
    /// (weight-gradient partial sums, FC column blocks): two callers sharing one engine (two
    /// columns on one executor) must not interleave between the parts and the combine.
    combine: Mutex<()>,
}

impl CpuEngine {
    /// An engine with `threads` worker threads (0 = one per available core).
    pub fn new(threads: usize) -> Result<CpuEngine> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("alexnet-cpu-{i}"))
            .build()
            .map_err(|e| {
                Error::Config(format!("cannot start {threads} CPU worker threads: {e}"))
            })?;
        Ok(CpuEngine {
            pool,
            threads,
            conv: ConvAlgorithm::default(),
            scratch: (0..threads).map(|_| Mutex::default()).collect(),
            filters: Mutex::default(),
            combine: Mutex::default(),
        })
    }

    /// This engine with convolutions computed by `conv`.
    pub fn with_conv(mut self, conv: ConvAlgorithm) -> CpuEngine {
        self.conv = conv;
        self
    }

    /// How this engine computes convolutions.
    pub fn conv_algorithm(&self) -> ConvAlgorithm {
        self.conv
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Exclusive use of every part's scratch until the guard drops (see `combine`).
    fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.combine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transformed-filter buffer; taken before any part's scratch (lock order: `combine`,
    /// `filters`, `scratch`).
    fn filters(&self) -> MutexGuard<'_, Vec<f32>> {
        self.filters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Part `i`'s scratch. A poisoned lock only means an earlier caller panicked mid-op; the
    /// buffers are overwritten before use, so their contents do not matter.
    fn scratch(&self, i: usize) -> MutexGuard<'_, Scratch> {
        let m = &self.scratch[i % self.scratch.len()];
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `dw` and `db` = the sums of the first `parts` parts' `acc` scratch, which holds
    /// `[dw | db]` partials: added in part order (so the result depends on the thread count
    /// only), in parallel over chunks of `dw`. The caller holds [`CpuEngine::exclusive`].
    fn sum_partials(&self, parts: usize, dw: &mut [f32], db: &mut [f32]) -> Result<()> {
        let partials: Vec<_> = (0..parts).map(|i| self.scratch(i)).collect();
        let sum_into = |out: &mut [f32], offset: usize| {
            out.copy_from_slice(&partials[0].acc[offset..offset + out.len()]);
            for p in &partials[1..] {
                for (o, v) in out.iter_mut().zip(&p.acc[offset..]) {
                    *o += v;
                }
            }
        };
        let chunks = split_ranges(dw.len(), self.threads);
        let pieces = split_mut(dw, &chunks, 1);
        self.run_parts(pieces, |_, (r, out)| {
            sum_into(out, r.start);
            Ok(())
        })?;
        sum_into(db, dw.len());
        Ok(())
    }

    /// Runs `f(part index, part)` for every part on the pool, one task per part; a single part
    /// runs on the calling thread.
    fn run_parts<T, F>(&self, parts: Vec<T>, f: F) -> Result<()>
    where
        T: Send,
        F: Fn(usize, T) -> Result<()> + Sync,
    {
        if parts.len() <= 1 {
            return parts.into_iter().try_for_each(|p| f(0, p));
        }
        self.pool.install(|| {
            parts
                .into_par_iter()
                .enumerate()
                .try_for_each(|(i, p)| f(i, p))
        })
    }

    /// Applies `f(offset, chunk)` to chunks of `buf` in parallel (memory-bound element-wise ops).
    fn par_chunks<F>(&self, buf: &mut [f32], f: F)
    where
        F: Fn(usize, &mut [f32]) + Sync,
    {
        if buf.len() <= pointwise::CHUNK || self.threads == 1 {
            return f(0, buf);
        }
        self.pool.install(|| {
            buf.par_chunks_mut(pointwise::CHUNK)
                .enumerate()
                .for_each(|(i, c)| f(i * pointwise::CHUNK, c))
        })
    }
}

/// The floats of scratch one CPU engine thread may hold for a convolution of shape `s`, by
/// either algorithm: im2col's columns of one image and its weight-gradient partial sums, or
/// Winograd's transformed tiles, padded plane and transformed filters (see `winograd`).
pub fn conv_scratch_floats(s: &ConvShape) -> usize {
    let im2col = s.c_in / s.groups * s.kh * s.kw * s.h_out() * s.w_out() + s.w_len() + s.c_out;
    winograd::scratch_floats(s).map_or(im2col, |w| w.max(im2col))
}

impl Engine for CpuEngine {
    type Buf = Vec<f32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn host_threads(&self) -> Option<usize> {
        Some(self.threads)
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn buf_len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn upload(&self, dst: &mut Vec<f32>, src: &[f32]) -> Result<()> {
        check_len("upload", "src", src.len(), dst.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn download(&self, src: &Vec<f32>, dst: &mut [f32]) -> Result<()> {
        check_len("download", "dst", dst.len(), src.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn copy(&self, dst: &mut Vec<f32>, src: &Vec<f32>) -> Result<()> {
        check_len("copy", "src", src.len(), dst.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn add(&self, dst: &mut Vec<f32>, src: &Vec<f32>) -> Result<()> {
        check_len("add", "src", src.len(), dst.len())?;
        self.par_chunks(dst, |off, c| {
            for (d, s) in c.iter_mut().zip(&src[off..]) {
                *d += s;
            }
        });
        Ok(())
    }

    // Host memory is shared by every CPU executor: a strided memcpy.
    fn copy_blocks_from(
        &self,
        dst: &mut Vec<f32>,
        _src_engine: &CpuEngine,
        src: &Vec<f32>,
        b: &Blocks,
    ) -> Result<()> {
        b.check("copy_blocks_from", src.len(), dst.len())?;
        for i in 0..b.count {
            let (s, d) = (
                b.src_offset + i * b.src_stride,
                b.dst_offset + i * b.dst_stride,
            );
            dst[d..d + b.len].copy_from_slice(&src[s..s + b.len]);
        }
        Ok(())
    }

    fn fill(&self, buf: &mut Vec<f32>, value: f32) -> Result<()> {
        self.par_chunks(buf, |_, c| c.fill(value));
        Ok(())
    }

    fn scale(&self, buf: &mut Vec<f32>, a: f32) -> Result<()> {
        self.par_chunks(buf, |_, c| c.iter_mut().for_each(|v| *v *= a));
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    // In index order, one thread: 60M values take ~50 ms, against seconds of the step it follows.
    fn sum_of_squares(&self, buf: &Vec<f32>) -> Result<f64> {
        Ok(buf.iter().map(|&x| x as f64 * x as f64).sum())
    }

    fn conv_forward(
        &self,
        s: &ConvShape,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: &Vec<f32>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        conv::forward(self, s, x, w, b, y)
    }

    fn conv_backward_data(
        &self,
        s: &ConvShape,
        dy: &Vec<f32>,
        w: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        conv::backward_data(self, s, dy, w, dx)
    }

    fn conv_backward_weights(
        &self,
        s: &ConvShape,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        dw: &mut Vec<f32>,
        db: &mut Vec<f32>,
    ) -> Result<()> {
        conv::backward_weights(self, s, x, dy, dw, db)
    }

    fn relu_forward(&self, x: &mut Vec<f32>) -> Result<()> {
        pointwise::relu_forward(self, x)
    }

    fn relu_backward(&self, y: &Vec<f32>, dy: &mut Vec<f32>) -> Result<()> {
        pointwise::relu_backward(self, y, dy)
    }

    fn tanh_forward(&self, x: &mut Vec<f32>) -> Result<()> {
        pointwise::tanh_forward(self, x)
    }

    fn tanh_backward(&self, y: &Vec<f32>, dy: &mut Vec<f32>) -> Result<()> {
        pointwise::tanh_backward(self, y, dy)
    }

    fn lrn_forward(
        &self,
        s: &LrnShape,
        p: &LrnParams,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        scale: &mut Vec<f32>,
    ) -> Result<()> {
        lrn::forward(self, s, p, x, y, scale)
    }

    fn lrn_backward(
        &self,
        s: &LrnShape,
        p: &LrnParams,
        x: &Vec<f32>,
        y: &Vec<f32>,
        scale: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        lrn::backward(self, s, p, x, y, scale, dy, dx)
    }

    fn maxpool_forward(&self, s: &PoolShape, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        pool::forward(self, s, x, y)
    }

    fn maxpool_backward(
        &self,
        s: &PoolShape,
        x: &Vec<f32>,
        y: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        pool::backward(self, s, x, y, dy, dx)
    }

    fn avgpool_forward(&self, s: &PoolShape, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        pool::avg_forward(self, s, x, y)
    }

    fn avgpool_backward(&self, s: &PoolShape, dy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        pool::avg_backward(self, s, dy, dx)
    }

    fn fc_forward(
        &self,
        s: &FcShape,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: &Vec<f32>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        fc::forward(self, s, x, w, b, y)
    }

    fn fc_backward(
        &self,
        s: &FcShape,
        x: &Vec<f32>,
        w: &Vec<f32>,
        dy: &Vec<f32>,
        dx: Option<&mut Vec<f32>>,
        dw: &mut Vec<f32>,
        db: &mut Vec<f32>,
    ) -> Result<()> {
        fc::backward(self, s, x, w, dy, dx.map(|v| v.as_mut_slice()), dw, db)
    }

    fn dropout_forward(
        &self,
        x: &mut Vec<f32>,
        p: f32,
        keep_scale: f32,
        m: &MaskSlice,
    ) -> Result<()> {
        pointwise::dropout(self, "dropout_forward", x, p, keep_scale, m)
    }

    fn dropout_backward(
        &self,
        dy: &mut Vec<f32>,
        p: f32,
        keep_scale: f32,
        m: &MaskSlice,
    ) -> Result<()> {
        pointwise::dropout(self, "dropout_backward", dy, p, keep_scale, m)
    }

    fn softmax_xent(
        &self,
        n: usize,
        classes: usize,
        logits: &Vec<f32>,
        labels: &[u32],
        probs: &mut Vec<f32>,
        dlogits: &mut Vec<f32>,
    ) -> Result<f32> {
        loss::softmax_xent(n, classes, logits, labels, probs, dlogits)
    }

    fn softmax(
        &self,
        n: usize,
        classes: usize,
        logits: &Vec<f32>,
        probs: &mut Vec<f32>,
    ) -> Result<()> {
        loss::softmax(n, classes, logits, probs)
    }

    fn sgd_update(
        &self,
        w: &mut Vec<f32>,
        dw: &Vec<f32>,
        v: &mut Vec<f32>,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
        pointwise::sgd_update(self, w, dw, v, lr, momentum, weight_decay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_ranges_covers_everything_evenly() {
        let r = split_ranges(10, 3);
        assert_eq!(r, vec![0..4, 4..7, 7..10]);
        assert_eq!(split_ranges(1, 4), vec![0..1]);
        assert_eq!(split_ranges(0, 2), Vec::<Range<usize>>::new());
    }

    #[test]
    fn split_mut_follows_the_ranges() {
        let mut v: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let parts = split_mut(&mut v, &split_ranges(5, 2), 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], (0..3, &mut [0.0, 1.0, 2.0, 3.0, 4.0, 5.0][..]));
        assert_eq!(parts[1], (3..5, &mut [6.0, 7.0, 8.0, 9.0][..]));
    }

    #[test]
    fn zero_threads_means_all_cores() {
        let e = CpuEngine::new(0).unwrap();
        assert!(e.threads() >= 1);
        assert_eq!(e.name(), format!("cpu ({} threads)", e.threads()));
    }
}
