//! The CUDA engine: a safe wrapper over the kernels in `csrc/` (im2col + cuBLAS GEMMs for the
//! convolutions and fully connected layers, hand-written kernels for the rest).
//!
//! Every op checks its shapes on the host ([`plan`]) before queuing anything; every CUDA/cuBLAS
//! call and launch on the C side is checked and comes back as [`Error`] with the call's name
//! ([`status`]). Work runs on one stream per engine; `download` and `synchronize` wait for it.
//! `unsafe` is confined to this module: each block is an FFI call whose pointers come from live
//! [`DeviceBuffer`]s of the lengths the preceding checks verified.

mod ffi;
mod memory;
pub mod plan;
pub mod status;

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rayon::prelude::*;

use crate::engine::{
    check_len, Blocks, ConvShape, Engine, FcShape, LrnParams, LrnShape, MaskSlice, PoolShape,
};
use crate::error::{Error, Result};

pub use memory::DeviceBuffer;
use memory::{DeviceMem, PinnedHost};

/// Number of CUDA devices the runtime sees; `Error::NoDevice` when there is no driver or GPU.
/// Enables direct access from `device` to `peer`'s memory; false where the pair cannot (copies
/// between them then stage through host memory, slower but correct).
pub fn enable_peer_access(device: usize, peer: usize) -> Result<bool> {
    let mut enabled: i32 = 0;
    // SAFETY: anc_enable_peer writes one int through the valid `&mut enabled`.
    let st = unsafe { ffi::anc_enable_peer(device as i32, peer as i32, &mut enabled) };
    status::check(&st)?;
    Ok(enabled != 0)
}

pub fn device_count() -> Result<usize> {
    let mut count: i32 = 0;
    // SAFETY: anc_device_count writes one int through the valid `&mut count`.
    let st = unsafe { ffi::anc_device_count(&mut count) };
    status::check(&st)?;
    Ok(count.max(0) as usize)
}

/// The context and the engine-owned scratch, behind one lock: the C side's stream and cuBLAS
/// handle are used by one host thread at a time, and a grow of the scratch cannot race a launch.
struct Inner {
    ctx: *mut ffi::anc_ctx,
    /// Scratch (f32-sized slots) for im2col and max-pool windows, grow-only.
    scratch: DeviceMem,
    /// Page-locked staging for large uploads, grow-only.
    staging: PinnedHost,
    /// Labels for the loss and top-k (u32), grow-only.
    labels: DeviceMem,
    /// Per-row loss (f32), grow-only.
    rows: DeviceMem,
    /// A prefetch copy (copy stream) may still read `staging` or write its destination.
    prefetch_pending: bool,
}

// SAFETY: the context pointer is only dereferenced by the C side while the engine's Mutex is held,
// so at most one host thread uses the stream and cuBLAS handle at a time; each C entry point makes
// the context's device current for the calling thread.
unsafe impl Send for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: ctx came from anc_create and is destroyed exactly once (here); anc_destroy waits
        // for the stream first.
        unsafe { ffi::anc_destroy(self.ctx) };
    }
}

/// Makes `mem` at least `bytes` long (freeing the old allocation first so peak memory does not
/// double).
fn grow(mem: &mut DeviceMem, device: i32, bytes: usize, what: &str) -> Result<()> {
    if mem.bytes() < bytes {
        *mem = DeviceMem::empty(device);
        *mem = DeviceMem::alloc(device, bytes, what)?;
    }
    Ok(())
}

/// The CUDA engine on one device.
pub struct CudaEngine {
    device: i32,
    name: String,
    tf32: AtomicBool,
    bf16: AtomicBool,
    /// Run-time engine options (off by default: on until a GPU run shows them faster).
    conv_whole_chunk: AtomicBool,
    lrn_by_pixel: AtomicBool,
    copy_stream: AtomicBool,
    /// Data-parallel gradients summed by NCCL in device memory (feature `nccl`).
    nccl_all_reduce: AtomicBool,
    /// Scratch floats a convolution may use (see `plan::conv_plan`).
    scratch_budget: AtomicUsize,
    /// Set once page-locked staging has been refused (so the notice is printed once).
    staging_refused: AtomicBool,
    inner: Mutex<Inner>,
}

