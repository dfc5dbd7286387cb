//! The training run, top-down: data → loader threads → model on an engine → the paper's SGD →
//! validation, learning-rate schedule, checkpoints and the metrics log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::arch::{ArchConfig, Net};
use crate::checkpoint::{Checkpoint, CheckpointDir, TrainState};
use crate::data::{Augment, Dataset, Loader, LoaderConfig, Share, Stats};
use crate::data_parallel::{self, EveryNth};
use crate::dist::{self, Comm};
use crate::engine::{Engine, LrnParams};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions, EvalResult};
use crate::large_batch::Warmup;
use crate::metrics::MetricsLog;
use crate::model::{Init, Sgd};
use crate::parallel::Network;
use crate::report::Reporter;
use crate::settings;
use crate::trainer::{Schedule, Trainer};

/// `alexnet-cli train` options. Defaults are the paper's (Section 5) except where the built-in
/// dataset needs otherwise (then the help says so).
#[derive(clap::Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainArgs {
    /// A dataset made by `alexnet-cli prepare`. Without it, trains on the built-in procedural
    /// dataset (generated in memory from --seed).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Stop after this many SGD steps in all (counted from the run's start, also on --resume);
    /// overrides --epochs: the run goes on through as many epochs as it takes.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Passes over the training set. Default: 90 on --data (the paper's "roughly 90 cycles"),
    /// 10 on the built-in dataset.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// Images per SGD step. Default: the paper's 128 with --data; 64 on the built-in dataset
    /// (its quick demo: twice the SGD steps in the same time).
    #[arg(long, value_parser = settings::count_in(1, settings::MAX_BATCH))]
    pub batch_size: Option<usize>,
    /// Initial learning rate, equal for all layers (the paper: 0.01). Above 0.
    #[arg(long, default_value_t = 0.01, value_parser = settings::positive)]
    pub lr: f32,
    /// Momentum (the paper: 0.9), in [0, 1).
    #[arg(long, default_value_t = 0.9, value_parser = settings::below_one)]
    pub momentum: f32,
    /// Weight decay (the paper: 0.0005), 0 or more.
    #[arg(long, default_value_t = 0.0005, value_parser = settings::non_negative)]
    pub weight_decay: f32,
    /// Also apply weight decay to biases (cuda-convnet and Caffe do not; the paper is silent).
    #[arg(long)]
    pub decay_biases: bool,
    /// Gradual warmup for large batches (Goyal et al. 2017; beyond the paper): the learning
    /// rate starts at the paper's-batch rate --lr x 128 / --batch-size and rises by equal steps
    /// to --lr over this many epochs (fractions allowed), then follows the schedule. Give --lr
    /// for the global batch by their linear scaling rule (0.01 x B / 128). Needs a --batch-size
    /// above 128. 0 (default): no warmup; at most 1000.
    #[arg(long, default_value_t = 0.0, value_parser = settings::warmup_epochs)]
    pub warmup_epochs: f32,
    /// LARS for large batches (You, Gitman & Ginsburg 2017; beyond the paper): each layer's
    /// weights step at --lr x eta x ||w|| / (||grad|| + weight_decay x ||w||) inside the
    /// momentum update; biases at --lr, without the trust ratio. The global --lr is then
    /// typically far above 0.01.
    #[arg(long)]
    pub lars: bool,
    /// LARS's trust coefficient eta (theirs: 0.001), in (0, 1].
    #[arg(long, default_value_t = 0.001, value_parser = settings::unit_fraction, requires = "lars")]
    pub lars_eta: f32,
    /// Seed for initialisation, data order, augmentation and dropout.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Loader threads preparing batches ahead of the engine (0 = one per core).
    #[arg(long, default_value_t = 0, value_parser = settings::count_in(0, settings::MAX_THREADS))]
    pub workers: usize,
    /// Number of classes (built-in dataset: how many to generate, default 10; with --data it
    /// must match the dataset).
    #[arg(long, value_parser = settings::count_in(2, settings::MAX_CLASSES))]
    pub classes: Option<usize>,
    /// Input side in pixels. 227 makes the paper's 55x55 conv1 maps exact; smaller values give
    /// the same layers on smaller maps, down to what the net's geometry allows (67 for the
    /// paper's nets, 15 for cifar10). Default: 227 with --data; 99 on the built-in
    /// dataset (its quick demo: about 1/5 of the FLOPs).
    #[arg(long, value_parser = settings::count_in(1, settings::MAX_INPUT))]
    pub input_size: Option<usize>,
    /// Weight initialisation: `paper` (Section 5), `caffe` (std 0.005 on fc6/fc7, biases 0.1)
    /// or `kaiming` (He et al. 2015: std sqrt(2/fan_in), biases 0, the first layer's std also
    /// divided by the data's pixel standard deviation), for when the paper's init leaves the
    /// loss flat at ln(classes). Default: paper with --data; caffe on the built-in dataset (its
    /// quick demo).
    #[arg(long, value_enum)]
    pub init: Option<InitArg>,
    /// Network: `paper` (two columns, Figure 2), `one-column` (footnote 2's comparison net),
    /// `cifar10` (cuda-convnet's CIFAR-10 net, for --input-size 32), `torchvision` (torchvision's
    /// alexnet, for --input-size 224) or `caffe` (Caffe's bvlc_alexnet). The peers' nets were
    /// trained with --inverted-dropout.
    #[arg(long, value_enum, default_value_t = PresetArg::Paper)]
    pub preset: PresetArg,
    /// A net file instead of a preset: TOML (or JSON, by its .json extension) with one section
    /// per layer, its kind, shape and initialisation (see docs/ARCHITECTURE.md). Its last layer
    /// must be fully connected with as many outputs as the data has classes.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["preset", "cross_column", "lrn_alpha_over_n"]
    )]
    pub net: Option<PathBuf>,
    /// Model parallelism as in Section 3.2: run each column (the paper's GPU) on its own GPU,
    /// N of them (implies --device cuda): GPUs --gpu, --gpu+1, ...; with fewer GPUs than N,
    /// several columns share one (each on its own stream), with a notice. Activations cross
    /// between devices only at the cross-column layers. Without it (and --executors), the whole
    /// net runs on one device: the same function, as groups.
    #[arg(long, value_name = "N", conflicts_with = "executors", value_parser = settings::count_in(1, settings::MAX_EXECUTORS))]
    pub gpus: Option<usize>,
    /// The same split on N executors of --device (with the CPU engine: N engines sharing the
    /// cores), e.g. to run the model-parallel path without a GPU.
    #[arg(long, value_name = "N", value_parser = settings::count_in(1, settings::MAX_EXECUTORS))]
    pub executors: Option<usize>,
    /// The layers whose columns read all columns of their input (the paper: conv3,fc6,fc7,fc8;
    /// "choosing the pattern of connectivity is a problem for cross-validation"). Any of
    /// conv2..conv5; the FC layers must stay in the list.
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    pub cross_column: Option<Vec<String>>,
    /// Dropout probability in every dropout row (fc6 and fc7 in the paper's nets). Default: the paper's 0.5 with --data; 0 on the
    /// built-in dataset (its quick demo: dropout "roughly doubles the number of iterations
    /// required to converge", Section 4.2). In [0, 1).
    #[arg(long, value_parser = settings::below_one)]
    pub dropout: Option<f32>,
    /// Scale kept units by 1/(1-p) while training instead of the paper's multiplying outputs by
    /// (1-p) at test time (PyTorch/Caffe convention).
    #[arg(long)]
    pub inverted_dropout: bool,
    /// Divide LRN's alpha by n (Caffe, cuda-convnet, PyTorch) instead of the paper's formula.
    #[arg(long)]
    pub lrn_alpha_over_n: bool,
    /// Divide the learning rate by 10 when validation top-1 error has not improved for this many
    /// epochs (the paper's heuristic), at most --max-lr-drops times. At least 1.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub patience: u32,
    /// How many times the learning rate may be divided by 10 (the paper: three).
    #[arg(long, default_value_t = 3)]
    pub max_lr_drops: u32,
    /// Use a fixed schedule instead: divide by 10 every this many epochs (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub lr_step_epochs: Option<u64>,
    /// Turn off all training-time augmentation (crops become centre crops).
    #[arg(long)]
    pub no_augment: bool,
    /// Turn off random horizontal reflections.
    #[arg(long)]
    pub no_flip: bool,
    /// Turn off random crops (use the centre crop).
    #[arg(long)]
    pub no_random_crop: bool,
    /// Turn off PCA colour augmentation (Section 4.1).
    #[arg(long)]
    pub no_pca: bool,
    /// Where checkpoints go (DIR/last.safetensors, DIR/best.safetensors, DIR/step-N...) and the
    /// metrics log (DIR/metrics.jsonl). Default: a new directory RUNS_DIR/run-N for every run,
    /// printed at the start. A directory that already holds a run is refused unless --resume
    /// or --overwrite is given.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Where runs without --checkpoint-dir get their directory (run-1, run-2, ...).
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Continue the run in --checkpoint-dir from its last.safetensors: same weights, momentum,
    /// schedule, RNG, data position and settings. Only the budget and machinery may change
    /// (--steps, --epochs, --workers, --log, --quiet, --checkpoint-every, --keep, and the device
    /// flags); any other flag that differs from the run's is refused unless --override is given.
    #[arg(long, requires = "checkpoint_dir")]
    pub resume: bool,
    /// With --resume: take the settings given on the command line even where they differ from
    /// the run's (listed at the start). The architecture must still fit the saved weights.
    #[arg(long = "override", requires = "resume")]
    pub override_settings: bool,
    /// Start a new run in a --checkpoint-dir that holds one (or into a --log file that has
    /// records), deleting its checkpoints and metrics first.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Start from the weights of a checkpoint (fine-tuning). A different class count gets a
    /// freshly initialised fc8.
    #[arg(long, conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Save a checkpoint every this many steps as well as after each epoch.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: Option<u64>,
    /// How many step checkpoints to keep besides last and best.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Metrics log path (JSON lines). Default: CHECKPOINT_DIR/metrics.jsonl when a checkpoint
    /// directory is given.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Built-in dataset: training images.
    #[arg(long, default_value_t = 4096, value_parser = settings::count(1))]
    pub builtin_train: usize,
    /// Built-in dataset: validation images.
    #[arg(long, default_value_t = 512, value_parser = settings::count(1))]
    pub builtin_val: usize,
    /// No progress bar (one line per epoch instead).
    #[arg(long)]
    pub quiet: bool,
    /// The flags given on the command line (field names), as opposed to defaults: on --resume
    /// those are compared with the run's settings. Filled by the CLI from clap's matches.
    #[arg(skip)]
    #[serde(skip)]
    pub explicit: Vec<String>,
}

