//! Figures 3 and 4 (left) of the paper as PNGs: the first convolutional layer's kernels with a
//! measure of how colour-specific each column's kernels are, and an image's top-5 predictions
//! drawn as bars. Also the image grid that `neighbours` draws (Figure 4, right).
//!
//! Images are blitted into an RGB buffer directly; text and bars are drawn over it with plotters
//! and the embedded font of [`crate::plot`], so no system font is needed.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::arch::{column_range, Kind};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::eval::Prediction;

// ----------------------------------------------------------------------------------------------
// Figure 3: first-layer kernels
// ----------------------------------------------------------------------------------------------

/// `--help` of the command below.
pub const KERNELS_HELP: &str =
    "Draws the first convolutional layer's kernels (Figure 3): each kernel \
contrast-normalised on its own (its smallest weight black, its largest white, over all three \
colour channels together), column 1's kernels in the top block, column 2's below (a one-column \
net: one block).\n\nIt also measures the paper's claim that column 1's kernels are largely \
colour-agnostic and column 2's colour-specific. A kernel's colour share is the fraction of its \
energy off the grey axis: with w[c][y][x] its weights and g[y][x] = (w[0][y][x] + w[1][y][x] + \
w[2][y][x]) / 3, share = sum (w[c][y][x] - g[y][x])^2 / sum w[c][y][x]^2. A grey kernel (the \
same weight in R, G and B at every pixel) has share 0; a kernel whose channels sum to zero at \
every pixel (pure chroma) has share 1; independent random weights (an untrained net) give about \
2/3. Per column it prints the mean and median share and how many kernels exceed 0.5, and writes \
them, with every kernel's share, to a JSON beside the PNG (same name, extension .json).";

/// `alexnet-cli kernels`: Figure 3 and its measurable claim.
#[derive(clap::Args, Debug, Clone)]
pub struct KernelsArgs {
    /// The checkpoint whose first convolutional layer to draw.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output PNG (the JSON goes beside it, with extension .json).
    #[arg(long, default_value = "fig3.png")]
    pub out: PathBuf,
    /// Pixels per kernel weight.
    #[arg(long, default_value_t = 4, value_parser = crate::settings::count_in(1, 64))]
    pub scale: usize,
    /// Kernels per row within a column's block (the paper: 16).
    #[arg(long, default_value_t = 16, value_parser = crate::settings::count_in(1, 1024))]
    pub per_row: usize,
}

/// The first convolutional layer's kernels, grouped by column.
#[derive(Clone, Debug)]
pub struct FirstLayer {
    pub name: String,
    /// Kernel side.
    pub k: usize,
    /// Per column, its kernels, each `3 x k x k` (channel, row, column).
    pub columns: Vec<Vec<Vec<f32>>>,
}

/// One column's colour measure.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ColumnColour {
    /// 1-based, as the paper counts its GPUs.
    pub column: usize,
    pub kernels: usize,
    pub mean_colour_share: f64,
    pub median_colour_share: f64,
    /// Kernels with a colour share above 0.5.
    pub colour_specific: usize,
    /// Every kernel's share, in kernel order.
    pub shares: Vec<f64>,
}

/// The first convolutional row of the checkpoint's table, which must read the image itself (three
/// channels, all of them: not grouped).
pub fn first_layer(ckpt: &Checkpoint, path: &Path) -> Result<FirstLayer> {
    let plan = ckpt.arch.plan()?;
    let row = plan
        .iter()
        .find(|p| matches!(p.layer.kind, Kind::Conv { .. }))
        .ok_or_else(|| Error::Config(format!("{}: the net has no convolution", path.display())))?;
    let s = row.conv.expect("conv rows are planned with a shape");
    if s.c_in != 3 || s.groups != 1 || s.kh != s.kw {
        return Err(Error::Config(format!(
            "{}: the first convolution {} reads {} channels in {} groups ({}x{} kernels); only \
             one reading the RGB image whole can be drawn as colour kernels",
            path.display(),
            row.layer.name,
            s.c_in,
            s.groups,
            s.kh,
            s.kw
        )));
    }
    let name = format!("{}.weight", row.layer.name);
    let w = ckpt.param(&name).ok_or_else(|| Error::Checkpoint {
        path: path.to_path_buf(),
        msg: format!("has no {name}"),
    })?;
    let per = 3 * s.kh * s.kw;
    let cols = row.layer.columns;
    let columns = (0..cols)
        .map(|c| {
            column_range(s.c_out, c, cols)
                .map(|i| w.data[i * per..(i + 1) * per].to_vec())
                .collect()
        })
        .collect();
    Ok(FirstLayer {
        name: row.layer.name.clone(),
        k: s.kh,
        columns,
    })
}

