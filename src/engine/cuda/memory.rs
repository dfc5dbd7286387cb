//! Owned device memory: freed on drop.

use std::ffi::c_void;

use crate::error::Result;

use super::{ffi, status};

/// A device allocation of `bytes` bytes on `device` (null when empty).
pub(crate) struct DeviceMem {
    ptr: *mut c_void,
    bytes: usize,
    device: i32,
}

// SAFETY: a device pointer is a plain address in the device's memory, valid from any host thread
// of the process; DeviceMem owns it exclusively (no aliasing handles exist).
unsafe impl Send for DeviceMem {}
// SAFETY: shared references only read the address; the device memory itself is written only
// through `&mut` engine calls.
unsafe impl Sync for DeviceMem {}

impl DeviceMem {
    pub(crate) fn empty(device: i32) -> Self {
        DeviceMem {
            ptr: std::ptr::null_mut(),
            bytes: 0,
            device,
        }
    }

    /// Allocates `bytes` (uninitialised); a failure that is out-of-memory names `what`, the size
    /// and the device's free/total memory.
    pub(crate) fn alloc(device: i32, bytes: usize, what: &str) -> Result<Self> {
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: anc_malloc writes one pointer through the valid `&mut ptr` and nothing else.
        let st = unsafe { ffi::anc_malloc(device, bytes, &mut ptr) };
        if st.code == status::CUDA_OUT_OF_MEMORY && st.kind == ffi::ANC_CUDA as i32 {
            return Err(status::out_of_memory(what, bytes as u64, mem_info(device)));
        }
        status::check(&st)?;
        Ok(DeviceMem { ptr, bytes, device })
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: ptr came from anc_malloc on this device and is freed exactly once (here).
            // An error cannot be returned from drop; a failing cudaFree means the context is
            // already gone, and then the memory is too.
            let _ = unsafe { ffi::anc_free(self.device, self.ptr) };
        }
    }
}

/// Page-locked host memory of `bytes` bytes (null when empty), freed on drop: the staging buffer
/// of large uploads.
pub(crate) struct PinnedHost {
    ptr: *mut c_void,
    bytes: usize,
}

// SAFETY: a plain host allocation owned exclusively by this value; the engine touches it only
// under its lock.
unsafe impl Send for PinnedHost {}

impl PinnedHost {
    pub(crate) fn empty() -> Self {
        PinnedHost {
            ptr: std::ptr::null_mut(),
            bytes: 0,
        }
    }

    pub(crate) fn alloc(bytes: usize) -> Result<Self> {
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: anc_host_alloc writes one pointer through the valid `&mut ptr` and nothing else.
        let st = unsafe { ffi::anc_host_alloc(bytes, &mut ptr) };
        status::check(&st)?;
        Ok(PinnedHost { ptr, bytes })
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: ptr came from anc_host_alloc and is freed exactly once (here); no copy
            // reads it any more (every staged upload waits for its copies).
            let _ = unsafe { ffi::anc_host_free(self.ptr) };
        }
    }
}

/// (free, total) bytes of device memory, when the runtime can tell.
pub(crate) fn mem_info(device: i32) -> Option<(u64, u64)> {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: anc_mem_info writes two size_t through valid `&mut` references.
    let st = unsafe { ffi::anc_mem_info(device, &mut free, &mut total) };
    (st.code == 0).then_some((free as u64, total as u64))
}

/// The CUDA engine's buffer: `len` f32 in device memory, owned, freed on drop.
pub struct DeviceBuffer {
    pub(crate) mem: DeviceMem,
    len: usize,
}

impl DeviceBuffer {
    pub(crate) fn new(mem: DeviceMem, len: usize) -> Self {
        DeviceBuffer { mem, len }
    }

    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn as_ptr(&self) -> *const f32 {
        self.mem.ptr() as *const f32
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.mem.ptr() as *mut f32
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer(cuda:{}, {} f32)",
            self.mem.device, self.len
        )
    }
}
