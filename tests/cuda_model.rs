//! The whole paper AlexNet, one training step on the GPU vs the CPU engine: loss, every
//! parameter gradient and every updated weight, plus each convolution at its AlexNet shape.
//! Skips (and passes) without a CUDA device.
#![cfg(feature = "cuda")]

mod common;

use alexnet::arch::ArchConfig;
use alexnet::engine::cpu::CpuEngine;
use alexnet::engine::cuda::CudaEngine;
use alexnet::engine::Engine;
use alexnet::model::{Init, Model, Sgd};
use alexnet::parallel::Network;
use alexnet::rng::Rng;
use common::rel_err;

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

const LAYERS: [&str; 22] = [
    "conv1", "relu1", "lrn1", "pool1", "conv2", "relu2", "lrn2", "pool2", "conv3", "relu3",
    "conv4", "relu4", "conv5", "relu5", "pool5", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7",
    "fc8",
];

struct Step {
    loss: f32,
    acts: Vec<Vec<f32>>,
    out_grads: Vec<Vec<f32>>,
    grads: Tensors,
    updated: Tensors,
}

/// Everything of one training step of the paper's net on `engine`.
fn one_step<E: Engine>(e: &E, init: Init, images: &[f32], labels: &[u32]) -> Step {
    let mut m = Model::new(e, ArchConfig::default(), init, 7, labels.len()).unwrap();
    m.forward(e, images, Some(42)).unwrap();
    let loss = m.backward(e, labels, Some(42)).unwrap();
    let acts = LAYERS.iter().map(|l| m.activation(e, l).unwrap()).collect();
    let out_grads = LAYERS
        .iter()
        .map(|l| m.output_grad(e, l).unwrap())
        .collect();
    let grads = m.read_grads(e).unwrap();
    m.sgd_step(e, 0.01, &Sgd::default()).unwrap();
    Step {
        loss,
        acts,
        out_grads,
        grads,
        updated: m.read_params(e).unwrap(),
    }
}

fn gpu(tf32: bool) -> Option<CudaEngine> {
    match CudaEngine::new(0) {
        Ok(e) => {
            e.set_tf32(tf32).unwrap();
            Some(e)
        }
        Err(err) => {
            println!("skipped: no CUDA device ({err})");
            None
        }
    }
}

/// Max-pool windows (over the three pooling layers' inputs) whose two largest values lie within
/// `rel_gap` of each other (all-zero windows excluded: both engines send their gradient to the
/// first zero, which the ReLU below then discards).
fn near_ties(acts: &[Vec<f32>], n: usize, rel_gap: f32) -> usize {
    let mut count = 0;
    for (layer, c, h) in [("lrn1", 96, 55), ("lrn2", 256, 27), ("relu5", 256, 13)] {
        let x = &acts[LAYERS.iter().position(|l| *l == layer).unwrap()];
        let ho = (h - 3) / 2 + 1;
        for plane in 0..n * c {
            for oh in 0..ho {
                for ow in 0..ho {
                    let mut v: Vec<f32> = (0..9)
                        .map(|k| x[plane * h * h + (oh * 2 + k / 3) * h + ow * 2 + k % 3])
                        .collect();
                    v.sort_by(|a, b| b.total_cmp(a));
                    if v[0] != 0.0 && (v[0] - v[1]) <= rel_gap * v[0].abs() {
                        count += 1;
                    }
                }
            }
        }
    }
    count
}

/// Random mean-subtracted images (+-50 on the 0..255 scale) for which no max-pool window of the
/// CPU forward pass (Caffe init, whose 0.1 biases spread the pooled values more than the paper's
/// 1s, so tie-free inputs are common) has its top two values within 5e-6 relative, ten times the
/// engines' largest activation difference.
///
/// Why: the engines' activations differ by rounding (~6e-7 relative), so where two values of a
/// window are that close the engines may pick different maxima and route that window's gradient
/// to different pixels. That is correct behaviour of both, but it moves whole gradient elements
/// (a handful of flips gives ~3e-3 norm-wise in the layers below), which would hide a real error
/// of that size. Choosing inputs without such near-ties makes the comparison exact to rounding.
fn tie_free_inputs(cpu: &CpuEngine, n: usize, labels: &[u32]) -> (Vec<f32>, Step) {
    for seed in 0..200 {
        let mut rng = Rng::new(seed);
        let images: Vec<f32> = (0..n * 3 * 227 * 227)
            .map(|_| (rng.normal() * 50.0) as f32)
            .collect();
        let step = one_step(cpu, Init::Caffe, &images, labels);
        if near_ties(&step.acts, n, 5e-6) == 0 {
            println!("inputs from seed {seed} have no near-tie pooling windows");
            return (images, step);
        }
    }
    panic!("no tie-free input among 200 seeds");
}

