//! Winograd convolution (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"):
//! a stride-1 r x r convolution computed on m x m output tiles, each from an alpha x alpha input
//! tile d (alpha = m + r - 1), as
//!
//! ```text
//!     Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A
//! ```
//!
//! Summed over the input channels, the element-wise product becomes alpha^2 independent GEMMs,
//! one per point ξ of the transformed tile, with r^2 m^2 / alpha^2 times fewer multiply-adds than
//! im2col's one GEMM (F(4x4, 3x3): 4x, F(3x3, 5x5): 4.6x), less the part of the last tiles that
//! sticks out of the map (13x13 maps in 4x4 tiles: 2.6x; 27x27 in 3x3 tiles: 4.6x). The three
//! passes share the transforms:
//!
//! - forward:          `M[ξ] = U[ξ] V[ξ]` with `U = G g G^T` (filters, `[cout, cin]` per ξ),
//!   `V = B^T d B` (input tiles, `[cin, tiles]` per ξ); then `y = A^T M A` per tile, plus bias;
//! - backward data:    the forward of dy with the filters rotated by 180 degrees and their input
//!   and output channels swapped, padding `r - 1 - pad` (a stride-1 convolution's transpose is
//!   a convolution);
//! - backward weights: `y` is bilinear in (U, V), so `dU[ξ] = Σ_tiles Q[ξ] V[ξ]^T` with
//!   `Q = A dy A^T` (each output tile's gradient), one GEMM per ξ over all the tiles of the
//!   batch, and `dw = G^T dU G`.
//!
//! The transforms are AVX2 code in `csrc/winograd_avx2.c`, with each tile's matrices as
//! constants (so its zeros and ones cost nothing): input tiles, output tiles and output-tile
//! gradients 8 consecutive tiles per register, each plane read from a zero-padded copy (no
//! bounds checks per load), outputs past the map's edge dropped; filters and their gradients
//! 8 input channels per register, once per call, in parallel over output channels. The
//! transformed arrays are `[channels][ξ][tiles]` and the transformed filters `[cout][ξ][cin]`,
//! so one tile's (or filter's) alpha^2 values land in nearby rows. Without AVX2 and FMA the
//! engine uses im2col. Every GEMM is single-threaded; the engine's
//! threads take contiguous runs of (image, group) units as im2col does, each with its own
//! scratch, and the weight gradient's per-thread partial sums are added in a fixed order, so
//! results depend on the thread count only (exact resume).
//!
//! Accuracy: the transforms' coefficients (up to 8 in F(4x4, 3x3)'s A^T) amplify f32 rounding;
//! `tests/suite/cpu_ops.rs` bounds the error against the f64 oracle (its `WINOGRAD` tolerance).

use std::ops::Range;

use super::conv::sum;
#[cfg(target_arch = "x86_64")]
use super::gemm::HasAvx2Fma;
use super::gemm::{gemm, MatMut, MatRef};
use super::{grown, split_mut, split_ranges, CpuEngine};
use crate::engine::ConvShape;
use crate::error::{Error, Result};

/// Tiles transformed together: the SIMD width of the transforms' inner loops.
const LANES: usize = 8;
/// Tiles per GEMM column block: images are taken in chunks of about this many tiles, so each
/// ξ's GEMM has enough columns to amortise packing while V and M stay a few MB.
const TILES_PER_CHUNK: usize = 256;

/// A minimal filtering algorithm F(m x m, r x r). Its matrices A^T, G and B^T are constants of
/// `csrc/winograd_avx2.c` (and of this file's tests, which check the three against each other and
/// the C transforms against them).
#[derive(Debug)]
pub struct Tile {
    pub name: &'static str,
    /// Its `AlexnetWinoTile` in `csrc/winograd.h`.
    id: i32,
    pub m: usize,
    pub r: usize,
    pub alpha: usize,
    /// The smallest batch it is used for: below it the filter transforms (once per call) cost
    /// more than the GEMMs save.
    pub min_images: usize,
}

/// F(4x4, 3x3) on the points 0, ±1, ±2, ∞.
pub const F4X3: Tile = Tile {
    name: "F(4x4,3x3)",
    id: 0,
    m: 4,
    r: 3,
    alpha: 6,
    // Measured on conv3-conv5 (2 threads): 10-60% slower than im2col at 1 and 2 images, 5-15%
    // faster at 4.
    min_images: 4,
};

/// F(3x3, 5x5) on the points 0, ±1, ±2, 1/2, ∞: 27x27 maps (conv2) split into whole tiles.
pub const F3X5: Tile = Tile {
    name: "F(3x3,5x5)",
    id: 1,
    m: 3,
    r: 5,
    alpha: 7,
    // conv2: 1.5-2x faster than im2col from one image on.
    min_images: 1,
};

/// Which tile computes a stride-1 `r x r` convolution, if any.
/// Measured against F(2x2, 3x3) and F(2x2, 5x5) (fewer transform operations, more GEMM work) on
/// AlexNet's layers at batch 32: the larger tiles were 10-40% faster on every pass.
fn tile_for(r: usize) -> Option<&'static Tile> {
    match r {
        3 => Some(&F4X3),
        5 => Some(&F3X5),
        _ => None,
    }
}

/// One unit's geometry for the C transforms (`AlexnetWinoGeo` in `csrc/winograd.h`): channels
/// in and out, maps `[h, w] -> [ho, wo]`, zero padding, `th x tw` tiles.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Geo {
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    pad: usize,
    th: usize,
    tw: usize,
}

