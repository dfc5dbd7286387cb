//! Figure 1 and Section 3.3's CIFAR-10 claim. Figure 1: "A four-layer convolutional neural
//! network with ReLUs (solid line) reaches a 25% training error rate on CIFAR-10 six times
//! faster than an equivalent network with tanh neurons (dashed line). The learning rates for
//! each network were chosen independently to make training as fast as possible. No
//! regularization of any kind was employed." Section 3.3: "a four-layer CNN achieved a 13% test
//! error rate without normalization and 11% with normalization".
//!
//! The four-layer net is the built-in `cifar10` table (cuda-convnet's layers-18pct); its
//! variants are that table with its activation rows' kind replaced (tanh) or LRN rows added
//! after the first two activations (where layers-18pct has its response normalisation).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::arch::{ArchConfig, Kind, Layer, Net, Table};
use crate::data::{compute_stats, Cifar10, Dataset, InMemory};
use crate::engine::{Engine, LrnParams};
use crate::error::{Error, Result};
use crate::model::{Init, Sgd};
use crate::settings;

use super::{fit, EpochPoint, ExperimentData, FitResult, FitSpec};

/// The CIFAR-10 input side.
const SIDE: usize = 32;

/// Flags every CIFAR-10 experiment shares.
#[derive(clap::Args, Debug, Clone)]
pub struct CifarArgs {
    /// A CIFAR-10 binary directory (data_batch_*.bin for training, test_batch*.bin for testing).
    #[arg(long)]
    pub data: PathBuf,
    /// Where the PNG and JSON go (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Train on the first N training images only (default: all of them, 50,000).
    #[arg(long, value_parser = settings::count(1))]
    pub train_images: Option<usize>,
    /// Images per SGD step (cuda-convnet's CIFAR-10 nets: 128).
    #[arg(long, default_value_t = 128, value_parser = settings::count_in(1, settings::MAX_BATCH))]
    pub batch_size: usize,
    /// Momentum, as in the paper's rule (0.9).
    #[arg(long, default_value_t = 0.9, value_parser = settings::below_one)]
    pub momentum: f32,
    /// Learning rates tried for each net; the one whose loss falls furthest in --sweep-steps
    /// steps trains the net.
    #[arg(long, value_delimiter = ',', default_values_t = [0.001, 0.003, 0.01, 0.03], value_parser = settings::positive)]
    pub lrs: Vec<f32>,
    /// SGD steps of each learning-rate trial.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub sweep_steps: u64,
    /// Seed for initialisation and data order (the same for every net).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `alexnet-cli experiment fig1`.
#[derive(clap::Args, Debug, Clone)]
pub struct Fig1Args {
    #[command(flatten)]
    pub cifar: CifarArgs,
    /// Stop a net after this many epochs if it has not reached the target by then.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_epochs: u64,
    /// The training error the nets race to (the figure's dashed line: 25%), in (0, 1).
    #[arg(long, default_value_t = 0.25, value_parser = settings::below_one)]
    pub target: f32,
}

/// `alexnet-cli experiment cifar-lrn`.
#[derive(clap::Args, Debug, Clone)]
pub struct CifarLrnArgs {
    #[command(flatten)]
    pub cifar: CifarArgs,
    /// Epochs each net trains (the same for both).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: u64,
}

/// The `cifar10` table with every ReLU row computing `activation` instead, and with LRN rows
/// (`lrn`) after the first two activation rows when given.
pub fn cifar_net(name: &str, activation: Kind, lrn: Option<LrnParams>) -> Net {
    let base = ArchConfig::for_net(Net::Cifar10, Some(10), Some(SIDE)).layers();
    let mut layers = Vec::new();
    let mut activations = 0;
    for row in base {
        let is_activation = row.kind == Kind::Relu;
        let columns = row.columns;
        layers.push(Layer {
            kind: if is_activation { activation } else { row.kind },
            ..row
        });
        if is_activation {
            activations += 1;
            if let (Some(params), true) = (lrn, activations <= 2) {
                layers.push(Layer {
                    name: format!("lrn{activations}"),
                    kind: Kind::Lrn {
                        params,
                        across_columns: false,
                    },
                    columns,
                    reads_all_columns: true,
                });
            }
        }
    }
    Net::Table(Table {
        name: name.to_string(),
        input_size: Some(SIDE),
        layers,
    })
}

/// The CIFAR-10 training images (the first `train_images`, in memory), the test set and the
/// training images' mean.
pub fn open_cifar(dir: &Path, train_images: Option<usize>) -> Result<ExperimentData> {
    let all = Cifar10::open(dir, true)?;
    let n = train_images.unwrap_or(all.len());
    if n > all.len() {
        return Err(Error::Config(format!(
            "--train-images {n}, but {} holds {} training images",
            dir.display(),
            all.len()
        )));
    }
    let per = 3 * SIDE * SIDE;
    let mut pixels = vec![0u8; n * per];
    let mut labels = Vec::with_capacity(n);
    for (i, image) in pixels.chunks_exact_mut(per).enumerate() {
        labels.push(all.read(i, image)?);
    }
    let train = InMemory {
        side: SIDE,
        names: all.class_names(),
        pixels,
        labels,
    };
    let stats = compute_stats(&train, None)?;
    Ok(ExperimentData {
        train: Arc::new(train),
        test: Arc::new(Cifar10::open(dir, false)?),
        stats: Arc::new(stats),
    })
}

/// A run of `net` with the experiment's settings: no weight decay, no dropout rows, no
/// augmentation (Figure 1: "no regularization of any kind").
fn spec(args: &CifarArgs, label: &str, net: &Net, lr: f32) -> FitSpec {
    FitSpec {
        label: label.to_string(),
        arch: ArchConfig::for_net(net.clone(), Some(10), Some(SIDE)),
        init: Init::Paper,
        lr,
        sgd: Sgd {
            momentum: args.momentum,
            weight_decay: 0.0,
            decay_biases: false,
            lars_eta: None,
        },
        batch: args.batch_size,
        augment: super::no_augmentation(SIDE),
        seed: args.seed,
        max_epochs: u64::MAX,
        max_steps: None,
        stop_at_train_error: None,
    }
}

/// One learning-rate trial: the mean loss over the last half of its steps (infinite when it
/// diverged).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Trial {
    pub lr: f32,
    pub late_loss: Option<f32>,
}

