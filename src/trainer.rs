//! One training run's state and its SGD step, in the one order every caller uses (`train`,
//! `bench`, data-parallel ranks): forward on the batch uploaded during the step before; fetch and
//! upload the next batch while the engine works through that forward; backward, each layer's
//! gradients starting their sum across data-parallel replicas as soon as they are final; the
//! paper's update (at the warmup's rate, with LARS's per-layer rates when asked: `large_batch`).

use std::path::PathBuf;

use crate::checkpoint::{Checkpoint, NamedTensor, TrainState};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::large_batch::Warmup;
use crate::metrics::topk_errors;
use crate::model::{HostTensors, Ready, Sgd};
use crate::parallel::Network;
use crate::rng::hash;

/// Averages each gradient over the data-parallel replicas between backward and the update (so
/// every replica takes the same step), and sums the step's statistics. Each replica's gradient is
/// the mean over its share of the global batch; the shares are equal, so their mean is the global
/// batch's gradient, the paper's rule. One replica has nothing to do: [`Alone`].
pub trait GradientSync<E: Engine> {
    /// How many replicas share each step.
    fn replicas(&self) -> usize;
    /// Where the sums run (for reports).
    fn kind(&self) -> SyncKind;
    /// Called during backward with each row's parameters as soon as their gradients are final,
    /// last row first, so that their communication can start while the backward goes on.
    fn gradients_ready(&mut self, ready: &Ready<'_, E>) -> Result<()>;
    /// After backward: replaces every gradient of `model` with its mean over the replicas (also
    /// those not handed to [`GradientSync::gradients_ready`]).
    fn average_gradients(&mut self, engines: &[E], model: &mut Network<E>) -> Result<()>;
    /// Sums per-replica statistics (loss sums, error counts, image counts) in place.
    fn sum_stats(&mut self, stats: &mut [f64]) -> Result<()>;
}

/// Where a [`GradientSync`] sums the gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// Nowhere: one replica.
    Alone,
    /// In host memory, by the host (MPI): the time the step spends on it is host time.
    Host,
    /// In device memory, on a stream beside the compute (NCCL): the host only queues it, so its
    /// cost shows in the step time, not in [`Trainer::sync_seconds`].
    Device,
}

/// A run with one replica.
pub struct Alone;

impl<E: Engine> GradientSync<E> for Alone {
    fn replicas(&self) -> usize {
        1
    }
    fn kind(&self) -> SyncKind {
        SyncKind::Alone
    }
    fn gradients_ready(&mut self, _: &Ready<'_, E>) -> Result<()> {
        Ok(())
    }
    fn average_gradients(&mut self, _: &[E], _: &mut Network<E>) -> Result<()> {
        Ok(())
    }
    fn sum_stats(&mut self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// The learning-rate schedule: the paper's heuristic ("divide the learning rate by 10 when the
/// validation error rate stopped improving", at most three times), or fixed steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub base_lr: f32,
    /// Divide by 10 every this many epochs instead of the heuristic.
    pub step_epochs: Option<u64>,
    /// Epochs without a new best validation error before a drop.
    pub patience: u32,
    pub max_drops: u32,
}

/// What one step did, over the whole (global) batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepResult {
    /// Mean cross-entropy over the batch.
    pub loss: f32,
    /// Images whose label was not the top-1 / among the top-5.
    pub top1_errors: usize,
    pub top5_errors: usize,
    pub images: usize,
    /// The learning rate the update used: the schedule's, times the warmup's fraction.
    pub lr: f32,
}

/// The model on its engines, the run's state and the update rule.
pub struct Trainer<'e, E: Engine> {
    engines: &'e [E],
    pub model: Network<E>,
    pub state: TrainState,
    sgd: Sgd,
    warmup: Option<Warmup>,
    sync: Box<dyn GradientSync<E> + 'e>,
    /// The last checkpoint written, named when a step diverges.
    pub last_saved: Option<PathBuf>,
    /// Seconds the steps spent on averaging gradients across replicas: the communication not
    /// hidden behind compute.
    pub sync_seconds: SyncSeconds,
}