#[derive(
    clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum InitArg {
    Paper,
    Caffe,
    Kaiming,
}

impl InitArg {
    /// The scheme, for data with the pixel spread of `stats` (which `kaiming` scales by).
    pub fn scheme(self, stats: &Stats) -> Init {
        match self {
            InitArg::Paper => Init::Paper,
            InitArg::Caffe => Init::Caffe,
            InitArg::Kaiming => Init::kaiming_for(stats),
        }
    }
}

#[derive(
    clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PresetArg {
    Paper,
    OneColumn,
    Cifar10,
    Torchvision,
    Caffe,
}

impl PresetArg {
    /// The built-in table this names.
    pub fn net(self) -> Net {
        match self {
            PresetArg::Paper => Net::Paper,
            PresetArg::OneColumn => Net::OneColumn,
            PresetArg::Cifar10 => Net::Cifar10,
            PresetArg::Torchvision => Net::Torchvision,
            PresetArg::Caffe => Net::Caffe,
        }
    }
}

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: u64,
    pub epochs_completed: u64,
    pub losses: Vec<f32>,
    pub last_val_top1: Option<f32>,
    pub last_val_top5: Option<f32>,
    pub interrupted: bool,
    pub last_checkpoint: Option<PathBuf>,
    /// Where the run's checkpoints and metrics are.
    pub run_dir: PathBuf,
}

