//! The training run, top-down: data → loader threads → model on an engine → the paper's SGD →
//! validation, learning-rate schedule, checkpoints and the metrics log.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::arch::{ArchConfig, Net};
use crate::checkpoint::{Checkpoint, CheckpointDir, NamedTensor, TrainState};
use crate::data::{Augment, Dataset, Loader, LoaderConfig, Stats};
use crate::engine::{Engine, LrnParams};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions};
use crate::metrics::{topk_errors, EpochRecord, MetricsLog, StepRecord};
use crate::model::{Init, Sgd};
use crate::parallel::Network;
use crate::rng::{hash, Rng};

/// `alexnet-cli train` options. Defaults are the paper's (Section 5) except where the built-in
/// dataset needs otherwise (then the help says so).
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// A dataset made by `alexnet-cli prepare`. Without it, trains on the built-in procedural
    /// dataset (generated in memory from --seed).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Stop after this many SGD steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Passes over the training set. Default: 90 on --data (the paper's "roughly 90 cycles"),
    /// 10 on the built-in dataset.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Images per SGD step. Default: the paper's 128 with --data; 64 on the built-in dataset
    /// (its quick demo: twice the SGD steps in the same time).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Initial learning rate, equal for all layers (the paper: 0.01).
    #[arg(long, default_value_t = 0.01)]
    pub lr: f32,
    /// Momentum (the paper: 0.9).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// Weight decay (the paper: 0.0005).
    #[arg(long, default_value_t = 0.0005)]
    pub weight_decay: f32,
    /// Also apply weight decay to biases (cuda-convnet and Caffe do not; the paper is silent).
    #[arg(long)]
    pub decay_biases: bool,
    /// Seed for initialisation, data order, augmentation and dropout.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Engine threads (CPU engine; 0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Loader threads preparing batches ahead of the engine (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Number of classes (built-in dataset: how many to generate, default 10; with --data it
    /// must match the dataset).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Input side in pixels. 227 makes the paper's 55x55 conv1 maps exact; smaller values give
    /// the same layers on smaller maps, down to what the net's geometry allows (67 for the
    /// paper's nets, 15 for cifar10). Default: 227 with --data; 99 on the built-in
    /// dataset (its quick demo: about 1/5 of the FLOPs).
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Weight initialisation: `paper` (Section 5) or `caffe` (std 0.005 on fc6/fc7, biases 0.1),
    /// for when the paper's init leaves the loss flat at ln(classes). Default: paper with --data;
    /// caffe on the built-in dataset (its quick demo).
    #[arg(long, value_enum)]
    pub init: Option<InitArg>,
    /// Network: `paper` (two columns, Figure 2), `one-column` (footnote 2's comparison net) or
    /// `cifar10` (cuda-convnet's CIFAR-10 net, for --input-size 32).
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
    #[arg(long, value_name = "N", conflicts_with = "executors")]
    pub gpus: Option<usize>,
    /// The same split on N executors of --device (with the CPU engine: N engines sharing the
    /// cores), e.g. to run the model-parallel path without a GPU.
    #[arg(long, value_name = "N")]
    pub executors: Option<usize>,
    /// The layers whose columns read all columns of their input (the paper: conv3,fc6,fc7,fc8;
    /// "choosing the pattern of connectivity is a problem for cross-validation"). Any of
    /// conv2..conv5; the FC layers must stay in the list.
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    pub cross_column: Option<Vec<String>>,
    /// Dropout probability in fc6 and fc7. Default: the paper's 0.5 with --data; 0 on the
    /// built-in dataset (its quick demo: dropout "roughly doubles the number of iterations
    /// required to converge", Section 4.2).
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Scale kept units by 1/(1-p) while training instead of the paper's multiplying outputs by
    /// (1-p) at test time (PyTorch/Caffe convention).
    #[arg(long)]
    pub inverted_dropout: bool,
    /// Divide LRN's alpha by n (Caffe, cuda-convnet, PyTorch) instead of the paper's formula.
    #[arg(long)]
    pub lrn_alpha_over_n: bool,
    /// Divide the learning rate by 10 when validation top-1 error has not improved for this many
    /// epochs (the paper's heuristic), at most --max-lr-drops times.
    #[arg(long, default_value_t = 3)]
    pub patience: u32,
    /// How many times the learning rate may be divided by 10 (the paper: three).
    #[arg(long, default_value_t = 3)]
    pub max_lr_drops: u32,
    /// Use a fixed schedule instead: divide by 10 every this many epochs.
    #[arg(long)]
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
    /// metrics log (DIR/metrics.jsonl).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from DIR/last.safetensors: same weights, momentum, schedule, RNG and data position.
    #[arg(long, requires = "checkpoint_dir")]
    pub resume: bool,
    /// Start from the weights of a checkpoint (fine-tuning). A different class count gets a
    /// freshly initialised fc8.
    #[arg(long, conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Save a checkpoint every this many steps as well as after each epoch.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// How many step checkpoints to keep besides last and best.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Metrics log path (JSON lines). Default: CHECKPOINT_DIR/metrics.jsonl when a checkpoint
    /// directory is given.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Built-in dataset: training images.
    #[arg(long, default_value_t = 4096)]
    pub builtin_train: usize,
    /// Built-in dataset: validation images.
    #[arg(long, default_value_t = 512)]
    pub builtin_val: usize,
    /// No progress bar (one line per epoch instead).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitArg {
    Paper,
    Caffe,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresetArg {
    Paper,
    OneColumn,
    Cifar10,
}

