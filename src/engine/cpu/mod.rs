//! The fast CPU engine (f32): im2col + GEMM through `matrixmultiply`, rayon over images.
//! (Being written: see the foundation issue.)

/// The CPU engine.
pub struct CpuEngine;