/// Tries every rate of `args.lrs` for `args.sweep_steps` steps on `base` and returns the one
/// whose loss fell furthest, with every trial.
pub fn sweep<E: Engine>(
    engines: &[E],
    data: &ExperimentData,
    args: &CifarArgs,
    base: &FitSpec,
) -> Result<(f32, Vec<Trial>)> {
    let mut trials = Vec::new();
    for &lr in &args.lrs {
        let trial = FitSpec {
            label: format!("{} lr {lr}", base.label),
            lr,
            max_steps: Some(args.sweep_steps),
            ..base.clone()
        };
        let late = match fit(engines, data, &trial, false, args.quiet) {
            Ok(r) => Some(r.late_loss()).filter(|l| l.is_finite()),
            // A rate that blows the loss up is a finding of the sweep, not a failure.
            Err(Error::NonFinite(_)) => None,
            Err(e) => return Err(e),
        };
        trials.push(Trial {
            lr,
            late_loss: late,
        });
    }
    let best = trials
        .iter()
        .filter_map(|t| t.late_loss.map(|l| (t.lr, l)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(lr, _)| lr)
        .ok_or_else(|| {
            Error::NonFinite(format!(
                "{}: every learning rate of {:?} diverged; give lower --lrs",
                base.label, args.lrs
            ))
        })?;
    Ok((best, trials))
}

/// One net's race to the target.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fig1Run {
    pub activation: String,
    pub lr: f32,
    pub sweep: Vec<Trial>,
    pub epochs: Vec<EpochPoint>,
    /// The first epoch at or below the target, with the seconds of training to its end.
    pub reached: Option<EpochPoint>,
}

/// What `experiment fig1` writes to fig1.json.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fig1Result {
    pub train_images: usize,
    pub batch_size: usize,
    pub max_epochs: u64,
    pub target: f32,
    pub runs: Vec<Fig1Run>,
    /// tanh's epochs (seconds) to the target over ReLU's, when both reached it.
    pub epoch_ratio: Option<f64>,
    pub seconds_ratio: Option<f64>,
    /// Figure 1's caption: six times faster.
    pub paper_ratio: f64,
}

/// Figure 1: the ReLU net and the tanh net, each at its own swept learning rate, trained until
/// their training error reaches the target or `max_epochs` pass. Writes fig1.json and fig1.png
/// into the output directory and returns the result.
pub fn run_fig1<E: Engine>(engines: &[E], args: &Fig1Args) -> Result<Fig1Result> {
    let cifar = &args.cifar;
    super::create_out_dir(&cifar.out)?;
    let data = open_cifar(&cifar.data, cifar.train_images)?;
    let mut runs = Vec::new();
    for (activation, kind) in [("relu", Kind::Relu), ("tanh", Kind::Tanh)] {
        let net = cifar_net(&format!("cifar10-{activation}"), kind, None);
        let base = spec(cifar, activation, &net, 0.0);
        let (lr, trials) = sweep(engines, &data, cifar, &base)?;
        let race = FitSpec {
            label: format!("{activation} lr {lr}"),
            lr,
            max_epochs: args.max_epochs,
            stop_at_train_error: Some(args.target),
            ..base
        };
        let result: FitResult = fit(engines, &data, &race, false, cifar.quiet)?;
        let reached = result.first_at_or_below(args.target);
        println!(
            "{}",
            race_line(activation, lr, &result, reached, args.target)
        );
        runs.push(Fig1Run {
            activation: activation.to_string(),
            lr,
            sweep: trials,
            epochs: result.epochs,
            reached,
        });
    }
    let ratio = |f: fn(&EpochPoint) -> f64| match (runs[0].reached, runs[1].reached) {
        (Some(relu), Some(tanh)) => Some(f(&tanh) / f(&relu)),
        _ => None,
    };
    let result = Fig1Result {
        train_images: data.train.len(),
        batch_size: cifar.batch_size,
        max_epochs: args.max_epochs,
        target: args.target,
        epoch_ratio: ratio(|p| p.epoch as f64),
        seconds_ratio: ratio(|p| p.seconds),
        paper_ratio: 6.0,
        runs,
    };
    println!("{}", ratio_line(&result));
    super::write_json(&cifar.out.join("fig1.json"), &result)?;
    super::plot::draw_fig1(&result, &cifar.out.join("fig1.png"))?;
    println!(
        "wrote {} and {}",
        cifar.out.join("fig1.png").display(),
        cifar.out.join("fig1.json").display()
    );
    Ok(result)
}

