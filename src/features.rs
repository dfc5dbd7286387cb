//! Feature vectors and nearest neighbours (Section 6.1, Figure 4 right): the activations of the
//! layer under the classifier (fc7 after its ReLU in the paper's net) for every image of a
//! prepared dataset, written as safetensors while they are computed, and exact Euclidean search
//! over them as one GEMM per block of the feature matrix.
//!
//! The feature row is found by its place in the table, never by its name: the last row before the
//! classifier (the last row) that is not dropout. In the paper's net that is relu7, which holds
//! fc7's output after the ReLU; in cuda-convnet's CIFAR-10 net (one fully connected layer) it is
//! the last pooling row's output, flattened.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::arch::{ArchConfig, Kind};
use crate::checkpoint::Checkpoint;
use crate::data::{centre_crop, Dataset, PackedDataset, Stats};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::Model;

/// The row whose output is the feature vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureLayer {
    /// Index of the row in the table.
    pub row: usize,
    /// "fc7 (after relu7)": the last weighted row at or before `row` and the row itself.
    pub description: String,
    /// Values per image.
    pub dim: usize,
}

/// The last row before the classifier that is not dropout (test-mode features have no dropout).
pub fn feature_layer(cfg: &ArchConfig) -> Result<FeatureLayer> {
    let plan = cfg.plan()?;
    let classifier = plan.len() - 1;
    let row = (0..classifier)
        .rev()
        .find(|&i| plan[i].layer.kind != Kind::Dropout)
        .ok_or_else(|| {
            Error::Config(format!(
                "net {}: nothing before the classifier to take features from",
                cfg.net.label()
            ))
        })?;
    let name = &plan[row].layer.name;
    let weighted = plan[..=row]
        .iter()
        .rev()
        .find(|p| p.layer.kind.is_weighted())
        .map(|p| &p.layer.name);
    let description = match weighted {
        Some(w) if w != name => format!("{w} (after {name})"),
        _ => name.clone(),
    };
    Ok(FeatureLayer {
        row,
        description,
        dim: plan[row].output.len(),
    })
}

/// A checkpoint as a one-device model for inference (no gradient buffers), with its
/// normalisation.
pub fn load_model<E: Engine>(
    e: &E,
    path: &Path,
    batch: usize,
) -> Result<(Model<E>, Checkpoint, Stats)> {
    let ckpt = Checkpoint::load(path)?;
    let mut model = Model::for_inference(e, ckpt.arch.clone(), batch)?;
    for t in &ckpt.params {
        model.write_param(e, &t.name, &t.shape, &t.data, false)?;
    }
    let mean = ckpt.mean.clone().ok_or_else(|| Error::Checkpoint {
        path: path.to_path_buf(),
        msg: match ckpt.extra_metadata.get(crate::import::MEAN_NEEDED) {
            Some(needed) => format!("holds no mean image: {needed}"),
            None => "holds no mean image, so inputs cannot be normalised as in training".into(),
        },
    })?;
    let stats = Stats {
        side: ckpt.mean_side,
        mean,
        eigval: ckpt.eigval.unwrap_or([0.0; 3]),
        eigvec: ckpt.eigvec.unwrap_or([[0.0; 3]; 3]),
    };
    Ok((model, ckpt, stats))
}

/// Feature vectors of `n` centre crops already normalised (`[n, 3, S, S]`), `[n, dim]`.
pub fn features_of<E: Engine>(
    e: &E,
    model: &mut Model<E>,
    layer: &FeatureLayer,
    crops: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    model.set_batch(e, n)?;
    model.forward_through(e, crops, layer.row)
}

