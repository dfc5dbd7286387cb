//! Data-parallel communication: every rank holds the whole model, trains on its share of each
//! batch, and the ranks sum their gradients before each update.
//!
//! [`Comm`] is the communicator the trainer uses: [`Comm::Single`] for a plain run (size 1, every
//! collective a no-op) and, with the `mpi` feature, `Comm::Mpi` for a run under `mpirun`.
//! [`Comm::from_env`] picks one from the launcher's environment. With `nccl`, [`nccl::Nccl`]
//! sums device buffers on GPU ranks; its setup travels over the MPI communicator.
//!
//! Faults end the whole job rather than hang it: under MPI every collective waits at most
//! [`Comm::timeout`] (env [`TIMEOUT_ENV`]), and an MPI error or a timeout prints which operation
//! failed on which rank and aborts every rank (`MPI_Abort`). A collective therefore returns only
//! on success; configuration mismatches ([`Comm::agree_on`]) come back as [`Error::Dist`] on
//! every rank alike.

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};

/// Seconds any one collective may wait for the other ranks before the job is aborted.
pub const TIMEOUT_ENV: &str = "ALEXNET_COLLECTIVE_TIMEOUT_S";

/// Generous: a collective also waits for the slowest rank's compute and for rank 0 writing a
/// checkpoint, and a false alarm kills a healthy run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Microseconds between the MPI progress thread's probes while gradient sums are in flight
/// (`0`: no progress thread; the sums then move only inside the trainer's own MPI calls).
pub const PROGRESS_ENV: &str = "ALEXNET_MPI_PROGRESS_US";

/// Measured on the 2-core box (README, "Data parallelism"): shorter steals more of the core the
/// backward runs on, longer leaves the sums waiting.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_micros(1000);

/// PyTorch DDP's default bucket size (`bucket_cap_mb = 25`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// What the launcher (`mpirun`, `mpiexec`) told this process through its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub size: usize,
    pub rank: usize,
    /// Rank among the processes on this host, when the launcher says.
    pub local_rank: Option<usize>,
}

impl Launch {
    /// `None` when this process was not started by an MPI launcher.
    pub fn from_env() -> Result<Option<Launch>> {
        Launch::from_vars(|name| std::env::var(name).ok())
    }

    /// OpenMPI sets OMPI_COMM_WORLD_*; MPICH's and Intel MPI's Hydra set PMI_SIZE, PMI_RANK and
    /// MPI_LOCALRANKID.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::Dist(format!("{name}={v:?} in the environment is not a number"))
                    })
                })
                .transpose()
        };
        let schemes = [
            (
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_LOCAL_RANK",
            ),
            ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
        ];
        for (size_var, rank_var, local_var) in schemes {
            let Some(size) = number(size_var)? else {
                continue;
            };
            let rank = number(rank_var)?
                .ok_or_else(|| Error::Dist(format!("{size_var} is set but {rank_var} is not")))?;
            if size == 0 || rank >= size {
                return Err(Error::Dist(format!(
                    "{rank_var}={rank} does not fit {size_var}={size}"
                )));
            }
            return Ok(Some(Launch {
                size,
                rank,
                local_rank: number(local_var)?,
            }));
        }
        Ok(None)
    }
}

/// [`TIMEOUT_ENV`] if set (seconds, fractions allowed), else [`DEFAULT_TIMEOUT`].
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => Ok(DEFAULT_TIMEOUT),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                Error::Config(format!(
                    "{TIMEOUT_ENV}={v:?}: expected a positive number of seconds"
                ))
            }),
    }
}

/// [`PROGRESS_ENV`] if set (`None` for 0), else [`DEFAULT_PROGRESS_EVERY`].
pub fn progress_from_env() -> Result<Option<Duration>> {
    match std::env::var(PROGRESS_ENV) {
        Err(_) => Ok(Some(DEFAULT_PROGRESS_EVERY)),
        Ok(v) => parse_progress(&v),
    }
}

