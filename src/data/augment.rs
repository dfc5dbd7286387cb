//! Crops, reflections, PCA lighting and mean subtraction (paper Section 4.1).
//!
//! Mean subtraction convention: the mean image is 256x256 like the stored images, so a crop
//! subtracts the mean at the *same source pixels* it took from the image (the mean is cropped at
//! the same offset and flipped with the image). This is exactly "subtract the mean image, then
//! crop and flip", done in one pass.

use super::{Augment, Stats};
use crate::rng::Rng;

/// The pixel scale on which the paper's lighting formula is applied, relative to ours.
///
/// `Stats::eigval` is the covariance of 0..255 pixel values (levels squared). Read literally on
/// that scale, `alpha_i * lambda_i` with `alpha ~ N(0, 0.1)` would shift pixels by ~1400 levels
/// on ImageNet, which destroys the image; the formula is meant on the 0..1 intensity scale, where
/// ImageNet's eigenvalues are (0.2175, 0.0188, 0.0045) (as in fb.resnet.torch) and the shift is a
/// few levels. So the shift is `PCA_SCALE * sum_i P_i * alpha_i * (lambda_i / PCA_SCALE^2)`,
/// i.e. the paper's formula evaluated on the 0..1 scale and converted back to 0..255.
pub const PCA_SCALE: f32 = 255.0;

/// One crop of a stored image: top-left corner and whether it is horizontally reflected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub x: usize,
    pub y: usize,
    pub flip: bool,
}

/// The RGB shift `sum_i P_i * alpha_i * lambda_i` of the paper, on the 0..255 scale (see
/// [`PCA_SCALE`]); `alpha` are the per-image coefficients.
#[allow(clippy::needless_range_loop)] // sum over i of P_i[c] a_i l_i, as in the paper
pub fn pca_shift(stats: &Stats, alpha: [f32; 3]) -> [f32; 3] {
    let mut shift = [0f32; 3];
    for (c, s) in shift.iter_mut().enumerate() {
        for i in 0..3 {
            *s += stats.eigvec[i][c] * alpha[i] * stats.eigval[i] / PCA_SCALE;
        }
    }
    shift
}

/// `out[c][y][x] = img[c][v.y+y][v.x+sx] + shift[c] - mean[c][v.y+y][v.x+sx]`,
/// `sx = if v.flip { crop-1-x } else { x }`; `img` and `mean` are `[3, side, side]`, `out` is
/// `[3, crop, crop]`.
///
/// # Panics
/// If the view does not fit in the image or a buffer has the wrong length (caller bugs, not
/// data errors: every caller checks sizes when it is configured).
pub fn extract_view(
    img: &[u8],
    side: usize,
    crop: usize,
    v: View,
    shift: [f32; 3],
    mean: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(
        v.x + crop <= side && v.y + crop <= side,
        "view {v:?} + crop {crop} > side {side}"
    );
    assert_eq!(img.len(), 3 * side * side, "image buffer length");
    assert_eq!(out.len(), 3 * crop * crop, "crop buffer length");
    if let Some(m) = mean {
        assert_eq!(
            m.len(),
            3 * side * side,
            "mean image length (stats side vs dataset side)"
        );
    }
    for c in 0..3 {
        for y in 0..crop {
            let s0 = c * side * side + (v.y + y) * side + v.x;
            let src = &img[s0..s0 + crop];
            let dst = &mut out[(c * crop + y) * crop..(c * crop + y + 1) * crop];
            match (mean, v.flip) {
                (Some(m), false) => {
                    for ((d, &p), &mu) in dst.iter_mut().zip(src).zip(&m[s0..s0 + crop]) {
                        *d = p as f32 + shift[c] - mu;
                    }
                }
                (Some(m), true) => {
                    let pm = src.iter().zip(&m[s0..s0 + crop]).rev();
                    for (d, (&p, &mu)) in dst.iter_mut().zip(pm) {
                        *d = p as f32 + shift[c] - mu;
                    }
                }
                (None, false) => {
                    for (d, &p) in dst.iter_mut().zip(src) {
                        *d = p as f32 + shift[c];
                    }
                }
                (None, true) => {
                    for (d, &p) in dst.iter_mut().zip(src.iter().rev()) {
                        *d = p as f32 + shift[c];
                    }
                }
            }
        }
    }
}

/// The random part of one training view. Every image draws the same five numbers in the same
/// order (x, y, flip, alpha 1..3) whatever is switched off, so ablations change only what they
/// switch off.
pub(crate) fn draw_view(
    rng: &mut Rng,
    side: usize,
    aug: &Augment,
    stats: &Stats,
) -> (View, [f32; 3]) {
    let room = side - aug.crop + 1;
    let (x, y) = (rng.below(room), rng.below(room));
    let flip = rng.below(2) == 1;
    let alpha = [0; 3].map(|_| rng.normal() as f32 * aug.pca_std);
    let centre = (side - aug.crop) / 2;
    let view = if aug.random_crop {
        View {
            x,
            y,
            flip: aug.flip && flip,
        }
    } else {
        View {
            x: centre,
            y: centre,
            flip: aug.flip && flip,
        }
    };
    let shift = if aug.pca_std > 0.0 {
        pca_shift(stats, alpha)
    } else {
        [0.0; 3]
    };
    (view, shift)
}

/// The paper's ten test patches, in this order: top-left, top-right, bottom-left, bottom-right,
/// centre, then the same five horizontally reflected.
pub fn ten_crop_views(side: usize, crop: usize) -> [View; 10] {
    let e = side - crop;
    let c = e / 2;
    let corners = [(0, 0), (e, 0), (0, e), (e, e), (c, c)];
    std::array::from_fn(|i| {
        let (x, y) = corners[i % 5];
        View { x, y, flip: i >= 5 }
    })
}

/// The centre crop of a stored image, mean-subtracted: `out` is `[3, crop, crop]`.
///
/// # Panics
/// If `crop > side` or a buffer length disagrees with `side`/`crop`/`stats.side`.
pub fn centre_crop(img: &[u8], side: usize, crop: usize, stats: &Stats, out: &mut [f32]) {
    assert!(crop <= side, "crop {crop} > side {side}");
    let c = (side - crop) / 2;
    let v = View {
        x: c,
        y: c,
        flip: false,
    };
    extract_view(img, side, crop, v, [0.0; 3], Some(&stats.mean), out);
}

/// The ten test patches of [`ten_crop_views`], mean-subtracted: `out` is `[10, 3, crop, crop]`.
///
/// # Panics
/// If `crop > side` or a buffer length disagrees with `side`/`crop`/`stats.side`.
pub fn ten_crops(img: &[u8], side: usize, crop: usize, stats: &Stats, out: &mut [f32]) {
    assert!(crop <= side, "crop {crop} > side {side}");
    assert_eq!(out.len(), 10 * 3 * crop * crop, "ten-crop buffer length");
    let per = 3 * crop * crop;
    for (v, o) in ten_crop_views(side, crop)
        .into_iter()
        .zip(out.chunks_exact_mut(per))
    {
        extract_view(img, side, crop, v, [0.0; 3], Some(&stats.mean), o);
    }
}
