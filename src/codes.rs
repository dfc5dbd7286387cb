//! Short binary codes for retrieval, Section 6.1's untried proposal: "train an auto-encoder to
//! compress these vectors to short binary codes", searched by Hamming distance instead of a
//! Euclidean search over the 4096-d fc7 vectors.
//!
//! The codes are those of Krizhevsky & Hinton 2011 ("Using very deep autoencoders for
//! content-based image retrieval", the paper's reference for the idea): a logistic code layer,
//! each unit thresholded at 0.5. To push the code units to 0 or 1 during training, Gaussian
//! noise is added to their total input (the trick of semantic hashing, Salakhutdinov & Hinton
//! 2009, which that paper builds on): a unit can only carry information through the noise by
//! saturating. Unlike them we train the auto-encoder by backpropagation alone (no RBM
//! pretraining) and it is shallow: features -> hidden (ReLU) -> code (logistic) -> hidden (ReLU)
//! -> features (linear), squared error on the standardised features.
//!
//! The layers run on the project's engines (`fc_forward`/`fc_backward`, `sgd_update`, and the
//! logistic from the engine's tanh: sigma(z) = (1 + tanh(z / 2)) / 2), so the auto-encoder trains
//! on whichever engine `neighbours` runs on.

use std::time::Instant;

use rayon::prelude::*;

use crate::data::{Dataset, PackedDataset, Stats};
use crate::engine::{Engine, FcShape};
use crate::error::{Error, Result};
use crate::features::{extract, nearest, FeatureLayer, ModelOverData};
use crate::model::Model;
use crate::rng::Rng;

/// Shortest and longest codes offered.
pub const MIN_BITS: usize = 8;
pub const MAX_BITS: usize = 1024;

/// Side the raw-pixel baseline resizes every image to: 32x32 colour pixels, the tiny images of
/// Krizhevsky & Hinton 2011 and of CIFAR-10 (which are compared as stored).
pub const PIXEL_SIDE: usize = 32;

/// Momentum of the auto-encoder's SGD (the paper's 0.9).
const MOMENTUM: f32 = 0.9;

/// The `--codes` flags of `neighbours`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct CodesArgs {
    /// Also compress the feature vectors to binary codes of BITS bits (8 to 1024) with an
    /// auto-encoder trained on the searched split's features, and report retrieval precision of
    /// Hamming search over the codes against Euclidean search over the features and over raw
    /// pixels, with --code-queries labelled images of --code-query-split as queries.
    #[arg(long, value_name = "BITS", value_parser = crate::settings::count_in(MIN_BITS as u64, MAX_BITS as u64))]
    pub codes: Option<usize>,
    /// Hidden units on each side of the code layer.
    #[arg(long, default_value_t = 512, value_parser = crate::settings::count_in(1, 16384))]
    pub code_hidden: usize,
    /// Passes over the searched split's features while training the auto-encoder (on CIFAR-10
    /// features the error stops falling after about 5).
    #[arg(long, default_value_t = 10, value_parser = crate::settings::count_in(1, 100_000))]
    pub code_epochs: usize,
    /// Feature vectors per auto-encoder step.
    #[arg(long, default_value_t = 64, value_parser = crate::settings::count_in(1, 65536))]
    pub code_batch: usize,
    /// Learning rate of the auto-encoder's SGD (momentum 0.9, no weight decay) on the squared
    /// error summed over the standardised features and averaged over the batch.
    #[arg(long, default_value_t = 0.002, value_parser = crate::settings::positive)]
    pub code_lr: f32,
    /// Standard deviation of the Gaussian noise added to the code units' total input while
    /// training, which drives them to saturate (0: none).
    #[arg(long, default_value_t = 4.0, value_parser = crate::settings::non_negative)]
    pub code_noise: f32,
    /// Split whose labelled images query the searched split (never the searched split itself).
    #[arg(long, default_value = "val")]
    pub code_query_split: String,
    /// Query images, evenly spaced over --code-query-split (all of it when it has fewer).
    #[arg(long, default_value_t = 1000, value_parser = crate::settings::count_in(1, 1_000_000))]
    pub code_queries: usize,
    /// The k of each precision@k reported, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 50], value_parser = crate::settings::count_in(1, 100_000))]
    pub precision_at: Vec<usize>,
    /// Seed of the auto-encoder's initial weights, batch order and noise.
    #[arg(long, default_value_t = 1)]
    pub code_seed: u64,
}

