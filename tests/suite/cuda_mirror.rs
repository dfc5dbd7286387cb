//! The CUDA engine's newer kernels checked on the CPU: `alexnet::engine::cuda_mirror` runs the
//! same index maps, loops and cuBLAS arguments as `csrc/conv.cu`'s whole-chunk convolution and
//! `csrc/layers.cu`'s per-pixel LRN, compared here with the f64 reference over the op suite's
//! shapes. Needs no GPU and no `cuda` feature; the kernels themselves are checked against the
//! same reference on a GPU in tests/cuda_ops.rs.

use crate::common::ops_suite::{self as suite, Tol};
use alexnet::engine::cuda_mirror::{self as mirror, bf16_round, LrnGeometry};
use alexnet::engine::{LrnParams, LrnShape};
use alexnet::rng::Rng;
use alexnet_reference as reference;

/// The mirror's GEMM sums exact f32 products in f64 and rounds once (2^-24 relative of the GEMM
/// result g), then the bias is added in f32 (2^-24 of y): |err| <= 2^-24 (|g| + |y|) with
/// |g| <= |y| + |b| and |b| < 1, so 2.5e-7 relative plus 2.5e-7 absolute holds every element.
const FORWARD: Tol = Tol {
    rel: 2.5e-7,
    abs: 2.5e-7,
};

/// Backward-data: each column entry is rounded to f32 once, then col2im adds up to 25 of them in
/// f32 (5x5 kernels at stride 1): f32 accumulation as in the engines, so the engines' GEMM bound
/// (tests/cuda_ops.rs: rel 1e-5, abs 5e-5 for O(1) outputs) applies; an index error is O(1).
const BACKWARD_DATA: Tol = Tol {
    rel: 1e-5,
    abs: 5e-5,
};

/// LRN: the same f32 arithmetic as the kernels (squares or dy*y/scale in f32, powf, products;
/// the window sum in f64), so the CUDA suite's LRN bound applies (tests/cuda_ops.rs).
const LRN: Tol = Tol {
    rel: 1e-5,
    abs: 1e-5,
};

/// Chunk sizes the engine may plan: one image, two (uneven against a batch of 3), the batch.
fn chunks(n: usize) -> Vec<usize> {
    let mut c = vec![1, 2, n];
    c.retain(|&k| k <= n);
    c.dedup();
    c
}

#[test]
fn whole_chunk_conv_forward_matches_the_reference() {
    for (i, s) in suite::conv_shapes().iter().enumerate() {
        let (x, w, b) = suite::conv_inputs(s, 100 + i as u64);
        let want = reference::conv2d_forward(
            &suite::ref_conv(s),
            &suite::widen(&x),
            &suite::widen(&w),
            &suite::widen(&b),
        );
        for chunk in chunks(s.n) {
            let got = mirror::conv_forward_whole_chunk(s, chunk, &x, &w, &b);
            suite::assert_close(&format!("{s:?} chunk {chunk}"), &got, &want, FORWARD);
        }
    }
}

#[test]
fn whole_chunk_conv_backward_data_matches_the_reference() {
    for (i, s) in suite::conv_shapes().iter().enumerate() {
        let (x, w, _) = suite::conv_inputs(s, 200 + i as u64);
        let dy = suite::uniform(&mut Rng::new(300 + i as u64), s.y_len(), 1.0);
        let (want, _, _) = reference::conv2d_backward(
            &suite::ref_conv(s),
            &suite::widen(&x),
            &suite::widen(&w),
            &suite::widen(&dy),
        );
        for chunk in chunks(s.n) {
            let got = mirror::conv_backward_data_whole_chunk(s, chunk, &dy, &w);
            suite::assert_close(&format!("{s:?} chunk {chunk}"), &got, &want, BACKWARD_DATA);
        }
    }
}

/// The two layout passes are each other's inverse (bias 0): every element lands where the other
/// pass picks it up, bit for bit.
#[test]
fn layout_passes_invert_each_other() {
    let (b, c, p) = (3, 5, 7);
    let y: Vec<f32> = (0..b * c * p).map(|i| i as f32).collect();
    let yt = mirror::images_inside_channels(&y, b, c, p);
    // yt[c][b][p] = y[b][c][p]
    assert_eq!(yt[(4 * b + 2) * p + 6], y[(2 * c + 4) * p + 6]);
    assert_eq!(
        mirror::channels_inside_images_bias(&yt, &[0.0; 5], b, c, p),
        y
    );
}