/// The training and validation data with what the loader needs to normalise it.
pub struct TrainData {
    pub train: Arc<dyn Dataset>,
    pub val: Arc<dyn Dataset>,
    pub stats: Arc<Stats>,
    pub class_names: Vec<String>,
    pub source: String,
}

/// Opens `--data`, or generates the built-in dataset at the side that the input size needs
/// (256 for 227, the paper's ratio otherwise).
pub fn open_data(args: &TrainArgs) -> Result<TrainData> {
    match &args.data {
        Some(dir) => open_prepared(dir),
        None => {
            let classes = args.classes.unwrap_or(10);
            let side = builtin_side(args.input_size());
            let (train, val, stats) = crate::data::synthetic::synthetic_split(
                classes,
                args.builtin_train,
                args.builtin_val,
                side,
                args.seed,
            )?;
            let class_names = train.class_names();
            Ok(TrainData {
                train: Arc::new(train),
                val: Arc::new(val),
                stats: Arc::new(stats),
                class_names,
                source: format!("built-in procedural dataset (seed {})", args.seed),
            })
        }
    }
}

/// A prepared dataset (`alexnet-cli prepare`), or a CIFAR-10 binary folder.
pub fn open_prepared(dir: &std::path::Path) -> Result<TrainData> {
    use crate::data::cifar::Cifar10;
    use crate::data::packed::PackedDataset;
    if dir.join("data_batch_1.bin").exists() {
        let train = Cifar10::open(dir, true)?;
        let val = Cifar10::open(dir, false)?;
        let stats = crate::data::compute_stats(&train, None)?;
        let class_names = train.class_names();
        return Ok(TrainData {
            train: Arc::new(train),
            val: Arc::new(val),
            stats: Arc::new(stats),
            class_names,
            source: format!("CIFAR-10 at {}", dir.display()),
        });
    }
    let train = PackedDataset::open(dir, "train")?;
    let val = PackedDataset::open(dir, "val")?;
    let stats = PackedDataset::stats(dir)?;
    let class_names = train.class_names();
    Ok(TrainData {
        train: Arc::new(train),
        val: Arc::new(val),
        stats: Arc::new(stats),
        class_names,
        source: format!("prepared dataset {}", dir.display()),
    })
}

/// The built-in dataset's quick demo, which the defaults of `train` without --data follow so that
/// it shows learning within minutes on two cores: the paper's layers at input 99, batches of 64,
/// Caffe's initialisation (the paper's stays at ln(classes) for hundreds of steps), no dropout,
/// 10 epochs. Each value is only a default: a flag overrides it.
pub const DEMO_INPUT_SIZE: usize = 99;
const DEMO_BATCH_SIZE: usize = 64;
const DEMO_EPOCHS: u64 = 10;

impl TrainArgs {
    /// Whether the defaults are the built-in dataset's quick demo (no --data).
    fn demo(&self) -> bool {
        self.data.is_none()
    }

    pub fn input_size(&self) -> usize {
        let default = if self.demo() { DEMO_INPUT_SIZE } else { 227 };
        self.input_size.unwrap_or(default)
    }

    pub fn init(&self) -> InitArg {
        let default = if self.demo() {
            InitArg::Caffe
        } else {
            InitArg::Paper
        };
        self.init.unwrap_or(default)
    }

    pub fn dropout(&self) -> f32 {
        self.dropout.unwrap_or(if self.demo() { 0.0 } else { 0.5 })
    }

    /// How many executors the columns are split over (--gpus or --executors), if split.
    pub fn split_executors(&self) -> Option<usize> {
        self.gpus.or(self.executors)
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
            .unwrap_or(if self.demo() { DEMO_BATCH_SIZE } else { 128 })
    }

    /// The epoch budget: unbounded with --steps, which then sets the budget alone.
    pub fn epochs(&self) -> u64 {
        if self.steps.is_some() {
            return u64::MAX;
        }
        self.epochs
            .unwrap_or(if self.demo() { DEMO_EPOCHS } else { 90 })
    }