// ----------------------------------------------------------------------------------------------
// Binary codes and Hamming search
// ----------------------------------------------------------------------------------------------

/// Binary codes, `words` u64 per row, bit `j` of a row in word `j / 64` at bit `j % 64`; the
/// bits past `bits` are zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codes {
    pub bits: usize,
    pub words: usize,
    pub data: Vec<u64>,
}

impl Codes {
    /// Codes of logistic outputs `[rows, bits]`: bit set where the output is above 0.5.
    pub fn threshold(probs: &[f32], bits: usize) -> Codes {
        let words = bits.div_ceil(64);
        let data = probs
            .chunks(bits)
            .flat_map(|row| {
                (0..words).map(move |w| {
                    let part = &row[w * 64..((w + 1) * 64).min(bits)];
                    part.iter()
                        .enumerate()
                        .fold(0u64, |acc, (b, &p)| acc | (u64::from(p > 0.5) << b))
                })
            })
            .collect();
        Codes { bits, words, data }
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.words.max(1)
    }

    pub fn row(&self, i: usize) -> &[u64] {
        &self.data[i * self.words..(i + 1) * self.words]
    }
}

/// Number of differing bits.
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// The `k` rows of `db` nearest to each query in Hamming distance, nearest first, ties by lower
/// index (the order of [`crate::features::nearest`]). Exact: every distance is computed (one
/// XOR and popcount per word); the k smallest are then picked by counting, since a distance is
/// an integer in 0..=bits.
pub fn hamming_nearest(db: &Codes, queries: &Codes, k: usize) -> Result<Vec<Vec<(usize, u32)>>> {
    if db.bits != queries.bits {
        return Err(Error::shape(
            "hamming_nearest",
            format!("{}-bit database, {}-bit queries", db.bits, queries.bits),
        ));
    }
    let k = k.min(db.rows());
    Ok((0..queries.rows())
        .into_par_iter()
        .map(|q| {
            let query = queries.row(q);
            let dist: Vec<u32> = db
                .data
                .chunks_exact(db.words)
                .map(|x| hamming(query, x))
                .collect();
            k_smallest_counts(&dist, db.bits, k)
        })
        .collect())
}

/// The `k` smallest of `dist` (each in 0..=max) as (index, distance), by distance then index.
fn k_smallest_counts(dist: &[u32], max: usize, k: usize) -> Vec<(usize, u32)> {
    let mut count = vec![0usize; max + 1];
    for &d in dist {
        count[d as usize] += 1;
    }
    // The smallest distance `limit` with at least k rows at or below it.
    let (mut limit, mut below) = (0usize, 0usize);
    while limit < max && below + count[limit] < k {
        below += count[limit];
        limit += 1;
    }
    let mut at_limit = k - below.min(k);
    let mut found: Vec<(usize, u32)> = Vec::with_capacity(k);
    for (i, &d) in dist.iter().enumerate() {
        if (d as usize) < limit {
            found.push((i, d));
        } else if d as usize == limit && at_limit > 0 {
            found.push((i, d));
            at_limit -= 1;
        }
    }
    found.sort_by_key(|&(i, d)| (d, i));
    found
}

/// Mean over queries of the fraction of each query's first `k` results whose label is the
/// query's (every query must have at least `k` results).
pub fn precision_at(
    query_labels: &[u32],
    results: &[Vec<usize>],
    db_labels: &[u32],
    k: usize,
) -> f64 {
    let per_query = query_labels.iter().zip(results).map(|(&label, found)| {
        let hits = found[..k]
            .iter()
            .filter(|&&i| db_labels[i] == label)
            .count();
        hits as f64 / k as f64
    });
    per_query.sum::<f64>() / query_labels.len().max(1) as f64
}

