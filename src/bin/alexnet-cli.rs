//! alexnet-cli: the command-line front end. It parses flags and calls the library; all the work
//! (and every error message) lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use alexnet::arch::{summary_table, ArchConfig, Net};
use alexnet::checkpoint::TrainState;
use alexnet::data::Stats;
use alexnet::dist::Comm;
use alexnet::engine::cpu::{ConvAlgorithm, CpuEngine};
use alexnet::engine::Engine;
use alexnet::eval::{evaluate_ensemble, predict_files, EvalOptions};
use alexnet::model::{Init, Model, Sgd};
use alexnet::parallel::{Network, NetworkOps};
use alexnet::settings::{self, MAX_BATCH, MAX_CLASSES, MAX_INPUT, MAX_THREADS};
use alexnet::train::{train_in, TrainArgs};
use alexnet::trainer::{SyncKind, Trainer};
use alexnet::{Error, Result};

#[derive(Parser)]
#[command(
    name = "alexnet-cli",
    version,
    about = "AlexNet (Krizhevsky, Sutskever & Hinton, 2012): train, evaluate and inspect",
    long_about = "AlexNet as in Krizhevsky, Sutskever & Hinton (2012): the paper's two-column \
network, its SGD rule, data augmentation and 10-crop evaluation, on a fast CPU engine or \
(built with --features cuda) an NVIDIA GPU.\n\nStart with `alexnet-cli train`: with no \
arguments it trains the paper's net on a built-in procedural dataset (no download needed), with a \
progress bar, validation after each epoch, and a hint if the loss stays flat."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train (the built-in dataset by default, or --data DIR from `prepare`).
    Train {
        // Boxed: the training flags are most of the enum's size.
        #[command(flatten)]
        args: Box<TrainArgs>,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Print the layer table: shapes, parameters and multiply-adds per layer.
    Summary {
        /// Number of classes. Default: the net's own (1000 for the paper's nets, 10 for
        /// cifar10, a net file's last layer's width).
        #[arg(long, value_parser = settings::count_in(2, MAX_CLASSES))]
        classes: Option<usize>,
        /// Input side in pixels. Default: the net's own (227, cifar10 32, a net file's
        /// `input_size` or 227).
        #[arg(long, value_parser = settings::count_in(1, MAX_INPUT))]
        input_size: Option<usize>,
        /// `paper` (two columns), `one-column` (footnote 2), `cifar10` (cuda-convnet's),
        /// `torchvision` (torchvision's alexnet, 224 px) or `caffe` (Caffe's bvlc_alexnet).
        #[arg(long, value_enum, default_value_t = alexnet::train::PresetArg::Paper)]
        preset: alexnet::train::PresetArg,
        /// A net file (TOML, or JSON by its .json extension; one section per layer) instead of
        /// a preset.
        #[arg(long, value_name = "FILE", conflicts_with = "preset")]
        net: Option<PathBuf>,
    },
    /// A peer's pretrained AlexNet (torchvision's state_dict, Caffe's .caffemodel) as a
    /// checkpoint here, with its preprocessing, for predict, eval and train --init-from.
    Import(alexnet::import::ImportArgs),
    /// Turn a folder of images (ImageFolder or ILSVRC layout) into a packed dataset with its
    /// mean image and RGB PCA.
    Prepare(alexnet::data::prepare::PrepareArgs),
    /// Check every byte of a prepared dataset against its checksums (reads it all once).
    Verify {
        /// Prepared dataset directory.
        data: PathBuf,
    },
    /// Top-1/top-5 error of one checkpoint or an ensemble on a prepared validation set.
    Eval {
        /// Checkpoint(s); several are averaged (the paper's ensembles).
        #[arg(long = "checkpoint", required = true)]
        checkpoints: Vec<PathBuf>,
        /// Prepared dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// Which split to evaluate.
        #[arg(long, default_value = "val")]
        split: String,
        /// Also report the paper's 10-crop average (four corners + centre, and reflections).
        #[arg(long)]
        ten_crop: bool,
        /// Print per-class accuracy too.
        #[arg(long)]
        per_class: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Images per forward pass.
        #[arg(long, default_value_t = 128, value_parser = settings::count_in(1, MAX_BATCH))]
        batch_size: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Top-5 predictions for image files (Figure 4, left).
    Predict {
        /// Checkpoint(s); several are averaged.
        #[arg(long = "checkpoint", required = true)]
        checkpoints: Vec<PathBuf>,
        /// Average the ten crops instead of using the centre crop.
        #[arg(long)]
        ten_crop: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// How many classes to list (at most the net's classes are).
        #[arg(long, default_value_t = 5, value_parser = settings::count(1))]
        top: usize,
        /// Image files (any format the `image` crate decodes).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Also draw Figure 4's left panel to this PNG: each image with its top classes as bars.
        #[arg(long, value_name = "PNG")]
        picture: Option<PathBuf>,
        /// The true class of each image, in order (an index, a class name, or the name after a
        /// synset id): shown under the image, its bar red in the picture, marked in the output.
        #[arg(long = "label", value_name = "CLASS")]
        labels: Vec<String>,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Render a metrics log (metrics.jsonl) to a PNG of loss and error curves.
    Plot(alexnet::plot::PlotArgs),
    // Both set here: a doc comment would replace the long help with its own line.
    #[command(
        about = "Figure 3: the first layer's kernels as a PNG, and how colour-specific each column's are",
        long_about = alexnet::figures::KERNELS_HELP
    )]
    Kernels(alexnet::figures::KernelsArgs),
    #[command(
        about = "Every image's fc7 feature vector (the layer under the classifier) to a safetensors file",
        long_about = alexnet::features::FEATURES_HELP
    )]
    Features {
        #[command(flatten)]
        args: alexnet::features::FeaturesArgs,
        #[command(flatten)]
        device: DeviceArgs,
    },
    #[command(
        about = "Figure 4, right: each query's nearest training images in fc7 space, as a PNG and JSON",
        long_about = alexnet::features::NEIGHBOURS_HELP
    )]
    Neighbours {
        #[command(flatten)]
        args: alexnet::features::NeighboursArgs,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Loader throughput: JPEG decode+resize per core (preparation) and augmented images/s
    /// (training), and the cores needed to feed 10,000 images/s.
    BenchLoader {
        /// Loader threads for the end-to-end measurement (0 = one per core).
        #[arg(long, default_value_t = 0, value_parser = settings::count_in(0, MAX_THREADS))]
        workers: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0, value_parser = settings::seconds)]
        seconds: f64,
    },
    /// Training throughput of the full model: images/s and time per layer. With --inference,
    /// the test-mode forward's throughput at --batch-size and its latency at batch 1.
    Bench {
        /// Time the test-mode forward (eval, predict, features) instead of training steps.
        #[arg(long, conflicts_with_all = ["gpus", "executors"])]
        inference: bool,
        #[arg(long, default_value_t = 128, value_parser = settings::count_in(1, MAX_BATCH))]
        batch_size: usize,
        /// Timed steps (after one warm-up step).
        #[arg(long, default_value_t = 3, value_parser = settings::count(1))]
        steps: usize,
        #[arg(long, default_value_t = 1000, value_parser = settings::count_in(2, MAX_CLASSES))]
        classes: usize,
        #[arg(long, default_value_t = 227, value_parser = settings::count_in(1, MAX_INPUT))]
        input_size: usize,
        /// Run the columns on N GPUs (model parallelism, as `train --gpus N`; implies --device
        /// cuda) and report the bytes that cross between them per step.
        #[arg(long, value_name = "N", conflicts_with = "executors", value_parser = settings::count_in(1, settings::MAX_EXECUTORS))]
        gpus: Option<usize>,
        /// The same split on N executors of --device (CPU: engines sharing the cores).
        #[arg(long, value_name = "N", value_parser = settings::count_in(1, settings::MAX_EXECUTORS))]
        executors: Option<usize>,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// The paper's experiments, each a command that writes a PNG and/or JSON of its numbers.
    #[command(subcommand)]
    Experiment(Experiment),
    /// The ablations of Sections 3.3-4.2: the paper's net and each variant (no LRN, pool 2/2,
    /// no PCA lighting, dropout 0, one column) with the same seed and steps, validated; prints
    /// each one's top-1/top-5 change against the full net beside the paper's. Writes
    /// OUT/ablate.json.
    Ablate {
        #[command(flatten)]
        args: alexnet::experiment::ablate::AblateArgs,
        #[command(flatten)]
        device: DeviceArgs,
    },
}

