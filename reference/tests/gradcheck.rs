//! Every backward of the oracle against central differences of its own forward, on small shapes
//! chosen to hit the awkward cases: odd sizes, stride > 1, padding, groups = 2, batch > 1.
//!
//! The loss on top of a layer is `projection_loss(y, r)` with a fixed random r, so the layer's
//! backward called with `dy = r` must equal the numeric gradient. Tolerances: the checker's
//! defaults, derived in `gradcheck`'s module documentation (f64, h = 1e-5, relative 1e-6 with a
//! 1e-2 floor).

use alexnet_reference::gradcheck::{
    check, near_maxpool_tie, near_relu_kink, projection_loss, CheckReport, GradCheck,
};
use alexnet_reference::*;

/// Unwraps a check, naming what was checked when it fails, and insists something was compared.
fn expect_pass(what: &str, result: Result<CheckReport, String>) -> CheckReport {
    match result {
        Ok(report) => {
            assert!(report.checked > 0, "{what}: nothing checked");
            // shown with --nocapture: how far inside the tolerance each check lands
            println!(
                "{what}: OK, {} checked, {} skipped, worst relative error {:.1e} at {}",
                report.checked, report.skipped, report.worst_error, report.worst_index
            );
            report
        }
        Err(message) => panic!("{what}: {message}"),
    }
}

fn never(_: usize) -> bool {
    false
}

// ---- convolution ------------------------------------------------------------------------------

fn check_conv(s: Conv2d, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let cin_g = s.c_in / s.groups;
    let x = rng.vec(s.n * s.c_in * s.h * s.w);
    let w = rng.vec(s.c_out * cin_g * s.kh * s.kw);
    let b = rng.vec(s.c_out);
    let r = rng.vec(s.n * s.c_out * s.h_out() * s.w_out());
    let (dx, dw, db) = conv2d_backward(&s, &x, &w, &r);
    let cfg = GradCheck::default();

    expect_pass(
        &format!("conv dx {s:?}"),
        check(
            |x| projection_loss(&conv2d_forward(&s, x, &w, &b), &r),
            &x,
            &dx,
            never,
            &cfg,
        ),
    );
    expect_pass(
        &format!("conv dw {s:?}"),
        check(
            |w| projection_loss(&conv2d_forward(&s, &x, w, &b), &r),
            &w,
            &dw,
            never,
            &cfg,
        ),
    );
    expect_pass(
        &format!("conv db {s:?}"),
        check(
            |b| projection_loss(&conv2d_forward(&s, &x, &w, b), &r),
            &b,
            &db,
            never,
            &cfg,
        ),
    );
}

#[test]
fn conv_3x3_pad1_batch2_odd_image() {
    check_conv(
        Conv2d {
            n: 2,
            c_in: 3,
            h: 7,
            w: 5,
            c_out: 4,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
            groups: 1,
        },
        1,
    );
}

#[test]
fn conv_rectangular_kernel_stride2_groups2() {
    check_conv(
        Conv2d {
            n: 1,
            c_in: 4,
            h: 7,
            w: 5,
            c_out: 6,
            kh: 3,
            kw: 2,
            stride: 2,
            pad: 0,
            groups: 2,
        },
        2,
    );
}

#[test]
fn conv_5x5_stride3_pad2_groups2_batch2() {
    // stride 3 on 9 + 2*2 - 5 = 8 leaves a remainder (floor), and pad 2 puts whole kernel rows in
    // the padding at the edges
    check_conv(
        Conv2d {
            n: 2,
            c_in: 2,
            h: 9,
            w: 8,
            c_out: 4,
            kh: 5,
            kw: 5,
            stride: 3,
            pad: 2,
            groups: 2,
        },
        3,
    );
}

// ---- pointwise ---------------------------------------------------------------------------------

#[test]
fn relu_backward_matches_differences_away_from_the_kink() {
    let mut rng = SplitMix64::new(10);
    let mut x = rng.vec(2 * 3 * 7 * 5);
    // inputs right at the kink: the checker must skip these, not compare them
    x[0] = 3e-6;
    x[17] = -4e-6;
    x[41] = 0.0;
    let r = rng.vec(x.len());
    let cfg = GradCheck::default();
    let report = expect_pass(
        "relu",
        check(
            |x| projection_loss(&relu_forward(x), &r),
            &x,
            &relu_backward(&x, &r),
            near_relu_kink(&x, 10.0 * cfg.step),
            &cfg,
        ),
    );
    assert_eq!(report.skipped, 3, "exactly the three planted kinks");
}