fn parse_progress(v: &str) -> Result<Option<Duration>> {
    match v.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(us) => Ok(Some(Duration::from_micros(us))),
        Err(_) => Err(Error::Config(format!(
            "{PROGRESS_ENV}={v:?}: expected whole microseconds between progress probes (0: no \
             progress thread)"
        ))),
    }
}

/// The communicator of a data-parallel run. Collectives must be called by every rank in the same
/// order, from the thread that created the communicator.
pub enum Comm {
    /// One process: rank 0 of 1; collectives leave the data as it is.
    Single,
    /// Ranks started by `mpirun`.
    #[cfg(feature = "mpi")]
    Mpi(mpi::MpiComm),
}

// Without `mpi` only `Single` exists, whose collectives leave their arguments alone.
#[cfg_attr(not(feature = "mpi"), allow(unused_variables, clippy::ptr_arg))]
impl Comm {
    /// [`Comm::Single`] unless an MPI launcher started this process; then MPI is initialised
    /// (feature `mpi`) with the timeout from [`TIMEOUT_ENV`]. Launched as one of several ranks
    /// without the feature, says to rebuild with it (each rank would otherwise train alone).
    pub fn from_env() -> Result<Comm> {
        let launch = Launch::from_env()?;
        match launch {
            None => Ok(Comm::Single),
            #[cfg(feature = "mpi")]
            Some(launch) => Ok(Comm::Mpi(mpi::MpiComm::init(
                launch,
                timeout_from_env()?,
                progress_from_env()?,
            )?)),
            #[cfg(not(feature = "mpi"))]
            Some(launch) if launch.size > 1 => Err(Error::Dist(format!(
                "started by an MPI launcher as rank {} of {}, but this binary was built without \
                 MPI; rebuild with `cargo build --release --features mpi` (or `nccl` for GPUs)",
                launch.rank, launch.size
            ))),
            #[cfg(not(feature = "mpi"))]
            Some(_) => Ok(Comm::Single),
        }
    }

    pub fn rank(&self) -> usize {
        match self {
            Comm::Single => 0,
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.rank(),
        }
    }

    pub fn size(&self) -> usize {
        match self {
            Comm::Single => 1,
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.size(),
        }
    }

    /// Rank among this host's processes: the GPU ordinal a rank should use.
    pub fn local_rank(&self) -> usize {
        match self {
            Comm::Single => 0,
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.local_rank(),
        }
    }

    /// Whether a progress thread moves started sums on by itself ([`PROGRESS_ENV`]); without
    /// one, [`Pending::test`] between layers is what moves them.
    pub fn has_progress_thread(&self) -> bool {
        match self {
            Comm::Single => false,
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.has_progress_thread(),
        }
    }

    /// How long a collective waits for the other ranks before the job is aborted (`Duration::MAX`
    /// for [`Comm::Single`], which never waits).
    pub fn timeout(&self) -> Duration {
        match self {
            Comm::Single => Duration::MAX,
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.timeout(),
        }
    }

    /// Element-wise sum over the ranks, in place.
    pub fn all_reduce_sum_f32(&self, buf: &mut [f32]) {
        match self {
            Comm::Single => {}
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.all_reduce_sum(buf, "all_reduce_sum_f32"),
        }
    }

