//! `neighbours --codes` (Section 6.1's binary codes) on small generated data, seconds each: the
//! auto-encoder learns, Hamming search is exact, precision@k counts right, and the command runs
//! end to end on a tiny net and dataset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use alexnet::arch::{ArchConfig, Kind, Layer, Net, ParamInit, Table};
use alexnet::checkpoint::{Checkpoint, NamedTensor};
use alexnet::codes::{hamming_nearest, precision_at, AutoEncoder, Codes, CodesArgs};
use alexnet::data::PrepareArgs;
use alexnet::engine::cpu::CpuEngine;
use alexnet::features::NeighboursArgs;
use alexnet::model::{Init, Model};
use alexnet::rng::Rng;
use clap::Parser;

#[derive(Parser)]
struct CodesCli {
    #[command(flatten)]
    args: CodesArgs,
}

#[derive(Parser)]
struct NeighboursCli {
    #[command(flatten)]
    args: NeighboursArgs,
}

fn codes_args(extra: &[&str]) -> CodesArgs {
    CodesCli::try_parse_from([&["codes"], extra].concat())
        .unwrap()
        .args
}

/// `rows` vectors of `dim` around 8 random centres (unit noise), as ReLU outputs are: >= 0.
fn clustered(rows: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<f32> = (0..8 * dim).map(|_| 4.0 * rng.uniform() as f32).collect();
    let mut feats = Vec::with_capacity(rows * dim);
    let mut labels = Vec::with_capacity(rows);
    for i in 0..rows {
        let c = i % 8;
        labels.push(c as u32);
        for j in 0..dim {
            feats.push((centres[c * dim + j] + 0.3 * rng.normal() as f32).max(0.0));
        }
    }
    (feats, labels)
}

#[test]
fn auto_encoder_reconstruction_error_falls_and_codes_are_binary_of_the_right_size() {
    let e = CpuEngine::new(2).unwrap();
    let (dim, bits) = (48, 16);
    let (feats, _) = clustered(320, dim, 3);
    let args = codes_args(&[
        "--codes",
        "16",
        "--code-hidden",
        "32",
        "--code-epochs",
        "25",
        "--code-batch",
        "16",
    ]);
    let mut ae = AutoEncoder::new(&e, &feats, dim, 32, bits, 1).unwrap();
    let log = ae.train(&e, &feats, &args).unwrap();
    assert_eq!(log.unexplained.len(), 25);
    assert_eq!(log.steps, 25 * 20);
    let (first, last) = (log.unexplained[0], *log.unexplained.last().unwrap());
    // 8 clusters need 3 bits: the between-cluster variance (most of it: centres spread
    // ~1.15 per feature against noise 0.3) is reconstructible from 16 binary units.
    assert!(
        last < 0.5 * first && last < 0.5,
        "unexplained variance {first} -> {last}"
    );
    let probs = ae.code_probabilities(&e, &feats, 50).unwrap();
    assert_eq!(probs.len(), 320 * bits);
    assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)));
    let codes = ae.encode(&e, &feats, 7).unwrap();
    assert_eq!((codes.rows(), codes.words), (320, 1));
    assert!(codes.data.iter().all(|w| w >> bits == 0), "no bits past 16");
    // Rows of one cluster should share most of their code: their mean Hamming distance to each
    // other below that across clusters.
    let (mut same, mut other) = ((0u64, 0u64), (0u64, 0u64));
    for i in 0..64 {
        for j in 0..64 {
            let d = alexnet::codes::hamming(codes.row(i), codes.row(j)) as u64;
            let acc = if i % 8 == j % 8 {
                &mut same
            } else {
                &mut other
            };
            *acc = (acc.0 + d, acc.1 + 1);
        }
    }
    let mean = |(s, n): (u64, u64)| s as f64 / n as f64;
    assert!(
        mean(same) < mean(other),
        "{} vs {}",
        mean(same),
        mean(other)
    );
}

