//! Turning the C side's `anc_status` into `alexnet::Error`. Pure functions over codes and strings,
//! so the mapping is tested without a GPU.

use crate::error::Error;

use super::ffi;

/// cudaError_t values that mean "no usable device": initialisation failed (3), stub library
/// (34: the real driver is missing), insufficient driver (35: no driver, or one too old for the
/// runtime), devices unavailable (46: exclusive mode / busy), no device (100), invalid device
/// ordinal (101), system driver mismatch (803) and forward compatibility unsupported (804).
pub const NO_DEVICE_CODES: [i32; 8] = [3, 34, 35, 46, 100, 101, 803, 804];
/// cudaErrorMemoryAllocation.
pub const CUDA_OUT_OF_MEMORY: i32 = 2;
/// CUBLAS_STATUS_ALLOC_FAILED.
pub const CUBLAS_ALLOC_FAILED: i32 = 3;

/// Which library reported an error (mirrors `enum anc_status_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Library {
    Cuda,
    Cublas,
}

/// The error for a failed call: `NoDevice` and `OutOfMemory` get their own variants (with what to
/// do), everything else is `Cuda { call, msg }` with the library's string and numeric code.
pub fn classify(lib: Library, code: i32, call: &str, msg: &str) -> Error {
    match lib {
        Library::Cuda if NO_DEVICE_CODES.contains(&code) => Error::NoDevice(format!(
            "{call} failed with CUDA error {code} ({msg}); check that an NVIDIA GPU is visible \
             (nvidia-smi) and that the driver supports CUDA 13 (driver >= 580)"
        )),
        Library::Cuda if code == CUDA_OUT_OF_MEMORY => {
            Error::OutOfMemory(format!("{call}: {msg} (CUDA error {code})"))
        }
        Library::Cublas if code == CUBLAS_ALLOC_FAILED => {
            Error::OutOfMemory(format!("{call}: {msg} (cuBLAS status {code})"))
        }
        Library::Cuda => Error::Cuda {
            call: call.to_string(),
            msg: format!("{msg} (CUDA error {code})"),
        },
        Library::Cublas => Error::Cuda {
            call: call.to_string(),
            msg: format!("{msg} (cuBLAS status {code})"),
        },
    }
}

/// `Ok(())` for a success status, the classified error otherwise.
pub fn check(st: &ffi::anc_status) -> crate::Result<()> {
    if st.code == 0 {
        return Ok(());
    }
    let lib = if st.kind == ffi::ANC_CUBLAS as i32 {
        Library::Cublas
    } else {
        Library::Cuda
    };
    Err(classify(lib, st.code, &c_text(&st.call), &c_text(&st.msg)))
}

/// The text of a NUL-terminated fixed-size C char array (lossy, never reads past the array).
pub fn c_text(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Bytes in human units for error messages.
pub fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

/// The out-of-memory message: what was asked for, for what, and what the device has.
pub fn out_of_memory(what: &str, requested_bytes: u64, free_total: Option<(u64, u64)>) -> Error {
    let have = match free_total {
        Some((free, total)) => format!(
            "the device has {} free of {}",
            human_bytes(free),
            human_bytes(total)
        ),
        None => "the free device memory could not be queried".to_string(),
    };
    Error::OutOfMemory(format!(
        "asked for {} ({requested_bytes} bytes) for {what}; {have}; use a smaller batch",
        human_bytes(requested_bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_text_stops_at_nul_and_at_the_array_end() {
        let mut buf = [0 as std::ffi::c_char; 8];
        for (d, s) in buf.iter_mut().zip(b"cudaMal\0") {
            *d = *s as std::ffi::c_char;
        }
        assert_eq!(c_text(&buf), "cudaMal");
        buf[7] = b'x' as std::ffi::c_char; // no NUL at all: still bounded by the array
        assert_eq!(c_text(&buf), "cudaMalx");
        assert_eq!(c_text(&[0; 4]), "");
    }

    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(human_bytes(0), "0.0 MiB");
    }
}