// ----------------------------------------------------------------------------------------------
// The auto-encoder
// ----------------------------------------------------------------------------------------------

/// A fully connected layer with its gradients and momentum.
struct Dense<E: Engine> {
    d_in: usize,
    d_out: usize,
    w: E::Buf,
    b: E::Buf,
    dw: E::Buf,
    db: E::Buf,
    vw: E::Buf,
    vb: E::Buf,
}

impl<E: Engine> Dense<E> {
    /// Weights N(0, gain / d_in) (He et al.'s gain 2 before a ReLU, 1 otherwise), biases 0.
    fn new(e: &E, d_in: usize, d_out: usize, gain: f64, rng: &mut Rng) -> Result<Self> {
        let std = (gain / d_in as f64).sqrt();
        let w: Vec<f32> = (0..d_in * d_out)
            .map(|_| (std * rng.normal()) as f32)
            .collect();
        let mut buf = e.alloc(w.len())?;
        e.upload(&mut buf, &w)?;
        Ok(Dense {
            d_in,
            d_out,
            w: buf,
            b: e.alloc(d_out)?,
            dw: e.alloc(d_in * d_out)?,
            db: e.alloc(d_out)?,
            vw: e.alloc(d_in * d_out)?,
            vb: e.alloc(d_out)?,
        })
    }

    fn shape(&self, n: usize) -> FcShape {
        FcShape {
            n,
            d_in: self.d_in,
            d_out: self.d_out,
        }
    }

    fn step(&mut self, e: &E, lr: f32) -> Result<()> {
        e.sgd_update(&mut self.w, &self.dw, &mut self.vw, lr, MOMENTUM, 0.0)?;
        e.sgd_update(&mut self.b, &self.db, &mut self.vb, lr, MOMENTUM, 0.0)
    }
}

/// One batch's activations and their gradients, all `[n, width]`.
struct Pass<E: Engine> {
    n: usize,
    x: E::Buf,
    h1: E::Buf,
    /// tanh(z / 2) of the code units' total input z.
    t: E::Buf,
    noise: E::Buf,
    ones: E::Buf,
    /// The code layer's logistic outputs.
    c: E::Buf,
    h2: E::Buf,
    r: E::Buf,
    neg_x: E::Buf,
    /// r - x, then the loss gradient on r.
    dr: E::Buf,
    dh2: E::Buf,
    dc: E::Buf,
    dh1: E::Buf,
}

impl<E: Engine> Pass<E> {
    fn new(e: &E, n: usize, dim: usize, hidden: usize, bits: usize) -> Result<Self> {
        let mut ones = e.alloc(n * bits)?;
        e.fill(&mut ones, 1.0)?;
        Ok(Pass {
            n,
            x: e.alloc(n * dim)?,
            h1: e.alloc(n * hidden)?,
            t: e.alloc(n * bits)?,
            noise: e.alloc(n * bits)?,
            ones,
            c: e.alloc(n * bits)?,
            h2: e.alloc(n * hidden)?,
            r: e.alloc(n * dim)?,
            neg_x: e.alloc(n * dim)?,
            dr: e.alloc(n * dim)?,
            dh2: e.alloc(n * hidden)?,
            dc: e.alloc(n * bits)?,
            dh1: e.alloc(n * hidden)?,
        })
    }
}

/// features -> hidden (ReLU) -> code (logistic) -> hidden (ReLU) -> features, on standardised
/// features: `(x - mean) / scale`, `mean` per feature, `scale` one number (the features' RMS
/// deviation from the mean), so the squared error is O(dim) whatever the features' units.
pub struct AutoEncoder<E: Engine> {
    pub dim: usize,
    pub hidden: usize,
    pub bits: usize,
    mean: Vec<f32>,
    scale: f32,
    enc: Dense<E>,
    code: Dense<E>,
    dec: Dense<E>,
    out: Dense<E>,
}

