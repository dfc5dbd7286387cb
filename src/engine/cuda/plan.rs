//! Host-side checks and planning for the CUDA engine: every op's buffer lengths and geometry are
//! checked here before anything is queued on the GPU, and the im2col scratch is sized here. Pure
//! functions over shapes and lengths, so they are tested without a device.

use crate::engine::{check_len, ConvShape, FcShape, LrnShape, PoolShape};
use crate::error::{Error, Result};

/// Floats of convolution scratch on a card of `total_bytes` of memory (unknown: the smallest):
/// 1/32 of it, between 256 MiB and 2 GiB. At batch 128 that is 61 images of AlexNet's conv1 per
/// im2col + GEMM round at the low end and the whole batch for every layer at the high end, which
/// measured 2.8% faster per step than the low end on an H200.
pub fn default_scratch_floats(total_bytes: Option<u64>) -> usize {
    const MIB: u64 = 1 << 20;
    let bytes = total_bytes.map_or(256 * MIB, |t| (t / 32).clamp(256 * MIB, 2048 * MIB));
    (bytes / 4) as usize
}

/// Blocks of 256 threads for `anc_sum_of_squares` over `len` values: one per 256 values, at
/// most 1024 (each thread then loops), at least 1. Their partial sums take one f64 each.
pub fn sum_of_squares_blocks(len: usize) -> usize {
    len.div_ceil(256).clamp(1, 1024)
}

/// cuBLAS takes dimensions and leading dimensions as 32-bit ints.
fn fits_int(op: &str, what: &str, v: usize) -> Result<()> {
    if v <= i32::MAX as usize {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{what} = {v} exceeds cuBLAS's 32-bit dimension limit"),
        ))
    }
}

/// How a convolution call is split: `chunk` images per im2col + GEMM round, `scratch_floats` of
/// scratch for one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPlan {
    pub chunk: usize,
    pub scratch_floats: usize,
}

/// Scratch floats one image needs: im2col (K x P), plus y or dy with images inside channels
/// (Cout x P) when `channel_major` (backward-weights always; forward and backward-data as one
/// GEMM over the whole chunk). Must agree with `anc_conv_scratch_floats` in csrc/conv.cu.
pub fn conv_floats_per_image(s: &ConvShape, channel_major: bool) -> usize {
    let p = s.h_out() * s.w_out();
    let col = s.c_in * s.kh * s.kw * p;
    let dyt = if channel_major { s.c_out * p } else { 0 };
    col + dyt
}

/// The largest chunk of images whose scratch fits in `budget_floats` (at least one image, at most
/// the batch).
pub fn conv_plan(s: &ConvShape, budget_floats: usize, channel_major: bool) -> ConvPlan {
    let per_image = conv_floats_per_image(s, channel_major).max(1);
    let chunk = (budget_floats / per_image).clamp(1, s.n.max(1));
    ConvPlan {
        chunk,
        scratch_floats: chunk * per_image,
    }
}

/// Validates the geometry (`ConvShape::validate`, non-empty channels and kernel) before anything
/// derived from it is computed, then plans the chunk for `budget` scratch floats and checks that
/// the GEMM dimensions fit cuBLAS's ints.
pub fn conv_geometry(
    op: &str,
    s: &ConvShape,
    budget: usize,
    channel_major: bool,
) -> Result<ConvPlan> {
    s.validate(op)?;
    if s.c_in == 0 || s.c_out == 0 || s.kh == 0 || s.kw == 0 {
        return Err(Error::shape(
            op,
            format!("empty channels or kernel in {s:?}"),
        ));
    }
    let plan = conv_plan(s, budget, channel_major);
    let p = s.h_out() * s.w_out();
    fits_int(op, "images per chunk x output positions", plan.chunk * p)?;
    fits_int(op, "input channels x kernel area", s.c_in * s.kh * s.kw)?;
    fits_int(op, "output channels", s.c_out)?;
    // The im2col/col2im kernels index within one padded image plane in 32 bits.
    fits_int(
        op,
        "padded input height x width",
        (s.h + 2 * s.pad) * (s.w + 2 * s.pad),
    )?;
    Ok(plan)
}

/// y[N,Cout,Ho,Wo] = conv(x, w) + b: lengths of x, w, b, y; the plan for `budget` scratch floats
/// (`whole_chunk`: one GEMM per group over the chunk, with y channel-major in the scratch).
pub fn conv_forward(
    s: &ConvShape,
    budget: usize,
    whole_chunk: bool,
    x: usize,
    w: usize,
    b: usize,
    y: usize,
) -> Result<ConvPlan> {
    const OP: &str = "conv_forward";
    let plan = conv_geometry(OP, s, budget, whole_chunk)?;
    check_len(OP, "x", x, s.x_len())?;
    check_len(OP, "w", w, s.w_len())?;
    check_len(OP, "b", b, s.c_out)?;
    check_len(OP, "y", y, s.y_len())?;
    Ok(plan)
}

/// dx = conv_transpose(dy, w): lengths of dy, w, dx (`whole_chunk` as in [`conv_forward`]).
pub fn conv_backward_data(
    s: &ConvShape,
    budget: usize,
    whole_chunk: bool,
    dy: usize,
    w: usize,
    dx: usize,
) -> Result<ConvPlan> {
    const OP: &str = "conv_backward_data";
    let plan = conv_geometry(OP, s, budget, whole_chunk)?;
    check_len(OP, "dy", dy, s.y_len())?;
    check_len(OP, "w", w, s.w_len())?;
    check_len(OP, "dx", dx, s.x_len())?;
    Ok(plan)
}