fn geometry(s: &LrnShape, p: &LrnParams) -> LrnGeometry {
    LrnGeometry {
        n: s.n,
        c: s.c,
        hw: s.h * s.w,
        groups: s.groups,
        size: p.size,
    }
}

/// The suite's LRN cases, plus one whose squares span 8 orders of magnitude along the channels
/// (1e2 next to 1e-2): a running f32 sum that subtracts the large squares as they leave would
/// keep their rounding (1e4 * 6e-8 = 6e-4) in the small windows' sums (5e-4); the kernels' f64
/// sum holds sums of f32 squares less than 2^29 apart exactly.
fn lrn_cases() -> Vec<(LrnShape, LrnParams, Vec<f32>)> {
    let mut cases: Vec<_> = suite::lrn_cases()
        .into_iter()
        .enumerate()
        .map(|(i, (s, p, amp))| {
            let x = suite::uniform(&mut Rng::new(800 + i as u64), s.len(), amp);
            (s, p, x)
        })
        .collect();
    let s = LrnShape {
        n: 1,
        c: 16,
        h: 2,
        w: 3,
        groups: 1,
    };
    let x = (0..s.len())
        .map(|i| if (i / 6) % 8 < 2 { 1e2 } else { 1e-2 })
        .collect();
    let p = LrnParams {
        k: 1e-4,
        alpha: 1.0,
        ..LrnParams::PAPER
    };
    cases.push((s, p, x));
    cases
}

#[test]
fn per_pixel_lrn_forward_matches_the_reference() {
    for (s, p, x) in lrn_cases() {
        let (y, _) =
            mirror::lrn_forward_by_pixel(&geometry(&s, &p), (p.effective_alpha(), p.beta, p.k), &x);
        let want = reference::lrn_forward(&suite::ref_lrn(&s, &p), &suite::widen(&x));
        suite::assert_close(&format!("lrn forward {s:?} {p:?}"), &y, &want, LRN);
    }
}

#[test]
fn per_pixel_lrn_backward_matches_the_reference() {
    for (i, (s, p, x)) in lrn_cases().into_iter().enumerate() {
        let dy = suite::uniform(&mut Rng::new(900 + i as u64), s.len(), 1.0);
        let g = geometry(&s, &p);
        let alpha = p.effective_alpha();
        let (y, scale) = mirror::lrn_forward_by_pixel(&g, (alpha, p.beta, p.k), &x);
        let dx = mirror::lrn_backward_by_pixel(&g, (alpha, p.beta), &x, &y, &scale, &dy);
        let want = reference::lrn_backward(
            &suite::ref_lrn(&s, &p),
            &suite::widen(&x),
            &suite::widen(&dy),
        );
        suite::assert_close(&format!("lrn backward {s:?} {p:?}"), &dx, &want, LRN);
    }
}

/// bf16 keeps the top 16 bits of an f32: 8 significant bits, rounded to nearest with ties to
/// even (as `__float2bfloat16_rn`): spacing 2^-7 in [1, 2), so the relative error is at most
/// half of it, 2^-8, for normal values.
#[test]
fn bf16_rounding_is_to_nearest_even() {
    let ulp = 2f32.powi(-7); // bf16's spacing in [1, 2)
    assert_eq!(bf16_round(1.0), 1.0);
    assert_eq!(bf16_round(1.0 + ulp), 1.0 + ulp);
    assert_eq!(
        bf16_round(1.0 + ulp / 2.0),
        1.0,
        "tie: down to the even 1.0"
    );
    assert_eq!(
        bf16_round(1.0 + 1.5 * ulp),
        1.0 + 2.0 * ulp,
        "tie: up to the even"
    );
    assert_eq!(bf16_round(1.0 + 0.51 * ulp), 1.0 + ulp);
    assert_eq!(bf16_round(-(1.0 + 0.49 * ulp)), -1.0);
    assert_eq!(bf16_round(f32::MAX), f32::INFINITY, "past the largest bf16");
    assert_eq!(bf16_round(f32::NEG_INFINITY), f32::NEG_INFINITY);
    assert!(bf16_round(f32::NAN).is_nan());
    assert_eq!(bf16_round(0.0).to_bits(), 0);
    assert_eq!(bf16_round(-0.0).to_bits(), (-0.0f32).to_bits());
    let mut rng = Rng::new(5);
    for x in suite::uniform(&mut rng, 10_000, 1e3) {
        let r = bf16_round(x);
        assert_eq!(r.to_bits() & 0xffff, 0, "{x}: not a bf16");
        assert!(
            ((r - x) / x).abs() <= 2f32.powi(-8),
            "{x} -> {r}: off by more than half a bf16 ulp"
        );
    }
}