#[test]
fn one_training_step_matches_the_cpu_engine_fp32() {
    let Some(gpu) = gpu(false) else { return };
    let cpu = CpuEngine::new(0).unwrap();
    let labels = [500u32];
    let (images, c) = tie_free_inputs(&cpu, labels.len(), &labels);
    let g = one_step(&gpu, Init::Caffe, &images, &labels);
    // Both engines agree with the f64 oracle to ~1e-6 norm-wise on this net (see
    // model_vs_reference.rs); two f32 summation orders then differ by a few 1e-6. 1e-5 leaves
    // room for that, while any indexing error is orders of magnitude larger.
    assert_all_close(&gpu, &g, &c, 1e-5, true);
}

#[test]
fn one_training_step_matches_the_cpu_engine_tf32() {
    let Some(gpu) = gpu(true) else { return };
    let cpu = CpuEngine::new(0).unwrap();
    let labels = [1u32, 500, 999, 77];
    let mut rng = Rng::new(3);
    let images: Vec<f32> = (0..labels.len() * 3 * 227 * 227)
        .map(|_| (rng.normal() * 50.0) as f32)
        .collect();
    let c = one_step(&cpu, Init::Paper, &images, &labels);
    let g = one_step(&gpu, Init::Paper, &images, &labels);
    // TF32 rounds GEMM inputs to 10 mantissa bits (2^-11 ~ 5e-4 relative): forward activations
    // and the loss drift to a few 1e-4 through eight GEMM layers, so 1e-3. Gradients are not
    // compared: at that rounding many max-pool windows have near-ties (see tie_free_inputs), so
    // gradients below a pooling layer legitimately differ by ~1e-1.
    assert_all_close(&gpu, &g, &c, 1e-3, false);
}

/// Model parallelism on the GPU: the two columns on two engines (two GPUs when present, else two
/// streams of GPU 0) against the whole net on the GPU, one training step from the same weights,
/// on tie-free inputs. Tolerance as for fp32 above (two f32 summation orders).
#[test]
fn split_columns_on_two_engines_match_the_whole_net() {
    let Some(whole) = gpu(false) else { return };
    let second = if alexnet::engine::cuda::device_count().unwrap() > 1 {
        1
    } else {
        0
    };
    if second == 1 {
        alexnet::engine::cuda::enable_peer_access(0, 1).unwrap();
        alexnet::engine::cuda::enable_peer_access(1, 0).unwrap();
    }
    let split = [
        CudaEngine::new(0).unwrap(),
        CudaEngine::new(second).unwrap(),
    ];
    let cpu = CpuEngine::new(0).unwrap();
    let labels = [500u32, 3];
    let (images, _) = tie_free_inputs(&cpu, labels.len(), &labels);
    let run = |engines: &[CudaEngine], split: bool| {
        let cfg = ArchConfig::default();
        let mut net = Network::new(engines, split, cfg, Init::Caffe, 7, labels.len()).unwrap();
        net.forward(engines, &images, Some(42)).unwrap();
        let loss = net.backward(engines, &labels, Some(42)).unwrap();
        let grads = net.read_grads(engines).unwrap();
        net.sgd_step(engines, 0.01, &Sgd::default()).unwrap();
        (
            loss,
            grads,
            net.read_params(engines).unwrap(),
            net.traffic(),
        )
    };
    let (lw, gw, pw, _) = run(std::slice::from_ref(&whole), false);
    let (ls, gs, ps, traffic) = run(&split, true);
    println!("loss whole {lw} split {ls}; traffic {traffic:?}");
    assert!(((lw - ls) / lw).abs() < 1e-5, "loss {lw} vs {ls}");
    for ((name, _, a), (_, _, b)) in gs.iter().zip(&gw).chain(ps.iter().zip(&pw)) {
        let e = rel_err(a, b);
        assert!(e < 1e-5, "{name}: relative difference {e:.2e}");
    }
    assert!(traffic.between_executors > 0);
}

/// The trainer's prefetch on the GPU: the next batch is uploaded (through page-locked staging)
/// while the forward's kernels run, into the second input buffer. Bit-for-bit the same losses and
/// weights as uploading each batch at its forward: the same kernels run on the same values in the
/// same order, and an upload that landed in the buffer the backward still reads would change
/// conv1's weight gradient. Paper net at batch 128, so each batch is a 79 MB staged upload.
#[test]
fn prefetched_batches_train_exactly_like_uploaded_ones() {
    let Some(gpu) = gpu(false) else { return };
    let engines = std::slice::from_ref(&gpu);
    let cfg = ArchConfig::default();
    let [uploaded, prefetched] = common::uploaded_and_prefetched_runs(engines, false, &cfg, 128, 3);
    println!(
        "losses uploaded {:?} prefetched {:?}",
        uploaded.0, prefetched.0
    );
    assert_eq!(uploaded.0, prefetched.0);
    assert!(uploaded.1 == prefetched.1, "parameters differ");
}

