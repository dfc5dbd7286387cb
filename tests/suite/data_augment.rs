//! Augmentation geometry, PCA lighting statistics, dataset statistics and the loader's contract.

use alexnet::data::{
    centre_crop, compute_stats, extract_view, pca_shift, ten_crop_views, ten_crops, Augment,
    Dataset, InMemory, Loader, LoaderConfig, Share, Stats, StatsAccumulator, View,
};
use alexnet::rng::Rng;
use std::collections::HashSet;
use std::sync::Arc;

/// A different value at (almost) every position, so a wrong source pixel shows.
fn coded_image(side: usize) -> Vec<u8> {
    let mut v = vec![0u8; 3 * side * side];
    for c in 0..3 {
        for y in 0..side {
            for x in 0..side {
                v[c * side * side + y * side + x] = (c * 71 + y * 13 + x) as u8;
            }
        }
    }
    v
}

fn zero_stats(side: usize) -> Stats {
    Stats {
        side,
        mean: vec![0.0; 3 * side * side],
        eigval: [0.0; 3],
        eigvec: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    }
}

#[test]
fn crop_and_flip_take_the_stated_pixels() {
    let (side, crop) = (12, 7);
    let img = coded_image(side);
    let mean: Vec<f32> = (0..3 * side * side)
        .map(|i| (i % 17) as f32 * 0.5)
        .collect();
    let shift = [1.5, -2.0, 0.25];
    for v in [
        View {
            x: 0,
            y: 0,
            flip: false,
        },
        View {
            x: 5,
            y: 3,
            flip: true,
        },
        View {
            x: 2,
            y: 5,
            flip: false,
        },
    ] {
        let mut out = vec![0f32; 3 * crop * crop];
        extract_view(&img, side, crop, v, shift, Some(&mean), &mut out);
        for c in 0..3 {
            for y in 0..crop {
                for x in 0..crop {
                    let sx = if v.flip { crop - 1 - x } else { x };
                    let s = c * side * side + (v.y + y) * side + v.x + sx;
                    // Exact: small integers and halves/quarters are exact in f32.
                    assert_eq!(
                        out[(c * crop + y) * crop + x],
                        img[s] as f32 + shift[c] - mean[s],
                        "{v:?} c{c} y{y} x{x}"
                    );
                }
            }
        }
    }
}

#[test]
fn ten_crops_are_corners_centre_and_reflections_in_order() {
    let (side, crop) = (13, 8);
    let views = ten_crop_views(side, crop);
    let e = side - crop;
    let expect = [(0, 0), (e, 0), (0, e), (e, e), (e / 2, e / 2)];
    for (i, v) in views.iter().enumerate() {
        assert_eq!((v.x, v.y), expect[i % 5]);
        assert_eq!(v.flip, i >= 5);
    }
    let img = coded_image(side);
    let mut stats = zero_stats(side);
    stats
        .mean
        .iter_mut()
        .enumerate()
        .for_each(|(i, m)| *m = (i % 3) as f32);
    let per = 3 * crop * crop;
    let mut all = vec![0f32; 10 * per];
    ten_crops(&img, side, crop, &stats, &mut all);
    let mut centre = vec![0f32; per];
    centre_crop(&img, side, crop, &stats, &mut centre);
    assert_eq!(
        &all[4 * per..5 * per],
        &centre[..],
        "patch 4 is the centre crop"
    );
    // Patch 5+i is patch i mirrored: out[c][y][x] == out'[c][y][crop-1-x].
    for i in 0..5 {
        for c in 0..3 {
            for y in 0..crop {
                for x in 0..crop {
                    let a = all[i * per + (c * crop + y) * crop + x];
                    let b = all[(i + 5) * per + (c * crop + y) * crop + crop - 1 - x];
                    assert_eq!(a, b, "patch {i} c{c} y{y} x{x}");
                }
            }
        }
    }
    // The top-left value of the top-right patch is the source pixel (0, e), minus its mean.
    assert_eq!(all[per], img[e] as f32 - stats.mean[e]);
}

