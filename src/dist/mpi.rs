//! The MPI communicator (feature `mpi`). rsmpi initialises and finalises MPI and names the
//! datatypes and the sum; the collectives themselves are raw MPI calls, because rsmpi has no
//! in-place reductions (a 244 MB gradient would need a second copy) and ignores the error codes
//! that MPI_ERRORS_RETURN hands back.
//!
//! Every collective is non-blocking underneath (MPI_Iallreduce, MPI_Ibcast, ...) and waited for
//! by polling MPI_Testall against a deadline, so a rank that never arrives ends the job with a
//! message instead of hanging it.
//!
//! OpenMPI moves a non-blocking collective on only inside MPI calls, so a gradient sum started
//! during the backward would otherwise wait, mostly, for the first MPI call after it. While sums
//! are in flight a progress thread calls MPI_Iprobe (which runs OpenMPI's progress engine) every
//! [`super::PROGRESS_ENV`] microseconds. MPI runs MPI_THREAD_SERIALIZED: every call made
//! through [`MpiComm`] holds one lock, which also counts the sums in flight.

use std::ffi::{c_char, c_int, c_void};
use std::mem::MaybeUninit;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::Communicator;
use mpi::Threading;

use super::{Launch, TIMEOUT_ENV};
use crate::error::{Error, Result};

// csrc/mpi_consts.c: the constants that are pointer casts in mpi.h.
extern "C" {
    fn anc_mpi_in_place() -> *mut c_void;
    fn anc_mpi_max_error_string() -> c_int;
}

/// MPI counts are C ints: longer broadcasts go as several operations.
const MAX_COUNT: usize = i32::MAX as usize;

/// Reductions go as pieces of at most this many bytes, all started at once, so that a whole
/// 244 MB gradient and the same data in DDP-sized buckets travel alike (and the count fits a C
/// int). `alexnet-dist-check bench` compares the two and MPI's blocking all-reduce.
const REDUCE_PIECE_BYTES: usize = super::DEFAULT_BUCKET_BYTES;

pub struct MpiComm {
    world: ffi::MPI_Comm,
    in_place: *mut c_void,
    rank: usize,
    size: usize,
    local_rank: usize,
    timeout: Duration,
    /// Held for every MPI call (see the module's comment).
    shared: Arc<Shared>,
    /// The progress thread; it returns its communicator when it ends.
    progress: Option<JoinHandle<ProbeComm>>,
    /// Dropped last: finalises MPI.
    _universe: Universe,
}

/// The MPI lock and the count it guards, shared with the progress thread.
struct Shared {
    state: Mutex<InFlight>,
    wake: Condvar,
}

struct InFlight {
    /// Sums started and not yet seen complete.
    sums: usize,
    stop: bool,
}

/// The duplicate of the world communicator the progress thread probes, moved to it and handed
/// back when it ends: no message is ever sent on the duplicate, so a probe matches nothing and
/// only drives progress.
struct ProbeComm(ffi::MPI_Comm);

// SAFETY: an MPI handle is valid on any thread of the process; MPI_THREAD_SERIALIZED and the
// MPI lock, held for each call on it, keep calls from running concurrently.
unsafe impl Send for ProbeComm {}