impl PresetArg {
    /// The built-in table this names.
    pub fn net(self) -> Net {
        match self {
            PresetArg::Paper => Net::Paper,
            PresetArg::OneColumn => Net::OneColumn,
            PresetArg::Cifar10 => Net::Cifar10,
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
fn open_prepared(dir: &std::path::Path) -> Result<TrainData> {
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

    pub fn epochs(&self) -> u64 {
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
            (self.epochs.is_none(), format!("{DEMO_EPOCHS} epochs")),
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

/// Mutable state of a run: everything a checkpoint must hold to resume exactly.
fn fresh_state(args: &TrainArgs) -> TrainState {
    TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        lr: args.lr,
        best_val_top1: None,
        epochs_since_best: 0,
        lr_drops: 0,
        rng: Rng::new(args.seed),
        dropout_seed_base: hash(args.seed, 0xd209),
        data_seed: hash(args.seed, 0xda7a),
        threads: args.threads,
    }
}

/// Trains on `engines` until the step/epoch budget is spent or `stop` is raised (Ctrl-C): the
/// whole network on `engines[0]`, or with `--gpus` its columns spread over all of them.
pub fn train<E: Engine>(
    engines: &[E],
    args: &TrainArgs,
    stop: &AtomicBool,
) -> Result<TrainSummary> {
    validate(args)?;
    // ---- data ----
    let data = open_data(args)?;
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

    // ---- model: fresh, resumed, or initialised from another run ----
    let ckpt_dir = match &args.checkpoint_dir {
        Some(d) => Some(CheckpointDir::new(d, args.keep)?),
        None => None,
    };
    let init = match args.init() {
        InitArg::Paper => Init::Paper,
        InitArg::Caffe => Init::Caffe,
    };
    let split = args.split_executors().is_some();
    let mut model = Network::new(
        engines,
        split,
        arch.clone(),
        init,
        args.seed,
        args.batch_size(),
    )?;
    let mut state = fresh_state(args);
    if args.resume {
        let dir = ckpt_dir.as_ref().expect("clap requires --checkpoint-dir");
        let path = dir.last();
        let ckpt = Checkpoint::load(&path)?;
        if ckpt.arch != arch {
            return Err(Error::Checkpoint {
                path,
                msg: format!(
                    "was trained with a different architecture ({:?}); resume with the same flags",
                    ckpt.arch
                ),
            });
        }
        load_weights(engines, &mut model, &ckpt, true)?;
        state = ckpt.train_state.clone().ok_or_else(|| Error::Checkpoint {
            path: path.clone(),
            msg: "holds no training state (an inference-only file); use --init-from".into(),
        })?;
        println!(
            "resumed from {} at epoch {} step {}",
            path.display(),
            state.epoch,
            state.step
        );
    } else if let Some(path) = &args.init_from {
        let ckpt = Checkpoint::load(path)?;
        let reused = load_weights(engines, &mut model, &ckpt, false)?;
        println!("initialised {reused} tensors from {}", path.display());
    }

    let log_path = args.log.clone().or_else(|| {
        args.checkpoint_dir
            .as_ref()
            .map(|d| d.join("metrics.jsonl"))
    });
    let mut log = match &log_path {
        // On resume, records after the checkpoint's step (written before a crash) are dropped.
        Some(p) if args.resume => Some(MetricsLog::open_resume(p, state.step)?),
        Some(p) => Some(MetricsLog::open(p, false)?),
        None => None,
    };
    let sgd = Sgd {
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        decay_biases: args.decay_biases,
    };
    let epochs = args.epochs();
    let augment = Augment {
        crop: args.input_size(),
        random_crop: !(args.no_augment || args.no_random_crop),
        flip: !(args.no_augment || args.no_flip),
        pca_std: if args.no_augment || args.no_pca {
            0.0
        } else {
            0.1
        },
        subtract_mean: true,
    };
    println!(
        "training on {} with {}: {} train / {} val images, {} classes, batch {}, lr {}",
        data.source,
        engines_description(engines, split, &arch),
        data.train.len(),
        data.val.len(),
        classes,
        args.batch_size(),
        state.lr
    );
    let demo = args.demo_defaults();
    if !demo.is_empty() {
        println!(
            "built-in quick demo defaults: {} (any flag overrides; --input-size 227 --batch-size \
             128 --init paper --dropout 0.5 is the paper's setting)",
            demo.join(", ")
        );
    }

    // ---- the loop ----
    let mut summary = TrainSummary {
        steps: state.step,
        epochs_completed: state.epoch,
        losses: Vec::new(),
        last_val_top1: None,
        last_val_top5: None,
        interrupted: false,
        last_checkpoint: None,
    };
    let flat = FlatLossDetector::new(classes);
    let mut flat_warned = false;
    let step_budget_left = |state: &TrainState| args.steps.is_none_or(|s| state.step < s);
    while state.epoch < epochs && step_budget_left(&state) {
        let mut loader = Loader::new(
            data.train.clone(),
            data.stats.clone(),
            LoaderConfig {
                batch: args.batch_size(),
                workers: args.workers,
                prefetch: 4,
                seed: state.data_seed,
                augment: augment.clone(),
                shuffle: true,
                drop_last: true,
            },
            state.epoch,
            state.batch_in_epoch as usize,
        )?;
        let per_epoch = loader.batches_per_epoch();
        if per_epoch == 0 {
            return Err(Error::Config(format!(
                "the training set has {} images, fewer than one batch of {}",
                data.train.len(),
                args.batch_size()
            )));
        }
        let bar = progress_bar(args.quiet, per_epoch as u64, state.epoch + 1, epochs);
        bar.set_position(state.batch_in_epoch);
        let (mut epoch_loss, mut epoch_top1, mut epoch_top5, mut epoch_n) =
            (0.0, 0usize, 0usize, 0);
        let epoch_start = Instant::now();
        // Each step's forward runs on a batch uploaded during the step before: the next batch is
        // fetched and uploaded while the engine works through the forward, not after the step.
        let mut pending = loader.next();
        let mut first_wait = Duration::ZERO;
        if let Some(Ok((first, waited))) = &pending {
            model.prefetch_input(engines, &first.images)?;
            first_wait = *waited;
        }
        while let Some(next) = pending.take() {
            // A batch the loader could not make is reported here, once the step before it is
            // done (and checkpointed, when one was due).
            let (batch, _) = next?;
            let t0 = Instant::now();
            // An epoch's first batch was waited for before the step began; the others are waited
            // for inside the step before theirs.
            let own_wait = std::mem::take(&mut first_wait);
            let step_seed = hash(state.dropout_seed_base, state.step);
            model.forward_prefetched(engines, Some(step_seed))?;
            pending = loader.next();
            let mut waited = own_wait;
            if let Some(Ok((next, next_wait))) = &pending {
                model.prefetch_input(engines, &next.images)?;
                waited += *next_wait;
            }
            let loss = model.backward(engines, &batch.labels, Some(step_seed))?;
            if !loss.is_finite() {
                let culprit = model
                    .find_non_finite(engines)?
                    .unwrap_or_else(|| "the loss itself (logits overflowed)".into());
                let last = summary
                    .last_checkpoint
                    .as_ref()
                    .map(|p| format!("; the last good checkpoint is {}", p.display()))
                    .unwrap_or_else(|| "; no checkpoint was written yet".into());
                return Err(Error::NonFinite(format!(
                    "loss became {loss} at step {} (epoch {}): first non-finite value in {culprit}{last}. \
                     Try a lower --lr (now {}) or --init caffe",
                    state.step,
                    state.epoch + 1,
                    state.lr
                )));
            }
            model.sgd_step(engines, state.lr, &sgd)?;
            let probs = model.train_probabilities(engines)?;
            let top1 = topk_errors(&probs, classes, &batch.labels, 1);
            let top5 = topk_errors(&probs, classes, &batch.labels, 5.min(classes));
            let seconds = (t0.elapsed() + own_wait).as_secs_f64();
            let images_per_s = batch.n as f64 / seconds.max(1e-9);
            state.step += 1;
            state.batch_in_epoch += 1;
            epoch_loss += loss as f64 * batch.n as f64;
            epoch_top1 += top1;
            epoch_top5 += top5;
            epoch_n += batch.n;
            summary.losses.push(loss);
            summary.steps = state.step;
            if let Some(log) = log.as_mut() {
                log.step(&StepRecord {
                    epoch: state.epoch + 1,
                    step: state.step,
                    lr: state.lr,
                    loss,
                    top1_err: top1 as f32 / batch.n as f32,
                    top5_err: top5 as f32 / batch.n as f32,
                    images_per_s: images_per_s as f32,
                    data_wait_s: waited.as_secs_f32(),
                })?;
            }
            bar.set_message(format!(
                "loss {loss:.4}  top-1 {:.1}%  top-5 {:.1}%  {images_per_s:.1} img/s  data-wait {:.0} ms",
                100.0 * top1 as f32 / batch.n as f32,
                100.0 * top5 as f32 / batch.n as f32,
                waited.as_secs_f64() * 1e3
            ));
            bar.inc(1);
            if !flat_warned && flat.is_flat(&summary.losses) {
                flat_warned = true;
                bar.suspend(|| eprintln!("{}", flat.hint(args.init() == InitArg::Paper)));
            }
            let interrupted = stop.load(Ordering::SeqCst);
            let budget_spent = !step_budget_left(&state);
            let periodic = args
                .checkpoint_every
                .is_some_and(|k| state.step.is_multiple_of(k));
            if interrupted || budget_spent || periodic {
                if let Some(dir) = &ckpt_dir {
                    let ck = make_checkpoint(engines, &model, &data, &state, args)?;
                    summary.last_checkpoint = Some(dir.save(&ck, state.step, false)?);
                }
            }
            if interrupted {
                bar.abandon_with_message("interrupted: state saved");
                summary.interrupted = true;
                return Ok(summary);
            }
            if budget_spent {
                break;
            }
        }
        let finished_epoch = state.batch_in_epoch as usize >= per_epoch;
        bar.finish();
        if !finished_epoch {
            break;
        }

        // ---- end of epoch: validation, schedule, checkpoint ----
        let val = evaluate(
            engines,
            &mut model,
            data.val.as_ref(),
            &data.stats,
            &EvalOptions {
                batch: args.batch_size(),
                ten_crop: false,
                workers: args.workers,
            },
        )?;
        model.set_batch(engines, args.batch_size())?;
        state.epoch += 1;
        state.batch_in_epoch = 0;
        summary.epochs_completed = state.epoch;
        summary.last_val_top1 = Some(val.top1);
        summary.last_val_top5 = Some(val.top5);
        let improved = state.best_val_top1.is_none_or(|b| val.top1 < b);
        if improved {
            state.best_val_top1 = Some(val.top1);
            state.epochs_since_best = 0;
        } else {
            state.epochs_since_best += 1;
        }
        let lr_before = state.lr;
        update_lr(&mut state, args);
        let n = epoch_n.max(1) as f64;
        let record = EpochRecord {
            epoch: state.epoch,
            step: state.step,
            lr: lr_before,
            train_loss: (epoch_loss / n) as f32,
            train_top1: (epoch_top1 as f64 / n) as f32,
            train_top5: (epoch_top5 as f64 / n) as f32,
            val_top1: val.top1,
            val_top5: val.top5,
            val_top1_10crop: None,
            val_top5_10crop: None,
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        println!(
            "epoch {}/{}: train loss {:.4}, train top-1 {:.2}%, val top-1 {:.2}% top-5 {:.2}% (chance {:.1}%){}",
            state.epoch,
            epochs,
            record.train_loss,
            100.0 * record.train_top1,
            100.0 * val.top1,
            100.0 * val.top5,
            100.0 * (1.0 - 1.0 / classes as f32),
            if state.lr < lr_before {
                format!("; learning rate {lr_before} -> {}", state.lr)
            } else {
                String::new()
            }
        );
        if let Some(log) = log.as_mut() {
            log.epoch(&record)?;
        }
        if let Some(dir) = &ckpt_dir {
            let ck = make_checkpoint(engines, &model, &data, &state, args)?;
            summary.last_checkpoint = Some(dir.save(&ck, state.step, improved)?);
        }
        if stop.load(Ordering::SeqCst) {
            summary.interrupted = true;
            return Ok(summary);
        }
    }
    Ok(summary)
}

fn validate(args: &TrainArgs) -> Result<()> {
    if args.batch_size() == 0 {
        return Err(Error::Config("--batch-size must be at least 1".into()));
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return Err(Error::Config(format!(
            "--lr must be positive (got {})",
            args.lr
        )));
    }
    if args.steps == Some(0) || args.epochs == Some(0) {
        return Err(Error::Config(
            "--steps and --epochs must be at least 1".into(),
        ));
    }
    Ok(())
}

/// The paper's heuristic ("divide the learning rate by 10 when the validation error rate stopped
/// improving", at most three times) or a fixed step schedule.
fn update_lr(state: &mut TrainState, args: &TrainArgs) {
    match args.lr_step_epochs {
        Some(every) => {
            let drops = (state.epoch / every.max(1)) as i32;
            state.lr = args.lr * 0.1f32.powi(drops);
        }
        None => {
            if state.epochs_since_best >= args.patience && state.lr_drops < args.max_lr_drops {
                state.lr /= 10.0;
                state.lr_drops += 1;
                state.epochs_since_best = 0;
            }
        }
    }
}

/// Copies a checkpoint's tensors into the model. `exact`: every tensor must match (resume,
/// momentum too). Otherwise (fine-tuning) tensors whose shape differs, such as fc8 for another
/// class count, keep their fresh initialisation. Returns how many tensors were loaded.
pub fn load_weights<E: Engine>(
    engines: &[E],
    model: &mut Network<E>,
    ckpt: &Checkpoint,
    exact: bool,
) -> Result<usize> {
    let mut loaded = 0;
    let shapes = model.param_shapes();
    for t in &ckpt.params {
        let fits = shapes
            .iter()
            .any(|(name, shape)| *name == t.name && *shape == t.shape);
        if !fits && !exact {
            println!(
                "  {}: shape {:?} differs, freshly initialised",
                t.name, t.shape
            );
            continue;
        }
        model.write_param(engines, &t.name, &t.shape, &t.data, false)?;
        loaded += 1;
    }
    if exact {
        for t in &ckpt.momentum {
            model.write_param(engines, &t.name, &t.shape, &t.data, true)?;
        }
    }
    Ok(loaded)
}

/// A self-contained checkpoint of the run as it stands.
fn make_checkpoint<E: Engine>(
    engines: &[E],
    model: &Network<E>,
    data: &TrainData,
    state: &TrainState,
    args: &TrainArgs,
) -> Result<Checkpoint> {
    let named = |v: crate::model::HostTensors| {
        v.into_iter()
            .map(|(name, shape, data)| NamedTensor { name, shape, data })
            .collect::<Vec<_>>()
    };
    let mut extra = std::collections::BTreeMap::new();
    extra.insert("data".to_string(), data.source.clone());
    extra.insert("args".to_string(), format!("{args:?}"));
    Ok(Checkpoint {
        arch: model.cfg().clone(),
        class_names: data.class_names.clone(),
        mean: Some(data.stats.mean.clone()),
        mean_side: data.stats.side,
        eigval: Some(data.stats.eigval),
        eigvec: Some(data.stats.eigvec),
        params: named(model.read_params(engines)?),
        momentum: named(model.read_momentum(engines)?),
        train_state: Some(state.clone()),
        extra_metadata: extra,
    })
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
                "The paper's initialisation (std 0.01, biases 1) is known to stall like this; try --init caffe, or a lower --lr."
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

    #[test]
    fn builtin_side_keeps_the_papers_ratio() {
        assert_eq!(builtin_side(227), 256);
        assert!(builtin_side(67) >= 67);
    }
}