/// PCA lighting: a_i ~ N(0, 0.1), shift = sum_i P_i a_i lambda_i / 255 (docs: PCA_SCALE).
#[test]
fn pca_lighting_has_the_stated_statistics() {
    let side = 4;
    let eigval = [12000.0f32, 900.0, 150.0];
    // An orthonormal basis (rotation of the identity), rows = eigenvectors.
    let s = 1.0 / 3f32.sqrt();
    let t = 1.0 / 2f32.sqrt();
    let u = 1.0 / 6f32.sqrt();
    let eigvec = [[s, s, s], [t, 0.0, -t], [u, -2.0 * u, u]];
    let stats = Stats {
        side,
        mean: vec![0.0; 3 * side * side],
        eigval,
        eigvec,
    };
    let n = 6000;
    let ds = InMemory {
        side,
        names: vec!["a".into()],
        pixels: vec![100; n * 3 * side * side],
        labels: vec![0; n],
    };
    let cfg = LoaderConfig {
        batch: 500,
        workers: 2,
        prefetch: 2,
        seed: 9,
        augment: Augment {
            crop: side,
            random_crop: false,
            flip: false,
            pca_std: 0.1,
            subtract_mean: false,
        },
        shuffle: false,
        drop_last: false,
        share: Share::WHOLE,
    };
    let mut loader = Loader::new(Arc::new(ds), Arc::new(stats.clone()), cfg, 0, 0).unwrap();
    let mut coeffs: Vec<[f64; 3]> = Vec::new();
    while let Some(b) = loader.next() {
        let (b, _) = b.unwrap();
        let per = 3 * side * side;
        for img in b.images.chunks_exact(per) {
            // Every pixel of an image gets the same shift.
            let shift: [f32; 3] = [0, 1, 2].map(|c| img[c * side * side] - 100.0);
            for c in 0..3 {
                assert!(img[c * side * side..(c + 1) * side * side]
                    .iter()
                    .all(|&v| v - 100.0 == shift[c]));
            }
            // Project onto P_i and undo lambda_i / 255 to recover a_i.
            coeffs.push([0, 1, 2].map(|i| {
                (0..3)
                    .map(|c| shift[c] as f64 * eigvec[i][c] as f64)
                    .sum::<f64>()
                    * 255.0
                    / eigval[i] as f64
            }));
        }
    }
    assert_eq!(coeffs.len(), n);
    for i in 0..3 {
        let m = coeffs.iter().map(|a| a[i]).sum::<f64>() / n as f64;
        let sd = (coeffs.iter().map(|a| (a[i] - m).powi(2)).sum::<f64>() / n as f64).sqrt();
        // Standard error of the mean 0.1/sqrt(6000) = 0.0013 and of the std 0.1/sqrt(12000) =
        // 0.0009: 4 standard errors.
        assert!(m.abs() < 0.0052, "a_{i} mean {m}");
        assert!((sd - 0.1).abs() < 0.0037, "a_{i} std {sd}");
    }
    // Independent coefficients: sample correlation ~ N(0, 1/sqrt(n) = 0.013); 4 sigma.
    let corr = coeffs.iter().map(|a| a[0] * a[1]).sum::<f64>() / n as f64 / 0.01;
    assert!(corr.abs() < 0.052, "corr {corr}");
    // And the shift formula itself on a unit coefficient.
    let sh = pca_shift(&stats, [1.0, 0.0, 0.0]);
    for c in 0..3 {
        assert!((sh[c] - eigvec[0][c] * eigval[0] / 255.0).abs() < 1e-3);
    }
}

