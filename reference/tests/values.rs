//! Direct value tests: each forward (and the optimiser) against numbers worked out by hand, so the
//! oracle is pinned to the formulas and not only consistent with its own backward.
//!
//! Tolerances: the hand values are exact small integers or were evaluated to 17 significant
//! digits by an independent f64 computation (Python); the oracle performs at most a few dozen
//! roundings on them, so 1e-14 relative (about 50 ulps) is ample and still catches any formula
//! slip.

use alexnet_reference::*;

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-14 * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

// ---- convolution -------------------------------------------------------------------------------

fn x_1_to_9() -> Vec<f64> {
    (1..=9).map(f64::from).collect()
}

#[test]
fn conv_valid_2x2_by_hand() {
    // x = [[1,2,3],[4,5,6],[7,8,9]], w = [[1,2],[3,4]], b = 0.5
    // y[0][0] = 1*1 + 2*2 + 3*4 + 4*5 = 37, then 47, 67, 77 (each step right adds 1+2+3+4 = 10,
    // each step down adds 3*10 = 30)
    let s = Conv2d {
        n: 1,
        c_in: 1,
        h: 3,
        w: 3,
        c_out: 1,
        kh: 2,
        kw: 2,
        stride: 1,
        pad: 0,
        groups: 1,
    };
    let y = conv2d_forward(&s, &x_1_to_9(), &[1.0, 2.0, 3.0, 4.0], &[0.5]);
    assert_close("conv valid", &y, &[37.5, 47.5, 67.5, 77.5]);
}

#[test]
fn conv_padding_and_stride_by_hand() {
    // Same x and w, pad 1, stride 2: output (3 + 2 - 2)/2 + 1 = 2 per side. The four windows of
    // the padded 5x5 start at padded (0,0), (0,2), (2,0), (2,2):
    //   (0,0): only x[0][0] = 1 under w[1][1] = 4                  -> 4
    //   (0,1): x[0][1]*w[1][0] + x[0][2]*w[1][1] = 2*3 + 3*4       -> 18
    //   (1,0): x[1][0]*w[0][1] + x[2][0]*w[1][1] = 4*2 + 7*4       -> 36
    //   (1,1): 5*1 + 6*2 + 8*3 + 9*4                                -> 77
    let s = Conv2d {
        n: 1,
        c_in: 1,
        h: 3,
        w: 3,
        c_out: 1,
        kh: 2,
        kw: 2,
        stride: 2,
        pad: 1,
        groups: 1,
    };
    assert_eq!((s.h_out(), s.w_out()), (2, 2));
    let y = conv2d_forward(&s, &x_1_to_9(), &[1.0, 2.0, 3.0, 4.0], &[0.0]);
    assert_close("conv pad/stride", &y, &[4.0, 18.0, 36.0, 77.0]);
}

#[test]
fn conv_groups_do_not_mix_channels() {
    // 2 input channels, 2 groups, 1x1 kernels: output 0 sees only channel 0, output 1 only
    // channel 1. w has one input channel per filter ([2, 1, 1, 1]).
    let s = Conv2d {
        n: 1,
        c_in: 2,
        h: 1,
        w: 2,
        c_out: 2,
        kh: 1,
        kw: 1,
        stride: 1,
        pad: 0,
        groups: 2,
    };
    let x = [1.0, 2.0, 10.0, 20.0]; // channel 0 = [1, 2], channel 1 = [10, 20]
    let y = conv2d_forward(&s, &x, &[3.0, -1.0], &[0.0, 1.0]);
    assert_close("conv groups", &y, &[3.0, 6.0, -9.0, -19.0]);
}

#[test]
fn conv_output_size_rule() {
    let conv = |h: usize, k: usize, stride: usize, pad: usize| Conv2d {
        n: 1,
        c_in: 1,
        h,
        w: h,
        c_out: 1,
        kh: k,
        kw: k,
        stride,
        pad,
        groups: 1,
    };
    assert_eq!(conv(227, 11, 4, 0).h_out(), 55); // AlexNet conv1 with Caffe's 227 input
    assert_eq!(conv(224, 11, 4, 0).h_out(), 54); // the paper's 224: (213 / 4 = 53.25) floors
    assert_eq!(conv(224, 11, 4, 2).h_out(), 55); // torchvision pads 2 instead
    assert_eq!(conv(27, 5, 1, 2).h_out(), 27); // conv2
    assert_eq!(conv(13, 3, 1, 1).w_out(), 13); // conv3..5
}

// ---- pointwise ---------------------------------------------------------------------------------

#[test]
fn relu_and_tanh_values() {
    assert_close(
        "relu",
        &relu_forward(&[-2.0, -0.0, 0.5, 3.0]),
        &[0.0, 0.0, 0.5, 3.0],
    );
    // the kink takes the left derivative: x = 0 passes nothing
    assert_close(
        "relu'",
        &relu_backward(&[-2.0, 0.0, 0.5], &[1.0, 1.0, 7.0]),
        &[0.0, 0.0, 7.0],
    );
    // tanh(ln 2) = (2 - 1/2) / (2 + 1/2) = 0.6; its derivative 1 - 0.36 = 0.64
    let y = tanh_forward(&[std::f64::consts::LN_2]);
    assert_close("tanh", &y, &[0.6]);
    assert_close("tanh'", &tanh_backward(&y, &[2.0]), &[1.28]);
}

