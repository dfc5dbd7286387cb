//! Checkpoints: one safetensors file holds everything inference needs (weights, architecture,
//! class names, mean image, PCA of the pixel colours) and, for training files, everything an exact
//! resume needs (momentum buffers, step/epoch/schedule state, RNG state, data position).
//!
//! Tensor names and layouts are PyTorch's, so `safetensors.torch.load_file` gives a state dict
//! that loads into an `nn.Module` with the same layer names without reshaping (conv weights
//! `[out, in/groups, kh, kw]`, fc weights `[out, in]` with the input flattened in C,H,W order).
//! Everything that is not a weight lives under the `momentum.` and `data.` prefixes or in the
//! header's `__metadata__`. docs/checkpoint-format.md lists every name.
//!
//! Files are written atomically (temporary file, fsync, rename, fsync of the directory), so a
//! crash or `kill -9` at any moment leaves the previous file complete and valid.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};
use safetensors::SafeTensors;

use crate::arch::{ArchConfig, Kind, Net};
use crate::engine::LrnParams;
use crate::error::{Error, Result};

/// Metadata keys (all values are strings; the structured ones are JSON).
const KEY_FORMAT: &str = "format";
const KEY_VERSION: &str = "alexnet.version";
const KEY_ARCH: &str = "alexnet.arch";
const KEY_CLASSES: &str = "alexnet.class_names";
const KEY_MEAN_SIDE: &str = "alexnet.mean_side";
const KEY_TRAIN_STATE: &str = "alexnet.train_state";
const KEY_EXTRA: &str = "alexnet.extra";
/// Bumped when a change would make old readers misread a file. Version 2 stores the architecture
/// with its layer table (a net file's rows whole) and LRN constants grouped; version 1 files are
/// still read ([`ArchV1`]).
const FORMAT_VERSION: &str = "2";

/// Tensor names besides the parameters.
const MOMENTUM_PREFIX: &str = "momentum.";
const MEAN_NAME: &str = "data.mean";
const EIGVAL_NAME: &str = "data.pca_eigval";
const EIGVEC_NAME: &str = "data.pca_eigvec";

/// One named f32 tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// PyTorch state-dict name, e.g. "conv1.weight".
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NamedTensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        NamedTensor {
            name: name.into(),
            shape,
            data,
        }
    }
}

/// Everything a resumed run needs besides the weights and momentum buffers. Stored as JSON in the
/// metadata key `alexnet.train_state` (serde_json writes f32 and u64 exactly).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct TrainState {
    /// SGD steps taken so far.
    pub step: u64,
    /// The epoch in progress (0-based).
    pub epoch: u64,
    /// Batches of `epoch` already consumed: the data-order position to resume from.
    pub batch_in_epoch: u64,
    /// The current learning rate.
    pub lr: f32,
    /// Best validation top-1 error so far (the paper's schedule divides the rate by 10 when this
    /// stops improving).
    pub best_val_top1: Option<f32>,
    pub epochs_since_best: u32,
    pub lr_drops: u32,
    /// The sequential generator (augmentation, shuffling) as it stands at this step.
    pub rng: crate::rng::Rng,
    /// Base of the per-step dropout seeds (masks come from `rng::dropout_keep`).
    pub dropout_seed_base: u64,
    /// Seed of the per-epoch data order.
    pub data_seed: u64,
    /// Host threads of the engines the run computed with (0 on GPUs), recorded so a resume can
    /// tell when it differs (float summation order may depend on it).
    pub threads: usize,
    /// The run's settings (`train`'s flags as JSON): on resume they come from here, and a flag
    /// given differently on the command line is refused unless overridden. Absent in files
    /// written before settings were saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
}

impl TrainState {
    /// The state of a run about to take its first step, seeded with `seed`.
    pub fn fresh(seed: u64, lr: f32) -> TrainState {
        let (rng, dropout_seed_base, data_seed) = TrainState::seeds(seed);
        TrainState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            lr,
            best_val_top1: None,
            epochs_since_best: 0,
            lr_drops: 0,
            rng,
            dropout_seed_base,
            data_seed,
            threads: 0,
            settings: None,
        }
    }

    /// The sequential generator, the dropout seed base and the data-order seed of a run seeded
    /// with `seed`.
    pub fn seeds(seed: u64) -> (crate::rng::Rng, u64, u64) {
        use crate::rng::{hash, Rng};
        (Rng::new(seed), hash(seed, 0xd209), hash(seed, 0xda7a))
    }
}

