//! The experiments' pictures, drawn like `alexnet-cli plot`'s (plotters, embedded font, PNG
//! through the `image` crate).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::plot::{draw_err, ensure_font};

use super::fig1::Fig1Result;

/// Figure 1's size in pixels.
const FIG1_SIZE: (u32, u32) = (1000, 750);

type DrawResult = std::result::Result<(), Box<dyn std::error::Error + 'static>>;

/// Figure 1: training error per epoch of the ReLU net (solid) and the tanh net (dashed), with
/// the target as a horizontal line, as in the paper.
pub fn draw_fig1(r: &Fig1Result, out_png: &Path) -> Result<()> {
    ensure_font()?;
    let (w, h) = FIG1_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(out_png, e))?;
        fig1_chart(&root, r).map_err(|e| draw_err(out_png, e))?;
        root.present().map_err(|e| draw_err(out_png, e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| draw_err(out_png, "pixel buffer has the wrong size"))?;
    img.save_with_format(out_png, image::ImageFormat::Png)
        .map_err(|e| Error::io(out_png, std::io::Error::other(e.to_string())))
}

fn fig1_chart(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    r: &Fig1Result,
) -> DrawResult {
    // Epoch 0 is the untrained net at chance (90% on ten classes), as in the paper's figure.
    let curve = |i: usize| -> Vec<(f64, f64)> {
        std::iter::once((0.0, 0.9))
            .chain(
                r.runs[i]
                    .epochs
                    .iter()
                    .map(|p| (p.epoch as f64, p.train_error as f64)),
            )
            .collect()
    };
    let x_max = r
        .runs
        .iter()
        .map(|run| run.epochs.len())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "Figure 1: four-layer CNN on CIFAR-10 ({} training images)",
                r.train_images
            ),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..x_max, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("epochs")
        .y_desc("training error rate")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style(("sans-serif", 16))
        .draw()?;
    let target = r.target as f64;
    let grey = BLACK.mix(0.5);
    chart
        .draw_series(LineSeries::new([(0.0, target), (x_max, target)], grey))?
        .label(format!("{:.0}% training error", 100.0 * target))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    for (i, run) in r.runs.iter().enumerate() {
        let pts = curve(i);
        let style = if i == 0 {
            BLUE.stroke_width(3)
        } else {
            RED.stroke_width(2)
        };
        let label = format!("{} (lr {})", run.activation, run.lr);
        if i == 0 {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        } else {
            // Dashed, as the paper draws tanh.
            chart
                .draw_series(DashedLineSeries::new(pts.iter().copied(), 10, 6, style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart.draw_series(
            pts.iter()
                .skip(1)
                .map(|&p| Circle::new(p, 3, style.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
