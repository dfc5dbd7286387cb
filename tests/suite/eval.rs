//! Evaluation and prediction end to end on a tiny prepared dataset whose answers are known by
//! hand: a network with zero weights outputs softmax(fc8.bias) for every image, so which labels
//! fall in its top-1 and top-5 is fixed by the bias ranking alone.

use std::path::Path;

use alexnet::arch::ArchConfig;
use alexnet::data::{Dataset, PackedDataset, PrepareArgs};
use alexnet::engine::cpu::CpuEngine;
use alexnet::eval::{evaluate_ensemble, predict_files, EvalOptions};
use alexnet::model::{Init, Model};
use alexnet::parallel::Network;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: PrepareArgs,
}

/// Writes `count` 300x280 PNGs of a flat colour into `dir`.
fn write_images(dir: &Path, count: usize, shade: u8) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        let img = image::RgbImage::from_pixel(300, 280, image::Rgb([shade, 40 + i as u8, 90]));
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
}

/// The bias ranking: class 2 first, then 0, 7, 5, 1, then the rest.
const RANKING: [usize; 10] = [2, 0, 7, 5, 1, 3, 4, 6, 8, 9];

fn constant_model(e: &CpuEngine) -> Network<CpuEngine> {
    let cfg = ArchConfig {
        classes: 10,
        ..ArchConfig::default()
    };
    let mut m = Model::new(e, cfg, Init::Paper, 1, 4).unwrap();
    for (name, shape, values) in m.read_params(e).unwrap() {
        let mut v = vec![0.0; values.len()];
        if name == "fc8.bias" {
            for (rank, &class) in RANKING.iter().enumerate() {
                v[class] = 10.0 - rank as f32;
            }
        }
        m.write_param(e, &name, &shape, &v, false).unwrap();
    }
    Network::Whole(m)
}

#[test]
fn top1_top5_and_ten_crop_match_the_hand_computed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, val, out) = (
        tmp.path().join("train"),
        tmp.path().join("val"),
        tmp.path().join("prepared"),
    );
    for c in 0..10 {
        write_images(&train.join(format!("c{c}")), 1, 20 * c as u8);
    }
    // Validation labels: three of class 0, two of 1, one of 2, two of 5, two of 9.
    for (c, count) in [(0, 3), (1, 2), (2, 1), (5, 2), (9, 2)] {
        write_images(&val.join(format!("c{c}")), count, 20 * c as u8);
    }
    let args = Cli::try_parse_from([
        "prepare",
        train.to_str().unwrap(),
        out.to_str().unwrap(),
        "--val-dir",
        val.to_str().unwrap(),
        "--quiet",
    ])
    .unwrap()
    .args;
    alexnet::data::prepare(&args).unwrap();
    let ds = PackedDataset::open(&out, "val").unwrap();
    let stats = PackedDataset::stats(&out).unwrap();
    assert_eq!(ds.len(), 10);

    let e = CpuEngine::new(2).unwrap();
    let mut models = vec![constant_model(&e), constant_model(&e)];
    let opts = EvalOptions {
        batch: 20,
        ten_crop: true,
        workers: 2,
    };
    let r = evaluate_ensemble(std::slice::from_ref(&e), &mut models, &ds, &stats, &opts).unwrap();
    // Top-1 is class 2 for every image: only the one class-2 image is right -> 9/10 wrong.
    // Top-5 is {2, 0, 7, 5, 1}: the two class-9 images are the only misses -> 2/10 wrong.
    assert_eq!(r.images, 10);
    assert!((r.top1 - 0.9).abs() < 1e-6, "top-1 error {}", r.top1);
    assert!((r.top5 - 0.2).abs() < 1e-6, "top-5 error {}", r.top5);
    let (t1, t5) = r.ten_crop.unwrap();
    assert!(
        (t1 - 0.9).abs() < 1e-6 && (t5 - 0.2).abs() < 1e-6,
        "{t1} {t5}"
    );
    // Per class: class 2 always right at top-1, class 9 never at top-5.
    let acc = r.per_class.accuracies();
    assert_eq!(acc[2], Some((1.0, 1.0)));
    assert_eq!(acc[9], Some((0.0, 0.0)));
    assert_eq!(acc[0], Some((0.0, 1.0)));

    // Prediction: the same ranking with softmax probabilities; a broken file fails alone.
    let good = val.join("c0").join("img0.png");
    let broken = tmp.path().join("broken.jpg");
    std::fs::write(&broken, b"not a jpeg").unwrap();
    // A JPEG cut short: its decoder would fill the missing rows with grey and answer.
    let truncated = tmp.path().join("truncated.jpg");
    let photo = image::RgbImage::from_fn(300, 280, |x, y| {
        image::Rgb([((x * 7) ^ (y * 3)) as u8, (x + y) as u8, (x * y) as u8])
    });
    photo.save(&truncated).unwrap();
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let names: Vec<String> = (0..10).map(|c| format!("c{c}")).collect();
    let preds = predict_files(
        std::slice::from_ref(&e),
        &mut models,
        &names,
        &stats,
        &[good, broken, truncated],
        false,
        5,
    );
    let p = preds[0].as_ref().unwrap();
    let classes: Vec<usize> = p.top.iter().map(|t| t.0).collect();
    assert_eq!(classes, RANKING[..5]);
    assert_eq!(p.top[0].1, "c2");
    // softmax of biases 10, 9, ..., 1: the first is e^9 / sum_k e^k.
    let z: f32 = (1..=10).map(|k| (k as f32 - 10.0).exp()).sum();
    assert!((p.top[0].2 - 1.0 / z).abs() < 1e-5, "{}", p.top[0].2);
    let err = preds[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("broken.jpg"), "{err}");
    let err = preds[2].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("truncated.jpg") && err.contains("truncated:"),
        "{err}"
    );
}

/// The inference model (no gradient buffers) computes exactly the training model's test-mode
/// forward with the same weights, and refuses backward and the update with a message.
#[test]
fn inference_model_equals_the_training_models_test_forward() {
    let e = CpuEngine::new(2).unwrap();
    let cfg = ArchConfig {
        classes: 10,
        input_size: 67,
        ..ArchConfig::default()
    };
    let n = 2;
    let mut trained = Model::new(&e, cfg.clone(), Init::Caffe, 3, n).unwrap();
    let mut inference = Model::for_inference(&e, cfg, n).unwrap();
    for (name, shape, values) in trained.read_params(&e).unwrap() {
        inference
            .write_param(&e, &name, &shape, &values, false)
            .unwrap();
    }
    let mut rng = alexnet::rng::Rng::new(4);
    let images: Vec<f32> = (0..n * 3 * 67 * 67)
        .map(|_| rng.normal() as f32 * 40.0)
        .collect();
    trained.forward(&e, &images, None).unwrap();
    inference.forward(&e, &images, None).unwrap();
    // The same kernels on the same inputs in the same order: bit-identical, not just close.
    assert_eq!(
        trained.probabilities(&e).unwrap(),
        inference.probabilities(&e).unwrap()
    );
    let err = inference
        .backward(&e, &[0, 1], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("built for inference"), "{err}");
    let err = inference
        .sgd_step(&e, 0.01, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("built for inference"), "{err}");
}
