//! `alexnet-cli bench --inference`: the test-mode forward (no dropout masks, no gradients) that
//! `eval`, `predict` and `features` run, timed per batch on random weights and images.

use std::time::Instant;

use crate::arch::ArchConfig;
use crate::engine::Engine;
use crate::error::Result;
use crate::model::Model;
use crate::rng::Rng;

/// The timing of test-mode forwards at one batch size.
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceTiming {
    pub batch: usize,
    /// Median seconds of one batch: upload, forward, softmax, probabilities back to the host.
    pub median_s: f64,
    /// Model FLOPs of one image's forward (2 per multiply-add).
    pub flops_per_image: f64,
}

impl InferenceTiming {
    pub fn images_per_second(&self) -> f64 {
        self.batch as f64 / self.median_s
    }

    pub fn gflops(&self) -> f64 {
        self.flops_per_image * self.batch as f64 / self.median_s / 1e9
    }
}

/// Times `steps` test-mode batches of `batch` images (after one untimed warm-up batch) of the
/// net `cfg` with random weights, as `predict` runs them: images uploaded, forward, softmax,
/// probabilities downloaded.
pub fn inference<E: Engine>(
    e: &E,
    cfg: &ArchConfig,
    batch: usize,
    steps: usize,
) -> Result<InferenceTiming> {
    let mut model = Model::for_inference(e, cfg.clone(), batch)?;
    let mut rng = Rng::new(11);
    let shapes: Vec<_> = model
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    for (name, shape) in shapes {
        let values: Vec<f32> = (0..shape.iter().product())
            .map(|_| (rng.normal() * 0.01) as f32)
            .collect();
        model.write_param(e, &name, &shape, &values, false)?;
    }
    let side = cfg.input_size;
    let images: Vec<f32> = (0..batch * 3 * side * side)
        .map(|_| rng.normal() as f32 * 50.0)
        .collect();
    let mut times = Vec::with_capacity(steps);
    for step in 0..=steps {
        let t0 = Instant::now();
        model.forward(e, &images, None)?;
        model.probabilities(e)?;
        if step > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let macs: u64 = cfg.plan()?.iter().map(|p| p.macs).sum();
    Ok(InferenceTiming {
        batch,
        median_s: times[times.len() / 2],
        flops_per_image: 2.0 * macs as f64,
    })
}
