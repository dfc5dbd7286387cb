//! The MPI communicator under `mpirun -np 2`: collectives, overlapped buckets, the progress
//! thread, and faults that must end the job promptly with a message naming the rank. Skips
//! (passing) where `mpirun` is not installed.
#![cfg(feature = "mpi")]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any run may take; the fault runs must end well within it.
const LIMIT: Duration = Duration::from_secs(60);

struct Run {
    ok: bool,
    output: String,
    took: Duration,
}

/// `mpirun -np 2 alexnet-dist-check MODE`, with `env` passed to both ranks; `None` without
/// mpirun.
fn mpirun(mode: &str, env: &[(&str, &str)]) -> Option<Run> {
    if Command::new("mpirun").arg("--version").output().is_err() {
        eprintln!("skipping: mpirun not installed");
        return None;
    }
    let mut cmd = Command::new("mpirun");
    // Root in containers; more ranks than cores on small CI machines.
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"]);
    for (k, v) in env {
        cmd.env(k, v).args(["-x", k]);
    }
    cmd.arg(env!("CARGO_BIN_EXE_alexnet-dist-check"))
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn mpirun");
    // Read both pipes on threads so a chatty job cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).map(|_| s)
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for mpirun") {
            break status;
        }
        if started.elapsed() > LIMIT {
            child.kill().expect("kill mpirun");
            panic!("mpirun {mode} still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let output = format!(
        "{}{}",
        out.join().expect("stdout reader").unwrap_or_default(),
        err.join().expect("stderr reader").unwrap_or_default()
    );
    eprintln!("mpirun {mode}: {status} after {took:?}\n{output}");
    Some(Run {
        ok: status.success(),
        output,
        took,
    })
}

#[test]
fn collectives_and_buckets_sum_correctly() {
    let Some(run) = mpirun("check", &[]) else {
        return;
    };
    assert!(run.ok, "{}", run.output);
    for rank in 0..2 {
        assert!(
            run.output.contains(&format!("rank {rank} of 2: ok")),
            "{}",
            run.output
        );
    }
}

#[test]
fn differing_configurations_are_refused_on_every_rank() {
    let Some(run) = mpirun("mismatch", &[]) else {
        return;
    };
    assert!(!run.ok, "{}", run.output);
    for rank in 0..2 {
        assert!(
            run.output.contains(&format!(
                "error on rank {rank}: distributed: rank 1 of 2 differ from rank 0 on \
                 configuration"
            )),
            "{}",
            run.output
        );
    }
}

/// Whether the launcher's report names rank 1: OpenMPI writes the process as `[[job,1],1]` or
/// "process rank 1", MPICH "RANK 1".
fn launcher_names_rank_1(output: &str) -> bool {
    output.contains(",1],1]") || output.contains("process rank 1") || output.contains("RANK 1")
}

#[test]
fn a_rank_that_exits_before_a_collective_ends_the_job() {
    let Some(run) = mpirun("die", &[("ALEXNET_COLLECTIVE_TIMEOUT_S", "10")]) else {
        return;
    };
    assert!(!run.ok, "{}", run.output);
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
    assert!(launcher_names_rank_1(&run.output), "{}", run.output);
}

#[test]
fn a_rank_killed_by_a_signal_ends_the_job() {
    let Some(run) = mpirun("crash", &[("ALEXNET_COLLECTIVE_TIMEOUT_S", "10")]) else {
        return;
    };
    assert!(!run.ok, "{}", run.output);
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
    assert!(launcher_names_rank_1(&run.output), "{}", run.output);
}

#[test]
fn a_rank_that_exits_before_mpi_starts_ends_the_job() {
    let Some(run) = mpirun("die-before-init", &[("ALEXNET_COLLECTIVE_TIMEOUT_S", "10")]) else {
        return;
    };
    assert!(!run.ok, "{}", run.output);
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
    // OpenMPI's report may stop at "1 process returned a non-zero exit code" here; the rank's
    // own last words name it.
    assert!(run.output.contains("rank 1 exits"), "{}", run.output);
}

#[test]
fn a_rank_that_never_arrives_times_out_naming_the_operation() {
    let Some(run) = mpirun("hang", &[("ALEXNET_COLLECTIVE_TIMEOUT_S", "3")]) else {
        return;
    };
    assert!(!run.ok, "{}", run.output);
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
    assert!(
        run.output
            .contains("rank 0 of 2: all_reduce_sum_f32 timed out after 3.0 s"),
        "{}",
        run.output
    );
}

/// The progress thread (on by default) moves started sums on while the rank makes no MPI calls
/// of its own, as during the backward's layers: after a sleep of 3x the time the sums take when
/// waited for at once, less than half of that time is left to wait. Without the thread
/// (`ALEXNET_MPI_PROGRESS_US=0`) OpenMPI moves nothing during the sleep and the wait is about
/// the whole time again (README, "Data parallelism"); the factor of 2 leaves a loaded machine
/// room, as the sleeping ranks leave their cores to the progress threads.
#[test]
fn the_progress_thread_moves_sums_while_the_rank_makes_no_mpi_calls() {
    let Some(run) = mpirun("overlap", &[]) else {
        return;
    };
    assert!(run.ok, "{}", run.output);
    let ms_before = |marker: &str| -> f64 {
        let end = run.output.find(marker).expect(marker);
        let start = run.output[..end]
            .rfind(' ')
            .expect("a number before the marker")
            + 1;
        run.output[start..end].parse().expect("milliseconds")
    };
    let at_once = ms_before(" ms right after the start");
    let after_sleep = ms_before(" ms after ");
    assert!(
        after_sleep < 0.5 * at_once,
        "waited {after_sleep} ms after the sleep, {at_once} ms at once: {}",
        run.output
    );
}