/// How training went.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainLog {
    /// Per epoch, the mean squared reconstruction error per standardised feature: the fraction
    /// of the features' variance the auto-encoder fails to reconstruct (1 = none of it).
    pub unexplained: Vec<f64>,
    pub steps: usize,
    pub seconds: f64,
}

impl<E: Engine> AutoEncoder<E> {
    /// An untrained auto-encoder for `feats` (`[rows, dim]`), standardised by their statistics.
    pub fn new(
        e: &E,
        feats: &[f32],
        dim: usize,
        hidden: usize,
        bits: usize,
        seed: u64,
    ) -> Result<Self> {
        let rows = feats.len() / dim.max(1);
        if rows == 0 || feats.len() != rows * dim {
            return Err(Error::shape(
                "auto-encoder",
                format!("{} values do not make rows of {dim}", feats.len()),
            ));
        }
        let mut sum = vec![0.0f64; dim];
        for row in feats.chunks_exact(dim) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v as f64;
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / rows as f64).collect();
        let var = feats
            .chunks_exact(dim)
            .flat_map(|row| row.iter().zip(&mean).map(|(&v, m)| (v as f64 - m).powi(2)))
            .sum::<f64>()
            / (rows * dim) as f64;
        if !var.is_finite() || var <= 0.0 {
            return Err(Error::Config(format!(
                "the {rows} feature vectors are all the same (or not finite): nothing to encode"
            )));
        }
        let mut rng = Rng::new(seed);
        Ok(AutoEncoder {
            dim,
            hidden,
            bits,
            mean: mean.iter().map(|&m| m as f32).collect(),
            scale: var.sqrt() as f32,
            enc: Dense::new(e, dim, hidden, 2.0, &mut rng)?,
            code: Dense::new(e, hidden, bits, 1.0, &mut rng)?,
            dec: Dense::new(e, bits, hidden, 2.0, &mut rng)?,
            out: Dense::new(e, hidden, dim, 1.0, &mut rng)?,
        })
    }

    /// Standardised rows `rows` of `feats` into `pass.x`, zero rows after them.
    fn load(&self, e: &E, pass: &mut Pass<E>, feats: &[f32], rows: &[usize]) -> Result<()> {
        let mut x = vec![0.0f32; pass.n * self.dim];
        for (out, &i) in x.chunks_exact_mut(self.dim).zip(rows) {
            let row = &feats[i * self.dim..(i + 1) * self.dim];
            for ((o, &v), m) in out.iter_mut().zip(row).zip(&self.mean) {
                *o = (v - m) / self.scale;
            }
        }
        e.upload(&mut pass.x, &x)
    }

    // c[n,bits] = sigma(code(relu(enc(x))) + noise), sigma(z) = (1 + tanh(z / 2)) / 2
    fn encode_pass(&self, e: &E, p: &mut Pass<E>, noise: Option<&[f32]>) -> Result<()> {
        e.fc_forward(
            &self.enc.shape(p.n),
            &p.x,
            &self.enc.w,
            &self.enc.b,
            &mut p.h1,
        )?;
        e.relu_forward(&mut p.h1)?;
        e.fc_forward(
            &self.code.shape(p.n),
            &p.h1,
            &self.code.w,
            &self.code.b,
            &mut p.t,
        )?;
        if let Some(noise) = noise {
            e.upload(&mut p.noise, noise)?;
            e.add(&mut p.t, &p.noise)?;
        }
        e.scale(&mut p.t, 0.5)?;
        e.tanh_forward(&mut p.t)?;
        e.copy(&mut p.c, &p.t)?;
        e.add(&mut p.c, &p.ones)?;
        e.scale(&mut p.c, 0.5)
    }

    // r[n,dim] = out(relu(dec(c)))
    fn decode_pass(&self, e: &E, p: &mut Pass<E>) -> Result<()> {
        e.fc_forward(
            &self.dec.shape(p.n),
            &p.c,
            &self.dec.w,
            &self.dec.b,
            &mut p.h2,
        )?;
        e.relu_forward(&mut p.h2)?;
        e.fc_forward(
            &self.out.shape(p.n),
            &p.h2,
            &self.out.w,
            &self.out.b,
            &mut p.r,
        )
    }

    /// One SGD step on the loaded batch for loss 0.5 * sum (r - x)^2 / n; returns the mean
    /// squared error per feature.
    fn train_step(&mut self, e: &E, p: &mut Pass<E>, noise: &[f32], lr: f32) -> Result<f64> {
        self.encode_pass(e, p, Some(noise))?;
        self.decode_pass(e, p)?;
        e.copy(&mut p.dr, &p.r)?;
        e.copy(&mut p.neg_x, &p.x)?;
        e.scale(&mut p.neg_x, -1.0)?;
        e.add(&mut p.dr, &p.neg_x)?;
        let mut diff = vec![0.0f32; p.n * self.dim];
        e.download(&p.dr, &mut diff)?;
        let mse = diff.iter().map(|&d| d as f64 * d as f64).sum::<f64>() / diff.len() as f64;
        if !mse.is_finite() {
            return Err(Error::NonFinite(format!(
                "the auto-encoder's reconstruction error diverged: lower --code-lr (now {lr})"
            )));
        }
        e.scale(&mut p.dr, 1.0 / p.n as f32)?;
        let n = p.n;
        e.fc_backward(
            &self.out.shape(n),
            &p.h2,
            &self.out.w,
            &p.dr,
            Some(&mut p.dh2),
            &mut self.out.dw,
            &mut self.out.db,
        )?;
        e.relu_backward(&p.h2, &mut p.dh2)?;
        let dec = &mut self.dec;
        e.fc_backward(
            &dec.shape(n),
            &p.c,
            &dec.w,
            &p.dh2,
            Some(&mut p.dc),
            &mut dec.dw,
            &mut dec.db,
        )?;
        // dz = dc * sigma'(z) = dc * (1 - tanh(z / 2)^2) / 4
        e.tanh_backward(&p.t, &mut p.dc)?;
        e.scale(&mut p.dc, 0.25)?;
        let code = &mut self.code;
        e.fc_backward(
            &code.shape(n),
            &p.h1,
            &code.w,
            &p.dc,
            Some(&mut p.dh1),
            &mut code.dw,
            &mut code.db,
        )?;
        e.relu_backward(&p.h1, &mut p.dh1)?;
        let enc = &mut self.enc;
        e.fc_backward(
            &enc.shape(n),
            &p.x,
            &enc.w,
            &p.dh1,
            None,
            &mut enc.dw,
            &mut enc.db,
        )?;
        for layer in [&mut self.enc, &mut self.code, &mut self.dec, &mut self.out] {
            layer.step(e, lr)?;
        }
        Ok(mse)
    }

    /// Trains on `feats` (`[rows, dim]`) in shuffled batches of `batch` (the last partial
    /// batch of each epoch left out), with a progress bar.
    pub fn train(&mut self, e: &E, feats: &[f32], args: &CodesArgs) -> Result<TrainLog> {
        let rows = feats.len() / self.dim;
        let batch = args.code_batch;
        if rows < batch {
            return Err(Error::Config(format!(
                "{rows} feature vectors are fewer than one auto-encoder batch (--code-batch \
                 {batch}): search a bigger split or lower --code-batch"
            )));
        }
        let steps_per_epoch = rows / batch;
        let bar = indicatif::ProgressBar::new((args.code_epochs * steps_per_epoch) as u64)
            .with_style(
                indicatif::ProgressStyle::with_template(
                    "auto-encoder {bar:40} {pos}/{len} steps, eta {eta} {msg}",
                )
                .expect("a fixed template parses"),
            );
        let mut pass = Pass::new(e, batch, self.dim, self.hidden, self.bits)?;
        let mut rng = Rng::new(args.code_seed).fork(1);
        let mut order: Vec<usize> = (0..rows).collect();
        let mut noise = vec![0.0f32; batch * self.bits];
        let (t0, mut unexplained) = (Instant::now(), Vec::new());
        for _ in 0..args.code_epochs {
            rng.shuffle(&mut order);
            let mut sum = 0.0;
            for chunk in order.chunks_exact(batch) {
                self.load(e, &mut pass, feats, chunk)?;
                noise
                    .iter_mut()
                    .for_each(|v| *v = args.code_noise * rng.normal() as f32);
                sum += self.train_step(e, &mut pass, &noise, args.code_lr)?;
                bar.inc(1);
            }
            unexplained.push(sum / steps_per_epoch as f64);
            bar.set_message(format!(
                "unexplained variance {:.3}",
                sum / steps_per_epoch as f64
            ));
        }
        bar.finish_and_clear();
        Ok(TrainLog {
            unexplained,
            steps: args.code_epochs * steps_per_epoch,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The code layer's logistic outputs `[rows, bits]` for `feats` (`[rows, dim]`), no noise.
    pub fn code_probabilities(&self, e: &E, feats: &[f32], batch: usize) -> Result<Vec<f32>> {
        let rows = feats.len() / self.dim;
        let batch = batch.clamp(1, rows.max(1));
        let mut pass = Pass::new(e, batch, self.dim, self.hidden, self.bits)?;
        let mut probs = vec![0.0f32; rows * self.bits];
        let mut out = vec![0.0f32; batch * self.bits];
        let indices: Vec<usize> = (0..rows).collect();
        for (chunk, dst) in indices
            .chunks(batch)
            .zip(probs.chunks_mut(batch * self.bits))
        {
            self.load(e, &mut pass, feats, chunk)?;
            self.encode_pass(e, &mut pass, None)?;
            e.download(&pass.c, &mut out)?;
            dst.copy_from_slice(&out[..dst.len()]);
        }
        Ok(probs)
    }

    /// Binary codes of `feats`.
    pub fn encode(&self, e: &E, feats: &[f32], batch: usize) -> Result<Codes> {
        Ok(Codes::threshold(
            &self.code_probabilities(e, feats, batch)?,
            self.bits,
        ))
    }
}

// ----------------------------------------------------------------------------------------------
// `neighbours --codes`: codes vs features vs pixels
// ----------------------------------------------------------------------------------------------

/// Images `indices` of a dataset, as a dataset.
struct Picked<'a> {
    ds: &'a PackedDataset,
    indices: Vec<usize>,
}

impl Dataset for Picked<'_> {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn side(&self) -> usize {
        self.ds.side()
    }
    fn classes(&self) -> usize {
        self.ds.classes()
    }
    fn class_names(&self) -> Vec<String> {
        self.ds.class_names()
    }
    fn read(&self, index: usize, out: &mut [u8]) -> Result<u32> {
        self.ds.read(self.indices[index], out)
    }
}

