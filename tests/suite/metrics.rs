//! Scoring (top-k with ties, ten-crop and ensemble averaging, per-class accuracy), the metrics log
//! (round trip, crash-truncated lines, resume) and the plot.
//!
//! The averaging tests use dyadic fractions (k/16, k/32), exact in f32 and f64, so expected
//! values are compared exactly.

use std::fs;
use std::io::Write;

use alexnet::metrics::{
    average_groups, average_probs, read_log, top_k, topk_errors, ClassAccuracy, ClassCounts,
    EpochRecord, MetricsLog, StepRecord,
};
use alexnet::plot::{plot_log, PlotArgs, PLOT_SIZE};

#[test]
fn topk_errors_on_hand_computed_rows() {
    let probs = [
        0.1, 0.6, 0.3, // label 1: first
        0.5, 0.2, 0.3, // label 2: second
        0.2, 0.3, 0.5, // label 0: third
    ];
    let labels = [1, 2, 0];
    assert_eq!(topk_errors(&probs, 3, &labels, 1), 2);
    assert_eq!(topk_errors(&probs, 3, &labels, 2), 1);
    assert_eq!(topk_errors(&probs, 3, &labels, 3), 0);
    assert_eq!(topk_errors(&probs, 3, &labels, 0), 3);
}

#[test]
fn ties_rank_the_lower_class_index_first() {
    // A net that outputs the same value everywhere scores like the guess "classes 0..k", not 0%.
    let uniform = [0.25f32; 16];
    let labels = [0, 1, 2, 3];
    assert_eq!(topk_errors(&uniform, 4, &labels, 1), 3);
    assert_eq!(topk_errors(&uniform, 4, &labels, 2), 2);
    assert_eq!(topk_errors(&uniform, 4, &labels, 4), 0);
    // The label ties with the best class: a top-1 hit only if its index is lower.
    let tie = [0.4, 0.4, 0.2];
    assert_eq!(topk_errors(&tie, 3, &[0], 1), 0);
    assert_eq!(topk_errors(&tie, 3, &[1], 1), 1);
    assert_eq!(topk_errors(&tie, 3, &[1], 2), 0);
    // NaN ranks last; an out-of-range label is always a miss.
    let nan = [f32::NAN, 0.5, 0.5];
    assert_eq!(topk_errors(&nan, 3, &[0], 2), 1);
    assert_eq!(topk_errors(&nan, 3, &[0], 3), 0);
    assert_eq!(topk_errors(&nan, 3, &[1], 1), 0);
    assert_eq!(topk_errors(&[0.5, 0.5], 2, &[7], 2), 1);
}

#[test]
fn top_k_sorts_descending_with_the_same_tie_rule() {
    let row = [0.1, 0.4, 0.4, 0.05, f32::NAN];
    assert_eq!(top_k(&row, 3), vec![(1, 0.4), (2, 0.4), (0, 0.1)]);
    let all = top_k(&row, 10);
    assert_eq!(all.len(), 5);
    assert_eq!(
        all.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![1, 2, 0, 3, 4]
    );
    assert!(all[4].1.is_nan());
    assert!(top_k(&row, 0).is_empty());
}

#[test]
fn ensemble_averaging_changes_the_decision() {
    // Net A: class 0 at 10/16; net B: class 1 at 15/16. The average prefers class 1.
    let a = [10.0 / 16.0, 6.0 / 16.0, 3.0 / 16.0, 13.0 / 16.0];
    let b = [1.0 / 16.0, 15.0 / 16.0, 5.0 / 16.0, 11.0 / 16.0];
    let avg = average_probs(&[&a, &b]);
    assert_eq!(avg, vec![11.0 / 32.0, 21.0 / 32.0, 8.0 / 32.0, 24.0 / 32.0]);
    // Image 0 (label 1): A says 0, B and the average say 1. Image 1 (label 0): all say 1.
    let labels = [1, 0];
    assert_eq!(topk_errors(&a, 2, &labels, 1), 2);
    assert_eq!(topk_errors(&b, 2, &labels, 1), 1);
    assert_eq!(topk_errors(&avg, 2, &labels, 1), 1);
    assert_eq!(average_probs(&[&a]), a.to_vec());
    assert!(average_probs(&[]).is_empty());
}

#[test]
fn ten_crop_averages_each_images_crops() {
    // 2 images x 10 crops x 3 classes, image-major. Image 0's crop i gives class 0 i/16, class 1
    // (15 - i)/16, class 2 1/16; image 1's crops are all [1/16, 2/16, 13/16].
    let mut probs = Vec::new();
    for i in 0..10 {
        probs.extend([i as f32 / 16.0, (15 - i) as f32 / 16.0, 1.0 / 16.0]);
    }
    for _ in 0..10 {
        probs.extend([1.0 / 16.0, 2.0 / 16.0, 13.0 / 16.0]);
    }
    let avg = average_groups(&probs, 10, 3);
    // Mean of i/16 over i = 0..9 is 4.5/16; of (15-i)/16 is 10.5/16.
    assert_eq!(
        avg,
        vec![
            4.5 / 16.0,
            10.5 / 16.0,
            1.0 / 16.0,
            1.0 / 16.0,
            2.0 / 16.0,
            13.0 / 16.0
        ]
    );
    assert_eq!(topk_errors(&avg, 3, &[1, 2], 1), 0);
    // Single crops disagree with the average on image 0 for crops 8 and 9 (8/16 > 7/16).
    assert_eq!(topk_errors(&probs[24..30], 3, &[1, 1], 1), 2);
}