/// Streams the features of every image of `ds` in batches of `batch`, in index order, to `sink`
/// (features `[n, dim]`, labels), with a progress bar. Decoding and cropping run on rayon's pool.
pub fn extract<E: Engine>(
    e: &E,
    model: &mut Model<E>,
    layer: &FeatureLayer,
    ds: &dyn Dataset,
    stats: &Stats,
    batch: usize,
    mut sink: impl FnMut(&[f32], &[u32]) -> Result<()>,
) -> Result<()> {
    let crop = model.cfg.input_size;
    let side = ds.side();
    if side < crop || stats.side != side {
        return Err(Error::Config(format!(
            "images are {side}x{side} (mean image {0}x{0}); the model needs {crop}x{crop} crops",
            stats.side
        )));
    }
    let bar = indicatif::ProgressBar::new(ds.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "features {bar:40} {pos}/{len} images, {per_sec}, eta {eta}",
        )
        .expect("a fixed template parses"),
    );
    let crop_len = 3 * crop * crop;
    for start in (0..ds.len()).step_by(batch.max(1)) {
        let n = batch.max(1).min(ds.len() - start);
        let mut crops = vec![0.0f32; n * crop_len];
        let labels = crops
            .par_chunks_mut(crop_len)
            .enumerate()
            .map(|(i, out)| {
                let mut px = vec![0u8; 3 * side * side];
                let label = ds.read(start + i, &mut px)?;
                centre_crop(&px, side, crop, stats, out);
                Ok(label)
            })
            .collect::<Result<Vec<u32>>>()?;
        let feats = features_of(e, model, layer, &crops, n)?;
        sink(&feats, &labels)?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// The features file
// ----------------------------------------------------------------------------------------------

/// Tensor and metadata names of a features file.
const FEATURES: &str = "features";
const LABELS: &str = "labels";
const KEY_PATHS: &str = "paths";
const KEY_CHECKPOINT: &str = "checkpoint";
const KEY_LAYER: &str = "layer";
const KEY_DATA: &str = "data";
const KEY_SPLIT: &str = "split";
const KEY_CLASSES: &str = "class_names";
/// safetensors refuses headers over 100 MB; paths beyond this go to a side file instead.
const MAX_PATHS_IN_HEADER: usize = 64 << 20;

/// Where a features file came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureSource {
    pub checkpoint: String,
    pub layer: String,
    pub data: String,
    pub split: String,
}

/// Writes a features file as the features are computed: the header first (every size is known
/// from the image count), then the feature rows as they come, then the labels. Memory stays at
/// one batch of features plus 8 bytes per image. The file is written as NAME.tmp and renamed
/// when complete, so a file with the final name is always whole.
pub struct FeatureWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    rows: usize,
    dim: usize,
    written: usize,
    labels: Vec<i64>,
}