impl CudaEngine {
    /// Opens device `device`. Without a driver or GPU, or with an out-of-range ordinal, returns
    /// [`Error::NoDevice`] saying so.
    pub fn new(device: usize) -> Result<CudaEngine> {
        let count = device_count()?;
        if count == 0 {
            return Err(Error::NoDevice(
                "the CUDA runtime reports 0 devices (check nvidia-smi)".to_string(),
            ));
        }
        if device >= count {
            return Err(Error::NoDevice(format!(
                "device {device} requested, but only {count} CUDA device(s) present"
            )));
        }
        let dev = device as i32;
        let mut ctx: *mut ffi::anc_ctx = std::ptr::null_mut();
        let mut name = [0 as c_char; 256];
        // SAFETY: anc_create writes the context pointer through `&mut ctx` and at most
        // name.len() bytes (NUL included) into `name`.
        let st = unsafe { ffi::anc_create(dev, &mut ctx, name.as_mut_ptr(), name.len()) };
        status::check(&st)?;
        Ok(CudaEngine {
            device: dev,
            name: status::c_text(&name),
            tf32: AtomicBool::new(false),
            bf16: AtomicBool::new(false),
            conv_whole_chunk: AtomicBool::new(false),
            lrn_by_pixel: AtomicBool::new(false),
            copy_stream: AtomicBool::new(false),
            nccl_all_reduce: AtomicBool::new(false),
            scratch_budget: AtomicUsize::new(plan::default_scratch_floats(
                memory::mem_info(dev).map(|(_, total)| total),
            )),
            staging_refused: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                ctx,
                scratch: DeviceMem::empty(dev),
                staging: PinnedHost::empty(),
                labels: DeviceMem::empty(dev),
                rows: DeviceMem::empty(dev),
                prefetch_pending: false,
            }),
        })
    }

    /// TF32 tensor-core GEMMs (10-bit mantissa products, f32 accumulation: relative error ~1e-3)
    /// instead of strict f32. Off by default.
    pub fn set_tf32(&self, on: bool) -> Result<()> {
        let inner = self.lock();
        // SAFETY: inner.ctx is a live context (owned by Inner, lock held).
        let st = unsafe { ffi::anc_set_tf32(inner.ctx, on as i32) };
        status::check(&st)?;
        self.tf32.store(on, Ordering::Relaxed);
        Ok(())
    }

    pub fn tf32(&self) -> bool {
        self.tf32.load(Ordering::Relaxed)
    }

    /// bf16 GEMM operands: every GEMM's inputs rounded to bf16 (to nearest even, 8-bit mantissa:
    /// relative 2^-8 = 3.9e-3 each) on the device, multiplied on tensor cores with f32 products,
    /// sums and results. Weights, SGD state, activations and LRN stay f32. Off by default.
    pub fn set_bf16(&self, on: bool) -> Result<()> {
        // SAFETY: ctx is the engine's live context (lock held by launch).
        self.launch(|ctx| unsafe { ffi::anc_set_bf16(ctx, on as i32) })?;
        self.bf16.store(on, Ordering::Relaxed);
        Ok(())
    }

    pub fn bf16(&self) -> bool {
        self.bf16.load(Ordering::Relaxed)
    }

    /// Convolution forward and backward-data as one GEMM of m = chunk*Ho*Wo rows per group
    /// (y and dy moved between [B][C][P] and [C][B][P] in one kernel pass, the bias added in it)
    /// instead of `chunk` strided-batched GEMMs of m = Ho*Wo. Needs Cout*Ho*Wo more scratch floats
    /// per image, so the chunks may get smaller.
    pub fn set_conv_whole_chunk(&self, on: bool) {
        self.conv_whole_chunk.store(on, Ordering::Relaxed);
    }

    pub fn conv_whole_chunk(&self) -> bool {
        self.conv_whole_chunk.load(Ordering::Relaxed)
    }

    /// LRN with one thread per pixel walking the channels with a running window sum (each value
    /// read from memory once) instead of one thread per element summing its window.
    pub fn set_lrn_by_pixel(&self, on: bool) {
        self.lrn_by_pixel.store(on, Ordering::Relaxed);
    }

    pub fn lrn_by_pixel(&self) -> bool {
        self.lrn_by_pixel.load(Ordering::Relaxed)
    }

    /// [`Engine::prefetch_upload`] on a copy stream of its own, after the work queued so far,
    /// with an event the compute stream waits on at [`Engine::prefetch_join`]: the DMA runs while
    /// the kernels queued after it do. Off: the DMA follows the queued kernels on the one stream
    /// and the host waits for both.
    pub fn set_copy_stream(&self, on: bool) {
        self.copy_stream.store(on, Ordering::Relaxed);
    }

    pub fn copy_stream(&self) -> bool {
        self.copy_stream.load(Ordering::Relaxed)
    }

    /// Data-parallel gradients summed by NCCL in this engine's memory, on its collective stream
    /// while the backward goes on ([`crate::data_parallel::NcclReplicas`]), instead of copied to
    /// the host for MPI. Needs the feature `nccl` (refused by [`Engine::device_gradient_sync`]
    /// without it).
    pub fn set_nccl_all_reduce(&self, on: bool) {
        self.nccl_all_reduce.store(on, Ordering::Relaxed);
    }

    pub fn nccl_all_reduce(&self) -> bool {
        self.nccl_all_reduce.load(Ordering::Relaxed)
    }

    /// The options that are on, for the engine's name (so logs of an A/B say which side ran).
    fn options_text(&self) -> String {
        let mut text = String::from(match (self.bf16(), self.tf32()) {
            (true, _) => "bf16",
            (false, true) => "tf32",
            (false, false) => "f32",
        });
        for (on, name) in [
            (self.conv_whole_chunk(), "conv whole-chunk"),
            (self.lrn_by_pixel(), "lrn by-pixel"),
            (self.copy_stream(), "copy stream"),
            (self.nccl_all_reduce(), "NCCL all-reduce"),
        ] {
            if on {
                text.push_str(", ");
                text.push_str(name);
            }
        }
        text
    }

    /// Caps the convolution scratch at `floats` (at least one image's worth is always used):
    /// smaller saves memory at the cost of smaller GEMMs; tests use it to force chunking.
    pub fn set_scratch_budget(&self, floats: usize) {
        self.scratch_budget.store(floats, Ordering::Relaxed);
    }

    fn budget(&self) -> usize {
        self.scratch_budget.load(Ordering::Relaxed)
    }

    pub fn device(&self) -> usize {
        self.device as usize
    }

    /// (free, total) bytes of device memory, when the runtime can tell.
    pub fn memory_info(&self) -> Option<(u64, u64)> {
        memory::mem_info(self.device)
    }

    /// The one way an op reaches the C side: the call runs with the engine's lock held and its
    /// context, and its status comes back as a `Result` naming the call that failed.
    fn launch(&self, call: impl FnOnce(*mut ffi::anc_ctx) -> ffi::anc_status) -> Result<()> {
        let inner = self.lock();
        status::check(&call(inner.ctx))
    }

    /// [`CudaEngine::launch`] with the engine's scratch grown to `floats` f32-sized slots first
    /// and passed to the call.
    fn launch_with_scratch(
        &self,
        floats: usize,
        call: impl FnOnce(*mut ffi::anc_ctx, *mut f32) -> ffi::anc_status,
    ) -> Result<()> {
        let mut inner = self.lock();
        let scratch = self.scratch(&mut inner, floats)?;
        status::check(&call(inner.ctx, scratch))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves no half-updated state on the host side (the
        // scratch is either the old or the new allocation), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies `labels` into the engine's device label buffer.
    fn stage_labels(&self, inner: &mut Inner, labels: &[u32]) -> Result<()> {
        let bytes = std::mem::size_of_val(labels);
        grow(&mut inner.labels, self.device, bytes, "labels")?;
        // SAFETY: the label buffer holds at least `bytes` (grown above) and `labels` is a live
        // host slice of `bytes` bytes.
        let st = unsafe {
            ffi::anc_upload(inner.ctx, inner.labels.ptr(), labels.as_ptr().cast(), bytes)
        };
        status::check(&st)
    }

    /// Waits on the host for the last prefetch copy on the copy stream, if one may still run:
    /// before the staging buffer it reads is written or freed, or its destination used.
    fn finish_prefetch_copy(&self, inner: &mut Inner) -> Result<()> {
        if inner.prefetch_pending {
            // SAFETY: inner.ctx is a live context (lock held).
            status::check(&unsafe { ffi::anc_prefetch_host_wait(inner.ctx) })?;
            inner.prefetch_pending = false;
        }
        Ok(())
    }

    /// The collective stream (created on first use): where a communication library (NCCL)
    /// queues its kernels on this engine's buffers, beside the compute stream. Its work is
    /// ordered against the compute stream only by [`CudaEngine::collective_fork`] and
    /// [`CudaEngine::collective_join`].
    pub fn collective_stream(&self) -> Result<*mut c_void> {
        let mut stream: *mut c_void = std::ptr::null_mut();
        // SAFETY: ctx is the engine's live context; the call writes one pointer through `&mut`.
        self.launch(|ctx| unsafe { ffi::anc_collective_stream(ctx, &mut stream) })?;
        Ok(stream)
    }

    /// Makes the collective stream wait for the work queued on the compute stream so far (the
    /// backward kernels that wrote the gradients about to be reduced); the host does not wait.
    pub fn collective_fork(&self) -> Result<()> {
        // SAFETY: ctx is the engine's live context.
        self.launch(|ctx| unsafe { ffi::anc_collective_fork(ctx) })
    }

    /// Makes the compute stream wait for the work queued on the collective stream so far (the
    /// sums, before the update reads them); the host does not wait.
    pub fn collective_join(&self) -> Result<()> {
        // SAFETY: ctx is the engine's live context.
        self.launch(|ctx| unsafe { ffi::anc_collective_join(ctx) })
    }

    /// Makes the staging buffer at least `bytes` long; false (after saying so once) where the
    /// system will not lock that much memory, and uploads then go straight from pageable memory.
    fn grow_staging(&self, inner: &mut Inner, bytes: usize) -> bool {
        if inner.staging.bytes() >= bytes {
            return true;
        }
        inner.staging = PinnedHost::empty();
        match PinnedHost::alloc(bytes) {
            Ok(staging) => {
                inner.staging = staging;
                true
            }
            Err(err) => {
                if !self.staging_refused.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "notice: cuda:{}: no page-locked staging buffer of {bytes} bytes ({err}); \
                         uploads go from pageable memory, several times slower",
                        self.device
                    );
                }
                false
            }
        }
    }

    /// Copies `src` into `dst` through the page-locked staging buffer (already grown to hold it),
    /// piece by piece, and waits.
    fn staged_upload(&self, inner: &mut Inner, dst: &mut DeviceBuffer, src: &[f32]) -> Result<()> {
        let bytes = std::mem::size_of_val(src);
        // The caller grew the buffer; this guards the unsafe slice below against a caller that
        // did not.
        assert!(inner.staging.bytes() >= bytes, "staging buffer not grown");
        // SAFETY: the staging buffer is a live page-locked allocation of at least `bytes`, owned
        // by `inner` (lock held, so no other thread touches it), and no copy still reads it:
        // every staged upload waits for its copies before returning, after an error too, and a
        // prefetch's copy is waited for (finish_prefetch_copy) before the staging is grown or
        // written again.
        let staged =
            unsafe { std::slice::from_raw_parts_mut(inner.staging.ptr().cast::<f32>(), src.len()) };
        let mut queued = Ok(());
        for (i, (stage, part)) in staged
            .chunks_mut(STAGED_PIECE_FLOATS)
            .zip(src.chunks(STAGED_PIECE_FLOATS))
            .enumerate()
        {
            stage
                .par_chunks_mut(1 << 16)
                .zip(part.par_chunks(1 << 16))
                .for_each(|(to, from)| to.copy_from_slice(from));
            // SAFETY: the piece lies inside dst (dst.len() == src.len(), checked) and inside the
            // page-locked staging buffer, which stays untouched until the wait below.
            let st = unsafe {
                ffi::anc_upload_async(
                    inner.ctx,
                    dst.as_mut_ptr().add(i * STAGED_PIECE_FLOATS).cast(),
                    stage.as_ptr().cast(),
                    std::mem::size_of_val(stage),
                )
            };
            queued = status::check(&st);
            if queued.is_err() {
                break;
            }
        }
        // SAFETY: inner.ctx is a live context.
        let waited = unsafe { ffi::anc_synchronize(inner.ctx) };
        queued?;
        status::check(&waited)
    }

    /// The scratch, grown to `floats` f32-sized slots.
    fn scratch(&self, inner: &mut Inner, floats: usize) -> Result<*mut f32> {
        grow(
            &mut inner.scratch,
            self.device,
            plan::f32_bytes(floats)?,
            "the engine's scratch (im2col, max-pool windows)",
        )?;
        Ok(inner.scratch.ptr() as *mut f32)
    }
}