    /// Element-wise sum over the ranks, in place (loss sums).
    pub fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        match self {
            Comm::Single => {}
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.all_reduce_sum(buf, "all_reduce_sum_f64"),
        }
    }

    /// Element-wise sum over the ranks, in place (error and example counts).
    pub fn all_reduce_sum_u64(&self, buf: &mut [u64]) {
        match self {
            Comm::Single => {}
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.all_reduce_sum(buf, "all_reduce_sum_u64"),
        }
    }

    /// Every rank's `buf` becomes `root`'s (the initial weights). The lengths must agree.
    pub fn broadcast_f32(&self, buf: &mut [f32], root: usize) {
        self.check_root(root);
        match self {
            Comm::Single => {}
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.broadcast(buf, root, "broadcast_f32"),
        }
    }

    /// Every rank's `buf` becomes a copy of `root`'s, whatever its length was (a serialized
    /// configuration or checkpoint).
    pub fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) {
        self.check_root(root);
        match self {
            Comm::Single => {}
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => {
                let mut len = [buf.len() as u64];
                c.broadcast(&mut len, root, "broadcast_bytes (length)");
                buf.resize(len[0] as usize, 0);
                c.broadcast(buf, root, "broadcast_bytes");
            }
        }
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) {
        match self {
            Comm::Single => {}
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.barrier(),
        }
    }

    /// Checks that every rank passed the same `hash` (of its configuration, of `what`); on every
    /// rank alike, an [`Error::Dist`] naming the ranks that differ from rank 0 otherwise.
    pub fn agree_on(&self, what: &str, hash: u64) -> Result<()> {
        let hashes = match self {
            Comm::Single => vec![hash],
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.all_gather_u64(hash, "agree_on"),
        };
        match disagreement(what, &hashes) {
            None => Ok(()),
            Some(msg) => Err(Error::Dist(msg)),
        }
    }

    /// Starts summing `bucket` over the ranks and returns at once, so that the backward pass can
    /// go on while it travels; [`Pending::wait`] hands the summed bucket back. Every rank must
    /// start the same buckets in the same order. Under OpenMPI a reduction advances only inside
    /// MPI calls: the progress thread ([`PROGRESS_ENV`]) makes them while sums are in flight,
    /// and calling [`Pending::test`] between layers does too.
    pub fn start_all_reduce(&self, bucket: Vec<f32>) -> Pending<'_> {
        let inner = match self {
            Comm::Single => PendingInner::Done(bucket, PhantomData),
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => PendingInner::Mpi(c.start_all_reduce(bucket)),
        };
        Pending { inner }
    }

    /// Ends the whole job from one rank, e.g. on an error the other ranks cannot see (they would
    /// wait at their next collective until the timeout). Prints `msg` with this rank first and
    /// the note of [`set_abort_note`] after it.
    pub fn abort(&self, msg: &str) -> ! {
        match self {
            Comm::Single => {
                eprint_line(&with_abort_note(&format!("error: {msg}")));
                std::process::exit(1)
            }
            #[cfg(feature = "mpi")]
            Comm::Mpi(c) => c.abort(msg),
        }
    }

    fn check_root(&self, root: usize) {
        assert!(
            root < self.size(),
            "broadcast root {root} out of range for {} rank(s)",
            self.size()
        );
    }
}

/// An all-reduce in flight ([`Comm::start_all_reduce`]). It owns the bucket until it completes;
/// dropping it waits for completion.
pub struct Pending<'c> {
    inner: PendingInner<'c>,
}

enum PendingInner<'c> {
    Done(Vec<f32>, PhantomData<&'c Comm>),
    #[cfg(feature = "mpi")]
    Mpi(mpi::MpiPending<'c>),
}

impl Pending<'_> {
    /// Whether the sum has arrived; advances it (see [`Comm::start_all_reduce`]).
    pub fn test(&mut self) -> bool {
        match &mut self.inner {
            PendingInner::Done(..) => true,
            #[cfg(feature = "mpi")]
            PendingInner::Mpi(p) => p.test(),
        }
    }

    /// Waits (at most the communicator's timeout) and returns the summed bucket.
    pub fn wait(self) -> Vec<f32> {
        match self.inner {
            PendingInner::Done(bucket, _) => bucket,
            #[cfg(feature = "mpi")]
            PendingInner::Mpi(p) => p.wait(),
        }
    }
}