impl FeatureWriter {
    pub fn create(
        path: &Path,
        rows: usize,
        dim: usize,
        source: &FeatureSource,
        paths: &[String],
        class_names: &[String],
    ) -> Result<FeatureWriter> {
        let feat_bytes = rows * dim * 4;
        let mut meta = serde_json::Map::new();
        for (k, v) in [
            (KEY_CHECKPOINT, &source.checkpoint),
            (KEY_LAYER, &source.layer),
            (KEY_DATA, &source.data),
            (KEY_SPLIT, &source.split),
        ] {
            meta.insert(k.into(), v.clone().into());
        }
        let json = |v: &[String]| serde_json::to_string(v).expect("strings serialise");
        meta.insert(KEY_CLASSES.into(), json(class_names).into());
        let paths_json = json(paths);
        if paths_json.len() <= MAX_PATHS_IN_HEADER {
            meta.insert(KEY_PATHS.into(), paths_json.into());
        } else {
            let side = paths_file(path);
            std::fs::write(&side, paths.join("\n") + "\n").map_err(|e| Error::io(&side, e))?;
            meta.insert(KEY_PATHS.into(), format!("file:{}", side.display()).into());
        }
        let header = serde_json::json!({
            "__metadata__": meta,
            FEATURES: {"dtype": "F32", "shape": [rows, dim], "data_offsets": [0, feat_bytes]},
            LABELS: {"dtype": "I64", "shape": [rows], "data_offsets": [feat_bytes, feat_bytes + 8 * rows]},
        });
        let mut text = header.to_string().into_bytes();
        // Pad to 8 bytes so the data (and the f32 rows in a memory map) are aligned.
        text.resize(text.len().next_multiple_of(8), b' ');
        let tmp = path.with_extension("safetensors.tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        file.write_all(&(text.len() as u64).to_le_bytes())
            .and_then(|_| file.write_all(&text))
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(FeatureWriter {
            path: path.to_path_buf(),
            tmp,
            file,
            rows,
            dim,
            written: 0,
            labels: Vec::with_capacity(rows),
        })
    }

    /// Appends rows `[n, dim]` and their labels.
    pub fn push(&mut self, feats: &[f32], labels: &[u32]) -> Result<()> {
        if feats.len() != labels.len() * self.dim || self.written + labels.len() > self.rows {
            return Err(Error::shape(
                "features file",
                format!(
                    "{} values for {} images of {} (row {} of {})",
                    feats.len(),
                    labels.len(),
                    self.dim,
                    self.written,
                    self.rows
                ),
            ));
        }
        if let Some(i) = feats.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "feature {} of image {}: the checkpoint's weights give NaN or infinity",
                i % self.dim,
                self.written + i / self.dim
            )));
        }
        let bytes: Vec<u8> = feats.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file
            .write_all(&bytes)
            .map_err(|e| Error::io(&self.tmp, e))?;
        self.written += labels.len();
        self.labels.extend(labels.iter().map(|&l| l as i64));
        Ok(())
    }

    /// Writes the labels, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.written != self.rows {
            return Err(Error::Config(format!(
                "{}: {} of {} images written",
                self.tmp.display(),
                self.written,
                self.rows
            )));
        }
        let bytes: Vec<u8> = self.labels.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file
            .write_all(&bytes)
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.tmp, e))?;
        let file = self
            .file
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(self.path)
    }
}

/// The side file of a features file's paths, when they are too many for its header.
fn paths_file(path: &Path) -> PathBuf {
    path.with_extension("paths.txt")
}

/// A features file, memory-mapped: the feature matrix is read from the page cache, never copied
/// whole.
pub struct FeatureFile {
    pub path: PathBuf,
    map: memmap2::Mmap,
    /// Byte range of the features in the map.
    range: std::ops::Range<usize>,
    pub rows: usize,
    pub dim: usize,
    pub labels: Vec<u32>,
    pub paths: Vec<String>,
    pub class_names: Vec<String>,
    pub source: FeatureSource,
}

impl FeatureFile {
    pub fn open(path: &Path) -> Result<FeatureFile> {
        let bad = |msg: String| {
            Error::data(
                path,
                format!("{msg} (write it with `alexnet-cli features`)"),
            )
        };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: a read-only mapping; `features` writes its files under a temporary name and
        // renames them into place, so a complete file is never rewritten in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&map)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let info = |name: &str| {
            meta.info(name)
                .ok_or_else(|| bad(format!("has no tensor {name:?}")))
        };
        let f = info(FEATURES)?;
        let (rows, dim) = match (f.dtype, f.shape.as_slice()) {
            (safetensors::Dtype::F32, &[r, d]) => (r, d),
            _ => {
                return Err(bad(format!(
                    "{FEATURES} must be F32 [rows, dim], is {:?} {:?}",
                    f.dtype, f.shape
                )))
            }
        };
        let l = st
            .tensor(LABELS)
            .map_err(|e| bad(format!("tensor {LABELS}: {e}")))?;
        if l.dtype() != safetensors::Dtype::I64 || l.shape() != [rows] {
            return Err(bad(format!("{LABELS} must be I64 [{rows}]")));
        }
        let labels = l
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as u32)
            .collect();
        let m = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        let parse = |k: &str, text: &str| -> Result<Vec<String>> {
            serde_json::from_str(text).map_err(|e| bad(format!("metadata {k}: {e}")))
        };
        let paths_text = get(KEY_PATHS);
        let paths = match paths_text.strip_prefix("file:") {
            Some(side) => std::fs::read_to_string(side)
                .map_err(|e| Error::io(side, e))?
                .lines()
                .map(String::from)
                .collect(),
            None if paths_text.is_empty() => Vec::new(),
            None => parse(KEY_PATHS, &paths_text)?,
        };
        let class_names = match get(KEY_CLASSES) {
            t if t.is_empty() => Vec::new(),
            t => parse(KEY_CLASSES, &t)?,
        };
        let start = 8 + header_len + f.data_offsets.0;
        Ok(FeatureFile {
            path: path.to_path_buf(),
            range: start..8 + header_len + f.data_offsets.1,
            map,
            rows,
            dim,
            labels,
            paths,
            class_names,
            source: FeatureSource {
                checkpoint: get(KEY_CHECKPOINT),
                layer: get(KEY_LAYER),
                data: get(KEY_DATA),
                split: get(KEY_SPLIT),
            },
        })
    }

    /// The feature matrix `[rows, dim]` (borrowed from the map when aligned, as our files are).
    pub fn features(&self) -> Cow<'_, [f32]> {
        let bytes = &self.map[self.range.clone()];
        match bytemuck::try_cast_slice(bytes) {
            Ok(f) if cfg!(target_endian = "little") => Cow::Borrowed(f),
            _ => Cow::Owned(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect(),
            ),
        }
    }
}

