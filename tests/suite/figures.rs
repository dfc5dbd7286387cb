//! Figures 3 and 4 and the feature commands end to end on a tiny two-column net and a tiny
//! prepared dataset (seconds): kernel picture size and colour measure, prediction bars, feature
//! extraction against the model's own activations, exact neighbour search.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use alexnet::arch::{ArchConfig, Kind, Layer, Net, ParamInit, Table};
use alexnet::checkpoint::{Checkpoint, NamedTensor};
use alexnet::data::{centre_crop, Dataset, PackedDataset, PrepareArgs};
use alexnet::engine::cpu::CpuEngine;
use alexnet::eval::Prediction;
use alexnet::features::{
    feature_layer, nearest, FeatureFile, FeaturesArgs, ModelOverData, NeighboursArgs,
};
use alexnet::figures::{
    bar_origin, colour_share, kernel_figure_size, prediction_picture, prediction_picture_size,
    KernelsArgs, PredictionPanel, BAR_HEIGHT,
};
use alexnet::model::{Init, Model};
use alexnet::rng::Rng;
use clap::Parser;

const SIDE: usize = 20;
const CLASSES: usize = 4;

/// A two-column net for 16x16 inputs with the paper's head: conv1 (8 kernels of 5x5, 4 per
/// column), pool, fc6, relu6, drop6, fc7, relu7, drop7, fc8.
fn tiny_net() -> ArchConfig {
    let row = |name: &str, kind: Kind| Layer {
        name: name.into(),
        kind,
        columns: 2,
        reads_all_columns: true,
    };
    let init = ParamInit {
        std: 0.02,
        bias: 0.1,
    };
    let fc = |out| Kind::Fc { out, init };
    let layers = vec![
        row(
            "conv1",
            Kind::Conv {
                out: 8,
                k: 5,
                stride: 1,
                pad: 0,
                init,
            },
        ),
        row("relu1", Kind::Relu),
        row("pool1", Kind::MaxPool { size: 2, stride: 2 }),
        row("fc6", fc(12)),
        row("relu6", Kind::Relu),
        row("drop6", Kind::Dropout),
        row("fc7", fc(10)),
        row("relu7", Kind::Relu),
        row("drop7", Kind::Dropout),
        row("fc8", fc(CLASSES)),
    ];
    let net = Net::Table(Table {
        name: "tiny".into(),
        input_size: Some(16),
        layers,
    });
    ArchConfig::for_net(net, Some(CLASSES), Some(16))
}

/// A checkpoint of `cfg` with freshly initialised weights, then `edit` applied to them.
fn checkpoint(cfg: &ArchConfig, path: &Path, edit: impl Fn(&str, &mut Vec<f32>)) {
    let e = CpuEngine::new(1).unwrap();
    let model = Model::new(&e, cfg.clone(), Init::Paper, 7, 1).unwrap();
    let params = model
        .read_params(&e)
        .unwrap()
        .into_iter()
        .map(|(name, shape, mut values)| {
            edit(&name, &mut values);
            NamedTensor::new(name, shape, values)
        })
        .collect();
    Checkpoint {
        arch: cfg.clone(),
        class_names: (0..CLASSES).map(|c| format!("n0{c} class{c}")).collect(),
        mean: Some(vec![110.0; 3 * SIDE * SIDE]),
        mean_side: SIDE,
        eigval: None,
        eigvec: None,
        params,
        momentum: Vec::new(),
        train_state: None,
        extra_metadata: BTreeMap::new(),
    }
    .save(path)
    .unwrap();
}

#[test]
fn paper_figure_3_layout_has_the_hand_computed_size() {
    // 48 kernels per column, 16 per row: 3 rows per column, 6 in all. A cell is an 11x11 kernel
    // at 4 px plus a 4 px gap (48 px); 4 px border; 16 px between the blocks.
    assert_eq!(
        kernel_figure_size(&[48, 48], 11, 4, 16),
        (4 + 16 * 48, 4 + 6 * 48 + 16)
    );
    // One column of 48: one block, no separator.
    assert_eq!(
        kernel_figure_size(&[48], 11, 4, 16),
        (4 + 16 * 48, 4 + 3 * 48)
    );
}