#[test]
fn per_class_accuracy_counts() {
    let mut acc = ClassAccuracy::new(6);
    // 6 classes; rows rank classes 0 > 1 > 2 > 3 > 4 > 5 except the last, which ranks 5 first.
    let desc = [0.30f32, 0.25, 0.20, 0.12, 0.08, 0.05];
    let mut probs = Vec::new();
    for _ in 0..4 {
        probs.extend(desc);
    }
    probs.extend([0.05, 0.08, 0.12, 0.20, 0.25, 0.30]);
    let labels = [0, 0, 5, 4, 5];
    acc.accumulate(&probs, &labels).unwrap();
    let c = acc.counts();
    assert_eq!(
        c[0],
        ClassCounts {
            total: 2,
            top1_correct: 2,
            top5_correct: 2
        }
    );
    // Class 5 at rank 5 (a top-5 miss) and at rank 0.
    assert_eq!(
        c[5],
        ClassCounts {
            total: 2,
            top1_correct: 1,
            top5_correct: 1
        }
    );
    // Class 4 at rank 4: top-5 only.
    assert_eq!(
        c[4],
        ClassCounts {
            total: 1,
            top1_correct: 0,
            top5_correct: 1
        }
    );
    assert_eq!(c[1].total, 0);
    // 3 of 5 top-1 hits and 4 of 5 top-5 hits; 1 - 4/5 is within an ulp of 0.2 in f64.
    let (e1, e5) = acc.overall_errors();
    assert!(
        (e1 - 0.4).abs() < 1e-15 && (e5 - 0.2).abs() < 1e-15,
        "{e1} {e5}"
    );
    let a = acc.accuracies();
    assert_eq!(a[5], Some((0.5, 0.5)));
    assert_eq!(a[1], None);

    let mut other = ClassAccuracy::new(6);
    other.accumulate(&desc, &[1]).unwrap();
    acc.merge(&other).unwrap();
    assert_eq!(
        acc.counts()[1],
        ClassCounts {
            total: 1,
            top1_correct: 0,
            top5_correct: 1
        }
    );

    let names: Vec<String> = (0..6).map(|i| format!("name{i}")).collect();
    let report = acc.report(&names, 2);
    assert!(
        report.contains("6 images") && report.contains("top-1 error 50.00%"),
        "{report}"
    );
    // The two worst by top-1 accuracy: class 1 (0%) then class 4 (0%), both named.
    assert!(
        report.contains("name1") && report.contains("name4") && !report.contains("name0"),
        "{report}"
    );

    assert!(acc.accumulate(&desc, &[6]).is_err());
    assert!(acc.accumulate(&desc[..5], &[0]).is_err());
    assert!(acc.merge(&ClassAccuracy::new(5)).is_err());
}

fn step_rec(step: u64) -> StepRecord {
    StepRecord {
        epoch: step / 100,
        step,
        lr: 0.01,
        loss: 6.9 - (step as f32).sqrt() * 0.2,
        top1_err: 0.999 - step as f32 * 1e-3,
        top5_err: 0.99 - step as f32 * 2e-3,
        images_per_s: 1234.5,
        data_wait_s: 0.125,
    }
}

fn epoch_rec(epoch: u64, ten_crop: bool) -> EpochRecord {
    let e = epoch as f32;
    EpochRecord {
        epoch,
        step: (epoch + 1) * 100 - 1,
        lr: 0.01,
        train_loss: 5.0 - e * 0.5,
        train_top1: 0.9 - e * 0.08,
        train_top5: 0.7 - e * 0.06,
        val_top1: 0.92 - e * 0.07,
        val_top5: 0.75 - e * 0.05,
        val_top1_10crop: ten_crop.then_some(0.9 - e * 0.07),
        val_top5_10crop: ten_crop.then_some(0.73 - e * 0.05),
        seconds: 812.25,
    }
}