impl MpiComm {
    /// Initialises MPI and switches the world communicator to MPI_ERRORS_RETURN, so that a failed
    /// call reaches [`MpiComm::abort`] with its operation and rank rather than MPI's generic fatal
    /// handler. `progress_every`: the progress thread's interval, `None` for no thread.
    pub fn init(
        launch: Launch,
        timeout: Duration,
        progress_every: Option<Duration>,
    ) -> Result<MpiComm> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::Dist("MPI is already initialised in this process".into()))?;
        let world = universe.world();
        // SAFETY: a value-returning call with no arguments (csrc/mpi_consts.c).
        let in_place = unsafe { anc_mpi_in_place() };
        let mut comm = MpiComm {
            world: world.as_raw(),
            in_place,
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: 0,
            timeout,
            shared: Arc::new(Shared {
                state: Mutex::new(InFlight {
                    sums: 0,
                    stop: false,
                }),
                wake: Condvar::new(),
            }),
            progress: None,
            _universe: universe,
        };
        // SAFETY: the world communicator and the predefined handler are valid once MPI is up.
        let rc = unsafe { ffi::MPI_Comm_set_errhandler(comm.world, ffi::RSMPI_ERRORS_RETURN) };
        comm.check("MPI_Comm_set_errhandler", rc);
        if (comm.rank, comm.size) != (launch.rank, launch.size) {
            comm.abort(&format!(
                "MPI says rank {} of {}, the launcher's environment rank {} of {}",
                comm.rank, comm.size, launch.rank, launch.size
            ));
        }
        // Without the launcher's word, the ranks sharing this host's memory tell.
        comm.local_rank = match launch.local_rank {
            Some(r) => r,
            None => world.split_shared(comm.rank as c_int).rank() as usize,
        };
        // Duplicated on every rank, thread or not: MPI_Comm_dup is a collective, and ranks may
        // be set differently (the setting is this host's, not the run's).
        let probe = comm.duplicate_world();
        let serialized = matches!(threading, Threading::Serialized | Threading::Multiple);
        match (progress_every, serialized) {
            (Some(every), true) => comm.progress = Some(comm.start_progress(probe, every)),
            _ => comm.free(probe),
        }
        Ok(comm)
    }

    fn duplicate_world(&self) -> ffi::MPI_Comm {
        let mut dup = MaybeUninit::uninit();
        // SAFETY: the world communicator is valid; MPI writes the duplicate's handle. Every rank
        // calls this from init, in the same order as the other collectives.
        let rc = unsafe { ffi::MPI_Comm_dup(self.world, dup.as_mut_ptr()) };
        self.check("MPI_Comm_dup", rc);
        // SAFETY: MPI_Comm_dup returned success, so it set the handle.
        unsafe { dup.assume_init() }
    }

    /// Frees a communicator no thread uses any more.
    fn free(&self, mut comm: ffi::MPI_Comm) {
        // SAFETY: `comm` is a valid communicator this process duplicated, used by nothing else.
        let rc = unsafe { ffi::MPI_Comm_free(&mut comm) };
        self.check("MPI_Comm_free", rc);
    }

    /// Starts the thread that probes `probe` every `every` while sums are in flight.
    fn start_progress(&self, probe: ffi::MPI_Comm, every: Duration) -> JoinHandle<ProbeComm> {
        let shared = Arc::clone(&self.shared);
        let comm = ProbeComm(probe);
        std::thread::Builder::new()
            .name("mpi-progress".into())
            .spawn(move || drive_progress(&shared, comm, every))
            .unwrap_or_else(|e| self.abort(&format!("cannot start the MPI progress thread: {e}")))
    }

    /// The MPI lock; a panic elsewhere while holding it leaves nothing half-done to MPI.
    fn lock(&self) -> MutexGuard<'_, InFlight> {
        lock(&self.shared)
    }

    /// A sum started (`true`) or seen complete (`false`): the progress thread runs while any is
    /// in flight.
    fn count_sum(&self, started: bool) {
        let mut state = self.lock();
        if started {
            state.sums += 1;
            self.shared.wake.notify_one();
        } else {
            state.sums -= 1;
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    pub fn has_progress_thread(&self) -> bool {
        self.progress.is_some()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn all_reduce_sum<T: Equivalence>(&self, buf: &mut [T], op: &str) {
        let mut reqs = self.start_sum(buf.as_mut_ptr(), buf.len(), op);
        self.wait_all(&mut reqs, op);
    }

    pub fn broadcast<T: Equivalence>(&self, buf: &mut [T], root: usize, op: &str) {
        let dtype = T::equivalent_datatype().as_raw();
        let mut reqs = Vec::new();
        for start in (0..buf.len()).step_by(MAX_COUNT) {
            let n = (buf.len() - start).min(MAX_COUNT);
            let mut req = MaybeUninit::uninit();
            let rc = {
                let _mpi = self.lock();
                // SAFETY: buf[start..start + n] is valid for the whole operation: `buf` stays
                // borrowed until wait_all below returns, and `req` is written by the call.
                unsafe {
                    ffi::MPI_Ibcast(
                        buf[start..].as_mut_ptr() as *mut c_void,
                        n as c_int,
                        dtype,
                        root as c_int,
                        self.world,
                        req.as_mut_ptr(),
                    )
                }
            };
            self.check(op, rc);
            // SAFETY: MPI_Ibcast returned success, so it set the request.
            reqs.push(unsafe { req.assume_init() });
        }
        self.wait_all(&mut reqs, op);
    }

    pub fn barrier(&self) {
        let mut req = MaybeUninit::uninit();
        let rc = {
            let _mpi = self.lock();
            // SAFETY: the world communicator is valid; `req` is written by the call.
            unsafe { ffi::MPI_Ibarrier(self.world, req.as_mut_ptr()) }
        };
        self.check("barrier", rc);
        // SAFETY: MPI_Ibarrier returned success, so it set the request.
        let mut reqs = [unsafe { req.assume_init() }];
        self.wait_all(&mut reqs, "barrier");
    }

    /// Every rank's `value`, indexed by rank.
    pub fn all_gather_u64(&self, value: u64, op: &str) -> Vec<u64> {
        let dtype = u64::equivalent_datatype().as_raw();
        let mut out = vec![0u64; self.size];
        let mut req = MaybeUninit::uninit();
        let rc = {
            let _mpi = self.lock();
            // SAFETY: `value` and `out` (one u64 per rank) outlive the operation, which wait_all
            // completes before this function returns; `req` is written by the call.
            unsafe {
                ffi::MPI_Iallgather(
                    &value as *const u64 as *const c_void,
                    1,
                    dtype,
                    out.as_mut_ptr() as *mut c_void,
                    1,
                    dtype,
                    self.world,
                    req.as_mut_ptr(),
                )
            }
        };
        self.check(op, rc);
        // SAFETY: MPI_Iallgather returned success, so it set the request.
        let mut reqs = [unsafe { req.assume_init() }];
        self.wait_all(&mut reqs, op);
        out
    }

    pub fn start_all_reduce(&self, mut bucket: Vec<f32>) -> MpiPending<'_> {
        let reqs = self.start_sum(bucket.as_mut_ptr(), bucket.len(), START_OP);
        if !reqs.is_empty() {
            self.count_sum(true);
        }
        MpiPending {
            comm: self,
            bucket,
            reqs,
        }
    }

    /// Prints `msg` naming this rank, then ends every rank of the job.
    pub fn abort(&self, msg: &str) -> ! {
        super::eprint_line(&super::with_abort_note(&format!(
            "alexnet: rank {} of {}: {msg}; aborting all ranks",
            self.rank, self.size
        )));
        // The lock, unless the progress thread is stuck inside MPI: then abort beside it.
        let deadline = Instant::now() + Duration::from_secs(1);
        let _mpi = loop {
            match self.shared.state.try_lock() {
                Ok(guard) => break Some(guard),
                Err(std::sync::TryLockError::Poisoned(e)) => break Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() > deadline => {
                    break None
                }
                Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        };
        // SAFETY: the world communicator is valid until MPI is finalised, which only dropping
        // `self` does. MPI_Abort does not return when it succeeds.
        unsafe { ffi::MPI_Abort(self.world, 1) };
        std::process::exit(1)
    }

    /// In-place sums of `len` elements at `ptr`, started; the caller keeps the memory alive and
    /// untouched until the requests complete.
    fn start_sum<T: Equivalence>(
        &self,
        ptr: *mut T,
        len: usize,
        op: &str,
    ) -> Vec<ffi::MPI_Request> {
        let dtype = T::equivalent_datatype().as_raw();
        let sum = SystemOperation::sum().as_raw();
        let piece = (REDUCE_PIECE_BYTES / std::mem::size_of::<T>()).clamp(1, MAX_COUNT);
        let mut reqs = Vec::new();
        for start in (0..len).step_by(piece) {
            let n = (len - start).min(piece);
            let mut req = MaybeUninit::uninit();
            let rc = {
                let _mpi = self.lock();
                // SAFETY: ptr[start..start + n] lies within the caller's buffer of `len` elements,
                // which the caller keeps alive and unaliased until the requests complete; MPI_IN_PLACE
                // makes that buffer both input and output; `req` is written by the call.
                unsafe {
                    ffi::MPI_Iallreduce(
                        self.in_place,
                        ptr.add(start) as *mut c_void,
                        n as c_int,
                        dtype,
                        sum,
                        self.world,
                        req.as_mut_ptr(),
                    )
                }
            };
            self.check(op, rc);
            // SAFETY: MPI_Iallreduce returned success, so it set the request.
            reqs.push(unsafe { req.assume_init() });
        }
        reqs
    }

    /// Whether all of `reqs` are complete (they are then null requests).
    fn test_all(&self, reqs: &mut [ffi::MPI_Request], op: &str) -> bool {
        if reqs.is_empty() {
            return true;
        }
        let mut flag: c_int = 0;
        let rc = {
            let _mpi = self.lock();
            // SAFETY: `reqs` holds requests this communicator started (or null ones); MPI writes
            // `flag` and no statuses.
            unsafe {
                ffi::MPI_Testall(
                    reqs.len() as c_int,
                    reqs.as_mut_ptr(),
                    &mut flag,
                    ffi::RSMPI_STATUSES_IGNORE,
                )
            }
        };
        self.check(op, rc);
        flag != 0
    }

    /// Polls `reqs` to completion; past the timeout, aborts the job naming `op`.
    fn wait_all(&self, reqs: &mut [ffi::MPI_Request], op: &str) {
        let started = Instant::now();
        let mut polls: u32 = 0;
        while !self.test_all(reqs, op) {
            if started.elapsed() > self.timeout {
                self.abort(&format!(
                    "{op} timed out after {:.1} s waiting for the other ranks (one died, hung, or \
                     called a different collective; {TIMEOUT_ENV} sets the limit)",
                    self.timeout.as_secs_f64()
                ));
            }
            // Busy-polling drives the transfer (OpenMPI progresses non-blocking collectives
            // only inside MPI calls); yielding now and then lets an oversubscribed peer run.
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
    }

    /// Aborts the job if `rc` is an MPI error, naming the operation.
    fn check(&self, op: &str, rc: c_int) {
        if rc != ffi::MPI_SUCCESS as c_int {
            self.abort(&format!("{op} failed: {}", self.error_string(rc)));
        }
    }

    /// MPI's text for an error code.
    fn error_string(&self, code: c_int) -> String {
        // SAFETY: a value-returning call with no arguments (csrc/mpi_consts.c).
        let cap = unsafe { anc_mpi_max_error_string() }.max(1) as usize;
        let mut text = vec![0 as c_char; cap];
        let mut len: c_int = 0;
        let rc = {
            let _mpi = self.lock();
            // SAFETY: MPI_Error_string writes at most MPI_MAX_ERROR_STRING characters, the
            // length of `text`, and their count to `len`.
            unsafe { ffi::MPI_Error_string(code, text.as_mut_ptr(), &mut len) }
        };
        if rc != ffi::MPI_SUCCESS as c_int {
            return format!("MPI error code {code}");
        }
        let bytes: Vec<u8> = text[..(len.max(0) as usize).min(cap)]
            .iter()
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for MpiComm {
    /// Stops the progress thread before `_universe` finalises MPI.
    fn drop(&mut self) {
        let Some(progress) = self.progress.take() else {
            return;
        };
        self.lock().stop = true;
        self.shared.wake.notify_one();
        // A panicked progress thread lost its communicator; finalising frees it.
        if let Ok(probe) = progress.join() {
            self.free(probe.0);
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, InFlight> {
    shared
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The progress thread: while sums are in flight, probes `comm` every `every` under the MPI
/// lock, so that OpenMPI's progress engine moves them on between the trainer's own MPI calls;
/// otherwise sleeps until one starts. A failed probe is left to the main thread's next call on
/// the same sums, which reports it with its operation.
fn drive_progress(shared: &Shared, comm: ProbeComm, every: Duration) -> ProbeComm {
    let mut state = lock(shared);
    loop {
        while state.sums == 0 && !state.stop {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if state.stop {
            return comm;
        }
        let mut matched: c_int = 0;
        // SAFETY: the duplicate communicator is freed only once this thread has returned it;
        // MPI writes `matched` and no status; the MPI lock is held.
        unsafe {
            ffi::MPI_Iprobe(
                ffi::RSMPI_ANY_SOURCE,
                ffi::RSMPI_ANY_TAG,
                comm.0,
                &mut matched,
                ffi::RSMPI_STATUS_IGNORE,
            )
        };
        drop(state);
        std::thread::sleep(every);
        state = lock(shared);
    }
}

const START_OP: &str = "start_all_reduce";

/// A bucket being summed. Owns the bucket, so MPI's writes cannot outlive it even if this is
/// leaked; dropping it waits for completion.
pub struct MpiPending<'c> {
    comm: &'c MpiComm,
    bucket: Vec<f32>,
    /// Empty once complete.
    reqs: Vec<ffi::MPI_Request>,
}

impl MpiPending<'_> {
    pub fn test(&mut self) -> bool {
        if self.reqs.is_empty() {
            return true;
        }
        let done = self.comm.test_all(&mut self.reqs, START_OP);
        if done {
            self.finished();
        }
        done
    }

    pub fn wait(mut self) -> Vec<f32> {
        self.wait_in_place();
        std::mem::take(&mut self.bucket)
    }

    fn wait_in_place(&mut self) {
        if !self.reqs.is_empty() {
            self.comm.wait_all(&mut self.reqs, START_OP);
            self.finished();
        }
    }

    /// Once, when the requests are seen complete.
    fn finished(&mut self) {
        self.reqs.clear();
        self.comm.count_sum(false);
    }
}

impl Drop for MpiPending<'_> {
    fn drop(&mut self) {
        self.wait_in_place();
    }
}
