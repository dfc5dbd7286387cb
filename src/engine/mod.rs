//! The narrow engine interface: the ops AlexNet needs, forward and backward, on engine-owned
//! buffers. The model and the trainer are written once against [`Engine`]; the CPU engine
//! ([`cpu::CpuEngine`]) and the CUDA engine (feature `cuda`) implement it.
//!
//! Conventions shared by every implementation:
//! - tensors are f32, NCHW, contiguous; weights are PyTorch's layouts (`[out, in/groups, kh, kw]`,
//!   fully connected `[out, in]`);
//! - an op *overwrites* its outputs (gradients are not accumulated), except where it says otherwise;
//! - every op checks buffer lengths against its shape and returns [`Error::Shape`] naming the op
//!   instead of reading out of bounds.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod cuda_mirror;

use crate::error::{Error, Result};

/// Convolution geometry. Output size: `(h + 2*pad - kh) / stride + 1` (floor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    /// Channels are split into `groups` equal parts; group g's outputs read only group g's inputs.
    pub groups: usize,
}

impl ConvShape {
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c_out * self.h_out() * self.w_out()
    }
    pub fn w_len(&self) -> usize {
        self.c_out * (self.c_in / self.groups) * self.kh * self.kw
    }
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> u64 {
        (self.y_len() * (self.c_in / self.groups) * self.kh * self.kw) as u64
    }
    /// Checks the geometry itself (divisibility, kernel fits) and names the op on failure.
    pub fn validate(&self, op: &str) -> Result<()> {
        let ok = self.n > 0
            && self.groups > 0
            && self.stride > 0
            && self.c_in.is_multiple_of(self.groups)
            && self.c_out.is_multiple_of(self.groups)
            && self.h + 2 * self.pad >= self.kh
            && self.w + 2 * self.pad >= self.kw;
        if ok {
            Ok(())
        } else {
            Err(Error::shape(
                op,
                format!("invalid convolution geometry {self:?}"),
            ))
        }
    }
}

/// Cross-channel local response normalisation (Section 3.3):
/// `b[i] = a[i] / (k + alpha' * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a[j]^2)^beta`,
/// where `alpha' = alpha` (the paper) or `alpha / n` (Caffe, cuda-convnet, PyTorch).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrnParams {
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
    pub alpha_over_n: bool,
}

impl LrnParams {
    /// The paper's constants: k = 2, n = 5, alpha = 1e-4, beta = 0.75, alpha not divided by n.
    pub const PAPER: LrnParams = LrnParams {
        size: 5,
        alpha: 1e-4,
        beta: 0.75,
        k: 2.0,
        alpha_over_n: false,
    };
    /// The coefficient that multiplies the sum of squares.
    pub fn effective_alpha(&self) -> f32 {
        if self.alpha_over_n {
            self.alpha / self.size as f32
        } else {
            self.alpha
        }
    }
}

/// LRN geometry. The `c` channels are `groups` independent columns: the window is clamped at each
/// column's edges (the paper's GPUs normalise only their own kernel maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LrnShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub groups: usize,
}

impl LrnShape {
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pooling (max or average) with window `size` and stride `stride`, no padding. Output size
/// `(h - size) / stride + 1` (floor). Max pooling's ties: the first maximum in row-major window
/// order wins (gets the whole gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub size: usize,
    pub stride: usize,
}

impl PoolShape {
    pub fn h_out(&self) -> usize {
        (self.h - self.size) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w - self.size) / self.stride + 1
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c * self.h_out() * self.w_out()
    }
}

/// Fully connected: `y[n, out] = x[n, in] · w[out, in]^T + b[out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FcShape {
    pub n: usize,
    pub d_in: usize,
    pub d_out: usize,
}

/// Which part of a layer's dropout mask a buffer holds. Element `i` of the buffer is unit
/// `offset + i % width` of image `first_image + i / width`, and its mask index is
/// `image * total + unit`: a column that holds units `offset..offset+width` of a `total`-unit
/// layer draws exactly its slice of the one-device mask, and a data-parallel replica whose
/// batch is images `first_image..` of the global batch draws exactly those images' masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskSlice {
    pub seed: u64,
    pub width: usize,
    pub total: usize,
    pub offset: usize,
    pub first_image: usize,
}

impl MaskSlice {
    /// The whole layer: `width` units per image, mask index = buffer index.
    pub fn whole(seed: u64, width: usize) -> MaskSlice {
        MaskSlice {
            seed,
            width,
            total: width,
            offset: 0,
            first_image: 0,
        }
    }

    /// The mask index of buffer element `i`.
    pub fn index(&self, i: usize) -> u64 {
        ((self.first_image + i / self.width) * self.total + self.offset + i % self.width) as u64
    }

    /// The mask index of element `i` is `(i / width) * total + unit_base() + i % width`: the
    /// offset of the first element, the form the GPU kernel takes.
    pub fn unit_base(&self) -> usize {
        self.first_image * self.total + self.offset
    }