    /// The demo defaults this run takes (none when every one is set or --data is given).
    fn demo_defaults(&self) -> Vec<String> {
        if !self.demo() {
            return Vec::new();
        }
        [
            (
                self.input_size.is_none(),
                format!("input {DEMO_INPUT_SIZE} (paper: 227)"),
            ),
            (
                self.batch_size.is_none(),
                format!("batch {DEMO_BATCH_SIZE} (paper: 128)"),
            ),
            (self.init.is_none(), "--init caffe (paper: paper)".into()),
            (self.dropout.is_none(), "--dropout 0 (paper: 0.5)".into()),
            (
                self.epochs.is_none() && self.steps.is_none(),
                format!("{DEMO_EPOCHS} epochs"),
            ),
        ]
        .into_iter()
        .filter_map(|(default, what)| default.then_some(what))
        .collect()
    }
}

/// The stored side for a crop: the paper's 256 for 227, the same ratio for other inputs.
pub fn builtin_side(input: usize) -> usize {
    (input * 256).div_ceil(227)
}

/// The architecture the flags describe, for `classes` classes.
pub fn arch_from_args(args: &TrainArgs, classes: usize) -> Result<ArchConfig> {
    let net = match &args.net {
        Some(path) => Net::Table(crate::netfile::read(path)?),
        None => args.preset.net(),
    };
    Ok(ArchConfig {
        net,
        classes,
        input_size: args.input_size(),
        lrn: LrnParams {
            alpha_over_n: args.lrn_alpha_over_n,
            ..LrnParams::PAPER
        },
        dropout: args.dropout(),
        dropout_paper_scaling: !args.inverted_dropout,
        cross_column: args
            .cross_column
            .clone()
            .unwrap_or_else(|| ArchConfig::default().cross_column),
    })
}

/// The host threads the engines compute with, 0 for device engines.
fn host_threads<E: Engine>(engines: &[E]) -> usize {
    engines.iter().filter_map(Engine::host_threads).sum()
}

/// Trains on `engines` until the step/epoch budget is spent or `stop` is raised (Ctrl-C): the
/// whole network on `engines[0]`, or with `--gpus` its columns spread over all of them. Every run
/// saves into its own directory (`--checkpoint-dir`, or a new RUNS_DIR/run-N).
pub fn train<E: Engine>(
    engines: &[E],
    given: &TrainArgs,
    stop: &AtomicBool,
) -> Result<TrainSummary> {
    train_in(engines, given, stop, &Comm::Single)
}

/// [`train`] as one rank of a data-parallel run over `comm`: the same run as one process at
/// the same global `--batch-size` (see `data_parallel`). Rank 0 saves and reports.
pub fn train_in<E: Engine>(
    engines: &[E],
    given: &TrainArgs,
    stop: &AtomicBool,
    comm: &Comm,
) -> Result<TrainSummary> {
    let (args, resumed) = run_settings(given)?;
    let args = &args;
    if let (Some(r), Some(dir)) = (&resumed, &args.checkpoint_dir) {
        let step = r.checkpoint.train_state.as_ref().map(|s| s.step);
        dist::set_abort_note(abort_note(dir, step));
    }
    let replica = Replica::new(comm, args)?;
    let init_from = match &args.init_from {
        Some(path) => Some(Checkpoint::load(path)?),
        None => None,
    };
    let data = open_data_that_fits(engines, args, replica.batch)?;
    let arch = checked_arch(args, &data)?;
    // Only rank 0 writes: the run directory, checkpoints, the metrics log.
    let output = match replica.leader() {
        true => Some(RunOutput::open(args)?),
        false => None,
    };
    let run_dir = shared_run_dir(comm, output.as_ref());
    if resumed.is_none() {
        dist::set_abort_note(abort_note(&run_dir, None));
    }
    let (mut model, state) = build_model(
        engines,
        args,
        (arch, args.init().scheme(&data.stats)),
        &replica,
        resumed.as_ref(),
        init_from.as_ref(),
    )?;
    data_parallel::broadcast_weights(comm, engines, &mut model)?;
    let log = match &output {
        Some(out) => {
            announce(engines, args, &data, model.cfg(), &state, out, &replica);
            Some(out.log(args, state.step)?)
        }
        None => None,
    };
    let sgd = Sgd {
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        decay_biases: args.decay_biases,
        lars_eta: args.lars.then_some(args.lars_eta),
    };
    let sync = data_parallel::gradient_sync(engines, comm)?;
    let steps_per_epoch = (data.train.len() / args.batch_size()) as u64;
    let warmup = Warmup::new(args.warmup_epochs, steps_per_epoch, args.batch_size())?;
    let mut trainer = Trainer::new(engines, model, state, sgd, sync).with_warmup(warmup);
    let classes = data.class_names.len();
    let paper_init = args.init() == InitArg::Paper;
    let mut report = Reporter::new(log, args.quiet, classes, paper_init);
    let mut summary = TrainSummary {
        steps: trainer.state.step,
        epochs_completed: trainer.state.epoch,
        losses: Vec::new(),
        last_val_top1: None,
        last_val_top5: None,
        interrupted: false,
        last_checkpoint: None,
        run_dir: run_dir.clone(),
    };
    let run = Run {
        args,
        data: &data,
        replica: &replica,
        output: output.as_ref(),
        run_dir: &run_dir,
        stop,
    };
    // ---- the loop: epochs of steps, each epoch validated, scheduled and saved ----
    while trainer.state.epoch < args.epochs() && budget_left(&trainer.state, args) {
        let finished = train_epoch(&mut trainer, &mut report, &run, &mut summary)?;
        if summary.interrupted || !finished {
            break;
        }
        let improved = end_epoch(&mut trainer, &mut report, &run, &mut summary)?;
        run.save(&mut trainer, improved, &mut summary)?;
        if trainer.agree(stop.load(Ordering::SeqCst))? {
            summary.interrupted = true;
        }
    }
    Ok(summary)
}

