//! CPU mirrors of the CUDA engine's newer kernels (`csrc/conv.cu`'s whole-chunk convolution,
//! `csrc/layers.cu`'s per-pixel LRN, `csrc/runtime.cu`'s bf16 rounding): the same index maps, loops and cuBLAS arguments, written
//! out in plain Rust so that `cargo test` checks them against the f64 reference on any machine
//! (tests/suite/cuda_mirror.rs), with no GPU and without the `cuda` feature. Each function names the
//! kernel or call it mirrors; a change to one must be made to the other.

use crate::engine::ConvShape;

/// Column-major GEMM with cuBLAS's arguments: C[m, n] (ld `ldc`) = op(A)[m, k] * op(B)[k, n],
/// beta = 0, op = transpose when the flag is set (A then stored [k, m] with ld `lda`). Sums in
/// f64 and rounds once: the mirrors test index maps, not cuBLAS's summation order.
pub fn gemm_col_major(
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
) {
    for col in 0..n {
        for row in 0..m {
            let sum: f64 = (0..k)
                .map(|l| {
                    let av = if trans_a {
                        a[row * lda + l]
                    } else {
                        a[l * lda + row]
                    };
                    let bv = if trans_b {
                        b[l * ldb + col]
                    } else {
                        b[col * ldb + l]
                    };
                    av as f64 * bv as f64
                })
                .sum();
            c[col * ldc + row] = sum as f32;
        }
    }
}

/// `im2col_kernel`: col[K][B][P] (row k*B + b) from the chunk's images x[B, Cin, H, W].
pub fn im2col(s: &ConvShape, x: &[f32], b_count: usize) -> Vec<f32> {
    let (ho, wo) = (s.h_out(), s.w_out());
    let p = ho * wo;
    let k_len = s.c_in * s.kh * s.kw;
    let mut col = vec![0.0; k_len * b_count * p];
    for row in 0..k_len * b_count {
        let (b, k) = (row % b_count, row / b_count);
        let (j, i, c) = (k % s.kw, (k / s.kw) % s.kh, k / (s.kw * s.kh));
        let plane = &x[(b * s.c_in + c) * s.h * s.w..];
        for pos in 0..p {
            let (oh, ow) = (pos / wo, pos % wo);
            let hh = (oh * s.stride + i) as isize - s.pad as isize;
            let ww = (ow * s.stride + j) as isize - s.pad as isize;
            let inside = hh >= 0 && hh < s.h as isize && ww >= 0 && ww < s.w as isize;
            col[row * p + pos] = if inside {
                plane[hh as usize * s.w + ww as usize]
            } else {
                0.0
            };
        }
    }
    col
}

/// `col2im_kernel`: dx[B, Cin, H, W] gathered from col[K][B][P], kernel rows and columns
/// visited in descending output order, as the kernel does.
pub fn col2im(s: &ConvShape, col: &[f32], b_count: usize) -> Vec<f32> {
    let (ho, wo) = (s.h_out(), s.w_out());
    let p = ho * wo;
    let mut dx = vec![0.0f32; b_count * s.c_in * s.h * s.w];
    for plane in 0..b_count * s.c_in {
        let (b, c) = (plane / s.c_in, plane % s.c_in);
        for pix in 0..s.h * s.w {
            let (hp, wp) = (pix / s.w + s.pad, pix % s.w + s.pad);
            let oh_lo = if hp < s.kh {
                0
            } else {
                (hp - s.kh) / s.stride + 1
            };
            let ow_lo = if wp < s.kw {
                0
            } else {
                (wp - s.kw) / s.stride + 1
            };
            let (oh_hi, ow_hi) = ((hp / s.stride).min(ho - 1), (wp / s.stride).min(wo - 1));
            let mut acc = 0.0f32;
            for oh in (oh_lo..=oh_hi).rev() {
                let i = hp - oh * s.stride;
                for ow in (ow_lo..=ow_hi).rev() {
                    let j = wp - ow * s.stride;
                    let k = (c * s.kh + i) * s.kw + j;
                    acc += col[(k * b_count + b) * p + oh * wo + ow];
                }
            }
            dx[plane * s.h * s.w + pix] = acc;
        }
    }
    dx
}