/// What an abort of this process adds to its message (empty: nothing).
static ABORT_NOTE: Mutex<String> = Mutex::new(String::new());

/// Sets what every later [`Comm::abort`] of this process adds to its message: the trainer keeps
/// it naming the last checkpoint and how to continue from it.
pub fn set_abort_note(note: String) {
    *ABORT_NOTE.lock().unwrap_or_else(|p| p.into_inner()) = note;
}

/// `msg`, then the abort note if one is set.
fn with_abort_note(msg: &str) -> String {
    let note = ABORT_NOTE.lock().unwrap_or_else(|p| p.into_inner());
    match note.is_empty() {
        true => msg.to_string(),
        false => format!("{msg}; {note}"),
    }
}

/// Prints `line` to stderr in one write: `eprintln!` writes each formatted piece separately, and
/// `mpirun` interleaves the pieces of several ranks' messages printed at the same moment.
pub fn eprint_line(line: &str) {
    use std::io::Write;
    let mut bytes = line.as_bytes().to_vec();
    bytes.push(b'\n');
    // Nothing useful is left to do if stderr itself is gone.
    let _ = std::io::stderr().write_all(&bytes);
}

/// Groups tensors into all-reduce buckets of about `cap_bytes` (f32 elements): `sizes` are the
/// tensors' element counts in the order their gradients become ready (backward order), and each
/// returned range indexes `sizes`. Consecutive tensors share a bucket while it stays within the
/// cap; a tensor larger than the cap gets a bucket of its own. Give per-layer sizes (weights plus
/// biases) to keep a layer's gradients in one bucket: per tensor, the bias after a large weight
/// would travel alone.
pub fn buckets(sizes: &[usize], cap_bytes: usize) -> Vec<Range<usize>> {
    let cap = (cap_bytes / std::mem::size_of::<f32>()).max(1);
    let mut out = Vec::new();
    let (mut start, mut filled) = (0, 0usize);
    for (i, &n) in sizes.iter().enumerate() {
        if filled > 0 && filled + n > cap {
            out.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// `None` when all ranks' hashes are equal; else the message naming the ranks that differ from
/// rank 0 (up to 8 of them, then a count).
fn disagreement(what: &str, hashes: &[u64]) -> Option<String> {
    let reference = *hashes.first()?;
    let differ: Vec<usize> = (0..hashes.len())
        .filter(|&r| hashes[r] != reference)
        .collect();
    if differ.is_empty() {
        return None;
    }
    const SHOWN: usize = 8;
    let mut detail: Vec<String> = differ
        .iter()
        .take(SHOWN)
        .map(|&r| format!("rank {r} has {:#018x}", hashes[r]))
        .collect();
    if differ.len() > SHOWN {
        detail.push(format!("and {} more", differ.len() - SHOWN));
    }
    let ranks: Vec<String> = differ.iter().map(usize::to_string).collect();
    Some(format!(
        "rank{} {} of {} differ from rank 0 on {what}: rank 0 has {reference:#018x}, {}; every \
         rank must run with the same {what}",
        if differ.len() == 1 { "" } else { "s" },
        ranks.join(", "),
        hashes.len(),
        detail.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn launch_from_openmpi_and_hydra_vars() {
        assert_eq!(Launch::from_vars(vars(&[])).unwrap(), None);
        let ompi = [
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ];
        assert_eq!(
            Launch::from_vars(vars(&ompi)).unwrap(),
            Some(Launch {
                size: 4,
                rank: 3,
                local_rank: Some(1)
            })
        );
        let hydra = [("PMI_SIZE", "2"), ("PMI_RANK", "0")];
        assert_eq!(
            Launch::from_vars(vars(&hydra)).unwrap(),
            Some(Launch {
                size: 2,
                rank: 0,
                local_rank: None
            })
        );
    }

    #[test]
    fn launch_rejects_inconsistent_vars() {
        let bad = [("PMI_SIZE", "2"), ("PMI_RANK", "2")];
        let err = Launch::from_vars(vars(&bad)).unwrap_err().to_string();
        assert!(err.contains("PMI_RANK=2"), "{err}");
        let missing = [("OMPI_COMM_WORLD_SIZE", "2")];
        assert!(Launch::from_vars(vars(&missing)).is_err());
        let junk = [("OMPI_COMM_WORLD_SIZE", "two")];
        assert!(Launch::from_vars(vars(&junk)).is_err());
    }

    #[test]
    fn single_collectives_leave_data_alone() {
        let c = Comm::Single;
        assert_eq!((c.rank(), c.size(), c.local_rank()), (0, 1, 0));
        let mut x = vec![1.0f32, -2.0];
        c.all_reduce_sum_f32(&mut x);
        c.broadcast_f32(&mut x, 0);
        assert_eq!(x, [1.0, -2.0]);
        let mut bytes = b"abc".to_vec();
        c.broadcast_bytes(&mut bytes, 0);
        assert_eq!(bytes, b"abc");
        c.barrier();
        c.agree_on("configuration", 42).unwrap();
        let mut p = c.start_all_reduce(vec![3.0; 5]);
        assert!(p.test());
        assert_eq!(p.wait(), vec![3.0; 5]);
    }

    #[test]
    fn disagreement_names_the_differing_ranks() {
        assert_eq!(disagreement("configuration", &[7, 7, 7]), None);
        let msg = disagreement("configuration", &[7, 8, 7, 9]).unwrap();
        assert!(
            msg.starts_with("ranks 1, 3 of 4 differ from rank 0 on configuration"),
            "{msg}"
        );
        assert!(msg.contains("rank 1 has 0x0000000000000008"), "{msg}");
        let many: Vec<u64> = (0..20).collect();
        assert!(disagreement("x", &many).unwrap().contains("and 11 more"));
    }

    #[test]
    fn buckets_fill_to_the_cap_in_order() {
        // 4-byte floats, 100-byte cap: 25 floats per bucket.
        assert_eq!(
            buckets(&[10, 10, 10, 30, 5, 0, 20], 100),
            [0..2, 2..3, 3..4, 4..7]
        );
        assert_eq!(buckets(&[], 100), Vec::<Range<usize>>::new());
        assert_eq!(buckets(&[25, 25], 100), [0..1, 1..2]);
    }

    #[test]
    fn paper_net_buckets_at_25_mb() {
        // Per layer (weights + biases), in backward order: fc8, fc7, fc6, conv5..conv1.
        let layers = [
            4096 * 1000 + 1000,
            4096 * 4096 + 4096,
            9216 * 4096 + 4096,
            256 * 192 * 9 + 256,
            384 * 192 * 9 + 384,
            384 * 256 * 9 + 384,
            256 * 48 * 25 + 256,
            96 * 363 + 96,
        ];
        // fc8 (16 MB) alone, fc7 (64 MB) and fc6 (151 MB) each alone, the convolutions together.
        assert_eq!(
            buckets(&layers, DEFAULT_BUCKET_BYTES),
            [0..1, 1..2, 2..3, 3..8]
        );
    }

    #[test]
    fn progress_interval_parses_and_zero_turns_it_off() {
        assert_eq!(parse_progress("0").unwrap(), None);
        assert_eq!(
            parse_progress(" 250 ").unwrap(),
            Some(Duration::from_micros(250))
        );
        let err = parse_progress("-5").unwrap_err().to_string();
        assert!(err.contains(PROGRESS_ENV), "{err}");
        assert!(parse_progress("fast").is_err());
    }

    #[test]
    fn timeout_default_and_env() {
        // The variable is not set in the test environment.
        if std::env::var_os(TIMEOUT_ENV).is_none() {
            assert_eq!(timeout_from_env().unwrap(), DEFAULT_TIMEOUT);
        }
    }
}