/// This process's place in a data-parallel run (rank 0 of 1 in a plain one).
struct Replica {
    rank: usize,
    ranks: usize,
    /// This rank's share of the global batch.
    batch: usize,
}

impl Replica {
    /// Checks that the global batch splits evenly and that every rank runs the same binary with
    /// the same settings.
    fn new(comm: &Comm, args: &TrainArgs) -> Result<Self> {
        let (rank, ranks) = (comm.rank(), comm.size());
        if !args.batch_size().is_multiple_of(ranks) {
            return Err(Error::Config(format!(
                "--batch-size {} (the global batch) does not split evenly over {ranks} ranks; \
                 use a multiple of {ranks}",
                args.batch_size()
            )));
        }
        if ranks > 1 {
            let settings = crate::run::settings_json(args)?.to_string();
            comm.agree_on(
                "the training settings",
                data_parallel::fingerprint(settings.as_bytes()),
            )?;
            let exe = std::env::current_exe()
                .and_then(std::fs::read)
                .unwrap_or_default();
            comm.agree_on("the alexnet-cli binary", data_parallel::fingerprint(&exe))?;
        }
        Ok(Replica {
            rank,
            ranks,
            batch: args.batch_size() / ranks,
        })
    }

    fn leader(&self) -> bool {
        self.rank == 0
    }
}

/// Where rank 0 writes a run: its directory (checkpoints) and the metrics log.
struct RunOutput {
    dir: CheckpointDir,
    log_path: PathBuf,
}

impl RunOutput {
    fn open(args: &TrainArgs) -> Result<Self> {
        let run_dir = crate::run::run_directory(args)?;
        let log_path = args
            .log
            .clone()
            .unwrap_or_else(|| run_dir.join(crate::run::METRICS_FILE));
        Ok(RunOutput {
            dir: CheckpointDir::new(&run_dir, args.keep)?,
            log_path,
        })
    }

    /// The metrics log; on resume, records after the checkpoint's `step` (written before a
    /// crash) are dropped.
    fn log(&self, args: &TrainArgs, step: u64) -> Result<MetricsLog> {
        match args.resume {
            true => MetricsLog::open_resume(&self.log_path, step),
            false => MetricsLog::open(&self.log_path, false),
        }
    }
}

/// What every part of the loop reads.
struct Run<'a> {
    args: &'a TrainArgs,
    data: &'a TrainData,
    replica: &'a Replica,
    output: Option<&'a RunOutput>,
    /// Rank 0's run directory, known to every rank.
    run_dir: &'a Path,
    stop: &'a AtomicBool,
}

impl Run<'_> {
    /// Saves the run as it stands (rank 0 writes; every rank's abort note names the step).
    fn save<E: Engine>(
        &self,
        trainer: &mut Trainer<E>,
        best: bool,
        summary: &mut TrainSummary,
    ) -> Result<()> {
        if let Some(out) = self.output {
            let saved = out
                .dir
                .save(&trainer.checkpoint(self.data)?, trainer.state.step, best)?;
            trainer.last_saved = Some(saved.clone());
            summary.last_checkpoint = Some(saved);
        }
        dist::set_abort_note(abort_note(self.run_dir, Some(trainer.state.step)));
        Ok(())
    }
}

