//! Data parallelism end to end: `mpirun -np 2 alexnet-cli train` computes the one-process run at
//! the same global batch, on the built-in data and on a prepared dataset, with columns split
//! inside each rank too; a checkpoint resumes on another rank count; ranks with different flags
//! are refused. Skips (passing) where `mpirun` is not installed.
//!
//! Tolerance: the ranks' arithmetic is the single process's except for the gradient sums (each
//! rank sums its half of the batch, then the halves are averaged: a different f32 summation
//! order, ~1e-7 relative per step) and the same for the loss; over a few steps that stays well
//! below the 1e-5 relative used here (tests/suite/columns.rs makes the same argument for its split).
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_alexnet-cli");

fn have_mpirun() -> bool {
    let ok = Command::new("mpirun").arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipping: mpirun not installed");
    }
    ok
}

/// A tiny run: 16 training images, global batch 8, dropout on, 1 thread per process.
fn tiny(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--quiet",
        "--input-size",
        "67",
        "--batch-size",
        "8",
        "--builtin-train",
        "32",
        "--builtin-val",
        "8",
        "--classes",
        "4",
        "--dropout",
        "0.5",
        "--workers",
        "1",
        "--threads",
        "1",
        "--checkpoint-dir",
        dir.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn single(args: &[String]) -> Output {
    let o = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", describe(&o));
    o
}

/// `mpirun -np n alexnet-cli ARGS`. A collective of these tiny runs waits a second at most: a
/// rank left waiting (a fault not ending the job) aborts after 60 s instead of 600.
fn ranks(n: usize, args: &[String]) -> Output {
    Command::new("mpirun")
        .env("ALEXNET_COLLECTIVE_TIMEOUT_S", "60")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            &n.to_string(),
        ])
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn describe(o: &Output) -> String {
    format!(
        "{:?}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn losses(dir: &Path) -> Vec<f32> {
    let (steps, _) = alexnet::metrics::read_log(&dir.join("metrics.jsonl")).unwrap();
    steps.iter().map(|s| s.loss).collect()
}

fn weights(dir: &Path) -> Vec<f32> {
    let c = alexnet::checkpoint::Checkpoint::load(&dir.join("last.safetensors")).unwrap();
    c.params.into_iter().flat_map(|t| t.data).collect()
}

fn assert_same_run(a: &Path, b: &Path, steps: usize) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), steps, "{la:?}");
    assert_eq!(lb.len(), steps, "{lb:?}");
    for (x, y) in la.iter().zip(&lb) {
        assert!(((x - y) / y).abs() < 1e-5, "losses {la:?} vs {lb:?}");
    }
    let e = common::rel_err(&weights(a), &weights(b));
    assert!(e < 1e-5, "weights differ by {e}");
    // Something was learnt, so equal weights mean something.
    assert!(la[0] != la[steps - 1], "{la:?}");
}

