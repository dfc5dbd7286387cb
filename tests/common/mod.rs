//! Shared test code. Each test binary that says `mod common;` compiles this module anew and uses
//! only some of it, hence the allowance.
#![allow(dead_code)]

pub mod ops_suite;

/// Norm-wise relative difference ‖a − b‖ / ‖b‖ over a whole tensor, in f64.
pub fn rel_err<T: Copy + Into<f64>>(a: &[f32], b: &[T]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y.into()).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| y.into().powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}
