//! The oracle: a slow, readable f64 version of every layer a net table can hold, forward and backward, and a
//! finite-difference gradient checker ([`gradcheck`]) that proves each backward.
//!
//! Written to be read, not to be fast: one free function per layer pass, plain nested loops that
//! follow the formula, a one-line shape comment above each. The fast engines (`alexnet::engine`)
//! are tested against these functions, so this crate deliberately does not depend on `alexnet`:
//! a misunderstanding shared by both would otherwise cancel out.
//!
//! Conventions (the same as the engines'):
//! - tensors are flat, contiguous, NCHW (`x[((n*C + c)*H + h)*W + w]`);
//! - weights use PyTorch's layouts: convolution `[c_out, c_in/groups, kh, kw]`, fully connected
//!   `[d_out, d_in]`;
//! - backward functions return fresh gradients (nothing is accumulated into caller buffers).
//!
//! This crate is a test oracle, called only with shapes its caller built: a buffer whose length
//! does not match its shape is a bug in the calling test, and the functions stop with a panic
//! that names the layer and the argument instead of returning a result.

pub mod gradcheck;
pub mod large_batch;

// ----------------------------------------------------------------------------------------------
// small helpers
// ----------------------------------------------------------------------------------------------

/// Stops with a message naming the layer and the argument when a buffer has the wrong length.
fn expect_len(op: &str, arg: &str, got: usize, want: usize) {
    assert_eq!(
        got, want,
        "{op}: {arg} has {got} elements, the shape needs {want}"
    );
}

/// Flat index of `[n, c, h, w]` in a contiguous NCHW tensor with `cs` channels of `hs x ws`.
fn at(cs: usize, hs: usize, ws: usize, n: usize, c: usize, h: usize, w: usize) -> usize {
    ((n * cs + c) * hs + h) * ws + w
}

/// Maps a coordinate of the zero-padded input back to the unpadded one: `None` inside the padding.
fn unpad(i: usize, pad: usize, len: usize) -> Option<usize> {
    i.checked_sub(pad).filter(|&v| v < len)
}

// ----------------------------------------------------------------------------------------------
// convolution
// ----------------------------------------------------------------------------------------------

/// Convolution geometry: input `[n, c_in, h, w]`, `c_out` filters of `kh x kw`, zero padding
/// `pad` on every side, stride `stride`; channels split into `groups` equal parts, group g's
/// outputs reading only group g's inputs (the paper's two-GPU columns).
#[derive(Clone, Copy, Debug)]
pub struct Conv2d {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl Conv2d {
    /// `floor((h + 2*pad - kh) / stride) + 1`: windows that would run past the padded edge are
    /// dropped (227 -> 55 for conv1 with k = 11, s = 4).
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    /// `floor((w + 2*pad - kw) / stride) + 1`.
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }

    fn check(&self, op: &str) {
        assert!(
            self.groups > 0
                && self.stride > 0
                && self.c_in.is_multiple_of(self.groups)
                && self.c_out.is_multiple_of(self.groups)
                && self.h + 2 * self.pad >= self.kh
                && self.w + 2 * self.pad >= self.kw,
            "{op}: invalid geometry {self:?}"
        );
    }
}

// y[N,Cout,Ho,Wo] = b[Cout] + sum_{ci in group, ky, kx} w[Cout,Cin/g,kh,kw] * x_padded[N,Cin,H,W]
pub fn conv2d_forward(s: &Conv2d, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    s.check("conv2d_forward");
    let (ho, wo) = (s.h_out(), s.w_out());
    let cin_g = s.c_in / s.groups;
    let cout_g = s.c_out / s.groups;
    expect_len("conv2d_forward", "x", x.len(), s.n * s.c_in * s.h * s.w);
    expect_len(
        "conv2d_forward",
        "w",
        w.len(),
        s.c_out * cin_g * s.kh * s.kw,
    );
    expect_len("conv2d_forward", "b", b.len(), s.c_out);

    let mut y = vec![0.0; s.n * s.c_out * ho * wo];
    for n in 0..s.n {
        for co in 0..s.c_out {
            let g = co / cout_g; // the group (column) this filter belongs to
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b[co];
                    for ci in 0..cin_g {
                        let c = g * cin_g + ci; // the input channel, inside group g
                        for ky in 0..s.kh {
                            let Some(iy) = unpad(oy * s.stride + ky, s.pad, s.h) else {
                                continue; // zero padding contributes nothing
                            };
                            for kx in 0..s.kw {
                                let Some(ix) = unpad(ox * s.stride + kx, s.pad, s.w) else {
                                    continue;
                                };
                                acc += w[at(cin_g, s.kh, s.kw, co, ci, ky, kx)]
                                    * x[at(s.c_in, s.h, s.w, n, c, iy, ix)];
                            }
                        }
                    }
                    y[at(s.c_out, ho, wo, n, co, oy, ox)] = acc;
                }
            }
        }
    }
    y
}

