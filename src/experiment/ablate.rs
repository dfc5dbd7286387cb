//! `alexnet-cli ablate`: the paper's net and each of the variants whose cost the paper reports
//! (Sections 3.3-4.2), trained with the same seed, data order and step budget, then validated.
//! A variant is a change to the table (LRN rows removed, pooling windows made non-overlapping,
//! the one-column table) or to a setting (PCA lighting off, dropout 0), never a match on a name.

use std::path::PathBuf;

use crate::arch::{ArchConfig, Kind, Net, Table};
use crate::data::Augment;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::Sgd;
use crate::settings;
use crate::train::{open_prepared, InitArg};

use super::{fit, ExperimentData, FitSpec};

/// `alexnet-cli ablate`.
#[derive(clap::Args, Debug, Clone)]
pub struct AblateArgs {
    /// A dataset made by `alexnet-cli prepare` (its train and val splits).
    #[arg(long)]
    pub data: PathBuf,
    /// Where ablate.json goes (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// SGD steps each net trains (the same budget for all).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: u64,
    /// Images per SGD step.
    #[arg(long, default_value_t = 128, value_parser = settings::count_in(1, settings::MAX_BATCH))]
    pub batch_size: usize,
    /// Input side (227: the paper's; down to 67, which the nets' geometry allows).
    #[arg(long, default_value_t = 227, value_parser = settings::count_in(1, settings::MAX_INPUT))]
    pub input_size: usize,
    /// Learning rate of every net. 0.001: the rate measured to learn with kaiming init on a
    /// small photo folder (0.01, the paper's with its own init, diverged there; see README).
    #[arg(long, default_value_t = 0.001, value_parser = settings::positive)]
    pub lr: f32,
    /// Weight initialisation of every net. Default kaiming: on a small dataset the paper's
    /// stays at ln(classes) for hundreds of steps, which would make every net equal.
    #[arg(long, value_enum, default_value_t = InitArg::Kaiming)]
    pub init: InitArg,
    /// Seed for initialisation, data order, augmentation and dropout (the same for every net).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// What one net is: the table and the training settings.
#[derive(Clone, Debug)]
struct Setup {
    arch: ArchConfig,
    augment: Augment,
}

/// A variant: how it changes the full net's setup, what the paper reports for it.
struct Variant {
    name: &'static str,
    /// The `train` flags that give the same net.
    flags: &'static str,
    /// The paper's change in top-1/top-5 error points when the feature is removed, when it
    /// gives one, and in words.
    paper: (Option<[f32; 2]>, &'static str),
    change: fn(&mut Setup),
}

/// The variants, in the paper's order.
fn variants() -> [Variant; 5] {
    [
        Variant {
            name: "no LRN",
            flags: "a net file without the lrn rows",
            paper: (Some([1.4, 1.2]), "LRN: -1.4 / -1.2 points (Section 3.3)"),
            change: |s| {
                let mut layers = s.arch.layers();
                layers.retain(|l| !matches!(l.kind, Kind::Lrn { .. }));
                s.arch.net = table("paper-no-lrn", layers);
            },
        },
        Variant {
            name: "pool 2/2",
            flags: "a net file with max-pool size 2, stride 2",
            paper: (
                Some([0.4, 0.3]),
                "overlapping pooling: -0.4 / -0.3 points (Section 3.4)",
            ),
            change: |s| {
                let mut layers = s.arch.layers();
                for l in &mut layers {
                    if let Kind::MaxPool { size, stride } = &mut l.kind {
                        (*size, *stride) = (2, 2);
                    }
                }
                s.arch.net = table("paper-pool-2-2", layers);
            },
        },
        Variant {
            name: "no PCA lighting",
            flags: "--no-pca",
            paper: (
                Some([1.0, f32::NAN]),
                "PCA lighting: over -1 point top-1 (Section 4.1)",
            ),
            change: |s| {
                s.augment.pca_std = 0.0;
            },
        },
        Variant {
            name: "dropout 0",
            flags: "--dropout 0",
            paper: (
                None,
                "dropout: less overfitting, about twice the iterations (Section 4.2)",
            ),
            change: |s| {
                s.arch.dropout = 0.0;
            },
        },
        Variant {
            name: "one column",
            flags: "--preset one-column",
            paper: (
                Some([1.7, 1.2]),
                "two columns: -1.7 / -1.2 points (Section 3.2)",
            ),
            change: |s| s.arch.net = Net::OneColumn,
        },
    ]
}

fn table(name: &str, layers: Vec<crate::arch::Layer>) -> Net {
    Net::Table(Table {
        name: name.to_string(),
        input_size: None,
        layers,
    })
}

/// One net's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AblateRow {
    pub net: String,
    pub flags: String,
    pub val_top1: f32,
    pub val_top5: f32,
    /// Points (percent) of error against the full net: positive = worse without the feature.
    pub delta_top1: f32,
    pub delta_top5: f32,
    /// The paper's reported change when the feature is removed (points), where it gives one.
    pub paper_delta_top1: Option<f32>,
    pub paper_delta_top5: Option<f32>,
    pub paper: String,
    pub final_train_loss: f32,
}

/// What ablate.json holds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AblateResult {
    pub data: String,
    pub train_images: usize,
    pub val_images: usize,
    pub steps: u64,
    pub batch_size: usize,
    pub input_size: usize,
    pub lr: f32,
    pub init: InitArg,
    pub seed: u64,
    pub rows: Vec<AblateRow>,
}

