//! A finite-difference gradient checker in the spirit of Caffe's `GradientChecker`.
//!
//! For every coordinate i of the input (unless the layer's check says to skip it), the numeric
//! derivative of a scalar loss is taken by central differences,
//! `(f(x + h e_i) - f(x - h e_i)) / 2h`, and compared with the analytic one through a relative
//! error with a floor: `|a - n| <= threshold * max(|a|, |n|, floor)`.
//!
//! The loss on top of a layer is usually [`projection_loss`], `sum(y * r)` with a fixed random
//! `r`: its gradient with respect to y is exactly `r`, so the layer's backward called with
//! `dy = r` must return the gradient of this loss, and every output element is weighted
//! differently (an L2 loss would weight them by their own values).
//!
//! ## Why these defaults ([`GradCheck::default`])
//! The central difference errs by truncation, `h^2 |f'''| / 6`, and by rounding, about
//! `eps |f| / h` with `eps = 1.1e-16` for f64. The losses here are sums of tens to hundreds of
//! O(1) terms (`|f|` up to ~10, `|f'''|` ~ 1), so the two balance near
//! `h = (3 eps |f| / |f'''|)^(1/3)` ~ 1e-5, where each is ~1e-10. `step = 1e-5` therefore leaves
//! about 1e-10..1e-9 of absolute noise. `threshold = 1e-6` with `floor = 1e-2` accepts up to
//! 1e-8 of absolute error on small gradients and 1e-6 relative on large ones: over ten times the
//! noise (the worst error measured across `tests/gradcheck.rs` is 3.4e-8), and still orders of
//! magnitude below what a wrong formula produces (the test that drops the LRN cross term at the
//! paper's alpha = 1e-4 fails by ~1e-2). Caffe checks f32 layers with `h = 1e-2` and thresholds
//! 1e-2..1e-3 because its eps is 1.2e-7.
//!
//! ## Kinks
//! Central differences are meaningless where the function is not differentiable inside
//! `[x - h, x + h]`: ReLU within `h` of 0 and max-pool coordinates within `h` of their window's
//! other maximum (a tie). The caller passes a `skip(i)` predicate; [`near_relu_kink`] and
//! [`near_maxpool_tie`] build the two that AlexNet needs. A check that would skip every
//! coordinate fails, so a predicate cannot make a check pass vacuously.

use crate::Pool;

/// Step and tolerance of a check. See the module documentation for the reasoning behind the
/// defaults.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Central-difference step h.
    pub step: f64,
    /// Largest accepted `|a - n| / max(|a|, |n|, floor)`.
    pub threshold: f64,
    /// Below this magnitude the error is measured absolutely (times threshold), not relatively.
    pub floor: f64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            step: 1e-5,
            threshold: 1e-6,
            floor: 1e-2,
        }
    }
}

/// The outcome of a check that passed (or the numbers inside the message of one that failed).
#[derive(Clone, Copy, Debug)]
pub struct CheckReport {
    /// Coordinates compared.
    pub checked: usize,
    /// Coordinates the skip predicate excluded.
    pub skipped: usize,
    /// The coordinate with the largest relative error.
    pub worst_index: usize,
    /// Its relative error `|a - n| / max(|a|, |n|, floor)`.
    pub worst_error: f64,
    /// Its analytic gradient.
    pub worst_analytic: f64,
    /// Its numeric gradient.
    pub worst_numeric: f64,
}