#[cfg(target_arch = "x86_64")]
extern "C" {
    /// `csrc/winograd.h`: V[c][ξ][t0 + tile] = (B^T d B)[ξ] for x's input tiles.
    fn alexnet_wino_input(
        tile: i32,
        g: *const Geo,
        x: *const f32,
        v: *mut f32,
        vs: usize,
        t0: usize,
        pad: *mut f32,
    );
    /// Q[k][ξ][t0 + tile] = (A dy A^T)[ξ] for dy's output tiles.
    fn alexnet_wino_gradient(
        tile: i32,
        g: *const Geo,
        dy: *const f32,
        q: *mut f32,
        qs: usize,
        t0: usize,
        pad: *mut f32,
    );
    /// u[ξ][i] = (G f_i G^T)[ξ] for the filters of one output channel.
    fn alexnet_wino_filters(
        tile: i32,
        w: *const f32,
        is: usize,
        flip: i32,
        cin: usize,
        u: *mut f32,
    );
    /// dw[i][a][b] = (G^T dU_i G)(a, b) for the filters of one output channel.
    fn alexnet_wino_filter_grads(tile: i32, du: *const f32, cin: usize, dw: *mut f32);
    /// y[k] = A^T M[k][·] A (+ bias[k], unless null).
    fn alexnet_wino_output(
        tile: i32,
        g: *const Geo,
        m: *const f32,
        ms: usize,
        t0: usize,
        bias: *const f32,
        y: *mut f32,
        pad: *mut f32,
    );
}

/// One stride-1 convolution on tiles: `groups` groups of (image) units, each `cin -> cout`
/// channels over maps `[h, w] -> [ho, wo]`, `n` images.
pub(super) struct Plan {
    t: &'static Tile,
    geo: Geo,
    groups: usize,
    n: usize,
    /// The C transforms' instructions are on this CPU.
    #[cfg(target_arch = "x86_64")]
    cpu: HasAvx2Fma,
}

impl Plan {
    /// The plan of `s`'s forward pass, if a tile computes it on this CPU: AVX2 and FMA, stride
    /// 1, a square kernel with a tile, padding below the kernel size (so that the backward-data
    /// pass is a convolution too), a batch of at least the tile's `min_images`.
    pub(super) fn forward(s: &ConvShape) -> Option<Plan> {
        #[cfg(not(target_arch = "x86_64"))]
        return None;
        #[cfg(target_arch = "x86_64")]
        {
            let t = tile_for(s.kh)?;
            Plan::with_tile(s, t)
        }
    }

    /// The plan of `s`'s forward pass on `t`'s tiles, if they compute it on this CPU.
    fn with_tile(s: &ConvShape, t: &'static Tile) -> Option<Plan> {
        #[cfg(not(target_arch = "x86_64"))]
        return None;
        #[cfg(target_arch = "x86_64")]
        {
            let cpu = HasAvx2Fma::detect()?;
            if s.kh != t.r || s.kw != t.r || s.stride != 1 || s.pad >= t.r || s.n < t.min_images {
                return None;
            }
            let (ho, wo) = (s.h_out(), s.w_out());
            Some(Plan {
                t,
                geo: Geo {
                    cin: s.c_in / s.groups,
                    cout: s.c_out / s.groups,
                    h: s.h,
                    w: s.w,
                    ho,
                    wo,
                    pad: s.pad,
                    th: ho.div_ceil(t.m),
                    tw: wo.div_ceil(t.m),
                },
                groups: s.groups,
                n: s.n,
                cpu,
            })
        }
    }

    /// The plan of `s`'s backward-data pass: dy `[cout, ho, wo]` -> dx `[cin, h, w]` through the
    /// rotated, transposed filters, padding `r - 1 - pad`.
    pub(super) fn backward_data(s: &ConvShape) -> Option<Plan> {
        let f = Plan::forward(s)?;
        let g = f.geo;
        Some(Plan {
            geo: Geo {
                cin: g.cout,
                cout: g.cin,
                h: g.ho,
                w: g.wo,
                ho: g.h,
                wo: g.w,
                pad: f.t.r - 1 - g.pad,
                th: g.h.div_ceil(f.t.m),
                tw: g.w.div_ceil(f.t.m),
            },
            ..f
        })
    }

    fn tiles(&self) -> usize {
        self.geo.th * self.geo.tw
    }

    fn points(&self) -> usize {
        self.t.alpha * self.t.alpha
    }

    /// Floats of the transformed filters of all groups, `[groups][cout][ξ][cin]`.
    fn filters_len(&self) -> usize {
        self.groups * self.points() * self.geo.cout * self.geo.cin
    }