/// --gpu-copy-stream: the prefetched batches' copies on their own stream change when the data
/// arrives, never what is computed: bit for bit the uploaded run.
#[test]
fn prefetched_batches_on_the_copy_stream_train_exactly_like_uploaded_ones() {
    let Some(gpu) = gpu(false) else { return };
    gpu.set_copy_stream(true);
    let engines = std::slice::from_ref(&gpu);
    let cfg = ArchConfig::default();
    let [uploaded, prefetched] = common::uploaded_and_prefetched_runs(engines, false, &cfg, 128, 3);
    assert_eq!(uploaded.0, prefetched.0);
    assert!(uploaded.1 == prefetched.1, "parameters differ");
}

fn assert_all_close(gpu: &CudaEngine, g: &Step, c: &Step, tol: f64, gradients: bool) {
    println!("{}: loss cpu {} gpu {}", gpu.name(), c.loss, g.loss);
    let mut all: Vec<(String, f64)> =
        vec![("loss".into(), ((g.loss - c.loss) / c.loss).abs() as f64)];
    for (i, l) in LAYERS.iter().enumerate() {
        let (a, d) = (
            rel_err(&g.acts[i], &c.acts[i]),
            rel_err(&g.out_grads[i], &c.out_grads[i]),
        );
        println!("  {l:<6} activation {a:.2e}   gradient of output {d:.2e}");
        all.push((format!("activation of {l}"), a));
        if gradients {
            all.push((format!("gradient of {l}'s output"), d));
        }
    }
    if gradients {
        for ((name, _, a), (_, _, b)) in g.grads.iter().zip(&c.grads) {
            let e = rel_err(a, b);
            println!("  grad {name:<14} {e:.2e}");
            all.push((format!("gradient of {name}"), e));
        }
        for ((name, _, a), (_, _, b)) in g.updated.iter().zip(&c.updated) {
            all.push((format!("updated {name}"), rel_err(a, b)));
        }
    }
    let bad: Vec<_> = all.iter().filter(|(_, e)| e.is_nan() || *e > tol).collect();
    assert!(bad.is_empty(), "over {tol:.0e}: {bad:?}");
}

/// With the default GEMMs and with --gpu-conv-whole-chunk (one GEMM per group over the chunk).
#[test]
fn each_convolution_at_its_alexnet_shape_matches_the_cpu_engine() {
    let Some(gpu) = gpu(false) else { return };
    let cpu = CpuEngine::new(0).unwrap();
    let mut plan = ArchConfig::default().plan().unwrap();
    plan.retain(|p| p.conv.is_some());
    for whole_chunk in [false, true] {
        gpu.set_conv_whole_chunk(whole_chunk);
        println!("{}", gpu.name());
        each_convolution_against_the_cpu(&gpu, &cpu, &plan);
    }
}

fn each_convolution_against_the_cpu(
    gpu: &CudaEngine,
    cpu: &CpuEngine,
    plan: &[alexnet::arch::PlannedLayer],
) {
    let mut rng = Rng::new(17);
    for p in plan {
        let mut s = p.conv.unwrap();
        s.n = 4;
        let rand = |rng: &mut Rng, len: usize, scale: f64| -> Vec<f32> {
            (0..len).map(|_| (rng.normal() * scale) as f32).collect()
        };
        let x = rand(&mut rng, s.x_len(), 1.0);
        let w = rand(&mut rng, s.w_len(), 0.01);
        let b = rand(&mut rng, s.c_out, 0.1);
        let dy = rand(&mut rng, s.y_len(), 1e-3);
        let on = |eng_is_gpu: bool| -> [Vec<f32>; 4] {
            fn go<E: Engine>(
                e: &E,
                s: &alexnet::engine::ConvShape,
                x: &[f32],
                w: &[f32],
                b: &[f32],
                dy: &[f32],
            ) -> [Vec<f32>; 4] {
                let up = |v: &[f32]| {
                    let mut buf = e.alloc(v.len()).unwrap();
                    e.upload(&mut buf, v).unwrap();
                    buf
                };
                let down = |buf: &E::Buf| {
                    let mut v = vec![0.0; e.buf_len(buf)];
                    e.download(buf, &mut v).unwrap();
                    v
                };
                let (xb, wb, bb, dyb) = (up(x), up(w), up(b), up(dy));
                let mut y = e.alloc(s.y_len()).unwrap();
                let mut dx = e.alloc(s.x_len()).unwrap();
                let mut dw = e.alloc(s.w_len()).unwrap();
                let mut db = e.alloc(s.c_out).unwrap();
                e.conv_forward(s, &xb, &wb, &bb, &mut y).unwrap();
                e.conv_backward_data(s, &dyb, &wb, &mut dx).unwrap();
                e.conv_backward_weights(s, &xb, &dyb, &mut dw, &mut db)
                    .unwrap();
                [down(&y), down(&dx), down(&dw), down(&db)]
            }
            if eng_is_gpu {
                go(gpu, &s, &x, &w, &b, &dy)
            } else {
                go(cpu, &s, &x, &w, &b, &dy)
            }
        };
        let (g, c) = (on(true), on(false));
        for (what, (a, bb)) in ["y", "dx", "dw", "db"].iter().zip(g.iter().zip(&c)) {
            // A zero result would make a zero error prove nothing (and dx often agrees bit for
            // bit: both engines' GEMMs sum its <= 256 terms in order, then col2im the same way).
            assert!(
                bb.iter().any(|v| *v != 0.0),
                "{} {what}: the CPU engine's result is all zero",
                p.layer.name
            );
            let e = rel_err(a, bb);
            println!("{} {what}: {e:.2e}", p.layer.name);
            // Dot products of length <= 12100 in two f32 summation orders.
            assert!(e <= 1e-5, "{} {what}: {e:.3e}", p.layer.name);
        }
    }
}

