//! The mean image (paper Section 2) and the RGB covariance eigen-decomposition (Section 4.1).
//!
//! Sums are kept in integers, so the result is exact and does not depend on how the images were
//! split between threads or in which order partial sums were merged.

use super::{Dataset, Stats};
use crate::{Error, Result};
use rayon::prelude::*;

/// Running sums over u8 CHW images of one side.
#[derive(Clone, Debug)]
pub struct StatsAccumulator {
    side: usize,
    images: u64,
    /// Per-position sums, `[3, side, side]`.
    pixel_sum: Vec<u64>,
    /// Sum of each channel over all pixels.
    rgb_sum: [u64; 3],
    /// Sum of products `x_c * x_d` over all pixels (upper triangle used).
    rgb_outer: [[u64; 3]; 3],
}

impl StatsAccumulator {
    pub fn new(side: usize) -> Self {
        StatsAccumulator {
            side,
            images: 0,
            pixel_sum: vec![0; 3 * side * side],
            rgb_sum: [0; 3],
            rgb_outer: [[0; 3]; 3],
        }
    }

    pub fn images(&self) -> u64 {
        self.images
    }

    /// Adds one image (`3 * side * side` bytes, CHW).
    #[allow(clippy::needless_range_loop)] // 3-vector algebra reads best with indices
    pub fn add(&mut self, img: &[u8]) -> Result<()> {
        let hw = self.side * self.side;
        if img.len() != 3 * hw {
            return Err(Error::shape(
                "StatsAccumulator::add",
                format!("image has {} bytes, expected {}", img.len(), 3 * hw),
            ));
        }
        for (s, &v) in self.pixel_sum.iter_mut().zip(img) {
            *s += v as u64;
        }
        let (r, rest) = img.split_at(hw);
        let (g, b) = rest.split_at(hw);
        // Per-image partial sums fit u64 easily; six distinct products of the symmetric matrix.
        let mut sum = [0u64; 3];
        let mut outer = [0u64; 6];
        for ((&r, &g), &b) in r.iter().zip(g).zip(b) {
            let (r, g, b) = (r as u64, g as u64, b as u64);
            sum[0] += r;
            sum[1] += g;
            sum[2] += b;
            outer[0] += r * r;
            outer[1] += r * g;
            outer[2] += r * b;
            outer[3] += g * g;
            outer[4] += g * b;
            outer[5] += b * b;
        }
        for c in 0..3 {
            self.rgb_sum[c] += sum[c];
        }
        let idx = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)];
        for (k, &(i, j)) in idx.iter().enumerate() {
            self.rgb_outer[i][j] += outer[k];
        }
        self.images += 1;
        Ok(())
    }

    pub fn merge(&mut self, other: &StatsAccumulator) {
        for (a, b) in self.pixel_sum.iter_mut().zip(&other.pixel_sum) {
            *a += b;
        }
        for c in 0..3 {
            self.rgb_sum[c] += other.rgb_sum[c];
            for d in 0..3 {
                self.rgb_outer[c][d] += other.rgb_outer[c][d];
            }
        }
        self.images += other.images;
    }

    /// The mean image and the eigen-decomposition of the (population, divide-by-N) covariance
    /// of all RGB pixel values.
    pub fn finish(&self) -> Result<Stats> {
        if self.images == 0 {
            return Err(Error::Config(
                "cannot compute dataset statistics over zero images".into(),
            ));
        }
        let n = self.images as f64;
        let mean = self
            .pixel_sum
            .iter()
            .map(|&s| (s as f64 / n) as f32)
            .collect();
        let pixels = n * (self.side * self.side) as f64;
        let mu: Vec<f64> = self.rgb_sum.iter().map(|&s| s as f64 / pixels).collect();
        let mut cov = [[0f64; 3]; 3];
        for i in 0..3 {
            for j in i..3 {
                let v = self.rgb_outer[i][j] as f64 / pixels - mu[i] * mu[j];
                cov[i][j] = v;
                cov[j][i] = v;
            }
        }
        let (val, vec) = eigen_sym3(cov);
        Ok(Stats {
            side: self.side,
            mean,
            eigval: val.map(|v| v.max(0.0) as f32),
            eigvec: vec.map(|v| v.map(|x| x as f32)),
        })
    }
}

/// Eigen-decomposition of a symmetric 3x3 matrix by cyclic Jacobi rotations. Returns eigenvalues
/// in descending order and `vec[i]` = unit eigenvector of `val[i]`, signed so that its
/// largest-magnitude component is positive (a fixed convention, so stored files are comparable).
#[allow(clippy::needless_range_loop)] // 3x3 matrix algebra reads best with indices
pub fn eigen_sym3(a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut a = a;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]; // columns = eigenvectors
    for _sweep in 0..50 {
        let off = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
        let scale = a[0][0].powi(2) + a[1][1].powi(2) + a[2][2].powi(2);
        if off <= 1e-30 * scale.max(1e-300) {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q] == 0.0 {
                continue;
            }
            // Rotation that zeroes a[p][q] (Numerical Recipes' stable form).
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            for k in 0..3 {
                let akp = a[k][p];
                let akq = a[k][q];
                a[k][p] = c * akp - s * akq;
                a[k][q] = s * akp + c * akq;
            }
            for k in 0..3 {
                let apk = a[p][k];
                let aqk = a[q][k];
                a[p][k] = c * apk - s * aqk;
                a[q][k] = s * apk + c * aqk;
            }
            for row in v.iter_mut() {
                let vp = row[p];
                let vq = row[q];
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let mut val = [0.0; 3];
    let mut vec = [[0.0; 3]; 3];
    for (k, &i) in order.iter().enumerate() {
        val[k] = a[i][i];
        let mut e = [v[0][i], v[1][i], v[2][i]];
        let big = e
            .iter()
            .copied()
            .max_by(|x, y| x.abs().total_cmp(&y.abs()))
            .unwrap_or(1.0);
        if big < 0.0 {
            e = e.map(|x| -x);
        }
        vec[k] = e;
    }
    (val, vec)
}

/// Stats over a dataset, in parallel. `sample = Some(k)` uses k evenly spaced images (the PCA
/// and mean of a procedural or very large set need no more), `None` uses every image.
pub fn compute_stats(ds: &dyn Dataset, sample: Option<usize>) -> Result<Stats> {
    let len = ds.len();
    let k = sample.unwrap_or(len).min(len);
    if k == 0 {
        return Err(Error::Config(
            "cannot compute dataset statistics over zero images".into(),
        ));
    }
    let side = ds.side();
    let chunk = k.div_ceil(rayon::current_num_threads() * 4).max(1);
    let parts: Vec<Result<StatsAccumulator>> = (0..k)
        .collect::<Vec<_>>()
        .par_chunks(chunk)
        .map(|positions| {
            let mut acc = StatsAccumulator::new(side);
            let mut buf = vec![0u8; 3 * side * side];
            for &p in positions {
                // Evenly spaced: position p of k maps to index floor(p * len / k).
                let index = (p as u128 * len as u128 / k as u128) as usize;
                ds.read(index, &mut buf)?;
                acc.add(&buf)?;
            }
            Ok(acc)
        })
        .collect();
    let mut total = StatsAccumulator::new(side);
    for p in parts {
        total.merge(&p?);
    }
    total.finish()
}