#[test]
fn two_ranks_train_the_one_process_run_on_built_in_data() {
    if !have_mpirun() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (one, two, cols) = (
        t.path().join("one"),
        t.path().join("two"),
        t.path().join("cols"),
    );
    single(&tiny(&one, &["--steps", "5"]));
    let o = ranks(2, &tiny(&two, &["--steps", "5"]));
    assert!(o.status.success(), "{}", describe(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("data-parallel: 2 ranks, global batch 8 (4 per rank)"),
        "{out}"
    );
    assert_same_run(&one, &two, 5);
    // Hybrid: the columns of Figure 2 on two executors inside each of the two ranks.
    let o = ranks(2, &tiny(&cols, &["--steps", "5", "--executors", "2"]));
    assert!(o.status.success(), "{}", describe(&o));
    assert_same_run(&one, &cols, 5);
}

#[test]
fn a_checkpoint_of_two_ranks_resumes_in_one_process() {
    if !have_mpirun() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (one, moved) = (t.path().join("one"), t.path().join("moved"));
    // Five steps are more than an epoch (4 steps): validation runs sharded, then the run moves
    // to one process.
    single(&tiny(&one, &["--steps", "6"]));
    let o = ranks(2, &tiny(&moved, &["--steps", "5"]));
    assert!(o.status.success(), "{}", describe(&o));
    single(&[
        "train".into(),
        "--checkpoint-dir".into(),
        moved.to_str().unwrap().into(),
        "--resume".into(),
        "--steps".into(),
        "6".into(),
    ]);
    assert_same_run(&one, &moved, 6);
    // The validation after epoch 1 ran sharded over the two ranks: its errors are counts over
    // all 8 images (multiples of 1/8), and agree with the one process's up to a near-tie
    // flipping one image (the net is still close to uniform here).
    let val = |d: &Path| {
        alexnet::metrics::read_log(&d.join("metrics.jsonl"))
            .unwrap()
            .1
    };
    let (a, b) = (val(&one), val(&moved));
    assert_eq!((a.len(), b.len()), (1, 1));
    for (x, y) in [
        (a[0].val_top1, b[0].val_top1),
        (a[0].val_top5, b[0].val_top5),
    ] {
        assert!(
            (y * 8.0 - (y * 8.0).round()).abs() < 1e-4,
            "{y} is not a count over 8"
        );
        assert!((x - y).abs() <= 0.125 + 1e-6, "{x} vs {y}");
    }
}

/// 20 small PNGs of 2 classes prepared at side 76 into `root/data` (16 train, 4 val).
fn prepared_dataset(root: &Path) -> PathBuf {
    let src = root.join("photos");
    for class in 0..2 {
        let dir = src.join(format!("class{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..10u32 {
            let img = image::RgbImage::from_fn(90, 80, |x, y| {
                image::Rgb([
                    (x * 3 + i) as u8,
                    (y * 2 + class * 100) as u8,
                    (x + y) as u8,
                ])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
    let data = root.join("data");
    let o = Command::new(BIN)
        .args([
            "prepare",
            "--quiet",
            "--val-fraction",
            "0.2",
            "--side",
            "76",
        ])
        .args([&src, &data])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", describe(&o));
    data
}

/// [`tiny`] on a prepared dataset, which decides the classes.
fn tiny_on(data: &Path, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = tiny(dir, &["--data", data.to_str().unwrap()]);
    let at = a.iter().position(|s| s == "--classes").unwrap();
    a.drain(at..at + 2);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn two_ranks_train_the_one_process_run_on_a_prepared_dataset() {
    if !have_mpirun() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let data = prepared_dataset(t.path());
    let with_data = |dir: &PathBuf| tiny_on(&data, dir, &["--steps", "3"]);
    let (one, two) = (t.path().join("one"), t.path().join("two"));
    single(&with_data(&one));
    let o = ranks(2, &with_data(&two));
    assert!(o.status.success(), "{}", describe(&o));
    assert_same_run(&one, &two, 3);
}

#[test]
fn ranks_with_different_settings_or_an_uneven_batch_are_refused() {
    if !have_mpirun() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("run");
    let a = tiny(&dir, &["--steps", "2", "--lr", "0.01"]);
    let b = tiny(&dir, &["--steps", "2", "--lr", "0.02"]);
    let o = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "1", BIN])
        .args(&a)
        .args([":", "-np", "1", BIN])
        .args(&b)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(
        describe(&o).contains("training settings"),
        "{}",
        describe(&o)
    );
    let o = ranks(3, &tiny(&t.path().join("uneven"), &["--steps", "1"]));
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(
        describe(&o).contains("does not split evenly over 3 ranks"),
        "{}",
        describe(&o)
    );
}

/// A rank that fails mid-run (here: an image of its share damaged on disk after the first
/// epoch) ends every rank at once, naming itself, the damaged file and the last checkpoint with
/// the command that continues from it; that checkpoint is intact.
#[test]
fn a_rank_failing_mid_run_ends_the_job_naming_the_last_checkpoint() {
    if !have_mpirun() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let data = prepared_dataset(t.path());
    let dir = t.path().join("run");
    // One epoch: 16 images, global batch 8.
    let o = ranks(2, &tiny_on(&data, &dir, &["--steps", "2"]));
    assert!(o.status.success(), "{}", describe(&o));
    // The last byte of each training shard is a pixel of its last image: its checksum, checked
    // on every read, now fails, and the next epoch reads every image.
    let mut shards = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("train-") && name.ends_with(".pack") {
            let mut bytes = std::fs::read(&path).unwrap();
            *bytes.last_mut().unwrap() ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            shards += 1;
        }
    }
    assert!(shards > 0, "no training shard found in {}", data.display());
    let resume = [
        "train",
        "--checkpoint-dir",
        dir.to_str().unwrap(),
        "--resume",
        "--steps",
        "4",
    ]
    .map(String::from);
    let started = std::time::Instant::now();
    let o = ranks(2, &resume);
    let took = started.elapsed();
    let out = describe(&o);
    assert!(!o.status.success(), "{out}");
    // Not the 60 s collective timeout: the failing rank ends the job itself.
    assert!(took.as_secs() < 30, "took {took:?}: {out}");
    assert!(out.contains("aborting all ranks"), "{out}");
    assert!(out.contains("damaged"), "{out}");
    assert!(
        out.contains(&format!(
            "the last checkpoint saved is step 2's, in {d}; `alexnet-cli train --checkpoint-dir \
             {d} --resume`",
            d = dir.display()
        )),
        "{out}"
    );
    let saved = alexnet::checkpoint::Checkpoint::load(&dir.join("last.safetensors")).unwrap();
    assert_eq!(saved.train_state.map(|s| s.step), Some(2));
}
