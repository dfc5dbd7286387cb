//! The CLI end to end, as a user meets it: every flag's range is checked before any work, bad
//! input of every kind is a clear error (never a panic or an abort), nothing a run did is lost or
//! overwritten, and a resumed run is the same run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_alexnet-cli");

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the alexnet-cli binary runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A failure the way the CLI promises: exit 1 (our error) or 2 (clap's), an "error" line, no
/// panic (exit 101) and no abort (killed by a signal).
fn assert_clear_error(o: &Output, what: &str) {
    let (out, err) = text(o);
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "{what}: exit {:?}\nstdout: {out}\nstderr: {err}",
        o.status
    );
    assert!(
        err.contains("error") && !err.contains("panicked"),
        "{what}: stderr {err}"
    );
}

fn assert_ok(o: &Output, what: &str) {
    let (out, err) = text(o);
    assert!(
        o.status.success(),
        "{what}: exit {:?}\nstdout: {out}\nstderr: {err}",
        o.status
    );
}

/// A tiny run of the paper's layers on the built-in data: 4 batches of 4 per epoch.
fn tiny(dir: &Path) -> Vec<String> {
    [
        "train",
        "--quiet",
        "--input-size",
        "67",
        "--batch-size",
        "4",
        "--builtin-train",
        "16",
        "--builtin-val",
        "4",
        "--classes",
        "2",
        "--workers",
        "1",
        "--threads",
        "2",
        "--checkpoint-dir",
        dir.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// `base` with `flag`'s value replaced.
fn with(base: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut args = base.to_vec();
    let at = args.iter().position(|a| a == flag).expect("flag in base") + 1;
    args[at] = value.to_string();
    args
}

fn run(base: &[String], extra: &[&str]) -> Output {
    let mut all: Vec<&str> = base.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    cli(&all)
}

/// The step records' (step, loss) of a metrics log, in order.
fn step_losses(log: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("kind").and_then(|t| t.as_str()) == Some("step"))
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].to_string()))
        .collect()
}

