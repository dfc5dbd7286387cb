//! alexnet-rs: the AlexNet of Krizhevsky, Sutskever & Hinton (2012).
//!
//! Data flows one way: `data` (prepare, loader, augmentation) → `Batch` → `model` on an
//! [`engine::Engine`] → gradients → `optim` (the paper's SGD) → `checkpoint`.

pub mod arch;
pub mod checkpoint;
pub mod data;
pub mod engine;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod model;
pub mod netfile;
pub mod parallel;
pub mod plot;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