/// One retrieval method's row of the table.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MethodRow {
    pub method: String,
    /// Storage per database image.
    pub bytes_per_image: usize,
    /// (k, precision@k), in the order of --precision-at.
    pub precision: Vec<(usize, f64)>,
    /// Seconds for all queries' search (best of several runs).
    pub search_seconds: f64,
}

/// What `neighbours --codes` measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CodesReport {
    pub bits: usize,
    pub hidden: usize,
    pub features: String,
    pub database_split: String,
    pub database_images: usize,
    pub query_split: String,
    pub queries: usize,
    pub training: TrainLog,
    /// Fraction of the database's code units within 0.1 of 0 or 1 (how binary the logistic
    /// codes had become before thresholding).
    pub saturated: f64,
    /// Hamming codes, Euclidean features, Euclidean raw pixels.
    pub methods: Vec<MethodRow>,
    /// Euclidean search time over the features / Hamming search time over the codes.
    pub hamming_speedup: f64,
}

impl CodesReport {
    /// The table `neighbours` prints.
    pub fn table(&self) -> String {
        let mut s =
            format!(
            "{} {} queries against {} {} images (same label = relevant); auto-encoder {} -> {} \
             -> {} bits, {} steps in {:.1} s, unexplained variance {:.3} -> {:.3}, {:.0}% of \
             code units saturated\n",
            self.queries,
            self.query_split,
            self.database_images,
            self.database_split,
            self.features,
            self.hidden,
            self.bits,
            self.training.steps,
            self.training.seconds,
            self.training.unexplained.first().copied().unwrap_or(f64::NAN),
            self.training.unexplained.last().copied().unwrap_or(f64::NAN),
            100.0 * self.saturated
        );
        let ks = self.methods[0]
            .precision
            .iter()
            .map(|(k, _)| format!("{:>7}", format!("P@{k}")));
        s += &format!(
            "{:<40} {:>11} {} {:>12}\n",
            "method",
            "bytes/image",
            ks.collect::<String>(),
            "search"
        );
        for m in &self.methods {
            let ps: String = m
                .precision
                .iter()
                .map(|(_, p)| format!("{p:>7.3}"))
                .collect();
            s += &format!(
                "{:<40} {:>11} {ps} {:>9.2} ms\n",
                m.method,
                m.bytes_per_image,
                1e3 * m.search_seconds
            );
        }
        s + &format!(
            "Hamming search over the codes is {:.1}x faster than the Euclidean GEMM search over the features\n",
            self.hamming_speedup
        )
    }
}

