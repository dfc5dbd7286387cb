//! One error type for the library. Every variant says what failed and, where it can, what to do.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op was handed buffers or parameters whose sizes disagree with its shape.
    #[error("shape error in {op}: {msg}")]
    Shape { op: String, msg: String },

    /// A CUDA runtime/cuBLAS call or kernel launch failed.
    #[error("CUDA error in {call}: {msg}")]
    Cuda { call: String, msg: String },

    /// No usable CUDA device (no driver, no GPU, or built without the `cuda` feature).
    #[error("no CUDA device: {0}")]
    NoDevice(String),

    /// Device memory exhausted; carries what was asked for and what is available.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Input data (an image, a dataset, a label file) is malformed.
    #[error("bad data in {}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },

    /// A checkpoint is corrupt, truncated or does not match the model.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// Training produced a NaN or infinity.
    #[error("non-finite value: {0}")]
    NonFinite(String),

    /// The user asked for something invalid (flags, configuration).
    #[error("{0}")]
    Config(String),

    /// Data-parallel communication failed: the launch, MPI/NCCL, or ranks that disagree.
    #[error("distributed: {0}")]
    Dist(String),
}

impl Error {
    pub fn shape(op: &str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op: op.to_string(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