// dx[N,Cin,H,W], dw[Cout,Cin/g,kh,kw], db[Cout] from x[N,Cin,H,W], w and dy[N,Cout,Ho,Wo]:
// the forward's loops again, each multiply-add `y += w*x` sending dy back to both factors.
pub fn conv2d_backward(
    s: &Conv2d,
    x: &[f64],
    w: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    s.check("conv2d_backward");
    let (ho, wo) = (s.h_out(), s.w_out());
    let cin_g = s.c_in / s.groups;
    let cout_g = s.c_out / s.groups;
    expect_len("conv2d_backward", "x", x.len(), s.n * s.c_in * s.h * s.w);
    expect_len(
        "conv2d_backward",
        "w",
        w.len(),
        s.c_out * cin_g * s.kh * s.kw,
    );
    expect_len("conv2d_backward", "dy", dy.len(), s.n * s.c_out * ho * wo);

    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; s.c_out];
    for n in 0..s.n {
        for co in 0..s.c_out {
            let g = co / cout_g;
            for oy in 0..ho {
                for ox in 0..wo {
                    let d = dy[at(s.c_out, ho, wo, n, co, oy, ox)];
                    db[co] += d;
                    for ci in 0..cin_g {
                        let c = g * cin_g + ci;
                        for ky in 0..s.kh {
                            let Some(iy) = unpad(oy * s.stride + ky, s.pad, s.h) else {
                                continue;
                            };
                            for kx in 0..s.kw {
                                let Some(ix) = unpad(ox * s.stride + kx, s.pad, s.w) else {
                                    continue;
                                };
                                let xi = at(s.c_in, s.h, s.w, n, c, iy, ix);
                                let wi = at(cin_g, s.kh, s.kw, co, ci, ky, kx);
                                dx[xi] += w[wi] * d;
                                dw[wi] += x[xi] * d;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

// ----------------------------------------------------------------------------------------------
// pointwise nonlinearities
// ----------------------------------------------------------------------------------------------

// y[*] = max(x[*], 0)
pub fn relu_forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v.max(0.0)).collect()
}

// dx[*] = dy[*] * (x[*] > 0); the kink at 0 takes the left derivative, 0
pub fn relu_backward(x: &[f64], dy: &[f64]) -> Vec<f64> {
    expect_len("relu_backward", "dy", dy.len(), x.len());
    x.iter()
        .zip(dy)
        .map(|(&v, &d)| if v > 0.0 { d } else { 0.0 })
        .collect()
}

// y[*] = tanh(x[*])
pub fn tanh_forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v.tanh()).collect()
}

// dx[*] = dy[*] * (1 - y[*]^2), y being the forward's output (tanh' = 1 - tanh^2)
pub fn tanh_backward(y: &[f64], dy: &[f64]) -> Vec<f64> {
    expect_len("tanh_backward", "dy", dy.len(), y.len());
    y.iter().zip(dy).map(|(&t, &d)| d * (1.0 - t * t)).collect()
}

// ----------------------------------------------------------------------------------------------
// local response normalisation (Section 3.3)
// ----------------------------------------------------------------------------------------------

/// LRN across channels on a `[n, c, h, w]` tensor:
/// `b_i = a_i / (k + alpha' * sum_{j in W(i)} a_j^2)^beta`, with `alpha' = alpha` (the paper) or
/// `alpha / size` (`alpha_over_n`: Caffe, cuda-convnet, PyTorch). The `c` channels form `groups`
/// equal columns and the window `W(i) = [max(lo, i - size/2), min(hi, i + size/2)]` is clamped to
/// the column `[lo, hi]` holding channel i. The paper: size 5, alpha 1e-4, beta 0.75, k 2.
#[derive(Clone, Copy, Debug)]
pub struct Lrn {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub groups: usize,
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
    pub alpha_over_n: bool,
}

impl Lrn {
    /// The coefficient of the sum of squares, `alpha'`.
    pub fn effective_alpha(&self) -> f64 {
        if self.alpha_over_n {
            self.alpha / self.size as f64
        } else {
            self.alpha
        }
    }

    /// The channels `[first, last]` (inclusive) in the window of channel `i`.
    pub fn window(&self, i: usize) -> (usize, usize) {
        let per_col = self.c / self.groups;
        let lo = (i / per_col) * per_col;
        let hi = lo + per_col - 1;
        (
            lo.max(i.saturating_sub(self.size / 2)),
            hi.min(i + self.size / 2),
        )
    }

    fn check(&self, op: &str, x_len: usize) {
        assert!(
            self.groups > 0 && self.c.is_multiple_of(self.groups) && self.size > 0,
            "{op}: invalid geometry {self:?}"
        );
        expect_len(op, "x", x_len, self.n * self.c * self.h * self.w);
    }

    /// `S_i = k + alpha' * sum_{j in W(i)} a_j^2` at image n, channel i, pixel (y, x).
    fn scale(&self, a: &[f64], n: usize, i: usize, y: usize, x: usize) -> f64 {
        let (j0, j1) = self.window(i);
        let mut sum = 0.0;
        for j in j0..=j1 {
            let v = a[at(self.c, self.h, self.w, n, j, y, x)];
            sum += v * v;
        }
        self.k + self.effective_alpha() * sum
    }
}

// b[N,C,H,W] = a / (k + alpha' * sum_{window over C} a^2)^beta
pub fn lrn_forward(s: &Lrn, x: &[f64]) -> Vec<f64> {
    s.check("lrn_forward", x.len());
    let mut y = vec![0.0; x.len()];
    for n in 0..s.n {
        for i in 0..s.c {
            for py in 0..s.h {
                for px in 0..s.w {
                    let idx = at(s.c, s.h, s.w, n, i, py, px);
                    y[idx] = x[idx] / s.scale(x, n, i, py, px).powf(s.beta);
                }
            }
        }
    }
    y
}

// da[N,C,H,W] from a[N,C,H,W] and db[N,C,H,W].
// With S_i = k + alpha' * sum_{j in W(i)} a_j^2 and b_i = a_i * S_i^-beta:
//   d b_i / d a_j = [i == j] * S_i^-beta  -  2 alpha' beta a_i a_j S_i^(-beta-1) * [j in W(i)]
// (the second term also holds for j == i, since i is always in its own window), so
//   da_j = db_j S_j^-beta  -  2 alpha' beta a_j * sum_{i : j in W(i)} db_i a_i S_i^(-beta-1).
// The loop below walks every output i and scatters its two terms, so the sum over i needs no
// argument about which windows contain j.
pub fn lrn_backward(s: &Lrn, x: &[f64], dy: &[f64]) -> Vec<f64> {
    s.check("lrn_backward", x.len());
    expect_len("lrn_backward", "dy", dy.len(), x.len());
    let alpha = s.effective_alpha();
    let mut dx = vec![0.0; x.len()];
    for n in 0..s.n {
        for i in 0..s.c {
            for py in 0..s.h {
                for px in 0..s.w {
                    let ii = at(s.c, s.h, s.w, n, i, py, px);
                    let scale = s.scale(x, n, i, py, px);
                    // the direct term, j == i
                    dx[ii] += dy[ii] * scale.powf(-s.beta);
                    // the term through S_i, every j in W(i) (i included)
                    let common = -2.0 * alpha * s.beta * dy[ii] * x[ii] * scale.powf(-s.beta - 1.0);
                    let (j0, j1) = s.window(i);
                    for j in j0..=j1 {
                        let jj = at(s.c, s.h, s.w, n, j, py, px);
                        dx[jj] += common * x[jj];
                    }
                }
            }
        }
    }
    dx
}

// ----------------------------------------------------------------------------------------------
// max pooling
// ----------------------------------------------------------------------------------------------

/// Max pooling of `[n, c, h, w]` with a `size x size` window moved by `stride`, no padding.
/// Output `floor((h - size) / stride) + 1`: a last partial window is dropped, as in Caffe with no
/// padding (55 -> 27, 27 -> 13, 13 -> 6 for AlexNet's overlapping 3/2 pools).
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub size: usize,
    pub stride: usize,
}

impl Pool {
    pub fn h_out(&self) -> usize {
        (self.h - self.size) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w - self.size) / self.stride + 1
    }

    fn check(&self, op: &str, x_len: usize) {
        assert!(
            self.size > 0 && self.stride > 0 && self.h >= self.size && self.w >= self.size,
            "{op}: invalid geometry {self:?}"
        );
        expect_len(op, "x", x_len, self.n * self.c * self.h * self.w);
    }

    /// Flat index into x of the window's first maximum in row-major order (strict `>`, so a later
    /// equal value never replaces an earlier one).
    pub fn argmax(&self, x: &[f64], n: usize, c: usize, oy: usize, ox: usize) -> usize {
        let mut best = at(
            self.c,
            self.h,
            self.w,
            n,
            c,
            oy * self.stride,
            ox * self.stride,
        );
        for ky in 0..self.size {
            for kx in 0..self.size {
                let i = at(
                    self.c,
                    self.h,
                    self.w,
                    n,
                    c,
                    oy * self.stride + ky,
                    ox * self.stride + kx,
                );
                if x[i] > x[best] {
                    best = i;
                }
            }
        }
        best
    }
}

// y[N,C,Ho,Wo] = max over each size x size window of x[N,C,H,W]
pub fn maxpool_forward(s: &Pool, x: &[f64]) -> Vec<f64> {
    s.check("maxpool_forward", x.len());
    let (ho, wo) = (s.h_out(), s.w_out());
    let mut y = vec![0.0; s.n * s.c * ho * wo];
    for n in 0..s.n {
        for c in 0..s.c {
            for oy in 0..ho {
                for ox in 0..wo {
                    y[at(s.c, ho, wo, n, c, oy, ox)] = x[s.argmax(x, n, c, oy, ox)];
                }
            }
        }
    }
    y
}

// dx[N,C,H,W]: each dy[N,C,Ho,Wo] goes whole to its window's first maximum; overlapping windows
// (stride < size) may send several dy to one x, which add up
pub fn maxpool_backward(s: &Pool, x: &[f64], dy: &[f64]) -> Vec<f64> {
    s.check("maxpool_backward", x.len());
    let (ho, wo) = (s.h_out(), s.w_out());
    expect_len("maxpool_backward", "dy", dy.len(), s.n * s.c * ho * wo);
    let mut dx = vec![0.0; x.len()];
    for n in 0..s.n {
        for c in 0..s.c {
            for oy in 0..ho {
                for ox in 0..wo {
                    dx[s.argmax(x, n, c, oy, ox)] += dy[at(s.c, ho, wo, n, c, oy, ox)];
                }
            }
        }
    }
    dx
}

// ----------------------------------------------------------------------------------------------
// average pooling (the same windows as max pooling: `Pool`'s geometry and output size)
// ----------------------------------------------------------------------------------------------

// y[N,C,Ho,Wo] = (1 / size^2) * sum over each size x size window of x[N,C,H,W]
pub fn avgpool_forward(s: &Pool, x: &[f64]) -> Vec<f64> {
    s.check("avgpool_forward", x.len());
    let (ho, wo) = (s.h_out(), s.w_out());
    let area = (s.size * s.size) as f64;
    let mut y = vec![0.0; s.n * s.c * ho * wo];
    for n in 0..s.n {
        for c in 0..s.c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut sum = 0.0;
                    for ky in 0..s.size {
                        for kx in 0..s.size {
                            let (iy, ix) = (oy * s.stride + ky, ox * s.stride + kx);
                            sum += x[at(s.c, s.h, s.w, n, c, iy, ix)];
                        }
                    }
                    y[at(s.c, ho, wo, n, c, oy, ox)] = sum / area;
                }
            }
        }
    }
    y
}

