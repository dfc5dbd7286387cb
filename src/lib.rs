//! alexnet-rs: the AlexNet of Krizhevsky, Sutskever & Hinton (2012).
//!
//! Data flows one way: `data` (prepare, loader, augmentation) → `Batch` → `model` on an
//! [`engine::Engine`] → gradients → [`model::Sgd`] (the paper's SGD rule) → `checkpoint`;
//! `train` runs that loop.

pub mod arch;
pub mod bench;
pub mod checkpoint;
pub mod codes;
pub mod data;
pub mod data_parallel;
pub mod dist;
pub mod engine;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod features;
pub mod figures;
pub mod import;
pub mod large_batch;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod netfile;
pub mod parallel;
pub mod plot;
pub mod report;
pub mod rng;
pub mod run;
pub mod settings;
pub mod train;
pub mod trainer;

pub use error::{Error, Result};
