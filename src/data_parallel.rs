//! Data parallelism: N ranks (processes under `mpirun`) each hold the whole net, train on their
//! share of every global batch, and average their gradients before the identical update, so the
//! run is the one-process run at the same global batch: the same batches (each rank's loader
//! builds its images of them, `data::Share`), the same dropout masks (keyed by the image's place
//! in the global batch), the same initial weights (broadcast from rank 0), and the same update
//! on the global batch's gradient. Communication is the `dist` module's (MPI, NCCL).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::data::Dataset;
use crate::dist::{self, Comm};
use crate::engine::Engine;
use crate::error::Result;
use crate::model::Ready;
use crate::parallel::Network;
use crate::trainer::{GradientSync, SyncKind};

/// The replicas of a data-parallel run, as the trainer's gradient sync. As DDP does, gradients
/// are gathered in backward order into buckets of about 25 MB, each started on its all-reduce as
/// soon as it is full, while the backward goes on; after the backward only the sums still on
/// their way are waited for. The sums are element-wise, so how the tensors fall into buckets
/// changes nothing in the result.
pub struct Replicas<'c> {
    comm: &'c Comm,
    bucket_bytes: usize,
    /// The bucket being filled: gradients copied to the host (its first `filled` elements; a
    /// spare buffer comes at its last length, so that refilling it writes each element once
    /// instead of zeroing it first), and which parameters they are (index in `params_mut`'s
    /// order, length).
    filling: Vec<f32>,
    filled: usize,
    members: Vec<(usize, usize)>,
    in_flight: Vec<(Vec<(usize, usize)>, dist::Pending<'c>)>,
    /// Buckets whose sums were copied back, kept (at their length) for the next step in the order
    /// they were filled, so that each step's k-th bucket refills the last step's k-th (same
    /// size, no reallocation): without them every step would allocate (and page-fault in) the
    /// whole gradient, 244 MB on the paper's net.
    spare: VecDeque<Vec<f32>>,
    /// Whether this step's gradients were handed over during backward.
    handed: bool,
}

impl<'c> Replicas<'c> {
    pub fn new(comm: &'c Comm) -> Self {
        Replicas {
            comm,
            bucket_bytes: dist::DEFAULT_BUCKET_BYTES,
            filling: Vec::new(),
            filled: 0,
            members: Vec::new(),
            in_flight: Vec::new(),
            spare: VecDeque::new(),
            handed: false,
        }
    }

    /// Buckets of `bytes` instead of DDP's 25 MB (tests: many buckets from a small net).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(4);
        self
    }

    /// Starts the all-reduce of the bucket being filled (if it holds anything).
    fn start_bucket(&mut self) {
        if self.members.is_empty() {
            return;
        }
        self.filling.truncate(std::mem::take(&mut self.filled));
        let bucket = std::mem::take(&mut self.filling);
        let members = std::mem::take(&mut self.members);
        self.in_flight
            .push((members, self.comm.start_all_reduce(bucket)));
    }
}

impl<E: Engine> GradientSync<E> for Replicas<'_> {
    fn replicas(&self) -> usize {
        self.comm.size()
    }

    fn kind(&self) -> SyncKind {
        SyncKind::Host
    }

    /// Copies the row's gradients into the bucket, starts it once full (at or past the size),
    /// and, without a progress thread, lets the sums in flight advance (OpenMPI moves them only
    /// inside MPI calls).
    fn gradients_ready(&mut self, ready: &Ready<'_, E>) -> Result<()> {
        self.handed = true;
        if self.filling.capacity() == 0 {
            self.filling = self.spare.pop_front().unwrap_or_default();
        }
        for &(index, e, p) in ready {
            let (at, end) = (self.filled, self.filled + p.len());
            if self.filling.len() < end {
                self.filling.resize(end, 0.0);
            }
            e.download(&p.grad, &mut self.filling[at..end])?;
            self.filled = end;
            self.members.push((index, p.len()));
        }
        // Checked per row, so that a layer's bias travels with its weight.
        if self.filled * std::mem::size_of::<f32>() >= self.bucket_bytes {
            self.start_bucket();
        }
        // With a progress thread these tests would only pull the sums' work onto the
        // backward's thread (measured: README, "Data parallelism").
        if !self.comm.has_progress_thread() {
            for (_, pending) in &mut self.in_flight {
                pending.test();
            }
        }
        Ok(())
    }

    /// Starts what the backward did not (the last bucket; everything, when the backward handed
    /// nothing over), then takes each sum as it arrives, scales it by 1/N and copies it back.
    fn average_gradients(&mut self, engines: &[E], model: &mut Network<E>) -> Result<()> {
        let mut params = model.params_mut(engines);
        if !std::mem::take(&mut self.handed) {
            // One tensor at a time, last first, as the backward's rows would: the same buckets,
            // refilling the same spare buffers (one bucket of everything would reallocate and
            // page-fault in 244 MB on the paper's net, which bench's "alone" time would count).
            for (i, (e, p)) in params.iter().enumerate().rev() {
                GradientSync::<E>::gradients_ready(self, &[(i, *e, &**p)])?;
            }
            self.handed = false;
        }
        self.start_bucket();
        let scale = 1.0 / self.comm.size() as f32;
        for (members, pending) in std::mem::take(&mut self.in_flight) {
            let mut summed = pending.wait();
            summed.iter_mut().for_each(|g| *g *= scale);
            let mut at = 0;
            for (index, len) in members {
                let (e, p) = &mut params[index];
                e.upload(&mut p.grad, &summed[at..at + len])?;
                at += len;
            }
            self.spare.push_back(summed);
        }
        Ok(())
    }

    fn sum_stats(&mut self, stats: &mut [f64]) -> Result<()> {
        self.comm.all_reduce_sum_f64(stats);
        Ok(())
    }
}