// dx[N,C,H,W]: each dy[N,C,Ho,Wo] spread evenly, dy / size^2, over its window; overlapping
// windows (stride < size) add up
pub fn avgpool_backward(s: &Pool, x_len: usize, dy: &[f64]) -> Vec<f64> {
    s.check("avgpool_backward", x_len);
    let (ho, wo) = (s.h_out(), s.w_out());
    expect_len("avgpool_backward", "dy", dy.len(), s.n * s.c * ho * wo);
    let area = (s.size * s.size) as f64;
    let mut dx = vec![0.0; x_len];
    for n in 0..s.n {
        for c in 0..s.c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let d = dy[at(s.c, ho, wo, n, c, oy, ox)] / area;
                    for ky in 0..s.size {
                        for kx in 0..s.size {
                            let (iy, ix) = (oy * s.stride + ky, ox * s.stride + kx);
                            dx[at(s.c, s.h, s.w, n, c, iy, ix)] += d;
                        }
                    }
                }
            }
        }
    }
    dx
}

// ----------------------------------------------------------------------------------------------
// fully connected
// ----------------------------------------------------------------------------------------------

/// Fully connected layer: `n` rows of `d_in` features to `d_out` features.
#[derive(Clone, Copy, Debug)]
pub struct Fc {
    pub n: usize,
    pub d_in: usize,
    pub d_out: usize,
}