/// The share of a `3 x k x k` kernel's energy off the grey axis (0 for grey, 1 for pure chroma;
/// 0 for an all-zero kernel, which has no colour).
pub fn colour_share(kernel: &[f32]) -> f64 {
    let plane = kernel.len() / 3;
    let (mut off, mut total) = (0.0f64, 0.0f64);
    for p in 0..plane {
        let v = [0, 1, 2].map(|c| kernel[c * plane + p] as f64);
        let grey = (v[0] + v[1] + v[2]) / 3.0;
        off += v.iter().map(|x| (x - grey).powi(2)).sum::<f64>();
        total += v.iter().map(|x| x * x).sum::<f64>();
    }
    if total > 0.0 {
        off / total
    } else {
        0.0
    }
}

/// Each column's colour shares and their summary.
pub fn column_colours(layer: &FirstLayer) -> Vec<ColumnColour> {
    layer
        .columns
        .iter()
        .enumerate()
        .map(|(c, kernels)| {
            let shares: Vec<f64> = kernels.iter().map(|k| colour_share(k)).collect();
            let mut sorted = shares.clone();
            sorted.sort_by(f64::total_cmp);
            let n = shares.len().max(1) as f64;
            ColumnColour {
                column: c + 1,
                kernels: shares.len(),
                mean_colour_share: shares.iter().sum::<f64>() / n,
                median_colour_share: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
                colour_specific: shares.iter().filter(|&&s| s > 0.5).count(),
                shares,
            }
        })
        .collect()
}

/// The figure's pixel size for `kernels_per_column` kernels of side `k`: a gap of `scale` pixels
/// around every kernel, a gap of `4 * scale` between column blocks.
pub fn kernel_figure_size(
    kernels_per_column: &[usize],
    k: usize,
    scale: usize,
    per_row: usize,
) -> (usize, usize) {
    let per_row = per_row
        .min(kernels_per_column.iter().copied().max().unwrap_or(1))
        .max(1);
    let cell = k * scale + scale;
    let rows: usize = kernels_per_column.iter().map(|n| n.div_ceil(per_row)).sum();
    let blocks = kernels_per_column.len();
    let width = scale + per_row * cell;
    let height = scale + rows * cell + blocks.saturating_sub(1) * 4 * scale;
    (width, height)
}

/// Draws the kernels, each contrast-normalised on its own, column blocks one under another.
pub fn render_kernels(layer: &FirstLayer, scale: usize, per_row: usize) -> image::RgbImage {
    let counts: Vec<usize> = layer.columns.iter().map(Vec::len).collect();
    let (w, h) = kernel_figure_size(&counts, layer.k, scale, per_row);
    let per_row = per_row
        .min(counts.iter().copied().max().unwrap_or(1))
        .max(1);
    let mut img = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255, 255, 255]));
    let (k, cell, plane) = (layer.k, layer.k * scale + scale, layer.k * layer.k);
    let mut top = scale;
    for kernels in &layer.columns {
        for (i, kernel) in kernels.iter().enumerate() {
            let (x0, y0) = (scale + (i % per_row) * cell, top + (i / per_row) * cell);
            let lo = kernel.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = kernel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let level = |v: f32| {
                if hi > lo {
                    (255.0 * (v - lo) / (hi - lo)).round() as u8
                } else {
                    128
                }
            };
            for y in 0..k * scale {
                for x in 0..k * scale {
                    let p = (y / scale) * k + x / scale;
                    let rgb = [0, 1, 2].map(|c| level(kernel[c * plane + p]));
                    img.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(rgb));
                }
            }
        }
        top += kernels.len().div_ceil(per_row) * cell + 4 * scale;
    }
    img
}

/// What `kernels` wrote and measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelsReport {
    pub checkpoint: PathBuf,
    pub layer: String,
    pub kernel_size: usize,
    pub png: PathBuf,
    pub png_size: (usize, usize),
    pub measure: &'static str,
    pub columns: Vec<ColumnColour>,
}

impl KernelsArgs {
    /// Draws the figure, writes the PNG and its JSON, and returns the report.
    pub fn run(&self) -> Result<KernelsReport> {
        let ckpt = Checkpoint::load(&self.checkpoint)?;
        let layer = first_layer(&ckpt, &self.checkpoint)?;
        let img = render_kernels(&layer, self.scale, self.per_row);
        save_png(&img, &self.out)?;
        let report = KernelsReport {
            checkpoint: self.checkpoint.clone(),
            layer: layer.name.clone(),
            kernel_size: layer.k,
            png: self.out.clone(),
            png_size: (img.width() as usize, img.height() as usize),
            measure: "colour share: sum over the kernel of (w[c] - grey)^2 / sum of w[c]^2, \
                      grey = mean of R, G, B at each pixel; 0 grey, 1 pure chroma",
            columns: column_colours(&layer),
        };
        write_json(&self.out.with_extension("json"), &report)?;
        Ok(report)
    }
}