/// Host time spent on gradient sums, summed over steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SyncSeconds {
    /// During backward: copying gradients out and starting their sums.
    pub in_backward: f64,
    /// After it: waiting for the sums not yet arrived, copying them back.
    pub after_backward: f64,
}

impl SyncSeconds {
    pub fn total(&self) -> f64 {
        self.in_backward + self.after_backward
    }

    /// The time spent since `before` was read.
    pub fn since(&self, before: SyncSeconds) -> SyncSeconds {
        SyncSeconds {
            in_backward: self.in_backward - before.in_backward,
            after_backward: self.after_backward - before.after_backward,
        }
    }
}

impl<'e, E: Engine> Trainer<'e, E> {
    pub fn new(
        engines: &'e [E],
        model: Network<E>,
        state: TrainState,
        sgd: Sgd,
        sync: Box<dyn GradientSync<E> + 'e>,
    ) -> Self {
        Trainer {
            engines,
            model,
            state,
            sgd,
            warmup: None,
            sync,
            last_saved: None,
            sync_seconds: SyncSeconds::default(),
        }
    }

    /// Ramps each step's learning rate up as `warmup` says (Goyal et al.'s gradual warmup).
    pub fn with_warmup(mut self, warmup: Option<Warmup>) -> Self {
        self.warmup = warmup;
        self
    }

    /// The learning rate of the next step: the schedule's, times the warmup's fraction.
    pub fn step_lr(&self) -> f32 {
        let fraction = self.warmup.map_or(1.0, |w| w.factor(self.state.step));
        (self.state.lr as f64 * fraction) as f32
    }

    /// Where this trainer's gradient sums run.
    pub fn sync_kind(&self) -> SyncKind {
        self.sync.kind()
    }