#[test]
fn codes_pack_bits_in_word_order() {
    let mut probs = vec![0.2f32; 2 * 70];
    probs[0] = 0.9; // row 0, bit 0
    probs[64] = 0.51; // row 0, bit 64 (word 1, bit 0)
    probs[70 + 69] = 1.0; // row 1, bit 69 (word 1, bit 5)
    probs[70 + 3] = 0.5; // not above 0.5: clear
    let c = Codes::threshold(&probs, 70);
    assert_eq!(c.words, 2);
    assert_eq!(c.data, vec![1, 1, 0, 1 << 5]);
    assert_eq!(alexnet::codes::hamming(c.row(0), c.row(1)), 3);
}

#[test]
fn hamming_search_is_exact_nearest_by_brute_force() {
    let mut rng = Rng::new(9);
    let bits = 100;
    let random = |rows: usize, rng: &mut Rng| {
        let probs: Vec<f32> = (0..rows * bits).map(|_| rng.uniform() as f32).collect();
        Codes::threshold(&probs, bits)
    };
    let db = random(3000, &mut rng);
    let queries = random(6, &mut rng);
    let k = 25;
    let found = hamming_nearest(&db, &queries, k).unwrap();
    for (q, got) in found.iter().enumerate() {
        let mut all: Vec<(u32, usize)> = (0..db.rows())
            .map(|i| {
                let d = (0..bits)
                    .filter(|&b| {
                        let bit = |c: &Codes, r: usize| c.row(r)[b / 64] >> (b % 64) & 1;
                        bit(&db, i) != bit(&queries, q)
                    })
                    .count();
                (d as u32, i)
            })
            .collect();
        all.sort();
        let want: Vec<(usize, u32)> = all[..k].iter().map(|&(d, i)| (i, d)).collect();
        assert_eq!(got, &want, "query {q}");
    }
    // More neighbours asked for than there are rows: all of them, in order.
    let small = random(5, &mut rng);
    let all = hamming_nearest(&small, &queries, 9).unwrap();
    assert!(all.iter().all(|r| r.len() == 5));
}

#[test]
fn precision_at_k_on_a_constructed_case() {
    let db_labels = [0, 0, 1, 1, 2];
    let query_labels = [0, 1];
    let results = vec![vec![0, 2, 1], vec![2, 3, 0]];
    // Query 0 (label 0) finds 0, 1, 0 ; query 1 (label 1) finds 1, 1, 0.
    assert_eq!(precision_at(&query_labels, &results, &db_labels, 1), 1.0);
    assert_eq!(precision_at(&query_labels, &results, &db_labels, 2), 0.75);
    let p3 = precision_at(&query_labels, &results, &db_labels, 3);
    assert!((p3 - 2.0 / 3.0).abs() < 1e-12, "{p3}");
}

// ----------------------------------------------------------------------------------------------
// End to end
// ----------------------------------------------------------------------------------------------

const SIDE: usize = 16;
const CLASSES: usize = 4;

/// One column: conv1 (6 kernels of 3x3), pool, fc6, relu6, fc7, relu7, fc8.
fn tiny_net() -> ArchConfig {
    let row = |name: &str, kind: Kind| Layer {
        name: name.into(),
        kind,
        columns: 1,
        reads_all_columns: true,
    };
    let init = ParamInit {
        std: 0.05,
        bias: 0.1,
    };
    let fc = |out| Kind::Fc { out, init };
    let conv = Kind::Conv {
        out: 6,
        k: 3,
        stride: 1,
        pad: 1,
        init,
    };
    let layers = vec![
        row("conv1", conv),
        row("relu1", Kind::Relu),
        row("pool1", Kind::MaxPool { size: 2, stride: 2 }),
        row("fc6", fc(24)),
        row("relu6", Kind::Relu),
        row("fc7", fc(20)),
        row("relu7", Kind::Relu),
        row("fc8", fc(CLASSES)),
    ];
    let net = Net::Table(Table {
        name: "tiny".into(),
        input_size: Some(SIDE),
        layers,
    });
    ArchConfig::for_net(net, Some(CLASSES), Some(SIDE))
}