/// A model file: weights plus what inference and resuming need.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub arch: ArchConfig,
    /// One name per class (e.g. "n01440764 tench"), or empty for unnamed classes.
    pub class_names: Vec<String>,
    /// The mean image [3, mean_side, mean_side] the loader subtracts.
    pub mean: Option<Vec<f32>>,
    pub mean_side: usize,
    /// PCA of the RGB pixel values (Section 4.1 colour augmentation): eigenvalues and
    /// eigenvectors, stored row-major exactly as given.
    pub eigval: Option<[f32; 3]>,
    pub eigvec: Option<[[f32; 3]; 3]>,
    /// Parameters in table order: conv1.weight, conv1.bias, ..., fc8.bias.
    pub params: Vec<NamedTensor>,
    /// Momentum buffers with the parameters' names (stored as "momentum.<name>"); empty for an
    /// inference-only file.
    pub momentum: Vec<NamedTensor>,
    pub train_state: Option<TrainState>,
    /// Free-form strings (data directory, command line, ...), stored as one JSON object.
    pub extra_metadata: BTreeMap<String, String>,
}

/// A tensor borrowed for writing: safetensors asks each one for its bytes once.
struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // safetensors is little-endian; on such hosts the f32 memory already is the file format.
        if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(self.data))
        } else {
            Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

fn ckpt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl Checkpoint {
    /// The expected parameter names and shapes for an architecture, in table order (conv1.weight,
    /// conv1.bias, conv2.weight, ...).
    pub fn param_shapes(arch: &ArchConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let mut out = Vec::new();
        for p in arch.plan()? {
            let name = &p.layer.name;
            let (w, c_out) = match (p.layer.kind, p.conv) {
                (Kind::Conv { .. }, Some(s)) => {
                    (vec![s.c_out, s.c_in / s.groups, s.kh, s.kw], s.c_out)
                }
                (Kind::Fc { out, .. }, _) => (vec![out, p.input.len()], out),
                _ => continue,
            };
            out.push((format!("{name}.weight"), w));
            out.push((format!("{name}.bias"), vec![c_out]));
        }
        Ok(out)
    }

    /// The parameter called `name` (e.g. "fc8.bias").
    pub fn param(&self, name: &str) -> Option<&NamedTensor> {
        self.params.iter().find(|t| t.name == name)
    }

    /// Checks that every tensor agrees with `arch` and with its own data length; `path` only
    /// names the file in the error.
    fn validate(&self, path: &Path) -> Result<()> {
        let expected = Checkpoint::param_shapes(&self.arch)
            .map_err(|e| ckpt_err(path, format!("its architecture is invalid: {e}")))?;
        check_set(path, "", &self.params, &expected)?;
        if !self.momentum.is_empty() {
            check_set(path, MOMENTUM_PREFIX, &self.momentum, &expected)?;
        }
        if let Some(mean) = &self.mean {
            let want = 3 * self.mean_side * self.mean_side;
            if mean.len() != want {
                return Err(ckpt_err(
                    path,
                    format!(
                        "mean image has {} values, expected 3x{}x{} = {want}",
                        mean.len(),
                        self.mean_side,
                        self.mean_side
                    ),
                ));
            }
        }
        // Empty means unnamed classes (shown by index); otherwise one name per class.
        if !self.class_names.is_empty() && self.class_names.len() != self.arch.classes {
            return Err(ckpt_err(
                path,
                format!(
                    "{} class names for an architecture with {} classes",
                    self.class_names.len(),
                    self.arch.classes
                ),
            ));
        }
        Ok(())
    }

    /// Atomic: write to DIR/.NAME.tmp-<pid>, fsync the file, rename over PATH, fsync the
    /// directory. A crash at any moment leaves the previous file valid. Refuses (before touching
    /// the disk) a checkpoint whose tensors disagree with its architecture.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate(path)?;
        let mut meta = HashMap::new();
        // "pt" tells Hugging Face tooling these are PyTorch-layout tensors.
        meta.insert(KEY_FORMAT.to_string(), "pt".to_string());
        meta.insert(KEY_VERSION.to_string(), FORMAT_VERSION.to_string());
        meta.insert(KEY_ARCH.to_string(), to_json(path, &self.arch)?);
        meta.insert(KEY_CLASSES.to_string(), to_json(path, &self.class_names)?);
        meta.insert(KEY_MEAN_SIDE.to_string(), self.mean_side.to_string());
        meta.insert(KEY_EXTRA.to_string(), to_json(path, &self.extra_metadata)?);
        if let Some(ts) = &self.train_state {
            meta.insert(KEY_TRAIN_STATE.to_string(), to_json(path, ts)?);
        }

        let momentum_names: Vec<String> = self
            .momentum
            .iter()
            .map(|t| format!("{MOMENTUM_PREFIX}{}", t.name))
            .collect();
        let mean_shape = [3, self.mean_side, self.mean_side];
        let eigval = self.eigval;
        let eigvec: Option<Vec<f32>> = self.eigvec.map(|v| v.iter().flatten().copied().collect());
        let mut views: Vec<(&str, F32View)> = Vec::new();
        for t in &self.params {
            views.push((&t.name, view(&t.shape, &t.data)));
        }
        for (t, name) in self.momentum.iter().zip(&momentum_names) {
            views.push((name, view(&t.shape, &t.data)));
        }
        if let Some(m) = &self.mean {
            views.push((MEAN_NAME, view(&mean_shape, m)));
        }
        if let Some(v) = &eigval {
            views.push((EIGVAL_NAME, view(&[3], v)));
        }
        if let Some(v) = &eigvec {
            views.push((EIGVEC_NAME, view(&[3, 3], v)));
        }

        write_atomically(path, |tmp| {
            safetensors::serialize_to_file(views, Some(meta), tmp).map_err(|e| match e {
                safetensors::SafeTensorError::IoError(io) => Error::io(tmp, io),
                other => ckpt_err(tmp, format!("cannot serialise: {other}")),
            })
        })
    }

    /// The training state in a checkpoint's header, without reading its tensors (a few KB of a
    /// file of hundreds of MB): None for an inference-only file.
    pub fn read_train_state(path: &Path) -> Result<Option<TrainState>> {
        use std::io::Read;
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut len = [0u8; 8];
        f.read_exact(&mut len)
            .map_err(|_| ckpt_err(path, "truncated: shorter than the 8-byte header length"))?;
        let n = u64::from_le_bytes(len);
        if n > file_len.saturating_sub(8) {
            return Err(ckpt_err(
                path,
                format!(
                    "truncated or not safetensors: a header of {n} bytes in a file of {file_len}"
                ),
            ));
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| ckpt_err(path, format!("header is not JSON: {e}")))?;
        match v
            .get("__metadata__")
            .and_then(|m| m.get(KEY_TRAIN_STATE))
            .and_then(|s| s.as_str())
        {
            Some(s) => Ok(Some(from_json(path, KEY_TRAIN_STATE, s)?)),
            None => Ok(None),
        }
    }

    /// Reads and validates a checkpoint: a safetensors file of F32 tensors whose parameter names
    /// and shapes are exactly those its architecture implies (momentum buffers, if any, too).
    /// Errors name the file and what is wrong (truncated, not safetensors, which tensor has which
    /// shape against which expected shape, missing metadata).
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let st =
            SafeTensors::deserialize(&bytes).map_err(|e| ckpt_err(path, diagnose(&bytes, &e)))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| ckpt_err(path, diagnose(&bytes, &e)))?;
        let empty = HashMap::new();
        let meta = header.metadata().as_ref().unwrap_or(&empty);
        let get = |key: &str| -> Result<&String> {
            meta.get(key).ok_or_else(|| {
                ckpt_err(
                    path,
                    format!(
                        "metadata key `{key}` missing: not an alexnet-rs checkpoint (a bare PyTorch \
                         state dict lacks the architecture, class names and mean image)"
                    ),
                )
            })
        };
        let arch: ArchConfig = match get(KEY_VERSION)?.as_str() {
            FORMAT_VERSION => from_json(path, KEY_ARCH, get(KEY_ARCH)?)?,
            "1" => from_json::<ArchV1>(path, KEY_ARCH, get(KEY_ARCH)?)?.into(),
            version => {
                return Err(ckpt_err(
                    path,
                    format!(
                        "format version {version}, this build reads versions 1 and \
                         {FORMAT_VERSION}"
                    ),
                ))
            }
        };
        let class_names: Vec<String> = from_json(path, KEY_CLASSES, get(KEY_CLASSES)?)?;
        let mean_side: usize = from_json(path, KEY_MEAN_SIDE, get(KEY_MEAN_SIDE)?)?;
        let extra_metadata: BTreeMap<String, String> = from_json(path, KEY_EXTRA, get(KEY_EXTRA)?)?;
        let train_state: Option<TrainState> = match meta.get(KEY_TRAIN_STATE) {
            Some(s) => Some(from_json(path, KEY_TRAIN_STATE, s)?),
            None => None,
        };

        let expected = Checkpoint::param_shapes(&arch)
            .map_err(|e| ckpt_err(path, format!("its architecture is invalid: {e}")))?;
        let read = |name: &str, want: &[usize]| -> Result<Option<Vec<f32>>> {
            let t = match st.tensor(name) {
                Ok(t) => t,
                Err(_) => return Ok(None),
            };
            if t.dtype() != Dtype::F32 {
                return Err(ckpt_err(
                    path,
                    format!("tensor `{name}` has dtype {:?}, expected F32", t.dtype()),
                ));
            }
            if t.shape() != want {
                return Err(ckpt_err(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, but the architecture in the file \
                         (classes {}, input {}, net {}) needs {want:?}",
                        t.shape(),
                        arch.classes,
                        arch.input_size,
                        arch.net.label()
                    ),
                ));
            }
            Ok(Some(
                t.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ))
        };

        let mut params = Vec::with_capacity(expected.len());
        for (name, shape) in &expected {
            let data = read(name, shape)?
                .ok_or_else(|| ckpt_err(path, format!("parameter `{name}` {shape:?} missing")))?;
            params.push(NamedTensor::new(name.clone(), shape.clone(), data));
        }
        let has_momentum = st.names().iter().any(|n| n.starts_with(MOMENTUM_PREFIX));
        let mut momentum = Vec::new();
        if has_momentum {
            for (name, shape) in &expected {
                let full = format!("{MOMENTUM_PREFIX}{name}");
                let data = read(&full, shape)?.ok_or_else(|| {
                    ckpt_err(
                        path,
                        format!("momentum buffer `{full}` {shape:?} missing (others are present)"),
                    )
                })?;
                momentum.push(NamedTensor::new(name.clone(), shape.clone(), data));
            }
        }
        let mean = read(MEAN_NAME, &[3, mean_side, mean_side])?;
        let eigval = read(EIGVAL_NAME, &[3])?.map(|v| [v[0], v[1], v[2]]);
        let eigvec = read(EIGVEC_NAME, &[3, 3])?
            .map(|v| [[v[0], v[1], v[2]], [v[3], v[4], v[5]], [v[6], v[7], v[8]]]);

        // Anything else is a tensor this architecture does not have (e.g. fc9.weight, or a file
        // written for another net): refuse rather than silently ignore it.
        let mut known: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
        if has_momentum {
            known.extend(
                expected
                    .iter()
                    .map(|(n, _)| format!("{MOMENTUM_PREFIX}{n}")),
            );
        }
        known.extend([MEAN_NAME, EIGVAL_NAME, EIGVEC_NAME].map(String::from));
        let mut unexpected: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|n| !known.iter().any(|k| k == n))
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort_unstable();
            return Err(ckpt_err(
                path,
                format!(
                    "unexpected tensor(s) {unexpected:?} for the architecture in the file \
                     (classes {}, input {}, net {})",
                    arch.classes,
                    arch.input_size,
                    arch.net.label()
                ),
            ));
        }

        let ckpt = Checkpoint {
            arch,
            class_names,
            mean,
            mean_side,
            eigval,
            eigvec,
            params,
            momentum,
            train_state,
            extra_metadata,
        };
        ckpt.validate(path)?;
        Ok(ckpt)
    }
}

