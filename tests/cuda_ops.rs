//! The CUDA engine: the shared op suite against the f64 oracle (on a GPU), and the engine's
//! host-side logic (device detection, error mapping, shape checks, scratch planning) everywhere.
//!
//! GPU tests first open the engine; without a device they print "skipped: no CUDA device" and
//! pass. The host-side tests at the bottom never need a device and always run.
#![cfg(feature = "cuda")]

mod common;

use alexnet::engine::cuda::{self, plan, status, CudaEngine};
use alexnet::engine::cuda_mirror::bf16_round;
use alexnet::engine::{ConvShape, Engine, FcShape, LrnShape, MaskSlice, PoolShape};
use alexnet::rng::dropout_keep;
use alexnet::Error;
use common::ops_suite::{self as suite, Tol};

/// cuBLAS f32 GEMM: dot products of length K (up to 4096 here; 1728 for conv, N*Ho*Wo up to 338
/// for weight gradients) on O(1) results. Whatever the summation order cuBLAS picks (blocked,
/// split-K), each result carries ~sqrt(K) * eps32 = 4e-6 of rounding at K = 4096; the worst of
/// ~1e5 outputs is a few times that. 5e-5 absolute is 10x it; rel 1e-5 covers outputs above O(1).
/// The same bound as the CPU engine: both are f32 with f32 accumulation.
const GEMM: Tol = Tol {
    rel: 1e-5,
    abs: 5e-5,
};

/// TF32 tensor cores round both GEMM inputs to 10 mantissa bits (relative 2^-11 = 4.9e-4 each),
/// so every product is off by up to ~1e-3 relative, with random signs, and accumulation stays f32.
/// On O(1) outputs whose terms have random signs the error is ~1e-3 * sqrt(sum of squared terms)
/// = ~1e-3 (the inputs are scaled so that sum is O(1)); the worst of ~1e5 outputs is ~4.5 sigma.
const TF32: Tol = Tol {
    rel: 1e-3,
    abs: 5e-3,
};

/// bf16 operands: 8 significant bits, each rounded to nearest (relative 2^-8 = 3.9e-3 at most),
/// products and sums in f32. The TF32 bound above (11 bits, 2^-11) scaled by the ratio of unit
/// roundoffs, 2^-8 / 2^-11 = 8: rel 8e-3, abs 4e-2 on the suite's O(1) outputs.
const BF16: Tol = Tol {
    rel: 8e-3,
    abs: 4e-2,
};

/// LRN: a window sum of at most 7 squares, then powf (CUDA: at most 4 ulp = 2.4e-7 relative) and
/// a product (forward); a 7-term sum of dy*y/scale and a difference of two O(1) terms (backward).
/// A few tens of f32 rounding errors of O(1) values; scale itself reaches ~5e3 with the paper's
/// inputs, hence the relative part.
const LRN: Tol = Tol {
    rel: 1e-5,
    abs: 1e-5,
};

/// Max pooling's backward adds at most 4 gradients (3/2 windows overlap), maybe in another order
/// than the reference: a few ulps of O(1). The forward copies a value: exact.
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

/// One f32 multiply per element against f64: half an ulp (6e-8 relative).
const ONE_OP: Tol = Tol {
    rel: 1e-7,
    abs: 0.0,
};

/// CUDA's tanhf is within 2 ulps; the backward's 1 - y^2 cancels near |y| = 1, so it is bounded
/// in absolute terms: a few eps32 of O(1) values.
const TANH: Tol = Tol {
    rel: 1e-6,
    abs: 1e-6,
};

/// Softmax: expf (CUDA: 2 ulps), a block-tree sum of up to 1000 terms in f32 (~sqrt(1000) *
/// eps32 = 2e-6 relative) and one division; the loss is logf(sum) - (z - max) per row, summed in
/// f64. Probabilities near underflow are bounded in absolute terms.
const SOFTMAX: Tol = Tol {
    rel: 1e-5,
    abs: 1e-7,
};

/// SGD: three products and two sums in f32 on O(1) values (fused or not by nvcc): a few ulps.
const SGD: Tol = Tol {
    rel: 1e-6,
    abs: 1e-7,
};