/// Each numeric flag, the range its help promises, and values at and past both ends: in range
/// the command gets past the parser (and here fails later, on the missing dataset or device);
/// out of range it is refused naming the flag, exit 2. None of them panics.
#[test]
fn every_numeric_flag_is_range_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let runs = tmp.path().join("runs");
    // (command prefix, flag, smallest, largest or None, integer?)
    let train = vec![
        "train".to_string(),
        "--data".into(),
        empty.to_str().unwrap().into(),
        "--runs-dir".into(),
        runs.to_str().unwrap().into(),
    ];
    let lars = [train.clone(), vec!["--lars".to_string()]].concat();
    let device = vec!["bench".to_string(), "--device".into(), "cuda".into()];
    let summary = vec!["summary".to_string()];
    let prepare = vec![
        "prepare".to_string(),
        empty.to_str().unwrap().into(),
        tmp.path().join("out").to_str().unwrap().into(),
    ];
    let neighbours = vec![
        "neighbours".to_string(),
        "--checkpoint".into(),
        tmp.path().join("none.safetensors").to_str().unwrap().into(),
        "--data".into(),
        empty.to_str().unwrap().into(),
        "--query".into(),
        "q.png".into(),
    ];
    type Range = (&'static str, f64, Option<f64>, bool);
    let cases: Vec<(&Vec<String>, Vec<Range>)> = vec![
        (
            &train,
            vec![
                ("--steps", 1.0, None, true),
                ("--epochs", 1.0, None, true),
                ("--batch-size", 1.0, Some(1048576.0), true),
                ("--lr", 1e-30, None, false),
                ("--momentum", 0.0, Some(0.999), false),
                ("--weight-decay", 0.0, None, false),
                ("--workers", 0.0, Some(1024.0), true),
                ("--classes", 2.0, Some(1048576.0), true),
                ("--input-size", 1.0, Some(65536.0), true),
                ("--dropout", 0.0, Some(0.999), false),
                ("--patience", 1.0, Some(4294967295.0), true),
                ("--lr-step-epochs", 1.0, None, true),
                ("--checkpoint-every", 1.0, None, true),
                ("--builtin-train", 1.0, None, true),
                ("--builtin-val", 1.0, None, true),
                ("--executors", 1.0, Some(64.0), true),
                ("--threads", 0.0, Some(1024.0), true),
                ("--warmup-epochs", 0.0, None, false),
            ],
        ),
        (&lars, vec![("--lars-eta", 1e-30, None, false)]),
        (
            &device,
            vec![
                ("--steps", 1.0, None, true),
                ("--batch-size", 1.0, Some(1048576.0), true),
                ("--classes", 2.0, Some(1048576.0), true),
                ("--input-size", 1.0, Some(65536.0), true),
                ("--gpus", 1.0, Some(64.0), true),
            ],
        ),
        (
            &summary,
            vec![
                ("--classes", 2.0, Some(1048576.0), true),
                ("--input-size", 1.0, Some(65536.0), true),
            ],
        ),
        (
            &neighbours,
            vec![
                ("--codes", 8.0, Some(1024.0), true),
                ("--code-hidden", 1.0, Some(16384.0), true),
                ("--code-epochs", 1.0, Some(100000.0), true),
                ("--code-batch", 1.0, Some(65536.0), true),
                ("--code-lr", 1e-30, None, false),
                ("--code-noise", 0.0, None, false),
                ("--code-queries", 1.0, Some(1000000.0), true),
                ("--precision-at", 1.0, Some(100000.0), true),
            ],
        ),
        (
            &prepare,
            vec![
                ("--side", 1.0, Some(8192.0), true),
                ("--shard-size", 1.0, Some(65536.0), true),
                ("--threads", 0.0, Some(1024.0), true),
            ],
        ),
    ];
    for (prefix, flags) in &cases {
        for &(flag, min, max, integer) in flags {
            let below = if integer { min - 1.0 } else { -min.max(0.5) };
            let mut values: Vec<(String, bool)> = vec![
                (fmt(min, integer), true),
                (fmt(below, integer), false),
                ("nan".into(), false),
                ("".into(), false),
            ];
            if let Some(max) = max {
                values.push((fmt(max, integer), true));
                values.push((fmt(if integer { max + 1.0 } else { 1.0 }, integer), false));
            }
            for (value, valid) in values {
                let arg = format!("{flag}={value}");
                let mut argv: Vec<&str> = prefix.iter().map(String::as_str).collect();
                argv.push(&arg);
                let o = cli(&argv);
                let what = format!("{argv:?}");
                let (out, err) = text(&o);
                if valid {
                    // Past the parser, any outcome but a crash: summary prints or refuses the
                    // geometry; train and bench stop at the empty dataset or the missing GPU.
                    assert!(
                        matches!(o.status.code(), Some(0 | 1)),
                        "{what}: {:?}\n{out}\n{err}",
                        o.status
                    );
                    assert!(!err.contains("panicked"), "{what}: {err}");
                } else {
                    assert_eq!(o.status.code(), Some(2), "{what}: {out}\n{err}");
                    assert!(err.contains(flag), "{what}: {err}");
                }
            }
        }
    }
}