#[test]
fn colour_share_is_zero_for_grey_and_one_for_pure_chroma() {
    let mut rng = Rng::new(3);
    let plane = 25;
    let grey: Vec<f32> = {
        let g: Vec<f32> = (0..plane).map(|_| rng.normal() as f32).collect();
        [g.clone(), g.clone(), g].concat()
    };
    // R - G with B = 0 at every pixel, scaled differently per pixel: channels sum to zero.
    let chroma: Vec<f32> = {
        let a: Vec<f32> = (0..plane).map(|_| rng.normal() as f32).collect();
        let minus: Vec<f32> = a.iter().map(|v| -v).collect();
        [a, minus, vec![0.0; plane]].concat()
    };
    // f32 inputs summed in f64: exact to about 1e-7 relative.
    assert!(colour_share(&grey).abs() < 1e-7, "{}", colour_share(&grey));
    assert!((colour_share(&chroma) - 1.0).abs() < 1e-7);
    // Pure red: its energy off grey is (1 - 1/3)^2 + 2 (1/3)^2 = 2/3 of it.
    let red = [vec![1.0; plane], vec![0.0; plane], vec![0.0; plane]].concat();
    assert!((colour_share(&red) - 2.0 / 3.0).abs() < 1e-7);
}

#[test]
fn kernels_draws_each_column_and_measures_its_colour() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("tiny.safetensors");
    let cfg = tiny_net();
    // Column 1 (kernels 0..4): grey; column 2 (4..8): pure chroma (G - B).
    checkpoint(&cfg, &ckpt, |name, w| {
        if name == "conv1.weight" {
            let per = 75;
            for (i, k) in w.chunks_mut(per).enumerate() {
                let base: Vec<f32> = k[..25].to_vec();
                for p in 0..25 {
                    let (r, g, b) = if i < 4 {
                        (base[p], base[p], base[p])
                    } else {
                        (0.0, base[p], -base[p])
                    };
                    (k[p], k[25 + p], k[50 + p]) = (r, g, b);
                }
            }
        }
    });
    let out = tmp.path().join("fig3.png");
    let report = KernelsArgs {
        checkpoint: ckpt,
        out: out.clone(),
        scale: 3,
        per_row: 16,
    }
    .run()
    .unwrap();
    // Two blocks of one row of four 5x5 kernels at 3 px: cell 18 px, border 3, separator 12.
    let img = image::open(&out).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (3 + 4 * 18, 3 + 2 * 18 + 12));
    assert_eq!(report.png_size, (75, 51));
    let cols = &report.columns;
    assert_eq!(cols.len(), 2);
    assert_eq!((cols[0].kernels, cols[1].kernels), (4, 4));
    assert!(cols[0].mean_colour_share < 1e-7, "{cols:?}");
    assert!((cols[1].mean_colour_share - 1.0).abs() < 1e-7, "{cols:?}");
    assert_eq!((cols[0].colour_specific, cols[1].colour_specific), (0, 4));
    // Column 1's kernels are drawn grey (R = G = B), column 2's are not.
    let px = img.get_pixel(3 + 7, 3 + 7).0;
    assert!(px[0] == px[1] && px[1] == px[2], "{px:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(json["columns"][1]["kernels"], 4);
    assert_eq!(json["layer"], "conv1");
}

#[test]
fn prediction_picture_marks_the_true_class_bar_red() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fig4.png");
    let prediction = Prediction {
        path: "x.png".into(),
        top: vec![
            (2, "two".into(), 0.6),
            (0, "zero".into(), 0.3),
            (3, "three".into(), 0.1),
        ],
    };
    let side = 32;
    let panel = |truth: Option<usize>| PredictionPanel {
        prediction: &prediction,
        pixels: vec![90; 3 * side * side],
        side,
        truth: truth.map(|c| (c, format!("class {c}"))),
    };
    prediction_picture(&[panel(Some(0)), panel(None)], &out).unwrap();
    let img = image::open(&out).unwrap().to_rgb8();
    let (w, h) = prediction_picture_size(2, 3);
    assert_eq!(img.dimensions(), (w as u32, h as u32));
    // The pixel just inside each bar's left end, below the text.
    let at = |panel, bar| {
        let (x, y) = bar_origin(panel, bar);
        img.get_pixel(x as u32 + 1, (y + BAR_HEIGHT - 2) as u32).0
    };
    let red = |p: [u8; 3]| p[0] > 200 && p[1] < 100 && p[2] < 100;
    assert!(red(at(0, 1)), "the true class's bar: {:?}", at(0, 1));
    assert!(
        !red(at(0, 0)) && !red(at(1, 1)),
        "{:?} {:?}",
        at(0, 0),
        at(1, 1)
    );
}