/// The trainer's gradient sync on `engines` under `comm`: the engines' own when they have one
/// switched on (NCCL, even for one rank), else nothing to do for one rank, else [`Replicas`].
pub fn gradient_sync<'c, E: Engine>(
    engines: &[E],
    comm: &'c Comm,
) -> Result<Box<dyn GradientSync<E> + 'c>> {
    if let Some(device) = E::device_gradient_sync(engines, comm)? {
        return Ok(device);
    }
    Ok(match comm.size() {
        1 => Box::new(crate::trainer::Alone),
        _ => Box::new(Replicas::new(comm)),
    })
}

/// The replicas of a data-parallel run on GPUs, summing in device memory with NCCL (feature
/// `nccl`, `--all-reduce nccl`). Each executor (one, or a column each with `--gpus 2`) has its
/// own communicator with the same executor of every other rank. As soon as the backward hands a
/// row's gradients over, its sums are queued on the executor's collective stream, after the
/// kernels queued so far on the compute stream (which wrote them), so they run while the
/// backward's next kernels do; after the backward the compute stream waits for them and scales
/// by 1/N before the update. The host never waits here: a step's sums are done when its update
/// is. Results equal [`Replicas`]' up to the order of the ranks' additions (NCCL's ring).
///
/// Under one process it still runs (a sum over one rank), so that one GPU exercises the path.
/// A rank that hangs inside a kernel is not caught by the collective timeout (the host is then
/// waiting in the CUDA runtime, not in MPI); a rank that dies ends the job through `mpirun`.
#[cfg(feature = "nccl")]
pub struct NcclReplicas<'c> {
    comm: &'c Comm,
    /// Per executor, in `engines` order: its communicator and its collective stream.
    columns: Vec<(dist::nccl::Nccl, CollectiveStream)>,
    /// The executors' addresses, to tell which one a handed-over parameter lives on.
    executors: Vec<usize>,
    /// Whether this step's gradients were handed over during backward.
    handed: bool,
}

/// A CUDA stream handle, only ever passed to NCCL.
#[cfg(feature = "nccl")]
struct CollectiveStream(*mut std::ffi::c_void);

#[cfg(feature = "nccl")]
impl<'c> NcclReplicas<'c> {
    /// One communicator per executor, on its device. Collective over `comm` (NCCL's setup).
    pub fn new(comm: &'c Comm, engines: &[crate::engine::cuda::CudaEngine]) -> Result<Self> {
        let mut columns = Vec::with_capacity(engines.len());
        for e in engines {
            let nccl = dist::nccl::Nccl::new(comm, e.device())?;
            columns.push((nccl, CollectiveStream(e.collective_stream()?)));
        }
        Ok(NcclReplicas {
            comm,
            columns,
            executors: engines.iter().map(|e| e as *const _ as usize).collect(),
            handed: false,
        })
    }

    fn column_of(&self, e: &crate::engine::cuda::CudaEngine) -> Result<usize> {
        let at = e as *const _ as usize;
        (self.executors.iter().position(|&x| x == at)).ok_or_else(|| {
            crate::error::Error::Dist(format!(
                "a gradient on {} was handed to an NCCL sync built for other executors",
                e.name()
            ))
        })
    }
}