// y[N,out] = b[out] + sum_in x[N,in] * w[out,in]
pub fn fc_forward(s: &Fc, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    expect_len("fc_forward", "x", x.len(), s.n * s.d_in);
    expect_len("fc_forward", "w", w.len(), s.d_out * s.d_in);
    expect_len("fc_forward", "b", b.len(), s.d_out);
    let mut y = vec![0.0; s.n * s.d_out];
    for n in 0..s.n {
        for o in 0..s.d_out {
            let mut acc = b[o];
            for i in 0..s.d_in {
                acc += x[n * s.d_in + i] * w[o * s.d_in + i];
            }
            y[n * s.d_out + o] = acc;
        }
    }
    y
}

// dx[N,in] = dy[N,out] w[out,in]; dw[out,in] = dy^T x; db[out] = sum_N dy
pub fn fc_backward(s: &Fc, x: &[f64], w: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    expect_len("fc_backward", "x", x.len(), s.n * s.d_in);
    expect_len("fc_backward", "w", w.len(), s.d_out * s.d_in);
    expect_len("fc_backward", "dy", dy.len(), s.n * s.d_out);
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; s.d_out];
    for n in 0..s.n {
        for o in 0..s.d_out {
            let d = dy[n * s.d_out + o];
            db[o] += d;
            for i in 0..s.d_in {
                dx[n * s.d_in + i] += d * w[o * s.d_in + i];
                dw[o * s.d_in + i] += d * x[n * s.d_in + i];
            }
        }
    }
    (dx, dw, db)
}