    /// Checks that the slice is well formed and tiles a buffer of `len` floats.
    pub fn check(&self, op: &str, len: usize) -> Result<()> {
        if self.width == 0
            || self.offset + self.width > self.total
            || !len.is_multiple_of(self.width)
        {
            return Err(Error::shape(
                op,
                format!("mask slice {self:?} does not tile a buffer of {len} floats"),
            ));
        }
        Ok(())
    }
}

/// `count` blocks of `len` floats: block `i` is read at `src_offset + i * src_stride` and written
/// at `dst_offset + i * dst_stride`. Gathering a column's `[N, C_col, H, W]` maps into the
/// `[N, C, H, W]` input of a cross-column layer is `count = N`, `len = C_col*H*W`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocks {
    pub count: usize,
    pub len: usize,
    pub src_offset: usize,
    pub src_stride: usize,
    pub dst_offset: usize,
    pub dst_stride: usize,
}

impl Blocks {
    /// Checks that every block lies inside buffers of `src_len` and `dst_len` floats.
    pub fn check(&self, op: &str, src_len: usize, dst_len: usize) -> Result<()> {
        let end = |offset: usize, stride: usize| {
            if self.count == 0 || self.len == 0 {
                Some(0)
            } else {
                (self.count - 1)
                    .checked_mul(stride)
                    .and_then(|v| v.checked_add(offset))
                    .and_then(|v| v.checked_add(self.len))
            }
        };
        let fits = |e: Option<usize>, len: usize| e.is_some_and(|e| e <= len);
        if fits(end(self.src_offset, self.src_stride), src_len)
            && fits(end(self.dst_offset, self.dst_stride), dst_len)
        {
            Ok(())
        } else {
            Err(Error::shape(
                op,
                format!(
                    "{self:?} does not fit buffers of {src_len} (src) and {dst_len} (dst) floats"
                ),
            ))
        }
    }

    /// Floats moved.
    pub fn floats(&self) -> usize {
        self.count * self.len
    }
}