/// `--all-reduce nccl` through the trainer in one process: the sums run on each executor's
/// collective stream, forked after the backward kernels that wrote each row's gradients and
/// joined before the update. Over one rank a sum changes nothing and the 1/N scaling is skipped,
/// so the run must equal the plain one bit for bit: this catches a failing NCCL setup or call,
/// a join that loses the compute stream's order, and anything on the path that writes the
/// gradients. It cannot catch a sum queued before its gradient was written (over one rank the
/// in-place sum leaves the values alone): that needs two ranks on two GPUs. Whole net and the
/// two columns on two executors (a communicator each).
#[cfg(feature = "nccl")]
#[test]
fn nccl_gradient_sums_over_one_rank_train_exactly_like_no_sums() {
    use alexnet::checkpoint::TrainState;
    use alexnet::dist::Comm;
    use alexnet::trainer::{Alone, SyncKind, Trainer};
    let Some(first) = gpu(false) else { return };
    let second =
        CudaEngine::new(alexnet::engine::cuda::device_count().unwrap().min(2) - 1).unwrap();
    let both = [first, second];
    let cfg = ArchConfig::default();
    let n = 32;
    let mut rng = Rng::new(17);
    let batches: Vec<(Vec<f32>, Vec<u32>)> = (0..3)
        .map(|_| {
            let images = (0..n * 3 * cfg.input_size * cfg.input_size)
                .map(|_| (rng.normal() * 50.0) as f32)
                .collect();
            (
                images,
                (0..n).map(|_| rng.below(cfg.classes) as u32).collect(),
            )
        })
        .collect();
    let single = Comm::Single;
    let run = |engines: &[CudaEngine], split: bool, nccl: bool| {
        engines.iter().for_each(|e| e.set_nccl_all_reduce(nccl));
        let net = Network::new(engines, split, cfg.clone(), Init::Caffe, 5, n).unwrap();
        let sync = match nccl {
            true => alexnet::data_parallel::gradient_sync(engines, &single).unwrap(),
            false => Box::new(Alone),
        };
        let state = TrainState::fresh(5, 0.01);
        let mut trainer = Trainer::new(engines, net, state, Sgd::default(), sync);
        let expected = if nccl {
            SyncKind::Device
        } else {
            SyncKind::Alone
        };
        assert_eq!(trainer.sync_kind(), expected);
        trainer.start(&batches[0].0).unwrap();
        let mut losses = Vec::new();
        for (i, (_, labels)) in batches.iter().enumerate() {
            let next = batches.get(i + 1).map(|(images, _)| images.as_slice());
            losses.push(trainer.step(labels, || next).unwrap().loss);
        }
        engines.iter().for_each(|e| e.set_nccl_all_reduce(false));
        (losses, trainer.model.read_params(engines).unwrap())
    };
    for (engines, split) in [(&both[..1], false), (&both[..], true)] {
        let plain = run(engines, split, false);
        let summed = run(engines, split, true);
        println!(
            "split {split}: losses plain {:?} nccl {:?}",
            plain.0, summed.0
        );
        assert_eq!(plain.0, summed.0, "split {split}: losses differ");
        assert!(plain.1 == summed.1, "split {split}: parameters differ");
    }
}