/// The engine on device 0, or None (after saying so) where there is no usable device. Any other
/// failure to start is a bug and fails the test.
fn engine() -> Option<CudaEngine> {
    match CudaEngine::new(0) {
        Ok(e) => {
            println!("engine: {}", e.name());
            Some(e)
        }
        Err(Error::NoDevice(msg)) => {
            println!("skipped: no CUDA device ({msg})");
            None
        }
        Err(other) => panic!("the CUDA engine failed to start: {other}"),
    }
}

macro_rules! gpu_test {
    ($name:ident, |$e:ident| $body:expr) => {
        #[test]
        fn $name() {
            let Some($e) = engine() else { return };
            $body
        }
    };
}

gpu_test!(conv_forward, |e| suite::conv_forward(&e, GEMM));
gpu_test!(conv_backward_data, |e| suite::conv_backward_data(&e, GEMM));
gpu_test!(conv_backward_weights, |e| suite::conv_backward_weights(
    &e, GEMM
));
gpu_test!(fc_forward, |e| suite::fc_forward(&e, GEMM));
gpu_test!(fc_backward, |e| suite::fc_backward(&e, GEMM));
gpu_test!(lrn_forward, |e| suite::lrn_forward(&e, LRN));
gpu_test!(lrn_backward, |e| suite::lrn_backward(&e, LRN));
gpu_test!(maxpool, |e| suite::maxpool(&e, Tol::EXACT, POOL_BWD));
gpu_test!(avgpool, |e| suite::avgpool(&e, AVGPOOL));
gpu_test!(relu, |e| suite::relu(&e, Tol::EXACT));
gpu_test!(tanh, |e| suite::tanh(&e, TANH));
gpu_test!(dropout, |e| suite::dropout(&e, ONE_OP));
gpu_test!(dropout_slice, |e| suite::dropout_slice(&e));
gpu_test!(softmax_xent, |e| suite::softmax_xent(&e, SOFTMAX));
gpu_test!(sgd_update, |e| suite::sgd_update(&e, SGD));
gpu_test!(memory_ops, |e| suite::memory_ops(&e));
gpu_test!(sum_of_squares, |e| suite::sum_of_squares(&e));
// From this engine, and from a second engine (its own stream) on the same device.
gpu_test!(copy_blocks, |e| {
    suite::copy_blocks(&e, &e);
    suite::copy_blocks(&e, &CudaEngine::new(e.device()).unwrap());
});
gpu_test!(shape_errors, |e| suite::shape_errors(&e));

// A scratch budget of one float forces one image per im2col + GEMM round: the chunk loop, the
// image offsets, and backward-weights' accumulation over chunks (beta = 1 after the first).
gpu_test!(conv_one_image_per_chunk, |e| {
    e.set_scratch_budget(1);
    suite::conv_forward(&e, GEMM);
    suite::conv_backward_data(&e, GEMM);
    suite::conv_backward_weights(&e, GEMM);
});

// Engine option --gpu-conv-whole-chunk: forward and backward-data as one GEMM per group over the
// chunk, with the whole batch in a chunk, one image per chunk, and two images per chunk (uneven
// against batches of 3); backward-weights is unchanged but shares the scratch. The same f32
// bound as the default path, against the same reference.
gpu_test!(conv_whole_chunk, |e| {
    e.set_conv_whole_chunk(true);
    assert!(e.name().contains("conv whole-chunk"), "{}", e.name());
    suite::conv_forward(&e, GEMM);
    suite::conv_backward_data(&e, GEMM);
    suite::conv_backward_weights(&e, GEMM);
    for s in suite::conv_shapes() {
        for chunk in [1, 2] {
            e.set_scratch_budget(chunk * plan::conv_floats_per_image(&s, true));
            let (x, w, b) = suite::conv_inputs(&s, 7);
            let mut y = suite::poisoned(&e, s.y_len());
            let (xb, wb) = (suite::upload(&e, &x), suite::upload(&e, &w));
            e.conv_forward(&s, &xb, &wb, &suite::upload(&e, &b), &mut y)
                .expect("conv_forward");
            let want = alexnet_reference::conv2d_forward(
                &suite::ref_conv(&s),
                &suite::widen(&x),
                &suite::widen(&w),
                &suite::widen(&b),
            );
            let what = format!("conv_forward chunk {chunk} {s:?}");
            suite::assert_close(&what, &suite::download(&e, &y), &want, GEMM);
        }
    }
});