fn fmt(v: f64, integer: bool) -> String {
    if integer {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Values inside every range that the old code accepted and then misused are refused with the
/// flag's name (`--lr=-1` as clearly as `--momentum 2`).
#[test]
fn values_the_paper_rule_cannot_use_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny(&tmp.path().join("run"));
    for bad in [
        "--momentum=2",
        "--weight-decay=-1",
        "--lr-step-epochs=0",
        "--builtin-val=0",
        "--lr=-1",
        "--dropout=1",
    ] {
        let o = run(&base, &[bad]);
        assert_clear_error(&o, bad);
        let flag = bad.split('=').next().unwrap();
        assert!(text(&o).1.contains(flag), "{bad}: {}", text(&o).1);
    }
    // bench --steps 0 once indexed an empty list of timings.
    let o = cli(&["bench", "--steps", "0"]);
    assert_clear_error(&o, "bench --steps 0");
    // bf16 GEMMs exist on the CUDA engine only: the CPU engine refuses, naming the way out, and
    // --tf32 and --precision bf16 (two settings of the same GEMMs) are refused together.
    let o = cli(&["bench", "--precision", "bf16", "--steps", "1"]);
    assert_clear_error(&o, "bench --precision bf16 on the CPU");
    assert!(text(&o).1.contains("--device cuda"), "{}", text(&o).1);
    let o = cli(&["bench", "--precision", "bf16", "--tf32", "--device", "cuda"]);
    assert_clear_error(&o, "--precision bf16 --tf32");
    // NCCL sums GPU memory: on the CPU engine the flag is refused, naming the way out.
    let o = cli(&["bench", "--all-reduce", "nccl", "--steps", "1"]);
    assert_clear_error(&o, "bench --all-reduce nccl on the CPU");
    assert!(text(&o).1.contains("--device cuda"), "{}", text(&o).1);
}

/// Bad input of every kind, through every command: each is a clear error, never a crash.
#[test]
fn bad_input_corpus_gets_clear_errors_from_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let garbage = t.join("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .unwrap();
    let empty_file = t.join("empty.bin");
    std::fs::write(&empty_file, b"").unwrap();
    let huge_header = t.join("huge.safetensors");
    std::fs::write(&huge_header, u64::MAX.to_le_bytes()).unwrap();
    let not_image = t.join("not-an-image.jpg");
    std::fs::write(&not_image, b"GIF89a but not really").unwrap();
    let empty_dir = t.join("empty-dir");
    std::fs::create_dir(&empty_dir).unwrap();
    let bad_meta = t.join("bad-meta");
    std::fs::create_dir(&bad_meta).unwrap();
    std::fs::write(bad_meta.join("meta.json"), b"{\"format\": 3").unwrap();
    let bad_log = t.join("bad.jsonl");
    std::fs::write(&bad_log, b"{\"type\":\"step\",\"step\":\"x\"}\nnot json\n").unwrap();
    let missing = t.join("missing");
    let runs = t.join("runs");
    let p = |p: &PathBuf| p.to_str().unwrap().to_string();
    let checkpoints = [
        &garbage,
        &empty_file,
        &huge_header,
        &empty_dir,
        &missing,
        &not_image,
    ];
    let datasets = [&empty_dir, &bad_meta, &missing, &garbage];
    let mut cases: Vec<Vec<String>> = Vec::new();
    for c in checkpoints {
        cases.push(vec![
            "predict".into(),
            "--checkpoint".into(),
            p(c),
            p(&not_image),
        ]);
        cases.push(vec![
            "eval".into(),
            "--checkpoint".into(),
            p(c),
            "--data".into(),
            p(&bad_meta),
        ]);
        cases.push(vec![
            "train".into(),
            "--runs-dir".into(),
            p(&runs),
            "--init-from".into(),
            p(c),
            "--steps".into(),
            "1".into(),
        ]);
    }
    for d in datasets {
        cases.push(vec![
            "train".into(),
            "--runs-dir".into(),
            p(&runs),
            "--data".into(),
            p(d),
        ]);
        cases.push(vec![
            "eval".into(),
            "--checkpoint".into(),
            p(&garbage),
            "--data".into(),
            p(d),
        ]);
        cases.push(vec!["prepare".into(), p(d), p(&t.join("out"))]);
    }
    for log in [&bad_log, &missing, &empty_file, &empty_dir] {
        cases.push(vec!["plot".into(), p(log)]);
    }
    cases.push(vec![
        "train".into(),
        "--checkpoint-dir".into(),
        p(&empty_dir),
        "--resume".into(),
    ]);
    cases.push(vec!["summary".into(), "--input-size".into(), "40".into()]);
    cases.push(vec!["bench".into(), "--input-size".into(), "40".into()]);
    for case in &cases {
        let argv: Vec<&str> = case.iter().map(String::as_str).collect();
        assert_clear_error(&cli(&argv), &format!("{argv:?}"));
    }
}

/// A configuration that cannot fit in memory is refused before any work, with what would fit.
#[test]
fn a_configuration_too_big_for_memory_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let t0 = Instant::now();
    let o = cli(&[
        "train",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--input-size",
        "20000",
        "--batch-size",
        "8",
    ]);
    assert_clear_error(&o, "--input-size 20000");
    let err = text(&o).1;
    assert!(
        err.contains("needs about") && err.contains("GiB") && err.contains("--input-size"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

/// `train` with no directory saves into a new runs/run-N; Ctrl-C saves the step it was on and
/// prints the file and the command that continues the run, which then does.
#[test]
fn ctrl_c_saves_into_the_default_run_directory_and_says_how_to_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let mut args = tiny(&runs);
    // No --checkpoint-dir: the default run directory.
    args.truncate(args.len() - 2);
    args.extend(["--runs-dir".into(), runs.to_str().unwrap().into()]);
    args.extend(["--epochs".into(), "1000".into()]);
    let mut child = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = runs.join("run-1").join("metrics.jsonl");
    wait_for_steps(&log, 2, &mut child);
    signal(&child, "INT");
    let o = child.wait_with_output().unwrap();
    assert_ok(&o, "interrupted train");
    let (out, _) = text(&o);
    let saved = out
        .lines()
        .find_map(|l| l.strip_prefix("saved "))
        .unwrap_or_else(|| panic!("no 'saved' line: {out}"));
    assert!(Path::new(saved).is_file(), "{saved} was not written");
    assert!(
        saved.starts_with(runs.join("run-1").to_str().unwrap()),
        "{saved}"
    );
    let resume = out
        .lines()
        .find_map(|l| l.strip_prefix("continue with: alexnet-cli "))
        .unwrap_or_else(|| panic!("no resume command: {out}"));
    let steps_done = step_losses(&log).len() as u64;
    let mut argv: Vec<String> = resume.split(' ').map(String::from).collect();
    argv.extend(["--steps".into(), (steps_done + 2).to_string()]);
    let o = run(&argv, &[]);
    assert_ok(&o, "the printed resume command");
    let steps: Vec<u64> = step_losses(&log).iter().map(|s| s.0).collect();
    assert_eq!(steps, (1..=steps_done + 2).collect::<Vec<_>>());
    // A second default run gets a directory of its own.
    let o = run(&args[..args.len() - 2], &["--steps", "1"]);
    assert_ok(&o, "second default run");
    assert!(runs.join("run-2").join("last.safetensors").is_file());
}

/// A new run into a directory that holds one is refused (and the old run stays as it was);
/// --overwrite starts over there.
#[test]
fn a_directory_holding_a_run_is_not_overwritten_without_being_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let base = tiny(&dir);
    assert_ok(&run(&base, &["--steps", "3"]), "first run");
    let before = std::fs::read(dir.join("last.safetensors")).unwrap();
    let log_before = std::fs::read(dir.join("metrics.jsonl")).unwrap();
    let o = run(&base, &["--steps", "2"]);
    assert_clear_error(&o, "second run into the same directory");
    let err = text(&o).1;
    assert!(
        err.contains("already holds a run")
            && err.contains("step 3")
            && err.contains("--resume")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), before);
    assert_eq!(
        std::fs::read(dir.join("metrics.jsonl")).unwrap(),
        log_before
    );
    assert_ok(&run(&base, &["--steps", "2", "--overwrite"]), "--overwrite");
    let steps: Vec<u64> = step_losses(&dir.join("metrics.jsonl"))
        .iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(steps, vec![1, 2]);
    assert!(!dir.join("step-3.safetensors").exists());
}