/// The ops AlexNet needs. Buffers are owned by the engine (host memory for the CPU engine, device
/// memory for CUDA); data crosses to the host only through `upload`/`download`. An engine owns
/// what it refers to (`'static`), so a network over it can be driven as a `dyn NetworkOps`.
pub trait Engine: Send + Sync + 'static {
    type Buf: Send;

    /// A short human-readable name ("cpu (2 threads)", "cuda:0 NVIDIA H100 ...").
    fn name(&self) -> String;

    /// The host threads that compute, for an engine whose buffers live in host memory (the CPU
    /// engine); None for a device engine. Summation order, and so the last bits of a result,
    /// may depend on it; memory estimates count the engine's buffers as host memory only here.
    fn host_threads(&self) -> Option<usize> {
        None
    }

    /// A gradient sync that sums these executors' gradients where they live (NCCL in GPU
    /// memory: the CUDA engine built with `nccl` and switched to it), or `None`, and the trainer
    /// sums through host memory (`data_parallel::Replicas`) or, alone, not at all.
    fn device_gradient_sync<'c>(
        _engines: &[Self],
        _comm: &'c crate::dist::Comm,
    ) -> Result<Option<Box<dyn crate::trainer::GradientSync<Self> + 'c>>>
    where
        Self: Sized,
    {
        Ok(None)
    }

    // ---- memory ----
    /// A zero-filled buffer of `len` f32.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    fn buf_len(&self, buf: &Self::Buf) -> usize;
    fn upload(&self, dst: &mut Self::Buf, src: &[f32]) -> Result<()>;
    /// An upload of the next batch while the engine still works on this one: it may complete
    /// after returning (the CUDA engine's copy stream), so [`Engine::prefetch_join`] must come
    /// before any op reads `dst`, and `dst` must not be read or written in between.
    fn prefetch_upload(&self, dst: &mut Self::Buf, src: &[f32]) -> Result<()> {
        self.upload(dst, src)
    }
    /// Ops queued from here on see the last [`Engine::prefetch_upload`]'s data.
    fn prefetch_join(&self) -> Result<()> {
        Ok(())
    }
    fn download(&self, src: &Self::Buf, dst: &mut [f32]) -> Result<()>;
    /// dst[..] = src[..] (same length).
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()>;
    fn fill(&self, buf: &mut Self::Buf, value: f32) -> Result<()>;
    /// buf *= a.
    fn scale(&self, buf: &mut Self::Buf, a: f32) -> Result<()>;
    /// Blocks until queued work is done (no-op on the CPU).
    fn synchronize(&self) -> Result<()>;
    /// dst += src (same length): sums the gradient blocks that come back from other columns.
    fn add(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()>;
    /// The sum of the squares of `buf`'s values, in f64 (LARS's norms), where the buffer lives:
    /// no copy of it leaves the engine. Deterministic: the same values give the same bits.
    fn sum_of_squares(&self, buf: &Self::Buf) -> Result<f64>;
    /// Copies `b.count` blocks of `b.len` floats from `src`, which lives on `src_engine` (another
    /// device of the same kind, or this one), into `dst` on this engine. The only way data moves
    /// between executors: the columns' cross connections (model parallelism, Section 3.2).
    /// Returns once the copy is complete on both sides.
    fn copy_blocks_from(
        &self,
        dst: &mut Self::Buf,
        src_engine: &Self,
        src: &Self::Buf,
        b: &Blocks,
    ) -> Result<()>;

    // ---- convolution ----
    /// y[N,Cout,Ho,Wo] = conv(x[N,Cin,H,W], w[Cout,Cin/g,kh,kw]) + b[Cout]
    fn conv_forward(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
    ) -> Result<()>;
    /// dx[N,Cin,H,W] = conv_transpose(dy[N,Cout,Ho,Wo], w[Cout,Cin/g,kh,kw])
    fn conv_backward_data(
        &self,
        s: &ConvShape,
        dy: &Self::Buf,
        w: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;
    /// dw[Cout,Cin/g,kh,kw] = sum_n dy ⋆ x ; db[Cout] = sum_{n,h,w} dy (both overwritten)
    fn conv_backward_weights(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()>;

    // ---- pointwise nonlinearities (in place) ----
    /// x = max(x, 0)
    fn relu_forward(&self, x: &mut Self::Buf) -> Result<()>;
    /// dy *= (y > 0), y being the ReLU's output
    fn relu_backward(&self, y: &Self::Buf, dy: &mut Self::Buf) -> Result<()>;
    /// x = tanh(x)
    fn tanh_forward(&self, x: &mut Self::Buf) -> Result<()>;
    /// dy *= 1 - y^2, y being the tanh's output
    fn tanh_backward(&self, y: &Self::Buf, dy: &mut Self::Buf) -> Result<()>;

    // ---- local response normalisation ----
    /// y[N,C,H,W] = LRN(x); scale[N,C,H,W] = k + alpha' * sum_window x^2 (kept for backward)
    fn lrn_forward(
        &self,
        s: &LrnShape,
        p: &LrnParams,
        x: &Self::Buf,
        y: &mut Self::Buf,
        scale: &mut Self::Buf,
    ) -> Result<()>;
    /// dx[N,C,H,W] from x, y, scale and dy
    #[allow(clippy::too_many_arguments)]
    fn lrn_backward(
        &self,
        s: &LrnShape,
        p: &LrnParams,
        x: &Self::Buf,
        y: &Self::Buf,
        scale: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;

    // ---- max pooling ----
    /// y[N,C,Ho,Wo] = max over each size x size window of x[N,C,H,W]
    fn maxpool_forward(&self, s: &PoolShape, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// dx[N,C,H,W]: each dy goes to its window's first maximum (recomputed from x and y)
    fn maxpool_backward(
        &self,
        s: &PoolShape,
        x: &Self::Buf,
        y: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;

    // ---- average pooling ----
    /// y[N,C,Ho,Wo] = mean over each size x size window of x[N,C,H,W]
    fn avgpool_forward(&self, s: &PoolShape, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// dx[N,C,H,W] = sum over the windows that hold each x of dy / size^2
    fn avgpool_backward(&self, s: &PoolShape, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;

    // ---- fully connected ----
    /// y[N,out] = x[N,in] w[out,in]^T + b[out]
    fn fc_forward(
        &self,
        s: &FcShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
    ) -> Result<()>;
    /// dx[N,in] = dy w (skipped when `dx` is None); dw[out,in] = dy^T x; db[out] = sum_n dy
    #[allow(clippy::too_many_arguments)]
    fn fc_backward(
        &self,
        s: &FcShape,
        x: &Self::Buf,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()>;

    // ---- dropout (mask from crate::rng::dropout_keep(seed, m.index(i), p), never stored) ----
    /// x[i] = keep(i) ? x[i] * keep_scale : 0
    fn dropout_forward(
        &self,
        x: &mut Self::Buf,
        p: f32,
        keep_scale: f32,
        m: &MaskSlice,
    ) -> Result<()>;
    /// dy[i] = keep(i) ? dy[i] * keep_scale : 0
    fn dropout_backward(
        &self,
        dy: &mut Self::Buf,
        p: f32,
        keep_scale: f32,
        m: &MaskSlice,
    ) -> Result<()>;

    // ---- loss ----
    /// probs[N,K] = softmax(logits); returns mean_n -ln probs[n, labels[n]];
    /// dlogits[N,K] = (probs - onehot(labels)) / N
    fn softmax_xent(
        &self,
        n: usize,
        classes: usize,
        logits: &Self::Buf,
        labels: &[u32],
        probs: &mut Self::Buf,
        dlogits: &mut Self::Buf,
    ) -> Result<f32>;
    /// probs[N,K] = softmax(logits), for evaluation
    fn softmax(
        &self,
        n: usize,
        classes: usize,
        logits: &Self::Buf,
        probs: &mut Self::Buf,
    ) -> Result<()>;

    // ---- optimiser ----
    /// The paper's rule (Section 5): v = momentum*v - weight_decay*lr*w - lr*dw ; w = w + v
    fn sgd_update(
        &self,
        w: &mut Self::Buf,
        dw: &Self::Buf,
        v: &mut Self::Buf,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()>;
}

/// Length check shared by the engines: `Err(Shape)` naming the op and the argument.
pub fn check_len(op: &str, arg: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{arg} has {got} elements, the shape needs {want}"),
        ))
    }
}