// Engine option --gpu-lrn-by-pixel: the per-pixel running-window kernels, same reference and
// bound as the default ones (the window sum is f64, the rest the same f32 arithmetic).
gpu_test!(lrn_by_pixel, |e| {
    e.set_lrn_by_pixel(true);
    assert!(e.name().contains("lrn by-pixel"), "{}", e.name());
    suite::lrn_forward(&e, LRN);
    suite::lrn_backward(&e, LRN);
});

// Engine option --gpu-copy-stream: a prefetch upload into a buffer that work queued before it
// still reads (a device copy out of it) leaves that work the old contents, and after the join
// the new contents are what ops see; a plain upload after a prefetch waits for its staging.
gpu_test!(prefetch_on_copy_stream, |e| {
    e.set_copy_stream(true);
    let n = 5 * (1 << 20) + 7;
    let old: Vec<f32> = (0..n as u32).map(|i| i as f32).collect();
    let new: Vec<f32> = (0..n as u32).map(|i| (i ^ 1) as f32).collect();
    let mut a = suite::upload(&e, &old);
    let mut copy_of_old = e.alloc(n).unwrap();
    for round in 0..2 {
        e.copy(&mut copy_of_old, &a).unwrap();
        e.prefetch_upload(&mut a, if round == 0 { &new } else { &old })
            .unwrap();
        e.prefetch_join().unwrap();
        let mut seen = e.alloc(n).unwrap();
        e.copy(&mut seen, &a).unwrap();
        let (before, after) = if round == 0 {
            (&old, &new)
        } else {
            (&new, &old)
        };
        assert!(
            suite::download(&e, &copy_of_old) == *before,
            "round {round}: old data"
        );
        assert!(
            suite::download(&e, &seen) == *after,
            "round {round}: new data"
        );
    }
    e.prefetch_upload(&mut a, &new).unwrap();
    e.upload(&mut copy_of_old, &old).unwrap();
    e.prefetch_join().unwrap();
    assert!(suite::download(&e, &a) == new);
    assert!(suite::download(&e, &copy_of_old) == old);
});

// The GEMM ops again with TF32 tensor cores.
gpu_test!(tf32_gemms, |e| {
    e.set_tf32(true).expect("set_tf32");
    assert!(e.name().contains("tf32"), "{}", e.name());
    suite::conv_forward(&e, TF32);
    suite::conv_backward_data(&e, TF32);
    suite::conv_backward_weights(&e, TF32);
    suite::fc_forward(&e, TF32);
    suite::fc_backward(&e, TF32);
});

// --precision bf16: the GEMM ops with bf16 operands against the f64 reference (the accuracy cost
// of bf16, within BF16); then fc_forward on inputs already rounded to bf16 (bf16_round, the
// mirror of the engine's rounding), where only f32 sums remain: the f32 bound.
gpu_test!(bf16_gemms, |e| {
    e.set_bf16(true).expect("set_bf16");
    assert!(e.name().contains("bf16"), "{}", e.name());
    suite::conv_forward(&e, BF16);
    suite::conv_backward_data(&e, BF16);
    suite::conv_backward_weights(&e, BF16);
    suite::fc_forward(&e, BF16);
    suite::fc_backward(&e, BF16);
    let round = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(bf16_round).collect() };
    let s = FcShape {
        n: 8,
        d_in: 4096,
        d_out: 250,
    };
    let mut rng = alexnet::rng::Rng::new(31);
    let x = round(suite::uniform(&mut rng, s.n * s.d_in, 1.0));
    let w = round(suite::uniform(
        &mut rng,
        s.d_out * s.d_in,
        (3.0 / 4096f64).sqrt(),
    ));
    let b = suite::uniform(&mut rng, s.d_out, 1.0);
    let mut y = suite::poisoned(&e, s.n * s.d_out);
    e.fc_forward(
        &s,
        &suite::upload(&e, &x),
        &suite::upload(&e, &w),
        &suite::upload(&e, &b),
        &mut y,
    )
    .expect("fc_forward");
    let rs = alexnet_reference::Fc {
        n: s.n,
        d_in: s.d_in,
        d_out: s.d_out,
    };
    let want =
        alexnet_reference::fc_forward(&rs, &suite::widen(&x), &suite::widen(&w), &suite::widen(&b));
    suite::assert_close(
        "fc_forward on bf16 inputs",
        &suite::download(&e, &y),
        &want,
        GEMM,
    );
});