/// dw, db from x and dy: lengths of x, dy, dw, db.
pub fn conv_backward_weights(
    s: &ConvShape,
    budget: usize,
    x: usize,
    dy: usize,
    dw: usize,
    db: usize,
) -> Result<ConvPlan> {
    const OP: &str = "conv_backward_weights";
    let plan = conv_geometry(OP, s, budget, true)?;
    check_len(OP, "x", x, s.x_len())?;
    check_len(OP, "dy", dy, s.y_len())?;
    check_len(OP, "dw", dw, s.w_len())?;
    check_len(OP, "db", db, s.c_out)?;
    Ok(plan)
}

fn fc_dims(op: &str, s: &FcShape) -> Result<()> {
    fits_int(op, "n", s.n)?;
    fits_int(op, "d_in", s.d_in)?;
    fits_int(op, "d_out", s.d_out)
}

/// y[N,out] = x w^T + b: lengths of x, w, b, y.
pub fn fc_forward(s: &FcShape, x: usize, w: usize, b: usize, y: usize) -> Result<()> {
    const OP: &str = "fc_forward";
    fc_dims(OP, s)?;
    check_len(OP, "x", x, s.n * s.d_in)?;
    check_len(OP, "w", w, s.d_out * s.d_in)?;
    check_len(OP, "b", b, s.d_out)?;
    check_len(OP, "y", y, s.n * s.d_out)
}

/// Lengths of x, w, dy, dx (if asked), dw, db.
pub fn fc_backward(
    s: &FcShape,
    x: usize,
    w: usize,
    dy: usize,
    dx: Option<usize>,
    dw: usize,
    db: usize,
) -> Result<()> {
    const OP: &str = "fc_backward";
    fc_dims(OP, s)?;
    check_len(OP, "x", x, s.n * s.d_in)?;
    check_len(OP, "w", w, s.d_out * s.d_in)?;
    check_len(OP, "dy", dy, s.n * s.d_out)?;
    if let Some(dx) = dx {
        check_len(OP, "dx", dx, s.n * s.d_in)?;
    }
    check_len(OP, "dw", dw, s.d_out * s.d_in)?;
    check_len(OP, "db", db, s.d_out)
}

/// LRN geometry: channels split evenly into columns, a non-empty window; `lens` are the lengths
/// of every buffer the op touches, each of which must equal the shape's.
pub fn lrn(op: &str, s: &LrnShape, size: usize, lens: &[(&str, usize)]) -> Result<()> {
    if s.groups == 0 || !s.c.is_multiple_of(s.groups) || size == 0 {
        return Err(Error::shape(
            op,
            format!(
                "{} channels cannot form {} columns with window {size}",
                s.c, s.groups
            ),
        ));
    }
    for &(arg, got) in lens {
        check_len(op, arg, got, s.len())?;
    }
    Ok(())
}

/// Pooling geometry (window inside the image, positive stride) and the lengths of x and y, and
/// of dy and dx when given.
pub fn pool(
    op: &str,
    s: &PoolShape,
    x: usize,
    y: usize,
    dy_dx: Option<(usize, usize)>,
) -> Result<()> {
    if s.size == 0 || s.stride == 0 || s.h < s.size || s.w < s.size {
        return Err(Error::shape(op, format!("invalid pooling geometry {s:?}")));
    }
    // The kernels index within one image plane in 32 bits.
    fits_int(op, "height x width", s.h * s.w)?;
    check_len(op, "x", x, s.x_len())?;
    check_len(op, "y", y, s.y_len())?;
    if let Some((dy, dx)) = dy_dx {
        check_len(op, "dy", dy, s.y_len())?;
        check_len(op, "dx", dx, s.x_len())?;
    }
    Ok(())
}

/// Softmax-family checks: every [N, K] buffer's length and, when labels are given, their count and
/// range (a label >= K would index past its row).
pub fn softmax(
    op: &str,
    n: usize,
    classes: usize,
    lens: &[(&str, usize)],
    labels: Option<&[u32]>,
) -> Result<()> {
    for &(arg, got) in lens {
        check_len(op, arg, got, n * classes)?;
    }
    if n > u32::MAX as usize {
        return Err(Error::shape(op, format!("{n} rows exceed the grid limit")));
    }
    if let Some(labels) = labels {
        check_len(op, "labels", labels.len(), n)?;
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= classes)
        {
            return Err(Error::shape(
                op,
                format!("label {l} of row {i} is out of range for {classes} classes"),
            ));
        }
    }
    Ok(())
}

/// Two buffers of one length (pointwise backward ops, copy, sgd).
pub fn same_len(op: &str, a: (&str, usize), b: (&str, usize)) -> Result<()> {
    check_len(op, b.0, b.1, a.1)
}

/// Bytes for `len` f32, or an out-of-memory error when that overflows.
pub fn f32_bytes(len: usize) -> Result<usize> {
    len.checked_mul(std::mem::size_of::<f32>())
        .ok_or_else(|| Error::OutOfMemory(format!("{len} f32 overflow the address space")))
}