// ----------------------------------------------------------------------------------------------
// `alexnet-cli features`
// ----------------------------------------------------------------------------------------------

/// `--help` of the command below.
pub const FEATURES_HELP: &str =
    "Computes the feature vector of every image of a prepared dataset split: the \
output of the last row before the classifier that is not dropout (the paper's net: fc7 after its \
ReLU, 4096 values), in test mode (centre crop, no dropout), in batches with a progress bar.\n\n\
Writes one safetensors file: `features` F32 [images, dim] (row i is image i of the split), \
`labels` I64 [images], and in its metadata the source file of each image (`paths`, a JSON array; \
beyond 64 MB of paths, `file:NAME.paths.txt`, one per line), `class_names`, and the checkpoint, \
layer, data directory and split it came from. Memory stays at one batch: rows are written as \
they are computed.";

/// The checkpoint and the prepared images that `features` and `neighbours` run it over.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelOverData {
    /// The checkpoint whose features to compute (its mean image normalises the inputs).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Prepared dataset directory (from `alexnet-cli prepare`).
    #[arg(long)]
    pub data: PathBuf,
    /// Which split: train or val.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 128, value_parser = crate::settings::count_in(1, crate::settings::MAX_BATCH))]
    pub batch_size: usize,
}

impl ModelOverData {
    /// The checkpoint as an inference model with its normalisation and feature row, and the
    /// dataset, its classes checked against the model's.
    fn open<E: Engine>(&self, e: &E) -> Result<(Model<E>, Stats, FeatureLayer, PackedDataset)> {
        let (model, _, stats) = load_model(e, &self.checkpoint, self.batch_size)?;
        let layer = feature_layer(&model.cfg)?;
        let ds = PackedDataset::open(&self.data, &self.split)?;
        check_classes(&model, &ds, &self.data)?;
        Ok((model, stats, layer, ds))
    }
}

/// `alexnet-cli features`: every image's feature vector.
#[derive(clap::Args, Debug, Clone)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub input: ModelOverData,
    /// Output file (safetensors).
    #[arg(long, default_value = "features.safetensors")]
    pub out: PathBuf,
}

