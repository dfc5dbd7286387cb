//! The large-batch rules beyond the paper against their papers' formulas in the f64 reference:
//! LARS's per-layer update (You, Gitman & Ginsburg 2017, Algorithm 1) on a whole net and on its
//! columns split over two executors, and Goyal et al. 2017's gradual warmup as the trainer
//! applies it, step by step.

use crate::common;

use std::sync::atomic::AtomicBool;

use alexnet::arch::ArchConfig;
use alexnet::engine::cpu::CpuEngine;
use alexnet::model::{HostTensors, Init, Sgd};
use alexnet::parallel::Network;
use alexnet::rng::Rng;
use alexnet::train::train;

use crate::common::train_args as args;

/// A small two-column net (input 67: every layer of the paper's net present), no dropout.
fn cfg() -> ArchConfig {
    ArchConfig {
        classes: 10,
        input_size: 67,
        dropout: 0.0,
        ..Default::default()
    }
}

const N: usize = 4;

fn batch(cfg: &ArchConfig, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let len = N * 3 * cfg.input_size * cfg.input_size;
    let images = (0..len).map(|_| (rng.normal() * 50.0) as f32).collect();
    let labels = (0..N).map(|_| rng.below(cfg.classes) as u32).collect();
    (images, labels)
}

/// A LARS rate far above the paper's: each weight moves by about eta * lr = 1e-3 of its norm.
const LR: f32 = 1.0;
const ETA: f32 = 0.001;