/// On --resume the settings are the run's: a changed one is refused naming both values, unless
/// --override; the budget may change; --steps wins over --epochs.
#[test]
fn resume_is_the_same_run_unless_overridden() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let base = tiny(&dir);
    assert_ok(&run(&base, &["--steps", "2", "--lr", "0.01"]), "first run");
    let o = run(
        &with(&base, "--batch-size", "2"),
        &["--resume", "--steps", "4", "--lr", "0.02"],
    );
    assert_clear_error(&o, "resume with other settings");
    let err = text(&o).1;
    assert!(
        err.contains("--lr: the run has 0.01, the command line 0.02")
            && err.contains("--batch-size: the run has 4, the command line 2")
            && err.contains("--override"),
        "{err}"
    );
    // Flags left out come from the run: --steps may change, and overrides --epochs (one epoch
    // is 4 steps here).
    let o = run(&base, &["--resume", "--steps", "6", "--epochs", "1"]);
    assert_ok(&o, "resume with a new budget");
    assert_eq!(step_losses(&dir.join("metrics.jsonl")).len(), 6);
    let o = run(
        &base,
        &["--resume", "--steps", "7", "--lr", "0.02", "--override"],
    );
    assert_ok(&o, "--override");
    let (out, _) = text(&o);
    assert!(out.contains("--lr: the run has 0.01"), "{out}");
}