#[test]
fn tanh_backward_matches_differences() {
    let mut rng = SplitMix64::new(11);
    // spread to +-3 so the saturating part of tanh is exercised too
    let x: Vec<f64> = rng.vec(3 * 5 * 7).iter().map(|v| 3.0 * v).collect();
    let r = rng.vec(x.len());
    let y = tanh_forward(&x);
    expect_pass(
        "tanh",
        check(
            |x| projection_loss(&tanh_forward(x), &r),
            &x,
            &tanh_backward(&y, &r),
            never,
            &GradCheck::default(),
        ),
    );
}

// ---- LRN ---------------------------------------------------------------------------------------

fn check_lrn(s: Lrn, seed: u64, x_scale: f64) {
    let mut rng = SplitMix64::new(seed);
    let x: Vec<f64> = rng
        .vec(s.n * s.c * s.h * s.w)
        .iter()
        .map(|v| x_scale * v)
        .collect();
    let r = rng.vec(x.len());
    expect_pass(
        &format!("lrn {s:?}"),
        check(
            |x| projection_loss(&lrn_forward(&s, x), &r),
            &x,
            &lrn_backward(&s, &x, &r),
            never,
            &GradCheck::default(),
        ),
    );
}

fn lrn(c: usize, groups: usize, size: usize, alpha: f64, k: f64, alpha_over_n: bool) -> Lrn {
    Lrn {
        n: 2,
        c,
        h: 3,
        w: 5,
        groups,
        size,
        alpha,
        beta: 0.75,
        k,
        alpha_over_n,
    }
}

#[test]
fn lrn_paper_constants_groups_1_and_2() {
    // the paper's k = 2, n = 5, alpha = 1e-4, beta = 0.75; inputs of magnitude up to 10 so the
    // cross-channel term (2 alpha beta a^2 / S ~ 1e-2 relative) is well above the tolerance
    for (groups, seed) in [(1, 20), (2, 21)] {
        check_lrn(lrn(10, groups, 5, 1e-4, 2.0, false), seed, 10.0);
    }
}

#[test]
fn lrn_alpha_over_n_groups_1_and_2() {
    // Caffe's convention (alpha / n); a large alpha makes the normalisation strongly non-linear
    for (groups, seed) in [(1, 22), (2, 23)] {
        check_lrn(lrn(8, groups, 5, 1.0, 1.0, true), seed, 2.0);
    }
}

#[test]
fn lrn_caffe_constants_across_all_maps() {
    // Caffe's bvlc_alexnet LRN: k = 1, alpha = 1e-4 divided by n = 5, beta = 0.75, one window
    // over all the maps of a two-column layer (groups 1 over 12 maps, as over conv1's 96); inputs
    // up to 20 so that the cross-channel term (2 alpha/n beta a^2 / S ~ 1e-2 relative) shows
    check_lrn(lrn(12, 1, 5, 1e-4, 1.0, true), 27, 20.0);
}

#[test]
fn lrn_strong_paper_convention_window_wider_than_column() {
    // columns of 3 channels with a 5-wide window: every window is clamped on at least one side
    for (groups, seed) in [(1, 24), (2, 25)] {
        check_lrn(lrn(6, groups, 5, 0.3, 1.0, false), seed, 1.0);
    }
    // a 3-wide window
    check_lrn(lrn(8, 2, 3, 0.5, 1.5, true), 26, 1.5);
}

// ---- max pooling -------------------------------------------------------------------------------

fn check_pool(s: Pool, seed: u64) -> CheckReport {
    let mut rng = SplitMix64::new(seed);
    let x = rng.vec(s.n * s.c * s.h * s.w);
    let r = rng.vec(s.n * s.c * s.h_out() * s.w_out());
    let cfg = GradCheck::default();
    expect_pass(
        &format!("maxpool {s:?}"),
        check(
            |x| projection_loss(&maxpool_forward(&s, x), &r),
            &x,
            &maxpool_backward(&s, &x, &r),
            near_maxpool_tie(&s, &x, 10.0 * cfg.step),
            &cfg,
        ),
    )
}

#[test]
fn maxpool_overlapping_3_stride_2() {
    // 7 x 5: (7-3)/2+1 = 3 rows, (5-3)/2+1 = 2 columns; windows share a row/column, so one x can
    // receive the gradient of two outputs
    check_pool(
        Pool {
            n: 2,
            c: 3,
            h: 7,
            w: 5,
            size: 3,
            stride: 2,
        },
        30,
    );
    // 8 x 6: floor drops the last row
    check_pool(
        Pool {
            n: 1,
            c: 2,
            h: 8,
            w: 6,
            size: 3,
            stride: 2,
        },
        31,
    );
}