/// Uploads from this size on go through page-locked staging (smaller ones are not worth the
/// extra host copy).
const STAGED_UPLOAD_MIN_BYTES: usize = 1 << 20;
/// Floats per staged piece (8 MB): small enough to overlap the host copy with the DMA, large
/// enough that each DMA runs at full rate.
const STAGED_PIECE_FLOATS: usize = 2 << 20;

fn conv_ffi(s: &ConvShape) -> ffi::anc_conv {
    ffi::anc_conv {
        n: s.n as i64,
        c_in: s.c_in as i64,
        h: s.h as i64,
        w: s.w as i64,
        c_out: s.c_out as i64,
        kh: s.kh as i64,
        kw: s.kw as i64,
        stride: s.stride as i64,
        pad: s.pad as i64,
        groups: s.groups as i64,
    }
}

/// The scratch floats the C side computes for a conv call; lets tests check that the host plan and
/// the kernels agree on the layout without a device (the function does no CUDA calls).
pub fn c_conv_scratch_floats(s: &ConvShape, chunk: usize, channel_major: bool) -> usize {
    let shape = conv_ffi(s);
    // SAFETY: pure arithmetic on the struct passed by pointer; no device access.
    unsafe { ffi::anc_conv_scratch_floats(&shape, chunk as i64, channel_major as i32) }
}

