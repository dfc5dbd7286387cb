//! Top-1/top-5 evaluation as Section 6 reports it: the centre crop and the paper's 10-crop
//! average of softmax outputs side by side, optionally over an ensemble of checkpoints, and
//! prediction on image files.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::data::{centre_crop, load_image_file, ten_crops, Dataset, Stats};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::metrics::{average_probs, top_k, topk_errors, ClassAccuracy};
use crate::parallel::Network;

#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Images per forward pass (10-crop: crops per pass, rounded down to whole images).
    pub batch: usize,
    pub ten_crop: bool,
    /// Threads decoding and cropping (0 = rayon's default).
    pub workers: usize,
}

/// Error rates are fractions in [0, 1].
#[derive(Clone, Debug)]
pub struct EvalResult {
    pub images: usize,
    pub top1: f32,
    pub top5: f32,
    /// (top-1, top-5) of the 10-crop average, when asked for.
    pub ten_crop: Option<(f32, f32)>,
    /// Per-class accuracy of the best protocol evaluated (10-crop if asked, else centre).
    pub per_class: ClassAccuracy,
}

/// Evaluates one model on every image of `ds`.
pub fn evaluate<E: Engine>(
    engines: &[E],
    model: &mut Network<E>,
    ds: &dyn Dataset,
    stats: &Stats,
    opts: &EvalOptions,
) -> Result<EvalResult> {
    evaluate_ensemble(engines, std::slice::from_mut(model), ds, stats, opts)
}

/// Evaluates the average of the models' softmax outputs (the paper's 5- and 7-CNN ensembles).
pub fn evaluate_ensemble<E: Engine>(
    engines: &[E],
    models: &mut [Network<E>],
    ds: &dyn Dataset,
    stats: &Stats,
    opts: &EvalOptions,
) -> Result<EvalResult> {
    let first = models
        .first()
        .ok_or_else(|| Error::Config("no model to evaluate".into()))?;
    let (classes, crop) = (first.cfg().classes, first.cfg().input_size);
    if let Some(m) = models
        .iter()
        .find(|m| m.cfg().classes != classes || m.cfg().input_size != crop)
    {
        return Err(Error::Config(format!(
            "ensemble members disagree: {} classes at {}px vs {classes} at {crop}px",
            m.cfg().classes,
            m.cfg().input_size
        )));
    }
    if ds.classes() != classes {
        return Err(Error::Config(format!(
            "the dataset has {} classes, the model {classes}",
            ds.classes()
        )));
    }
    let side = ds.side();
    if side < crop || stats.side != side {
        return Err(Error::Config(format!(
            "images are {side}x{side} (mean image {0}x{0}); the model needs {crop}x{crop} crops",
            stats.side
        )));
    }
    let chunk = if opts.ten_crop {
        (opts.batch / 10).max(1)
    } else {
        opts.batch.max(1)
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.workers)
        .build()
        .map_err(|err| Error::Config(format!("cannot start the decode threads: {err}")))?;
    let crop_len = 3 * crop * crop;
    let (mut err1, mut err5, mut err1_10, mut err5_10) = (0, 0, 0, 0);
    let mut per_class = ClassAccuracy::new(classes);
    let k5 = 5.min(classes);
    for start in (0..ds.len()).step_by(chunk) {
        let n = chunk.min(ds.len() - start);
        // Decode in parallel: image i's pixels and label.
        let images: Vec<(Vec<u8>, u32)> = pool.install(|| {
            (start..start + n)
                .into_par_iter()
                .map(|i| {
                    let mut px = vec![0u8; 3 * side * side];
                    let label = ds.read(i, &mut px)?;
                    Ok((px, label))
                })
                .collect::<Result<_>>()
        })?;
        let labels: Vec<u32> = images.iter().map(|(_, l)| *l).collect();

        let mut centre = vec![0.0f32; n * crop_len];
        for ((px, _), out) in images.iter().zip(centre.chunks_mut(crop_len)) {
            centre_crop(px, side, crop, stats, out);
        }
        let probs = ensemble_probs(engines, models, &centre, n)?;
        err1 += topk_errors(&probs, classes, &labels, 1);
        err5 += topk_errors(&probs, classes, &labels, k5);

        let best = if opts.ten_crop {
            let mut crops = vec![0.0f32; n * 10 * crop_len];
            for ((px, _), out) in images.iter().zip(crops.chunks_mut(10 * crop_len)) {
                ten_crops(px, side, crop, stats, out);
            }
            let per_crop = ensemble_probs(engines, models, &crops, n * 10)?;
            // Average each image's ten rows.
            let averaged: Vec<f32> = per_crop
                .chunks(10 * classes)
                .flat_map(|rows| {
                    let sets: Vec<&[f32]> = rows.chunks(classes).collect();
                    average_probs(&sets)
                })
                .collect();
            err1_10 += topk_errors(&averaged, classes, &labels, 1);
            err5_10 += topk_errors(&averaged, classes, &labels, k5);
            averaged
        } else {
            probs
        };
        per_class.accumulate(&best, &labels)?;
    }
    let total = ds.len().max(1) as f32;
    Ok(EvalResult {
        images: ds.len(),
        top1: err1 as f32 / total,
        top5: err5 as f32 / total,
        ten_crop: opts
            .ten_crop
            .then(|| (err1_10 as f32 / total, err5_10 as f32 / total)),
        per_class,
    })
}