#[test]
fn maxpool_non_overlapping_2_stride_2() {
    check_pool(
        Pool {
            n: 2,
            c: 3,
            h: 7,
            w: 6,
            size: 2,
            stride: 2,
        },
        32,
    );
}

#[test]
fn maxpool_check_skips_planted_ties() {
    let s = Pool {
        n: 1,
        c: 1,
        h: 4,
        w: 4,
        size: 2,
        stride: 2,
    };
    let mut rng = SplitMix64::new(33);
    let mut x = rng.vec(16);
    // window (0,0) holds x[0], x[1], x[4], x[5]: make x[0] and x[5] tie at a value above the rest
    x[0] = 2.0;
    x[5] = 2.0;
    let r = rng.vec(4);
    let cfg = GradCheck::default();
    let report = expect_pass(
        "maxpool with ties",
        check(
            |x| projection_loss(&maxpool_forward(&s, x), &r),
            &x,
            &maxpool_backward(&s, &x, &r),
            near_maxpool_tie(&s, &x, 10.0 * cfg.step),
            &cfg,
        ),
    );
    assert_eq!(report.skipped, 2, "exactly the two tied coordinates");
    // without the skip, the tie makes the one-sided slopes differ and the check must fail
    assert!(check(
        |x| projection_loss(&maxpool_forward(&s, x), &r),
        &x,
        &maxpool_backward(&s, &x, &r),
        never,
        &cfg,
    )
    .is_err());
}

// ---- average pooling ---------------------------------------------------------------------------

#[test]
fn avgpool_overlapping_and_non_overlapping_windows() {
    // 3/2 on 7 x 5 (windows share a row/column, so one x takes two outputs' gradients, and floor
    // leaves the last column unread), 2/2 on 6 x 6, and 3/1 (most overlap): average pooling is
    // linear, so there are no kinks to skip
    let cases = [(7, 5, 3, 2, 40), (6, 6, 2, 2, 41), (5, 6, 3, 1, 42)];
    for (h, w, size, stride, seed) in cases {
        let s = Pool {
            n: 2,
            c: 3,
            h,
            w,
            size,
            stride,
        };
        let mut rng = SplitMix64::new(seed);
        let x = rng.vec(s.n * s.c * s.h * s.w);
        let r = rng.vec(s.n * s.c * s.h_out() * s.w_out());
        expect_pass(
            &format!("avgpool {s:?}"),
            check(
                |x| projection_loss(&avgpool_forward(&s, x), &r),
                &x,
                &avgpool_backward(&s, x.len(), &r),
                never,
                &GradCheck::default(),
            ),
        );
    }
}

// ---- fully connected ---------------------------------------------------------------------------

#[test]
fn fc_dx_dw_db() {
    let s = Fc {
        n: 3,
        d_in: 7,
        d_out: 5,
    };
    let mut rng = SplitMix64::new(40);
    let x = rng.vec(s.n * s.d_in);
    let w = rng.vec(s.d_out * s.d_in);
    let b = rng.vec(s.d_out);
    let r = rng.vec(s.n * s.d_out);
    let (dx, dw, db) = fc_backward(&s, &x, &w, &r);
    let cfg = GradCheck::default();
    expect_pass(
        "fc dx",
        check(
            |x| projection_loss(&fc_forward(&s, x, &w, &b), &r),
            &x,
            &dx,
            never,
            &cfg,
        ),
    );
    expect_pass(
        "fc dw",
        check(
            |w| projection_loss(&fc_forward(&s, &x, w, &b), &r),
            &w,
            &dw,
            never,
            &cfg,
        ),
    );
    expect_pass(
        "fc db",
        check(
            |b| projection_loss(&fc_forward(&s, &x, &w, b), &r),
            &b,
            &db,
            never,
            &cfg,
        ),
    );
}

// ---- dropout -----------------------------------------------------------------------------------

#[test]
fn dropout_with_a_fixed_mask_and_why_it_must_be_fixed() {
    let mut rng = SplitMix64::new(50);
    let x = rng.vec(4 * 9);
    let r = rng.vec(x.len());
    let keep: Vec<bool> = (0..x.len()).map(|_| rng.bernoulli(0.5)).collect();
    assert!(keep.iter().any(|&k| k) && keep.iter().any(|&k| !k));
    let keep_scale = 2.0; // 1 / (1 - p) with p = 0.5
    let dx = dropout_backward(&r, &keep, keep_scale);
    let cfg = GradCheck::default();

    // Caffe reseeds its RNG before each forward so every evaluation draws the same mask; here the
    // mask is an argument, so the loss closure simply captures one mask and reuses it.
    expect_pass(
        "dropout",
        check(
            |x| projection_loss(&dropout_forward(x, &keep, keep_scale), &r),
            &x,
            &dx,
            never,
            &cfg,
        ),
    );
    // dropped units pass no gradient at all
    for (i, &k) in keep.iter().enumerate() {
        if !k {
            assert_eq!(dx[i], 0.0);
        }
    }

    // A fresh mask on every evaluation (no reseeding) turns the differences into noise: the
    // checker must reject it, which shows the fixed mask above is what makes the check valid.
    let mut fresh = SplitMix64::new(51);
    assert!(check(
        |x| {
            let mask: Vec<bool> = (0..x.len()).map(|_| fresh.bernoulli(0.5)).collect();
            projection_loss(&dropout_forward(x, &mask, keep_scale), &r)
        },
        &x,
        &dx,
        never,
        &cfg,
    )
    .is_err());
}