fn view<'a>(shape: &'a [usize], data: &'a [f32]) -> F32View<'a> {
    F32View { shape, data }
}

/// Checks a list of tensors against the expected names and shapes, in any order.
fn check_set(
    path: &Path,
    prefix: &str,
    tensors: &[NamedTensor],
    expected: &[(String, Vec<usize>)],
) -> Result<()> {
    for t in tensors {
        let n: usize = t.shape.iter().product();
        if n != t.data.len() {
            return Err(ckpt_err(
                path,
                format!(
                    "tensor `{prefix}{}` has shape {:?} ({n} values) but {} values",
                    t.name,
                    t.shape,
                    t.data.len()
                ),
            ));
        }
        match expected.iter().find(|(name, _)| *name == t.name) {
            None => {
                return Err(ckpt_err(
                    path,
                    format!(
                        "unexpected tensor `{prefix}{}` for this architecture",
                        t.name
                    ),
                ))
            }
            Some((_, shape)) if *shape != t.shape => {
                return Err(ckpt_err(
                    path,
                    format!(
                        "tensor `{prefix}{}` has shape {:?}, the architecture needs {shape:?}",
                        t.name, t.shape
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    for (name, shape) in expected {
        let count = tensors.iter().filter(|t| t.name == *name).count();
        if count != 1 {
            let what = if count == 0 {
                "missing"
            } else {
                "given more than once"
            };
            return Err(ckpt_err(
                path,
                format!("tensor `{prefix}{name}` {shape:?} {what}"),
            ));
        }
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| ckpt_err(path, format!("cannot encode metadata: {e}")))
}

/// The architecture as format 1 stored it: a built-in net by name (`"Paper"`, `"OneColumn"`)
/// and the LRN constants as five loose fields.
#[derive(serde::Deserialize)]
struct ArchV1 {
    preset: Net,
    classes: usize,
    input_size: usize,
    lrn_size: usize,
    lrn_alpha: f32,
    lrn_beta: f32,
    lrn_k: f32,
    lrn_alpha_over_n: bool,
    dropout: f32,
    dropout_paper_scaling: bool,
    cross_column: Option<Vec<String>>,
}

impl From<ArchV1> for ArchConfig {
    fn from(v1: ArchV1) -> ArchConfig {
        ArchConfig {
            net: v1.preset,
            classes: v1.classes,
            input_size: v1.input_size,
            lrn: LrnParams {
                size: v1.lrn_size,
                alpha: v1.lrn_alpha,
                beta: v1.lrn_beta,
                k: v1.lrn_k,
                alpha_over_n: v1.lrn_alpha_over_n,
            },
            dropout: v1.dropout,
            dropout_paper_scaling: v1.dropout_paper_scaling,
            // Files from before the list existed were written with the paper's wiring.
            cross_column: v1
                .cross_column
                .unwrap_or_else(|| ArchConfig::default().cross_column),
        }
    }
}

fn from_json<T: serde::de::DeserializeOwned>(path: &Path, key: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| ckpt_err(path, format!("metadata `{key}` is invalid: {e}")))
}

/// Turns a safetensors parse error into what a user can act on: a short or cut-off file is
/// "truncated", a file whose first 8 bytes are not a plausible header length is "not a
/// safetensors file".
fn diagnose(bytes: &[u8], err: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    let len = bytes.len() as u64;
    if len < 8 {
        return format!(
            "truncated: the file has {len} bytes, a safetensors file starts with an 8-byte header length"
        );
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    let starts_json = bytes.get(8) == Some(&b'{');
    match err {
        E::MetadataIncompleteBuffer => {
            let header = usize::try_from(n)
                .ok()
                .and_then(|n| bytes.get(8..8usize.saturating_add(n)));
            let described = header.and_then(described_data_len);
            let have = len.saturating_sub(8).saturating_sub(n);
            match described {
                Some(d) if d > have => format!(
                    "truncated: the header describes {d} bytes of tensor data but only {have} follow \
                     (the file was cut short, e.g. by a crash while copying)"
                ),
                Some(d) => format!(
                    "{} bytes after the {d} bytes of tensor data the header describes (corrupt file)",
                    have - d
                ),
                None => format!("corrupt: {err}"),
            }
        }
        _ if !starts_json => format!(
            "not a safetensors file (the first 8 bytes give a header length of {n}, and no JSON \
             header follows; the file has {len} bytes)"
        ),
        E::InvalidHeaderLength | E::HeaderTooLarge if n + 8 > len => {
            format!("truncated: the header length is {n} bytes but the file has only {len} bytes")
        }
        _ => format!("corrupt safetensors header: {err}"),
    }
}

/// The end of the last tensor's data according to the JSON header, if it parses.
fn described_data_len(header: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    v.as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .or(Some(0))
}

/// The name of the temporary file `write_atomically` uses for `path` in this process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or unlink in `dir` durable (on Linux a rename is only on disk once the
/// directory is synced).
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes through `write` into a temporary file beside `path`, syncs it, renames it over `path`
/// and syncs the directory. On failure the temporary file is removed and `path` is untouched.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(parent_dir(path))
    });
    if result.is_err() {
        // Best effort: the error being returned matters more than a leftover temp file, which
        // CheckpointDir::new removes later anyway.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Checkpoint directory management: DIR/last.safetensors (latest), DIR/step-<N>.safetensors
/// keeping the `keep` highest steps, DIR/best.safetensors (best validation top-1 error so far).
/// last and best are hard links to the step file when the filesystem allows it (no second copy
/// of a 244 MB file), else atomic copies.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    dir: PathBuf,
    keep: usize,
}

impl CheckpointDir {
    /// Creates the directory if needed and removes temporary files left by killed writers (those
    /// whose process no longer exists), which are never valid checkpoints.
    pub fn new(dir: &Path, keep: usize) -> Result<CheckpointDir> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = stale_temp_pid(&name) {
                // A live writer's temp file (another process saving right now) is left alone;
                // without /proc we cannot tell, so nothing is removed.
                let proc_dir = Path::new("/proc");
                if pid != std::process::id()
                    && proc_dir.is_dir()
                    && !proc_dir.join(pid.to_string()).exists()
                {
                    fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
                }
            }
        }
        Ok(CheckpointDir {
            dir: dir.to_path_buf(),
            keep,
        })
    }

    /// The file names of the directory `dir`, for looking at what it holds: nothing is created
    /// or cleaned, and `save` on it would keep no step files.
    pub fn at(dir: &Path) -> CheckpointDir {
        CheckpointDir {
            dir: dir.to_path_buf(),
            keep: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn last(&self) -> PathBuf {
        self.dir.join("last.safetensors")
    }

    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }

    pub fn step_path(&self, step: u64) -> PathBuf {
        self.dir.join(format!("step-{step}.safetensors"))
    }

    /// The step files present, ascending by step.
    pub fn steps(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name
                .strip_prefix("step-")
                .and_then(|s| s.strip_suffix(".safetensors"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push((step, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Saves `ckpt` as step-<step> (when keep > 0), updates last (and best when `is_best`), then
    /// deletes step files beyond the `keep` highest. Returns the file written first (step-<step>,
    /// or last when keep is 0). Every file is replaced atomically.
    pub fn save(&self, ckpt: &Checkpoint, step: u64, is_best: bool) -> Result<PathBuf> {
        let primary = if self.keep > 0 {
            self.step_path(step)
        } else {
            self.last()
        };
        ckpt.save(&primary)?;
        if primary != self.last() {
            replace_with_link(&primary, &self.last())?;
        }
        if is_best {
            replace_with_link(&primary, &self.best())?;
        }
        if self.keep > 0 {
            let steps = self.steps()?;
            let excess = steps.len().saturating_sub(self.keep);
            for (_, p) in &steps[..excess] {
                fs::remove_file(p).map_err(|e| Error::io(p, e))?;
            }
            if excess > 0 {
                sync_dir(&self.dir)?;
            }
        }
        Ok(primary)
    }
}

/// The pid in a temporary file name `.NAME.tmp-<pid>`.
fn stale_temp_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, pid) = name.rsplit_once(".tmp-")?;
    pid.parse().ok()
}

/// Atomically makes `dst` the same file as `src`: a hard link under a temporary name renamed
/// over `dst`, or, where hard links are not supported, a synced copy renamed over `dst`.
fn replace_with_link(src: &Path, dst: &Path) -> Result<()> {
    let tmp = temp_path(dst);
    // A leftover from an earlier failed call would make hard_link fail.
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(src, &tmp).is_ok() {
        if let Err(e) = fs::rename(&tmp, dst) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(dst, e));
        }
        return sync_dir(parent_dir(dst));
    }
    write_atomically(dst, |tmp| {
        fs::copy(src, tmp)
            .map(|_| ())
            .map_err(|e| Error::io(tmp, e))
    })
}
