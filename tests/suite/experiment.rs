//! The paper's experiments end to end on tiny generated data (seconds each): `experiment fig1`
//! and `cifar-lrn` on CIFAR-10 binary batches written here, `ablate` on a prepared folder of
//! generated PNGs; and He et al.'s initialisation against its formula.

use std::path::Path;

use alexnet::arch::{ArchConfig, Kind, Net};
use alexnet::data::prepare::{prepare, PrepareArgs};
use alexnet::engine::cpu::CpuEngine;
use alexnet::engine::LrnParams;
use alexnet::experiment::ablate::{run_ablate, AblateArgs};
use alexnet::experiment::fig1::{
    cifar_net, run_cifar_lrn, run_fig1, CifarArgs, CifarLrnArgs, Fig1Args,
};
use alexnet::model::{fan_in, Init, Model};
use alexnet::train::InitArg;

/// `n` CIFAR-10 records whose class shows in their colour (class c: red level 25 c), with noise,
/// so that a few steps can learn something.
fn cifar_records(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = alexnet::rng::Rng::new(seed);
    let mut out = Vec::new();
    for i in 0..n {
        let label = (i % 10) as u8;
        out.push(label);
        for channel in 0..3 {
            for _ in 0..1024 {
                let base = if channel == 0 {
                    25.0 * label as f64
                } else {
                    100.0
                };
                out.push((base + 20.0 * rng.normal()).clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

fn cifar_dir(dir: &Path) {
    std::fs::write(dir.join("data_batch_1.bin"), cifar_records(48, 1)).unwrap();
    std::fs::write(dir.join("data_batch_2.bin"), cifar_records(32, 2)).unwrap();
    std::fs::write(dir.join("test_batch.bin"), cifar_records(20, 3)).unwrap();
}

fn cifar_args(data: &Path, out: &Path) -> CifarArgs {
    CifarArgs {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        train_images: Some(64),
        batch_size: 16,
        momentum: 0.9,
        lrs: vec![0.001, 0.003],
        sweep_steps: 2,
        seed: 1,
        quiet: true,
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn fig1_races_relu_and_tanh_and_draws_the_figure() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    cifar_dir(data.path());
    let e = CpuEngine::new(2).unwrap();
    let args = Fig1Args {
        cifar: cifar_args(data.path(), &out.path().join("fig")),
        max_epochs: 3,
        target: 0.25,
    };
    let r = run_fig1(std::slice::from_ref(&e), &args).unwrap();
    assert_eq!(r.train_images, 64);
    let acts: Vec<&str> = r.runs.iter().map(|run| run.activation.as_str()).collect();
    assert_eq!(acts, ["relu", "tanh"]);
    for run in &r.runs {
        assert!([0.001, 0.003].contains(&run.lr), "{}", run.lr);
        assert_eq!(run.sweep.len(), 2);
        // 64 images in batches of 16: 4 steps an epoch; stopped at the target or at 3 epochs.
        assert!((1..=3).contains(&run.epochs.len()));
        let last = run.epochs.last().unwrap();
        assert_eq!(last.steps, 4 * run.epochs.len() as u64);
        assert!(run.epochs.windows(2).all(|w| w[1].seconds > w[0].seconds));
        for p in &run.epochs {
            assert!((0.0..=1.0).contains(&p.train_error), "{p:?}");
        }
        assert_eq!(run.reached.is_some(), last.train_error <= 0.25);
    }
    let fig = out.path().join("fig");
    let png = image::open(fig.join("fig1.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1000, 750));
    let j = json(&fig.join("fig1.json"));
    assert_eq!(j["runs"].as_array().unwrap().len(), 2);
    assert_eq!(j["paper_ratio"], 6.0);
}

#[test]
fn cifar_lrn_tests_both_nets_on_the_test_batch() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    cifar_dir(data.path());
    let e = CpuEngine::new(2).unwrap();
    let args = CifarLrnArgs {
        cifar: cifar_args(data.path(), out.path()),
        epochs: 1,
    };
    let r = run_cifar_lrn(std::slice::from_ref(&e), &args).unwrap();
    assert_eq!((r.train_images, r.test_images), (64, 20));
    assert_eq!(
        r.runs.iter().map(|x| x.lrn).collect::<Vec<_>>(),
        [false, true]
    );
    for run in &r.runs {
        assert_eq!(run.epochs.len(), 1);
        // A whole number of the 20 test images.
        let wrong = run.test_top1 * 20.0;
        assert!((wrong - wrong.round()).abs() < 1e-4, "{}", run.test_top1);
    }
    let j = json(&out.path().join("cifar-lrn.json"));
    assert_eq!(j["paper_test_error"][1].as_f64().unwrap() as f32, 0.11);
}

#[test]
fn the_variants_are_the_table_with_rows_changed() {
    let plain = ArchConfig::for_net(Net::Cifar10, None, None).layers();
    let kinds = |net: &Net| {
        ArchConfig::for_net(net.clone(), Some(10), Some(32))
            .plan()
            .unwrap()
            .into_iter()
            .map(|p| p.layer.kind)
            .collect::<Vec<_>>()
    };
    let relu = kinds(&cifar_net("relu", Kind::Relu, None));
    assert_eq!(relu, plain.iter().map(|l| l.kind).collect::<Vec<_>>());
    let tanh = kinds(&cifar_net("tanh", Kind::Tanh, None));
    for (a, b) in relu.iter().zip(&tanh) {
        match a {
            Kind::Relu => assert_eq!(*b, Kind::Tanh),
            other => assert_eq!(other, b),
        }
    }
    let lrn = kinds(&cifar_net("lrn", Kind::Relu, Some(LrnParams::PAPER)));
    let lrn_at: Vec<usize> = (0..lrn.len())
        .filter(|&i| matches!(lrn[i], Kind::Lrn { .. }))
        .collect();
    // After the first two activations, as layers-18pct's two response normalisations.
    assert_eq!(lrn_at.len(), 2);
    assert!(lrn_at.iter().all(|&i| lrn[i - 1] == Kind::Relu));
    assert_eq!(lrn.len(), relu.len() + 2);
}

#[test]
fn kaiming_init_has_the_formula_s_std_in_every_row() {
    let cfg = ArchConfig::for_net(Net::Paper, Some(10), Some(67));
    let plan = cfg.plan().unwrap();
    let e = CpuEngine::new(2).unwrap();
    let pixel_std = 50.0;
    let model = Model::new(&e, cfg, Init::Kaiming { pixel_std }, 5, 1).unwrap();
    let params = model.read_params(&e).unwrap();
    let mut first = true;
    for p in plan.iter().filter(|p| p.layer.kind.is_weighted()) {
        let find = |suffix: &str| {
            let name = format!("{}.{suffix}", p.layer.name);
            params.iter().find(|t| t.0 == name).unwrap().2.clone()
        };
        let w = find("weight");
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let mut want = (2.0 / fan_in(p) as f64).sqrt();
        if first {
            want /= pixel_std as f64;
            first = false;
        }
        // The sample std of n normal draws has relative standard error 1/sqrt(2n): conv1 has
        // the fewest weights (96 x 3 x 11 x 11 = 34 848), so 1/sqrt(2n) < 0.4%; 3% is over
        // seven of those.
        assert!(
            (std / want - 1.0).abs() < 0.03,
            "{}: std {std}, formula {want}",
            p.layer.name
        );
        assert!(find("bias").iter().all(|&b| b == 0.0), "{}", p.layer.name);
    }
    // The grouped conv2 sums over its own column's 48 maps, not all 96.
    let conv2 = plan.iter().find(|p| p.layer.name == "conv2").unwrap();
    assert_eq!(fan_in(conv2), 48 * 5 * 5);
}

#[test]
fn kaiming_scales_by_the_data_s_pixel_spread() {
    let stats = alexnet::data::Stats {
        side: 1,
        mean: vec![0.0; 3],
        eigval: [2700.0, 600.0, 300.0],
        eigvec: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    };
    // The trace 3600 over three channels: variance 1200 per channel.
    match InitArg::Kaiming.scheme(&stats) {
        Init::Kaiming { pixel_std } => assert!((pixel_std - 1200f32.sqrt()).abs() < 1e-3),
        other => panic!("{other:?}"),
    }
}

/// 2 classes of 8 generated 40x40 PNGs each (red or blue squares on noise), prepared at side 72.
fn prepared_folder(root: &Path) -> std::path::PathBuf {
    let src = root.join("photos");
    let mut rng = alexnet::rng::Rng::new(4);
    for (class, colour) in [("red", [200u8, 30, 30]), ("blue", [30, 30, 200])] {
        std::fs::create_dir_all(src.join(class)).unwrap();
        for i in 0..8 {
            let img = image::RgbImage::from_fn(40, 40, |x, y| {
                let inside = (10..30).contains(&x) && (10..30).contains(&y);
                let noise = (30.0 * rng.normal()) as i32;
                let px = if inside { colour } else { [120, 120, 120] };
                image::Rgb(px.map(|v| (v as i32 + noise).clamp(0, 255) as u8))
            });
            img.save(src.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let out = root.join("prepared");
    prepare(&PrepareArgs {
        src,
        out: out.clone(),
        val_dir: None,
        val_labels: None,
        val_fraction: Some(0.25),
        synsets: None,
        strict: true,
        threads: 2,
        seed: 3,
        side: 72,
        shard_size: 64,
        no_exif: false,
        quiet: true,
        overwrite: false,
    })
    .unwrap();
    out
}

#[test]
fn ablate_trains_the_net_and_every_variant_with_one_budget() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_folder(root.path());
    let e = CpuEngine::new(2).unwrap();
    let args = AblateArgs {
        data,
        out: root.path().join("ablate"),
        steps: 2,
        batch_size: 4,
        input_size: 67,
        lr: 0.001,
        init: InitArg::Kaiming,
        seed: 1,
        quiet: true,
    };
    let r = run_ablate(std::slice::from_ref(&e), &args).unwrap();
    let nets: Vec<&str> = r.rows.iter().map(|row| row.net.as_str()).collect();
    assert_eq!(
        nets,
        [
            "full",
            "no LRN",
            "pool 2/2",
            "no PCA lighting",
            "dropout 0",
            "one column"
        ]
    );
    assert_eq!((r.rows[0].delta_top1, r.rows[0].delta_top5), (0.0, 0.0));
    for row in &r.rows {
        assert!((0.0..=1.0).contains(&row.val_top1), "{row:?}");
        let d = 100.0 * (row.val_top1 - r.rows[0].val_top1);
        assert!((row.delta_top1 - d).abs() < 1e-4, "{row:?}");
        assert!(row.final_train_loss.is_finite(), "{row:?}");
    }
    assert_eq!(r.rows[1].paper_delta_top1, Some(1.4));
    let j = json(&root.path().join("ablate").join("ablate.json"));
    assert_eq!(j["rows"].as_array().unwrap().len(), 6);
    assert_eq!(j["steps"], 2);
}
