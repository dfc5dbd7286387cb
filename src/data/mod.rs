//! The data side: datasets, preparation, augmentation and the background loader.
//!
//! ```text
//! photos ──prepare──▶ PackedDataset (256x256 u8 CHW shards + index, mean image, RGB PCA)
//! Synthetic (procedural, default) / Cifar10 / InMemory ─┐
//! PackedDataset ────────────────────────────────────────┴─▶ Loader threads
//!     (random crop, flip, PCA lighting, mean subtraction) ──▶ Batch (f32 NCHW)
//! ```
//!
//! Every dataset stores images as `u8`, CHW, `3 x side x side`; every statistic ([`Stats`]) is on
//! the 0..255 pixel scale. See `docs/data.md` for the on-disk format, filters and loader speed.

mod augment;
mod bench;
pub mod cifar;
mod image_io;
mod loader;
pub mod packed;
pub mod prepare;
mod stats;
pub mod synthetic;

pub use augment::{
    centre_crop, extract_view, pca_shift, ten_crop_views, ten_crops, View, PCA_SCALE,
};
pub use bench::{bench_loader, sample_jpeg, LoaderBench};
pub use cifar::Cifar10;
pub use image_io::{decode_resize, load_image_file, Decoded};
pub use loader::Loader;
pub use packed::PackedDataset;
pub use prepare::{prepare, PrepareArgs, PrepareSummary};
pub use stats::{compute_stats, StatsAccumulator};
pub use synthetic::{synthetic_split, Synthetic};

/// One training/eval batch, ready for the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[n, 3, size, size]`, NCHW, mean-subtracted unless the augmentation turned that off.
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub n: usize,
    /// The crop side S.
    pub size: usize,
    /// Dataset indices of the images, for reporting.
    pub indices: Vec<usize>,
}

/// Per-dataset statistics stored beside the data (paper Section 2 and 4.1), on the 0..255 pixel
/// scale.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub side: usize,
    /// The mean image over the training set, `[3, side, side]`.
    pub mean: Vec<f32>,
    /// Eigenvalues of the 3x3 covariance of RGB pixel values (pixel levels squared), descending.
    pub eigval: [f32; 3],
    /// `eigvec[i]` = the i-th unit eigenvector (R, G, B), in the order of `eigval`.
    pub eigvec: [[f32; 3]; 3],
}

/// Random access to stored images (u8, CHW, 3 x side x side).
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn side(&self) -> usize;
    fn classes(&self) -> usize;
    fn class_names(&self) -> Vec<String>;
    /// Writes image `index` into `out` (len 3*side*side, CHW u8) and returns its label.
    fn read(&self, index: usize, out: &mut [u8]) -> crate::Result<u32>;
}

/// Which augmentations the loader applies (paper Section 4.1). Each can be turned off for
/// ablations and exact comparisons; turning one off does not change the random draws of the
/// others (every image always draws the same numbers in the same order).
#[derive(Clone, Debug, PartialEq)]
pub struct Augment {
    /// Output side (227 for the paper's net as Caffe counts it).
    pub crop: usize,
    /// Random crop position; `false` = the centre crop.
    pub random_crop: bool,
    /// Horizontal reflection with probability 1/2.
    pub flip: bool,
    /// Standard deviation of the PCA lighting coefficients (0.1 in the paper; 0 = off).
    pub pca_std: f32,
    /// Subtract the mean image (at the same source pixels as the crop, flipped with it).
    pub subtract_mean: bool,
}

impl Augment {
    /// The paper's training augmentation at crop side `crop`.
    pub fn train(crop: usize) -> Augment {
        Augment {
            crop,
            random_crop: true,
            flip: true,
            pca_std: 0.1,
            subtract_mean: true,
        }
    }

    /// Evaluation: centre crop, mean subtraction, nothing random.
    pub fn eval(crop: usize) -> Augment {
        Augment {
            crop,
            random_crop: false,
            flip: false,
            pca_std: 0.0,
            subtract_mean: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    pub batch: usize,
    /// Worker threads; 0 = build each batch on the calling thread inside `next()`.
    pub workers: usize,
    /// Most batches ready or in progress ahead of the consumer (at least 1).
    pub prefetch: usize,
    pub seed: u64,
    pub augment: Augment,
    pub shuffle: bool,
    /// Drop the last partial batch of the epoch.
    pub drop_last: bool,
    /// Which share of each batch this loader builds (data parallelism: every replica's loader
    /// cuts the same global batches, each builds its own images).
    pub share: Share,
}

/// Share `index` of `of` equal, consecutive parts of every batch: of a batch of `n` images,
/// images `n * index / of .. n * (index + 1) / of`. Augmentation and order are those of the
/// whole batch's images, so the shares together are exactly the whole batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub of: usize,
}

impl Share {
    /// The whole batch.
    pub const WHOLE: Share = Share { index: 0, of: 1 };

    /// This share's images of a batch of `n`.
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        n * self.index / self.of..n * (self.index + 1) / self.of
    }
}

/// A dataset held in memory (tests, benchmarks, small experiments).
#[derive(Clone, Debug)]
pub struct InMemory {
    pub side: usize,
    pub names: Vec<String>,
    /// `len * 3 * side * side` bytes, CHW per image.
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
}

impl InMemory {
    /// Copies every image of `ds` into memory.
    pub fn from_dataset(ds: &dyn Dataset) -> crate::Result<InMemory> {
        let per = 3 * ds.side() * ds.side();
        let mut pixels = vec![0u8; ds.len() * per];
        let mut labels = Vec::with_capacity(ds.len());
        for (i, chunk) in pixels.chunks_exact_mut(per).enumerate() {
            labels.push(ds.read(i, chunk)?);
        }
        Ok(InMemory {
            side: ds.side(),
            names: ds.class_names(),
            pixels,
            labels,
        })
    }
}

impl Dataset for InMemory {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn side(&self) -> usize {
        self.side
    }
    fn classes(&self) -> usize {
        self.names.len()
    }
    fn class_names(&self) -> Vec<String> {
        self.names.clone()
    }
    fn read(&self, index: usize, out: &mut [u8]) -> crate::Result<u32> {
        let per = 3 * self.side * self.side;
        check_read("in-memory dataset", index, self.len(), out.len(), per)?;
        out.copy_from_slice(&self.pixels[index * per..(index + 1) * per]);
        Ok(self.labels[index])
    }
}

/// The argument checks every `Dataset::read` makes.
pub(crate) fn check_read(
    what: &str,
    index: usize,
    len: usize,
    out: usize,
    per: usize,
) -> crate::Result<()> {
    if index >= len {
        return Err(crate::Error::Config(format!(
            "{what}: image index {index} out of range (len {len})"
        )));
    }
    if out != per {
        return Err(crate::Error::shape(
            "Dataset::read",
            format!("{what}: output buffer has {out} bytes, an image has {per}"),
        ));
    }
    Ok(())
}