    /// Images per chunk of GEMMs.
    fn chunk(&self) -> usize {
        let target: usize = std::env::var("WINO_CHUNK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(TILES_PER_CHUNK);
        target.div_ceil(self.tiles()).max(1)
    }

    /// The row stride of V, M and Q for a chunk of `tiles` tiles: LANES more, so that the
    /// transforms may load and store whole registers past the last tile.
    fn stride(tiles: usize) -> usize {
        tiles + LANES
    }

    /// Floats of V and M (or Q) for a chunk.
    fn chunk_len(&self) -> usize {
        self.points() * (self.geo.cin + self.geo.cout) * Plan::stride(self.chunk() * self.tiles())
    }

    /// Floats of the C transforms' zero-padded plane: the reach of every input tile (which
    /// holds the output tiles' planes too, m <= alpha).
    fn pad_len(&self) -> usize {
        let (m, a) = (self.t.m, self.t.alpha);
        ((self.geo.th - 1) * m + a) * ((self.geo.tw - 1) * m + a)
    }

    /// A part's scratch for one chunk: V, M (or Q) and the padded plane.
    fn scratch<'a>(
        &self,
        col: &'a mut Vec<f32>,
        big_t: usize,
    ) -> (&'a mut [f32], &'a mut [f32], &'a mut [f32]) {
        let buf = grown(col, self.chunk_len() + self.pad_len());
        let (pad, buf) = buf.split_at_mut(self.pad_len());
        let (v, m) = buf.split_at_mut(self.points() * self.geo.cin * Plan::stride(big_t));
        (v, m, pad)
    }

    /// Checks the padded plane's length.
    fn check_pad(&self, op: &str, len: usize) -> Result<()> {
        if len >= self.pad_len() {
            Ok(())
        } else {
            Err(Error::shape(
                op,
                format!("a padded plane of {len} floats, {} needed", self.pad_len()),
            ))
        }
    }

    /// Floats of one unit's input and output planes.
    fn in_unit(&self) -> usize {
        self.geo.cin * self.geo.h * self.geo.w
    }
    fn out_unit(&self) -> usize {
        self.geo.cout * self.geo.ho * self.geo.wo
    }

    /// Floats a part's scratch holds for this plan (V, M or Q, the padded plane, and the weight
    /// gradient's partial sums), plus the engine's shared transformed filters.
    fn scratch_floats(&self) -> usize {
        self.chunk_len() + self.pad_len() + 2 * self.filters_len() + self.groups * self.geo.cout
    }

    /// The images `img` with `units.start <= img * groups + grp < units.end`.
    fn images_of(&self, units: &Range<usize>, grp: usize) -> Range<usize> {
        let first = units.start.saturating_sub(grp).div_ceil(self.groups);
        let end = units.end.saturating_sub(grp).div_ceil(self.groups);
        first..end.max(first)
    }

    /// Checks that a transformed array of `channels` rows per point, row stride `stride`,
    /// holds this unit's tiles from `t0` (and the whole registers after them).
    fn check_transformed(
        &self,
        op: &str,
        len: usize,
        channels: usize,
        stride: usize,
        t0: usize,
    ) -> Result<()> {
        if t0 + self.tiles() + LANES <= stride && self.points() * channels * stride <= len {
            Ok(())
        } else {
            Err(Error::shape(
                op,
                format!(
                    "{}: a transformed array of {len} floats with row stride {stride} does not \
                     hold {} tiles from {t0}",
                    self.t.name,
                    self.tiles()
                ),
            ))
        }
    }

    /// V[ξ][c][t0 + tile] = (B^T d B)[ξ] for the input tiles of one unit's planes `x`.
    fn input_tiles(
        &self,
        x: &[f32],
        v: &mut [f32],
        vs: usize,
        t0: usize,
        pad: &mut [f32],
    ) -> Result<()> {
        const OP: &str = "winograd input tiles";
        crate::engine::check_len(OP, "x", x.len(), self.in_unit())?;
        self.check_transformed(OP, v.len(), self.geo.cin, vs, t0)?;
        self.check_pad(OP, pad.len())?;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the C function reads cin*h*w floats of x (checked above) and writes, for each
        // of the alpha^2 points and cin channels, whole 8-float registers at row offsets
        // t0 .. t0 + th*tw + 8 <= vs of a [alpha^2][cin][vs] array that fits in v (checked
        // above); `self.cpu` proves the AVX2 and FMA instructions it is compiled with. x and v
        // are distinct borrows, so they do not overlap.
        unsafe {
            let _ = self.cpu;
            alexnet_wino_input(
                self.t.id,
                &self.geo,
                x.as_ptr(),
                v.as_mut_ptr(),
                vs,
                t0,
                pad.as_mut_ptr(),
            );
        }
        Ok(())
    }

    /// Q[ξ][k][t0 + tile] = (A dy A^T)[ξ] for the output tiles of one unit's gradient `dy`.
    fn gradient_tiles(
        &self,
        dy: &[f32],
        q: &mut [f32],
        qs: usize,
        t0: usize,
        pad: &mut [f32],
    ) -> Result<()> {
        const OP: &str = "winograd gradient tiles";
        crate::engine::check_len(OP, "dy", dy.len(), self.out_unit())?;
        self.check_transformed(OP, q.len(), self.geo.cout, qs, t0)?;
        self.check_pad(OP, pad.len())?;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `input_tiles`, with dy's cout*ho*wo floats read and q's
        // [alpha^2][cout][qs] array written (both checked above).
        unsafe {
            let _ = self.cpu;
            alexnet_wino_gradient(
                self.t.id,
                &self.geo,
                dy.as_ptr(),
                q.as_mut_ptr(),
                qs,
                t0,
                pad.as_mut_ptr(),
            );
        }
        Ok(())
    }

