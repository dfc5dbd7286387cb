//! One test suite for every engine: each function runs one op (or one forward/backward pair) of
//! an [`Engine`] over a grid of shapes and compares it with the f64 oracle (`alexnet-reference`).
//!
//! How each check is made honest:
//! - inputs are random (`alexnet::rng::Rng`, fixed seeds), never zeros, scaled so the outputs are
//!   O(1) (weights with variance 1/fan-in, gradients with variance 1/number-of-terms), so one
//!   absolute tolerance fits every element;
//! - every output buffer is filled with NaN before the call, so an element the op forgot to
//!   write fails the comparison (NaN is never within tolerance);
//! - the reference sees exactly the engine's f32 inputs widened to f64, so the only difference
//!   is the engine's f32 arithmetic, which the caller's [`Tol`] bounds.
//!
//! The instantiating test file (`tests/suite/cpu_ops.rs`, `tests/cuda_ops.rs`) picks the tolerances,
//! with the reason, since they depend on the engine's arithmetic.

use alexnet::engine::{
    Blocks, ConvShape, Engine, FcShape, LrnParams, LrnShape, MaskSlice, PoolShape,
};
use alexnet::rng::{dropout_keep, Rng};
use alexnet::Error;
use alexnet_reference as reference;

/// Element-wise tolerance: `|got - want| <= abs + rel * |want|`, `want` the f64 reference.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub rel: f64,
    pub abs: f64,
}

impl Tol {
    /// Bit-exact (ops that do no rounding, or the same rounding as the reference).
    pub const EXACT: Tol = Tol { rel: 0.0, abs: 0.0 };
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// `len` values uniform in [-a, a).
pub fn uniform(rng: &mut Rng, len: usize, a: f64) -> Vec<f32> {
    (0..len)
        .map(|_| ((rng.uniform() * 2.0 - 1.0) * a) as f32)
        .collect()
}

pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn upload<E: Engine>(e: &E, v: &[f32]) -> E::Buf {
    let mut b = e.alloc(v.len()).expect("alloc");
    e.upload(&mut b, v).expect("upload");
    b
}

/// A buffer of `len` NaNs: whatever the op does not write stays NaN and fails the comparison.
pub fn poisoned<E: Engine>(e: &E, len: usize) -> E::Buf {
    let mut b = e.alloc(len).expect("alloc");
    e.fill(&mut b, f32::NAN).expect("fill");
    b
}

pub fn download<E: Engine>(e: &E, b: &E::Buf) -> Vec<f32> {
    let mut v = vec![0.0; e.buf_len(b)];
    e.download(b, &mut v).expect("download");
    v
}

/// Asserts every element is within `tol` of the reference; prints the worst one on failure and,
/// on success, the largest error seen (for choosing tolerances with evidence).
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: Tol) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f64)> = None; // index, error / allowed
    let mut max_err = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        // false for a NaN error (an unwritten, poisoned element) too
        let within = err <= tol.abs + tol.rel * w.abs();
        if within {
            max_err = max_err.max(err);
            continue;
        }
        let ratio = if err.is_nan() {
            f64::INFINITY
        } else {
            err / (tol.abs + tol.rel * w.abs())
        };
        if worst.is_none_or(|(_, r)| ratio > r) {
            worst = Some((i, ratio));
        }
    }
    if let Some((i, _)) = worst {
        let allowed = tol.abs + tol.rel * want[i].abs();
        panic!(
            "{what}: element {i} is {} but the reference says {} (allowed error {allowed:e})",
            got[i], want[i]
        );
    }
    println!("{what}: {} elements OK, max error {max_err:e}", got.len());
}

