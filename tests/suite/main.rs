//! The integration tests that need no optional feature and no GPU, as one test binary: the
//! engine-generic library is instantiated, optimised and linked once instead of once per file
//! (most of CI's build time). Each file is a module; `cargo test --test suite train::` runs one.
//! Kept as binaries of their own: the GPU tests (`cuda_ops`, `cuda_model`, which
//! scripts/gpu-check.sh runs on a card) and the MPI ones (`dist`, `data_parallel`).

#[path = "../common/mod.rs"]
mod common;

mod checkpoint;
mod cli;
mod codes;
mod columns;
mod cpu_ops;
mod cuda_mirror;
mod data_augment;
mod data_prepare;
mod data_sources;
mod eval;
mod experiment;
mod figures;
mod gradient_sync;
mod import;
mod large_batch;
mod metrics;
mod model_vs_reference;
mod nets;
mod prepare_kill;
mod train;
