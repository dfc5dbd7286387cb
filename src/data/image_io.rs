//! Decoding and the paper's rescale: shorter side to `side`, then the central `side x side`.
//!
//! Decoding: any format `image` reads (JPEG incl. CMYK/YCCK, which zune-jpeg converts to RGB;
//! PNG incl. 16-bit and palette; BMP, GIF, WebP, TIFF, PNM, ...). Greyscale is replicated to R=G=B.
//! A file whose image data is cut short is an error in every format: the decoders of the other
//! formats report it themselves, the JPEG one does not (see [`jpeg_truncation`]).
//! Alpha is composited over white (what a viewer on a white page shows). The EXIF orientation
//! is applied (the image as people see it) unless the caller turns it off.
//!
//! Resampling: our own separable Catmull-Rom (bicubic, a = -0.5) filter, antialiased by widening
//! the kernel by the downscale factor (as Pillow does), evaluated exactly on the centre crop: the
//! output pixel `i` along an axis samples the source at `(i + 0.5 + off) / k - 0.5`, `k = side /
//! shorter side`, `off = (k * length - side) / 2`. So "resize then crop the centre" is done in one
//! pass without resizing the discarded margins, and the crop is centred to sub-pixel precision.
//! Taps that fall outside the image repeat the edge pixel.

use crate::{Error, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::Cursor;
use std::path::Path;

/// One decoded, rescaled, cropped image.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// `[3, side, side]` u8.
    pub chw: Vec<u8>,
    /// Size after orientation, before resampling.
    pub width: u32,
    pub height: u32,
    /// The shorter side was below `side`, so the image was enlarged.
    pub upscaled: bool,
}