#[cfg(feature = "nccl")]
impl GradientSync<crate::engine::cuda::CudaEngine> for NcclReplicas<'_> {
    fn replicas(&self) -> usize {
        self.comm.size()
    }

    fn kind(&self) -> SyncKind {
        SyncKind::Device
    }

    /// Queues the row's sums on each executor's collective stream, after its backward so far.
    fn gradients_ready(
        &mut self,
        ready: &Ready<'_, crate::engine::cuda::CudaEngine>,
    ) -> Result<()> {
        self.handed = true;
        let mut forked = vec![false; self.columns.len()];
        for &(_, e, _) in ready {
            let k = self.column_of(e)?;
            if !std::mem::replace(&mut forked[k], true) {
                e.collective_fork()?;
            }
        }
        dist::nccl::group(|| {
            for &(_, e, p) in ready {
                let (nccl, stream) = &self.columns[self.column_of(e)?];
                // SAFETY: `p.grad` is `len` f32 on the executor's device, which the backward has
                // finished writing (the collective stream waits for its kernels: the fork above)
                // and which nothing touches again before the compute stream joins the
                // collective stream in `average_gradients`; the parameter outlives the step.
                unsafe {
                    nccl.all_reduce_sum_f32(p.grad.as_ptr() as *mut f32, p.grad.len(), stream.0)?;
                }
            }
            Ok(())
        })
    }

    /// Queues what the backward did not hand over, makes each compute stream wait for its sums,
    /// and scales them by 1/N there.
    fn average_gradients(
        &mut self,
        engines: &[crate::engine::cuda::CudaEngine],
        model: &mut Network<crate::engine::cuda::CudaEngine>,
    ) -> Result<()> {
        if !std::mem::take(&mut self.handed) {
            let params = model.params_mut(engines);
            let all: Vec<_> = (params.iter().enumerate().rev())
                .map(|(i, (e, p))| (i, *e, &**p))
                .collect();
            self.gradients_ready(&all)?;
            self.handed = false;
        }
        for e in engines {
            e.collective_join()?;
        }
        let scale = 1.0 / self.comm.size() as f32;
        if scale != 1.0 {
            for (e, p) in model.params_mut(engines) {
                e.scale(&mut p.grad, scale)?;
            }
        }
        Ok(())
    }

    fn sum_stats(&mut self, stats: &mut [f64]) -> Result<()> {
        self.comm.all_reduce_sum_f64(stats);
        Ok(())
    }
}

/// Makes every rank's weights and momentum rank 0's (after each rank initialised or loaded its
/// own: equal in a healthy run, and this makes them equal by construction).
pub fn broadcast_weights<E: Engine>(
    comm: &Comm,
    engines: &[E],
    model: &mut Network<E>,
) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    for (e, p) in model.params_mut(engines) {
        let mut host = vec![0f32; p.len()];
        for buf in [&mut p.value, &mut p.momentum] {
            e.download(buf, &mut host)?;
            comm.broadcast_f32(&mut host, 0);
            e.upload(buf, &host)?;
        }
    }
    Ok(())
}

/// A 64-bit fingerprint of `bytes` (configurations and binaries compared across ranks).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(bytes.len() as u64, |h, chunk| {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        crate::rng::hash(h, u64::from_le_bytes(w))
    })
}

/// Every `of`-th image of a dataset starting at `first`: one rank's share of the validation
/// set (the shares together are the whole set, each image once).
pub struct EveryNth {
    inner: Arc<dyn Dataset>,
    first: usize,
    of: usize,
}

impl EveryNth {
    pub fn new(inner: Arc<dyn Dataset>, first: usize, of: usize) -> Self {
        EveryNth { inner, first, of }
    }
}

impl Dataset for EveryNth {
    fn len(&self) -> usize {
        self.inner
            .len()
            .saturating_sub(self.first)
            .div_ceil(self.of)
    }
    fn side(&self) -> usize {
        self.inner.side()
    }
    fn classes(&self) -> usize {
        self.inner.classes()
    }
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }
    fn read(&self, index: usize, out: &mut [u8]) -> Result<u32> {
        let per = 3 * self.side() * self.side();
        crate::data::check_read("validation share", index, self.len(), out.len(), per)?;
        self.inner.read(self.first + index * self.of, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_a_dataset_cover_it_once() {
        let side = 2;
        let n = 7;
        let ds: Arc<dyn Dataset> = Arc::new(crate::data::InMemory {
            side,
            names: vec!["a".into(), "b".into()],
            pixels: (0..n * 3 * side * side).map(|i| (i / 12) as u8).collect(),
            labels: (0..n as u32).map(|i| i % 2).collect(),
        });
        let mut seen = Vec::new();
        for first in 0..3 {
            let share = EveryNth::new(ds.clone(), first, 3);
            let mut buf = vec![0u8; 3 * side * side];
            for i in 0..share.len() {
                share.read(i, &mut buf).unwrap();
                seen.push(buf[0] as usize);
            }
            assert!(share.read(share.len(), &mut buf).is_err());
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn fingerprints_tell_inputs_apart() {
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
        assert_ne!(fingerprint(b""), fingerprint(b"\0"));
    }
}