/// `images_inside_channels_kernel`: dyt[C][B][P] (row c*B + b) from dy[B][C][P].
pub fn images_inside_channels(dy: &[f32], b_count: usize, c: usize, p: usize) -> Vec<f32> {
    let mut dyt = vec![0.0; b_count * c * p];
    for row in 0..c * b_count {
        let (b, ch) = (row % b_count, row / b_count);
        dyt[row * p..(row + 1) * p].copy_from_slice(&dy[(b * c + ch) * p..(b * c + ch + 1) * p]);
    }
    dyt
}

/// `channels_inside_images_bias_kernel`: y[B][C][P] (row b*C + c) = yt[C][B][P] + bias[C].
pub fn channels_inside_images_bias(
    yt: &[f32],
    bias: &[f32],
    b_count: usize,
    c: usize,
    p: usize,
) -> Vec<f32> {
    let mut y = vec![0.0; b_count * c * p];
    for row in 0..b_count * c {
        let (ch, b) = (row % c, row / c);
        let src = &yt[(ch * b_count + b) * p..(ch * b_count + b + 1) * p];
        for (out, v) in y[row * p..(row + 1) * p].iter_mut().zip(src) {
            *out = v + bias[ch];
        }
    }
    y
}

/// `anc_conv_forward` with `whole_chunk`: per chunk of `chunk` images, im2col, one GEMM of
/// m = B*P per group into yt[Cout][B][P], then y = yt moved image-major plus the bias.
pub fn conv_forward_whole_chunk(
    s: &ConvShape,
    chunk: usize,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let p = s.h_out() * s.w_out();
    let (kg, coutg) = (s.c_in / s.groups * s.kh * s.kw, s.c_out / s.groups);
    let mut y = Vec::with_capacity(s.n * s.c_out * p);
    for b0 in (0..s.n).step_by(chunk) {
        let bc = chunk.min(s.n - b0);
        let bp = bc * p;
        let col = im2col(s, &x[b0 * s.c_in * s.h * s.w..], bc);
        let mut yt = vec![0.0; s.c_out * bp];
        for g in 0..s.groups {
            gemm_col_major(
                (false, false),
                (bp, coutg, kg),
                (&col[g * kg * bp..], bp),
                (&w[g * coutg * kg..], kg),
                (&mut yt[g * coutg * bp..], bp),
            );
        }
        y.extend(channels_inside_images_bias(&yt, bias, bc, s.c_out, p));
    }
    y
}

/// `anc_conv_backward_data` with `whole_chunk`: dy moved channel-major, one GEMM of m = B*P
/// per group into the column buffer, then col2im.
pub fn conv_backward_data_whole_chunk(
    s: &ConvShape,
    chunk: usize,
    dy: &[f32],
    w: &[f32],
) -> Vec<f32> {
    let p = s.h_out() * s.w_out();
    let (kg, coutg) = (s.c_in / s.groups * s.kh * s.kw, s.c_out / s.groups);
    let mut dx = Vec::with_capacity(s.x_len());
    for b0 in (0..s.n).step_by(chunk) {
        let bc = chunk.min(s.n - b0);
        let bp = bc * p;
        let dyt = images_inside_channels(&dy[b0 * s.c_out * p..], bc, s.c_out, p);
        let mut col = vec![0.0; kg * s.groups * bp];
        for g in 0..s.groups {
            gemm_col_major(
                (false, true),
                (bp, kg, coutg),
                (&dyt[g * coutg * bp..], bp),
                (&w[g * coutg * kg..], kg),
                (&mut col[g * kg * bp..], bp),
            );
        }
        dx.extend(col2im(s, &col, bc));
    }
    dx
}