#[derive(Parser)]
struct PrepareCli {
    #[command(flatten)]
    args: PrepareArgs,
}

/// A prepared dataset of 4 classes x 3 random 20x20 images (stored as they are: no resize), and
/// the source files in class order.
fn prepared(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let (src, out) = (dir.join("src"), dir.join("prepared"));
    let mut rng = Rng::new(11);
    let mut files = Vec::new();
    for c in 0..CLASSES {
        let class_dir = src.join(format!("c{c}"));
        std::fs::create_dir_all(&class_dir).unwrap();
        for i in 0..3 {
            let img = image::RgbImage::from_fn(SIDE as u32, SIDE as u32, |_, _| {
                image::Rgb([0, 1, 2].map(|_| rng.below(256) as u8))
            });
            let path = class_dir.join(format!("img{i}.png"));
            img.save(&path).unwrap();
            files.push(path);
        }
    }
    let args = PrepareCli::try_parse_from([
        "prepare",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--side",
        "20",
        "--quiet",
    ])
    .unwrap()
    .args;
    alexnet::data::prepare(&args).unwrap();
    (out, files)
}

#[test]
fn feature_row_is_found_by_position_and_kind() {
    let paper = feature_layer(&ArchConfig::default()).unwrap();
    assert_eq!(
        (paper.description.as_str(), paper.dim),
        ("fc7 (after relu7)", 4096)
    );
    // cuda-convnet's CIFAR-10 net has one fully connected layer: its input, pool3's 64x3x3.
    let cifar = feature_layer(&ArchConfig::for_net(Net::Cifar10, None, None)).unwrap();
    assert_eq!(
        (cifar.description.as_str(), cifar.dim),
        ("conv3 (after pool3)", 576)
    );
}