/// Weights, gradients and momentum of `net` after one LARS step (so the momentum is not zero)
/// and a second backward, then the same after the second LARS step.
fn two_lars_steps(
    engines: &[CpuEngine],
    split: bool,
) -> (
    (HostTensors, HostTensors, HostTensors),
    (HostTensors, HostTensors),
) {
    let cfg = cfg();
    let sgd = Sgd {
        lars_eta: Some(ETA),
        ..Sgd::default()
    };
    let mut net = Network::new(engines, split, cfg.clone(), Init::Caffe, 7, N).unwrap();
    for step in 0..2 {
        let (images, labels) = batch(&cfg, 40 + step);
        net.forward(engines, &images, None).unwrap();
        net.backward(engines, &labels, None).unwrap();
        if step == 1 {
            break;
        }
        net.sgd_step(engines, LR, &sgd).unwrap();
    }
    let before = (
        net.read_params(engines).unwrap(),
        net.read_grads(engines).unwrap(),
        net.read_momentum(engines).unwrap(),
    );
    net.sgd_step(engines, LR, &sgd).unwrap();
    let after = (
        net.read_params(engines).unwrap(),
        net.read_momentum(engines).unwrap(),
    );
    (before, after)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The engine's LARS step against Algorithm 1 in f64 (weights; the paper's rule at the plain
/// rate for biases), tensor by tensor.
///
/// Tolerance: the reference starts from the engine's own f32 values, so the only differences
/// are the engine's f32 roundings. The norms are summed in f64 on both sides (relative error
/// ~1e-16 · len), and the rate lr·ratio is rounded once to f32 (2^-24 relative). The update
/// `v' = m v - wd r w - r g; w' = w + v'` rounds at most 6 times in f32, each within 2^-24 of a
/// term no larger than |w| + m|v| + r(wd|w| + |g|); so every element is within
/// 8 · 2^-24 · (that sum) of the reference. A rate off by a per-column norm instead of the whole
/// layer's (a few per cent) moves elements by ~1e-5 |w|, a hundred times that bound.
fn assert_matches_algorithm_1(
    (params, grads, momentum): &(HostTensors, HostTensors, HostTensors),
    (params_after, momentum_after): &(HostTensors, HostTensors),
) {
    let sgd = Sgd::default();
    let eps = 2f64.powi(-24);
    let mut ratios = Vec::new();
    for i in 0..params.len() {
        let (name, _, w) = &params[i];
        let is_bias = name.ends_with(".bias");
        let (mut w64, g64) = (f64s(w), f64s(&grads[i].2));
        // Algorithm 1's velocity is the negative of the paper's (it subtracts v from w).
        let mut v64: Vec<f64> = momentum[i].2.iter().map(|&v| -(v as f64)).collect();
        let (m, wd) = (sgd.momentum as f64, sgd.weight_decay as f64);
        let rate = if is_bias {
            let mut paper_v = f64s(&momentum[i].2);
            alexnet_reference::sgd_update(&mut w64, &g64, &mut paper_v, LR as f64, m, 0.0);
            v64 = paper_v.iter().map(|v| -v).collect();
            LR as f64
        } else {
            let local = alexnet_reference::large_batch::lars_local_lr(&w64, &g64, ETA as f64, wd);
            ratios.push(local);
            alexnet_reference::large_batch::lars_update(
                &mut w64, &g64, &mut v64, LR as f64, m, wd, ETA as f64,
            );
            LR as f64 * local
        };
        let decay = if is_bias { 0.0 } else { wd };
        for j in 0..w.len() {
            let scale = w[j].abs() as f64
                + m * (momentum[i].2[j].abs() as f64)
                + rate * (decay * w[j].abs() as f64 + grads[i].2[j].abs() as f64);
            let tol = 8.0 * eps * scale;
            let got_w = params_after[i].2[j] as f64;
            let got_v = -(momentum_after[i].2[j] as f64);
            assert!(
                (got_w - w64[j]).abs() <= tol && (got_v - v64[j]).abs() <= tol,
                "{name}[{j}]: engine w {got_w} v {got_v}, reference w {} v {} (tolerance {tol:e})",
                w64[j],
                v64[j]
            );
        }
    }
    // The test means something only if the layers' ratios differ from each other and from 1.
    assert!(ratios.iter().all(|&r| r != 1.0), "{ratios:?}");
    let spread = ratios.iter().cloned().fold(0.0, f64::max)
        / ratios.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(spread > 1.5, "LARS ratios too alike to test: {ratios:?}");
}

#[test]
fn lars_step_is_algorithm_1_per_layer() {
    let e = [CpuEngine::new(2).unwrap()];
    let (before, after) = two_lars_steps(&e, false);
    assert_matches_algorithm_1(&before, &after);
}

/// Each column holds a slice of every layer: the trust ratio must still be the whole layer's.
#[test]
fn lars_on_split_columns_uses_whole_layer_norms() {
    let e = [CpuEngine::new(1).unwrap(), CpuEngine::new(1).unwrap()];
    let (before, after) = two_lars_steps(&e, true);
    assert_matches_algorithm_1(&before, &after);
}

/// The rate of every step of a run with `--warmup-epochs` (as the metrics log records it, the
/// rate the update used) is Goyal et al.'s ramp from the paper's-batch rate to --lr. 160 images
/// per step on 480 images: 3 steps an epoch, so 1.5 warmup epochs are 5 steps (rounded up).
/// Tolerance: the f32 rate against the f64 formula, 2^-23 relative.
#[test]
fn warmup_ramps_the_rate_step_by_step() {
    let dir = tempfile::tempdir().unwrap();
    let run = args(&[
        "--preset",
        "cifar10",
        "--input-size",
        "16",
        "--batch-size",
        "160",
        "--builtin-train",
        "480",
        "--builtin-val",
        "16",
        "--classes",
        "4",
        "--workers",
        "1",
        "--lr",
        "0.0125",
        "--warmup-epochs",
        "1.5",
        "--steps",
        "7",
        "--checkpoint-dir",
        dir.path().to_str().unwrap(),
    ]);
    let e = CpuEngine::new(2).unwrap();
    train(std::slice::from_ref(&e), &run, &AtomicBool::new(false)).unwrap();
    let log = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let rates: Vec<f64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "step")
        .map(|r| r["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(rates.len(), 7, "{log}");
    for (t, &got) in rates.iter().enumerate() {
        let want = alexnet_reference::large_batch::warmup_lr(0.0125, 160, 128, 5, t as u64);
        assert!(
            (got - want).abs() <= want * 2f64.powi(-23),
            "step {t}: rate {got}, Goyal et al.'s {want}"
        );
    }
    // From 0.01 (the paper's rate at 128) up to --lr.
    assert!((rates[0] - 0.01).abs() < 1e-9 && rates[6] == rates[5]);
}

/// Warmup needs a batch above the paper's; --lars-eta needs --lars.
#[test]
fn large_batch_flags_refuse_what_they_cannot_do() {
    let e = CpuEngine::new(1).unwrap();
    let small = args(&["--batch-size", "64", "--warmup-epochs", "1", "--steps", "1"]);
    let err = train(std::slice::from_ref(&e), &small, &AtomicBool::new(false)).unwrap_err();
    assert!(err.to_string().contains("--warmup-epochs"), "{err}");
    let orphan = common::try_train_args(&["--lars-eta", "0.01"]).unwrap_err();
    assert!(orphan.to_string().contains("--lars"), "{orphan}");
    assert!(common::try_train_args(&["--lars", "--lars-eta", "2"]).is_err());
}