fn checkpoint(path: &Path) {
    let cfg = tiny_net();
    let e = CpuEngine::new(1).unwrap();
    let model = Model::new(&e, cfg.clone(), Init::Paper, 7, 1).unwrap();
    let params = model
        .read_params(&e)
        .unwrap()
        .into_iter()
        .map(|(name, shape, values)| NamedTensor::new(name, shape, values))
        .collect();
    Checkpoint {
        arch: cfg,
        class_names: (0..CLASSES).map(|c| format!("class{c}")).collect(),
        mean: Some(vec![120.0; 3 * SIDE * SIDE]),
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

#[derive(Parser)]
struct PrepareCli {
    #[command(flatten)]
    args: PrepareArgs,
}

/// 4 classes x 20 images, each class its own colour with pixel noise; a quarter held out as val.
fn prepared(dir: &Path) -> PathBuf {
    let (src, out) = (dir.join("src"), dir.join("prepared"));
    let mut rng = Rng::new(4);
    let colours = [[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]];
    for (c, colour) in colours.iter().enumerate() {
        let class_dir = src.join(format!("c{c}"));
        std::fs::create_dir_all(&class_dir).unwrap();
        for i in 0..20 {
            let img = image::RgbImage::from_fn(SIDE as u32, SIDE as u32, |_, _| {
                image::Rgb(colour.map(|v: i32| (v + rng.below(61) as i32 - 30) as u8))
            });
            img.save(class_dir.join(format!("img{i}.png"))).unwrap();
        }
    }
    let args = PrepareCli::try_parse_from([
        "prepare",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--side",
        "16",
        "--val-fraction",
        "0.25",
        "--quiet",
    ])
    .unwrap()
    .args;
    alexnet::data::prepare(&args).unwrap();
    out
}

#[test]
fn neighbours_codes_end_to_end_on_a_tiny_net() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path());
    let ckpt = tmp.path().join("tiny.safetensors");
    checkpoint(&ckpt);
    let out = tmp.path().join("codes.png");
    let parse = |extra: &[&str]| {
        let base = [
            "neighbours",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        NeighboursCli::try_parse_from([&base[..], extra].concat()).map(|c| c.args)
    };
    // No --query and no --codes: refused by the parser; --codes outside 8..=1024 too.
    assert!(parse(&[]).is_err());
    assert!(parse(&["--codes", "4"]).is_err());
    assert!(parse(&["--codes", "2048"]).is_err());

    let e = CpuEngine::new(2).unwrap();
    let args = parse(&[
        "--codes",
        "16",
        "--code-hidden",
        "16",
        "--code-epochs",
        "20",
        "--code-batch",
        "10",
        "--precision-at",
        "1,5",
    ])
    .unwrap();
    let report = args.run(&e).unwrap();
    assert!(report.png.is_none() && report.queries.is_empty());
    let codes = report.codes.expect("--codes reports");
    assert_eq!((codes.database_images, codes.queries), (60, 20));
    assert_eq!(codes.bits, 16);
    assert_eq!(codes.methods.len(), 3);
    assert_eq!(codes.methods[0].bytes_per_image, 8);
    assert_eq!(codes.methods[1].bytes_per_image, 4 * 20);
    for m in &codes.methods {
        let ks: Vec<usize> = m.precision.iter().map(|p| p.0).collect();
        assert_eq!(ks, [1, 5]);
        assert!(m.precision.iter().all(|p| (0.0..=1.0).contains(&p.1)));
        assert!(m.search_seconds > 0.0);
    }
    // Each class is one colour well apart from the others' (pixel noise +-30 against distances of
    // 160 per channel): raw pixels find the query's class every time.
    assert_eq!(codes.methods[2].precision, [(1, 1.0), (5, 1.0)]);
    let log = &codes.training;
    assert!(log.unexplained.last() < log.unexplained.first());
    let table = codes.table();
    assert!(table.contains("16-bit codes, Hamming") && table.contains("raw pixels 32x32"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(json["codes"]["bits"], 16);

    // Queries from the searched split are refused; so is a batch bigger than the split.
    let same = parse(&["--codes", "16", "--code-query-split", "train"]).unwrap();
    let err = same
        .run(&e)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("--code-query-split"), "{err}");
    let big = parse(&["--codes", "16", "--code-batch", "100", "--code-epochs", "1"]).unwrap();
    let err = big.run(&e).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("--code-batch"), "{err}");
}
