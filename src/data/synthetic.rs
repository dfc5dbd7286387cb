//! The built-in procedural dataset: simple shapes and textures rendered from `(seed, index)`.
//!
//! Each image draws a background colour with a brightness gradient, a foreground colour far from
//! it, a position and a scale, and per-pixel noise; the class decides only the shape. Colours are
//! independent of the class, so mean colour says (almost) nothing and a network has to look at
//! shape; shapes sit anywhere in the central area, so random crops and flips matter. Every class is
//! closed under horizontal reflection (its mirror image is the same class), so flips never change
//! the label. Nothing is stored: `read` renders the image, ~0.3 ms at side 256 on one core.

use super::{check_read, compute_stats, Dataset, Stats};
use crate::rng::{hash, mix64, Rng, GOLDEN_GAMMA};
use crate::{Error, Result};

/// The label of each image's pixel-noise stream: the ASCII of "nois".
const NOISE_STREAM: u64 = 0x6e6f_6973;

/// Class names, in label order; `classes` takes the first `classes` of them.
pub const SHAPES: [&str; 20] = [
    "disc",
    "ring",
    "square",
    "square frame",
    "triangle (up)",
    "plus",
    "diagonal cross",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "diamond",
    "two discs",
    "horizontal bar",
    "vertical bar",
    "polka dots",
    "target",
    "triangle (down)",
    "diagonal stripes",
    "triangle outline",
    "grid",
];

/// The most classes [`Synthetic`] can render.
pub const MAX_CLASSES: usize = SHAPES.len();

/// The built-in procedural dataset: images generated deterministically from (seed, index),
/// nothing stored. Label of image `i` is `i % classes` (balanced).
#[derive(Clone, Debug)]
pub struct Synthetic {
    classes: usize,
    len: usize,
    side: usize,
    seed: u64,
}

impl Synthetic {
    pub fn new(classes: usize, len: usize, side: usize, seed: u64) -> Result<Synthetic> {
        if !(2..=MAX_CLASSES).contains(&classes) {
            return Err(Error::Config(format!(
                "the built-in dataset has 2..={MAX_CLASSES} classes, asked for {classes}"
            )));
        }
        if side < 8 {
            return Err(Error::Config(format!(
                "the built-in dataset needs images of side >= 8, asked for {side}"
            )));
        }
        Ok(Synthetic {
            classes,
            len,
            side,
            seed,
        })
    }
}

/// Images the synthetic set's mean and PCA are estimated from: the mean of 1024 images has a
/// standard error of ~1/32 of a pixel's spread, below one grey level, at a fraction of a second.
const STATS_SAMPLE: usize = 1024;

/// Train/val pair with disjoint seeds, and Stats computed over (a sample of up to
/// [`STATS_SAMPLE`] images of) the training part.
pub fn synthetic_split(
    classes: usize,
    train_len: usize,
    val_len: usize,
    side: usize,
    seed: u64,
) -> Result<(Synthetic, Synthetic, Stats)> {
    let train = Synthetic::new(classes, train_len, side, hash(seed, 1))?;
    let val = Synthetic::new(classes, val_len, side, hash(seed, 2))?;
    let stats = compute_stats(&train, Some(STATS_SAMPLE))?;
    Ok((train, val, stats))
}

/// Per-image random parameters.
struct Params {
    bg: [f32; 3],
    fg: [f32; 3],
    /// Brightness gradient: levels per pixel along x and y.
    grad: [f32; 2],
    noise: f32,
    cx: f32,
    cy: f32,
    r: f32,
    /// Texture frequency (cells per unit of r) and phase.
    freq: f32,
    phase: f32,
    /// +1 or -1: the direction of the diagonal stripes.
    diag: f32,
}

impl Params {
    fn draw(rng: &mut Rng, side: usize) -> Params {
        let s = side as f32;
        let mut colour = || [0; 3].map(|_| rng.below(256) as f32);
        let bg = colour();
        let mut fg = colour();
        let dist2: f32 = (0..3).map(|c| (fg[c] - bg[c]).powi(2)).sum();
        if dist2 < 120.0 * 120.0 {
            // Too close to see reliably: move each channel 128 levels away from the background.
            fg = bg.map(|b| if b < 128.0 { b + 128.0 } else { b - 128.0 });
        }
        let angle = rng.uniform() as f32 * std::f32::consts::TAU;
        let amp = rng.uniform() as f32 * 40.0 / s;
        Params {
            bg,
            fg,
            grad: [amp * angle.cos(), amp * angle.sin()],
            noise: rng.uniform() as f32 * 16.0,
            cx: s * (0.3 + 0.4 * rng.uniform() as f32),
            cy: s * (0.3 + 0.4 * rng.uniform() as f32),
            r: s * (0.15 + 0.15 * rng.uniform() as f32),
            freq: 1.5 + 1.5 * rng.uniform() as f32,
            phase: rng.uniform() as f32,
            diag: if rng.below(2) == 0 { 1.0 } else { -1.0 },
        }
    }
}