#[test]
fn features_are_fc7_after_relu_and_neighbours_find_the_query_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, files) = prepared(tmp.path());
    let cfg = tiny_net();
    let ckpt = tmp.path().join("tiny.safetensors");
    checkpoint(&cfg, &ckpt, |_, _| {});
    let e = CpuEngine::new(2).unwrap();
    let out = tmp.path().join("features.safetensors");
    let summary = FeaturesArgs {
        input: ModelOverData {
            checkpoint: ckpt.clone(),
            data: data.clone(),
            split: "train".into(),
            batch_size: 5,
        },
        out: out.clone(),
    }
    .run(&e)
    .unwrap();
    assert_eq!((summary.images, summary.dim), (12, 10));
    let file = FeatureFile::open(&out).unwrap();
    let ds = PackedDataset::open(&data, "train").unwrap();
    assert_eq!((file.rows, file.dim), (12, 10));
    assert_eq!(file.paths, ds.source_paths());
    assert_eq!(file.class_names.len(), CLASSES);

    // The same images through a full test-mode forward: the buffer relu7 shares with drop7
    // then holds 0.5 * relu(fc7) (the paper's test-time dropout scaling); features are before it.
    let stats = alexnet::features::load_model(&e, &ckpt, 1).unwrap().2;
    let mut model = alexnet::features::load_model(&e, &ckpt, 12).unwrap().0;
    let mut crops = vec![0.0; 12 * 3 * 16 * 16];
    let mut labels = Vec::new();
    for (i, out) in crops.chunks_mut(3 * 16 * 16).enumerate() {
        let mut px = vec![0u8; 3 * SIDE * SIDE];
        labels.push(ds.read(i, &mut px).unwrap());
        centre_crop(&px, SIDE, 16, &stats, out);
    }
    model.forward(&e, &crops, None).unwrap();
    let after_dropout = model.activation(&e, "relu7").unwrap();
    let feats = file.features();
    assert!(feats.iter().any(|&v| v > 0.0) && feats.iter().all(|&v| v >= 0.0));
    // Same engine and ops, batch 5 vs 12: the GEMMs may block differently, so f32 rounding
    // (~1e-6 relative over these short sums) is all that may differ.
    for (f, a) in feats.iter().zip(&after_dropout) {
        assert!(
            (f - 2.0 * a).abs() <= 1e-5 * (1.0 + f.abs()),
            "{f} vs 2 x {a}"
        );
    }
    assert_eq!(file.labels, labels, "labels in dataset order");

    // Neighbours: a training image as the query finds itself first, at distance ~0.
    let query = files[7].clone();
    let own = ds
        .source_paths()
        .iter()
        .position(|p| Path::new(p) == query)
        .unwrap();
    let png = tmp.path().join("fig4.png");
    let args = |features: Option<PathBuf>| NeighboursArgs {
        input: ModelOverData {
            checkpoint: ckpt.clone(),
            data: data.clone(),
            split: "train".into(),
            batch_size: 4,
        },
        query: vec![query.clone(), files[0].clone()],
        k: 3,
        out: png.clone(),
        features,
        codes: no_codes(),
    };
    let report = args(None).run(&e).unwrap();
    let first = report.queries[0].neighbours[0].clone();
    let norm = feats[own * 10..(own + 1) * 10]
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt();
    assert_eq!(first.index, own);
    // ||q||^2 + ||x||^2 - 2 q.x cancels to ~1e-7 ||q||^2 in f32: a distance of ~3e-4 ||q||.
    assert!(
        first.distance <= 1e-3 * norm,
        "{} (norm {norm})",
        first.distance
    );
    assert_eq!(report.queries[0].neighbours.len(), 3);
    let img = image::open(&png).unwrap().to_rgb8();
    let (w, h) = alexnet::features::neighbours_figure_size(2, 3);
    assert_eq!(img.dimensions(), (w as u32, h as u32));
    assert!(png.with_extension("json").exists());
    assert_eq!(report.png.as_deref(), Some(png.as_path()));
    assert!(report.codes.is_none());

    // From the features file: the same answer.
    let stored = args(Some(out.clone())).run(&e).unwrap();
    for (a, b) in stored.queries.iter().zip(&report.queries) {
        let idx = |q: &alexnet::features::QueryResult| {
            q.neighbours.iter().map(|n| n.index).collect::<Vec<_>>()
        };
        assert_eq!(idx(a), idx(b));
    }
    // A features file of another split is refused, naming what differs.
    let mut wrong = args(Some(out));
    wrong.input.split = "val".into();
    let err = wrong
        .run(&e)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("val"), "{err}");
}

/// `neighbours` without `--codes` (its flags' defaults).
fn no_codes() -> alexnet::codes::CodesArgs {
    #[derive(Parser)]
    struct CodesCli {
        #[command(flatten)]
        args: alexnet::codes::CodesArgs,
    }
    CodesCli::parse_from(["codes"]).args
}

#[test]
fn exact_search_matches_brute_force_in_f64() {
    let mut rng = Rng::new(5);
    let (rows, dim, m, k) = (5000, 24, 3, 7);
    let db: Vec<f32> = (0..rows * dim).map(|_| rng.normal() as f32).collect();
    let queries: Vec<f32> = (0..m * dim).map(|_| rng.normal() as f32).collect();
    let found = nearest(&db, dim, &queries, k).unwrap();
    for (q, got) in queries.chunks(dim).zip(&found) {
        let mut exact: Vec<(f64, usize)> = db
            .chunks(dim)
            .enumerate()
            .map(|(i, x)| {
                let d: f64 = q
                    .iter()
                    .zip(x)
                    .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                    .sum();
                (d.sqrt(), i)
            })
            .collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(got.len(), k);
        // Distances ~7 here; f32 expansion error ~1e-6 * ||q||^2 ~ 3e-5 on d^2: 1e-4 is ample.
        for (n, &(d, i)) in got.iter().zip(&exact) {
            assert!(
                (n.distance as f64 - d).abs() < 1e-4,
                "{} vs {d}",
                n.distance
            );
            // A different index only where f64 puts the two within the error of each other.
            let own = exact.iter().find(|e| e.1 == n.index).unwrap().0;
            assert!(n.index == i || (own - d).abs() < 1e-4, "{} vs {i}", n.index);
        }
    }
}