impl KernelsReport {
    /// The printed claim: one line per column.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} {}x{}x3 kernels, drawn in {} ({}x{} px)\n\
             colour share of each kernel's energy (0 grey, 1 pure chroma; untrained ~0.67):\n",
            self.layer,
            self.columns.iter().map(|c| c.kernels).sum::<usize>(),
            self.kernel_size,
            self.kernel_size,
            self.png.display(),
            self.png_size.0,
            self.png_size.1
        );
        for c in &self.columns {
            s += &format!(
                "  column {}: {} kernels, mean {:.3}, median {:.3}, {} above 0.5\n",
                c.column, c.kernels, c.mean_colour_share, c.median_colour_share, c.colour_specific
            );
        }
        s
    }
}

// ----------------------------------------------------------------------------------------------
// Shared drawing helpers
// ----------------------------------------------------------------------------------------------

/// Writes a PNG, naming the file in any error.
pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

/// Writes pretty JSON, naming the file in any error.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// A stored `3 x side x side` u8 CHW image as an RGB image resized to `shown x shown`.
pub fn chw_to_rgb(px: &[u8], side: usize, shown: usize) -> image::RgbImage {
    let plane = side * side;
    let img = image::RgbImage::from_fn(side as u32, side as u32, |x, y| {
        let p = y as usize * side + x as usize;
        image::Rgb([px[p], px[plane + p], px[2 * plane + p]])
    });
    if shown == side {
        img
    } else {
        image::imageops::resize(
            &img,
            shown as u32,
            shown as u32,
            image::imageops::FilterType::Triangle,
        )
    }
}

type Canvas<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draws text and shapes over `img` with `draw`, in place.
pub(crate) fn annotate(
    img: &mut image::RgbImage,
    out: &Path,
    draw: impl FnOnce(&Canvas) -> std::result::Result<(), Box<dyn std::error::Error>>,
) -> Result<()> {
    crate::plot::ensure_font()?;
    let (w, h) = img.dimensions();
    {
        let root = BitMapBackend::with_buffer(std::ops::DerefMut::deref_mut(img), (w, h))
            .into_drawing_area();
        draw(&root).map_err(|e| crate::plot::draw_err(out, e))?;
        root.present().map_err(|e| crate::plot::draw_err(out, e))?;
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// Figure 4, left: predictions as bars
// ----------------------------------------------------------------------------------------------

/// Pixel sizes of one prediction panel: the image, then the true label, then one bar per class.
const PANEL_IMAGE: usize = 192;
const PANEL_MARGIN: usize = 14;
pub const BAR_HEIGHT: usize = 20;
const BAR_GAP: usize = 4;
const LABEL_HEIGHT: usize = 24;

/// One panel's content: the prediction, the image as stored (`3 x side x side`), and the true
/// class when known.
pub struct PredictionPanel<'a> {
    pub prediction: &'a Prediction,
    pub pixels: Vec<u8>,
    pub side: usize,
    pub truth: Option<(usize, String)>,
}

/// The picture's size for `panels` panels of `bars` bars each.
pub fn prediction_picture_size(panels: usize, bars: usize) -> (usize, usize) {
    let width = PANEL_MARGIN + panels * (PANEL_IMAGE + PANEL_MARGIN);
    let height =
        PANEL_MARGIN + PANEL_IMAGE + LABEL_HEIGHT + bars * (BAR_HEIGHT + BAR_GAP) + PANEL_MARGIN;
    (width, height)
}

/// The top-left pixel of panel `panel`'s bar `bar` (0 = the most probable class).
pub fn bar_origin(panel: usize, bar: usize) -> (usize, usize) {
    (
        PANEL_MARGIN + panel * (PANEL_IMAGE + PANEL_MARGIN),
        PANEL_MARGIN + PANEL_IMAGE + LABEL_HEIGHT + bar * (BAR_HEIGHT + BAR_GAP),
    )
}

/// Figure 4's left panel: each image with its true label under it (when given) and its top
/// classes as bars of length proportional to the probability, the true class's bar red.
pub fn prediction_picture(panels: &[PredictionPanel], out: &Path) -> Result<()> {
    let bars = panels
        .iter()
        .map(|p| p.prediction.top.len())
        .max()
        .unwrap_or(0);
    let (w, h) = prediction_picture_size(panels.len(), bars);
    let mut img = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255, 255, 255]));
    for (i, p) in panels.iter().enumerate() {
        let shown = chw_to_rgb(&p.pixels, p.side, PANEL_IMAGE);
        let x0 = PANEL_MARGIN + i * (PANEL_IMAGE + PANEL_MARGIN);
        image::imageops::replace(&mut img, &shown, x0 as i64, PANEL_MARGIN as i64);
    }
    annotate(&mut img, out, |root| {
        for (i, p) in panels.iter().enumerate() {
            let x0 = (PANEL_MARGIN + i * (PANEL_IMAGE + PANEL_MARGIN)) as i32;
            if let Some((_, name)) = &p.truth {
                root.draw(&Text::new(
                    fit(name, PANEL_IMAGE),
                    (x0, (PANEL_MARGIN + PANEL_IMAGE + 4) as i32),
                    ("sans-serif", 16).into_font().color(&BLACK),
                ))?;
            }
            for (bar, (class, name, prob)) in p.prediction.top.iter().enumerate() {
                let y = bar_origin(i, bar).1 as i32;
                let truth = p.truth.as_ref().is_some_and(|(c, _)| c == class);
                let colour = if truth { RED.mix(0.8) } else { BLUE.mix(0.45) };
                let len = (prob.clamp(0.0, 1.0) * PANEL_IMAGE as f32).round() as i32;
                root.draw(&Rectangle::new(
                    [(x0, y), (x0 + PANEL_IMAGE as i32, y + BAR_HEIGHT as i32)],
                    RGBColor(235, 235, 235).filled(),
                ))?;
                root.draw(&Rectangle::new(
                    [(x0, y), (x0 + len, y + BAR_HEIGHT as i32)],
                    colour.filled(),
                ))?;
                root.draw(&Text::new(
                    fit(name, PANEL_IMAGE - 4),
                    (x0 + 3, y + 3),
                    ("sans-serif", 14).into_font().color(&BLACK),
                ))?;
            }
        }
        Ok(())
    })?;
    save_png(&img, out)
}