/// Runs `search` until 0.5 s have passed (at most 20 times); returns its result and the fastest
/// run's seconds (the first run of a short search pays for cold caches).
fn timed<T>(mut search: impl FnMut() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();
    let mut found = search()?;
    let (mut best, mut runs) = (start.elapsed().as_secs_f64(), 1);
    while runs < 20 && start.elapsed().as_secs_f64() < 0.5 {
        let t0 = Instant::now();
        found = search()?;
        best = best.min(t0.elapsed().as_secs_f64());
        runs += 1;
    }
    Ok((found, best))
}

/// Every image of `ds` resized to [`PIXEL_SIDE`] as a vector of its pixel values, `[n, 3 * 32 * 32]`.
fn pixel_vectors(ds: &dyn Dataset) -> Result<Vec<f32>> {
    let (side, len) = (ds.side(), 3 * PIXEL_SIDE * PIXEL_SIDE);
    let mut out = vec![0.0f32; ds.len() * len];
    out.par_chunks_mut(len)
        .enumerate()
        .try_for_each(|(i, dst)| {
            let mut px = vec![0u8; 3 * side * side];
            ds.read(i, &mut px)?;
            let img = crate::figures::chw_to_rgb(&px, side, PIXEL_SIDE);
            dst.iter_mut()
                .zip(img.as_raw())
                .for_each(|(d, &v)| *d = v as f32);
            Ok(())
        })?;
    Ok(out)
}

