//! What a configuration needs in memory, worked out from the layer table before anything is
//! allocated: a configuration that cannot fit is refused at once with the numbers and the largest
//! batch and input that would fit, instead of an abort ("memory allocation failed") minutes in.

use crate::arch::{ArchConfig, Kind};
use crate::error::{Error, Result};

/// Bytes per f32.
const F32: u64 = 4;

/// The training footprint of a net, split by what scales with the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Parameters with their gradients and momentum buffers.
    pub parameters: u64,
    /// Activations, their gradients, LRN scales, probabilities and the prefetched input, per
    /// image of a batch.
    pub per_image: u64,
    /// The CPU engine's per-thread convolution scratch for the largest convolution (im2col of
    /// one image and its weight-gradient partial sums, or Winograd's transformed tiles and
    /// filters, whichever is larger).
    pub per_thread: u64,
    /// One input image as the loader hands it over (f32).
    pub input_image: u64,
}

/// Where a run keeps what: the engine's threads, whether the net's buffers are host memory (the
/// CPU engine) or a device's, and how many batches the loader holds at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub threads: usize,
    pub net_in_host: bool,
    pub loader_batches: usize,
}

impl Footprint {
    /// The footprint of training `cfg` (the same for one executor or its columns split).
    pub fn training(cfg: &ArchConfig) -> Result<Footprint> {
        let plan = cfg.plan()?;
        let input = 3 * (cfg.input_size as u64).pow(2);
        let mut parameters = 0;
        // The input batch twice (current and prefetched) and its gradient buffer.
        let mut per_image = 3 * input;
        let mut per_thread = 0;
        for p in &plan {
            parameters += 3 * p.params;
            let out = p.output.len() as u64;
            per_image += match p.layer.kind {
                // In place: no buffer of their own.
                Kind::Relu | Kind::Dropout | Kind::AdaptiveAvgPool { .. } => 0,
                // Output, its gradient and the normalising scale.
                Kind::Lrn { .. } => 3 * out,
                _ => 2 * out,
            };
            if let Some(c) = p.conv {
                per_thread = per_thread.max(crate::engine::cpu::conv_scratch_floats(&c) as u64);
            }
        }
        per_image += cfg.classes as u64;
        Ok(Footprint {
            parameters: parameters * F32,
            per_image: per_image * F32,
            per_thread: per_thread * F32,
            input_image: input * F32,
        })
    }

    /// Host bytes for batches of `batch` placed as `at`, by part.
    pub fn host_parts(&self, batch: usize, at: Placement) -> Vec<(String, u64)> {
        let b = batch as u64;
        let mut parts = Vec::new();
        if at.net_in_host {
            parts.push(("parameters".into(), self.parameters));
            parts.push((
                format!("activations of a batch of {batch}"),
                self.per_image.saturating_mul(b),
            ));
            parts.push((
                format!("scratch of {} threads", at.threads),
                self.per_thread.saturating_mul(at.threads as u64),
            ));
        }
        parts.push((
            format!("{} loader batches", at.loader_batches),
            self.input_image
                .saturating_mul(b)
                .saturating_mul(at.loader_batches as u64),
        ));
        parts
    }

    /// Host bytes for batches of `batch` placed as `at`.
    pub fn host_bytes(&self, batch: usize, at: Placement) -> u64 {
        self.host_parts(batch, at)
            .iter()
            .fold(0u64, |sum, (_, b)| sum.saturating_add(*b))
    }
}

/// Memory the system can give this process now without swapping (Linux's MemAvailable), if
/// known.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Refuses a training configuration whose host memory (placed as `at`) exceeds `available`
/// bytes. The error gives the need, its parts, and the largest `--batch-size` and
/// `--input-size` that would fit.
pub fn check_training(cfg: &ArchConfig, batch: usize, at: Placement, available: u64) -> Result<()> {
    let footprint = Footprint::training(cfg)?;
    let need = footprint.host_bytes(batch, at);
    if need <= available {
        return Ok(());
    }
    let fits = |cfg: &ArchConfig, batch: usize| {
        Footprint::training(cfg).is_ok_and(|f| f.host_bytes(batch, at) <= available)
    };
    let largest_batch = largest(1, batch, |b| fits(cfg, b));
    let at_input = |s: usize| ArchConfig {
        input_size: s,
        ..cfg.clone()
    };
    // Inputs below the net's smallest working size are invalid, not too big: search above it.
    let smallest_input = (1..=cfg.input_size).find(|&s| at_input(s).plan().is_ok());
    let largest_input = smallest_input
        .and_then(|from| largest(from, cfg.input_size, |s| fits(&at_input(s), batch)));
    let mut hints = Vec::new();
    if let Some(b) = largest_batch {
        hints.push(format!("--batch-size {b}"));
    }
    if let Some(s) = largest_input {
        hints.push(format!("--input-size {s} (at batch {batch})"));
    }
    let what_fits = match hints.is_empty() {
        true => "not even a batch of 1 fits".to_string(),
        false => format!("the largest that fit: {}", hints.join(", or ")),
    };
    let parts: Vec<String> = footprint
        .host_parts(batch, at)
        .iter()
        .filter(|(_, b)| *b > 0)
        .map(|(what, b)| format!("{what} {}", gib(*b)))
        .collect();
    Err(Error::Config(format!(
        "this configuration needs about {} of memory ({}), but {} is available; {what_fits}",
        gib(need),
        parts.join(", "),
        gib(available)
    )))
}

/// The largest value in `from..=upto` for which `fits` holds, given that it is monotone (true up
/// to some point), or None if even `from` does not fit.
fn largest(from: usize, upto: usize, fits: impl Fn(usize) -> bool) -> Option<usize> {
    if !fits(from) {
        return None;
    }
    let (mut lo, mut hi) = (from, upto);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

/// "1.25 GiB".
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_net_needs_what_the_table_says() {
        let cfg = ArchConfig::default();
        let f = Footprint::training(&cfg).unwrap();
        // 60,965,224 parameters, each with a gradient and a momentum buffer.
        assert_eq!(f.parameters, 60_965_224 * 3 * 4);
        // Per image: at least conv1's output and its gradient (96x55x55 twice).
        assert!(f.per_image > 2 * 96 * 55 * 55 * 4);
    }

    #[test]
    fn a_config_that_cannot_fit_names_what_would() {
        let cfg = ArchConfig::default();
        let at = Placement {
            threads: 2,
            net_in_host: true,
            loader_batches: 4,
        };
        let available = Footprint::training(&cfg).unwrap().host_bytes(10, at);
        assert!(check_training(&cfg, 10, at, available).is_ok());
        let err = check_training(&cfg, 128, at, available)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--batch-size 10,"), "{err}");
        assert!(err.contains("--input-size"), "{err}");
        // On a device only the loader's batches are host memory.
        let device = Placement {
            net_in_host: false,
            ..at
        };
        assert!(check_training(&cfg, 128, device, available).is_ok());
        // Less than the parameters alone: nothing fits.
        let err = check_training(&cfg, 1, at, 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not even a batch of 1"), "{err}");
    }

    #[test]
    fn largest_finds_the_edge() {
        assert_eq!(largest(1, 100, |v| v <= 37), Some(37));
        assert_eq!(largest(5, 100, |_| true), Some(100));
        assert_eq!(largest(1, 100, |_| false), None);
    }
}