impl Engine for CudaEngine {
    type Buf = DeviceBuffer;

    fn device_gradient_sync<'c>(
        engines: &[Self],
        comm: &'c crate::dist::Comm,
    ) -> Result<Option<Box<dyn crate::trainer::GradientSync<Self> + 'c>>> {
        if !engines.iter().any(CudaEngine::nccl_all_reduce) {
            return Ok(None);
        }
        #[cfg(feature = "nccl")]
        {
            let sync = crate::data_parallel::NcclReplicas::new(comm, engines)?;
            Ok(Some(Box::new(sync)))
        }
        #[cfg(not(feature = "nccl"))]
        {
            let _ = comm;
            Err(Error::Config(
                "--all-reduce nccl: this binary was built without NCCL; rebuild with \
                 `cargo build --release --features nccl`"
                    .into(),
            ))
        }
    }

    fn name(&self) -> String {
        format!(
            "cuda:{} {} ({})",
            self.device,
            self.name,
            self.options_text()
        )
    }

    fn alloc(&self, len: usize) -> Result<DeviceBuffer> {
        let bytes = plan::f32_bytes(len)?;
        let mem = DeviceMem::alloc(self.device, bytes, &format!("a buffer of {len} f32"))?;
        let inner = self.lock();
        // SAFETY: mem is a fresh allocation of `bytes` bytes on this device.
        let st = unsafe { ffi::anc_memset_zero(inner.ctx, mem.ptr(), bytes) };
        status::check(&st)?;
        Ok(DeviceBuffer::new(mem, len))
    }

    fn buf_len(&self, buf: &DeviceBuffer) -> usize {
        buf.len()
    }

    // Large uploads (a batch of images) go through page-locked staging, in pieces so that
    // copying piece i+1 into the staging buffer (on the thread pool) overlaps the DMA of piece i:
    // measured on an H200 host, a 79 MB batch from pageable memory moves at 6.4 GB/s, from
    // page-locked memory at 54.6 GB/s.
    fn upload(&self, dst: &mut DeviceBuffer, src: &[f32]) -> Result<()> {
        check_len("upload", "src", src.len(), dst.len())?;
        let mut inner = self.lock();
        self.finish_prefetch_copy(&mut inner)?;
        let bytes = std::mem::size_of_val(src);
        if bytes >= STAGED_UPLOAD_MIN_BYTES && self.grow_staging(&mut inner, bytes) {
            return self.staged_upload(&mut inner, dst, src);
        }
        // SAFETY: dst holds dst.len() f32 and src is a live host slice of the same length.
        let st = unsafe {
            ffi::anc_upload(
                inner.ctx,
                dst.as_mut_ptr().cast(),
                src.as_ptr().cast(),
                src.len() * 4,
            )
        };
        status::check(&st)
    }

    // With the copy stream: the host copy into page-locked staging now, the DMA queued on the
    // copy stream after the work queued so far (which may still read `dst`), no wait.
    fn prefetch_upload(&self, dst: &mut DeviceBuffer, src: &[f32]) -> Result<()> {
        if !self.copy_stream() {
            return self.upload(dst, src);
        }
        check_len("prefetch_upload", "src", src.len(), dst.len())?;
        let mut inner = self.lock();
        self.finish_prefetch_copy(&mut inner)?;
        let bytes = std::mem::size_of_val(src);
        if !self.grow_staging(&mut inner, bytes) {
            drop(inner);
            return self.upload(dst, src);
        }
        // SAFETY: the staging buffer is a live page-locked allocation of at least `bytes` (grown
        // above), owned by `inner` (lock held), and no copy reads it (waited for above).
        let staged =
            unsafe { std::slice::from_raw_parts_mut(inner.staging.ptr().cast::<f32>(), src.len()) };
        staged
            .par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(to, from)| to.copy_from_slice(from));
        // SAFETY: dst holds src.len() f32 (checked); the staging stays untouched until
        // finish_prefetch_copy has waited for this copy (prefetch_pending).
        let st = unsafe {
            ffi::anc_prefetch_upload(
                inner.ctx,
                dst.as_mut_ptr().cast(),
                inner.staging.ptr().cast_const(),
                bytes,
            )
        };
        inner.prefetch_pending = true;
        status::check(&st)
    }

    fn prefetch_join(&self) -> Result<()> {
        // SAFETY: ctx is the engine's live context; the call does nothing before the first
        // prefetch on the copy stream.
        self.launch(|ctx| unsafe { ffi::anc_prefetch_join(ctx) })
    }

    fn download(&self, src: &DeviceBuffer, dst: &mut [f32]) -> Result<()> {
        check_len("download", "dst", dst.len(), src.len())?;
        // SAFETY: src holds src.len() f32 and dst is a live host slice of the same length.
        self.launch(|ctx| unsafe {
            ffi::anc_download(
                ctx,
                dst.as_mut_ptr().cast(),
                src.as_ptr().cast(),
                dst.len() * 4,
            )
        })
    }

    fn copy(&self, dst: &mut DeviceBuffer, src: &DeviceBuffer) -> Result<()> {
        check_len("copy", "src", src.len(), dst.len())?;
        // SAFETY: both buffers hold dst.len() f32; `&mut dst` and `&src` cannot alias.
        self.launch(|ctx| unsafe {
            ffi::anc_copy(
                ctx,
                dst.as_mut_ptr().cast(),
                src.as_ptr().cast(),
                dst.len() * 4,
            )
        })
    }

    fn add(&self, dst: &mut DeviceBuffer, src: &DeviceBuffer) -> Result<()> {
        check_len("add", "src", src.len(), dst.len())?;
        // SAFETY: both buffers hold dst.len() f32; `&mut dst` and `&src` cannot alias.
        self.launch(|ctx| unsafe { ffi::anc_add(ctx, dst.as_mut_ptr(), src.as_ptr(), dst.len()) })
    }

    // The source device's queued work (which produced `src`) is finished first; the copy runs on
    // this engine's stream and is waited for, so neither side can touch the blocks mid-copy.
    fn copy_blocks_from(
        &self,
        dst: &mut DeviceBuffer,
        src_engine: &CudaEngine,
        src: &DeviceBuffer,
        b: &Blocks,
    ) -> Result<()> {
        b.check("copy_blocks_from", src.len(), dst.len())?;
        if b.floats() == 0 {
            return Ok(());
        }
        if !std::ptr::eq(self, src_engine) {
            src_engine.synchronize()?;
        }
        {
            let inner = self.lock();
            let f = std::mem::size_of::<f32>();
            // SAFETY: b.check proved every block lies inside src and dst (pitches and offsets in
            // floats, scaled to bytes here); src and dst are distinct allocations (`&mut dst`).
            let st = unsafe {
                ffi::anc_copy_2d(
                    inner.ctx,
                    dst.as_mut_ptr().add(b.dst_offset).cast(),
                    b.dst_stride * f,
                    src.as_ptr().add(b.src_offset).cast(),
                    b.src_stride * f,
                    b.len * f,
                    b.count,
                )
            };
            status::check(&st)?;
        }
        self.synchronize()
    }

    fn fill(&self, buf: &mut DeviceBuffer, value: f32) -> Result<()> {
        // SAFETY: buf holds buf.len() f32.
        self.launch(|ctx| unsafe { ffi::anc_fill(ctx, buf.as_mut_ptr(), buf.len(), value) })
    }

    fn scale(&self, buf: &mut DeviceBuffer, a: f32) -> Result<()> {
        // SAFETY: buf holds buf.len() f32.
        self.launch(|ctx| unsafe { ffi::anc_scale(ctx, buf.as_mut_ptr(), buf.len(), a) })
    }

    fn synchronize(&self) -> Result<()> {
        // SAFETY: ctx is the engine's live context.
        self.launch(|ctx| unsafe { ffi::anc_synchronize(ctx) })
    }

    fn sum_of_squares(&self, buf: &DeviceBuffer) -> Result<f64> {
        let mut sum = 0f64;
        // Each block's partial sum (f64) in the scratch, then one block adds them in order.
        let blocks = plan::sum_of_squares_blocks(buf.len());
        let slots = 2 * (blocks + 1);
        self.launch_with_scratch(slots, |ctx, scratch| {
            // SAFETY: buf holds buf.len() f32; the scratch holds `slots` f32 slots, room for
            // one f64 per block and the total (cudaMalloc'd, so 8-byte aligned); `sum` is a live
            // host f64 written once the stream has run the kernels.
            unsafe {
                ffi::anc_sum_of_squares(
                    ctx,
                    buf.as_ptr(),
                    buf.len(),
                    blocks,
                    scratch.cast(),
                    &mut sum,
                )
            }
        })?;
        Ok(sum)
    }

    // y[N,Cout,Ho,Wo] = conv(x[N,Cin,H,W], w[Cout,Cin/g,kh,kw]) + b[Cout]
    fn conv_forward(
        &self,
        s: &ConvShape,
        x: &DeviceBuffer,
        w: &DeviceBuffer,
        b: &DeviceBuffer,
        y: &mut DeviceBuffer,
    ) -> Result<()> {
        let whole = self.conv_whole_chunk();
        let plan = plan::conv_forward(s, self.budget(), whole, x.len(), w.len(), b.len(), y.len())?;
        let shape = conv_ffi(s);
        // SAFETY: x, w, b, y have the lengths the shape needs (checked) and the scratch holds
        // plan.scratch_floats = anc_conv_scratch_floats(shape, chunk, whole) floats.
        self.launch_with_scratch(plan.scratch_floats, |ctx, scratch| unsafe {
            ffi::anc_conv_forward(
                ctx,
                &shape,
                plan.chunk as i64,
                whole as i32,
                x.as_ptr(),
                w.as_ptr(),
                b.as_ptr(),
                y.as_mut_ptr(),
                scratch,
            )
        })
    }

    // dx[N,Cin,H,W] = conv_transpose(dy[N,Cout,Ho,Wo], w[Cout,Cin/g,kh,kw])
    fn conv_backward_data(
        &self,
        s: &ConvShape,
        dy: &DeviceBuffer,
        w: &DeviceBuffer,
        dx: &mut DeviceBuffer,
    ) -> Result<()> {
        let whole = self.conv_whole_chunk();
        let plan = plan::conv_backward_data(s, self.budget(), whole, dy.len(), w.len(), dx.len())?;
        let shape = conv_ffi(s);
        // SAFETY: dy, w, dx have the lengths the shape needs (checked); the scratch holds the
        // planned floats (with dy channel-major when `whole`).
        self.launch_with_scratch(plan.scratch_floats, |ctx, scratch| unsafe {
            ffi::anc_conv_backward_data(
                ctx,
                &shape,
                plan.chunk as i64,
                whole as i32,
                dy.as_ptr(),
                w.as_ptr(),
                dx.as_mut_ptr(),
                scratch,
            )
        })
    }

    // dw[Cout,Cin/g,kh,kw] = sum_n dy ⋆ x ; db[Cout] = sum dy
    fn conv_backward_weights(
        &self,
        s: &ConvShape,
        x: &DeviceBuffer,
        dy: &DeviceBuffer,
        dw: &mut DeviceBuffer,
        db: &mut DeviceBuffer,
    ) -> Result<()> {
        let plan =
            plan::conv_backward_weights(s, self.budget(), x.len(), dy.len(), dw.len(), db.len())?;
        let shape = conv_ffi(s);
        // SAFETY: x, dy, dw, db have the lengths the shape needs (checked); the scratch holds the
        // planned floats (im2col plus transposed dy).
        self.launch_with_scratch(plan.scratch_floats, |ctx, scratch| unsafe {
            ffi::anc_conv_backward_weights(
                ctx,
                &shape,
                plan.chunk as i64,
                x.as_ptr(),
                dy.as_ptr(),
                dw.as_mut_ptr(),
                db.as_mut_ptr(),
                scratch,
            )
        })
    }

    // x = max(x, 0)
    fn relu_forward(&self, x: &mut DeviceBuffer) -> Result<()> {
        // SAFETY: x holds x.len() f32.
        self.launch(|ctx| unsafe { ffi::anc_relu_forward(ctx, x.as_mut_ptr(), x.len()) })
    }

    // dy *= (y > 0)
    fn relu_backward(&self, y: &DeviceBuffer, dy: &mut DeviceBuffer) -> Result<()> {
        plan::same_len("relu_backward", ("y", y.len()), ("dy", dy.len()))?;
        // SAFETY: y and dy both hold dy.len() f32 (checked).
        self.launch(|ctx| unsafe {
            ffi::anc_relu_backward(ctx, y.as_ptr(), dy.as_mut_ptr(), dy.len())
        })
    }

    // x = tanh(x)
    fn tanh_forward(&self, x: &mut DeviceBuffer) -> Result<()> {
        // SAFETY: x holds x.len() f32.
        self.launch(|ctx| unsafe { ffi::anc_tanh_forward(ctx, x.as_mut_ptr(), x.len()) })
    }

    // dy *= 1 - y^2
    fn tanh_backward(&self, y: &DeviceBuffer, dy: &mut DeviceBuffer) -> Result<()> {
        plan::same_len("tanh_backward", ("y", y.len()), ("dy", dy.len()))?;
        // SAFETY: y and dy both hold dy.len() f32 (checked).
        self.launch(|ctx| unsafe {
            ffi::anc_tanh_backward(ctx, y.as_ptr(), dy.as_mut_ptr(), dy.len())
        })
    }

    // y[N,C,H,W] = x * scale^-beta ; scale = k + alpha' * sum_window x^2
    fn lrn_forward(
        &self,
        s: &LrnShape,
        p: &LrnParams,
        x: &DeviceBuffer,
        y: &mut DeviceBuffer,
        scale: &mut DeviceBuffer,
    ) -> Result<()> {
        plan::lrn(
            "lrn_forward",
            s,
            p.size,
            &[("x", x.len()), ("y", y.len()), ("scale", scale.len())],
        )?;
        let kernel = if self.lrn_by_pixel() {
            ffi::anc_lrn_forward_by_pixel
        } else {
            ffi::anc_lrn_forward
        };
        // SAFETY: x, y, scale each hold s.len() f32 (checked); the geometry is valid (checked).
        self.launch(|ctx| unsafe {
            kernel(
                ctx,
                s.n as i64,
                s.c as i64,
                (s.h * s.w) as i64,
                s.groups as i64,
                p.size as i64,
                p.effective_alpha(),
                p.beta,
                p.k,
                x.as_ptr(),
                y.as_mut_ptr(),
                scale.as_mut_ptr(),
            )
        })
    }

    // dx[N,C,H,W] = dy scale^-beta - 2 alpha' beta x sum_window(dy y / scale)
    fn lrn_backward(
        &self,
        s: &LrnShape,
        p: &LrnParams,
        x: &DeviceBuffer,
        y: &DeviceBuffer,
        scale: &DeviceBuffer,
        dy: &DeviceBuffer,
        dx: &mut DeviceBuffer,
    ) -> Result<()> {
        plan::lrn(
            "lrn_backward",
            s,
            p.size,
            &[
                ("x", x.len()),
                ("y", y.len()),
                ("scale", scale.len()),
                ("dy", dy.len()),
                ("dx", dx.len()),
            ],
        )?;
        let kernel = if self.lrn_by_pixel() {
            ffi::anc_lrn_backward_by_pixel
        } else {
            ffi::anc_lrn_backward
        };
        // SAFETY: all five buffers hold s.len() f32 (checked); the geometry is valid (checked).
        self.launch(|ctx| unsafe {
            kernel(
                ctx,
                s.n as i64,
                s.c as i64,
                (s.h * s.w) as i64,
                s.groups as i64,
                p.size as i64,
                p.effective_alpha(),
                p.beta,
                x.as_ptr(),
                y.as_ptr(),
                scale.as_ptr(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
            )
        })
    }

    // y[N,C,Ho,Wo] = max over each window of x[N,C,H,W]
    fn maxpool_forward(&self, s: &PoolShape, x: &DeviceBuffer, y: &mut DeviceBuffer) -> Result<()> {
        plan::pool("maxpool_forward", s, x.len(), y.len(), None)?;
        // SAFETY: x and y hold the shape's lengths and the window fits the image (checked).
        self.launch(|ctx| unsafe {
            ffi::anc_maxpool_forward(
                ctx,
                (s.n * s.c) as i64,
                s.h as i64,
                s.w as i64,
                s.size as i64,
                s.stride as i64,
                x.as_ptr(),
                y.as_mut_ptr(),
            )
        })
    }

    // dx[N,C,H,W]: each dy to its window's first maximum
    fn maxpool_backward(
        &self,
        s: &PoolShape,
        x: &DeviceBuffer,
        y: &DeviceBuffer,
        dy: &DeviceBuffer,
        dx: &mut DeviceBuffer,
    ) -> Result<()> {
        plan::pool(
            "maxpool_backward",
            s,
            x.len(),
            y.len(),
            Some((dy.len(), dx.len())),
        )?;
        // One i32 (the size of an f32) per window: its first maximum's offset.
        // SAFETY: x, dy, dx hold the shape's lengths and the window fits the image (checked);
        // the scratch holds y_len 4-byte slots.
        self.launch_with_scratch(s.y_len(), |ctx, scratch| unsafe {
            ffi::anc_maxpool_backward(
                ctx,
                (s.n * s.c) as i64,
                s.h as i64,
                s.w as i64,
                s.size as i64,
                s.stride as i64,
                x.as_ptr(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
                scratch.cast::<i32>(),
            )
        })
    }

    // y[N,C,Ho,Wo] = mean over each window of x[N,C,H,W]
    fn avgpool_forward(&self, s: &PoolShape, x: &DeviceBuffer, y: &mut DeviceBuffer) -> Result<()> {
        plan::pool("avgpool_forward", s, x.len(), y.len(), None)?;
        // SAFETY: x and y hold the shape's lengths and the window fits the image (checked).
        self.launch(|ctx| unsafe {
            ffi::anc_avgpool_forward(
                ctx,
                (s.n * s.c) as i64,
                s.h as i64,
                s.w as i64,
                s.size as i64,
                s.stride as i64,
                x.as_ptr(),
                y.as_mut_ptr(),
            )
        })
    }

    // dx[N,C,H,W] = sum over the windows holding each x of dy / size^2
    fn avgpool_backward(
        &self,
        s: &PoolShape,
        dy: &DeviceBuffer,
        dx: &mut DeviceBuffer,
    ) -> Result<()> {
        // Average pooling's backward reads no x or y: their lengths are the shape's by definition.
        plan::pool(
            "avgpool_backward",
            s,
            s.x_len(),
            s.y_len(),
            Some((dy.len(), dx.len())),
        )?;
        // SAFETY: dy and dx hold the shape's lengths and the window fits the image (checked).
        self.launch(|ctx| unsafe {
            ffi::anc_avgpool_backward(
                ctx,
                (s.n * s.c) as i64,
                s.h as i64,
                s.w as i64,
                s.size as i64,
                s.stride as i64,
                dy.as_ptr(),
                dx.as_mut_ptr(),
            )
        })
    }

    // y[N,out] = x[N,in] w[out,in]^T + b[out]
    fn fc_forward(
        &self,
        s: &FcShape,
        x: &DeviceBuffer,
        w: &DeviceBuffer,
        b: &DeviceBuffer,
        y: &mut DeviceBuffer,
    ) -> Result<()> {
        plan::fc_forward(s, x.len(), w.len(), b.len(), y.len())?;
        // SAFETY: x, w, b, y hold the shape's lengths (checked).
        self.launch(|ctx| unsafe {
            ffi::anc_fc_forward(
                ctx,
                s.n as i64,
                s.d_in as i64,
                s.d_out as i64,
                x.as_ptr(),
                w.as_ptr(),
                b.as_ptr(),
                y.as_mut_ptr(),
            )
        })
    }

    // dx[N,in] = dy w ; dw[out,in] = dy^T x ; db[out] = sum_n dy
    fn fc_backward(
        &self,
        s: &FcShape,
        x: &DeviceBuffer,
        w: &DeviceBuffer,
        dy: &DeviceBuffer,
        dx: Option<&mut DeviceBuffer>,
        dw: &mut DeviceBuffer,
        db: &mut DeviceBuffer,
    ) -> Result<()> {
        plan::fc_backward(
            s,
            x.len(),
            w.len(),
            dy.len(),
            dx.as_ref().map(|d| d.len()),
            dw.len(),
            db.len(),
        )?;
        if s.n == 0 {
            // No rows: the gradients are empty sums (a k = 0 GEMM is not worth relying on).
            self.fill(dw, 0.0)?;
            return self.fill(db, 0.0);
        }
        let dx_ptr = dx.map_or(std::ptr::null_mut(), |d| d.as_mut_ptr());
        // SAFETY: x, w, dy, dw, db (and dx when non-null) hold the shape's lengths (checked); a
        // null dx tells the C side to skip that GEMM.
        self.launch(|ctx| unsafe {
            ffi::anc_fc_backward(
                ctx,
                s.n as i64,
                s.d_in as i64,
                s.d_out as i64,
                x.as_ptr(),
                w.as_ptr(),
                dy.as_ptr(),
                dx_ptr,
                dw.as_mut_ptr(),
                db.as_mut_ptr(),
            )
        })
    }

    // x[i] = keep(seed, m.index(i), p) ? x[i] * keep_scale : 0
    fn dropout_forward(
        &self,
        x: &mut DeviceBuffer,
        p: f32,
        keep_scale: f32,
        m: &MaskSlice,
    ) -> Result<()> {
        m.check("dropout_forward", x.len())?;
        // SAFETY: x holds x.len() f32; the mask slice only changes which hash each element uses.
        self.launch(|ctx| unsafe {
            ffi::anc_dropout(
                ctx,
                x.as_mut_ptr(),
                x.len(),
                p,
                keep_scale,
                m.seed,
                m.width,
                m.total,
                m.unit_base(),
            )
        })
    }

    // dy[i] = keep(seed, m.index(i), p) ? dy[i] * keep_scale : 0 (the forward mask, recomputed)
    fn dropout_backward(
        &self,
        dy: &mut DeviceBuffer,
        p: f32,
        keep_scale: f32,
        m: &MaskSlice,
    ) -> Result<()> {
        self.dropout_forward(dy, p, keep_scale, m)
    }

    // probs[N,K] = softmax(logits); dlogits = (probs - onehot) / N; returns the mean loss
    fn softmax_xent(
        &self,
        n: usize,
        classes: usize,
        logits: &DeviceBuffer,
        labels: &[u32],
        probs: &mut DeviceBuffer,
        dlogits: &mut DeviceBuffer,
    ) -> Result<f32> {
        const OP: &str = "softmax_xent";
        plan::softmax(
            OP,
            n,
            classes,
            &[
                ("logits", logits.len()),
                ("probs", probs.len()),
                ("dlogits", dlogits.len()),
            ],
            Some(labels),
        )?;
        if n == 0 || classes == 0 {
            return Err(Error::shape(
                OP,
                "the mean loss of an empty batch is undefined",
            ));
        }
        let mut inner = self.lock();
        self.stage_labels(&mut inner, labels)?;
        grow(&mut inner.rows, self.device, n * 4, "per-row losses")?;
        let mut loss = vec![0f32; n];
        // SAFETY: logits, probs, dlogits hold n*classes f32 (checked); the label buffer holds n
        // u32 (staged) and rows at least n f32 (grown); the download writes n f32 into `loss`.
        let st = unsafe {
            let rows = inner.rows.ptr() as *mut f32;
            let st = ffi::anc_softmax_xent(
                inner.ctx,
                n as i64,
                classes as i64,
                logits.as_ptr(),
                inner.labels.ptr() as *const u32,
                probs.as_mut_ptr(),
                dlogits.as_mut_ptr(),
                rows,
            );
            if st.code != 0 {
                st
            } else {
                ffi::anc_download(inner.ctx, loss.as_mut_ptr().cast(), rows.cast(), n * 4)
            }
        };
        status::check(&st)?;
        // Summed in f64 so the mean does not depend on the batch size's rounding.
        Ok((loss.iter().map(|&l| l as f64).sum::<f64>() / n as f64) as f32)
    }

    // probs[N,K] = softmax(logits)
    fn softmax(
        &self,
        n: usize,
        classes: usize,
        logits: &DeviceBuffer,
        probs: &mut DeviceBuffer,
    ) -> Result<()> {
        plan::softmax(
            "softmax",
            n,
            classes,
            &[("logits", logits.len()), ("probs", probs.len())],
            None,
        )?;
        // SAFETY: logits and probs hold n*classes f32 (checked).
        self.launch(|ctx| unsafe {
            ffi::anc_softmax(
                ctx,
                n as i64,
                classes as i64,
                logits.as_ptr(),
                probs.as_mut_ptr(),
            )
        })
    }

    // v = momentum*v - weight_decay*lr*w - lr*dw ; w = w + v
    fn sgd_update(
        &self,
        w: &mut DeviceBuffer,
        dw: &DeviceBuffer,
        v: &mut DeviceBuffer,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
        plan::same_len("sgd_update", ("w", w.len()), ("dw", dw.len()))?;
        plan::same_len("sgd_update", ("w", w.len()), ("v", v.len()))?;
        // SAFETY: w, dw, v all hold w.len() f32 (checked); `&mut w` and `&mut v` cannot alias.
        self.launch(|ctx| unsafe {
            ffi::anc_sgd_update(
                ctx,
                w.as_mut_ptr(),
                dw.as_ptr(),
                v.as_mut_ptr(),
                w.len(),
                lr,
                momentum,
                weight_decay,
            )
        })
    }
}