/// Evenly spaced indices: `m` of `0..len` (all of them when `m >= len`).
fn spread(len: usize, m: usize) -> Vec<usize> {
    let m = m.min(len);
    (0..m).map(|i| i * len / m).collect()
}

/// The precision of each k for results given as (index, ...) lists.
fn precisions(
    ks: &[usize],
    query_labels: &[u32],
    found: &[Vec<usize>],
    labels: &[u32],
) -> Vec<(usize, f64)> {
    ks.iter()
        .map(|&k| (k, precision_at(query_labels, found, labels, k)))
        .collect()
}

/// Trains the auto-encoder on the database's features `db` (`[rows, layer.dim]`, labels
/// `labels`, the images of `ds`), then searches with labelled query images of another split by
/// codes, features and pixels, and measures each.
#[allow(clippy::too_many_arguments)]
pub fn compare<E: Engine>(
    e: &E,
    model: &mut Model<E>,
    layer: &FeatureLayer,
    stats: &Stats,
    db: &[f32],
    labels: &[u32],
    ds: &PackedDataset,
    input: &ModelOverData,
    args: &CodesArgs,
) -> Result<CodesReport> {
    let bits = args
        .codes
        .ok_or_else(|| Error::Config("no --codes BITS given".into()))?;
    if args.code_query_split == input.split {
        return Err(Error::Config(format!(
            "--code-query-split {0} is the searched split (--split {0}): each query would find \
             itself; query with the other split",
            input.split
        )));
    }
    let k_max = args.precision_at.iter().copied().max().unwrap_or(1);
    if k_max > labels.len() {
        return Err(Error::Config(format!(
            "--precision-at {k_max} needs at least {k_max} images in {} {}, which has {}",
            input.data.display(),
            input.split,
            labels.len()
        )));
    }
    let query_ds = PackedDataset::open(&input.data, &args.code_query_split)?;
    if query_ds.classes() != ds.classes() {
        return Err(Error::data(
            &input.data,
            format!(
                "split {} has {} classes, split {} {}: labels would not compare",
                args.code_query_split,
                query_ds.classes(),
                input.split,
                ds.classes()
            ),
        ));
    }
    let picked = Picked {
        ds: &query_ds,
        indices: spread(query_ds.len(), args.code_queries),
    };
    if picked.indices.is_empty() {
        return Err(Error::data(
            &input.data,
            format!(
                "split {} has no images to query with",
                args.code_query_split
            ),
        ));
    }
    let (mut queries, mut query_labels) = (Vec::new(), Vec::new());
    extract(e, model, layer, &picked, stats, input.batch_size, |f, l| {
        queries.extend_from_slice(f);
        query_labels.extend_from_slice(l);
        Ok(())
    })?;

    let mut ae = AutoEncoder::new(e, db, layer.dim, args.code_hidden, bits, args.code_seed)?;
    let training = ae.train(e, db, args)?;
    let probs = ae.code_probabilities(e, db, args.code_batch.max(256))?;
    let saturated =
        probs.iter().filter(|&&p| !(0.1..=0.9).contains(&p)).count() as f64 / probs.len() as f64;
    let db_codes = Codes::threshold(&probs, bits);
    let query_codes = ae.encode(e, &queries, args.code_batch.max(256))?;

    let ks = &args.precision_at;
    let (by_code, code_s) = timed(|| hamming_nearest(&db_codes, &query_codes, k_max))?;
    let (by_feature, feature_s) = timed(|| nearest(db, layer.dim, &queries, k_max))?;
    let indices = |found: Vec<Vec<crate::features::Neighbour>>| -> Vec<Vec<usize>> {
        found
            .into_iter()
            .map(|ns| ns.into_iter().map(|n| n.index).collect())
            .collect()
    };
    let pixel_dim = 3 * PIXEL_SIDE * PIXEL_SIDE;
    let (db_px, query_px) = (pixel_vectors(ds)?, pixel_vectors(&picked)?);
    let (by_pixel, pixel_s) = timed(|| nearest(&db_px, pixel_dim, &query_px, k_max))?;
    let code_found: Vec<Vec<usize>> = by_code
        .into_iter()
        .map(|ns| ns.into_iter().map(|(i, _)| i).collect())
        .collect();
    let methods = vec![
        MethodRow {
            method: format!("{bits}-bit codes, Hamming"),
            bytes_per_image: db_codes.words * 8,
            precision: precisions(ks, &query_labels, &code_found, labels),
            search_seconds: code_s,
        },
        MethodRow {
            method: format!("{}, Euclidean", layer.description),
            bytes_per_image: 4 * layer.dim,
            precision: precisions(ks, &query_labels, &indices(by_feature), labels),
            search_seconds: feature_s,
        },
        MethodRow {
            method: format!("raw pixels {PIXEL_SIDE}x{PIXEL_SIDE}, Euclidean"),
            bytes_per_image: pixel_dim,
            precision: precisions(ks, &query_labels, &indices(by_pixel), labels),
            search_seconds: pixel_s,
        },
    ];
    Ok(CodesReport {
        bits,
        hidden: args.code_hidden,
        features: format!("{} ({}-d)", layer.description, layer.dim),
        database_split: input.split.clone(),
        database_images: labels.len(),
        query_split: args.code_query_split.clone(),
        queries: query_labels.len(),
        training,
        saturated,
        methods,
        hamming_speedup: feature_s / code_s,
    })
}
