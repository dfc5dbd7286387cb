//! alexnet-rs: the AlexNet of Krizhevsky, Sutskever & Hinton (2012).
//!
//! Data flows one way: `data` (prepare, loader, augmentation) → `Batch` → `model` on an
//! [`engine::Engine`] → gradients → `optim` (the paper's SGD) → `checkpoint`.

pub mod arch;
pub mod engine;
pub mod error;
pub mod rng;

pub use error::{Error, Result};
