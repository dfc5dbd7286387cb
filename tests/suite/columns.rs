//! Model parallelism (Section 3.2) on the CPU engine: the two columns on two separate executors
//! (and both on one) compute the one-executor network's training step, forward and backward,
//! with the same initial weights, dropout masks and checkpoint tensors; and the bytes that cross
//! between columns are exactly the cross-column rows' activations and gradients.

use crate::common::rel_err;
use alexnet::arch::{column_range, ArchConfig, Net};
use alexnet::engine::cpu::CpuEngine;
use alexnet::model::{Init, Sgd};
use alexnet::parallel::{assign_columns, Network};
use alexnet::rng::Rng;

const N: usize = 3;

/// A small two-column net (input 67: every layer present, 1x1 maps after pool5), dropout on.
fn cfg() -> ArchConfig {
    ArchConfig {
        classes: 10,
        input_size: 67,
        ..Default::default()
    }
}

fn batch(cfg: &ArchConfig) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(5);
    let len = N * 3 * cfg.input_size * cfg.input_size;
    // Pixel-scale inputs (mean-subtracted 0..255 images have std ~50).
    let images = (0..len).map(|_| (rng.normal() * 50.0) as f32).collect();
    let labels = (0..N).map(|_| rng.below(cfg.classes) as u32).collect();
    (images, labels)
}

/// One training step (forward with dropout, backward, SGD) of `net`; returns the loss.
fn step(net: &mut Network<CpuEngine>, engines: &[CpuEngine], cfg: &ArchConfig) -> f32 {
    let (images, labels) = batch(cfg);
    net.forward(engines, &images, Some(77)).unwrap();
    let loss = net.backward(engines, &labels, Some(77)).unwrap();
    net.sgd_step(engines, 0.01, &Sgd::default()).unwrap();
    loss
}

/// The split network against the whole one. The two differ only in the order f32 sums are
/// taken (a cross-column row's input gradient is summed per column, then the columns are
/// added), so each is within f32 rounding of the exact value and of each other: norm-wise 1e-5
/// is ~100x that rounding (sqrt(K) * 6e-8 for K up to 4096) yet a wrong block (a column's maps
/// in the wrong place, a missing gradient sum, a different dropout mask) is O(1).
fn check_split_matches_whole(cfg: ArchConfig, executors: usize) {
    let whole_engine = [CpuEngine::new(2).unwrap()];
    let split_engines: Vec<CpuEngine> = (0..executors)
        .map(|_| CpuEngine::new(2 / executors).unwrap())
        .collect();
    let mut whole = Network::new(&whole_engine, false, cfg.clone(), Init::Paper, 9, N).unwrap();
    let mut split = Network::new(&split_engines, true, cfg.clone(), Init::Paper, 9, N).unwrap();

    // Same initial weights, bit for bit: each column draws its slice of the same streams.
    let (pw, ps) = (
        whole.read_params(&whole_engine).unwrap(),
        split.read_params(&split_engines).unwrap(),
    );
    assert_eq!(pw.len(), ps.len());
    for (a, b) in pw.iter().zip(&ps) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        assert!(a.2 == b.2, "{}: initial values differ", a.0);
    }

    let lw = step(&mut whole, &whole_engine, &cfg);
    let ls = step(&mut split, &split_engines, &cfg);
    assert!(
        ((lw - ls) / lw).abs() < 1e-5,
        "loss: whole {lw}, split {ls}"
    );
    let (gw, gs) = (
        whole.read_grads(&whole_engine).unwrap(),
        split.read_grads(&split_engines).unwrap(),
    );
    for (a, b) in gw.iter().zip(&gs) {
        let e = rel_err(&b.2, &a.2);
        assert!(e < 1e-5, "gradient of {}: relative difference {e:.2e}", a.0);
    }
    let (pw, ps) = (
        whole.read_params(&whole_engine).unwrap(),
        split.read_params(&split_engines).unwrap(),
    );
    for (a, b) in pw.iter().zip(&ps) {
        let e = rel_err(&b.2, &a.2);
        assert!(
            e < 1e-5,
            "{} after the step: relative difference {e:.2e}",
            a.0
        );
    }
    let (tw, ts) = (
        whole.train_probabilities(&whole_engine).unwrap(),
        split.train_probabilities(&split_engines).unwrap(),
    );
    assert!(rel_err(&ts, &tw) < 1e-5);

    // Traffic: each cross-column row moves, forward, every column's maps to the other column
    // and, backward, the same amount of gradient; the logits go to column 0 and their
    // gradient comes back.
    let plan = cfg.plan().unwrap();
    let mut want = 0u64;
    for (r, p) in plan.iter().enumerate() {
        if r > 0 && p.layer.reads_all_columns {
            let prev = plan[r - 1].output;
            let plane = (prev.h * prev.w) as u64;
            for c in 0..2 {
                let own = column_range(prev.c, c, 2).len() as u64;
                want += 2 * N as u64 * own * plane * 4; // to the other column, and back
            }
        }
    }
    want += 2 * N as u64 * column_range(cfg.classes, 1, 2).len() as u64 * 4;
    let t = split.traffic();
    assert_eq!(t.between_columns, want);
    let expected_executor_bytes = if executors == 2 { want } else { 0 };
    assert_eq!(t.between_executors, expected_executor_bytes);
}