/// Rank 0's run directory on every rank (a collective): whichever rank ends the job names it.
fn shared_run_dir(comm: &Comm, output: Option<&RunOutput>) -> PathBuf {
    let mut bytes = output
        .map(|o| o.dir.dir().to_string_lossy().into_owned().into_bytes())
        .unwrap_or_default();
    comm.broadcast_bytes(&mut bytes, 0);
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

/// What an aborted job says about where the run can continue: the last checkpoint saved (its
/// step; `None`: none yet) in `run_dir`.
fn abort_note(run_dir: &Path, saved_step: Option<u64>) -> String {
    let dir = run_dir.display();
    match saved_step {
        Some(step) => format!(
            "the last checkpoint saved is step {step}'s, in {dir}; `alexnet-cli train \
             --checkpoint-dir {dir} --resume` (with this run's device flags) continues from it"
        ),
        None => format!("no checkpoint was saved yet (run directory {dir})"),
    }
}

/// The run's settings: the command line's, or on --resume the run's own (with what may change
/// taken from the command line), checked.
fn run_settings(given: &TrainArgs) -> Result<(TrainArgs, Option<crate::run::Resumed>)> {
    let given = with_absolute_data(given)?;
    let resumed = match (&given.checkpoint_dir, given.resume) {
        (Some(dir), true) => Some(crate::run::load_resumed(dir, &given)?),
        (None, true) => {
            return Err(Error::Config(
                "--resume needs --checkpoint-dir: the directory of the run to continue".into(),
            ))
        }
        (_, false) => None,
    };
    let args = resumed.as_ref().map_or(given, |r| r.args.clone());
    validate(&args)?;
    Ok((args, resumed))
}

/// The data, once the configuration is known to fit in memory (for the built-in data, before it
/// is generated; a prepared dataset is opened first to learn its class count, which is cheap).
fn open_data_that_fits<E: Engine>(
    engines: &[E],
    args: &TrainArgs,
    batch: usize,
) -> Result<TrainData> {
    match &args.data {
        None => {
            check_memory(engines, args, args.classes.unwrap_or(10), batch)?;
            open_data(args)
        }
        Some(_) => {
            let data = open_data(args)?;
            check_memory(engines, args, data.class_names.len(), batch)?;
            Ok(data)
        }
    }
}

/// The architecture the flags describe for `data`, its geometry checked.
fn checked_arch(args: &TrainArgs, data: &TrainData) -> Result<ArchConfig> {
    let classes = data.class_names.len();
    if let Some(c) = args.classes.filter(|&c| c != classes) {
        return Err(Error::Config(format!(
            "--classes {c} but the dataset has {classes} classes"
        )));
    }
    let arch = arch_from_args(args, classes)?;
    let side = data.train.side();
    if side < args.input_size() {
        return Err(Error::Config(format!(
            "the dataset's images are {side}x{side}, smaller than the {0}x{0} input; \
             use --input-size {side} or smaller",
            args.input_size()
        )));
    }
    Ok(arch)
}

/// The model and the run's state: fresh, resumed from the run's checkpoint, or initialised from
/// another run's weights.
fn build_model<E: Engine>(
    engines: &[E],
    args: &TrainArgs,
    (arch, init): (ArchConfig, Init),
    replica: &Replica,
    resumed: Option<&crate::run::Resumed>,
    init_from: Option<&Checkpoint>,
) -> Result<(Network<E>, TrainState)> {
    let split = args.split_executors().is_some();
    let mut model = Network::new(engines, split, arch.clone(), init, args.seed, replica.batch)?;
    model.set_first_image(replica.rank * replica.batch);
    let mut state = TrainState::fresh(args.seed, args.lr);
    if let Some(r) = resumed {
        if r.checkpoint.arch != arch {
            return Err(Error::Checkpoint {
                path: r.path.clone(),
                msg: format!(
                    "holds a net of another architecture ({}); the weights cannot be resumed \
                     into it (use --init-from to start a new run from them)",
                    arch_differences(&r.checkpoint.arch, &arch).join(", ")
                ),
            });
        }
        load_weights(engines, &mut model, &r.checkpoint, Load::Resume)?;
        state = r.state()?;
        let threads = host_threads(engines);
        if state.threads != threads && replica.leader() {
            println!(
                "notice: the run computed with {} host threads, this process with {threads}: the \
                 results stay the same up to float summation order, no longer bit for bit",
                state.threads
            );
        }
        if replica.leader() {
            println!(
                "resumed from {} at epoch {} step {}",
                r.path.display(),
                state.epoch + 1,
                state.step
            );
        }
    } else if let Some(ckpt) = init_from {
        let reused = load_weights(engines, &mut model, ckpt, Load::FineTune)?;
        if let (Some(path), true) = (&args.init_from, replica.leader()) {
            println!("initialised {reused} tensors from {}", path.display());
        }
    }
    state.threads = host_threads(engines);
    state.settings = Some(crate::run::settings_json(args)?);
    Ok((model, state))
}

/// The lines at the start of a run: what trains on what, and where it saves.
fn announce<E: Engine>(
    engines: &[E],
    args: &TrainArgs,
    data: &TrainData,
    arch: &ArchConfig,
    state: &TrainState,
    out: &RunOutput,
    replica: &Replica,
) {
    println!(
        "training on {} with {}: {} train / {} val images, {} classes, batch {}, lr {}",
        data.source,
        engines_description(engines, args.split_executors().is_some(), arch),
        data.train.len(),
        data.val.len(),
        data.class_names.len(),
        args.batch_size(),
        fmt_lr(state.lr)
    );
    if replica.ranks > 1 {
        println!(
            "data-parallel: {} ranks, global batch {} ({} per rank)",
            replica.ranks,
            args.batch_size(),
            replica.batch
        );
    }
    println!(
        "run directory: {} (checkpoints; metrics in {})",
        out.dir.dir().display(),
        out.log_path.display()
    );
    let demo = args.demo_defaults();
    if !demo.is_empty() {
        println!(
            "built-in quick demo defaults: {} (any flag overrides; --input-size 227 --batch-size \
             128 --init paper --dropout 0.5 is the paper's setting)",
            demo.join(", ")
        );
    }
}

/// Whether the step budget (--steps) leaves another step.
fn budget_left(state: &TrainState, args: &TrainArgs) -> bool {
    args.steps.is_none_or(|s| state.step < s)
}

/// The augmentation the flags ask for (Section 4.1).
fn augment(args: &TrainArgs) -> Augment {
    Augment {
        crop: args.input_size(),
        random_crop: !(args.no_augment || args.no_random_crop),
        flip: !(args.no_augment || args.no_flip),
        pca_std: if args.no_augment || args.no_pca {
            0.0
        } else {
            0.1
        },
        subtract_mean: true,
    }
}

/// The steps of the epoch in progress, from where it stands, until it ends, the budget is
/// spent or `stop` is raised (then the state is saved). Returns whether the epoch is complete.
fn train_epoch<E: Engine>(
    trainer: &mut Trainer<E>,
    report: &mut Reporter,
    run: &Run,
    summary: &mut TrainSummary,
) -> Result<bool> {
    let (args, data) = (run.args, run.data);
    let state = &trainer.state;
    let mut loader = Loader::new(
        data.train.clone(),
        data.stats.clone(),
        LoaderConfig {
            batch: args.batch_size(),
            workers: args.workers,
            prefetch: LOADER_PREFETCH,
            seed: state.data_seed,
            augment: augment(args),
            shuffle: true,
            drop_last: true,
            share: Share {
                index: run.replica.rank,
                of: run.replica.ranks,
            },
        },
        state.epoch,
        state.batch_in_epoch as usize,
    )?;
    let per_epoch = loader.batches_per_epoch() as u64;
    if per_epoch == 0 {
        return Err(Error::Config(format!(
            "the training set has {} images, fewer than one batch of {}",
            data.train.len(),
            args.batch_size()
        )));
    }
    // With --steps the epochs are as many as the steps take.
    let of = args.steps.map_or(args.epochs(), |s| s.div_ceil(per_epoch));
    report.start_epoch(state, per_epoch, state.batch_in_epoch, of);
    // An epoch's first batch is waited for before its step; the others inside the step before.
    let mut pending = loader.next();
    let mut wait = Duration::ZERO;
    if let Some(Ok((first, waited))) = &pending {
        trainer.start(&first.images)?;
        wait = *waited;
    }
    while let Some(next) = pending.take() {
        // A batch the loader could not make is reported here, once the step before it is done
        // (and saved, when a save was due).
        let (batch, _) = next?;
        let t0 = Instant::now();
        let own_wait = std::mem::take(&mut wait);
        let result = trainer.step(&batch.labels, || {
            pending = loader.next();
            match &pending {
                Some(Ok((next, next_wait))) => {
                    wait = *next_wait;
                    Some(next.images.as_slice())
                }
                _ => None,
            }
        })?;
        let took = t0.elapsed() + own_wait;
        // The wait for the next batch happened during this step; it is shown with this one.
        report.step(&trainer.state, &result, took, own_wait + wait)?;
        summary.losses.push(result.loss);
        summary.steps = trainer.state.step;
        // Every rank stops at the same step: a Ctrl-C seen by any of them stops all.
        let interrupted = trainer.agree(run.stop.load(Ordering::SeqCst))?;
        let budget_spent = !budget_left(&trainer.state, args);
        let periodic = args
            .checkpoint_every
            .is_some_and(|k| trainer.state.step.is_multiple_of(k));
        if interrupted || budget_spent || periodic {
            run.save(trainer, false, summary)?;
        }
        if interrupted {
            report.interrupted(summary.last_checkpoint.as_deref());
            summary.interrupted = true;
            return Ok(false);
        }
        if budget_spent {
            break;
        }
    }
    report.finish_steps();
    Ok(trainer.state.batch_in_epoch >= per_epoch)
}

/// An epoch's end: validation (each rank on its share of the set, the counts summed), the
/// learning-rate schedule, the epoch line and record. Returns whether the validation error is
/// the best so far.
fn end_epoch<E: Engine>(
    trainer: &mut Trainer<E>,
    report: &mut Reporter,
    run: &Run,
    summary: &mut TrainSummary,
) -> Result<bool> {
    let (args, data, replica) = (run.args, run.data, run.replica);
    let engines = trainer.engines();
    let share: Arc<dyn Dataset> = match replica.ranks {
        1 => data.val.clone(),
        n => Arc::new(EveryNth::new(data.val.clone(), replica.rank, n)),
    };
    let own = evaluate(
        engines,
        &mut trainer.model,
        share.as_ref(),
        &data.stats,
        &EvalOptions {
            batch: replica.batch,
            ten_crop: false,
            workers: args.workers,
        },
    )?;
    trainer.model.set_batch(engines, replica.batch)?;
    let n = own.images as f64;
    let mut counts = [
        (own.top1 as f64 * n).round(),
        (own.top5 as f64 * n).round(),
        n,
    ];
    trainer.sum_over_replicas(&mut counts)?;
    let images = counts[2].max(1.0);
    let val = EvalResult {
        top1: (counts[0] / images) as f32,
        top5: (counts[1] / images) as f32,
        images: counts[2] as usize,
        ..own
    };
    let schedule = Schedule {
        base_lr: args.lr,
        step_epochs: args.lr_step_epochs,
        patience: args.patience,
        max_drops: args.max_lr_drops,
    };
    let (improved, lr_before) = trainer.end_epoch(val.top1, &schedule);
    let state = &trainer.state;
    summary.epochs_completed = state.epoch;
    summary.last_val_top1 = Some(val.top1);
    summary.last_val_top5 = Some(val.top5);
    report.end_epoch(state, lr_before, &val)?;
    Ok(improved)
}

/// Every setting's range, for settings that may not have come through the flag parser (read back
/// from a checkpoint on --resume, or set by a library user): the parser's rules, checked again.
fn validate(args: &TrainArgs) -> Result<()> {
    let counts = [
        ("--batch-size", args.batch_size() as u64, 1),
        ("--steps", args.steps.unwrap_or(1), 1),
        ("--epochs", args.epochs.unwrap_or(1), 1),
        ("--classes", args.classes.unwrap_or(2) as u64, 2),
        ("--input-size", args.input_size() as u64, 1),
        ("--patience", args.patience as u64, 1),
        ("--lr-step-epochs", args.lr_step_epochs.unwrap_or(1), 1),
        ("--checkpoint-every", args.checkpoint_every.unwrap_or(1), 1),
        ("--builtin-train", args.builtin_train as u64, 1),
        ("--builtin-val", args.builtin_val as u64, 1),
    ];
    for (flag, value, min) in counts {
        if value < min {
            return Err(Error::Config(format!(
                "{flag} must be at least {min} (got {value})"
            )));
        }
    }
    if args.workers as u64 > settings::MAX_THREADS {
        return Err(Error::Config(format!(
            "--workers must be at most {} (got {})",
            settings::MAX_THREADS,
            args.workers
        )));
    }
    let reals = [
        ("--lr", settings::is_positive(args.lr)),
        ("--momentum", settings::is_below_one(args.momentum)),
        (
            "--weight-decay",
            settings::is_non_negative(args.weight_decay),
        ),
        ("--dropout", settings::is_below_one(args.dropout())),
        (
            "--warmup-epochs",
            settings::is_warmup_epochs(args.warmup_epochs),
        ),
        ("--lars-eta", settings::is_unit_fraction(args.lars_eta)),
    ];
    for (flag, check) in reals {
        check.map_err(|m| Error::Config(format!("{flag} {m}")))?;
    }
    // Before any work: a warmup the batch cannot have.
    Warmup::new(args.warmup_epochs, 1, args.batch_size())?;
    Ok(())
}

/// `--data` as an absolute path, so the run's saved settings name the same dataset from any
/// working directory.
fn with_absolute_data(args: &TrainArgs) -> Result<TrainArgs> {
    let mut args = args.clone();
    if let Some(dir) = &args.data {
        args.data = Some(std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?);
    }
    Ok(args)
}

/// Batches the loader keeps ready ahead of the engine.
const LOADER_PREFETCH: usize = 4;

/// Refuses, before any allocation, a configuration that cannot fit in this machine's memory, at
/// `batch` images per step on this process.
fn check_memory<E: Engine>(
    engines: &[E],
    args: &TrainArgs,
    classes: usize,
    batch: usize,
) -> Result<()> {
    let Some(available) = crate::memory::available() else {
        return Ok(());
    };
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        w => w,
    };
    let threads = host_threads(engines);
    let at = crate::memory::Placement {
        threads,
        net_in_host: threads > 0,
        // The prefetched ones, one being built by each worker, and the one in use.
        loader_batches: LOADER_PREFETCH + workers + 1,
    };
    crate::memory::check_training(&arch_from_args(args, classes)?, batch, at, available)
}