impl FeaturesArgs {
    /// Computes and writes the features; returns what was written.
    pub fn run<E: Engine>(&self, e: &E) -> Result<FeatureSummary> {
        let (mut model, stats, layer, ds) = self.input.open(e)?;
        let input = &self.input;
        let source = FeatureSource {
            checkpoint: input.checkpoint.display().to_string(),
            layer: layer.description.clone(),
            data: input.data.display().to_string(),
            split: input.split.clone(),
        };
        let mut writer = FeatureWriter::create(
            &self.out,
            ds.len(),
            layer.dim,
            &source,
            &ds.source_paths(),
            &ds.class_names(),
        )?;
        let t0 = std::time::Instant::now();
        extract(
            e,
            &mut model,
            &layer,
            &ds,
            &stats,
            self.input.batch_size,
            |f, l| writer.push(f, l),
        )?;
        let path = writer.finish()?;
        Ok(FeatureSummary {
            path,
            images: ds.len(),
            layer: layer.description,
            dim: layer.dim,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// The dataset's classes must be the model's (labels index its classes).
fn check_classes<E: Engine>(model: &Model<E>, ds: &dyn Dataset, data: &Path) -> Result<()> {
    if ds.classes() != model.cfg.classes {
        return Err(Error::Config(format!(
            "{} has {} classes, the checkpoint's net {}",
            data.display(),
            ds.classes(),
            model.cfg.classes
        )));
    }
    Ok(())
}

/// What `features` wrote.
#[derive(Clone, Debug)]
pub struct FeatureSummary {
    pub path: PathBuf,
    pub images: usize,
    pub layer: String,
    pub dim: usize,
    pub seconds: f64,
}

// ----------------------------------------------------------------------------------------------
// Exact nearest neighbours
// ----------------------------------------------------------------------------------------------

/// Database rows per GEMM block: the block's distances (queries x rows) and its rows stay in
/// cache-sized pieces, and the blocks run in parallel.
const SEARCH_BLOCK: usize = 4096;

/// One neighbour: database row and Euclidean distance.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Neighbour {
    pub index: usize,
    pub distance: f32,
}

/// The `k` rows of `db` (`[rows, dim]`) nearest to each query (`[m, dim]`) in Euclidean distance,
/// nearest first (ties: lower index first). Exact: ||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x with
/// q.x from one GEMM per block of rows. The expansion loses the small distances' low bits (about
/// 1e-7 * ||q||^2 in f32 cancellation), so it is rounded up to 0 when negative.
pub fn nearest(db: &[f32], dim: usize, queries: &[f32], k: usize) -> Result<Vec<Vec<Neighbour>>> {
    use crate::engine::cpu::gemm::{gemm, MatMut, MatRef};
    if dim == 0 || !db.len().is_multiple_of(dim) || !queries.len().is_multiple_of(dim) {
        return Err(Error::shape(
            "nearest",
            format!(
                "{} database and {} query values do not split into rows of {dim}",
                db.len(),
                queries.len()
            ),
        ));
    }
    let (rows, m) = (db.len() / dim, queries.len() / dim);
    let q_norm: Vec<f32> = queries
        .chunks(dim)
        .map(|q| q.iter().map(|v| v * v).sum())
        .collect();
    let blocks: Vec<Vec<Vec<Neighbour>>> = (0..rows.div_ceil(SEARCH_BLOCK))
        .into_par_iter()
        .map(|b| {
            let r = b * SEARCH_BLOCK..((b + 1) * SEARCH_BLOCK).min(rows);
            let x = &db[r.start * dim..r.end * dim];
            let mut dot = vec![0.0f32; m * r.len()];
            let a = MatRef::rm(queries, m, dim);
            let bt = MatRef::rm(x, r.len(), dim).t();
            gemm(1.0, a, bt, 0.0, MatMut::rm(&mut dot, m, r.len()))?;
            let x_norm: Vec<f32> = x
                .chunks(dim)
                .map(|v| v.iter().map(|a| a * a).sum())
                .collect();
            Ok((0..m)
                .map(|i| {
                    let d = dot[i * r.len()..(i + 1) * r.len()]
                        .iter()
                        .zip(&x_norm)
                        .enumerate()
                        .map(|(j, (g, xn))| Neighbour {
                            index: r.start + j,
                            distance: (q_norm[i] + xn - 2.0 * g).max(0.0),
                        });
                    smallest(d, k)
                })
                .collect())
        })
        .collect::<Result<_>>()?;
    Ok((0..m)
        .map(|i| {
            let all = blocks.iter().flat_map(|b| b[i].iter().copied());
            smallest(all, k)
                .into_iter()
                .map(|n| Neighbour {
                    distance: n.distance.sqrt(),
                    ..n
                })
                .collect()
        })
        .collect())
}

/// The `k` smallest by (distance, index).
fn smallest(items: impl Iterator<Item = Neighbour>, k: usize) -> Vec<Neighbour> {
    let order = |a: &Neighbour, b: &Neighbour| {
        a.distance
            .total_cmp(&b.distance)
            .then(a.index.cmp(&b.index))
    };
    if k == 0 {
        return Vec::new();
    }
    let mut best: Vec<Neighbour> = Vec::with_capacity(k + 1);
    for n in items {
        if best.len() == k && order(&n, &best[k - 1]).is_ge() {
            continue;
        }
        let at = best.partition_point(|b| order(b, &n).is_lt());
        best.insert(at, n);
        best.truncate(k);
    }
    best
}

// ----------------------------------------------------------------------------------------------
// `alexnet-cli neighbours`
// ----------------------------------------------------------------------------------------------

/// `--help` of the command below.
pub const NEIGHBOURS_HELP: &str =
    "For each query image, the k images of a prepared dataset split (the training \
set by default) whose feature vectors (see `alexnet-cli features`: fc7 after its ReLU in the \
paper's net) are nearest in Euclidean distance: Figure 4's right panel. The search is exact, \
one GEMM of the queries against each block of the feature matrix.\n\nDraws one row per query \
(the query, then its neighbours nearest first, each with its class and distance) and writes the \
neighbours, their dataset indices, source files, classes and distances to a JSON beside the PNG. \
With --features FILE the dataset's features come from `alexnet-cli features` instead of being \
computed (which holds them all in memory: 16 KB per image for 4096-d features).\n\nWith \
--codes BITS it also tries the paper's proposal for faster retrieval (Section 6.1): an \
auto-encoder trained on the split's feature vectors compresses each to BITS bits (a logistic \
code layer thresholded at 0.5, as in Krizhevsky & Hinton 2011), searched by Hamming distance. \
Labelled images of --code-query-split (val) query the split three ways: Hamming over the codes, \
Euclidean over the features, Euclidean over the raw pixels (32x32). It prints precision@k for \
each (the fraction of the k results with the query's label, averaged over queries) and the \
Hamming search's speedup over the Euclidean GEMM search, and writes them to the JSON. --query \
is optional with --codes (no figure without it).";

/// `alexnet-cli neighbours`: Figure 4, right.
#[derive(clap::Args, Debug, Clone)]
pub struct NeighboursArgs {
    /// The checkpoint whose features define the distance, and the images to search.
    #[command(flatten)]
    pub input: ModelOverData,
    /// Query image files (any format the `image` crate decodes); optional with --codes.
    #[arg(long, required_unless_present = "codes", num_args = 1..)]
    pub query: Vec<PathBuf>,
    /// Neighbours per query.
    #[arg(short, long, default_value_t = 6, value_parser = crate::settings::count_in(1, 1000))]
    pub k: usize,
    /// Output PNG (the JSON goes beside it, with extension .json).
    #[arg(long, default_value = "fig4-neighbours.png")]
    pub out: PathBuf,
    /// The dataset's features from `alexnet-cli features` (same checkpoint, data and split).
    #[arg(long, value_name = "FILE")]
    pub features: Option<PathBuf>,
    /// Binary codes compared with the features (Section 6.1's proposal).
    #[command(flatten)]
    pub codes: crate::codes::CodesArgs,
}

/// One query's answer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QueryResult {
    pub query: PathBuf,
    pub neighbours: Vec<FoundImage>,
}

/// A neighbour as reported.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FoundImage {
    pub index: usize,
    pub distance: f32,
    pub label: u32,
    pub class: String,
    pub path: Option<String>,
}

/// What `neighbours` found and wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NeighboursReport {
    pub checkpoint: PathBuf,
    pub data: PathBuf,
    pub split: String,
    pub layer: String,
    pub images_searched: usize,
    pub search_seconds: f64,
    /// The figure (none without --query).
    pub png: Option<PathBuf>,
    pub queries: Vec<QueryResult>,
    /// Binary codes against features and pixels (with --codes).
    pub codes: Option<crate::codes::CodesReport>,
}