// The dropout mask is bit-identical to rng::dropout_keep: on ones with keep_scale 1 every output
// is exactly 1 or 0, for seeds with high bits set and drop probabilities at the edges.
gpu_test!(dropout_mask_is_bit_identical_to_rust, |e| {
    let n = (1 << 20) + 3;
    for (seed, p) in [
        (0u64, 0.5f32),
        (u64::MAX, 0.5),
        (0x0123_4567_89ab_cdef, 0.1),
        (42, 0.0),
        (43, 1.0),
    ] {
        let mut x = e.alloc(n).unwrap();
        e.fill(&mut x, 1.0).unwrap();
        e.dropout_forward(&mut x, p, 1.0, &MaskSlice::whole(seed, n))
            .unwrap();
        let got = suite::download(&e, &x);
        for (i, &g) in got.iter().enumerate() {
            let want = if dropout_keep(seed, i as u64, p) {
                1.0
            } else {
                0.0
            };
            assert_eq!(g, want, "seed {seed:#x} p {p} element {i}");
        }
    }
});

// Uploads from 1 MB on go through page-locked staging in 8 MB pieces: a length that is not a
// whole number of pieces arrives intact, twice in a row (the staging buffer reused), and a small
// upload between them takes the direct path.
gpu_test!(staged_uploads_arrive_intact, |e| {
    let n = 5 * (1 << 20) + 7;
    let mut buf = e.alloc(n).unwrap();
    for round in 0..2u32 {
        let src: Vec<f32> = (0..n as u32).map(|i| (i ^ round) as f32).collect();
        e.upload(&mut buf, &src).unwrap();
        assert!(suite::download(&e, &buf) == src, "round {round}");
        let small = suite::upload(&e, &[round as f32; 5]);
        assert_eq!(suite::download(&e, &small), vec![round as f32; 5]);
    }
});