fn triangle(u: f32, v: f32, scale: f32) -> bool {
    // Apex up (image y grows downwards): v from -0.9 (apex) to 0.8 (base), scaled about the centre.
    let (u, v) = (u / scale, v / scale);
    (-0.9..0.8).contains(&v) && u.abs() < (v + 0.9) * 0.56
}

/// Whether normalised position (u, v) (units of the shape radius, origin at its centre) is
/// foreground for `class`.
fn inside(class: usize, u: f32, v: f32, p: &Params) -> bool {
    let d2 = u * u + v * v;
    let window = u.abs() < 1.4 && v.abs() < 1.4;
    let even = |t: f32| (t.floor() as i64).rem_euclid(2) == 0;
    let fract = |t: f32| t - t.floor();
    match class {
        0 => d2 < 1.0,
        1 => (0.3..1.0).contains(&d2),
        2 => u.abs() < 0.85 && v.abs() < 0.85,
        3 => (0.6..0.9).contains(&u.abs().max(v.abs())),
        4 => triangle(u, v, 1.0),
        5 => (u.abs() < 0.28 && v.abs() < 1.0) || (v.abs() < 0.28 && u.abs() < 1.0),
        6 => ((u - v).abs() < 0.4 || (u + v).abs() < 0.4) && u.abs() < 0.9 && v.abs() < 0.9,
        7 => window && even(v * p.freq + p.phase),
        8 => window && even(u * p.freq + p.phase),
        9 => window && even(u * p.freq) == even(v * p.freq),
        10 => u.abs() + v.abs() < 1.0,
        11 => (u - 0.55).powi(2) + v * v < 0.16 || (u + 0.55).powi(2) + v * v < 0.16,
        12 => v.abs() < 0.25 && u.abs() < 1.2,
        13 => u.abs() < 0.25 && v.abs() < 1.2,
        14 => {
            window && {
                let (a, b) = (fract(u * p.freq) - 0.5, fract(v * p.freq) - 0.5);
                a * a + b * b < 0.09
            }
        }
        15 => d2 < 1.0 && even(d2.sqrt() * 3.0),
        16 => triangle(u, -v, 1.0),
        17 => window && even((u + p.diag * v) * p.freq * 0.7 + p.phase),
        18 => triangle(u, v, 1.0) && !triangle(u, v + 0.1, 0.55),
        _ => window && (fract(u * p.freq) < 0.25 || fract(v * p.freq) < 0.25),
    }
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.len
    }
    fn side(&self) -> usize {
        self.side
    }
    fn classes(&self) -> usize {
        self.classes
    }
    fn class_names(&self) -> Vec<String> {
        SHAPES[..self.classes]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
    fn read(&self, index: usize, out: &mut [u8]) -> Result<u32> {
        let side = self.side;
        check_read(
            "synthetic dataset",
            index,
            self.len,
            out.len(),
            3 * side * side,
        )?;
        let class = index % self.classes;
        let img_seed = hash(self.seed, index as u64);
        let p = Params::draw(&mut Rng::new(img_seed), side);
        let inv_r = 1.0 / p.r;
        let noise_seed = hash(img_seed, NOISE_STREAM);
        let hw = side * side;
        for y in 0..side {
            let v = (y as f32 + 0.5 - p.cy) * inv_r;
            for x in 0..side {
                let u = (x as f32 + 0.5 - p.cx) * inv_r;
                let base = if inside(class, u, v, &p) {
                    p.fg
                } else {
                    let g = p.grad[0] * (x as f32 - p.cx) + p.grad[1] * (y as f32 - p.cy);
                    p.bg.map(|b| b + g)
                };
                // Three 16-bit uniforms from one mix: zero-mean noise of amplitude p.noise.
                let h = mix64(
                    noise_seed.wrapping_add(((y * side + x) as u64).wrapping_mul(GOLDEN_GAMMA)),
                );
                for (c, b) in base.iter().enumerate() {
                    let n = ((h >> (16 * c)) & 0xffff) as f32 * (1.0 / 65536.0) - 0.5;
                    // `as u8` saturates: this rounds and clamps to 0..=255 in one step.
                    out[c * hw + y * side + x] = (b + 2.0 * p.noise * n + 0.5) as u8;
                }
            }
        }
        Ok(class as u32)
    }
}