impl NeighboursArgs {
    pub fn run<E: Engine>(&self, e: &E) -> Result<NeighboursReport> {
        let (mut model, stats, layer, ds) = self.input.open(e)?;
        let stored = self
            .features
            .as_deref()
            .map(|path| self.stored_features(path, &layer, &ds))
            .transpose()?;
        let (db, labels) = match &stored {
            Some(file) => (file.features(), file.labels.clone()),
            None => {
                let mut db = Vec::with_capacity(ds.len() * layer.dim);
                let mut labels = Vec::with_capacity(ds.len());
                extract(
                    e,
                    &mut model,
                    &layer,
                    &ds,
                    &stats,
                    self.input.batch_size,
                    |f, l| {
                        db.extend_from_slice(f);
                        labels.extend_from_slice(l);
                        Ok(())
                    },
                )?;
                (Cow::Owned(db), labels)
            }
        };
        let codes = match self.codes.codes {
            Some(_) => Some(crate::codes::compare(
                e,
                &mut model,
                &layer,
                &stats,
                &db,
                &labels,
                &ds,
                &self.input,
                &self.codes,
            )?),
            None => None,
        };
        let queries = self.query_features(e, &mut model, &layer, &stats)?;
        let t0 = std::time::Instant::now();
        let found = match queries.is_empty() {
            true => Vec::new(),
            false => nearest(&db, layer.dim, &queries, self.k)?,
        };
        let search_seconds = t0.elapsed().as_secs_f64();
        let (names, paths) = (ds.class_names(), ds.source_paths());
        let results: Vec<QueryResult> = self
            .query
            .iter()
            .zip(found)
            .map(|(q, ns)| QueryResult {
                query: q.clone(),
                neighbours: ns
                    .into_iter()
                    .map(|n| FoundImage {
                        index: n.index,
                        distance: n.distance,
                        label: labels[n.index],
                        class: class_name(&names, labels[n.index] as usize),
                        path: paths.get(n.index).cloned(),
                    })
                    .collect(),
            })
            .collect();
        let png = (!results.is_empty()).then(|| self.out.clone());
        if png.is_some() {
            draw_neighbours(&results, &ds, stats.side, &self.out)?;
        }
        let report = NeighboursReport {
            checkpoint: self.input.checkpoint.clone(),
            data: self.input.data.clone(),
            split: self.input.split.clone(),
            layer: layer.description,
            images_searched: ds.len(),
            search_seconds,
            png,
            queries: results,
            codes,
        };
        crate::figures::write_json(&self.out.with_extension("json"), &report)?;
        Ok(report)
    }