// A buffer larger than the device is an OutOfMemory error with the sizes, and the engine keeps
// working afterwards.
gpu_test!(oversized_alloc_is_out_of_memory_with_sizes, |e| {
    let (_, total) = e.memory_info().expect("cudaMemGetInfo");
    let len = (total / 4 + (1 << 30)) as usize;
    match e.alloc(len) {
        Err(Error::OutOfMemory(msg)) => {
            println!("{msg}");
            assert!(
                msg.contains("asked for") && msg.contains("free of"),
                "{msg}"
            );
            assert!(msg.contains(&format!("{} bytes", len * 4)), "{msg}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    match e.alloc(usize::MAX) {
        Err(Error::OutOfMemory(_)) => {}
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    let b = suite::upload(&e, &[1.0, 2.0]);
    assert_eq!(suite::download(&e, &b), vec![1.0, 2.0]);
});

// ---------------------------------------------------------------------------------------------
// host-side logic: runs with or without a GPU
// ---------------------------------------------------------------------------------------------

/// Without a driver or GPU, opening the engine is a clear NoDevice error, never a crash; with
/// one, it opens and names the card.
#[test]
fn new_reports_no_device_clearly() {
    match CudaEngine::new(0) {
        Ok(e) => assert!(e.name().starts_with("cuda:0 "), "{}", e.name()),
        Err(Error::NoDevice(msg)) => {
            println!("no device, as expected here: {msg}");
            assert!(
                msg.contains("CUDA error") || msg.contains("0 devices"),
                "the message should say what the runtime reported: {msg}"
            );
            let shown = Error::NoDevice(msg).to_string();
            assert!(shown.starts_with("no CUDA device: "), "{shown}");
        }
        Err(other) => panic!("expected Ok or NoDevice, got {other}"),
    }
}

/// An ordinal past the last device is NoDevice, whether or not there is a GPU.
#[test]
fn out_of_range_device_is_no_device() {
    match CudaEngine::new(4096) {
        Err(Error::NoDevice(msg)) => println!("{msg}"),
        other => panic!("expected NoDevice, got {:?}", other.map(|e| e.name())),
    }
    match cuda::device_count() {
        Ok(n) => assert!(n < 4096),
        Err(Error::NoDevice(_)) => {}
        Err(other) => panic!("device_count: expected Ok or NoDevice, got {other}"),
    }
}

#[test]
fn cuda_errors_map_to_the_right_variants() {
    use status::{classify, Library};
    for code in [35, 100, 34, 3] {
        match classify(
            Library::Cuda,
            code,
            "cudaGetDeviceCount",
            "some driver text",
        ) {
            Error::NoDevice(msg) => {
                assert!(msg.contains("cudaGetDeviceCount") && msg.contains("some driver text"));
                assert!(msg.contains(&format!("CUDA error {code}")), "{msg}");
            }
            other => panic!("code {code}: expected NoDevice, got {other}"),
        }
    }
    assert!(matches!(
        classify(Library::Cuda, 2, "cudaMalloc", "out of memory"),
        Error::OutOfMemory(_)
    ));
    assert!(matches!(
        classify(
            Library::Cublas,
            3,
            "cublasCreate",
            "the resource allocation failed"
        ),
        Error::OutOfMemory(_)
    ));
    // cuBLAS status 1 is "not initialised", not CUDA's initialisation error 3 / no-device codes.
    match classify(
        Library::Cublas,
        1,
        "cublasSgemm(fc_forward)",
        "not initialized",
    ) {
        Error::Cuda { call, msg } => {
            assert_eq!(call, "cublasSgemm(fc_forward)");
            assert!(
                msg.contains("not initialized") && msg.contains("cuBLAS status 1"),
                "{msg}"
            );
        }
        other => panic!("expected Cuda, got {other}"),
    }
    match classify(
        Library::Cuda,
        700,
        "im2col<<<>>>",
        "an illegal memory access",
    ) {
        Error::Cuda { call, msg } => {
            assert_eq!(call, "im2col<<<>>>");
            assert!(msg.contains("illegal memory access") && msg.contains("CUDA error 700"));
        }
        other => panic!("expected Cuda, got {other}"),
    }
}

#[test]
fn out_of_memory_message_names_the_sizes() {
    let e = status::out_of_memory(
        "a buffer of 805306368 f32",
        3 << 30,
        Some((1 << 29, 80 << 30)),
    );
    let msg = e.to_string();
    assert!(msg.starts_with("out of device memory: "), "{msg}");
    for part in [
        "3.00 GiB",
        "3221225472 bytes",
        "a buffer of 805306368 f32",
        "512.0 MiB free of 80.00 GiB",
    ] {
        assert!(msg.contains(part), "missing {part:?} in {msg}");
    }
    let unknown = status::out_of_memory("labels", 100, None).to_string();
    assert!(unknown.contains("could not be queried"), "{unknown}");
    assert!(matches!(
        plan::f32_bytes(usize::MAX / 2),
        Err(Error::OutOfMemory(_))
    ));
    assert_eq!(plan::f32_bytes(10).unwrap(), 40);
}

/// AlexNet's five convolutions at batch 128 (227x227 input, two columns where the paper has
/// them), as the model runs them.
fn alexnet_convs() -> Vec<ConvShape> {
    let c = |c_in, h, c_out, k, stride, pad, groups| ConvShape {
        n: 128,
        c_in,
        h,
        w: h,
        c_out,
        kh: k,
        kw: k,
        stride,
        pad,
        groups,
    };
    vec![
        c(3, 227, 96, 11, 4, 0, 1),
        c(96, 27, 256, 5, 1, 2, 2),
        c(256, 13, 384, 3, 1, 1, 1),
        c(384, 13, 384, 3, 1, 1, 2),
        c(384, 13, 256, 3, 1, 1, 2),
    ]
}

/// The chunk is the largest that fits the budget (never zero, never past the batch), and the host
/// plan and the kernels' C code agree on the scratch size (the C function does no CUDA calls).
#[test]
fn conv_plan_fits_the_budget_and_agrees_with_the_kernels() {
    let mut shapes = alexnet_convs();
    shapes.extend(suite::conv_shapes());
    let small = plan::default_scratch_floats(None);
    for s in &shapes {
        for bw in [false, true] {
            for budget in [1, 1 << 20, small, usize::MAX / 8] {
                let p = plan::conv_plan(s, budget, bw);
                let per_image = plan::conv_floats_per_image(s, bw);
                assert!(p.chunk >= 1 && p.chunk <= s.n, "{s:?} {p:?}");
                assert_eq!(p.scratch_floats, p.chunk * per_image);
                if p.chunk > 1 {
                    assert!(p.scratch_floats <= budget, "{s:?} {p:?} over {budget}");
                }
                if p.chunk < s.n {
                    assert!(
                        (p.chunk + 1) * per_image > budget,
                        "{s:?} {p:?} could be larger"
                    );
                }
                assert_eq!(
                    cuda::c_conv_scratch_floats(s, p.chunk, bw),
                    p.scratch_floats,
                    "host and kernels disagree for {s:?} chunk {}",
                    p.chunk
                );
            }
        }
    }
    // conv1 forward at batch 128: 363 x 3025 floats per image, 61 images per round in 256 MiB;
    // 2 GiB (a card of 64 GiB or more) holds every layer's whole batch, backward-weights too.
    let conv1 = plan::conv_plan(&alexnet_convs()[0], small, false);
    assert_eq!(conv1.chunk, 61);
    let big = plan::default_scratch_floats(Some(141 << 30));
    assert_eq!(big, 512 << 20);
    for s in alexnet_convs() {
        assert_eq!(plan::conv_plan(&s, big, true).chunk, 128, "{s:?}");
    }
    assert_eq!(small, 64 << 20);
    assert_eq!(plan::default_scratch_floats(Some(1 << 30)), 64 << 20);
    assert_eq!(plan::default_scratch_floats(Some(16 << 30)), 128 << 20);
}

fn is_shape_err<T>(r: alexnet::Result<T>) -> bool {
    matches!(r, Err(Error::Shape { .. }))
}

/// The checks every op runs before launching anything, exercised directly (no buffers needed).
#[test]
fn host_shape_checks_reject_bad_lengths_and_geometry() {
    let b = plan::default_scratch_floats(None);
    let s = suite::ERROR_CASE_CONV;
    let (x, w, y) = (s.x_len(), s.w_len(), s.y_len());
    for whole in [false, true] {
        assert!(plan::conv_forward(&s, b, whole, x, w, 6, y).is_ok());
        assert!(is_shape_err(plan::conv_forward(
            &s,
            b,
            whole,
            x - 1,
            w,
            6,
            y
        )));
        assert!(is_shape_err(plan::conv_forward(
            &s,
            b,
            whole,
            x,
            w + 1,
            6,
            y
        )));
        assert!(is_shape_err(plan::conv_forward(&s, b, whole, x, w, 5, y)));
        assert!(is_shape_err(plan::conv_forward(
            &s,
            b,
            whole,
            x,
            w,
            6,
            y - 1
        )));
        assert!(plan::conv_backward_data(&s, b, whole, y, w, x).is_ok());
        assert!(is_shape_err(plan::conv_backward_data(
            &s,
            b,
            whole,
            y,
            w,
            x + 1
        )));
    }
    assert!(plan::conv_backward_weights(&s, b, x, y, w, 6).is_ok());
    assert!(is_shape_err(plan::conv_backward_weights(&s, b, x, y, w, 7)));
    assert!(is_shape_err(plan::conv_backward_weights(
        &s,
        b,
        x,
        y - 1,
        w,
        6
    )));
    for bad in [
        ConvShape { groups: 3, ..s },
        ConvShape { kh: 9, ..s },
        ConvShape { stride: 0, ..s },
        ConvShape { c_in: 0, ..s },
        ConvShape { n: 0, ..s },
    ] {
        let r = plan::conv_forward(&bad, b, false, bad.x_len(), bad.w_len(), 6, 0);
        assert!(is_shape_err(r), "{bad:?} accepted");
    }
    // cuBLAS dimensions are 32-bit.
    let wide = FcShape {
        n: 1,
        d_in: 1 << 31,
        d_out: 1,
    };
    assert!(is_shape_err(plan::fc_forward(
        &wide,
        1 << 31,
        1 << 31,
        1,
        1
    )));

    let f = FcShape {
        n: 2,
        d_in: 5,
        d_out: 3,
    };
    assert!(plan::fc_forward(&f, 10, 15, 3, 6).is_ok());
    assert!(is_shape_err(plan::fc_forward(&f, 10, 14, 3, 6)));
    assert!(plan::fc_backward(&f, 10, 15, 6, Some(10), 15, 3).is_ok());
    assert!(plan::fc_backward(&f, 10, 15, 6, None, 15, 3).is_ok());
    assert!(is_shape_err(plan::fc_backward(
        &f,
        10,
        15,
        6,
        Some(9),
        15,
        3
    )));
    assert!(is_shape_err(plan::fc_backward(&f, 10, 15, 6, None, 15, 2)));

    let l = LrnShape {
        n: 2,
        c: 6,
        h: 3,
        w: 3,
        groups: 2,
    };
    assert!(plan::lrn("lrn_forward", &l, 5, &[("x", 108), ("y", 108)]).is_ok());
    assert!(is_shape_err(plan::lrn(
        "lrn_forward",
        &l,
        5,
        &[("x", 108), ("y", 107)]
    )));
    assert!(is_shape_err(plan::lrn(
        "lrn_forward",
        &LrnShape { groups: 4, ..l },
        5,
        &[]
    )));
    assert!(is_shape_err(plan::lrn("lrn_forward", &l, 0, &[])));

    let p = PoolShape {
        n: 1,
        c: 2,
        h: 7,
        w: 7,
        size: 3,
        stride: 2,
    };
    assert!(plan::pool("maxpool", &p, 98, 18, Some((18, 98))).is_ok());
    assert!(is_shape_err(plan::pool("maxpool", &p, 98, 17, None)));
    assert!(is_shape_err(plan::pool(
        "maxpool",
        &p,
        98,
        18,
        Some((18, 97))
    )));
    assert!(is_shape_err(plan::pool(
        "maxpool",
        &PoolShape { h: 2, ..p },
        28,
        2,
        None
    )));
    // The pooling kernels index an image plane in 32 bits.
    let huge = PoolShape {
        h: 1 << 16,
        w: 1 << 16,
        ..p
    };
    assert!(is_shape_err(plan::pool(
        "maxpool",
        &huge,
        huge.x_len(),
        huge.y_len(),
        None
    )));
    assert!(is_shape_err(plan::pool(
        "maxpool",
        &PoolShape { stride: 0, ..p },
        98,
        18,
        None
    )));

    assert!(plan::softmax("softmax_xent", 2, 3, &[("logits", 6)], Some(&[0, 2])).is_ok());
    assert!(is_shape_err(plan::softmax(
        "softmax_xent",
        2,
        3,
        &[("logits", 5)],
        None
    )));
    assert!(is_shape_err(plan::softmax(
        "softmax_xent",
        2,
        3,
        &[],
        Some(&[0])
    )));
    match plan::softmax("softmax_xent", 2, 3, &[], Some(&[0, 3])) {
        Err(Error::Shape { op, msg }) => {
            assert_eq!(op, "softmax_xent");
            assert!(msg.contains("label 3 of row 1"), "{msg}");
        }
        other => panic!("expected Shape, got {other:?}"),
    }
    assert!(is_shape_err(plan::same_len(
        "sgd_update",
        ("w", 4),
        ("dw", 3)
    )));
    assert!(plan::same_len("sgd_update", ("w", 4), ("dw", 4)).is_ok());
}