#[test]
fn metrics_log_round_trip_and_crash_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/metrics.jsonl");
    let mut log = MetricsLog::open(&path, false).unwrap();
    let mut steps: Vec<StepRecord> = (0..5).map(|i| step_rec(i * 10)).collect();
    steps[3].loss = f32::NAN; // a diverged step stays a readable record
    for s in &steps {
        log.step(s).unwrap();
    }
    let epochs = vec![epoch_rec(0, false), epoch_rec(1, true)];
    for e in &epochs {
        log.epoch(e).unwrap();
    }
    drop(log);
    let first = fs::read_to_string(&path).unwrap();
    assert!(
        first.starts_with(r#"{"kind":"step","epoch":0,"step":0,"#),
        "{first}"
    );

    let (s2, e2) = read_log(&path).unwrap();
    assert_eq!(e2, epochs);
    assert_eq!(s2.len(), steps.len());
    assert!(s2[3].loss.is_nan());
    for (i, (got, want)) in s2.iter().zip(&steps).enumerate() {
        if i == 3 {
            assert!(got.loss.is_nan());
            assert_eq!(
                StepRecord {
                    loss: 0.0,
                    ..got.clone()
                },
                StepRecord {
                    loss: 0.0,
                    ..want.clone()
                }
            );
        } else {
            assert_eq!(got, want);
        }
    }

    // A crash mid-write leaves a partial last line: ignored by the reader...
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(br#"{"kind":"step","epoch":0,"st"#)
        .unwrap();
    let (s3, e3) = read_log(&path).unwrap();
    assert_eq!((s3.len(), e3.len()), (5, 2));
    // ...and cut off when the log is reopened to append, so the next record is on its own line.
    let mut log = MetricsLog::open(&path, true).unwrap();
    log.step(&step_rec(50)).unwrap();
    drop(log);
    let (s4, _) = read_log(&path).unwrap();
    assert_eq!(s4.len(), 6);
    assert_eq!(s4[5], step_rec(50));

    // A broken line in the middle is an error naming the line; unknown kinds are skipped.
    let bad = dir.path().join("bad.jsonl");
    fs::write(
        &bad,
        format!(
            "{}\n{{\"kind\":\"step\",\"epo\n{}\n",
            &first.lines().next().unwrap(),
            first.lines().next().unwrap()
        ),
    )
    .unwrap();
    let err = read_log(&bad).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
    let future = dir.path().join("future.jsonl");
    fs::write(&future, "{\"kind\":\"eval\",\"x\":1}\n").unwrap();
    assert_eq!(read_log(&future).unwrap().0.len(), 0);

    // Opening without append starts over.
    drop(MetricsLog::open(&path, false).unwrap());
    let (s5, e5) = read_log(&path).unwrap();
    assert!(s5.is_empty() && e5.is_empty());
}

#[test]
fn open_resume_drops_records_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&path, false).unwrap();
    for s in [0, 50, 99, 150, 199, 250] {
        log.step(&step_rec(s)).unwrap();
        if s == 99 || s == 199 {
            log.epoch(&epoch_rec(s / 100, false)).unwrap();
        }
    }
    drop(log);
    // Resumed from the checkpoint at step 150: 199's records and 250 are gone.
    let mut log = MetricsLog::open_resume(&path, 150).unwrap();
    log.step(&step_rec(160)).unwrap();
    drop(log);
    let (s, e) = read_log(&path).unwrap();
    assert_eq!(
        s.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![0, 50, 99, 150, 160]
    );
    assert_eq!(e.iter().map(|r| r.epoch).collect::<Vec<_>>(), vec![0]);
}

/// Counts pixels in rows `y0..y1` that are not white.
fn ink(img: &image::RgbImage, y0: u32, y1: u32) -> usize {
    (y0..y1)
        .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0 != [255, 255, 255])
        .count()
}

#[test]
fn plot_renders_a_png_with_text_and_curves() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&log_path, false).unwrap();
    for s in 0..300 {
        log.step(&step_rec(s)).unwrap();
        if s % 100 == 99 {
            log.epoch(&epoch_rec(s / 100, s >= 199)).unwrap();
        }
    }
    drop(log);
    let args = PlotArgs {
        log: log_path.clone(),
        out: None,
    };
    let out = args.run().unwrap();
    assert_eq!(out, dir.path().join("metrics.png"));
    let img = image::open(&out).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), PLOT_SIZE);
    let h = PLOT_SIZE.1;
    // The captions (the only things in the top 36 px of each panel) prove the font rendered.
    assert!(ink(&img, 0, 36) > 200, "no caption text in the loss panel");
    assert!(
        ink(&img, h / 2, h / 2 + 36) > 200,
        "no caption text in the error panel"
    );
    // Curves, axes and labels put plenty of ink in both panels.
    assert!(ink(&img, 36, h / 2) > 5000);
    assert!(ink(&img, h / 2 + 36, h) > 5000);

    // Only step records: still a plot, the error panel says why it is empty.
    let steps_only = dir.path().join("steps.jsonl");
    let mut log = MetricsLog::open(&steps_only, false).unwrap();
    log.step(&step_rec(1)).unwrap();
    drop(log);
    let png = dir.path().join("steps.png");
    plot_log(&steps_only, &png).unwrap();
    assert_eq!(image::open(&png).unwrap().to_rgb8().dimensions(), PLOT_SIZE);

    // An empty log is an error, not an empty picture.
    let empty = dir.path().join("empty.jsonl");
    fs::write(&empty, "").unwrap();
    let err = plot_log(&empty, &dir.path().join("e.png"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no step or epoch records"), "{err}");
}
