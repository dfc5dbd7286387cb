//! What a training run tells its user: the progress bar, the line after each epoch, the metrics
//! log, and the hint when the loss stays flat. The trainer computes; this only reports.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::TrainState;
use crate::error::Result;
use crate::eval::EvalResult;
use crate::metrics::{EpochRecord, MetricsLog, StepRecord};
use crate::train::fmt_lr;
use crate::trainer::StepResult;

/// Reports one run.
pub struct Reporter {
    /// None on data-parallel ranks other than 0, which report nothing.
    log: Option<MetricsLog>,
    quiet: bool,
    classes: usize,
    /// For the flat-loss hint: the run uses the paper's initialisation.
    paper_init: bool,
    flat: FlatLossDetector,
    flat_warned: bool,
    /// This process's losses, for the flat-loss check.
    losses: Vec<f32>,
    bar: ProgressBar,
    epoch: EpochTotals,
}

/// Sums over the steps of the epoch in progress.
struct EpochTotals {
    start: Instant,
    loss: f64,
    top1: usize,
    top5: usize,
    images: usize,
    /// How many epochs the bar shows (as many as the step budget takes, with --steps).
    of: u64,
}

impl Reporter {
    /// `quiet` hides the bar (the epoch lines stay); records go to `log`. Without a log (a
    /// data-parallel rank other than 0) nothing is shown or written.
    pub fn new(log: Option<MetricsLog>, quiet: bool, classes: usize, paper_init: bool) -> Self {
        Reporter {
            quiet: quiet || log.is_none(),
            log,
            classes,
            paper_init,
            flat: FlatLossDetector::new(classes),
            flat_warned: false,
            losses: Vec::new(),
            bar: ProgressBar::hidden(),
            epoch: EpochTotals {
                start: Instant::now(),
                loss: 0.0,
                top1: 0,
                top5: 0,
                images: 0,
                of: 0,
            },
        }
    }

    /// A new epoch of `batches` steps, `done` of them already taken (on resume).
    pub fn start_epoch(&mut self, state: &TrainState, batches: u64, done: u64, of: u64) {
        self.bar = progress_bar(self.quiet, batches, state.epoch + 1, of);
        self.bar.set_position(done);
        self.epoch = EpochTotals {
            start: Instant::now(),
            loss: 0.0,
            top1: 0,
            top5: 0,
            images: 0,
            of,
        };
    }

    /// A step taken: `state` as it stands after it, `took` its wall time including the wait
    /// for its batch, `waited` the data wait within it.
    pub fn step(
        &mut self,
        state: &TrainState,
        r: &StepResult,
        took: Duration,
        waited: Duration,
    ) -> Result<()> {
        let images_per_s = r.images as f64 / took.as_secs_f64().max(1e-9);
        let (top1, top5) = (
            r.top1_errors as f32 / r.images as f32,
            r.top5_errors as f32 / r.images as f32,
        );
        self.epoch.loss += r.loss as f64 * r.images as f64;
        self.epoch.top1 += r.top1_errors;
        self.epoch.top5 += r.top5_errors;
        self.epoch.images += r.images;
        self.losses.push(r.loss);
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        log.step(&StepRecord {
            epoch: state.epoch + 1,
            step: state.step,
            lr: r.lr,
            loss: r.loss,
            top1_err: top1,
            top5_err: top5,
            images_per_s: images_per_s as f32,
            data_wait_s: waited.as_secs_f32(),
        })?;
        self.bar.set_message(format!(
            "loss {:.4}  top-1 err {:.1}%  top-5 err {:.1}%  {images_per_s:.1} img/s  data-wait {:.0} ms",
            r.loss,
            100.0 * top1,
            100.0 * top5,
            waited.as_secs_f64() * 1e3
        ));
        self.bar.inc(1);
        if !self.flat_warned && self.flat.is_flat(&self.losses) {
            self.flat_warned = true;
            let hint = self.flat.hint(self.paper_init);
            self.bar.suspend(|| eprintln!("{hint}"));
        }
        Ok(())
    }