/// Compares `analytic` with central differences of `loss` around `x`, coordinate by coordinate,
/// skipping the coordinates where `skip(i)` is true. `Ok` when every compared coordinate is
/// within tolerance; `Err` naming the worst coordinate and the number of failures otherwise, or
/// when the lengths differ or nothing was compared.
pub fn check(
    mut loss: impl FnMut(&[f64]) -> f64,
    x: &[f64],
    analytic: &[f64],
    skip: impl Fn(usize) -> bool,
    cfg: &GradCheck,
) -> Result<CheckReport, String> {
    if analytic.len() != x.len() {
        return Err(format!(
            "the analytic gradient has {} elements, the input {}",
            analytic.len(),
            x.len()
        ));
    }
    let mut probe = x.to_vec();
    let mut report = CheckReport {
        checked: 0,
        skipped: 0,
        worst_index: 0,
        worst_error: 0.0,
        worst_analytic: 0.0,
        worst_numeric: 0.0,
    };
    let mut failures = 0;
    for i in 0..x.len() {
        if skip(i) {
            report.skipped += 1;
            continue;
        }
        probe[i] = x[i] + cfg.step;
        let up = loss(&probe);
        probe[i] = x[i] - cfg.step;
        let down = loss(&probe);
        probe[i] = x[i];
        let numeric = (up - down) / (2.0 * cfg.step);

        let a = analytic[i];
        let error = (a - numeric).abs() / a.abs().max(numeric.abs()).max(cfg.floor);
        // a NaN compares false, so it counts as a failure and, once worst, stays worst
        let within = error <= cfg.threshold;
        if !within {
            failures += 1;
        }
        if report.checked == 0 || error.is_nan() || error > report.worst_error {
            report.worst_index = i;
            report.worst_error = error;
            report.worst_analytic = a;
            report.worst_numeric = numeric;
        }
        report.checked += 1;
    }
    if report.checked == 0 {
        return Err(format!(
            "all {} coordinates were skipped: nothing was checked",
            x.len()
        ));
    }
    if failures > 0 {
        return Err(format!(
            "{failures} of {} coordinates exceed threshold {:e}; worst at {}: analytic {:e}, \
             numeric {:e}, relative error {:e}",
            report.checked,
            cfg.threshold,
            report.worst_index,
            report.worst_analytic,
            report.worst_numeric,
            report.worst_error
        ));
    }
    Ok(report)
}

/// `sum_i y[i] * r[i]`: a scalar loss whose gradient with respect to y is exactly `r`.
pub fn projection_loss(y: &[f64], r: &[f64]) -> f64 {
    assert_eq!(
        y.len(),
        r.len(),
        "projection_loss: y has {} elements, r {}",
        y.len(),
        r.len()
    );
    y.iter().zip(r).map(|(a, b)| a * b).sum()
}

/// Skip predicate for ReLU: coordinates with `|x[i]| <= kink_range` (use at least the step, so
/// `x +- h` never crosses 0 for a checked coordinate).
pub fn near_relu_kink(x: &[f64], kink_range: f64) -> impl Fn(usize) -> bool + '_ {
    move |i| x[i].abs() <= kink_range
}

/// Skip predicate for max pooling: coordinate i is skipped when, in some window containing it,
/// `|x[i] - max of the window's other values| <= range`. Perturbing any other coordinate by less
/// than `range` cannot change which element is a window's maximum, so the rest are safe to check.
pub fn near_maxpool_tie(s: &Pool, x: &[f64], range: f64) -> impl Fn(usize) -> bool {
    assert_eq!(
        x.len(),
        s.n * s.c * s.h * s.w,
        "near_maxpool_tie: x does not match {s:?}"
    );
    let idx = |n: usize, c: usize, y: usize, xx: usize| ((n * s.c + c) * s.h + y) * s.w + xx;
    let mut near = vec![false; x.len()];
    for n in 0..s.n {
        for c in 0..s.c {
            for oy in 0..s.h_out() {
                for ox in 0..s.w_out() {
                    let window: Vec<usize> = (0..s.size * s.size)
                        .map(|k| {
                            let y = oy * s.stride + k / s.size;
                            let xx = ox * s.stride + k % s.size;
                            idx(n, c, y, xx)
                        })
                        .collect();
                    for &i in &window {
                        let others = window
                            .iter()
                            .filter(|&&j| j != i)
                            .map(|&j| x[j])
                            .fold(f64::NEG_INFINITY, f64::max);
                        if (x[i] - others).abs() <= range {
                            near[i] = true;
                        }
                    }
                }
            }
        }
    }
    move |i| near[i]
}