fn race_line(
    activation: &str,
    lr: f32,
    r: &FitResult,
    reached: Option<EpochPoint>,
    target: f32,
) -> String {
    let last = r.epochs.last().map_or(1.0, |p| p.train_error);
    match reached {
        Some(p) => format!(
            "{activation} (lr {lr}): {:.0}% training error after {} epochs, {:.1} s of training",
            100.0 * target,
            p.epoch,
            p.seconds
        ),
        None => format!(
            "{activation} (lr {lr}): did not reach {:.0}% in {} epochs (last {:.1}%)",
            100.0 * target,
            r.epochs.len(),
            100.0 * last
        ),
    }
}

fn ratio_line(r: &Fig1Result) -> String {
    match (r.epoch_ratio, r.seconds_ratio) {
        (Some(e), Some(s)) => format!(
            "tanh took {e:.1}x the epochs and {s:.1}x the seconds of ReLU to reach {:.0}% \
             training error (the paper: {}x)",
            100.0 * r.target,
            r.paper_ratio
        ),
        _ => {
            let relu = r.runs[0].reached.map(|p| p.epoch);
            let tanh_epochs = r.runs[1].epochs.len();
            match relu {
                Some(e) => format!(
                    "tanh did not reach the target in {tanh_epochs} epochs: at least {:.1}x \
                     ReLU's {e} (the paper: {}x)",
                    tanh_epochs as f64 / e as f64,
                    r.paper_ratio
                ),
                None => "ReLU did not reach the target either: no ratio (raise --max-epochs)"
                    .to_string(),
            }
        }
    }
}

/// One net of the LRN comparison.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LrnRun {
    pub lrn: bool,
    pub epochs: Vec<EpochPoint>,
    pub test_top1: f32,
}

/// What `experiment cifar-lrn` writes to cifar-lrn.json.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CifarLrnResult {
    pub train_images: usize,
    pub test_images: usize,
    pub epochs: u64,
    pub lr: f32,
    pub sweep: Vec<Trial>,
    pub lrn_params: LrnParams,
    pub runs: Vec<LrnRun>,
    /// Section 3.3: 13% test error without normalisation, 11% with.
    pub paper_test_error: [f32; 2],
}

/// Section 3.3's CIFAR-10 claim: the ReLU net without and with LRN (the paper's constants),
/// trained for the same epochs at the learning rate the sweep picks for the net without it,
/// then tested on the test batches.
pub fn run_cifar_lrn<E: Engine>(engines: &[E], args: &CifarLrnArgs) -> Result<CifarLrnResult> {
    let cifar = &args.cifar;
    super::create_out_dir(&cifar.out)?;
    let data = open_cifar(&cifar.data, cifar.train_images)?;
    let lrn = LrnParams::PAPER;
    let plain = cifar_net("cifar10", Kind::Relu, None);
    let (lr, sweep_trials) = sweep(engines, &data, cifar, &spec(cifar, "no lrn", &plain, 0.0))?;
    let mut runs = Vec::new();
    for with_lrn in [false, true] {
        let net = cifar_net("cifar10", Kind::Relu, with_lrn.then_some(lrn));
        let label = if with_lrn { "with lrn" } else { "no lrn" };
        let run = FitSpec {
            max_epochs: args.epochs,
            ..spec(cifar, label, &net, lr)
        };
        let result = fit(engines, &data, &run, true, cifar.quiet)?;
        let (top1, _) = result.held_out.unwrap_or((f32::NAN, f32::NAN));
        println!(
            "{label}: test error {:.2}% after {} epochs (train error {:.2}%)",
            100.0 * top1,
            result.epochs.len(),
            100.0 * result.epochs.last().map_or(f32::NAN, |p| p.train_error)
        );
        runs.push(LrnRun {
            lrn: with_lrn,
            epochs: result.epochs,
            test_top1: top1,
        });
    }
    let result = CifarLrnResult {
        train_images: data.train.len(),
        test_images: data.test.len(),
        epochs: args.epochs,
        lr,
        sweep: sweep_trials,
        lrn_params: lrn,
        runs,
        paper_test_error: [0.13, 0.11],
    };
    println!(
        "LRN changed the test error by {:+.2} points (the paper: 13% -> 11%, -2 points)",
        100.0 * (result.runs[1].test_top1 - result.runs[0].test_top1)
    );
    let path = cifar.out.join("cifar-lrn.json");
    super::write_json(&path, &result)?;
    println!("wrote {}", path.display());
    Ok(result)
}