// ---- LRN ---------------------------------------------------------------------------------------

fn paper_lrn(c: usize, groups: usize, alpha_over_n: bool) -> Lrn {
    Lrn {
        n: 1,
        c,
        h: 1,
        w: 1,
        groups,
        size: 5,
        alpha: 1e-4,
        beta: 0.75,
        k: 2.0,
        alpha_over_n,
    }
}

#[test]
fn lrn_paper_constants_by_hand() {
    // a = [1, 2, 3, 4, 5], k = 2, n = 5, alpha = 1e-4, beta = 0.75.
    //   b_0 = 1 / (2 + 1e-4 * (1+4+9))^0.75           = 1 / 2.0014^0.75 = 0.5942915817132711
    //   b_2 = 3 / (2 + 1e-4 * (1+4+9+16+25))^0.75     = 3 / 2.0055^0.75 = 1.7801403935901126
    //   b_4 = 5 / (2 + 1e-4 * (9+16+25))^0.75         = 5 / 2.0050^0.75 = 2.9674555452942113
    let y = lrn_forward(&paper_lrn(5, 1, false), &[1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_close(
        "lrn paper",
        &[y[0], y[2], y[4]],
        &[0.5942915817132711, 1.7801403935901126, 2.9674555452942113],
    );
}

#[test]
fn lrn_alpha_over_n_and_columns() {
    // alpha / n: channel 2 of [1..5] has S = 2 + (1e-4 / 5) * 55 = 2.0011;
    // 3 / 2.0011^0.75 = 1.7830752045375236
    let y = lrn_forward(&paper_lrn(5, 1, true), &[1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_close("lrn alpha/n", &[y[2]], &[1.7830752045375236]);

    // Two columns of 3: channel 2's window [0, 4] is clamped to its column {0, 1, 2}
    // (1+4+9 = 14), and channel 3's window [1, 5] to the next column {3, 4, 5} (16+25+36 = 77):
    //   3 / 2.0014^0.75 = 1.7828747451398135 ; 4 / 2.0077^0.75 = 2.371569613027992
    let y = lrn_forward(&paper_lrn(6, 2, false), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_close(
        "lrn columns",
        &[y[2], y[3]],
        &[1.7828747451398135, 2.371569613027992],
    );
}

// ---- max pooling -------------------------------------------------------------------------------

#[test]
fn maxpool_output_size_rule() {
    let pool = |h: usize, size: usize, stride: usize| Pool {
        n: 1,
        c: 1,
        h,
        w: h,
        size,
        stride,
    };
    // floor((h - size) / stride) + 1, no padding
    assert_eq!(pool(55, 3, 2).h_out(), 27); // after conv1
    assert_eq!(pool(27, 3, 2).h_out(), 13); // after conv2
    assert_eq!(pool(13, 3, 2).h_out(), 6); // after conv5
    assert_eq!(pool(8, 3, 2).h_out(), 3); // (8-3)/2 = 2.5 floors: the last row is never read
    assert_eq!(pool(7, 2, 2).w_out(), 3); // likewise the last column of an odd width
}

#[test]
fn maxpool_values_and_first_maximum_wins_ties() {
    // one 2x2 window holding [[5, 1], [5, 5]]: three-way tie, the first in row-major order
    // (index 0) takes the whole gradient
    let s = Pool {
        n: 1,
        c: 1,
        h: 2,
        w: 2,
        size: 2,
        stride: 2,
    };
    let x = [5.0, 1.0, 5.0, 5.0];
    assert_close("pool tie y", &maxpool_forward(&s, &x), &[5.0]);
    assert_close(
        "pool tie dx",
        &maxpool_backward(&s, &x, &[3.0]),
        &[3.0, 0.0, 0.0, 0.0],
    );

    // 3x3 windows, stride 2, on a 3x5 row: the windows share column 2. A maximum in the shared
    // column receives both outputs' gradients; a tie across the window's rows goes to the upper.
    let s = Pool {
        n: 1,
        c: 1,
        h: 3,
        w: 5,
        size: 3,
        stride: 2,
    };
    #[rustfmt::skip]
    let x = [
        0.0, 1.0, 9.0, 2.0, 0.0,
        0.0, 3.0, 1.0, 2.0, 0.0,
        0.0, 0.0, 9.0, 0.0, 1.0,
    ];
    assert_close("pool overlap y", &maxpool_forward(&s, &x), &[9.0, 9.0]);
    let mut want = [0.0; 15];
    want[2] = 1.0 + 10.0; // the first 9 is the first maximum of both windows
    assert_close(
        "pool overlap dx",
        &maxpool_backward(&s, &x, &[1.0, 10.0]),
        &want,
    );
}

// ---- fully connected and dropout ---------------------------------------------------------------

#[test]
fn fc_by_hand() {
    // x = [[1, 2]], w = [[1, 0], [2, -1], [0.5, 0.5]], b = [0, 1, -1]
    // y = [1, 2*1 - 2 + 1, 0.5 + 1 - 1] = [1, 1, 0.5]
    let s = Fc {
        n: 1,
        d_in: 2,
        d_out: 3,
    };
    let w = [1.0, 0.0, 2.0, -1.0, 0.5, 0.5];
    let y = fc_forward(&s, &[1.0, 2.0], &w, &[0.0, 1.0, -1.0]);
    assert_close("fc", &y, &[1.0, 1.0, 0.5]);
    // dy = [1, 1, 2]: dx = dy w = [1 + 2 + 1, 0 - 1 + 1] = [4, 0]; dw = dy^T x; db = dy
    let (dx, dw, db) = fc_backward(&s, &[1.0, 2.0], &w, &[1.0, 1.0, 2.0]);
    assert_close("fc dx", &dx, &[4.0, 0.0]);
    assert_close("fc dw", &dw, &[1.0, 2.0, 1.0, 2.0, 2.0, 4.0]);
    assert_close("fc db", &db, &[1.0, 1.0, 2.0]);
}

#[test]
fn dropout_by_hand() {
    let keep = [true, false, true];
    assert_close(
        "dropout",
        &dropout_forward(&[1.0, 2.0, -3.0], &keep, 2.0),
        &[2.0, 0.0, -6.0],
    );
    // the paper's test-time rule is keep everything and scale by 0.5
    assert_close(
        "dropout test",
        &dropout_forward(&[1.0, 2.0], &[true, true], 0.5),
        &[0.5, 1.0],
    );
    assert_close(
        "dropout'",
        &dropout_backward(&[1.0, 1.0, 1.0], &keep, 2.0),
        &[2.0, 0.0, 2.0],
    );
}

// ---- softmax cross-entropy ---------------------------------------------------------------------

#[test]
fn softmax_xent_of_uniform_logits_is_ln_k() {
    // equal logits: p = 1/K everywhere, loss = ln K for every row and so for the mean
    let (n, classes) = (3, 10);
    let logits = vec![0.7; n * classes];
    let (loss, probs) = softmax_xent_forward(n, classes, &logits, &[0, 4, 9]);
    assert!((loss - (classes as f64).ln()).abs() <= 1e-14, "{loss}");
    assert!(probs.iter().all(|&p| (p - 0.1).abs() <= 1e-16));
    // dz = (p - onehot) / n
    let dz = softmax_xent_backward(n, classes, &probs, &[0, 4, 9]);
    assert!((dz[0] - (0.1 - 1.0) / 3.0).abs() <= 1e-16);
    assert!((dz[1] - 0.1 / 3.0).abs() <= 1e-16);
}

#[test]
fn softmax_xent_known_case_and_stability() {
    // logits [0, ln 3]: p = [1/4, 3/4]; label 1 costs ln(4/3), label 0 costs ln 4; mean of the two
    let logits = [0.0, 3f64.ln(), 0.0, 3f64.ln()];
    let (loss, probs) = softmax_xent_forward(2, 2, &logits, &[1, 0]);
    assert_close("softmax", &probs, &[0.25, 0.75, 0.25, 0.75]);
    let want = ((4.0f64 / 3.0).ln() + 4f64.ln()) / 2.0;
    assert!((loss - want).abs() <= 1e-15, "{loss} vs {want}");

    // huge logits: exp(1000) overflows without the max subtraction, and the loss of the losing
    // class must be its finite margin (1000 - 0) rather than -ln(0) = inf
    let (loss, probs) = softmax_xent_forward(1, 2, &[1000.0, 0.0], &[1]);
    assert!(probs.iter().all(|p| p.is_finite()));
    assert_eq!(probs[0], 1.0);
    assert!((loss - 1000.0).abs() <= 1e-12, "{loss}");
}

// ---- optimiser ---------------------------------------------------------------------------------

#[test]
fn sgd_update_one_step_by_hand() {
    // lr 0.1, momentum 0.9, weight decay 5e-4 (the paper's):
    //   v0 = 0.9*0.1  - 5e-4*0.1*1    - 0.1*0.5  = 0.09 - 0.00005 - 0.05  =  0.03995
    //   v1 = 0.9*-0.1 - 5e-4*0.1*(-2) - 0.1*0.25 = -0.09 + 0.0001 - 0.025 = -0.1149
    //   w  = [1 + 0.03995, -2 - 0.1149]
    let mut w = [1.0, -2.0];
    let mut v = [0.1, -0.1];
    sgd_update(&mut w, &[0.5, 0.25], &mut v, 0.1, 0.9, 5e-4);
    assert_close("sgd v", &v, &[0.03995, -0.1149]);
    assert_close("sgd w", &w, &[1.03995, -2.1149]);
}