/// The LRN kernels' geometry: n images of c channels of hw pixels, `groups` columns of c/groups
/// channels, windows of `size` channels (alpha already divided by size where asked).
#[derive(Clone, Copy, Debug)]
pub struct LrnGeometry {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub groups: usize,
    pub size: usize,
}

/// The walk of one pixel's channels shared by both per-pixel LRN kernels: for each group, a
/// running window sum (f64) of `term(channel)` over [ch - size/2, ch + size/2] clamped to the
/// group, handed to `out(channel, sum)` for every channel in order.
fn walk_channels(g: &LrnGeometry, term: impl Fn(usize) -> f32, mut out: impl FnMut(usize, f64)) {
    let (cg, half) = (g.c / g.groups, g.size / 2);
    for g0 in (0..g.c).step_by(cg) {
        let g1 = g0 + cg;
        let mut sum = 0.0f64;
        for j in g0..g1.min(g0 + half) {
            sum += term(j) as f64;
        }
        for ch in g0..g1 {
            if ch + half < g1 {
                sum += term(ch + half) as f64;
            }
            if ch > g0 + half {
                sum -= term(ch - half - 1) as f64;
            }
            out(ch, sum);
        }
    }
}

/// `lrn_forward_by_pixel_kernel`: (y, scale) with scale = k + alpha * sum_window x^2 and
/// y = x * scale^-beta, one pixel (image, position) at a time.
pub fn lrn_forward_by_pixel(
    g: &LrnGeometry,
    (alpha, beta, k): (f32, f32, f32),
    x: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let len = g.n * g.c * g.hw;
    let (mut y, mut scale) = (vec![0.0; len], vec![0.0; len]);
    for t in 0..g.n * g.hw {
        let base = (t / g.hw) * g.c * g.hw + t % g.hw;
        let at = |j: usize| base + j * g.hw;
        walk_channels(
            g,
            |j| x[at(j)] * x[at(j)],
            |ch, sum| {
                let i = at(ch);
                let sc = k + alpha * sum as f32;
                scale[i] = sc;
                y[i] = x[i] * sc.powf(-beta);
            },
        );
    }
    (y, scale)
}

/// `lrn_backward_by_pixel_kernel`: dx = dy scale^-beta - 2 alpha beta x sum_window(dy y / scale).
pub fn lrn_backward_by_pixel(
    g: &LrnGeometry,
    (alpha, beta): (f32, f32),
    x: &[f32],
    y: &[f32],
    scale: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let mut dx = vec![0.0; g.n * g.c * g.hw];
    for t in 0..g.n * g.hw {
        let base = (t / g.hw) * g.c * g.hw + t % g.hw;
        let at = |j: usize| base + j * g.hw;
        walk_channels(
            g,
            |j| dy[at(j)] * y[at(j)] / scale[at(j)],
            |ch, acc| {
                let i = at(ch);
                dx[i] = dy[i] * scale[i].powf(-beta) - 2.0 * alpha * beta * x[i] * acc as f32;
            },
        );
    }
    dx
}

/// `to_bf16_kernel` (`__float2bfloat16_rn`): `x` rounded to bf16 (8 significant bits), to
/// nearest with ties to even, as the f32 it widens back to. NaN stays NaN (quietened); values
/// past bf16's largest finite round to infinity, as IEEE rounding does.
pub fn bf16_round(x: f32) -> f32 {
    if x.is_nan() {
        return f32::from_bits(x.to_bits() | 0x0040_0000);
    }
    let bits = x.to_bits();
    // Add half of the dropped 16 bits' unit, minus one unless the kept last bit is odd (ties to
    // even); a carry into the exponent is the correct rounding up (to infinity at the top).
    let rounded = bits + 0x7fff + ((bits >> 16) & 1);
    f32::from_bits(rounded & 0xffff_0000)
}