/// Mean softmax over the ensemble for `n` preprocessed images.
fn ensemble_probs<E: Engine>(
    engines: &[E],
    models: &mut [Network<E>],
    images: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    let mut outs = Vec::with_capacity(models.len());
    for m in models.iter_mut() {
        m.set_batch(engines, n)?;
        m.forward(engines, images, None)?;
        outs.push(m.probabilities(engines)?);
    }
    let sets: Vec<&[f32]> = outs.iter().map(|v| v.as_slice()).collect();
    Ok(average_probs(&sets))
}

/// One image's prediction: the top-k classes with probabilities.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prediction {
    pub path: PathBuf,
    pub top: Vec<(usize, String, f32)>,
}

/// Predicts each file: shorter side to the stored side, then the centre crop or 10-crop
/// average, exactly as evaluation does. A file that cannot be read is an error for that file
/// only.
pub fn predict_files<E: Engine>(
    engines: &[E],
    models: &mut [Network<E>],
    class_names: &[String],
    stats: &Stats,
    paths: &[PathBuf],
    ten_crop: bool,
    k: usize,
) -> Vec<Result<Prediction>> {
    paths
        .iter()
        .map(|path| predict_one(engines, models, class_names, stats, path, ten_crop, k))
        .collect()
}

fn predict_one<E: Engine>(
    engines: &[E],
    models: &mut [Network<E>],
    class_names: &[String],
    stats: &Stats,
    path: &Path,
    ten_crop: bool,
    k: usize,
) -> Result<Prediction> {
    let crop = models
        .first()
        .ok_or_else(|| Error::Config("no model".into()))?
        .cfg()
        .input_size;
    let px = load_image_file(path, stats.side)?;
    let crop_len = 3 * crop * crop;
    let probs = if ten_crop {
        let mut crops = vec![0.0f32; 10 * crop_len];
        ten_crops(&px, stats.side, crop, stats, &mut crops);
        let rows = ensemble_probs(engines, models, &crops, 10)?;
        let classes = rows.len() / 10;
        let sets: Vec<&[f32]> = rows.chunks(classes).collect();
        average_probs(&sets)
    } else {
        let mut one = vec![0.0f32; crop_len];
        centre_crop(&px, stats.side, crop, stats, &mut one);
        ensemble_probs(engines, models, &one, 1)?
    };
    let top = top_k(&probs, k)
        .into_iter()
        .map(|(c, p)| {
            let name = class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
            (c, name, p)
        })
        .collect();
    Ok(Prediction {
        path: path.to_path_buf(),
        top,
    })
}