    /// A features file's matrix and labels, checked against this checkpoint, layer and dataset.
    fn stored_features(
        &self,
        path: &Path,
        layer: &FeatureLayer,
        ds: &PackedDataset,
    ) -> Result<FeatureFile> {
        let file = FeatureFile::open(path)?;
        let same = |a: &Path, b: &str| {
            let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            canon(a) == canon(Path::new(b))
        };
        let mismatch = if file.rows != ds.len() || file.dim != layer.dim {
            Some(format!(
                "holds {} x {} features; {} {} has {} images of {} ({})",
                file.rows,
                file.dim,
                self.input.data.display(),
                self.input.split,
                ds.len(),
                layer.dim,
                layer.description
            ))
        } else if !same(&self.input.checkpoint, &file.source.checkpoint)
            || file.source.split != self.input.split
        {
            Some(format!(
                "was computed with checkpoint {} on split {}, not {} on {}",
                file.source.checkpoint,
                file.source.split,
                self.input.checkpoint.display(),
                self.input.split
            ))
        } else {
            None
        };
        if let Some(msg) = mismatch {
            return Err(Error::data(
                path,
                format!(
                    "{msg}: compute them again with `alexnet-cli features`, or drop --features"
                ),
            ));
        }
        Ok(file)
    }

    /// The queries' feature vectors `[m, dim]`, each image read as prediction reads it.
    fn query_features<E: Engine>(
        &self,
        e: &E,
        model: &mut Model<E>,
        layer: &FeatureLayer,
        stats: &Stats,
    ) -> Result<Vec<f32>> {
        let crop = model.cfg.input_size;
        let crop_len = 3 * crop * crop;
        if self.query.is_empty() {
            return Ok(Vec::new());
        }
        let mut crops = vec![0.0f32; self.query.len() * crop_len];
        for (path, out) in self.query.iter().zip(crops.chunks_mut(crop_len)) {
            let px = crate::data::load_image_file(path, stats.side)?;
            centre_crop(&px, stats.side, crop, stats, out);
        }
        features_of(e, model, layer, &crops, self.query.len())
    }
}