    /// The epoch's steps are over (or were cut short by the budget).
    pub fn finish_steps(&self) {
        self.bar.finish();
    }

    /// Ctrl-C: the bar ends with what was saved.
    pub fn interrupted(&self, saved: Option<&Path>) {
        self.bar.abandon_with_message(match saved {
            Some(p) => format!("interrupted: saved {}", p.display()),
            None => "interrupted".into(),
        });
    }

    /// An epoch completed: `state` after its schedule update, `lr_before` the rate it ran at,
    /// `val` its validation. Prints the epoch line and logs the record.
    pub fn end_epoch(
        &mut self,
        state: &TrainState,
        lr_before: f32,
        val: &EvalResult,
    ) -> Result<()> {
        if self.log.is_none() {
            return Ok(());
        }
        let n = self.epoch.images.max(1) as f64;
        let record = EpochRecord {
            epoch: state.epoch,
            step: state.step,
            lr: lr_before,
            train_loss: (self.epoch.loss / n) as f32,
            train_top1: (self.epoch.top1 as f64 / n) as f32,
            train_top5: (self.epoch.top5 as f64 / n) as f32,
            val_top1: val.top1,
            val_top5: val.top5,
            val_top1_10crop: None,
            val_top5_10crop: None,
            seconds: self.epoch.start.elapsed().as_secs_f64(),
        };
        println!(
            "epoch {}/{}: train loss {:.4}, train top-1 err {:.2}%, val top-1 err {:.2}% top-5 err {:.2}% (chance {:.1}%){}",
            state.epoch,
            self.epoch.of,
            record.train_loss,
            100.0 * record.train_top1,
            100.0 * val.top1,
            100.0 * val.top5,
            100.0 * (1.0 - 1.0 / self.classes as f32),
            if state.lr < lr_before {
                format!("; learning rate {} -> {}", fmt_lr(lr_before), fmt_lr(state.lr))
            } else {
                String::new()
            }
        );
        match self.log.as_mut() {
            Some(log) => log.epoch(&record),
            None => Ok(()),
        }
    }
}

fn progress_bar(quiet: bool, len: u64, epoch: u64, epochs: u64) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

/// Spots the known failure of the paper's initialisation: the loss sitting at ln(classes).
struct FlatLossDetector {
    chance_loss: f32,
}

impl FlatLossDetector {
    /// Steps after which a loss still at chance level counts as flat.
    const WINDOW: usize = 200;

    fn new(classes: usize) -> Self {
        FlatLossDetector {
            chance_loss: (classes as f32).ln(),
        }
    }

    /// True once the last WINDOW losses all lie within 2% of ln(classes).
    fn is_flat(&self, losses: &[f32]) -> bool {
        losses.len() >= Self::WINDOW
            && losses[losses.len() - Self::WINDOW..]
                .iter()
                .all(|l| (l - self.chance_loss).abs() < 0.02 * self.chance_loss)
    }

    fn hint(&self, paper_init: bool) -> String {
        format!(
            "warning: the loss has stayed at ln(classes) = {:.3} for {} steps: the net is not learning. {}",
            self.chance_loss,
            Self::WINDOW,
            if paper_init {
                "The paper's initialisation (std 0.01, biases 1) is known to stall like this; try --init kaiming --lr 0.001 (measured to learn where it stalls: 8 classes of 16 photos at input 99, validation error 63-69% after 9-14 epochs against the paper init's 87.5% = chance; see README), or --init caffe (measured to learn on the built-in dataset without dropout)."
            } else {
                "Try a lower --lr, or check the labels of the data."
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_loss_is_detected_only_when_flat() {
        let d = FlatLossDetector::new(1000);
        let flat = vec![(1000f32).ln(); 250];
        assert!(d.is_flat(&flat));
        let mut learning = flat.clone();
        learning[240] = 5.0;
        assert!(!d.is_flat(&learning));
        assert!(!d.is_flat(&flat[..100]));
    }
}
