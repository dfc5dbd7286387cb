//! The paper's experiments as commands: Figure 1 (ReLU vs tanh on CIFAR-10) and Section 3.3's
//! CIFAR-10 LRN claim ([`fig1`]), and the ablations of Sections 3.3-4.2 ([`ablate`]). Each
//! trains several nets that differ only in a table row or a setting, with one short training
//! loop ([`fit`]) that records what the experiment measures: training error per epoch, the
//! seconds it took, and the held-out error at the end.

pub mod ablate;
pub mod fig1;
mod plot;

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::arch::ArchConfig;
use crate::checkpoint::TrainState;
use crate::data::{Augment, Dataset, Loader, LoaderConfig, Share, Stats};
use crate::dist::Comm;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions};
use crate::model::{Init, Sgd};
use crate::parallel::Network;
use crate::trainer::Trainer;

/// One training run of an experiment: the net, its initialisation and the SGD settings, with a
/// budget of epochs and steps.
#[derive(Clone, Debug)]
pub struct FitSpec {
    /// Shown on the progress bar ("relu, lr 0.01").
    pub label: String,
    pub arch: ArchConfig,
    pub init: Init,
    pub lr: f32,
    pub sgd: Sgd,
    pub batch: usize,
    pub augment: Augment,
    pub seed: u64,
    /// At most this many passes over the training set.
    pub max_epochs: u64,
    /// At most this many SGD steps in all (None: the epochs alone bound the run).
    pub max_steps: Option<u64>,
    /// Stop after the first epoch whose training error is at or below this (Figure 1's 25%).
    pub stop_at_train_error: Option<f32>,
}

/// One epoch of a run (the last one may be cut short by the step budget).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct EpochPoint {
    /// 1-based.
    pub epoch: u64,
    /// Top-1 error over the epoch's training batches, as the net stood at each step (the
    /// running training error that cuda-convnet reports and Figure 1 plots).
    pub train_error: f32,
    pub train_loss: f32,
    /// Seconds of training (SGD steps, not evaluation) from the run's start to this epoch's end.
    pub seconds: f64,
    pub steps: u64,
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FitResult {
    pub epochs: Vec<EpochPoint>,
    /// The loss of every step, for choosing a learning rate.
    #[serde(skip)]
    pub step_losses: Vec<f32>,
    /// Top-1 and top-5 error on the held-out set after training, when one was given.
    pub held_out: Option<(f32, f32)>,
}

impl FitResult {
    /// The first epoch whose training error is at or below `target`.
    pub fn first_at_or_below(&self, target: f32) -> Option<EpochPoint> {
        self.epochs
            .iter()
            .find(|p| p.train_error <= target)
            .copied()
    }

    /// Mean loss over the last half of the steps (how far a short run got), or infinity when a
    /// step's loss was not finite.
    pub fn late_loss(&self) -> f32 {
        let tail = &self.step_losses[self.step_losses.len() / 2..];
        if tail.is_empty() || tail.iter().any(|l| !l.is_finite()) {
            return f32::INFINITY;
        }
        tail.iter().sum::<f32>() / tail.len() as f32
    }
}

/// The data an experiment trains and tests on, with the training set's statistics (the mean
/// image the loader subtracts).
#[derive(Clone)]
pub struct ExperimentData {
    pub train: Arc<dyn Dataset>,
    pub test: Arc<dyn Dataset>,
    pub stats: Arc<Stats>,
}

/// Augmentation off: the centre crop (the whole image when the crop is the stored side) with
/// the mean subtracted, nothing random. "No regularisation of any kind" for Figure 1.
pub fn no_augmentation(crop: usize) -> Augment {
    Augment::eval(crop)
}