#[test]
fn stats_match_a_direct_computation() {
    let (side, n) = (6, 40);
    let mut rng = Rng::new(5);
    // Correlated channels so the covariance has structure.
    let mut pixels = vec![0u8; n * 3 * side * side];
    for img in pixels.chunks_exact_mut(3 * side * side) {
        for p in 0..side * side {
            let base = rng.below(200);
            img[p] = (base + rng.below(40)) as u8;
            img[side * side + p] = (base / 2 + rng.below(100)) as u8;
            img[2 * side * side + p] = rng.below(256) as u8;
        }
    }
    let ds = InMemory {
        side,
        names: vec!["x".into()],
        pixels: pixels.clone(),
        labels: vec![0; n],
    };
    let stats = compute_stats(&ds, None).unwrap();
    let hw = side * side;
    for i in 0..3 * hw {
        let m: f64 = (0..n).map(|k| pixels[k * 3 * hw + i] as f64).sum::<f64>() / n as f64;
        // f32 rounding of a value below 256: relative 6e-8.
        assert!((stats.mean[i] as f64 - m).abs() < 1e-4, "mean[{i}]");
    }
    let mut mu = [0f64; 3];
    let total = (n * hw) as f64;
    for k in 0..n {
        for c in 0..3 {
            for p in 0..hw {
                mu[c] += pixels[k * 3 * hw + c * hw + p] as f64 / total;
            }
        }
    }
    let mut cov = [[0f64; 3]; 3];
    for k in 0..n {
        for p in 0..hw {
            let x: Vec<f64> = (0..3)
                .map(|c| pixels[k * 3 * hw + c * hw + p] as f64 - mu[c])
                .collect();
            for a in 0..3 {
                for b in 0..3 {
                    cov[a][b] += x[a] * x[b] / total;
                }
            }
        }
    }
    // C v = lambda v for each stored pair (f32 storage: relative ~1e-6 of the largest
    // eigenvalue, ~3000 here; 1e-3 absolute is generous yet fails on any real mistake).
    for i in 0..3 {
        let v = stats.eigvec[i].map(|x| x as f64);
        let norm: f64 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        for a in 0..3 {
            let cv: f64 = (0..3).map(|b| cov[a][b] * v[b]).sum();
            assert!(
                (cv - stats.eigval[i] as f64 * v[a]).abs() < 1e-2,
                "eigenpair {i} row {a}: {cv} vs {}",
                stats.eigval[i] as f64 * v[a]
            );
        }
    }
    assert!(stats.eigval[0] >= stats.eigval[1] && stats.eigval[1] >= stats.eigval[2]);
    let trace = cov[0][0] + cov[1][1] + cov[2][2];
    let sum: f64 = stats.eigval.iter().map(|&x| x as f64).sum();
    // Eigenvalues sum to the trace; f32 storage: relative 1e-7 each, so 1e-5 relative.
    assert!((trace - sum).abs() < 1e-5 * trace, "trace {trace} vs {sum}");
    // Merging partial accumulators gives the identical (integer-exact) result.
    let mut a = StatsAccumulator::new(side);
    let mut b = StatsAccumulator::new(side);
    for (k, img) in pixels.chunks_exact(3 * hw).enumerate() {
        if k % 3 == 0 {
            a.add(img).unwrap()
        } else {
            b.add(img).unwrap()
        }
    }
    a.merge(&b);
    assert_eq!(a.finish().unwrap(), stats);
}

fn small_set(n: usize, side: usize) -> InMemory {
    let mut rng = Rng::new(1);
    InMemory {
        side,
        names: (0..4).map(|i| format!("c{i}")).collect(),
        pixels: (0..n * 3 * side * side)
            .map(|_| rng.below(256) as u8)
            .collect(),
        labels: (0..n as u32).map(|i| i % 4).collect(),
    }
}

fn collect(
    ds: &Arc<InMemory>,
    stats: &Arc<Stats>,
    workers: usize,
    epoch: u64,
    start: usize,
    aug: Augment,
) -> Vec<alexnet::data::Batch> {
    collect_share(ds, stats, workers, epoch, start, aug, Share::WHOLE)
}

fn collect_share(
    ds: &Arc<InMemory>,
    stats: &Arc<Stats>,
    workers: usize,
    epoch: u64,
    start: usize,
    aug: Augment,
    share: Share,
) -> Vec<alexnet::data::Batch> {
    let cfg = LoaderConfig {
        batch: 7,
        workers,
        prefetch: 3,
        seed: 42,
        augment: aug,
        shuffle: true,
        drop_last: false,
        share,
    };
    let mut l = Loader::new(ds.clone(), stats.clone(), cfg, epoch, start).unwrap();
    let mut out = Vec::new();
    while let Some(b) = l.next() {
        out.push(b.unwrap().0);
    }
    out
}