// ----------------------------------------------------------------------------------------------
// dropout (the mask is an explicit argument, so every evaluation sees the same one)
// ----------------------------------------------------------------------------------------------

// y[*] = keep[*] ? x[*] * keep_scale : 0
pub fn dropout_forward(x: &[f64], keep: &[bool], keep_scale: f64) -> Vec<f64> {
    expect_len("dropout_forward", "keep", keep.len(), x.len());
    x.iter()
        .zip(keep)
        .map(|(&v, &k)| if k { v * keep_scale } else { 0.0 })
        .collect()
}

// dx[*] = keep[*] ? dy[*] * keep_scale : 0 (the layer is linear in x)
pub fn dropout_backward(dy: &[f64], keep: &[bool], keep_scale: f64) -> Vec<f64> {
    dropout_forward(dy, keep, keep_scale)
}

// ----------------------------------------------------------------------------------------------
// softmax and cross-entropy loss
// ----------------------------------------------------------------------------------------------

// p[N,K] = exp(z - max_K z) / sum_K exp(z - max_K z): subtracting the row maximum keeps every
// exponent <= 0, so nothing overflows and the largest term is exactly 1
pub fn softmax(n: usize, classes: usize, logits: &[f64]) -> Vec<f64> {
    expect_len("softmax", "logits", logits.len(), n * classes);
    let mut p = vec![0.0; logits.len()];
    for r in 0..n {
        let row = &logits[r * classes..(r + 1) * classes];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for k in 0..classes {
            let e = (row[k] - max).exp();
            p[r * classes + k] = e;
            sum += e;
        }
        for k in 0..classes {
            p[r * classes + k] /= sum;
        }
    }
    p
}