/// Trains the full net and every variant, prints the table and writes OUT/ablate.json.
pub fn run_ablate<E: Engine>(engines: &[E], args: &AblateArgs) -> Result<AblateResult> {
    super::create_out_dir(&args.out)?;
    let td = open_prepared(&args.data)?;
    let data = ExperimentData {
        train: td.train.clone(),
        test: td.val.clone(),
        stats: td.stats.clone(),
    };
    let classes = td.class_names.len();
    let full = Setup {
        arch: ArchConfig::for_net(Net::Paper, Some(classes), Some(args.input_size)),
        augment: Augment::train(args.input_size),
    };
    let mut setups = vec![("full".to_string(), "(the paper's net)", full.clone(), None)];
    for v in variants() {
        let mut s = full.clone();
        (v.change)(&mut s);
        setups.push((v.name.to_string(), v.flags, s, Some(v.paper)));
    }
    let mut rows: Vec<AblateRow> = Vec::new();
    for (name, flags, setup, paper) in setups {
        setup.arch.plan()?;
        let spec = FitSpec {
            label: name.clone(),
            arch: setup.arch,
            init: args.init.scheme(&data.stats),
            lr: args.lr,
            sgd: Sgd::default(),
            batch: args.batch_size,
            augment: setup.augment,
            seed: args.seed,
            max_epochs: u64::MAX,
            max_steps: Some(args.steps),
            stop_at_train_error: None,
        };
        // A variant that diverges is a finding of the ablation: its row says so (NaN errors).
        let r = match fit(engines, &data, &spec, true, args.quiet) {
            Err(Error::NonFinite(msg)) => {
                eprintln!("{name}: diverged ({msg})");
                None
            }
            other => Some(other?),
        };
        let (top1, top5) = r
            .as_ref()
            .and_then(|r| r.held_out)
            .unwrap_or((f32::NAN, f32::NAN));
        let base = rows
            .first()
            .map_or((top1, top5), |f| (f.val_top1, f.val_top5));
        let (paper_delta, paper_text) = paper.unwrap_or((None, ""));
        rows.push(AblateRow {
            net: name,
            flags: flags.to_string(),
            val_top1: top1,
            val_top5: top5,
            delta_top1: 100.0 * (top1 - base.0),
            delta_top5: 100.0 * (top5 - base.1),
            paper_delta_top1: paper_delta.map(|d| d[0]),
            paper_delta_top5: paper_delta.map(|d| d[1]).filter(|d| d.is_finite()),
            paper: paper_text.to_string(),
            final_train_loss: r
                .and_then(|r| r.epochs.last().map(|p| p.train_loss))
                .unwrap_or(f32::NAN),
        });
    }
    let result = AblateResult {
        data: args.data.display().to_string(),
        train_images: data.train.len(),
        val_images: data.test.len(),
        steps: args.steps,
        batch_size: args.batch_size,
        input_size: args.input_size,
        lr: args.lr,
        init: args.init,
        seed: args.seed,
        rows,
    };
    print!("{}", ablate_table(&result));
    let path = args.out.join("ablate.json");
    super::write_json(&path, &result)?;
    println!("wrote {}", path.display());
    Ok(result)
}

/// The table `ablate` prints.
pub fn ablate_table(r: &AblateResult) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} steps of batch {} at input {} on {} ({} train / {} val images), lr {}, seed {}",
        r.steps, r.batch_size, r.input_size, r.data, r.train_images, r.val_images, r.lr, r.seed
    );
    let _ = writeln!(
        s,
        "{:<16} {:>9} {:>9} {:>9} {:>9}  {:<13} paper (removing the feature)",
        "net", "top-1 %", "top-5 %", "d top-1", "d top-5", "paper d"
    );
    let points = |d: Option<f32>| d.map_or("-".to_string(), |d| format!("+{d:.1}"));
    for row in &r.rows {
        let paper = match row.paper_delta_top1 {
            Some(_) => format!(
                "{}/{}",
                points(row.paper_delta_top1),
                points(row.paper_delta_top5)
            ),
            None => "-".into(),
        };
        let _ = writeln!(
            s,
            "{:<16} {:>9.2} {:>9.2} {:>+9.2} {:>+9.2}  {:<13} {}",
            row.net,
            100.0 * row.val_top1,
            100.0 * row.val_top5,
            row.delta_top1,
            row.delta_top5,
            paper,
            row.paper
        );
    }
    let _ = writeln!(
        s,
        "d = change in error points against the full net (positive: worse without the feature); \
         small budgets on small data do not reproduce ImageNet's deltas"
    );
    s
}