fn class_name(names: &[String], class: usize) -> String {
    names
        .get(class)
        .cloned()
        .unwrap_or_else(|| class.to_string())
}

/// Shown side of each image in the neighbours figure, and the gaps.
const TILE: usize = 128;
const GAP: usize = 8;
const CAPTION: usize = 36;

/// The neighbours figure's size for `queries` rows of `k` neighbours.
pub fn neighbours_figure_size(queries: usize, k: usize) -> (usize, usize) {
    // An extra gap separates each query from its neighbours.
    let width = GAP + (k + 1) * (TILE + GAP) + 2 * GAP;
    let height = GAP + queries * (TILE + CAPTION + GAP);
    (width, height)
}

/// One row per query: the query, then its neighbours with class and distance.
fn draw_neighbours(
    results: &[QueryResult],
    ds: &PackedDataset,
    side: usize,
    out: &Path,
) -> Result<()> {
    use crate::figures::{annotate, chw_to_rgb};
    use plotters::prelude::*;
    let k = results
        .iter()
        .map(|r| r.neighbours.len())
        .max()
        .unwrap_or(0);
    let (w, h) = neighbours_figure_size(results.len(), k);
    let mut img = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255, 255, 255]));
    let x_of = |j: usize| GAP + j * (TILE + GAP) + if j > 0 { 2 * GAP } else { 0 };
    let mut px = vec![0u8; 3 * ds.side() * ds.side()];
    for (i, r) in results.iter().enumerate() {
        let y = (GAP + i * (TILE + CAPTION + GAP)) as i64;
        let q = crate::data::load_image_file(&r.query, side)?;
        image::imageops::replace(&mut img, &chw_to_rgb(&q, side, TILE), x_of(0) as i64, y);
        for (j, n) in r.neighbours.iter().enumerate() {
            ds.read(n.index, &mut px)?;
            let tile = chw_to_rgb(&px, ds.side(), TILE);
            image::imageops::replace(&mut img, &tile, x_of(j + 1) as i64, y);
        }
    }
    annotate(&mut img, out, |root| {
        let font = ("sans-serif", 13).into_font().color(&BLACK);
        for (i, r) in results.iter().enumerate() {
            let y = (GAP + i * (TILE + CAPTION + GAP) + TILE + 3) as i32;
            let name = r.query.file_name().map(|n| n.to_string_lossy().to_string());
            root.draw(&Text::new(
                clip(&format!("query {}", name.unwrap_or_default()), TILE),
                (x_of(0) as i32, y),
                font.clone(),
            ))?;
            for (j, n) in r.neighbours.iter().enumerate() {
                let x = x_of(j + 1) as i32;
                root.draw(&Text::new(clip(&n.class, TILE), (x, y), font.clone()))?;
                root.draw(&Text::new(
                    format!("d = {:.3}", n.distance),
                    (x, y + 16),
                    font.clone(),
                ))?;
            }
        }
        Ok(())
    })?;
    crate::figures::save_png(&img, out)
}

/// `text` cut to about `width` pixels of the 13 px font.
fn clip(text: &str, width: usize) -> String {
    text.chars().take(width / 7).collect()
}