fn assert_shape_err<T: std::fmt::Debug>(what: &str, r: alexnet::Result<T>) {
    match r {
        Err(Error::Shape { .. }) => {}
        other => panic!("{what}: expected Error::Shape, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// shape grids
// ---------------------------------------------------------------------------------------------

/// Odd and non-square sizes, stride > 1, padding (also wider than a 1x1 kernel), groups = 2,
/// batches that split evenly and unevenly over threads, one image, and AlexNet-like layers
/// (conv5's kernel and channels per group, K = 1728, at 13x13 on 2 images; conv2's 5x5 pad 2
/// groups 2) that are still cheap for the f64 reference.
pub fn conv_shapes() -> Vec<ConvShape> {
    let c = |n, c_in, h, w, c_out, kh, kw, stride, pad, groups| ConvShape {
        n,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        stride,
        pad,
        groups,
    };
    vec![
        c(2, 3, 7, 5, 4, 3, 3, 1, 1, 1),
        c(2, 4, 9, 7, 6, 3, 2, 2, 1, 2),
        c(3, 6, 11, 13, 4, 5, 5, 3, 2, 2),
        c(3, 5, 8, 9, 7, 3, 3, 1, 0, 1),
        c(1, 3, 23, 23, 8, 11, 11, 4, 0, 1),
        c(1, 4, 9, 9, 6, 3, 3, 1, 1, 2),
        c(2, 2, 4, 5, 3, 1, 1, 2, 1, 1),
        // stride 1 with output width = input width (the "same" convolutions' copy path): a
        // kernel larger than the image, and a non-square kernel whose output is taller than H
        c(1, 2, 3, 4, 2, 5, 5, 1, 2, 1),
        c(2, 3, 5, 6, 4, 3, 5, 1, 2, 1),
        c(2, 384, 13, 13, 64, 3, 3, 1, 1, 2),
        // conv2's kind (5x5 pad 2, groups 2) on a map of 4 x 4 Winograd 3x3 tiles and 3 images
        // (an odd run of units per thread), and 3x3 convolutions on batches the CPU engine
        // computes with Winograd tiles (4 and 5 images, grouped, odd maps)
        c(3, 32, 12, 12, 16, 5, 5, 1, 2, 2),
        c(4, 24, 9, 11, 16, 3, 3, 1, 1, 2),
        c(5, 8, 13, 13, 12, 3, 3, 1, 0, 1),
        // the cifar10 net's 5x5 pad 2 layers: maps 32, 15 and 7, whose last Winograd 3x3 tiles
        // hang over the edge (32 = 10 * 3 + 2)
        c(3, 3, 32, 32, 32, 5, 5, 1, 2, 1),
        c(3, 32, 15, 15, 32, 5, 5, 1, 2, 1),
        c(4, 32, 7, 7, 64, 5, 5, 1, 2, 1),
    ]
}

pub fn ref_conv(s: &ConvShape) -> reference::Conv2d {
    reference::Conv2d {
        n: s.n,
        c_in: s.c_in,
        h: s.h,
        w: s.w,
        c_out: s.c_out,
        kh: s.kh,
        kw: s.kw,
        stride: s.stride,
        pad: s.pad,
        groups: s.groups,
    }
}

/// Random conv inputs: x in [-1, 1), w with variance 1/K (so y is O(1)), b in [-1, 1).
pub fn conv_inputs(s: &ConvShape, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let k = (s.c_in / s.groups * s.kh * s.kw) as f64;
    let x = uniform(&mut rng, s.x_len(), 1.0);
    let w = uniform(&mut rng, s.w_len(), (3.0 / k).sqrt());
    let b = uniform(&mut rng, s.c_out, 1.0);
    (x, w, b)
}

pub fn fc_shapes() -> Vec<FcShape> {
    let f = |n, d_in, d_out| FcShape { n, d_in, d_out };
    // tiny; one image with enough outputs to split; uneven; an fc7/fc8-like K = 4096
    vec![f(3, 7, 5), f(1, 37, 65), f(5, 300, 130), f(8, 4096, 250)]
}

pub fn lrn_cases() -> Vec<(LrnShape, LrnParams, f64)> {
    let s = |n, c, h, w, groups| LrnShape { n, c, h, w, groups };
    let p = |size, alpha, beta, k, alpha_over_n| LrnParams {
        size,
        alpha,
        beta,
        k,
        alpha_over_n,
    };
    // (shape, params, input amplitude): amplitudes large enough that alpha' * sum x^2 is not
    // negligible next to k, or the normalisation would barely be tested.
    vec![
        (s(2, 7, 5, 3, 1), LrnParams::PAPER, 60.0),
        (s(2, 12, 4, 5, 2), p(5, 2.0, 0.75, 1.0, true), 1.5),
        (s(3, 8, 3, 3, 2), p(3, 0.3, 0.6, 1.5, false), 1.5),
        (s(1, 6, 7, 7, 1), p(7, 0.2, 0.75, 1.0, false), 1.5),
        (s(2, 6, 5, 5, 3), p(4, 0.5, 0.9, 2.0, false), 1.5),
        // LRN2-like: 256 channels in two columns, the paper's constants, 13x13
        (s(2, 256, 13, 13, 2), LrnParams::PAPER, 60.0),
        // Channel counts off power-of-two tiles (a kernel that tiles channels by 32 gets a
        // column boundary, 35, inside a tile) and a 9-wide window.
        (s(2, 70, 6, 7, 2), LrnParams::PAPER, 60.0),
        (s(1, 40, 5, 9, 1), p(9, 0.1, 0.75, 1.0, false), 1.5),
    ]
}

pub fn ref_lrn(s: &LrnShape, p: &LrnParams) -> reference::Lrn {
    reference::Lrn {
        n: s.n,
        c: s.c,
        h: s.h,
        w: s.w,
        groups: s.groups,
        size: p.size,
        alpha: p.alpha as f64,
        beta: p.beta as f64,
        k: p.k as f64,
        alpha_over_n: p.alpha_over_n,
    }
}

pub fn pool_shapes() -> Vec<PoolShape> {
    let p = |n, c, h, w, size, stride| PoolShape {
        n,
        c,
        h,
        w,
        size,
        stride,
    };
    // overlapping 3/2 (AlexNet's), a dropped last partial window, non-overlapping, stride 1,
    // pool5-like 13 -> 6
    vec![
        p(2, 3, 7, 5, 3, 2),
        p(1, 2, 8, 8, 3, 2),
        p(1, 2, 8, 8, 2, 2),
        p(2, 3, 9, 11, 3, 1),
        p(3, 16, 13, 13, 3, 2),
    ]
}

fn ref_pool(s: &PoolShape) -> reference::Pool {
    reference::Pool {
        n: s.n,
        c: s.c,
        h: s.h,
        w: s.w,
        size: s.size,
        stride: s.stride,
    }
}

// ---------------------------------------------------------------------------------------------
// convolution
// ---------------------------------------------------------------------------------------------

pub fn conv_forward<E: Engine>(e: &E, tol: Tol) {
    for (i, s) in conv_shapes().iter().enumerate() {
        let (x, w, b) = conv_inputs(s, 100 + i as u64);
        let mut y = poisoned(e, s.y_len());
        e.conv_forward(s, &upload(e, &x), &upload(e, &w), &upload(e, &b), &mut y)
            .expect("conv_forward");
        let want = reference::conv2d_forward(&ref_conv(s), &widen(&x), &widen(&w), &widen(&b));
        assert_close(&format!("conv_forward {s:?}"), &download(e, &y), &want, tol);
    }
}

pub fn conv_backward_data<E: Engine>(e: &E, tol: Tol) {
    for (i, s) in conv_shapes().iter().enumerate() {
        let (x, w, _) = conv_inputs(s, 200 + i as u64);
        let dy = uniform(&mut Rng::new(300 + i as u64), s.y_len(), 1.0);
        let mut dx = poisoned(e, s.x_len());
        e.conv_backward_data(s, &upload(e, &dy), &upload(e, &w), &mut dx)
            .expect("conv_backward_data");
        let (want, _, _) =
            reference::conv2d_backward(&ref_conv(s), &widen(&x), &widen(&w), &widen(&dy));
        assert_close(
            &format!("conv_backward_data {s:?}"),
            &download(e, &dx),
            &want,
            tol,
        );
    }
}

/// Also runs each shape twice on the same engine, re-poisoned: the weight gradient is
/// overwritten, never accumulated across calls (nor through reused scratch memory).
pub fn conv_backward_weights<E: Engine>(e: &E, tol: Tol) {
    for (i, s) in conv_shapes().iter().enumerate() {
        let (x, w, _) = conv_inputs(s, 400 + i as u64);
        // dy with variance 1/(N*Ho*Wo): dw and db sum that many terms, so they come out O(1).
        let terms = (s.n * s.h_out() * s.w_out()) as f64;
        let dy = uniform(
            &mut Rng::new(500 + i as u64),
            s.y_len(),
            (3.0 / terms).sqrt(),
        );
        let (_, want_dw, want_db) =
            reference::conv2d_backward(&ref_conv(s), &widen(&x), &widen(&w), &widen(&dy));
        let (xb, dyb) = (upload(e, &x), upload(e, &dy));
        for round in 0..2 {
            let (mut dw, mut db) = (poisoned(e, s.w_len()), poisoned(e, s.c_out));
            e.conv_backward_weights(s, &xb, &dyb, &mut dw, &mut db)
                .expect("conv_backward_weights");
            let what = format!("conv_backward_weights (call {round}) {s:?}");
            assert_close(&format!("{what} dw"), &download(e, &dw), &want_dw, tol);
            assert_close(&format!("{what} db"), &download(e, &db), &want_db, tol);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// fully connected
// ---------------------------------------------------------------------------------------------

pub fn fc_forward<E: Engine>(e: &E, tol: Tol) {
    for (i, s) in fc_shapes().iter().enumerate() {
        let mut rng = Rng::new(600 + i as u64);
        let x = uniform(&mut rng, s.n * s.d_in, 1.0);
        let w = uniform(&mut rng, s.d_out * s.d_in, (3.0 / s.d_in as f64).sqrt());
        let b = uniform(&mut rng, s.d_out, 1.0);
        let mut y = poisoned(e, s.n * s.d_out);
        e.fc_forward(s, &upload(e, &x), &upload(e, &w), &upload(e, &b), &mut y)
            .expect("fc_forward");
        let rs = reference::Fc {
            n: s.n,
            d_in: s.d_in,
            d_out: s.d_out,
        };
        let want = reference::fc_forward(&rs, &widen(&x), &widen(&w), &widen(&b));
        assert_close(&format!("fc_forward {s:?}"), &download(e, &y), &want, tol);
    }
}

/// dx, dw, db against the reference; then again without dx (the first layer's case), which
/// must leave dw and db the same.
pub fn fc_backward<E: Engine>(e: &E, tol: Tol) {
    for (i, s) in fc_shapes().iter().enumerate() {
        let mut rng = Rng::new(700 + i as u64);
        let x = uniform(&mut rng, s.n * s.d_in, 1.0);
        let w = uniform(&mut rng, s.d_out * s.d_in, (3.0 / s.d_out as f64).sqrt());
        // dy with variance 1/N: dw = dy^T x sums N terms.
        let dy = uniform(&mut rng, s.n * s.d_out, (3.0 / s.n as f64).sqrt());
        let rs = reference::Fc {
            n: s.n,
            d_in: s.d_in,
            d_out: s.d_out,
        };
        let (want_dx, want_dw, want_db) =
            reference::fc_backward(&rs, &widen(&x), &widen(&w), &widen(&dy));
        let (xb, wb, dyb) = (upload(e, &x), upload(e, &w), upload(e, &dy));
        let mut dx = poisoned(e, s.n * s.d_in);
        let (mut dw, mut db) = (poisoned(e, s.d_out * s.d_in), poisoned(e, s.d_out));
        e.fc_backward(s, &xb, &wb, &dyb, Some(&mut dx), &mut dw, &mut db)
            .expect("fc_backward");
        assert_close(
            &format!("fc_backward dx {s:?}"),
            &download(e, &dx),
            &want_dx,
            tol,
        );
        assert_close(
            &format!("fc_backward dw {s:?}"),
            &download(e, &dw),
            &want_dw,
            tol,
        );
        assert_close(
            &format!("fc_backward db {s:?}"),
            &download(e, &db),
            &want_db,
            tol,
        );
        let (mut dw, mut db) = (poisoned(e, s.d_out * s.d_in), poisoned(e, s.d_out));
        e.fc_backward(s, &xb, &wb, &dyb, None, &mut dw, &mut db)
            .expect("fc_backward without dx");
        assert_close(
            &format!("fc_backward (no dx) dw {s:?}"),
            &download(e, &dw),
            &want_dw,
            tol,
        );
        assert_close(
            &format!("fc_backward (no dx) db {s:?}"),
            &download(e, &db),
            &want_db,
            tol,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// local response normalisation
// ---------------------------------------------------------------------------------------------

/// Forward output and the kept `scale` (k + alpha' * window sum of squares), checked against
/// the reference's formula.
pub fn lrn_forward<E: Engine>(e: &E, tol: Tol) {
    for (i, (s, p, amp)) in lrn_cases().into_iter().enumerate() {
        let x = uniform(&mut Rng::new(800 + i as u64), s.len(), amp);
        let (mut y, mut scale) = (poisoned(e, s.len()), poisoned(e, s.len()));
        e.lrn_forward(&s, &p, &upload(e, &x), &mut y, &mut scale)
            .expect("lrn_forward");
        let rs = ref_lrn(&s, &p);
        let xd = widen(&x);
        let want = reference::lrn_forward(&rs, &xd);
        assert_close(
            &format!("lrn_forward y {s:?} {p:?}"),
            &download(e, &y),
            &want,
            tol,
        );
        // The reference keeps no scale; recompute it from the reference's own window.
        let hw = s.h * s.w;
        let want_scale: Vec<f64> = (0..s.len())
            .map(|idx| {
                let (img, c, px) = (idx / (s.c * hw), (idx / hw) % s.c, idx % hw);
                let (j0, j1) = rs.window(c);
                let sum: f64 = (j0..=j1)
                    .map(|j| xd[(img * s.c + j) * hw + px].powi(2))
                    .sum();
                rs.k + rs.effective_alpha() * sum
            })
            .collect();
        assert_close(
            &format!("lrn_forward scale {s:?}"),
            &download(e, &scale),
            &want_scale,
            tol,
        );
    }
}

/// Backward from the engine's own forward (y, scale), as the model uses it.
pub fn lrn_backward<E: Engine>(e: &E, tol: Tol) {
    for (i, (s, p, amp)) in lrn_cases().into_iter().enumerate() {
        let mut rng = Rng::new(900 + i as u64);
        let x = uniform(&mut rng, s.len(), amp);
        let dy = uniform(&mut rng, s.len(), 1.0);
        let xb = upload(e, &x);
        let (mut y, mut scale) = (poisoned(e, s.len()), poisoned(e, s.len()));
        e.lrn_forward(&s, &p, &xb, &mut y, &mut scale)
            .expect("lrn_forward");
        let mut dx = poisoned(e, s.len());
        e.lrn_backward(&s, &p, &xb, &y, &scale, &upload(e, &dy), &mut dx)
            .expect("lrn_backward");
        let want = reference::lrn_backward(&ref_lrn(&s, &p), &widen(&x), &widen(&dy));
        assert_close(
            &format!("lrn_backward {s:?} {p:?}"),
            &download(e, &dx),
            &want,
            tol,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// max pooling
// ---------------------------------------------------------------------------------------------

/// Inputs on a coarse grid (multiples of 1/4 in [-1, 1]), so windows hold ties and the
/// first-maximum rule is exercised, plus the same shapes on continuous inputs.
pub fn maxpool<E: Engine>(e: &E, fwd: Tol, bwd: Tol) {
    for (i, s) in pool_shapes().iter().enumerate() {
        for ties in [true, false] {
            let mut rng = Rng::new(1000 + i as u64);
            let mut x = uniform(&mut rng, s.x_len(), 1.0);
            if ties {
                x.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0);
            }
            let dy = uniform(&mut rng, s.y_len(), 1.0);
            let xb = upload(e, &x);
            let mut y = poisoned(e, s.y_len());
            e.maxpool_forward(s, &xb, &mut y).expect("maxpool_forward");
            let rs = ref_pool(s);
            let want_y = reference::maxpool_forward(&rs, &widen(&x));
            let what = format!("maxpool (ties {ties}) {s:?}");
            assert_close(&format!("{what} forward"), &download(e, &y), &want_y, fwd);
            let mut dx = poisoned(e, s.x_len());
            e.maxpool_backward(s, &xb, &y, &upload(e, &dy), &mut dx)
                .expect("maxpool_backward");
            let want_dx = reference::maxpool_backward(&rs, &widen(&x), &widen(&dy));
            assert_close(
                &format!("{what} backward"),
                &download(e, &dx),
                &want_dx,
                bwd,
            );
        }
    }
}

/// Average pooling on the same shapes as max pooling (overlapping, a dropped partial window,
/// non-overlapping, stride 1), forward and backward against the oracle.
pub fn avgpool<E: Engine>(e: &E, tol: Tol) {
    for (i, s) in pool_shapes().iter().enumerate() {
        let mut rng = Rng::new(1050 + i as u64);
        let x = uniform(&mut rng, s.x_len(), 1.0);
        let dy = uniform(&mut rng, s.y_len(), 1.0);
        let mut y = poisoned(e, s.y_len());
        e.avgpool_forward(s, &upload(e, &x), &mut y)
            .expect("avgpool_forward");
        let rs = ref_pool(s);
        let want_y = reference::avgpool_forward(&rs, &widen(&x));
        assert_close(
            &format!("avgpool forward {s:?}"),
            &download(e, &y),
            &want_y,
            tol,
        );
        let mut dx = poisoned(e, s.x_len());
        e.avgpool_backward(s, &upload(e, &dy), &mut dx)
            .expect("avgpool_backward");
        let want_dx = reference::avgpool_backward(&rs, s.x_len(), &widen(&dy));
        assert_close(
            &format!("avgpool backward {s:?}"),
            &download(e, &dx),
            &want_dx,
            tol,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// pointwise, dropout, loss, optimiser
// ---------------------------------------------------------------------------------------------

/// Lengths below and above any chunking an engine might do.
const POINTWISE_LENS: [usize; 3] = [1, 1000, 200_003];

pub fn relu<E: Engine>(e: &E, tol: Tol) {
    for (i, &len) in POINTWISE_LENS.iter().enumerate() {
        let mut rng = Rng::new(1100 + i as u64);
        let x = uniform(&mut rng, len, 1.0);
        let dy = uniform(&mut rng, len, 1.0);
        let mut yb = upload(e, &x);
        e.relu_forward(&mut yb).expect("relu_forward");
        let y = download(e, &yb);
        assert_close(
            "relu_forward",
            &y,
            &reference::relu_forward(&widen(&x)),
            tol,
        );
        let mut dyb = upload(e, &dy);
        e.relu_backward(&yb, &mut dyb).expect("relu_backward");
        let want = reference::relu_backward(&widen(&x), &widen(&dy));
        assert_close("relu_backward", &download(e, &dyb), &want, tol);
    }
}

pub fn tanh<E: Engine>(e: &E, tol: Tol) {
    for (i, &len) in POINTWISE_LENS.iter().enumerate() {
        let mut rng = Rng::new(1200 + i as u64);
        let x = uniform(&mut rng, len, 3.0);
        let dy = uniform(&mut rng, len, 1.0);
        let mut yb = upload(e, &x);
        e.tanh_forward(&mut yb).expect("tanh_forward");
        let y = download(e, &yb);
        assert_close(
            "tanh_forward",
            &y,
            &reference::tanh_forward(&widen(&x)),
            tol,
        );
        let mut dyb = upload(e, &dy);
        e.tanh_backward(&yb, &mut dyb).expect("tanh_backward");
        // The backward's input is the engine's y, so the reference is fed the same y.
        let want = reference::tanh_backward(&widen(&y), &widen(&dy));
        assert_close("tanh_backward", &download(e, &dyb), &want, tol);
    }
}

/// The mask must be `dropout_keep(seed, index, p)` element by element (bit-identical across
/// engines), the same in forward and backward, and keep about 1-p of the elements.
pub fn dropout<E: Engine>(e: &E, tol: Tol) {
    for (i, &len) in POINTWISE_LENS.iter().enumerate() {
        for (p, keep_scale) in [(0.5f32, 1.0f32), (0.5, 2.0), (0.2, 1.25)] {
            let seed = 1300 + i as u64;
            let mut rng = Rng::new(seed);
            let x = uniform(&mut rng, len, 1.0);
            let dy = uniform(&mut rng, len, 1.0);
            let keep: Vec<bool> = (0..len).map(|j| dropout_keep(seed, j as u64, p)).collect();
            let mask = MaskSlice::whole(seed, len);
            let mut xb = upload(e, &x);
            e.dropout_forward(&mut xb, p, keep_scale, &mask)
                .expect("dropout_forward");
            let want = reference::dropout_forward(&widen(&x), &keep, keep_scale as f64);
            assert_close("dropout_forward", &download(e, &xb), &want, tol);
            let mut dyb = upload(e, &dy);
            e.dropout_backward(&mut dyb, p, keep_scale, &mask)
                .expect("dropout_backward");
            let want = reference::dropout_backward(&widen(&dy), &keep, keep_scale as f64);
            assert_close("dropout_backward", &download(e, &dyb), &want, tol);
            if len > 100_000 {
                let kept = keep.iter().filter(|&&k| k).count() as f64 / len as f64;
                assert!(
                    (kept - (1.0 - p as f64)).abs() < 0.01,
                    "kept fraction {kept}"
                );
            }
        }
    }
}

/// A column's slice of a layer's mask: 3 images x units 7..12 of a 16-unit layer must be kept
/// or dropped exactly as those units are in the whole layer's mask (model parallelism), and a
/// replica's later images as those images are (data parallelism).
pub fn dropout_slice<E: Engine>(e: &E) {
    let (images, total, offset, width, seed, p) = (3, 16, 7, 5, 1350u64, 0.5f32);
    let whole = MaskSlice::whole(seed, total);
    let slice = MaskSlice {
        seed,
        width,
        total,
        offset,
        first_image: 0,
    };
    let mut all = e.alloc(images * total).expect("alloc");
    e.fill(&mut all, 1.0).expect("fill");
    e.dropout_forward(&mut all, p, 1.0, &whole).expect("whole");
    let mut part = e.alloc(images * width).expect("alloc");
    e.fill(&mut part, 1.0).expect("fill");
    e.dropout_forward(&mut part, p, 1.0, &slice).expect("slice");
    let (all, part) = (download(e, &all), download(e, &part));
    for n in 0..images {
        assert_eq!(
            part[n * width..(n + 1) * width],
            all[n * total + offset..n * total + offset + width],
            "image {n}"
        );
    }
    // A data-parallel replica holding images 1..3 of the global batch (and the same units)
    // draws those images' masks.
    let replica = MaskSlice {
        first_image: 1,
        ..slice
    };
    let mut late = e.alloc((images - 1) * width).expect("alloc");
    e.fill(&mut late, 1.0).expect("fill");
    e.dropout_forward(&mut late, p, 1.0, &replica)
        .expect("replica");
    let late = download(e, &late);
    for n in 1..images {
        assert_eq!(
            late[(n - 1) * width..n * width],
            all[n * total + offset..n * total + offset + width],
            "replica image {n}"
        );
    }
    // A slice that does not tile the buffer is a shape error, not a wrong mask.
    let mut odd = e.alloc(images * width + 1).expect("alloc");
    assert_shape_err("dropout slice", e.dropout_forward(&mut odd, p, 1.0, &slice));
}

/// Softmax, the mean cross-entropy and its gradient, with logits spread wide enough that some
/// probabilities underflow f32 (the loss must still be finite and right).
pub fn softmax_xent<E: Engine>(e: &E, tol: Tol) {
    for (i, &(n, classes, spread)) in [(1, 3, 1.0), (5, 10, 8.0), (7, 1000, 60.0)]
        .iter()
        .enumerate()
    {
        let mut rng = Rng::new(1400 + i as u64);
        let logits = uniform(&mut rng, n * classes, spread);
        let labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
        let labels_us: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        let lb = upload(e, &logits);
        let (mut probs, mut dlogits) = (poisoned(e, n * classes), poisoned(e, n * classes));
        let loss = e
            .softmax_xent(n, classes, &lb, &labels, &mut probs, &mut dlogits)
            .expect("softmax_xent");
        let (want_loss, want_probs) =
            reference::softmax_xent_forward(n, classes, &widen(&logits), &labels_us);
        let want_d = reference::softmax_xent_backward(n, classes, &want_probs, &labels_us);
        let what = format!("softmax_xent n={n} classes={classes}");
        assert_close(&format!("{what} loss"), &[loss], &[want_loss], tol);
        assert_close(
            &format!("{what} probs"),
            &download(e, &probs),
            &want_probs,
            tol,
        );
        assert_close(
            &format!("{what} dlogits"),
            &download(e, &dlogits),
            &want_d,
            tol,
        );
        let mut probs = poisoned(e, n * classes);
        e.softmax(n, classes, &lb, &mut probs).expect("softmax");
        let want = reference::softmax(n, classes, &widen(&logits));
        assert_close(&format!("softmax n={n}"), &download(e, &probs), &want, tol);
    }
}

pub fn sgd_update<E: Engine>(e: &E, tol: Tol) {
    for (i, &len) in POINTWISE_LENS.iter().enumerate() {
        let mut rng = Rng::new(1500 + i as u64);
        let w = uniform(&mut rng, len, 1.0);
        let dw = uniform(&mut rng, len, 1.0);
        let v = uniform(&mut rng, len, 0.1);
        let (lr, momentum, wd) = (0.01f32, 0.9f32, 0.0005f32);
        let (mut wb, mut vb) = (upload(e, &w), upload(e, &v));
        e.sgd_update(&mut wb, &upload(e, &dw), &mut vb, lr, momentum, wd)
            .expect("sgd_update");
        let (mut want_w, mut want_v) = (widen(&w), widen(&v));
        reference::sgd_update(
            &mut want_w,
            &widen(&dw),
            &mut want_v,
            lr as f64,
            momentum as f64,
            wd as f64,
        );
        assert_close("sgd_update v", &download(e, &vb), &want_v, tol);
        assert_close("sgd_update w", &download(e, &wb), &want_w, tol);
    }
}

/// LARS's norms: the sum of squares in f64 of lengths around the CUDA engine's block counts
/// (one value, part of one block, many blocks, past its 1024-block cap) against a compensated
/// (Kahan) sum here, exact to a few f64 roundings. Each square of an f32 is exact in f64, so only
/// the engine's additions err: the CUDA engine's are ~12 per thread, 8 in the block's tree and
/// 1024 over the blocks, under 1100 x 2^-53 = 1.2e-13 relative for positive terms; the CPU
/// engine's 3M in sequence err as a random walk, ~sqrt(3M) x 2^-53 = 2e-13. Tolerance 1e-12.
/// The same buffer gives the same bits.
pub fn sum_of_squares<E: Engine>(e: &E) {
    for (i, &len) in [0usize, 1, 255, 257, 70_001, 1 << 20, (1 << 20) * 3 + 5]
        .iter()
        .enumerate()
    {
        let v = uniform(&mut Rng::new(1700 + i as u64), len, 3.0);
        let buf = upload(e, &v);
        let (mut want, mut carry) = (0f64, 0f64);
        for &x in &v {
            let y = x as f64 * x as f64 - carry;
            let t = want + y;
            carry = (t - want) - y;
            want = t;
        }
        let got = e.sum_of_squares(&buf).expect("sum_of_squares");
        assert!(
            (got - want).abs() <= 1e-12 * want,
            "sum_of_squares of {len}: {got} vs {want}"
        );
        assert_eq!(got.to_bits(), e.sum_of_squares(&buf).unwrap().to_bits());
    }
}

/// upload/download/copy/fill/scale round trips.
pub fn memory_ops<E: Engine>(e: &E) {
    let v = uniform(&mut Rng::new(1600), 70_001, 1.0);
    let a = upload(e, &v);
    assert_eq!(e.buf_len(&a), v.len());
    assert_eq!(download(e, &a), v);
    let mut b = poisoned(e, v.len());
    e.copy(&mut b, &a).expect("copy");
    assert_eq!(download(e, &b), v);
    e.scale(&mut b, -0.5).expect("scale");
    let want: Vec<f32> = v.iter().map(|&x| x * -0.5).collect();
    assert_eq!(download(e, &b), want);
    e.fill(&mut b, 3.25).expect("fill");
    assert!(download(e, &b).iter().all(|&x| x == 3.25));
    let z = e.alloc(17).expect("alloc");
    assert_eq!(download(e, &z), vec![0.0; 17]);
    let mut sum = upload(e, &v);
    e.add(&mut sum, &a).expect("add");
    let want: Vec<f32> = v.iter().map(|&x| x + x).collect();
    assert_eq!(download(e, &sum), want);
    e.synchronize().expect("synchronize");
}

/// Strided block copies (the columns' gathers): 3 blocks of 4 floats from stride 5 at offset 1
/// into stride 9 at offset 2 (the last block ends at 24 of 25); everything outside the blocks
/// keeps its old value, and one more float of offset is out of bounds.
pub fn copy_blocks<E: Engine>(e: &E, src_engine: &E) {
    let src: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let src_buf = upload(src_engine, &src);
    let mut dst_buf = upload(e, &[-1.0; 25]);
    let b = Blocks {
        count: 3,
        len: 4,
        src_offset: 1,
        src_stride: 5,
        dst_offset: 2,
        dst_stride: 9,
    };
    e.copy_blocks_from(&mut dst_buf, src_engine, &src_buf, &b)
        .expect("copy_blocks_from");
    let mut want = vec![-1.0f32; 25];
    for i in 0..3 {
        for j in 0..4 {
            want[2 + 9 * i + j] = src[1 + 5 * i + j];
        }
    }
    assert_eq!(download(e, &dst_buf), want);
    let too_far = Blocks { dst_offset: 4, ..b };
    assert_shape_err(
        "copy_blocks_from",
        e.copy_blocks_from(&mut dst_buf, src_engine, &src_buf, &too_far),
    );
}

// ---------------------------------------------------------------------------------------------
// error paths
// ---------------------------------------------------------------------------------------------

/// The small grouped, padded convolution the error-path checks use (here and in cuda_ops.rs).
pub const ERROR_CASE_CONV: ConvShape = ConvShape {
    n: 2,
    c_in: 4,
    h: 6,
    w: 5,
    c_out: 6,
    kh: 3,
    kw: 3,
    stride: 1,
    pad: 1,
    groups: 2,
};

/// Every op rejects a buffer of the wrong length (one element short) with `Error::Shape`, and
/// convolution rejects impossible geometry, instead of reading out of bounds or panicking.
pub fn shape_errors<E: Engine>(e: &E) {
    let buf = |len: usize| e.alloc(len).expect("alloc");
    let s = ERROR_CASE_CONV;
    let (x, w, b, y) = (buf(s.x_len()), buf(s.w_len()), buf(s.c_out), buf(s.y_len()));
    let (xs, ws, bs, ys) = (
        buf(s.x_len() - 1),
        buf(s.w_len() - 1),
        buf(5),
        buf(s.y_len() - 1),
    );
    assert_shape_err(
        "conv_forward x",
        e.conv_forward(&s, &xs, &w, &b, &mut buf(s.y_len())),
    );
    assert_shape_err(
        "conv_forward w",
        e.conv_forward(&s, &x, &ws, &b, &mut buf(s.y_len())),
    );
    assert_shape_err(
        "conv_forward b",
        e.conv_forward(&s, &x, &w, &bs, &mut buf(s.y_len())),
    );
    assert_shape_err(
        "conv_forward y",
        e.conv_forward(&s, &x, &w, &b, &mut buf(s.y_len() - 1)),
    );
    assert_shape_err(
        "conv_bwd_data dy",
        e.conv_backward_data(&s, &ys, &w, &mut buf(s.x_len())),
    );
    assert_shape_err(
        "conv_bwd_data w",
        e.conv_backward_data(&s, &y, &ws, &mut buf(s.x_len())),
    );
    assert_shape_err(
        "conv_bwd_data dx",
        e.conv_backward_data(&s, &y, &w, &mut buf(1)),
    );
    let (mut dw, mut db) = (buf(s.w_len()), buf(s.c_out));
    assert_shape_err(
        "conv_bwd_w x",
        e.conv_backward_weights(&s, &xs, &y, &mut dw, &mut db),
    );
    assert_shape_err(
        "conv_bwd_w dy",
        e.conv_backward_weights(&s, &x, &ys, &mut dw, &mut db),
    );
    assert_shape_err(
        "conv_bwd_w dw",
        e.conv_backward_weights(&s, &x, &y, &mut buf(3), &mut db),
    );
    assert_shape_err(
        "conv_bwd_w db",
        e.conv_backward_weights(&s, &x, &y, &mut dw, &mut buf(2)),
    );
    let bad_groups = ConvShape { groups: 3, ..s };
    assert_shape_err(
        "conv groups",
        e.conv_forward(&bad_groups, &x, &w, &b, &mut buf(s.y_len())),
    );
    let too_big = ConvShape { kh: 9, ..s };
    assert_shape_err(
        "conv kernel",
        e.conv_forward(&too_big, &x, &w, &b, &mut buf(s.y_len())),
    );

    assert_shape_err("relu_backward", e.relu_backward(&buf(4), &mut buf(5)));
    assert_shape_err("tanh_backward", e.tanh_backward(&buf(4), &mut buf(5)));
    assert_shape_err("upload", e.upload(&mut buf(4), &[0.0; 5]));
    assert_shape_err("download", e.download(&buf(4), &mut [0.0; 3]));
    assert_shape_err("copy", e.copy(&mut buf(4), &buf(5)));

    let l = LrnShape {
        n: 2,
        c: 6,
        h: 3,
        w: 3,
        groups: 2,
    };
    let p = LrnParams::PAPER;
    let (lx, mut ly, mut lsc) = (buf(l.len()), buf(l.len()), buf(l.len()));
    assert_shape_err(
        "lrn_forward x",
        e.lrn_forward(&l, &p, &buf(7), &mut ly, &mut lsc),
    );
    assert_shape_err(
        "lrn_forward scale",
        e.lrn_forward(&l, &p, &lx, &mut ly, &mut buf(7)),
    );
    let bad_cols = LrnShape { groups: 4, ..l };
    assert_shape_err(
        "lrn columns",
        e.lrn_forward(&bad_cols, &p, &lx, &mut ly, &mut lsc),
    );
    let full = buf(l.len());
    assert_shape_err(
        "lrn_backward dy",
        e.lrn_backward(&l, &p, &lx, &full, &full, &buf(7), &mut buf(l.len())),
    );
    assert_shape_err(
        "lrn_backward dx",
        e.lrn_backward(&l, &p, &lx, &full, &full, &full, &mut buf(7)),
    );

    let ps = PoolShape {
        n: 1,
        c: 2,
        h: 7,
        w: 7,
        size: 3,
        stride: 2,
    };
    let (px, py) = (buf(ps.x_len()), buf(ps.y_len()));
    assert_shape_err("maxpool_forward", e.maxpool_forward(&ps, &px, &mut buf(3)));
    assert_shape_err(
        "maxpool_backward",
        e.maxpool_backward(&ps, &px, &py, &buf(3), &mut buf(ps.x_len())),
    );
    let too_small = PoolShape { h: 2, ..ps };
    assert_shape_err(
        "maxpool window",
        e.maxpool_forward(&too_small, &buf(28), &mut buf(1)),
    );
    assert_shape_err("avgpool_forward", e.avgpool_forward(&ps, &px, &mut buf(3)));
    assert_shape_err(
        "avgpool_backward dy",
        e.avgpool_backward(&ps, &buf(3), &mut buf(ps.x_len())),
    );
    assert_shape_err(
        "avgpool_backward dx",
        e.avgpool_backward(&ps, &py, &mut buf(3)),
    );
    assert_shape_err(
        "avgpool window",
        e.avgpool_forward(&too_small, &buf(28), &mut buf(1)),
    );

    let f = FcShape {
        n: 2,
        d_in: 5,
        d_out: 3,
    };
    let (fx, fw, fb) = (buf(10), buf(15), buf(3));
    assert_shape_err(
        "fc_forward w",
        e.fc_forward(&f, &fx, &buf(14), &fb, &mut buf(6)),
    );
    assert_shape_err("fc_forward y", e.fc_forward(&f, &fx, &fw, &fb, &mut buf(5)));
    assert_shape_err(
        "fc_backward dx",
        e.fc_backward(
            &f,
            &fx,
            &fw,
            &buf(6),
            Some(&mut buf(9)),
            &mut buf(15),
            &mut buf(3),
        ),
    );
    assert_shape_err(
        "fc_backward dw",
        e.fc_backward(&f, &fx, &fw, &buf(6), None, &mut buf(14), &mut buf(3)),
    );

    let logits = buf(6);
    assert_shape_err(
        "softmax_xent labels",
        e.softmax_xent(2, 3, &logits, &[0], &mut buf(6), &mut buf(6)),
    );
    assert_shape_err(
        "softmax_xent label range",
        e.softmax_xent(2, 3, &logits, &[0, 3], &mut buf(6), &mut buf(6)),
    );
    assert_shape_err("softmax probs", e.softmax(2, 3, &logits, &mut buf(5)));
    assert_shape_err(
        "sgd_update",
        e.sgd_update(&mut buf(4), &buf(3), &mut buf(4), 0.1, 0.9, 0.0),
    );
}
