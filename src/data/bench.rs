//! Loader speed: decode+resize (preparation) and augmentation (training), per core.

use super::{decode_resize, Augment, Dataset, InMemory, Loader, LoaderConfig, Share, Synthetic};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Instant;

/// Measured rates (images/s). "Per core" rates run on one thread.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoaderBench {
    /// JPEG (500x375, quality 90, the typical ILSVRC size) decode + resize + centre crop.
    pub decode_per_core: f64,
    /// Random crop + flip + PCA lighting + mean subtraction from a stored image, one thread.
    pub augment_per_core: f64,
    /// The threaded loader with `workers` threads, end to end, in images/s.
    pub loader_total: f64,
    pub workers: usize,
    pub side: usize,
    pub crop: usize,
    /// Cores the loader needs to feed 10,000 images/s from prepared data.
    pub cores_for_10k: f64,
}

/// A 500x375 JPEG with shapes, gradients and noise (compresses like a photo, roughly).
pub fn sample_jpeg(seed: u64) -> Result<Vec<u8>> {
    let (w, h) = (500usize, 375usize);
    let ds = Synthetic::new(20, 1, w, seed)?;
    let mut chw = vec![0u8; 3 * w * w];
    ds.read(0, &mut chw)?;
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            rgb.extend((0..3).map(|c| chw[c * w * w + y * w + x]));
        }
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(&rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Config(format!("encoding the benchmark JPEG: {e}")))?;
    Ok(out)
}

/// Runs each measurement for about `seconds`.
pub fn bench_loader(side: usize, crop: usize, workers: usize, seconds: f64) -> Result<LoaderBench> {
    let jpeg = sample_jpeg(1)?;
    let t0 = Instant::now();
    let mut decoded = 0usize;
    while t0.elapsed().as_secs_f64() < seconds {
        decode_resize(&jpeg, side, true)
            .map_err(|m| Error::Config(format!("benchmark decode: {m}")))?;
        decoded += 1;
    }
    let decode_per_core = decoded as f64 / t0.elapsed().as_secs_f64();

    let ds: Arc<dyn Dataset> =
        Arc::new(InMemory::from_dataset(&Synthetic::new(10, 256, side, 3)?)?);
    let stats = Arc::new(super::compute_stats(ds.as_ref(), None)?);
    let rate = |workers: usize| -> Result<f64> {
        let t0 = Instant::now();
        let mut images = 0usize;
        let mut epoch = 0;
        while t0.elapsed().as_secs_f64() < seconds {
            let cfg = LoaderConfig {
                batch: 128,
                workers,
                prefetch: workers.max(1) * 2,
                seed: 7,
                augment: Augment::train(crop),
                shuffle: true,
                drop_last: false,
                share: Share::WHOLE,
            };
            let mut loader = Loader::new(ds.clone(), stats.clone(), cfg, epoch, 0)?;
            while let Some(b) = loader.next() {
                images += b?.0.n;
            }
            epoch += 1;
        }
        Ok(images as f64 / t0.elapsed().as_secs_f64())
    };
    let augment_per_core = rate(0)?;
    let loader_total = rate(workers)?;
    Ok(LoaderBench {
        decode_per_core,
        augment_per_core,
        loader_total,
        workers,
        side,
        crop,
        cores_for_10k: 10_000.0 / augment_per_core,
    })
}