/// Trains `spec` on `data.train` from a fresh initialisation and, when `held_out` is set,
/// measures its top-1/top-5 error on `data.test` at the end. A progress bar shows the run.
pub fn fit<E: Engine>(
    engines: &[E],
    data: &ExperimentData,
    spec: &FitSpec,
    held_out: bool,
    quiet: bool,
) -> Result<FitResult> {
    let model = Network::new(
        engines,
        false,
        spec.arch.clone(),
        spec.init,
        spec.seed,
        spec.batch,
    )?;
    let state = TrainState::fresh(spec.seed, spec.lr);
    // One process; the engines' own sync if asked for (`--all-reduce nccl` over one rank).
    let single = Comm::Single;
    let sync = crate::data_parallel::gradient_sync(engines, &single)?;
    let mut trainer = Trainer::new(engines, model, state, spec.sgd, sync);
    let per_epoch = (data.train.len() / spec.batch) as u64;
    if per_epoch == 0 {
        return Err(Error::Config(format!(
            "{}: the training set has {} images, fewer than one batch of {}",
            spec.label,
            data.train.len(),
            spec.batch
        )));
    }
    let total = spec
        .max_steps
        .unwrap_or(u64::MAX)
        .min(per_epoch.saturating_mul(spec.max_epochs));
    let bar = progress_bar(quiet, total, &spec.label);
    let mut result = FitResult {
        epochs: Vec::new(),
        step_losses: Vec::new(),
        held_out: None,
    };
    let mut seconds = 0.0;
    while trainer.state.step < total {
        let point = fit_epoch(&mut trainer, data, spec, total, &bar, &mut result)?;
        seconds += point.seconds;
        let point = EpochPoint { seconds, ..point };
        result.epochs.push(point);
        bar.set_message(format!(
            "epoch {}: train err {:.1}%",
            point.epoch,
            100.0 * point.train_error
        ));
        if spec
            .stop_at_train_error
            .is_some_and(|t| point.train_error <= t)
        {
            break;
        }
    }
    bar.finish();
    if held_out {
        let eval = evaluate(
            engines,
            &mut trainer.model,
            data.test.as_ref(),
            &data.stats,
            &EvalOptions {
                batch: spec.batch,
                ten_crop: false,
                workers: 0,
            },
        )?;
        result.held_out = Some((eval.top1, eval.top5));
    }
    Ok(result)
}

/// One pass over the training set (or what is left of the step budget): the epoch's point
/// with its own seconds.
fn fit_epoch<E: Engine>(
    trainer: &mut Trainer<E>,
    data: &ExperimentData,
    spec: &FitSpec,
    total: u64,
    bar: &ProgressBar,
    result: &mut FitResult,
) -> Result<EpochPoint> {
    let epoch = trainer.state.epoch;
    let mut loader = Loader::new(
        data.train.clone(),
        data.stats.clone(),
        LoaderConfig {
            batch: spec.batch,
            workers: 1,
            prefetch: 2,
            seed: trainer.state.data_seed,
            augment: spec.augment.clone(),
            shuffle: true,
            drop_last: true,
            share: Share::WHOLE,
        },
        epoch,
        0,
    )?;
    let (mut loss, mut errors, mut images) = (0.0f64, 0usize, 0usize);
    let mut took = Duration::ZERO;
    let mut pending = loader.next();
    if let Some(Ok((first, _))) = &pending {
        trainer.start(&first.images)?;
    }
    while let Some(next) = pending.take() {
        let (batch, _) = next?;
        let t0 = Instant::now();
        let step = trainer.step(&batch.labels, || {
            pending = loader.next();
            match &pending {
                Some(Ok((next, _))) => Some(next.images.as_slice()),
                _ => None,
            }
        })?;
        took += t0.elapsed();
        loss += step.loss as f64 * step.images as f64;
        errors += step.top1_errors;
        images += step.images;
        result.step_losses.push(step.loss);
        bar.inc(1);
        if trainer.state.step >= total {
            break;
        }
    }
    trainer.state.epoch += 1;
    trainer.state.batch_in_epoch = 0;
    let n = images.max(1) as f64;
    Ok(EpochPoint {
        epoch: epoch + 1,
        train_error: (errors as f64 / n) as f32,
        train_loss: (loss / n) as f32,
        seconds: took.as_secs_f64(),
        steps: trainer.state.step,
    })
}

fn progress_bar(quiet: bool, steps: u64, label: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:<28} [{bar:30}] {pos}/{len} steps {elapsed_precise} eta {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Config(format!("serialising {}: {e}", path.display())))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Creates the output directory `dir` (and its parents).
pub fn create_out_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}