/// SIGKILL at random moments of a run, each time resumed from what is on disk: the run ends
/// exactly as an uninterrupted one (the same losses at every step, bit for bit), and at every
/// kill the last checkpoint was whole.
#[test]
fn sigkill_at_any_moment_loses_only_the_steps_since_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = "10";
    let whole = tmp.path().join("whole");
    let o = run(
        &tiny(&whole),
        &["--steps", steps, "--checkpoint-every", "2"],
    );
    assert_ok(&o, "uninterrupted run");
    let expected = step_losses(&whole.join("metrics.jsonl"));
    assert_eq!(expected.len(), 10);

    let killed = tmp.path().join("killed");
    let base = tiny(&killed);
    let mut rng = alexnet::rng::Rng::new(7);
    let mut first = true;
    for _ in 0..3 {
        let mut args = base.clone();
        args.extend([
            "--steps".into(),
            steps.into(),
            "--checkpoint-every".into(),
            "2".into(),
        ]);
        if !first {
            args.push(if killed.join("last.safetensors").exists() {
                "--resume".into()
            } else {
                "--overwrite".into()
            });
        }
        first = false;
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Somewhere in the next few steps, or during a save, before the run could end.
        let done = step_losses_or_empty(&killed.join("metrics.jsonl")).len();
        let target = (done + 1 + rng.below(3)).min(9);
        wait_for_steps(&killed.join("metrics.jsonl"), target, &mut child);
        std::thread::sleep(Duration::from_millis(rng.below(150) as u64));
        child.kill().unwrap();
        child.wait().unwrap();
        if killed.join("last.safetensors").exists() {
            alexnet::checkpoint::Checkpoint::load(&killed.join("last.safetensors"))
                .expect("the last checkpoint is whole after SIGKILL");
        }
    }
    let mut args = base.clone();
    args.extend(["--steps".into(), steps.into(), "--resume".into()]);
    assert_ok(&run(&args, &[]), "final resume");
    assert_eq!(step_losses(&killed.join("metrics.jsonl")), expected);
}

fn step_losses_or_empty(log: &Path) -> Vec<(u64, String)> {
    if log.exists() {
        step_losses(log)
    } else {
        Vec::new()
    }
}

/// Waits until the metrics log has `n` step records or the process has ended (120 s at most).
fn wait_for_steps(log: &Path, n: usize, child: &mut Child) {
    let t0 = Instant::now();
    while step_losses_or_empty(log).len() < n {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no {n} steps in {} (pid {})",
            log.display(),
            child.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}