#[test]
fn loader_is_deterministic_resumable_and_covers_the_epoch() {
    let (n, side) = (45, 10);
    let ds = Arc::new(small_set(n, side));
    let stats = Arc::new(compute_stats(ds.as_ref(), None).unwrap());
    let aug = Augment {
        pca_std: 0.1,
        ..Augment::train(8)
    };
    let a = collect(&ds, &stats, 0, 3, 0, aug.clone());
    assert_eq!(a.len(), 7, "ceil(45 / 7) batches");
    assert_eq!(a.last().unwrap().n, 3);
    for workers in [1, 3] {
        assert_eq!(
            collect(&ds, &stats, workers, 3, 0, aug.clone()),
            a,
            "workers = {workers}"
        );
    }
    assert_eq!(
        collect(&ds, &stats, 2, 3, 4, aug.clone())[..],
        a[4..],
        "resume at batch 4"
    );
    let seen: HashSet<usize> = a.iter().flat_map(|b| b.indices.iter().copied()).collect();
    assert_eq!(seen.len(), n, "every image once per epoch");
    for b in &a {
        for (i, &idx) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[i], ds.labels[idx]);
        }
    }
    let other = collect(&ds, &stats, 1, 4, 0, aug.clone());
    assert_ne!(other[0].indices, a[0].indices, "a new epoch reshuffles");
    // Turning augmentation off gives the centre crop minus the mean, the eval view.
    let plain = collect(&ds, &stats, 1, 3, 0, Augment::eval(8));
    let mut buf = vec![0u8; 3 * side * side];
    let mut crop = vec![0f32; 3 * 64];
    for b in &plain {
        for (i, &idx) in b.indices.iter().enumerate() {
            ds.read(idx, &mut buf).unwrap();
            centre_crop(&buf, side, 8, &stats, &mut crop);
            assert_eq!(&b.images[i * 192..(i + 1) * 192], &crop[..]);
        }
    }
}

#[test]
fn loader_rejects_bad_configurations() {
    let ds: Arc<dyn Dataset> = Arc::new(small_set(5, 10));
    let good = LoaderConfig {
        batch: 2,
        workers: 1,
        prefetch: 1,
        seed: 0,
        augment: Augment::train(8),
        shuffle: true,
        drop_last: true,
        share: Share::WHOLE,
    };
    let stats = Arc::new(zero_stats(10));
    let l = Loader::new(ds.clone(), stats.clone(), good.clone(), 0, 0).unwrap();
    assert_eq!(l.batches_per_epoch(), 2, "drop_last: floor(5 / 2)");
    drop(l);
    let bad = [
        LoaderConfig {
            augment: Augment::train(11),
            ..good.clone()
        },
        LoaderConfig {
            batch: 0,
            ..good.clone()
        },
        LoaderConfig {
            prefetch: 0,
            ..good.clone()
        },
    ];
    for cfg in bad {
        assert!(Loader::new(ds.clone(), stats.clone(), cfg, 0, 0).is_err());
    }
    assert!(
        Loader::new(ds.clone(), Arc::new(zero_stats(9)), good.clone(), 0, 0).is_err(),
        "stats side mismatch"
    );
    assert!(
        Loader::new(ds, stats, good, 0, 3).is_err(),
        "start past the end"
    );
}

#[test]
fn bench_loader_reports_positive_rates() {
    // A smoke run of the run-time benchmark (tiny sizes, ~0.2 s in all).
    let b = alexnet::data::bench_loader(32, 28, 1, 0.05).unwrap();
    assert!(
        b.decode_per_core > 0.0 && b.augment_per_core > 0.0 && b.loader_total > 0.0,
        "{b:?}"
    );
    assert!((b.cores_for_10k - 10_000.0 / b.augment_per_core).abs() < 1e-9);
}

/// Data parallelism: three replicas' loaders, each building its share of every batch, together
/// give exactly the whole loader's batches (images, augmentation, labels), the last partial
/// batch included; a share that does not exist is an error.
#[test]
fn loader_shares_make_up_the_whole_batches() {
    let (n, side) = (45, 10);
    let ds = Arc::new(small_set(n, side));
    let stats = Arc::new(compute_stats(ds.as_ref(), None).unwrap());
    let aug = Augment {
        pca_std: 0.1,
        ..Augment::train(8)
    };
    let whole = collect(&ds, &stats, 2, 1, 0, aug.clone());
    let shares: Vec<Vec<alexnet::data::Batch>> = (0..3)
        .map(|index| collect_share(&ds, &stats, 1, 1, 0, aug.clone(), Share { index, of: 3 }))
        .collect();
    for (b, batch) in whole.iter().enumerate() {
        let images: Vec<f32> = shares.iter().flat_map(|s| s[b].images.clone()).collect();
        let labels: Vec<u32> = shares.iter().flat_map(|s| s[b].labels.clone()).collect();
        assert_eq!(images, batch.images, "batch {b}");
        assert_eq!(labels, batch.labels, "batch {b}");
        assert!(shares[0][b].n < batch.n, "batch {b} was not split");
    }
    let cfg = LoaderConfig {
        batch: 7,
        workers: 0,
        prefetch: 1,
        seed: 42,
        augment: aug,
        shuffle: true,
        drop_last: false,
        share: Share { index: 3, of: 3 },
    };
    assert!(Loader::new(ds.clone(), stats, cfg, 0, 0).is_err());
}