    /// y[k] = A^T M[·][k] A + bias[k] for one unit's output planes `y`, from the products
    /// `mm` (`[ξ][cout][ms]`, this unit's tiles from `t0`).
    fn output_tiles(
        &self,
        mm: &[f32],
        ms: usize,
        t0: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
        pad: &mut [f32],
    ) -> Result<()> {
        const OP: &str = "winograd output tiles";
        self.check_pad(OP, pad.len())?;
        crate::engine::check_len(OP, "y", y.len(), self.out_unit())?;
        self.check_transformed(OP, mm.len(), self.geo.cout, ms, t0)?;
        if let Some(b) = bias {
            crate::engine::check_len(OP, "bias", b.len(), self.geo.cout)?;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the C function reads whole registers at row offsets t0 .. t0 + th*tw + 8 <= ms
        // of the [alpha^2][cout][ms] array in mm, cout floats of bias when it is not null, and
        // writes the cout*ho*wo floats of y (all checked above); `self.cpu` proves its
        // instructions. y is a distinct mutable borrow, so it overlaps neither input.
        unsafe {
            let _ = self.cpu;
            let bias = bias.map_or(std::ptr::null(), |b| b.as_ptr());
            alexnet_wino_output(
                self.t.id,
                &self.geo,
                mm.as_ptr(),
                ms,
                t0,
                bias,
                y.as_mut_ptr(),
                pad.as_mut_ptr(),
            );
        }
        Ok(())
    }

    /// U[g][o][ξ][i] = (G f G^T)[ξ] for every filter f from input channel i to output channel o
    /// of group g: tap (a, b) of the filter of (g, o, i) at
    /// `w[base(g, o) + i * is + a * r + b]`, rotated by 180 degrees when `flip`; in parallel over
    /// the output channels.
    fn transform_filters(
        &self,
        eng: &CpuEngine,
        w: &[f32],
        base: impl Fn(usize, usize) -> usize + Sync,
        is: usize,
        flip: bool,
        u: &mut [f32],
    ) -> Result<()> {
        const OP: &str = "winograd filter transform";
        let (r, cin, cout, per) = (
            self.t.r,
            self.geo.cin,
            self.geo.cout,
            self.points() * self.geo.cin,
        );
        let channels = split_ranges(self.groups * cout, eng.threads());
        let parts = split_mut(&mut u[..self.filters_len()], &channels, per);
        eng.run_parts(parts, |_, (ocs, u)| {
            for (oc, u) in ocs.zip(u.chunks_exact_mut(per)) {
                let b = base(oc / cout, oc % cout);
                if cin == 0 || b + (cin - 1) * is + r * r > w.len() {
                    return Err(Error::shape(
                        OP,
                        format!("filters of {} floats too short", w.len()),
                    ));
                }
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the C function reads taps b + i*is + t for i < cin and t < r*r, all
                // inside w (checked above), and writes the alpha^2 * cin floats of u (a chunk of
                // exactly that length); `self.cpu` proves its instructions. u is a distinct
                // mutable borrow.
                unsafe {
                    let _ = self.cpu;
                    alexnet_wino_filters(
                        self.t.id,
                        w[b..].as_ptr(),
                        is,
                        i32::from(flip),
                        cin,
                        u.as_mut_ptr(),
                    );
                }
            }
            Ok(())
        })
    }

    /// dw[g*cout + k][c] = (G^T dU[g][k][·][c] G), the r x r taps, from dU `[g][k][ξ][c]`; in
    /// parallel over the output channels.
    fn weight_gradient(&self, eng: &CpuEngine, du: &[f32], dw: &mut [f32]) -> Result<()> {
        const OP: &str = "winograd weight gradient";
        let (r, cin, per) = (self.t.r, self.geo.cin, self.points() * self.geo.cin);
        let filter = cin * r * r;
        crate::engine::check_len(OP, "dU", du.len(), self.filters_len())?;
        crate::engine::check_len(OP, "dw", dw.len(), self.groups * self.geo.cout * filter)?;
        let channels = split_ranges(self.groups * self.geo.cout, eng.threads());
        let parts = split_mut(dw, &channels, filter);
        eng.run_parts(parts, |_, (ocs, dw)| {
            for (oc, dw) in ocs.zip(dw.chunks_exact_mut(filter)) {
                let du = &du[oc * per..(oc + 1) * per];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the C function reads the alpha^2 * cin floats of du and writes the
                // cin * r * r floats of dw, the lengths of these two slices; `self.cpu` proves
                // its instructions; dw is a distinct mutable borrow.
                unsafe {
                    let _ = self.cpu;
                    alexnet_wino_filter_grads(self.t.id, du.as_ptr(), cin, dw.as_mut_ptr());
                }
            }
            Ok(())
        })
    }
}

/// The most floats of scratch a Winograd pass of `s` takes per part (see
/// [`Plan::scratch_floats`]), or None when no tile computes `s` on this CPU.
pub(super) fn scratch_floats(s: &ConvShape) -> Option<usize> {
    let forward = Plan::forward(s)?.scratch_floats();
    Some(Plan::backward_data(s).map_or(forward, |b| forward.max(b.scratch_floats())))
}

/// Point ξ of a transformed array `[channels][points][stride]`: the `channels x tiles` matrix
/// that one GEMM reads.
fn point(
    a: &[f32],
    xi: usize,
    channels: usize,
    points: usize,
    stride: usize,
    tiles: usize,
) -> MatRef<'_> {
    MatRef {
        data: &a[xi * stride..],
        rows: channels,
        cols: tiles,
        rs: points * stride,
        cs: 1,
    }
}

