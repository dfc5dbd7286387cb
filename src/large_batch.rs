//! Rules for large global batches, beyond the paper (whose batch is 128): gradual warmup of the
//! learning rate (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1
//! Hour", Section 2.2) and layer-wise adaptive rate scaling, LARS (You, Gitman & Ginsburg 2017,
//! "Large Batch Training of Convolutional Networks", Algorithm 1). Both leave the paper's update
//! (Section 5) as it is and change only the rate it is given, so every engine runs them through
//! its own `sgd_update`.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::{Param, Sgd};

/// The batch the paper's learning rate of 0.01 belongs to (Section 5): the `k = 1` of Goyal et
/// al.'s linear scaling rule ("when the minibatch size is multiplied by k, multiply the learning
/// rate by k").
pub const PAPER_BATCH: usize = 128;

/// Gradual warmup: the rate starts at the paper-batch rate `lr * 128 / B` (the linear scaling
/// rule read backwards: `--lr` is the rate for the global batch B) and rises by the same amount
/// every step until it reaches `lr` after `steps` steps; from then on the schedule's rate as is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Warmup {
    /// Steps the ramp lasts (the warmup epochs times the steps per epoch, rounded up).
    pub steps: u64,
    /// The first step's fraction of the rate: 128 / B.
    pub start: f64,
}

impl Warmup {
    /// The warmup of `epochs` epochs of `steps_per_epoch` steps at global batch `batch`; none for
    /// 0 epochs. A batch of 128 or less has no smaller batch to warm up from: refused.
    pub fn new(epochs: f32, steps_per_epoch: u64, batch: usize) -> Result<Option<Warmup>> {
        if epochs == 0.0 {
            return Ok(None);
        }
        if batch <= PAPER_BATCH {
            return Err(Error::Config(format!(
                "--warmup-epochs ramps the rate up from the paper's batch of {PAPER_BATCH} to the \
                 global batch; at --batch-size {batch} there is nothing to ramp. Use a batch above \
                 {PAPER_BATCH}, or leave --warmup-epochs out"
            )));
        }
        Ok(Some(Warmup {
            steps: (epochs as f64 * steps_per_epoch as f64).ceil() as u64,
            start: PAPER_BATCH as f64 / batch as f64,
        }))
    }

    /// The fraction of the schedule's rate that step `step` (counted from 0) takes.
    pub fn factor(&self, step: u64) -> f64 {
        if step >= self.steps {
            return 1.0;
        }
        self.start + (1.0 - self.start) * step as f64 / self.steps as f64
    }
}

/// LARS's trust ratio for one layer's weight: `eta * ||w|| / (||dw|| + weight_decay * ||w||)`,
/// from the sums of squares (f64, over every column's slice of the tensor). Where either norm
/// is zero (a weight initialised to zero, a layer with no gradient) the ratio is 1, as in
/// TensorFlow's `LARSOptimizer` and NVIDIA's LARC: the plain rate instead of a step of 0 or
/// infinity.
pub fn trust_ratio(w_sq: f64, dw_sq: f64, eta: f32, weight_decay: f32) -> f64 {
    let (w, dw) = (w_sq.sqrt(), dw_sq.sqrt());
    if w > 0.0 && dw > 0.0 {
        eta as f64 * w / (dw + weight_decay as f64 * w)
    } else {
        1.0
    }
}

/// The paper's update on every parameter with LARS's per-layer rates (Algorithm 1:
/// `v = m v + lr * ratio * (dw + wd w)`, `w -= v`, which is the paper's rule at the rate
/// `lr * ratio`). A layer is one weight tensor, whole: the pieces of `params` that share a name
/// (a column's slice of a split layer) share its ratio, so a split net takes the one-executor
/// net's step. Biases take the plain rule at `lr`, untouched by LARS, as TensorFlow's
/// `LARSOptimizer` (`exclude_from_layer_adaptation`) and the MLPerf references leave them: a
/// bias's norm says nothing about the scale of its layer's updates, and biases initialised to 0
/// would start with a ratio of 1 at LARS's large global rate either way.
///
/// The norms are each engine's [`Engine::sum_of_squares`], where the tensors live (on a GPU a
/// reduction kernel and 8 bytes copied back per tensor, not the weights and gradients).
pub fn lars_step<E: Engine>(
    params: Vec<(&E, &mut Param<E::Buf>)>,
    lr: f32,
    sgd: &Sgd,
    eta: f32,
) -> Result<()> {
    let mut sums: Vec<(String, f64, f64)> = Vec::new();
    for (e, p) in &params {
        if p.is_bias {
            continue;
        }
        let w_sq = e.sum_of_squares(&p.value)?;
        let dw_sq = e.sum_of_squares(&p.grad)?;
        match sums.iter_mut().find(|(name, ..)| *name == p.name) {
            Some(s) => {
                s.1 += w_sq;
                s.2 += dw_sq;
            }
            None => sums.push((p.name.clone(), w_sq, dw_sq)),
        }
    }
    for (e, p) in params {
        let (rate, decay) = match p.is_bias {
            true => (
                lr,
                if sgd.decay_biases {
                    sgd.weight_decay
                } else {
                    0.0
                },
            ),
            false => {
                let (_, w_sq, dw_sq) = sums
                    .iter()
                    .find(|(name, ..)| *name == p.name)
                    .expect("every weight was summed above");
                let ratio = trust_ratio(*w_sq, *dw_sq, eta, sgd.weight_decay);
                ((lr as f64 * ratio) as f32, sgd.weight_decay)
            }
        };
        e.sgd_update(
            &mut p.value,
            &p.grad,
            &mut p.momentum,
            rate,
            sgd.momentum,
            decay,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_ramps_from_the_paper_batch_rate_to_the_full_rate() {
        let w = Warmup::new(2.0, 5, 512).unwrap().unwrap();
        assert_eq!(w.steps, 10);
        assert_eq!(w.factor(0), 0.25);
        assert_eq!(w.factor(5), 0.625);
        assert_eq!(w.factor(10), 1.0);
        assert_eq!(w.factor(1000), 1.0);
        // Fractions of an epoch round up to whole steps.
        assert_eq!(Warmup::new(0.5, 5, 256).unwrap().unwrap().steps, 3);
        assert_eq!(Warmup::new(0.0, 5, 512).unwrap(), None);
        let refused = Warmup::new(1.0, 5, 128).unwrap_err().to_string();
        assert!(refused.contains("--batch-size 128"), "{refused}");
    }

    #[test]
    fn a_zero_norm_leaves_the_plain_rate() {
        assert_eq!(trust_ratio(0.0, 4.0, 0.001, 0.0005), 1.0);
        assert_eq!(trust_ratio(4.0, 0.0, 0.001, 0.0005), 1.0);
        // ||w|| = 2, ||dw|| = 3: 0.5 * 2 / (3 + 0.5 * 2), exact in binary.
        assert_eq!(trust_ratio(4.0, 9.0, 0.5, 0.5), 0.25);
    }
}
