//! NCCL all-reduce of device buffers for GPU ranks (feature `nccl`). One communicator per rank
//! on its own device; rank 0's unique id reaches the others over the MPI communicator.
//!
//! Reductions are queued on a CUDA stream and return at once; they are ordered after the
//! stream's earlier work (the backward kernels that wrote the gradients) and before its later
//! work (the update), so the caller passes the CUDA engine's stream and synchronises as usual.

use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};

use super::Comm;
use crate::error::{Error, Result};

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/nccl.rs"));
}

/// An NCCL communicator over all ranks of an MPI run, on one device.
pub struct Nccl {
    comm: sys::ncclComm_t,
    rank: usize,
    size: usize,
    device: usize,
    /// Set by a failed call: the communicator may then be stuck mid-collective, so dropping it
    /// aborts (ncclCommAbort) rather than waits (ncclCommDestroy).
    failed: Cell<bool>,
}

impl Nccl {
    /// Creates the communicator on `device` (normally [`Comm::local_rank`]). Collective over
    /// `comm`: every rank calls it, in the same place among its collectives.
    pub fn new(comm: &Comm, device: usize) -> Result<Nccl> {
        let (rank, size) = (comm.rank(), comm.size());
        // Rank 0 makes the id; an empty broadcast tells the others it could not, so that every
        // rank fails alike instead of waiting.
        let mut bytes = Vec::new();
        let mut made = Ok(());
        if rank == 0 {
            let mut id = sys::ncclUniqueId {
                internal: [0; sys::NCCL_UNIQUE_ID_BYTES as usize],
            };
            // SAFETY: ncclGetUniqueId writes one ncclUniqueId through the valid `&mut id`.
            made = check("ncclGetUniqueId", unsafe { sys::ncclGetUniqueId(&mut id) });
            if made.is_ok() {
                bytes = id.internal.iter().map(|&c| c as u8).collect();
            }
        }
        comm.broadcast_bytes(&mut bytes, 0);
        made?;
        let mut id = sys::ncclUniqueId {
            internal: [0; sys::NCCL_UNIQUE_ID_BYTES as usize],
        };
        if bytes.len() != id.internal.len() {
            return Err(Error::Dist(
                "rank 0 could not create the NCCL unique id (see its error)".into(),
            ));
        }
        for (dst, &src) in id.internal.iter_mut().zip(&bytes) {
            *dst = src as _;
        }

        // SAFETY: cudaSetDevice takes a device ordinal; an invalid one returns an error code.
        let rc = unsafe { sys::cudaSetDevice(device as c_int) };
        if rc != 0 {
            return Err(Error::Cuda {
                call: "cudaSetDevice".into(),
                msg: format!("device {device} on rank {rank}: CUDA error {rc}"),
            });
        }
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: writes the new communicator through `&mut raw`; `id` is the same on every rank.
        let rc = unsafe { sys::ncclCommInitRank(&mut raw, size as c_int, id, rank as c_int) };
        check("ncclCommInitRank", rc)?;
        Ok(Nccl {
            comm: raw,
            rank,
            size,
            device,
            failed: Cell::new(false),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn device(&self) -> usize {
        self.device
    }

    /// Queues the in-place sum over the ranks of `len` f32 at `buf` on `stream`.
    ///
    /// # Safety
    /// `buf` must point to `len` f32 of device memory on this communicator's device that stays
    /// allocated, and is touched by no other stream, until `stream` has run the reduction;
    /// `stream` must be a live CUDA stream of that device (or null, the legacy default stream).
    pub unsafe fn all_reduce_sum_f32(
        &self,
        buf: *mut f32,
        len: usize,
        stream: *mut c_void,
    ) -> Result<()> {
        // SAFETY: the caller guarantees `buf`, `len` and `stream` (above); in-place is send ==
        // receive buffer, which NCCL allows.
        let rc = unsafe {
            sys::ncclAllReduce(
                buf as *const c_void,
                buf as *mut c_void,
                len,
                sys::ncclFloat32,
                sys::ncclSum,
                self.comm,
                stream as sys::cudaStream_t,
            )
        };
        check("ncclAllReduce", rc).inspect_err(|_| self.failed.set(true))
    }
}

/// Runs `queue` between ncclGroupStart and ncclGroupEnd, so that NCCL launches the collectives
/// it queues together (a row's weight and bias in one launch; several communicators' at once).
pub fn group(queue: impl FnOnce() -> Result<()>) -> Result<()> {
    // SAFETY: ncclGroupStart takes no arguments; every start below is matched by an end.
    check("ncclGroupStart", unsafe { sys::ncclGroupStart() })?;
    let queued = queue();
    // SAFETY: ends the group started above, also when queueing failed (NCCL requires it).
    let ended = check("ncclGroupEnd", unsafe { sys::ncclGroupEnd() });
    queued.and(ended)
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: `comm` came from ncclCommInitRank and is released exactly once, here.
        unsafe {
            if self.failed.get() {
                sys::ncclCommAbort(self.comm);
            } else {
                sys::ncclCommDestroy(self.comm);
            }
        }
    }
}

/// `Err` naming `call` and NCCL's text unless `rc` is ncclSuccess.
fn check(call: &str, rc: sys::ncclResult_t) -> Result<()> {
    if rc == sys::ncclSuccess {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString returns a pointer to a static NUL-terminated string.
    let msg = unsafe { CStr::from_ptr(sys::ncclGetErrorString(rc)) };
    Err(Error::Dist(format!(
        "{call} failed: {} (NCCL error {rc})",
        msg.to_string_lossy()
    )))
}