#[test]
fn two_columns_on_two_executors_equal_one_executor() {
    check_split_matches_whole(cfg(), 2);
}

#[test]
fn two_columns_on_one_executor_equal_one_executor() {
    check_split_matches_whole(cfg(), 1);
}

/// Other connectivity (conv5 also reads both columns): still the one-executor function, and
/// one more gather's worth of traffic.
#[test]
fn other_connectivity_splits_the_same_way() {
    let cfg = ArchConfig {
        cross_column: ["conv3", "conv5", "fc6", "fc7", "fc8"]
            .map(String::from)
            .to_vec(),
        ..cfg()
    };
    check_split_matches_whole(cfg, 2);
}

/// Checkpoint tensors of a split net load into a whole net (and back) unchanged.
#[test]
fn split_and_whole_share_checkpoint_tensors() {
    let cfg = cfg();
    let engines = [CpuEngine::new(1).unwrap(), CpuEngine::new(1).unwrap()];
    let split = Network::new(&engines, true, cfg.clone(), Init::Caffe, 3, 1).unwrap();
    let mut whole = Network::new(&engines[..1], false, cfg.clone(), Init::Paper, 4, 1).unwrap();
    let tensors = split.read_params(&engines).unwrap();
    for (name, shape, values) in &tensors {
        whole
            .write_param(&engines[..1], name, shape, values, false)
            .unwrap();
    }
    assert!(whole.read_params(&engines[..1]).unwrap() == tensors);
    let mut back = Network::new(&engines, true, cfg, Init::Paper, 5, 1).unwrap();
    for (name, shape, values) in &tensors {
        back.write_param(&engines, name, shape, values, false)
            .unwrap();
    }
    assert!(back.read_params(&engines).unwrap() == tensors);
    // A tensor of the wrong shape is refused by name.
    let (name, shape, values) = &tensors[0];
    let mut bad = shape.clone();
    bad[0] -= 1;
    let one_row = values.len() / shape[0];
    let err = back
        .write_param(
            &engines,
            name,
            &bad,
            &values[..values.len() - one_row],
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains(name), "{err}");
}

#[test]
fn column_placement() {
    assert_eq!(assign_columns(2, 2).unwrap(), vec![0, 1]);
    assert_eq!(assign_columns(2, 1).unwrap(), vec![0, 0]);
    assert!(assign_columns(2, 3).is_err());
    assert!(assign_columns(2, 0).is_err());
    // The one-column net (footnote 2) "split" is itself.
    let cfg = ArchConfig {
        net: Net::OneColumn,
        ..cfg()
    };
    let engines = [CpuEngine::new(1).unwrap()];
    let net = Network::new(&engines, true, cfg, Init::Paper, 1, 1).unwrap();
    assert_eq!(net.read_params(&engines).unwrap().len(), 16);
}
