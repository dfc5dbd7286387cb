//! Checks and measures the `dist` communicator under an MPI launcher; tests/dist.rs drives it.
//!
//!   mpirun -np 2 alexnet-dist-check check          # collectives give the right sums
//!   mpirun -np 2 alexnet-dist-check bench [FLOATS] # all-reduce time and GB/s (default: 61M f32,
//!                                                  # the paper net's gradients)
//!   mpirun -np 2 alexnet-dist-check overlap [FLOATS]
//!                                                  # sums in 25 MB buckets: waited for at once,
//!                                                  # and waited for after the rank sleeps (no
//!                                                  # MPI calls of its own) for 3x that time
//!                                                  # (default: 16M f32)
//!   mpirun -np 2 alexnet-dist-check die|crash|die-before-init|hang|mismatch
//!                                                  # faults: rank 1 exits or is killed by a
//!                                                  # signal before a collective, exits before
//!                                                  # MPI starts, never arrives, or runs another
//!                                                  # configuration
//!
//! Exit status 0 when the check passes; the fault modes must end every rank with an error.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use alexnet::dist::{self, buckets, Comm};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("check");
    let launched_rank = alexnet::dist::Launch::from_env()
        .ok()
        .flatten()
        .map(|l| l.rank);
    if mode == "die-before-init" && launched_rank == Some(1) {
        eprintln!("dist-check: rank 1 exits before MPI starts (fault injected)");
        std::process::exit(3);
    }
    let comm = match Comm::from_env() {
        Ok(c) => c,
        Err(e) => {
            dist::eprint_line(&format!("error: {e}"));
            return ExitCode::FAILURE;
        }
    };
    // The optional FLOATS after the mode.
    let floats_or = |default: usize| args.get(1).and_then(|s| s.parse().ok()).unwrap_or(default);
    match mode {
        "check" => {
            check(&comm);
            println!("dist-check: rank {} of {}: ok", comm.rank(), comm.size());
            ExitCode::SUCCESS
        }
        "bench" => {
            bench(&comm, floats_or(61_000_000));
            ExitCode::SUCCESS
        }
        "overlap" => {
            overlap(&comm, floats_or(16_000_000));
            ExitCode::SUCCESS
        }
        "die" | "crash" | "die-before-init" | "hang" => {
            if comm.rank() == 1 && mode == "die" {
                eprintln!("dist-check: rank 1 exits before the all-reduce (fault injected)");
                std::process::exit(3);
            }
            if comm.rank() == 1 && mode == "crash" {
                eprintln!("dist-check: rank 1 aborts before the all-reduce (fault injected)");
                std::process::abort();
            }
            if comm.rank() == 1 && mode == "hang" {
                eprintln!("dist-check: rank 1 sleeps instead of the all-reduce (fault injected)");
                std::thread::sleep(Duration::from_secs(120));
            }
            let mut x = vec![1.0f32; 1024];
            comm.all_reduce_sum_f32(&mut x);
            eprintln!(
                "dist-check: the faulty collective returned on rank {}",
                comm.rank()
            );
            ExitCode::SUCCESS
        }
        "mismatch" => match comm.agree_on("configuration", 0xa1e5 + (comm.rank() == 1) as u64) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                dist::eprint_line(&format!("error on rank {}: {e}", comm.rank()));
                ExitCode::from(2)
            }
        },
        other => {
            eprintln!(
                "unknown mode {other:?}: check, bench, overlap, die, crash, die-before-init, \
                 hang, mismatch"
            );
            ExitCode::from(2)
        }
    }
}

/// Each check compares with sums computed locally; values are small integers, exact in f32.
fn check(comm: &Comm) {
    let (rank, size) = (comm.rank(), comm.size());
    let value = |r: usize, i: usize| ((r + 1) * (i % 7)) as f32;
    let total = |i: usize| (0..size).map(|r| value(r, i)).sum::<f32>();

    let mut x: Vec<f32> = (0..1_000_003).map(|i| value(rank, i)).collect();
    comm.all_reduce_sum_f32(&mut x);
    assert!(
        x.iter().enumerate().all(|(i, &v)| v == total(i)),
        "all_reduce_sum_f32"
    );

    let mut loss = [rank as f64 + 0.5, 1.0];
    comm.all_reduce_sum_f64(&mut loss);
    let want = (0..size).map(|r| r as f64 + 0.5).sum::<f64>();
    assert_eq!(loss, [want, size as f64], "all_reduce_sum_f64");

    let mut errors = [rank as u64, u64::from(u32::MAX) + 1];
    comm.all_reduce_sum_u64(&mut errors);
    let want = (0..size as u64).sum::<u64>();
    assert_eq!(
        errors,
        [want, size as u64 * (u64::from(u32::MAX) + 1)],
        "all_reduce_sum_u64"
    );

    let root = size - 1;
    let mut w: Vec<f32> = (0..4099).map(|i| (i * (rank + 1)) as f32).collect();
    comm.broadcast_f32(&mut w, root);
    assert!(
        w.iter()
            .enumerate()
            .all(|(i, &v)| v == (i * (root + 1)) as f32),
        "broadcast_f32"
    );

    let config = b"alexnet config: batch 128, lr 0.01".to_vec();
    let mut bytes = if rank == 0 {
        config.clone()
    } else {
        vec![7; 3 + rank]
    };
    comm.broadcast_bytes(&mut bytes, 0);
    assert_eq!(bytes, config, "broadcast_bytes");

    comm.agree_on("configuration", 0xa1e5)
        .expect("agree_on with equal hashes");
    comm.barrier();

    // Buckets overlapped: start each as it is "ready", poll, and wait in order; the sums must
    // equal the blocking all-reduce of the same data.
    let sizes = [300_000, 1000, 70_000, 250_000, 10, 5, 120_000];
    let grads: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(t, &n)| (0..n).map(|i| value(rank, i + t)).collect())
        .collect();
    let plan = buckets(&sizes, 1 << 20);
    assert!(plan.len() > 2, "the check needs several buckets: {plan:?}");
    let mut pending: Vec<_> = plan
        .iter()
        .map(|r| comm.start_all_reduce(grads[r.clone()].concat()))
        .collect();
    for p in &mut pending {
        p.test();
    }
    for (range, p) in plan.iter().zip(pending) {
        let summed = p.wait();
        let mut at = 0;
        for t in range.clone() {
            for i in 0..sizes[t] {
                assert_eq!(
                    summed[at],
                    total(i + t),
                    "bucket of tensor {t}, element {i}"
                );
                at += 1;
            }
        }
        assert_eq!(at, summed.len());
    }
}

