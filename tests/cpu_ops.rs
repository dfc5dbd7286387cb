//! The CPU engine against the f64 oracle: every suite of `common::ops_suite`, with 1 thread and
//! with 2 (which switches convolution, the fully connected layers, LRN and pooling to their split
//! code paths: runs of images, column blocks, plane ranges, and for single images the two-phase
//! split inside one image).

mod common;

use alexnet::engine::cpu::CpuEngine;
use common::ops_suite::{self as suite, Tol};

/// Dot products of length K in f32 (convolution K = Cin/g*kh*kw up to 1728 here, fully connected
/// up to 4096, weight gradients N*Ho*Wo up to 338), on inputs scaled so results are O(1): the
/// rounding error of a sum of K terms grows like sqrt(K) * eps32 (random-walk accumulation;
/// eps32 = 6e-8), i.e. ~4e-6 at K = 4096, and the largest of ~10^5 outputs is a few times that.
/// 5e-5 absolute is 10x that worst case; rel 1e-5 covers the few outputs larger than O(1).
const GEMM: Tol = Tol {
    rel: 1e-5,
    abs: 5e-5,
};

/// LRN: a window sum of at most 7 squares, one sqrt/powf and a division per element (forward),
/// and a 7-term sum of dy*y/scale plus a difference of two O(1) terms (backward): a few tens of
/// f32 rounding errors of O(1) quantities (scale itself is up to ~5e3 with the paper's inputs,
/// hence the relative part).
const LRN: Tol = Tol {
    rel: 1e-5,
    abs: 1e-5,
};

/// Max pooling's forward copies a value: exact. Its backward adds up at most 4 gradients
/// (3/2 windows overlap) in a possibly different order than the reference: a few ulps of O(1).
const POOL_BWD: Tol = Tol {
    rel: 1e-6,
    abs: 1e-6,
};

/// Average pooling: a sum of at most 9 O(1) values and one multiply by 1/size^2 (forward), and
/// at most 9 overlapping dy/size^2 added up (backward, 3/1 windows), in f32 in another order
/// than the reference: ~10 roundings of O(1) values, 6e-7; sums that cancel towards 0 are
/// bounded in absolute terms.
const AVGPOOL: Tol = Tol {
    rel: 1e-6,
    abs: 1e-6,
};

/// One f32 operation per element against f64 (dropout's product, ReLU's select is exact):
/// half an ulp, 6e-8 relative.
const ONE_OP: Tol = Tol {
    rel: 1e-7,
    abs: 0.0,
};

/// libm's f32 tanh is within ~2 ulps; the backward's 1 - y^2 cancels near |y| = 1 so it is
/// bounded in absolute terms: a few eps32 of O(1) values.
const TANH: Tol = Tol {
    rel: 1e-6,
    abs: 1e-6,
};

/// Softmax: f32 exp (1-2 ulps) and a sum of up to 1000 terms (accumulated in f64) then one
/// division; the loss is computed from f64 log-sum-exp: ~1e-6 relative, and tiny probabilities
/// (down to underflow) are absolute 1e-7.
const SOFTMAX: Tol = Tol {
    rel: 1e-5,
    abs: 1e-7,
};

/// SGD: three products and two sums in f32 on O(1) values: a few ulps.
const SGD: Tol = Tol {
    rel: 1e-6,
    abs: 1e-7,
};

/// Runs `$body` with a 1-thread and a 2-thread engine, as two tests.
macro_rules! both {
    ($name:ident, |$e:ident| $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn one_thread() {
                let $e = CpuEngine::new(1).unwrap();
                $body
            }
            #[test]
            fn two_threads() {
                let $e = CpuEngine::new(2).unwrap();
                $body
            }
        }
    };
}

both!(conv_forward, |e| suite::conv_forward(&e, GEMM));
both!(conv_backward_data, |e| suite::conv_backward_data(&e, GEMM));
both!(conv_backward_weights, |e| suite::conv_backward_weights(
    &e, GEMM
));
both!(fc_forward, |e| suite::fc_forward(&e, GEMM));
both!(fc_backward, |e| suite::fc_backward(&e, GEMM));
both!(lrn_forward, |e| suite::lrn_forward(&e, LRN));
both!(lrn_backward, |e| suite::lrn_backward(&e, LRN));
both!(maxpool, |e| suite::maxpool(&e, Tol::EXACT, POOL_BWD));
both!(avgpool, |e| suite::avgpool(&e, AVGPOOL));
both!(relu, |e| suite::relu(&e, Tol::EXACT));
both!(tanh, |e| suite::tanh(&e, TANH));
both!(dropout, |e| suite::dropout(&e, ONE_OP));
both!(dropout_slice, |e| suite::dropout_slice(&e));
both!(sgd_update, |e| suite::sgd_update(&e, SGD));
both!(memory_ops, |e| suite::memory_ops(&e));
both!(copy_blocks, |e| suite::copy_blocks(
    &e,
    &CpuEngine::new(1).unwrap()
));
both!(shape_errors, |e| suite::shape_errors(&e));

#[test]
fn softmax_xent() {
    suite::softmax_xent(&CpuEngine::new(2).unwrap(), SOFTMAX);
}