    /// Seconds one average of the current gradients over the replicas takes with nothing else
    /// running, from idle engines to idle engines: the all-reduce as it would cost were none of
    /// it hidden behind the backward (bench). A collective; leaves the gradients averaged.
    pub fn time_gradient_average(&mut self) -> Result<f64> {
        for e in self.engines {
            e.synchronize()?;
        }
        let t0 = std::time::Instant::now();
        self.sync.average_gradients(self.engines, &mut self.model)?;
        for e in self.engines {
            e.synchronize()?;
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Uploads the first batch of a sequence of steps; each step uploads the one after its own.
    pub fn start(&mut self, images: &[f32]) -> Result<()> {
        self.model.prefetch_input(self.engines, images)
    }

    /// One SGD step on the batch uploaded before (by [`Trainer::start`] or the previous step),
    /// with that batch's `labels`. `fetch_next` is called once the forward is under way; the
    /// images it returns are uploaded for the next step (None: there is no next batch).
    pub fn step<'b>(
        &mut self,
        labels: &[u32],
        fetch_next: impl FnOnce() -> Option<&'b [f32]>,
    ) -> Result<StepResult> {
        let engines = self.engines;
        let seed = hash(self.state.dropout_seed_base, self.state.step);
        self.model.forward_prefetched(engines, Some(seed))?;
        if let Some(next) = fetch_next() {
            self.model.prefetch_input(engines, next)?;
        }
        let sync = &mut self.sync;
        let mut in_backward = 0.0;
        let loss = self
            .model
            .backward_with(engines, labels, Some(seed), &mut |ready| {
                let t0 = std::time::Instant::now();
                let started = sync.gradients_ready(ready);
                in_backward += t0.elapsed().as_secs_f64();
                started
            })?;
        let t0 = std::time::Instant::now();
        // Before anything else can fail: every replica finishes the sums it started.
        self.sync.average_gradients(engines, &mut self.model)?;
        self.sync_seconds.in_backward += in_backward;
        self.sync_seconds.after_backward += t0.elapsed().as_secs_f64();
        let probs = self.model.train_probabilities(engines)?;
        let classes = self.model.cfg().classes;
        let mut stats = [
            loss as f64 * labels.len() as f64,
            topk_errors(&probs, classes, labels, 1) as f64,
            topk_errors(&probs, classes, labels, 5.min(classes)) as f64,
            labels.len() as f64,
        ];
        self.sync.sum_stats(&mut stats)?;
        let result = StepResult {
            loss: (stats[0] / stats[3]) as f32,
            top1_errors: stats[1] as usize,
            top5_errors: stats[2] as usize,
            images: stats[3] as usize,
            lr: self.step_lr(),
        };
        // Checked on the global loss, so every replica stops at the same step.
        if !result.loss.is_finite() {
            return Err(self.divergence(result.loss));
        }
        self.model.sgd_step(engines, result.lr, &self.sgd)?;
        self.state.step += 1;
        self.state.batch_in_epoch += 1;
        Ok(result)
    }

    /// An epoch is over with validation top-1 error `val_top1`: the next epoch begins and the
    /// schedule decides its learning rate. Returns whether the error is the best so far, and the
    /// rate the epoch ran at.
    pub fn end_epoch(&mut self, val_top1: f32, schedule: &Schedule) -> (bool, f32) {
        let state = &mut self.state;
        state.epoch += 1;
        state.batch_in_epoch = 0;
        let improved = state.best_val_top1.is_none_or(|b| val_top1 < b);
        if improved {
            state.best_val_top1 = Some(val_top1);
            state.epochs_since_best = 0;
        } else {
            state.epochs_since_best += 1;
        }
        let lr_before = state.lr;
        match schedule.step_epochs {
            Some(every) => {
                let drops = (state.epoch / every.max(1)) as i32;
                state.lr = schedule.base_lr * 0.1f32.powi(drops);
            }
            None => {
                if state.epochs_since_best >= schedule.patience
                    && state.lr_drops < schedule.max_drops
                {
                    state.lr /= 10.0;
                    state.lr_drops += 1;
                    state.epochs_since_best = 0;
                }
            }
        }
        (improved, lr_before)
    }

    /// The error for a non-finite loss: the step, the first layer holding a non-finite value,
    /// and the last good checkpoint.
    fn divergence(&self, loss: f32) -> Error {
        let culprit = match self.model.find_non_finite(self.engines) {
            Ok(Some(layer)) => layer,
            Ok(None) => "the loss itself (logits overflowed)".into(),
            Err(e) => return e,
        };
        let last = match &self.last_saved {
            Some(p) => format!("; the last good checkpoint is {}", p.display()),
            None => "; no checkpoint was written yet".into(),
        };
        Error::NonFinite(format!(
            "loss became {loss} at step {} (epoch {}): first non-finite value in {culprit}{last}. \
             Try a lower --lr (now {}) or --init caffe",
            self.state.step,
            self.state.epoch + 1,
            crate::train::fmt_lr(self.state.lr)
        ))
    }

    /// A self-contained checkpoint of the run as it stands: the weights and momentum, the state,
    /// and what inference needs from `data`.
    pub fn checkpoint(&self, data: &crate::train::TrainData) -> Result<Checkpoint> {
        let named = |v: HostTensors| {
            v.into_iter()
                .map(|(name, shape, data)| NamedTensor { name, shape, data })
                .collect::<Vec<_>>()
        };
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("data".to_string(), data.source.clone());
        Ok(Checkpoint {
            arch: self.model.cfg().clone(),
            class_names: data.class_names.clone(),
            mean: Some(data.stats.mean.clone()),
            mean_side: data.stats.side,
            eigval: Some(data.stats.eigval),
            eigvec: Some(data.stats.eigvec),
            params: named(self.model.read_params(self.engines)?),
            momentum: named(self.model.read_momentum(self.engines)?),
            train_state: Some(self.state.clone()),
            extra_metadata: extra,
        })
    }

    /// Whether `flag` is raised on any replica (so that all act on it at the same step).
    pub fn agree(&mut self, flag: bool) -> Result<bool> {
        let mut raised = [flag as u8 as f64];
        self.sync.sum_stats(&mut raised)?;
        Ok(raised[0] > 0.0)
    }

    /// Sums `stats` over the replicas in place (validation counts).
    pub fn sum_over_replicas(&mut self, stats: &mut [f64]) -> Result<()> {
        self.sync.sum_stats(stats)
    }

    /// The engines the model runs on.
    pub fn engines(&self) -> &'e [E] {
        self.engines
    }

    /// How many replicas share each step.
    pub fn replicas(&self) -> usize {
        self.sync.replicas()
    }
}