/// `text` cut with an ellipsis to about `width` pixels of the 14-16 px font.
fn fit(text: &str, width: usize) -> String {
    let max = width / 8;
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut + "…"
    }
}

/// The class a `--label` names: its index, its full name, or the name after an ImageNet synset
/// id ("tench" for "n01440764 tench"), case-insensitive.
pub fn parse_label(label: &str, class_names: &[String], classes: usize) -> Result<usize> {
    if let Ok(i) = label.parse::<usize>() {
        if i < classes {
            return Ok(i);
        }
        return Err(Error::Config(format!(
            "--label {i}: the net has classes 0..{}",
            classes - 1
        )));
    }
    let wanted = label.to_lowercase();
    let matches = |name: &String| {
        let name = name.to_lowercase();
        name == wanted
            || name
                .split_once(' ')
                .is_some_and(|(id, rest)| id == wanted || rest == wanted)
    };
    class_names.iter().position(matches).ok_or_else(|| {
        Error::Config(format!(
            "--label {label:?} is neither a class index nor one of the checkpoint's class \
             names{}",
            if class_names.is_empty() {
                " (it stores none: give the index)"
            } else {
                ""
            }
        ))
    })
}

/// Each image's `--label` (none given: no labels; otherwise exactly one per image).
pub fn parse_labels(
    labels: &[String],
    images: usize,
    class_names: &[String],
    classes: usize,
) -> Result<Vec<Option<usize>>> {
    if labels.is_empty() {
        return Ok(vec![None; images]);
    }
    if labels.len() != images {
        return Err(Error::Config(format!(
            "{} --label values for {images} images: give one per image, in the same order",
            labels.len()
        )));
    }
    labels
        .iter()
        .map(|l| parse_label(l, class_names, classes).map(Some))
        .collect()
}

/// Draws [`prediction_picture`] for predicted files, reading each image again at the stored side
/// `side` (as prediction did).
pub fn draw_predictions(
    predictions: &[(Prediction, Option<usize>)],
    class_names: &[String],
    side: usize,
    out: &Path,
) -> Result<()> {
    if predictions.is_empty() {
        return Err(Error::Config(format!(
            "{}: no image was predicted, so there is nothing to draw",
            out.display()
        )));
    }
    let panels = predictions
        .iter()
        .map(|(p, truth)| {
            Ok(PredictionPanel {
                prediction: p,
                pixels: crate::data::load_image_file(&p.path, side)?,
                side,
                truth: truth.map(|c| {
                    let name = class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
                    (c, name)
                }),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    prediction_picture(&panels, out)
}