/// `alexnet-cli experiment ...`: the paper's experiments (src/experiment/).
#[derive(Subcommand)]
enum Experiment {
    /// Figure 1: the four-layer CIFAR-10 net with ReLUs and with tanh, each at the learning
    /// rate a short sweep finds fastest, no regularisation, raced to 25% training error.
    /// Writes OUT/fig1.png and OUT/fig1.json.
    Fig1 {
        #[command(flatten)]
        args: alexnet::experiment::fig1::Fig1Args,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Section 3.3's CIFAR-10 claim: the same net without and with LRN (the paper: 13% vs 11%
    /// test error), tested on the test batches. Writes OUT/cifar-lrn.json.
    CifarLrn {
        #[command(flatten)]
        args: alexnet::experiment::fig1::CifarLrnArgs,
        #[command(flatten)]
        device: DeviceArgs,
    },
}

#[derive(clap::Args, Clone, Debug)]
struct DeviceArgs {
    /// Engine to run on.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// CUDA device index.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
    /// CPU engine threads (0 = all cores).
    #[arg(long, default_value_t = 0, value_parser = settings::count_in(0, MAX_THREADS))]
    threads: usize,
    /// CPU engine: how convolutions are computed. `winograd`: Winograd's minimal filtering
    /// (F(4x4,3x3), F(3x3,5x5)) for the stride-1 3x3 and 5x5 convolutions of a batch, on CPUs
    /// with AVX2 and FMA, im2col + GEMM for the others: the same function with 2.6-4.6x fewer
    /// multiply-adds, its f32 rounding errors a few times im2col's. `im2col`: im2col + GEMM for
    /// every convolution.
    #[arg(long = "cpu-conv", value_enum, default_value_t = ConvAlgorithm::default())]
    cpu_conv: ConvAlgorithm,
    /// Allow TF32 tensor-core GEMMs on the GPU (faster, ~1e-3 relative error).
    #[arg(long)]
    tf32: bool,
    /// GEMM precision on the GPU: f32, or bf16 (every GEMM's operands rounded to bf16, 8-bit
    /// mantissa, ~4e-3 relative each; f32 products, sums, weights, SGD state and LRN). CUDA only.
    #[arg(long, value_enum, default_value_t = Precision::F32, conflicts_with = "tf32")]
    precision: Precision,
    /// GPU convolution scratch in MiB: the im2col of a chunk of images. More means fewer,
    /// larger GEMMs per layer (the whole batch of 128 at once from about 1 GiB). Default: 1/32
    /// of the card's memory, between 256 MiB and 2 GiB.
    #[arg(long = "gpu-scratch-mib", value_parser = clap::value_parser!(u64).range(1..))]
    gpu_scratch_mib: Option<u64>,
    /// GPU engine option: convolution forward and backward-data as one GEMM per group over the
    /// whole chunk of images (m = images x output positions) instead of one strided-batched GEMM
    /// per image; needs more scratch per image. Same results to f32 rounding.
    #[arg(long = "gpu-conv-whole-chunk")]
    gpu_conv_whole_chunk: bool,
    /// GPU engine option: LRN with one thread per pixel walking the channels with a running
    /// window sum (each value read from memory once) instead of one thread per value.
    #[arg(long = "gpu-lrn-by-pixel")]
    gpu_lrn_by_pixel: bool,
    /// GPU engine option: the prefetched batch's host-to-device copy on a copy stream of its own,
    /// overlapping the backward's kernels, instead of after the forward on the compute stream.
    #[arg(long = "gpu-copy-stream")]
    gpu_copy_stream: bool,
    /// How data-parallel ranks (under mpirun) sum their gradients. `host`: copied to host
    /// memory and summed by MPI, on every engine. `nccl`: summed in GPU memory by NCCL on a
    /// stream beside the backward (--device cuda, a binary built with --features nccl); in one
    /// process it still runs, over one rank, so that one GPU can check the path.
    #[arg(long = "all-reduce", value_enum, default_value_t = AllReduce::Host)]
    all_reduce: AllReduce,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum AllReduce {
    Host,
    Nccl,
}

impl DeviceArgs {
    /// The device flags to repeat when resuming (the run's settings come from its checkpoint;
    /// these are this process's, so they are not).
    fn resume_flags(&self) -> String {
        let mut flags = String::new();
        if self.device == Device::Cuda {
            flags.push_str(&format!(" --device cuda --gpu {}", self.gpu));
        }
        if self.threads != 0 {
            flags.push_str(&format!(" --threads {}", self.threads));
        }
        if self.cpu_conv != ConvAlgorithm::default() {
            flags.push_str(" --cpu-conv im2col");
        }
        for (on, flag) in [
            (self.tf32, " --tf32"),
            (self.precision == Precision::Bf16, " --precision bf16"),
            (self.gpu_conv_whole_chunk, " --gpu-conv-whole-chunk"),
            (self.gpu_lrn_by_pixel, " --gpu-lrn-by-pixel"),
            (self.gpu_copy_stream, " --gpu-copy-stream"),
            (self.all_reduce == AllReduce::Nccl, " --all-reduce nccl"),
        ] {
            if on {
                flags.push_str(flag);
            }
        }
        flags
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    Cpu,
    Cuda,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Precision {
    F32,
    Bf16,
}

/// Runs `$body` with `$es` bound to `$count` executors of the kind the flags ask for: CPU
/// engines sharing `$threads` threads, or CUDA engines on consecutive GPUs from `--gpu`.
macro_rules! with_engines {
    ($dev:expr, $threads:expr, $count:expr, |$es:ident| $body:expr) => {
        // A closure called at once: the set-up's errors and the body's (`?`, `return`) are the
        // value, not returned from the caller, which can then act on every one of them (under
        // mpirun: end the other ranks).
        (|| -> Result<()> {
            let dev: &DeviceArgs = $dev;
            let (threads, count): (usize, usize) = ($threads, $count);
            match dev.device {
                Device::Cpu => {
                    if dev.precision != Precision::F32 {
                        return Err(Error::Config(
                            "--precision bf16 runs on the CUDA engine only (add --device cuda); \
                             the CPU engine computes in f32"
                                .into(),
                        ));
                    }
                    if dev.all_reduce == AllReduce::Nccl {
                        return Err(Error::Config(
                            "--all-reduce nccl sums GPU memory: add --device cuda, or drop it (CPU \
                             ranks sum through MPI)"
                                .into(),
                        ));
                    }
                    let $es = cpu_engines(threads, count, dev.cpu_conv)?;
                    $body
                }
                Device::Cuda => {
                    if dev.cpu_conv != ConvAlgorithm::default() {
                        return Err(Error::Config(
                            "--cpu-conv chooses the CPU engine's convolutions; the CUDA engine \
                             computes them with cuBLAS GEMMs (drop --cpu-conv, or --device cuda)"
                                .into(),
                        ));
                    }
                    #[cfg(feature = "cuda")]
                    {
                        let $es = cuda_engines(dev, count)?;
                        $body
                    }
                    #[cfg(not(feature = "cuda"))]
                    {
                        let _ = count;
                        Err::<(), Error>(Error::NoDevice(
                            "this alexnet-cli was built without CUDA; rebuild with \
                             `cargo build --release --features cuda`"
                                .into(),
                        ))
                    }
                }
            }
        })()
    };
}

/// `count` CPU executors splitting `threads` (0 = all cores) between them, computing
/// convolutions by `conv`.
fn cpu_engines(threads: usize, count: usize, conv: ConvAlgorithm) -> Result<Vec<CpuEngine>> {
    if count <= 1 {
        return Ok(vec![CpuEngine::new(threads)?.with_conv(conv)]);
    }
    let total = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    (0..count)
        .map(|_| Ok(CpuEngine::new((total / count).max(1))?.with_conv(conv)))
        .collect()
}

/// `count` CUDA engines on GPUs --gpu, --gpu+1, ...; with fewer GPUs than that, several engines
/// (each with its own stream) share a GPU, with a notice, so the multi-device code path still
/// runs. Peer access is enabled between distinct GPUs.
#[cfg(feature = "cuda")]
fn cuda_engines(dev: &DeviceArgs, count: usize) -> Result<Vec<alexnet::engine::cuda::CudaEngine>> {
    use alexnet::engine::cuda::{device_count, enable_peer_access, CudaEngine};
    let physical = device_count()?;
    if physical == 0 {
        return Err(Error::NoDevice(
            "the CUDA runtime reports 0 devices (check nvidia-smi); run without --device cuda \
             (and --gpus) to train on the CPU"
                .into(),
        ));
    }
    let available = physical.saturating_sub(dev.gpu).max(1);
    let devices: Vec<usize> = (0..count.max(1)).map(|i| dev.gpu + i % available).collect();
    if count > available {
        eprintln!(
            "notice: {count} devices asked for but {available} GPU(s) available from --gpu {}: \
             executors run on GPUs {devices:?} (several columns share a GPU, each on its own \
             stream)",
            dev.gpu
        );
    }
    for &a in &devices {
        for &b in &devices {
            if a != b && !enable_peer_access(a, b)? {
                eprintln!(
                    "notice: GPU {a} cannot access GPU {b} directly; copies go through host memory"
                );
            }
        }
    }
    devices
        .iter()
        .map(|&d| {
            let e = CudaEngine::new(d)?;
            e.set_tf32(dev.tf32)?;
            e.set_bf16(dev.precision == Precision::Bf16)?;
            e.set_conv_whole_chunk(dev.gpu_conv_whole_chunk);
            e.set_lrn_by_pixel(dev.gpu_lrn_by_pixel);
            e.set_copy_stream(dev.gpu_copy_stream);
            e.set_nccl_all_reduce(dev.all_reduce == AllReduce::Nccl);
            if let Some(mib) = dev.gpu_scratch_mib {
                e.set_scratch_budget((mib as usize) << 18);
            }
            Ok(e)
        })
        .collect()
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // On --resume, the flags given (not their defaults) are compared with the run's settings.
    if let (Command::Train { args, .. }, Some(train)) =
        (&mut cli.command, matches.subcommand_matches("train"))
    {
        args.explicit = settings::explicit_flags(train);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One write: under mpirun several ranks' messages must not interleave.
            alexnet::dist::eprint_line(&format!("error: {err}"));
            ExitCode::FAILURE
        }
    }
}

/// Under mpirun, one rank's error would leave the others waiting in their next collective (and
/// this one in MPI_Finalize) until the timeout: it ends them all now, with the message.
fn ending_every_rank_on_error(comm: &Comm, result: Result<()>) -> Result<()> {
    match result {
        Err(e) if comm.size() > 1 => comm.abort(&e.to_string()),
        other => other,
    }
}

/// `train` on this process's engines: one rank of a data-parallel run, or the whole run.
fn train_command(
    device: &DeviceArgs,
    threads: usize,
    executors: usize,
    args: &TrainArgs,
    stop: &AtomicBool,
    comm: &Comm,
) -> Result<()> {
    with_engines!(device, threads, executors, |es| {
        let s = train_in(&es, args, stop, comm)?;
        if comm.rank() != 0 {
            return Ok(());
        }
        println!(
            "{} {} steps{}",
            if s.interrupted {
                "stopped after"
            } else {
                "done:"
            },
            s.steps,
            match (s.last_val_top1, s.last_val_top5) {
                (Some(a), Some(b)) => format!(
                    ", validation top-1 error {:.2}%, top-5 error {:.2}%",
                    100.0 * a,
                    100.0 * b
                ),
                _ => String::new(),
            }
        );
        match &s.last_checkpoint {
            Some(p) => println!(
                "saved {}\ncontinue with: alexnet-cli train --checkpoint-dir {} --resume{}",
                p.display(),
                s.run_dir.display(),
                device.resume_flags()
            ),
            None => println!("no checkpoint was written (no step completed)"),
        }
        Ok(())
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train { args, device } => {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            // A second Ctrl-C kills the process the usual way.
            let _ = ctrlc::set_handler(move || {
                if flag.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!("\nCtrl-C: finishing this step and saving (press again to abort)");
            });
            let threads = device.threads;
            let mut device = device;
            if args.gpus.is_some() {
                device.device = Device::Cuda;
            }
            let executors = args.split_executors().unwrap_or(1);
            // Under mpirun: one data-parallel rank of several, on the GPU of its local rank.
            let comm = Comm::from_env()?;
            if comm.size() > 1 {
                device.gpu += comm.local_rank();
            }
            let result = train_command(&device, threads, executors, &args, &stop, &comm);
            ending_every_rank_on_error(&comm, result)
        }
        Command::Experiment(Experiment::Fig1 { args, device }) => {
            with_engines!(&device, device.threads, 1, |es| {
                alexnet::experiment::fig1::run_fig1(&es, &args).map(drop)
            })
        }
        Command::Ablate { args, device } => with_engines!(&device, device.threads, 1, |es| {
            alexnet::experiment::ablate::run_ablate(&es, &args).map(drop)
        }),
        Command::Experiment(Experiment::CifarLrn { args, device }) => {
            with_engines!(&device, device.threads, 1, |es| {
                alexnet::experiment::fig1::run_cifar_lrn(&es, &args).map(drop)
            })
        }
        Command::Summary {
            classes,
            input_size,
            preset,
            net,
        } => {
            let net = match net {
                Some(path) => Net::Table(alexnet::netfile::read(&path)?),
                None => preset.net(),
            };
            let cfg = ArchConfig::for_net(net, classes, input_size);
            print!("{}", summary_table(&cfg)?);
            Ok(())
        }
        Command::Import(args) => {
            let ckpt = alexnet::import::import(&args)?;
            println!(
                "wrote {}: net {}, {} classes, {}x{} input",
                args.out.display(),
                ckpt.arch.net.label(),
                ckpt.arch.classes,
                ckpt.arch.input_size,
                ckpt.arch.input_size
            );
            Ok(())
        }
        Command::Prepare(args) => {
            alexnet::data::prepare::prepare(&args)?;
            Ok(())
        }
        Command::Verify { data } => {
            println!("{}", alexnet::data::packed::verify(&data)?);
            Ok(())
        }
        Command::Eval {
            checkpoints,
            data,
            split,
            ten_crop,
            per_class,
            json,
            batch_size,
            device,
        } => with_engines!(&device, device.threads, 1, |es| {
            let (mut models, names, _) = load_models(&es, &checkpoints, batch_size)?;
            let ds = alexnet::data::packed::PackedDataset::open(&data, &split)?;
            let stats = alexnet::data::packed::PackedDataset::stats(&data)?;
            let r = evaluate_ensemble(
                &es,
                &mut models,
                &ds,
                &stats,
                &EvalOptions {
                    batch: batch_size,
                    ten_crop,
                    workers: 0,
                },
            )?;
            if json {
                let v = serde_json::json!({
                    "checkpoints": checkpoints,
                    "images": r.images,
                    "centre_crop": {"top1_error": r.top1, "top5_error": r.top5},
                    "ten_crop": r.ten_crop.map(|(a, b)| serde_json::json!({"top1_error": a, "top5_error": b})),
                    "per_class": per_class.then(|| {
                        r.per_class
                            .accuracies()
                            .iter()
                            .enumerate()
                            .map(|(c, a)| serde_json::json!({
                                "class": c,
                                "name": names.get(c),
                                "images": r.per_class.counts()[c].total,
                                "top1_accuracy": a.map(|a| a.0),
                                "top5_accuracy": a.map(|a| a.1),
                            }))
                            .collect::<Vec<_>>()
                    }),
                });
                println!("{v:#}");
            } else {
                println!(
                    "{} images, {} checkpoint(s)\n{:<12} {:>12} {:>12}\n{:<12} {:>11.2}% {:>11.2}%",
                    r.images,
                    checkpoints.len(),
                    "protocol",
                    "top-1 error",
                    "top-5 error",
                    "centre crop",
                    100.0 * r.top1,
                    100.0 * r.top5
                );
                if let Some((a, b)) = r.ten_crop {
                    println!(
                        "{:<12} {:>11.2}% {:>11.2}%",
                        "10-crop",
                        100.0 * a,
                        100.0 * b
                    );
                }
                if per_class {
                    print!("{}", r.per_class.report(&names, names.len()));
                }
            }
            Ok(())
        }),
        Command::Predict {
            checkpoints,
            ten_crop,
            json,
            top,
            images,
            picture,
            labels,
            device,
        } => with_engines!(&device, device.threads, 1, |es| {
            let (mut models, names, stats) = load_models(&es, &checkpoints, 1)?;
            let truths = alexnet::figures::parse_labels(
                &labels,
                images.len(),
                &names,
                models[0].cfg().classes,
            )?;
            let results = predict_files(&es, &mut models, &names, &stats, &images, ten_crop, top);
            let mut failed = 0;
            let mut out = Vec::new();
            let mut drawn = Vec::new();
            for ((path, r), truth) in images.iter().zip(results).zip(truths) {
                match r {
                    Ok(p) if json => {
                        out.push(serde_json::json!({
                            "image": p.path,
                            "label": truth,
                            "top": p.top.iter().map(|(c, n, pr)| serde_json::json!({"class": c, "name": n, "probability": pr})).collect::<Vec<_>>(),
                        }));
                        drawn.push((p, truth));
                    }
                    Ok(p) => {
                        println!("{}", p.path.display());
                        for (c, n, pr) in &p.top {
                            let mark = if truth == Some(*c) {
                                "  <- true label"
                            } else {
                                ""
                            };
                            println!("  {:>6.2}%  {n} ({c}){mark}", 100.0 * pr);
                        }
                        drawn.push((p, truth));
                    }
                    Err(err) => {
                        failed += 1;
                        if json {
                            out.push(serde_json::json!({"image": path, "error": err.to_string()}));
                        } else {
                            eprintln!("{}: error: {err}", path.display());
                        }
                    }
                }
            }
            if json {
                println!("{:#}", serde_json::Value::Array(out));
            }
            if let Some(png) = &picture {
                alexnet::figures::draw_predictions(&drawn, &names, stats.side, png)?;
                eprintln!("wrote {}", png.display());
            }
            if failed > 0 {
                return Err(Error::Config(format!(
                    "{failed} of {} images could not be predicted",
                    images.len()
                )));
            }
            Ok(())
        }),
        Command::Plot(args) => {
            println!("wrote {}", args.run()?.display());
            Ok(())
        }
        Command::Kernels(args) => {
            print!("{}", args.run()?.summary());
            Ok(())
        }
        Command::Features { args, device } => with_engines!(&device, device.threads, 1, |es| {
            let s = args.run(&es[0])?;
            println!(
                "{} images: {} ({} values each) in {:.1} s, written to {}",
                s.images,
                s.layer,
                s.dim,
                s.seconds,
                s.path.display()
            );
            Ok(())
        }),
        Command::Neighbours { args, device } => with_engines!(&device, device.threads, 1, |es| {
            let r = args.run(&es[0])?;
            for q in &r.queries {
                println!("{}", q.query.display());
                for n in &q.neighbours {
                    println!(
                        "  {:>10.4}  {} ({})",
                        n.distance,
                        n.class,
                        n.path.as_deref().unwrap_or("?")
                    );
                }
            }
            if let Some(codes) = &r.codes {
                print!("{}", codes.table());
            }
            match &r.png {
                Some(png) => println!(
                    "searched {} images in {:.3} s; wrote {} and its .json",
                    r.images_searched,
                    r.search_seconds,
                    png.display()
                ),
                None => println!("wrote {}", args.out.with_extension("json").display()),
            }
            Ok(())
        }),
        Command::BenchLoader { workers, seconds } => {
            let workers = if workers == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                workers
            };
            let b = alexnet::data::bench_loader(256, 227, workers, seconds)?;
            println!(
                "decode + resize to 256 (500x375 JPEG): {:.0} images/s per core
                 crop 227 + flip + PCA lighting + mean: {:.0} images/s per core
                 threaded loader, {} workers:           {:.0} images/s
                 cores to feed 10,000 images/s from prepared data: {:.1}",
                b.decode_per_core, b.augment_per_core, b.workers, b.loader_total, b.cores_for_10k
            );
            Ok(())
        }
        Command::Bench {
            inference: true,
            batch_size,
            steps,
            classes,
            input_size,
            device,
            ..
        } => {
            if Comm::from_env()?.size() > 1 {
                return Err(Error::Config(
                    "bench --inference times one process; run it without mpirun".into(),
                ));
            }
            let cfg = ArchConfig {
                classes,
                input_size,
                ..ArchConfig::default()
            };
            with_engines!(&device, device.threads, 1, |es| {
                bench_inference(&es[0], &cfg, batch_size, steps)
            })
        }
        Command::Bench {
            inference: false,
            batch_size,
            steps,
            classes,
            input_size,
            gpus,
            executors,
            mut device,
        } => {
            if gpus.is_some() {
                device.device = Device::Cuda;
            }
            let split = gpus.or(executors);
            let comm = Comm::from_env()?;
            if comm.size() > 1 {
                device.gpu += comm.local_rank();
            }
            let shape = BenchShape {
                batch: batch_size,
                steps,
                classes,
                input_size,
            };
            let result = with_engines!(&device, device.threads, split.unwrap_or(1), |es| {
                bench(&es, split.is_some(), &shape, &comm)
            });
            ending_every_rank_on_error(&comm, result)
        }
    }
}

/// Loads checkpoints as models (an ensemble), with the first one's class names and
/// normalisation.
fn load_models<E: Engine>(
    engines: &[E],
    paths: &[PathBuf],
    batch: usize,
) -> Result<(Vec<Network<E>>, Vec<String>, Stats)> {
    let mut models = Vec::new();
    let mut first: Option<(Vec<String>, Stats)> = None;
    for path in paths {
        let (model, ckpt, stats) = alexnet::features::load_model(&engines[0], path, batch)?;
        if first.is_none() {
            first = Some((ckpt.class_names, stats));
        }
        models.push(Network::Whole(model));
    }
    let (names, stats) = first.expect("clap requires at least one --checkpoint");
    Ok((models, names, stats))
}

/// What `bench` measures: steps of the paper's net at a global batch.
struct BenchShape {
    batch: usize,
    steps: usize,
    classes: usize,
    input_size: usize,
}

/// Times full training steps (forward, backward, SGD) on random data and prints images/s; one
/// executor also gets a per-layer table, a split run the bytes crossing between its columns.
fn bench<E: Engine>(engines: &[E], split: bool, shape: &BenchShape, comm: &Comm) -> Result<()> {
    let BenchShape {
        batch,
        steps,
        classes,
        input_size,
    } = *shape;
    let cfg = ArchConfig {
        classes,
        input_size,
        ..ArchConfig::default()
    };
    let flops_per_image: u64 = 3 * 2 * cfg.plan()?.iter().map(|p| p.macs).sum::<u64>();
    let (rank, ranks) = (comm.rank(), comm.size());
    if !batch.is_multiple_of(ranks) {
        return Err(Error::Config(format!(
            "--batch-size {batch} (the global batch) does not split evenly over {ranks} ranks"
        )));
    }
    let local = batch / ranks;
    let mut model = Network::new(engines, split, cfg.clone(), Init::Caffe, 1, local)?;
    model.set_first_image(rank * local);
    alexnet::data_parallel::broadcast_weights(comm, engines, &mut model)?;
    let mut rng = alexnet::rng::Rng::new(5 + rank as u64);
    let images: Vec<f32> = (0..local * 3 * input_size * input_size)
        .map(|_| rng.normal() as f32 * 50.0)
        .collect();
    let labels: Vec<u32> = (0..local).map(|_| rng.below(classes) as u32).collect();
    let leader = rank == 0;
    if leader {
        println!(
            "engine: {}{}",
            alexnet::train::engines_description(engines, split, &cfg),
            match ranks {
                1 => String::new(),
                n => format!("; data-parallel: {n} ranks, global batch {batch} ({local} per rank)"),
            }
        );
    }
    // The training step exactly as `train` takes it, the next batch (the same one here)
    // uploaded during each forward, the gradients averaged across ranks.
    let state = TrainState::fresh(1, 0.001);
    let sync = alexnet::data_parallel::gradient_sync(engines, comm)?;
    let mut trainer = Trainer::new(engines, model, state, Sgd::default(), sync);
    trainer.start(&images)?;
    let mut times = Vec::new();
    let mut sync_times = Vec::new();
    for step in 0..=steps {
        let t0 = Instant::now();
        let synced_before = trainer.sync_seconds;
        let r = trainer.step(&labels, || Some(images.as_slice()))?;
        for e in engines {
            e.synchronize()?;
        }
        let dt = t0.elapsed().as_secs_f64();
        let sync = trainer.sync_seconds.since(synced_before);
        if step > 0 {
            times.push(dt);
            sync_times.push(sync);
        }
        if leader {
            println!(
                "step {step}{}: {:.3} s, loss {:.4}{}",
                if step == 0 { " (warm-up)" } else { "" },
                dt,
                r.loss,
                match trainer.sync_kind() {
                    SyncKind::Host => format!(
                        ", gradient all-reduce not hidden {:.3} s ({:.3} s copying out during \
                         the backward, {:.3} s after it)",
                        sync.total(),
                        sync.in_backward,
                        sync.after_backward
                    ),
                    SyncKind::Alone | SyncKind::Device => String::new(),
                }
            );
        }
    }
    times.sort_by(f64::total_cmp);
    sync_times.sort_by(|a, b| a.total().total_cmp(&b.total()));
    let median = times[times.len() / 2];
    let flops = flops_per_image as f64 * batch as f64;
    // A collective: every rank takes part, before the others leave.
    let kind = trainer.sync_kind();
    let alone = match kind {
        SyncKind::Alone => 0.0,
        SyncKind::Host | SyncKind::Device => {
            let mut times = (0..3)
                .map(|_| trainer.time_gradient_average())
                .collect::<Result<Vec<f64>>>()?;
            times.sort_by(f64::total_cmp);
            times[1]
        }
    };
    if !leader {
        return Ok(());
    }
    if kind != SyncKind::Alone {
        let bytes: u64 = 4 * cfg.plan()?.iter().map(|p| p.params).sum::<u64>();
        print!(
            "gradient all-reduce per step ({ranks} rank{}, {}): {:.1} MB; alone (after the \
             backward) median {:.4} s ({:.2} GB/s algorithm bandwidth)",
            if ranks == 1 { "" } else { "s" },
            match kind {
                SyncKind::Device => "NCCL in device memory",
                _ => "MPI through host memory",
            },
            bytes as f64 / 1e6,
            alone,
            bytes as f64 / alone.max(1e-9) / 1e9,
        );
        if kind == SyncKind::Host {
            let exposed = sync_times[sync_times.len() / 2];
            println!(
                "; started during the backward, {:.3} s of it stays on the step ({:.0}% of the \
                 step; {:.3} s copying out during the backward, {:.3} s after it): {:.0}% hidden",
                exposed.total(),
                100.0 * exposed.total() / median,
                exposed.in_backward,
                exposed.after_backward,
                100.0 * (1.0 - exposed.total() / alone.max(1e-9)).max(0.0)
            );
        } else {
            // The host only queues NCCL's work: what stays on the step is the step time's
            // difference from the same bench without --all-reduce nccl.
            println!(
                "; on the collective stream during the backward (what stays on the step: this \
                 step time minus that of a run without --all-reduce nccl)"
            );
        }
    }
    match &mut trainer.model {
        Network::Whole(m) if ranks == 1 => profile_layers(&engines[0], m, &images, &labels)?,
        Network::Whole(_) => {}
        Network::Columns(c) => {
            let t = c.traffic();
            println!(
                "between columns per step: {:.2} MB ({:.3} bytes per 1000 FLOP); between executors: {:.2} MB",
                t.between_columns as f64 / 1e6,
                t.between_columns as f64 / flops * 1e3,
                t.between_executors as f64 / 1e6
            );
        }
    }
    println!(
        "train step, batch {batch}: median {:.3} s, {:.1} images/s, {:.1} GFLOP/s (model FLOPs, ~3x forward)",
        median,
        batch as f64 / median,
        flops / median / 1e9
    );
    Ok(())
}

/// Prints the test-mode forward's throughput at `batch` and its latency at batch 1.
fn bench_inference<E: Engine>(e: &E, cfg: &ArchConfig, batch: usize, steps: usize) -> Result<()> {
    println!(
        "engine: {}; test-mode forward (no dropout masks, no gradient buffers)",
        e.name()
    );
    for n in [batch, 1] {
        let t = alexnet::bench::inference(e, cfg, n, steps)?;
        println!(
            "inference, batch {n}: median {:.2} ms, {:.1} images/s, {:.1} GFLOP/s (model FLOPs){}",
            t.median_s * 1e3,
            t.images_per_second(),
            t.gflops(),
            if n == 1 { " = batch-1 latency" } else { "" }
        );
        if batch == 1 {
            break;
        }
    }
    Ok(())
}

/// One more step with per-layer timing (synchronising after every layer), printed as a table.
fn profile_layers<E: Engine>(
    e: &E,
    model: &mut Model<E>,
    images: &[f32],
    labels: &[u32],
) -> Result<()> {
    let batch = model.batch();
    model.set_profiling(true);
    e.synchronize()?;
    let t0 = Instant::now();
    model.forward(e, images, Some(0))?;
    let forward_total = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    model.backward(e, labels, Some(0))?;
    let backward_total = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    model.sgd_step(e, 0.001, &Sgd::default())?;
    e.synchronize()?;
    let sgd = t0.elapsed().as_secs_f64();
    println!(
        "{:<7} {:>10} {:>10} {:>12} {:>12}",
        "layer", "fwd ms", "bwd ms", "fwd GFLOP/s", "bwd GFLOP/s"
    );
    for t in model.layer_times() {
        let rate = |seconds: f64, macs: u64| {
            if macs == 0 {
                "-".to_string()
            } else {
                let flops = 2.0 * macs as f64 * batch as f64;
                format!("{:.1}", flops / seconds.max(1e-12) / 1e9)
            }
        };
        println!(
            "{:<7} {:>10.2} {:>10.2} {:>12} {:>12}",
            t.name,
            t.forward_s * 1e3,
            t.backward_s * 1e3,
            rate(t.forward_s, t.forward_macs),
            rate(t.backward_s, t.backward_macs)
        );
    }
    // What the rows do not cover: the forward's input upload (host to device; measured here on
    // an idle engine, while the steps above start it during the previous forward) and the
    // backward's softmax cross-entropy; then the update of every parameter.
    let (rows_f, rows_b) = model
        .layer_times()
        .iter()
        .fold((0.0, 0.0), |(f, b), t| (f + t.forward_s, b + t.backward_s));
    println!(
        "input upload {:.2} ms, loss {:.2} ms, sgd update {:.2} ms; rows: forward {:.2} ms, backward {:.2} ms",
        (forward_total - rows_f).max(0.0) * 1e3,
        (backward_total - rows_b).max(0.0) * 1e3,
        sgd * 1e3,
        rows_f * 1e3,
        rows_b * 1e3
    );
    Ok(())
}
