//! `alexnet-cli plot`: the metrics log as a PNG. Top: training loss per step (faint) and its
//! exponential moving average. Bottom: top-1/top-5 error per epoch, train and validation (and
//! ten-crop validation when logged), in percent.
//!
//! Text is drawn with an embedded font (Hack Regular, from the `epaint_default_fonts` crate)
//! through plotters' `ab_glyph` renderer, so plotting works on a machine with no system fonts and
//! no fontconfig. The PNG is encoded by the `image` crate from plotters' in-memory RGB buffer.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};
use crate::metrics::{read_log, EpochRecord, StepRecord};

/// Width and height of the PNG in pixels.
pub const PLOT_SIZE: (u32, u32) = (1200, 900);

/// `alexnet-cli plot LOG [--out PNG]`.
#[derive(clap::Args, Debug, Clone)]
pub struct PlotArgs {
    /// The metrics log (JSON lines) written by `alexnet-cli train`.
    pub log: PathBuf,
    /// Output PNG [default: the log's path with extension .png].
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

impl PlotArgs {
    /// Where the PNG goes.
    pub fn out_path(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| self.log.with_extension("png"))
    }

    /// Renders the plot; returns the PNG's path.
    pub fn run(&self) -> Result<PathBuf> {
        let out = self.out_path();
        plot_log(&self.log, &out)?;
        Ok(out)
    }
}

/// Registers the embedded font under plotters' "sans-serif" family once per process.
pub(crate) fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Config(
            "the embedded plot font could not be parsed".to_string(),
        ))
    }
}

pub(crate) fn draw_err(out: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(out, std::io::Error::other(format!("drawing the plot: {e}")))
}

/// Exponential moving average with span `span` (alpha = 2 / (span + 1)), bias-corrected so the
/// first points are not pulled towards zero.
fn ema(values: &[(f64, f64)], span: usize) -> Vec<(f64, f64)> {
    let alpha = 2.0 / (span as f64 + 1.0);
    let (mut acc, mut weight) = (0.0, 0.0);
    values
        .iter()
        .map(|&(x, y)| {
            acc = (1.0 - alpha) * acc + alpha * y;
            weight = (1.0 - alpha) * weight + alpha;
            (x, acc / weight)
        })
        .collect()
}

/// A non-empty axis range covering `lo..hi` with a little margin.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    if hi > lo {
        let m = 0.03 * (hi - lo);
        (lo - m)..(hi + m)
    } else {
        (lo - 0.5)..(hi + 0.5)
    }
}

/// Renders loss (per step, smoothed) and train/val top-1/top-5 error (per epoch) to a PNG of
/// `PLOT_SIZE`.
pub fn plot_log(log: &Path, out_png: &Path) -> Result<()> {
    let (steps, epochs) = read_log(log)?;
    if steps.is_empty() && epochs.is_empty() {
        return Err(Error::data(log, "no step or epoch records to plot"));
    }
    ensure_font()?;
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(out_png, e))?;
        let (upper, lower) = root.split_vertically(h / 2);
        draw_loss(&upper, &steps).map_err(|e| draw_err(out_png, e))?;
        draw_errors(&lower, &epochs).map_err(|e| draw_err(out_png, e))?;
        root.present().map_err(|e| draw_err(out_png, e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| draw_err(out_png, "pixel buffer has the wrong size"))?;
    img.save_with_format(out_png, image::ImageFormat::Png)
        .map_err(|e| Error::io(out_png, std::io::Error::other(e.to_string())))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error + 'static>>;

/// A panel that has nothing to show says so instead of drawing empty axes.
fn empty_panel(area: &Area, title: &str, msg: &str) -> DrawResult {
    area.titled(title, ("sans-serif", 24))?;
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        msg.to_string(),
        (w as i32 / 3, h as i32 / 2),
        ("sans-serif", 18).into_font().color(&BLACK.mix(0.6)),
    ))?;
    Ok(())
}

fn draw_loss(area: &Area, steps: &[StepRecord]) -> DrawResult {
    let title = "training loss";
    let pts: Vec<(f64, f64)> = steps
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step as f64, r.loss as f64))
        .collect();
    if pts.is_empty() {
        return empty_panel(area, title, "no step records with a finite loss");
    }
    let (x0, x1) = (pts[0].0, pts[pts.len() - 1].0);
    let y_hi = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let y_lo = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
    // About 50 smoothing windows across the run, whatever its length.
    let smooth = ema(&pts, (pts.len() / 50).max(1));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(padded(x0, x1), padded(y_lo, y_hi))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    let faint = BLUE.mix(0.25);
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), faint))?
        .label("per logged step")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], faint));
    chart
        .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))?
        .label("moving average")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .configure_series_labels()
        // Loss and errors fall, so the upper right is where the curves are not.
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn draw_errors(area: &Area, epochs: &[EpochRecord]) -> DrawResult {
    let title = "error per epoch (%)";
    if epochs.is_empty() {
        return empty_panel(area, title, "no epoch records yet");
    }
    let pct = |v: f32| 100.0 * v as f64;
    // (legend, colour, lighter shade for top-5, value of a record)
    type Series = (
        &'static str,
        RGBColor,
        bool,
        fn(&EpochRecord) -> Option<f32>,
    );
    /// A series with its finite points.
    type Line = (&'static str, RGBColor, bool, Vec<(f64, f64)>);
    let series: [Series; 6] = [
        ("train top-1", RED, false, |r| Some(r.train_top1)),
        ("train top-5", RED, true, |r| Some(r.train_top5)),
        ("val top-1", BLUE, false, |r| Some(r.val_top1)),
        ("val top-5", BLUE, true, |r| Some(r.val_top5)),
        ("val top-1, 10 crops", GREEN, false, |r| r.val_top1_10crop),
        ("val top-5, 10 crops", GREEN, true, |r| r.val_top5_10crop),
    ];
    let lines: Vec<Line> = series
        .iter()
        .map(|&(name, color, light, get)| {
            let pts = epochs
                .iter()
                .filter_map(|r| {
                    get(r)
                        .filter(|v| v.is_finite())
                        .map(|v| (r.epoch as f64, pct(v)))
                })
                .collect::<Vec<_>>();
            (name, color, light, pts)
        })
        .filter(|(_, _, _, pts)| !pts.is_empty())
        .collect();
    if lines.is_empty() {
        return empty_panel(area, title, "no finite error values");
    }
    let all = lines.iter().flat_map(|l| l.3.iter());
    let x0 = all.clone().map(|p| p.0).fold(f64::MAX, f64::min);
    let x1 = all.clone().map(|p| p.0).fold(f64::MIN, f64::max);
    let y1 = all.map(|p| p.1).fold(0.0, f64::max).min(100.0);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(padded(x0, x1), 0.0..(y1 * 1.05).max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("error %")
        // Epochs are whole numbers: label only those.
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{}", x.round())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    for (name, color, light, pts) in lines {
        // top-5 is the lighter line of each colour; points mark the (few) epochs.
        let style = if light {
            color.mix(0.45).stroke_width(2)
        } else {
            color.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, style.filled())))?;
    }
    chart
        .configure_series_labels()
        // Loss and errors fall, so the upper right is where the curves are not.
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
