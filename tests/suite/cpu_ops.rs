//! The CPU engine against the f64 oracle: every suite of `common::ops_suite`, with 1 thread and
//! with 2 (which switches convolution, the fully connected layers, LRN and pooling to their split
//! code paths: runs of images, column blocks, plane ranges, and for single images the two-phase
//! split inside one image), and the convolutions with both algorithms (Winograd, im2col).

use crate::common::ops_suite::{self as suite, Tol};
use alexnet::engine::cpu::{ConvAlgorithm, CpuEngine};

/// Dot products of length K in f32 (convolution K = Cin/g*kh*kw up to 1728 here, fully connected
/// up to 4096, weight gradients N*Ho*Wo up to 338), on inputs scaled so results are O(1): the
/// rounding error of a sum of K terms grows like sqrt(K) * eps32 (random-walk accumulation;
/// eps32 = 6e-8), i.e. ~4e-6 at K = 4096, and the largest of ~10^5 outputs is a few times that.
/// 5e-5 absolute is 10x that worst case; rel 1e-5 covers the few outputs larger than O(1).
const GEMM: Tol = Tol {
    rel: 1e-5,
    abs: 5e-5,
};

/// Winograd convolution (the engine's default for stride-1 3x3 and 5x5 shapes on AVX2 CPUs):
/// the same dot products, but formed in the transformed domain, where every value is a
/// combination of up to alpha^2 = 36 or 49 inputs with coefficients up to 8 (F(4x4,3x3)'s A^T
/// row 0 1 -1 8 -8 1, B^T's 4 -5 ..., F(3x3,5x5)'s B^T up to 6): the f32 roundings of the
/// GEMM's K-term sums come back through A^T (and, for the weight gradient, G^T) amplified about
/// tenfold. Measured on this suite: 1.2e-5 at worst (F(3x3,5x5)'s weight gradient; im2col:
/// 1e-6); 5e-5 absolute leaves 4x margin over that, and the relative part is the GEMM's.
const WINOGRAD: Tol = Tol {
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

/// Runs a convolution suite with each algorithm (Winograd, the default, and im2col for every
/// shape), each with 1 and 2 threads, as four tests.
macro_rules! conv {
    ($name:ident, $suite:path) => {
        mod $name {
            use super::*;
            fn im2col(threads: usize) -> CpuEngine {
                CpuEngine::new(threads)
                    .unwrap()
                    .with_conv(ConvAlgorithm::Im2col)
            }
            #[test]
            fn winograd_one_thread() {
                $suite(&CpuEngine::new(1).unwrap(), WINOGRAD)
            }
            #[test]
            fn winograd_two_threads() {
                $suite(&CpuEngine::new(2).unwrap(), WINOGRAD)
            }
            #[test]
            fn im2col_one_thread() {
                $suite(&im2col(1), GEMM)
            }
            #[test]
            fn im2col_two_threads() {
                $suite(&im2col(2), GEMM)
            }
        }
    };
}

conv!(conv_forward, suite::conv_forward);
conv!(conv_backward_data, suite::conv_backward_data);
conv!(conv_backward_weights, suite::conv_backward_weights);
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
both!(sum_of_squares, |e| suite::sum_of_squares(&e));
both!(copy_blocks, |e| suite::copy_blocks(
    &e,
    &CpuEngine::new(1).unwrap()
));
both!(shape_errors, |e| suite::shape_errors(&e));

#[test]
fn softmax_xent() {
    suite::softmax_xent(&CpuEngine::new(2).unwrap(), SOFTMAX);
}