/// What the progress thread ([`dist::PROGRESS_ENV`]) is for: sums started before a stretch of
/// work without MPI calls (here a sleep, in training the backward's layers) should be done, or
/// nearly, when it ends. Prints, on rank 0, the median of three waits right after the start and
/// of three after a sleep of 3x that plus 0.2 s; checks the sums.
fn overlap(comm: &Comm, floats: usize) {
    let cap = dist::DEFAULT_BUCKET_BYTES / 4;
    let run = |sleep: Duration| -> Duration {
        let parts: Vec<Vec<f32>> = (0..floats.div_ceil(cap))
            .map(|b| vec![comm.rank() as f32 + 1.0; cap.min(floats - b * cap)])
            .collect();
        comm.barrier();
        let pending: Vec<_> = parts
            .into_iter()
            .map(|p| comm.start_all_reduce(p))
            .collect();
        std::thread::sleep(sleep);
        let t = Instant::now();
        let summed: Vec<Vec<f32>> = pending.into_iter().map(|p| p.wait()).collect();
        let waited = t.elapsed();
        let want = (1..=comm.size()).sum::<usize>() as f32;
        assert!(
            summed.iter().flatten().all(|&v| v == want),
            "overlapped sums differ from {want}"
        );
        waited
    };
    run(Duration::ZERO);
    let median = |sleep: Duration| {
        let mut t: Vec<Duration> = (0..3).map(|_| run(sleep)).collect();
        t.sort();
        t[1]
    };
    let at_once = median(Duration::ZERO);
    let sleep = at_once * 3 + Duration::from_millis(200);
    let after = median(sleep);
    if comm.rank() == 0 {
        println!(
            "overlap: {floats} f32 in 25 MB buckets, {} ranks: waited {:.1} ms right after the \
             start, {:.1} ms after {:.1} ms without MPI calls ({}={})",
            comm.size(),
            at_once.as_secs_f64() * 1e3,
            after.as_secs_f64() * 1e3,
            sleep.as_secs_f64() * 1e3,
            dist::PROGRESS_ENV,
            std::env::var(dist::PROGRESS_ENV).unwrap_or_else(|_| "unset".into())
        );
    }
}

/// All-reduce of `floats` f32 (one buffer, then in 25 MB buckets all started at once), best of
/// five after a warm-up. Bus bandwidth is NCCL's measure: 2(n-1)/n of the data crosses each
/// rank's link.
fn bench(comm: &Comm, floats: usize) {
    let size = comm.size();
    let bytes = floats * 4;
    let mut x = vec![1.0f32; floats];
    let time = |f: &mut dyn FnMut()| -> Duration {
        f();
        (0..5)
            .map(|_| {
                comm.barrier();
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .expect("five runs")
    };
    let whole = time(&mut || comm.all_reduce_sum_f32(&mut x));

    let in_buckets = |cap_bytes: usize| {
        let cap = cap_bytes / 4;
        let mut parts: Vec<Vec<f32>> = (0..floats.div_ceil(cap))
            .map(|b| vec![1.0f32; cap.min(floats - b * cap)])
            .collect();
        time(&mut || {
            let pending: Vec<_> = parts.drain(..).map(|p| comm.start_all_reduce(p)).collect();
            parts = pending.into_iter().map(|p| p.wait()).collect();
        })
    };
    let bucketed = in_buckets(alexnet::dist::DEFAULT_BUCKET_BYTES);
    let small = in_buckets(4 << 20);
    // The blocking, out-of-place MPI_Allreduce (rsmpi's safe API), for reference.
    let world = mpi::topology::SimpleCommunicator::world();
    let mut sum = vec![0.0f32; floats];
    let blocking = time(&mut || {
        use mpi::collective::CommunicatorCollectives;
        world.all_reduce_into(
            &x[..],
            &mut sum[..],
            mpi::collective::SystemOperation::sum(),
        );
    });

    if comm.rank() == 0 {
        let factor = 2.0 * (size - 1) as f64 / size as f64;
        for (what, t) in [
            ("one buffer", whole),
            ("25 MB buckets", bucketed),
            ("4 MB buckets", small),
            ("blocking MPI_Allreduce, out of place", blocking),
        ] {
            let alg = bytes as f64 / t.as_secs_f64() / 1e9;
            println!(
                "all-reduce {floats} f32 ({:.1} MB), {size} ranks, {what}: {:.1} ms, algbw \
                 {alg:.2} GB/s, busbw {:.2} GB/s",
                bytes as f64 / 1e6,
                t.as_secs_f64() * 1e3,
                alg * factor
            );
        }
    }
}
