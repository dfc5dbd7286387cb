//! The built-in procedural dataset and the CIFAR-10 reader.

use alexnet::data::synthetic::{MAX_CLASSES, SHAPES};
use alexnet::data::{synthetic_split, Cifar10, Dataset, Synthetic};

fn read(ds: &dyn Dataset, i: usize) -> (Vec<u8>, u32) {
    let mut b = vec![0u8; 3 * ds.side() * ds.side()];
    let l = ds.read(i, &mut b).unwrap();
    (b, l)
}

#[test]
fn synthetic_is_deterministic_balanced_and_bounded() {
    let ds = Synthetic::new(MAX_CLASSES, 100, 40, 7).unwrap();
    assert_eq!(ds.class_names(), SHAPES);
    assert_eq!(
        read(&ds, 13),
        read(&Synthetic::new(MAX_CLASSES, 100, 40, 7).unwrap(), 13)
    );
    assert_ne!(
        read(&ds, 13).0,
        read(&Synthetic::new(MAX_CLASSES, 100, 40, 8).unwrap(), 13).0,
        "the seed matters"
    );
    let mut hist = [0; MAX_CLASSES];
    for i in 0..100 {
        hist[read(&ds, i).1 as usize] += 1;
    }
    assert!(hist.iter().all(|&h| h == 5));
    for bad in [0, 1, MAX_CLASSES + 1] {
        assert!(Synthetic::new(bad, 10, 40, 0).is_err(), "{bad} classes");
    }
    let mut small = vec![0u8; 10];
    assert!(
        ds.read(0, &mut small).is_err(),
        "wrong buffer size is an error, not a panic"
    );
    assert!(
        ds.read(100, &mut vec![0u8; 3 * 40 * 40]).is_err(),
        "index past the end"
    );
}

/// A nearest-class-mean classifier on mean colour must do poorly (colour is random), while the
/// same classifier on a coarse binarised shape mask already does far better than chance: the
/// classes differ in shape, not colour.
#[test]
fn synthetic_classes_differ_by_shape_not_colour() {
    let classes = 10;
    let side = 32;
    let (train, val, stats) = synthetic_split(classes, 2000, 500, side, 1).unwrap();
    assert_eq!(stats.side, side);
    assert!(
        stats.eigval[0] > 1000.0,
        "random colours give a wide spread: {:?}",
        stats.eigval
    );
    // Features: mean RGB, and a foreground mask (pixel differs from the image's corner colour
    // region by a wide margin) pooled to 8x8.
    let features = |img: &[u8]| -> (Vec<f64>, Vec<f64>) {
        let hw = side * side;
        let colour = (0..3)
            .map(|c| {
                img[c * hw..(c + 1) * hw]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / hw as f64
            })
            .collect();
        // Background colour estimate: the per-channel median.
        let med: Vec<i32> = (0..3)
            .map(|c| {
                let mut v: Vec<u8> = img[c * hw..(c + 1) * hw].to_vec();
                v.sort();
                v[hw / 2] as i32
            })
            .collect();
        let mut mask = vec![0f64; 64];
        for y in 0..side {
            for x in 0..side {
                let d: i32 = (0..3)
                    .map(|c| (img[c * hw + y * side + x] as i32 - med[c]).abs())
                    .sum();
                if d > 90 {
                    mask[(y * 8 / side) * 8 + x * 8 / side] += 1.0;
                }
            }
        }
        (colour, mask)
    };
    let mut centroids = vec![(vec![0f64; 3], vec![0f64; 64], 0usize); classes];
    for i in 0..train.len() {
        let (img, l) = read(&train, i);
        let (c, m) = features(&img);
        let e = &mut centroids[l as usize];
        e.0.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
        e.1.iter_mut().zip(&m).for_each(|(a, b)| *a += b);
        e.2 += 1;
    }
    let nearest = |f: &[f64], which: usize| -> u32 {
        let mut best = (f64::MAX, 0);
        for (k, e) in centroids.iter().enumerate() {
            let cen = if which == 0 { &e.0 } else { &e.1 };
            let d: f64 = f
                .iter()
                .zip(cen)
                .map(|(a, b)| (a - b / e.2 as f64).powi(2))
                .sum();
            if d < best.0 {
                best = (d, k as u32);
            }
        }
        best.1
    };
    let (mut by_colour, mut by_mask) = (0, 0);
    for i in 0..val.len() {
        let (img, l) = read(&val, i);
        let (c, m) = features(&img);
        by_colour += (nearest(&c, 0) == l) as usize;
        by_mask += (nearest(&m, 1) == l) as usize;
    }
    let (pc, pm) = (by_colour as f64 / 500.0, by_mask as f64 / 500.0);
    eprintln!("nearest-centroid accuracy: mean colour {pc}, 8x8 shape mask {pm}");
    // Chance is 0.1 (binomial sd 0.013 over 500); colour alone stays near it, the crude shape
    // feature (blind to position, which is random) is well above it (7 sd at 0.2).
    assert!(pc < 0.2, "mean colour predicts the class too well: {pc}");
    assert!(pm > 0.2, "shape masks should separate classes: {pm}");
}

#[test]
fn cifar10_reads_the_shared_copy() {
    let dir = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/cifar-10-batches-bin"
    ));
    if !dir.join("data_batch_1.bin").exists() {
        eprintln!("skipping: {} is absent", dir.display());
        return;
    }
    let train = Cifar10::open(dir, true).unwrap();
    assert_eq!(train.len(), 50_000);
    assert_eq!((train.side(), train.classes()), (32, 10));
    assert_eq!(train.class_names()[0], "airplane");
    let mut hist = [0usize; 10];
    let mut b = vec![0u8; 3072];
    for i in 0..train.len() {
        hist[train.read(i, &mut b).unwrap() as usize] += 1;
    }
    assert_eq!(hist, [5000; 10], "CIFAR-10 training classes are balanced");
    // Record 0 of batch 1 is a frog (label 6) in the official release.
    assert_eq!(train.read(0, &mut b).unwrap(), 6);
    let raw = std::fs::read(dir.join("data_batch_1.bin")).unwrap();
    assert_eq!(
        &b[..],
        &raw[1..3073],
        "the record's planes are copied as CHW"
    );
    let test = Cifar10::open(dir, false).unwrap();
    assert_eq!(test.len() % 1000, 0);
    assert!(Cifar10::open(&dir.join("no-such-dir"), true).is_err());
}

#[test]
fn cifar10_rejects_malformed_files() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(Cifar10::open(tmp.path(), true).is_err(), "no batch files");
    let mut rec = vec![3u8; 3073 * 2];
    std::fs::write(tmp.path().join("data_batch_1.bin"), &rec).unwrap();
    let ds = Cifar10::open(tmp.path(), true).unwrap();
    assert_eq!(ds.len(), 2);
    rec.push(0);
    std::fs::write(tmp.path().join("data_batch_2.bin"), &rec).unwrap();
    assert!(Cifar10::open(tmp.path(), true).is_err(), "partial record");
    rec.pop();
    rec[3073] = 10;
    std::fs::write(tmp.path().join("data_batch_2.bin"), &rec).unwrap();
    assert!(Cifar10::open(tmp.path(), true).is_err(), "label 10");
}