/// "input_size 99 -> 67" for each field in which two architectures differ.
fn arch_differences(saved: &ArchConfig, now: &ArchConfig) -> Vec<String> {
    let (a, b) = (serde_json::to_value(saved), serde_json::to_value(now));
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (a, b) else {
        return vec![format!("{saved:?} -> {now:?}")];
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k} {v} -> {}",
                b.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect()
}

/// A learning rate for people: four significant digits, so 0.01 / 10 in f32 prints as 0.001,
/// not 0.0009999999.
pub fn fmt_lr(lr: f32) -> String {
    format!("{}", format!("{lr:.3e}").parse::<f32>().unwrap_or(lr))
}

/// Which of a checkpoint's tensors [`load_weights`] copies, and how strictly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Resuming a run: every parameter and its momentum must match the model.
    Resume,
    /// Fine-tuning (`--init-from`): tensors whose shape differs, such as fc8 for another class
    /// count, keep their fresh initialisation; momentum is not read.
    FineTune,
}

/// Copies a checkpoint's tensors into the model as `load` says. Returns how many parameters
/// were loaded.
pub fn load_weights<E: Engine>(
    engines: &[E],
    model: &mut Network<E>,
    ckpt: &Checkpoint,
    load: Load,
) -> Result<usize> {
    let mut loaded = 0;
    let shapes = model.param_shapes();
    for t in &ckpt.params {
        let fits = shapes
            .iter()
            .any(|(name, shape)| *name == t.name && *shape == t.shape);
        if !fits && load == Load::FineTune {
            println!(
                "  {}: shape {:?} differs, freshly initialised",
                t.name, t.shape
            );
            continue;
        }
        model.write_param(engines, &t.name, &t.shape, &t.data, false)?;
        loaded += 1;
    }
    if load == Load::Resume {
        for t in &ckpt.momentum {
            model.write_param(engines, &t.name, &t.shape, &t.data, true)?;
        }
    }
    Ok(loaded)
}

/// "cpu (2 threads)", or for a split run where each column runs.
pub fn engines_description<E: Engine>(engines: &[E], split: bool, arch: &ArchConfig) -> String {
    if !split {
        return engines[0].name();
    }
    let cols = arch.columns();
    match crate::parallel::assign_columns(cols, engines.len()) {
        Ok(placement) => placement
            .iter()
            .enumerate()
            .map(|(c, &x)| format!("column {c} on {}", engines[x].name()))
            .collect::<Vec<_>>()
            .join(", "),
        Err(_) => engines[0].name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_side_keeps_the_papers_ratio() {
        assert_eq!(builtin_side(227), 256);
        assert!(builtin_side(67) >= 67);
    }
}