/// Decodes an encoded image and returns its central `side x side` after scaling the shorter side
/// to `side`. `exif` applies the EXIF orientation. The error is a human-readable reason.
pub fn decode_resize(
    bytes: &[u8],
    side: usize,
    exif: bool,
) -> std::result::Result<Decoded, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    match reader.format() {
        None => return Err("not an image (unrecognised format)".into()),
        Some(ImageFormat::Jpeg) => {
            if let Some(why) = jpeg_truncation(bytes) {
                return Err(why);
            }
        }
        Some(_) => {}
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot decode: {e}"))?;
    // A broken EXIF block is not worth losing the image over: fall back to no rotation.
    let orientation = if exif {
        decoder.orientation().ok()
    } else {
        None
    };
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode: {e}"))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err("empty image (0 pixels)".into());
    }
    let rgb: Vec<u8> = if img.color().has_alpha() {
        img.to_rgba8()
            .pixels()
            .flat_map(|p| {
                let a = p.0[3] as u32;
                // c*a + 255*(1-a), on the 0..255 scale, rounded.
                [0, 1, 2].map(|c| ((p.0[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8)
            })
            .collect()
    } else {
        img.to_rgb8().into_raw()
    };
    Ok(Decoded {
        chw: resize_centre_crop(&rgb, w, h, side),
        width: w as u32,
        height: h as u32,
        upscaled: w.min(h) < side,
    })
}

/// Why a JPEG's data stops before its end-of-image marker, or `None` if it reaches it. zune-jpeg
/// (lenient inside `image`, which offers no strict switch) fills a cut-off scan with grey and
/// reports success, and its strict mode would also refuse complete files with harmless defects,
/// so the marker structure is walked here: segments by their lengths, each scan's entropy-coded
/// data up to the first marker that is not a restart, until EOI. Bytes after EOI (phones append
/// videos there) are fine; stray bytes between segments are skipped, as decoders do.
fn jpeg_truncation(b: &[u8]) -> Option<String> {
    let cut = |place: &str| {
        Some(format!(
            "truncated: the file ends {place}, before the JPEG end-of-image marker \
             ({} bytes; an interrupted download or copy?)",
            b.len()
        ))
    };
    let mut i = 2; // after SOI, which the format guess has seen
    loop {
        let Some(ff) = memchr::memchr(0xFF, &b[i..]) else {
            return cut("between segments");
        };
        i += ff;
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = b.get(i) else {
            return cut("in a marker");
        };
        i += 1;
        match code {
            0xD9 => return None,
            // No length follows: TEM, RSTn, SOI, and a stuffed zero outside a scan.
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            _ => {
                let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]])) else {
                    return cut("in a segment header");
                };
                i += len as usize;
                if i > b.len() {
                    return cut("inside a segment");
                }
                if code == 0xDA {
                    // Start of scan: inside the data 0xFF is followed by a stuffed zero or a
                    // restart marker; any other marker ends the scan.
                    loop {
                        let Some(ff) = memchr::memchr(0xFF, &b[i..]) else {
                            return cut("inside the compressed image data");
                        };
                        let mut j = i + ff + 1;
                        while b.get(j) == Some(&0xFF) {
                            j += 1;
                        }
                        match b.get(j) {
                            None => return cut("inside the compressed image data"),
                            Some(0x00 | 0xD0..=0xD7) => i = j + 1,
                            Some(_) => {
                                i = j - 1;
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Decode + resize-shorter-side-to-`side` + centre crop of one image file (EXIF orientation
/// applied). Returns `[3, side, side]` u8, CHW.
pub fn load_image_file(path: &Path, side: usize) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_resize(&bytes, side, true)
        .map(|d| d.chw)
        .map_err(|m| Error::data(path, m))
}

/// Catmull-Rom cubic (a = -0.5): interpolating, support 2.
fn catmull_rom(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        (1.5 * x - 2.5) * x * x + 1.0
    } else if x < 2.0 {
        ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    } else {
        0.0
    }
}

/// Filter taps along one axis: output `i` is `sum_t w[i][t] * src[start[i] + t]`. Taps that
/// fall outside the image are folded onto the edge pixel, so every range is inside the image.
struct Taps {
    start: Vec<usize>,
    w: Vec<Vec<f32>>,
}

fn taps(len: usize, k: f64, side: usize) -> Taps {
    let off = (k * len as f64 - side as f64) / 2.0;
    // Downscaling widens the kernel by 1/k (antialiasing); upscaling keeps it at support 2.
    let stretch = (1.0 / k).max(1.0);
    let support = 2.0 * stretch;
    let mut start = Vec::with_capacity(side);
    let mut w = Vec::with_capacity(side);
    for i in 0..side {
        let centre = (i as f64 + 0.5 + off) / k - 0.5;
        let lo = (centre - support).floor() as i64;
        let hi = (centre + support).ceil() as i64;
        let first = lo.clamp(0, len as i64 - 1);
        let last = hi.clamp(0, len as i64 - 1);
        let mut ws = vec![0f64; (last - first + 1) as usize];
        for j in lo..=hi {
            let idx = (j.clamp(0, len as i64 - 1) - first) as usize;
            ws[idx] += catmull_rom((j as f64 - centre) / stretch);
        }
        let sum: f64 = ws.iter().sum();
        start.push(first as usize);
        w.push(ws.into_iter().map(|x| (x / sum) as f32).collect());
    }
    Taps { start, w }
}

/// `rgb` is interleaved `[h, w, 3]`; returns `[3, side, side]`.
fn resize_centre_crop(rgb: &[u8], w: usize, h: usize, side: usize) -> Vec<u8> {
    let k = side as f64 / w.min(h) as f64;
    let tx = taps(w, k, side);
    let ty = taps(h, k, side);
    let rmin = ty.start.iter().copied().min().unwrap_or(0);
    let rmax = ty
        .start
        .iter()
        .zip(&ty.w)
        .map(|(s, w)| s + w.len() - 1)
        .max()
        .unwrap_or(0);
    // Horizontal pass over the rows the vertical pass needs: tmp[r - rmin][ox][c].
    let mut tmp = vec![0f32; (rmax - rmin + 1) * side * 3];
    for (r, trow) in (rmin..=rmax).zip(tmp.chunks_exact_mut(side * 3)) {
        let row = &rgb[r * w * 3..(r + 1) * w * 3];
        for ((&s, wts), acc) in tx.start.iter().zip(&tx.w).zip(trow.chunks_exact_mut(3)) {
            let src = &row[s * 3..(s + wts.len()) * 3];
            let (mut a0, mut a1, mut a2) = (0f32, 0f32, 0f32);
            for (&wt, p) in wts.iter().zip(src.chunks_exact(3)) {
                a0 += wt * p[0] as f32;
                a1 += wt * p[1] as f32;
                a2 += wt * p[2] as f32;
            }
            acc.copy_from_slice(&[a0, a1, a2]);
        }
    }
    // Vertical pass, then round, clamp (cubic overshoots) and scatter to CHW.
    let hw = side * side;
    let mut out = vec![0u8; 3 * hw];
    let mut acc = vec![0f32; side * 3];
    for (oy, (&s, wts)) in ty.start.iter().zip(&ty.w).enumerate() {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (t, &wt) in wts.iter().enumerate() {
            let r = s + t - rmin;
            for (a, &v) in acc.iter_mut().zip(&tmp[r * side * 3..(r + 1) * side * 3]) {
                *a += wt * v;
            }
        }
        for (ox, px) in acc.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                // `as u8` saturates, so this rounds and clamps the cubic's overshoot at once.
                out[c * hw + oy * side + ox] = (v + 0.5) as u8;
            }
        }
    }
    out
}