// loss = mean_N -ln p[N, label]; p[N,K] = softmax(z[N,K]). The log-probability is taken as
// (z_label - max) - ln(sum exp(z - max)) rather than ln(p), which would be ln(0) = -inf when p
// underflows.
pub fn softmax_xent_forward(
    n: usize,
    classes: usize,
    logits: &[f64],
    labels: &[usize],
) -> (f64, Vec<f64>) {
    expect_len("softmax_xent_forward", "labels", labels.len(), n);
    let probs = softmax(n, classes, logits);
    let mut total = 0.0;
    for r in 0..n {
        assert!(
            labels[r] < classes,
            "softmax_xent_forward: label {} of row {r} is not below {classes}",
            labels[r]
        );
        let row = &logits[r * classes..(r + 1) * classes];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_sum: f64 = row.iter().map(|&z| (z - max).exp()).sum::<f64>().ln();
        total -= (row[labels[r]] - max) - log_sum;
    }
    (total / n as f64, probs)
}

// dz[N,K] = (p[N,K] - onehot(labels)[N,K]) / N, the 1/N from averaging the loss over the batch
pub fn softmax_xent_backward(
    n: usize,
    classes: usize,
    probs: &[f64],
    labels: &[usize],
) -> Vec<f64> {
    expect_len("softmax_xent_backward", "probs", probs.len(), n * classes);
    expect_len("softmax_xent_backward", "labels", labels.len(), n);
    let mut dz = vec![0.0; probs.len()];
    for r in 0..n {
        for k in 0..classes {
            let onehot = if k == labels[r] { 1.0 } else { 0.0 };
            dz[r * classes + k] = (probs[r * classes + k] - onehot) / n as f64;
        }
    }
    dz
}

// ----------------------------------------------------------------------------------------------
// optimiser (Section 5)
// ----------------------------------------------------------------------------------------------

// v[*] = momentum * v - weight_decay * lr * w - lr * dw ;  w[*] = w + v
pub fn sgd_update(
    w: &mut [f64],
    dw: &[f64],
    v: &mut [f64],
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) {
    expect_len("sgd_update", "dw", dw.len(), w.len());
    expect_len("sgd_update", "v", v.len(), w.len());
    for i in 0..w.len() {
        v[i] = momentum * v[i] - weight_decay * lr * w[i] - lr * dw[i];
        w[i] += v[i];
    }
}

// ----------------------------------------------------------------------------------------------
// test inputs
// ----------------------------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea & Flood, 2014): a tiny seeded generator for reproducible test inputs.
/// Kept here (not `alexnet::rng`) so the oracle depends on nothing.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform magnitude in [0.1, 1) with a random sign: never zero and never near one of the
    /// kinks at 0, so a test input is never degenerate by accident.
    pub fn nonzero(&mut self) -> f64 {
        let magnitude = 0.1 + 0.9 * self.uniform();
        if self.next_u64() & 1 == 0 {
            magnitude
        } else {
            -magnitude
        }
    }

    /// `len` values from [`SplitMix64::nonzero`].
    pub fn vec(&mut self, len: usize) -> Vec<f64> {
        (0..len).map(|_| self.nonzero()).collect()
    }

    /// `true` with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_published_sequence() {
        // The reference C implementation (Vigna's splitmix64.c) with state 0 first returns
        // 0xe220a8397b1dcdaf; any change to the constants or shifts changes it.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn nonzero_values_stay_in_their_band() {
        let mut r = SplitMix64::new(7);
        let v = r.vec(10_000);
        assert!(v.iter().all(|x| (0.1..1.0).contains(&x.abs())));
        // both signs occur: 10 000 fair coin flips all equal has probability 2^-9999
        assert!(v.iter().any(|&x| x > 0.0) && v.iter().any(|&x| x < 0.0));
    }

    #[test]
    fn lrn_window_is_clamped_to_its_column() {
        let s = Lrn {
            n: 1,
            c: 8,
            h: 1,
            w: 1,
            groups: 2,
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            k: 2.0,
            alpha_over_n: false,
        };
        assert_eq!(s.window(0), (0, 2));
        assert_eq!(s.window(2), (0, 3));
        assert_eq!(s.window(3), (1, 3)); // column 0 is channels 0..=3
        assert_eq!(s.window(4), (4, 6)); // column 1 starts fresh at 4
        assert_eq!(s.window(7), (5, 7));
    }
}