/// [`point`], to be written.
fn point_mut(
    a: &mut [f32],
    xi: usize,
    channels: usize,
    points: usize,
    stride: usize,
    tiles: usize,
) -> MatMut<'_> {
    MatMut {
        data: &mut a[xi * stride..],
        rows: channels,
        cols: tiles,
        rs: points * stride,
    }
}

/// out[N, groups*cout, ho, wo] = the plan's convolution of inp[N, groups*cin, h, w] with the
/// transformed filters `u` (`[groups][cout][ξ][cin]`), plus `bias`. Runs of units per thread.
fn convolve(
    eng: &CpuEngine,
    p: &Plan,
    u: &[f32],
    inp: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<()> {
    let (pts, tiles, cin, cout) = (p.points(), p.tiles(), p.geo.cin, p.geo.cout);
    let (in_unit, out_unit) = (p.in_unit(), p.out_unit());
    let ranges = split_ranges(p.n * p.groups, eng.threads());
    let parts = split_mut(out, &ranges, out_unit);
    eng.run_parts(parts, |i, (units, out)| {
        let mut scratch = eng.scratch(i);
        for grp in 0..p.groups {
            let ug = &u[grp * pts * cout * cin..][..pts * cout * cin];
            let images = p.images_of(&units, grp);
            for first in images.clone().step_by(p.chunk()) {
                let imgs = first..(first + p.chunk()).min(images.end);
                let big_t = imgs.len() * tiles;
                let st = Plan::stride(big_t);
                let (v, mm, pad) = p.scratch(&mut scratch.col, big_t);
                for (j, img) in imgs.clone().enumerate() {
                    let unit = img * p.groups + grp;
                    p.input_tiles(&inp[unit * in_unit..][..in_unit], v, st, j * tiles, pad)?;
                }
                for xi in 0..pts {
                    let uxi = point(ug, xi, cout, pts, cin, cin);
                    let vxi = point(v, xi, cin, pts, st, big_t);
                    let mxi = point_mut(mm, xi, cout, pts, st, big_t);
                    gemm(1.0, uxi, vxi, 0.0, mxi)?;
                }
                let bias = bias.map(|b| &b[grp * cout..(grp + 1) * cout]);
                for (j, img) in imgs.enumerate() {
                    let local = img * p.groups + grp - units.start;
                    let o = &mut out[local * out_unit..][..out_unit];
                    p.output_tiles(mm, st, j * tiles, bias, o, pad)?;
                }
            }
        }
        Ok(())
    })
}

// y[N,Cout,Ho,Wo] = conv(x[N,Cin,H,W], w[Cout,Cin/g,r,r]) + b[Cout]
pub(super) fn forward(
    eng: &CpuEngine,
    p: &Plan,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
) -> Result<()> {
    let mut filters = eng.filters();
    let u = grown(&mut filters, p.filters_len());
    let (rr, cin, cout) = (p.t.r * p.t.r, p.geo.cin, p.geo.cout);
    p.transform_filters(eng, w, |g, o| (g * cout + o) * cin * rr, rr, false, u)?;
    convolve(eng, p, u, x, Some(b), y)
}

// dx[N,Cin,H,W] = conv_transpose(dy[N,Cout,Ho,Wo], w[Cout,Cin/g,r,r]); `p` is the backward plan
pub(super) fn backward_data(
    eng: &CpuEngine,
    p: &Plan,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    let mut filters = eng.filters();
    let u = grown(&mut filters, p.filters_len());
    let (rr, cin, cout) = (p.t.r * p.t.r, p.geo.cin, p.geo.cout);
    // The transposed convolution's filter from its input channel i (the forward's output
    // channel) to its output channel o (the forward's input channel): the forward's, rotated.
    p.transform_filters(eng, w, |g, o| (g * cin * cout + o) * rr, cout * rr, true, u)?;
    convolve(eng, p, u, dy, None, dx)
}

// dw[Cout,Cin/g,r,r] = sum_n dy[n] ⋆ x[n] ; db[Cout] = sum_{n,h,w} dy. The caller holds
// `eng.exclusive()` (the parts' partial sums stay in their scratch until combined).
pub(super) fn backward_weights(
    eng: &CpuEngine,
    p: &Plan,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) -> Result<()> {
    let (pts, tiles, cin, cout) = (p.points(), p.tiles(), p.geo.cin, p.geo.cout);
    let (in_unit, out_unit) = (p.in_unit(), p.out_unit());
    let du_len = p.filters_len();
    // Taken before the parts' scratch (the engine's lock order).
    let mut filters = eng.filters();
    let ranges = split_ranges(p.n * p.groups, eng.threads());
    // Each part sums its units' dU and db into its own `acc` = [dU | db], zeroed first.
    eng.run_parts(ranges.clone(), |i, units| {
        let mut scratch = eng.scratch(i);
        let scratch = &mut *scratch;
        let acc = grown(&mut scratch.acc, du_len + p.groups * cout);
        acc.fill(0.0);
        let (acc_u, acc_b) = acc.split_at_mut(du_len);
        let plane = p.geo.ho * p.geo.wo;
        for grp in 0..p.groups {
            let du = &mut acc_u[grp * pts * cout * cin..][..pts * cout * cin];
            let images = p.images_of(&units, grp);
            for first in images.clone().step_by(p.chunk()) {
                let imgs = first..(first + p.chunk()).min(images.end);
                let big_t = imgs.len() * tiles;
                let st = Plan::stride(big_t);
                let (v, q, pad) = p.scratch(&mut scratch.col, big_t);
                for (j, img) in imgs.clone().enumerate() {
                    let unit = img * p.groups + grp;
                    p.input_tiles(&x[unit * in_unit..][..in_unit], v, st, j * tiles, pad)?;
                    let dyu = &dy[unit * out_unit..][..out_unit];
                    p.gradient_tiles(dyu, q, st, j * tiles, pad)?;
                    for (bo, row) in acc_b[grp * cout..].iter_mut().zip(dyu.chunks_exact(plane)) {
                        *bo += sum(row) as f32;
                    }
                }
                for xi in 0..pts {
                    let qxi = point(q, xi, cout, pts, st, big_t);
                    let vxi = point(v, xi, cin, pts, st, big_t);
                    let dxi = point_mut(du, xi, cout, pts, cin, cin);
                    gemm(1.0, qxi, vxi.t(), 1.0, dxi)?;
                }
            }
        }
        Ok(())
    })?;
    // dU = the parts' partials summed, then dw = G^T dU G.
    let du = grown(&mut filters, du_len);
    eng.sum_partials(ranges.len(), du, db)?;
    p.weight_gradient(eng, du, dw)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TILES: [&Tile; 2] = [&F4X3, &F3X5];

    /// A strided view of a small matrix: element (i, j) is `data[i * rs + j * cs]`.
    #[derive(Clone, Copy)]
    struct Small {
        data: &'static [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    }

    impl Small {
        fn rm(data: &'static [f32], rows: usize, cols: usize) -> Small {
            Small {
                data,
                rows,
                cols,
                rs: cols,
                cs: 1,
            }
        }
        fn t(self) -> Small {
            Small {
                rows: self.cols,
                cols: self.rows,
                rs: self.cs,
                cs: self.rs,
                ..self
            }
        }
        fn at(&self, i: usize, j: usize) -> f32 {
            self.data[i * self.rs + j * self.cs]
        }
    }

    /// A tile's G (alpha x r), row-major: the C transforms' constant.
    fn g_of(t: &Tile) -> &'static [f32] {
        match t.id {
            0 => &[
                1.0 / 4.0,
                0.0,
                0.0,
                -1.0 / 6.0,
                -1.0 / 6.0,
                -1.0 / 6.0,
                -1.0 / 6.0,
                1.0 / 6.0,
                -1.0 / 6.0,
                1.0 / 24.0,
                1.0 / 12.0,
                1.0 / 6.0,
                1.0 / 24.0,
                -1.0 / 12.0,
                1.0 / 6.0,
                0.0,
                0.0,
                1.0,
            ],
            _ => &[
                -1.0 / 2.0,
                0.0,
                0.0,
                0.0,
                0.0,
                -1.0 / 3.0,
                -1.0 / 3.0,
                -1.0 / 3.0,
                -1.0 / 3.0,
                -1.0 / 3.0,
                1.0 / 9.0,
                -1.0 / 9.0,
                1.0 / 9.0,
                -1.0 / 9.0,
                1.0 / 9.0,
                1.0 / 36.0,
                1.0 / 18.0,
                1.0 / 9.0,
                2.0 / 9.0,
                4.0 / 9.0,
                -1.0 / 60.0,
                1.0 / 30.0,
                -1.0 / 15.0,
                2.0 / 15.0,
                -4.0 / 15.0,
                32.0 / 45.0,
                16.0 / 45.0,
                8.0 / 45.0,
                4.0 / 45.0,
                2.0 / 45.0,
                0.0,
                0.0,
                0.0,
                0.0,
                1.0,
            ],
        }
    }

    /// A tile's A^T (m x alpha) and B^T (alpha x alpha), row-major: the C transforms' constants.
    fn at_bt(t: &Tile) -> (&'static [f32], &'static [f32]) {
        match t.id {
            0 => (
                &[
                    1.0, 1.0, 1.0, 1.0, 1.0, 0.0, //
                    0.0, 1.0, -1.0, 2.0, -2.0, 0.0, //
                    0.0, 1.0, 1.0, 4.0, 4.0, 0.0, //
                    0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
                ],
                &[
                    4.0, 0.0, -5.0, 0.0, 1.0, 0.0, //
                    0.0, -4.0, -4.0, 1.0, 1.0, 0.0, //
                    0.0, 4.0, -4.0, -1.0, 1.0, 0.0, //
                    0.0, -2.0, -1.0, 2.0, 1.0, 0.0, //
                    0.0, 2.0, -1.0, -2.0, 1.0, 0.0, //
                    0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
                ],
            ),
            _ => (
                &[
                    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, //
                    0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 0.0, //
                    0.0, 1.0, 1.0, 4.0, 4.0, 0.25, 1.0,
                ],
                &[
                    -2.0, 4.0, 2.5, -5.0, -0.5, 1.0, 0.0, //
                    0.0, 2.0, -2.0, -4.5, 0.5, 1.0, 0.0, //
                    0.0, -2.0, 6.0, -3.5, -1.5, 1.0, 0.0, //
                    0.0, 1.0, -1.5, -2.0, 1.5, 1.0, 0.0, //
                    0.0, -1.0, 2.5, 0.0, -2.5, 1.0, 0.0, //
                    0.0, 4.0, 0.0, -5.0, 0.0, 1.0, 0.0, //
                    0.0, -2.0, 4.0, 2.5, -5.0, -0.5, 1.0,
                ],
            ),
        }
    }

    /// Each tile's matrices are a minimal filtering algorithm: for every filter tap and input
    /// position, A^T [(G e_k) ⊙ (B^T e_j)] is the one-hot correlation output [j == i + k], in f64
    /// (the f32 constants of 1/3, 1/9, ... carry their rounding: 1e-6 absolute).
    #[test]
    fn tiles_are_correlations() {
        for t in TILES {
            assert_eq!(t.alpha, t.m + t.r - 1, "{}", t.name);
            let (at, bt) = at_bt(t);
            assert_eq!(at.len(), t.m * t.alpha, "{}", t.name);
            assert_eq!(g_of(t).len(), t.alpha * t.r, "{}", t.name);
            assert_eq!(bt.len(), t.alpha * t.alpha, "{}", t.name);
            for i in 0..t.m {
                for k in 0..t.r {
                    for j in 0..t.alpha {
                        let (at, bt) = at_bt(t);
                        let got: f64 = (0..t.alpha)
                            .map(|x| {
                                at[i * t.alpha + x] as f64
                                    * g_of(t)[x * t.r + k] as f64
                                    * bt[x * t.alpha + j] as f64
                            })
                            .sum();
                        let want = if j == i + k { 1.0 } else { 0.0 };
                        assert!(
                            (got - want).abs() < 1e-6,
                            "{}: output {i}, tap {k}, input {j}: {got}",
                            t.name
                        );
                    }
                }
            }
        }
    }

    /// A plan of one unit for each tile, on odd sizes with padding (tiles sticking out of the
    /// map on both sides, several lane groups, a last group with fewer than LANES tiles).
    fn unit_plans() -> Vec<Plan> {
        let mut plans = Vec::new();
        for t in TILES {
            for (h, w, pad) in [(7, 5, 1), (13, 13, t.r / 2), (11, 17, 0)] {
                let s = ConvShape {
                    n: t.min_images,
                    c_in: 3,
                    h,
                    w,
                    c_out: 2,
                    kh: t.r,
                    kw: t.r,
                    stride: 1,
                    pad,
                    groups: 1,
                };
                if h + 2 * pad < t.r || w + 2 * pad < t.r {
                    continue;
                }
                if HasAvx2Fma::detect().is_none() {
                    eprintln!("skipped: this CPU has no AVX2 and FMA (Winograd needs them)");
                    return Vec::new();
                }
                plans.push(Plan::with_tile(&s, t).expect("a shape the tile computes"));
            }
        }
        plans
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..len)
            .map(|_| (rng.uniform() * 2.0 - 1.0) as f32)
            .collect()
    }

    /// Asserts |got - want| <= 4e-6 * scale for each element: the C transforms sum at most
    /// alpha^2 = 49 products of an f32 value and a coefficient in two stages, so each result
    /// carries a few roundings of eps32 = 6e-8 times the sum of its terms' magnitudes (`scale`).
    fn assert_near(what: &str, got: &[f32], want: &[(f64, f64)]) {
        for (i, (&g, &(w, scale))) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 4e-6 * scale.max(1e-30),
                "{what}: element {i} is {g}, the f64 transform says {w} (term scale {scale})"
            );
        }
    }

    /// Σ_{u,j} L(a,u) d(u,j) L(b,j) in f64, with the sum of the terms' magnitudes.
    fn sandwich64(l: Small, d: &dyn Fn(usize, usize) -> f64, a: usize, b: usize) -> (f64, f64) {
        let (mut v, mut s) = (0.0, 0.0);
        for u in 0..l.cols {
            for j in 0..l.cols {
                let term = l.at(a, u) as f64 * d(u, j) * l.at(b, j) as f64;
                v += term;
                s += term.abs();
            }
        }
        (v, s)
    }

    #[test]
    fn c_input_transform_is_bt_d_b() {
        for p in unit_plans() {
            let (g, a, m) = (p.geo, p.t.alpha, p.t.m);
            let x = values(p.in_unit(), 1);
            let t0 = 3;
            let vs = t0 + p.tiles() + LANES + 1;
            let mut v = vec![f32::NAN; p.points() * g.cin * vs];
            let mut pad = vec![f32::NAN; p.pad_len()];
            p.input_tiles(&x, &mut v, vs, t0, &mut pad).unwrap();
            let bt = Small::rm(at_bt(p.t).1, a, a);
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for c in 0..g.cin {
                for t in 0..p.tiles() {
                    let (ty, tx) = (t / g.tw, t % g.tw);
                    let d = |u: usize, j: usize| {
                        let iy = (ty * m + u) as isize - g.pad as isize;
                        let ix = (tx * m + j) as isize - g.pad as isize;
                        if (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix) {
                            x[c * g.h * g.w + iy as usize * g.w + ix as usize] as f64
                        } else {
                            0.0
                        }
                    };
                    for xi in 0..p.points() {
                        got.push(v[(c * p.points() + xi) * vs + t0 + t]);
                        want.push(sandwich64(bt, &d, xi / a, xi % a));
                    }
                }
            }
            assert_near(&format!("{} input {:?}", p.t.name, g), &got, &want);
        }
    }

    #[test]
    fn c_gradient_transform_is_a_dy_at() {
        for p in unit_plans() {
            let (g, a, m) = (p.geo, p.t.alpha, p.t.m);
            let dy = values(p.out_unit(), 2);
            let t0 = 1;
            let qs = t0 + p.tiles() + LANES;
            let mut q = vec![f32::NAN; p.points() * g.cout * qs];
            let mut pad = vec![f32::NAN; p.pad_len()];
            p.gradient_tiles(&dy, &mut q, qs, t0, &mut pad).unwrap();
            let at_t = Small::rm(at_bt(p.t).0, m, a).t();
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for k in 0..g.cout {
                for t in 0..p.tiles() {
                    let (ty, tx) = (t / g.tw, t % g.tw);
                    let d = |i: usize, j: usize| {
                        let (oy, ox) = (ty * m + i, tx * m + j);
                        if oy < g.ho && ox < g.wo {
                            dy[k * g.ho * g.wo + oy * g.wo + ox] as f64
                        } else {
                            0.0
                        }
                    };
                    for xi in 0..p.points() {
                        got.push(q[(k * p.points() + xi) * qs + t0 + t]);
                        want.push(sandwich64(at_t, &d, xi / a, xi % a));
                    }
                }
            }
            assert_near(&format!("{} gradient {:?}", p.t.name, g), &got, &want);
        }
    }

    #[test]
    fn c_output_transform_is_at_m_a_plus_bias() {
        for p in unit_plans() {
            let (g, a, m) = (p.geo, p.t.alpha, p.t.m);
            let t0 = 2;
            let ms = t0 + p.tiles() + LANES;
            let mm = values(p.points() * g.cout * ms, 3);
            let bias = values(g.cout, 4);
            let mut y = vec![f32::NAN; p.out_unit()];
            let mut pad = vec![f32::NAN; p.pad_len()];
            p.output_tiles(&mm, ms, t0, Some(&bias), &mut y, &mut pad)
                .unwrap();
            let at = Small::rm(at_bt(p.t).0, m, a);
            let mut want = Vec::new();
            for k in 0..g.cout {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let t = (oy / m) * g.tw + ox / m;
                        let e = |xa: usize, xb: usize| {
                            mm[(k * p.points() + xa * a + xb) * ms + t0 + t] as f64
                        };
                        let (v, s) = sandwich64(at.t().t(), &e, oy % m, ox % m);
                        want.push((v + bias[k] as f64, s + (bias[k] as f64).abs()));
                    }
                }
            }
            assert_near(&format!("{} output {:?}", p.t.name, g), &y, &want);
        }
    }

    #[test]
    fn c_filter_transforms_are_g_f_gt_and_gt_du_g() {
        for p in unit_plans() {
            let (a, r, cin, cout) = (p.t.alpha, p.t.r, p.geo.cin, p.geo.cout);
            let g = Small::rm(g_of(p.t), a, r);
            let e = CpuEngine::new(2).unwrap();
            // Forward filters, and the backward-data ones (rotated, input/output swapped).
            let w = values(cout * cin * r * r, 5);
            for flip in [false, true] {
                let mut u = vec![f32::NAN; p.filters_len()];
                // Filter (o, i) at w[o * o_stride + i * is]: [cout][cin] forward, [cin][cout]
                // for the rotated ones.
                let (o_stride, is) = if flip {
                    (r * r, cout * r * r)
                } else {
                    (cin * r * r, r * r)
                };
                let base = |_: usize, o: usize| o * o_stride;
                p.transform_filters(&e, &w, base, is, flip, &mut u).unwrap();
                let (mut got, mut want) = (Vec::new(), Vec::new());
                for o in 0..cout {
                    for i in 0..cin {
                        let f = |ka: usize, kb: usize| {
                            let tap = if flip {
                                (r - 1 - ka) * r + r - 1 - kb
                            } else {
                                ka * r + kb
                            };
                            w[base(0, o) + i * is + tap] as f64
                        };
                        for xi in 0..p.points() {
                            got.push(u[(o * p.points() + xi) * cin + i]);
                            want.push(sandwich64(g, &f, xi / a, xi % a));
                        }
                    }
                }
                assert_near(&format!("{} filters (flip {flip})", p.t.name), &got, &want);
            }
            let du = values(p.filters_len(), 6);
            let mut dw = vec![f32::NAN; cout * cin * r * r];
            p.weight_gradient(&e, &du, &mut dw).unwrap();
            let mut want = Vec::new();
            for k in 0..cout {
                for c in 0..cin {
                    let d = |x: usize, y: usize| du[(k * p.points() + x * a + y) * cin + c] as f64;
                    for tap in 0..r * r {
                        want.push(sandwich64(g.t(), &d, tap / r, tap % r));
                    }
                }
            }
            assert_near(&format!("{} weight gradient", p.t.name), &dw, &want);
        }
    }

    #[test]
    fn images_of_a_run_of_units() {
        let s = ConvShape {
            n: 5,
            c_in: 4,
            h: 6,
            w: 6,
            c_out: 4,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
            groups: 2,
        };
        let p = Plan::forward(&s).unwrap();
        // units 3..8 are (1,1) (2,0) (2,1) (3,0) (3,1)
        assert_eq!(p.images_of(&(3..8), 0), 2..4);
        assert_eq!(p.images_of(&(3..8), 1), 1..4);
        assert_eq!(p.images_of(&(0..1), 1), 0..0);
    }
}