// ---- softmax cross-entropy ---------------------------------------------------------------------

#[test]
fn softmax_xent_backward_matches_differences() {
    let (n, classes) = (4, 7);
    let mut rng = SplitMix64::new(60);
    let logits: Vec<f64> = rng.vec(n * classes).iter().map(|v| 4.0 * v).collect();
    let labels = [3, 0, 6, 3];
    let (_, probs) = softmax_xent_forward(n, classes, &logits, &labels);
    let dz = softmax_xent_backward(n, classes, &probs, &labels);
    // the loss is already a scalar: no projection on top
    expect_pass(
        "softmax-xent",
        check(
            |z| softmax_xent_forward(n, classes, z, &labels).0,
            &logits,
            &dz,
            never,
            &GradCheck::default(),
        ),
    );
}

// ---- the checker itself ------------------------------------------------------------------------

#[test]
fn checker_rejects_a_slightly_wrong_gradient() {
    let s = Conv2d {
        n: 1,
        c_in: 2,
        h: 5,
        w: 5,
        c_out: 2,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
        groups: 1,
    };
    let mut rng = SplitMix64::new(70);
    let x = rng.vec(s.n * s.c_in * s.h * s.w);
    let w = rng.vec(s.c_out * s.c_in * s.kh * s.kw);
    let b = rng.vec(s.c_out);
    let r = rng.vec(s.n * s.c_out * s.h_out() * s.w_out());
    let (_, mut dw, _) = conv2d_backward(&s, &x, &w, &r);
    // one coordinate off by 1e-4 relative: 100x the threshold
    dw[7] *= 1.0 + 1e-4;
    let err = check(
        |w| projection_loss(&conv2d_forward(&s, &x, w, &b), &r),
        &w,
        &dw,
        never,
        &GradCheck::default(),
    )
    .expect_err("a perturbed gradient must fail the check");
    assert!(err.starts_with("1 of 36"), "{err}");
    assert!(err.contains("worst at 7:"), "{err}");
}

#[test]
fn checker_rejects_lrn_without_its_cross_channel_term() {
    // The naive LRN backward, dy / S^beta, drops the sum over the window. With the paper's tiny
    // alpha the missing term is only ~1e-2 relative on inputs of size 10: the check must see it.
    let s = lrn(10, 1, 5, 1e-4, 2.0, false);
    let mut rng = SplitMix64::new(71);
    let x: Vec<f64> = rng
        .vec(s.n * s.c * s.h * s.w)
        .iter()
        .map(|v| 10.0 * v)
        .collect();
    let r = rng.vec(x.len());
    let y = lrn_forward(&s, &x);
    // y / x = S^-beta, so dy * y / x is the naive gradient
    let naive: Vec<f64> = (0..x.len()).map(|i| r[i] * y[i] / x[i]).collect();
    assert!(check(
        |x| projection_loss(&lrn_forward(&s, x), &r),
        &x,
        &naive,
        never,
        &GradCheck::default(),
    )
    .is_err());
}

#[test]
fn checker_refuses_to_pass_when_everything_is_skipped() {
    let x = [1.0, 2.0];
    let err = check(
        |x| x[0] + x[1],
        &x,
        &[1.0, 1.0],
        |_| true,
        &GradCheck::default(),
    )
    .expect_err("nothing checked must not pass");
    assert!(err.contains("skipped"), "{err}");
}

#[test]
fn checker_treats_nan_as_a_failure() {
    let err = check(|_| f64::NAN, &[1.0], &[1.0], never, &GradCheck::default())
        .expect_err("a NaN derivative must not pass");
    assert!(err.contains("NaN"), "{err}");
}

#[test]
fn checker_rejects_mismatched_lengths() {
    assert!(check(|x| x[0], &[1.0, 2.0], &[1.0], never, &GradCheck::default()).is_err());
}
