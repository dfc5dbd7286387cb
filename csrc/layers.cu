// Bias, fully connected (cuBLAS), LRN, max and average pooling, softmax / cross-entropy, label
// rank (top-k).
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// bias

// y[n, c, p] += b[c]
template <typename I>
__global__ void add_bias_kernel(float *y, const float *b, I total, I c, I p) {
    GRID_STRIDE_T(I, i, total) y[i] += b[(i / p) % c];
}

// db[c] = sum_{n,p} dy[n, c, p]: one block per channel, a fixed summation order (deterministic).
template <typename I>
__global__ void bias_grad_kernel(const float *dy, float *db, I n, I c, I p) {
    __shared__ float shared[ANC_THREADS];
    I ch = blockIdx.x;
    if (ch >= c) return;  // whole block leaves together: no __syncthreads is skipped by half
    float acc = 0.0f;
    I count = n * p;
    for (I t = threadIdx.x; t < count; t += ANC_THREADS) {
        I img = t / p, pos = t - img * p;
        acc += dy[(img * c + ch) * p + pos];
    }
    float total = anc_block_sum(acc, shared);
    if (threadIdx.x == 0) db[ch] = total;
}

anc_status anc_add_bias(anc_ctx *ctx, float *y, const float *b, size_t n, size_t c, size_t p) {
    size_t total = n * c * p;
    if (total == 0) return anc_ok();
    LAUNCH_INDEXED(add_bias_kernel, total, anc_blocks(total), y, b, total, c, p);
    LAUNCH_CHECK("add_bias");
    return anc_ok();
}

anc_status anc_bias_grad(anc_ctx *ctx, const float *dy, float *db, size_t n, size_t c, size_t p) {
    if (c == 0) return anc_ok();
    LAUNCH_INDEXED(bias_grad_kernel, n * c * p, (unsigned)c, dy, db, n, c, p);
    LAUNCH_CHECK("bias_grad");
    return anc_ok();
}

// ---------------------------------------------------------------------------------------------
// fully connected. cuBLAS is column-major: a row-major [r, c] matrix is a column-major [c, r] one.

// cuBLAS wants leading dimensions >= 1 even when a matrix is empty.
static inline int ld(int64_t x) { return x > 0 ? (int)x : 1; }

// y[N,out] = x[N,in] w[out,in]^T + b[out]  (column-major: y^T[out,N] = op_T(w) x^T)
extern "C" anc_status anc_fc_forward(anc_ctx *ctx, int64_t n, int64_t d_in, int64_t d_out,
                                     const float *x, const float *w, const float *b, float *y) {
    if (n == 0 || d_out == 0) return anc_ok();
    ENTER(ctx);
    const float zero = 0.0f;
    TRY_STATUS(anc_gemm(ctx, "gemm(fc_forward)",
                        {false, CUBLAS_OP_T, CUBLAS_OP_N, (int)d_out, (int)n, (int)d_in, w,
                         ld(d_in), 0, x, ld(d_in), 0, &zero, y, ld(d_out), 0, 1}));
    return anc_add_bias(ctx, y, b, (size_t)n, (size_t)d_out, 1);
}

// dx[N,in] = dy[N,out] w[out,in]; dw[out,in] = dy^T x; db[out] = sum_n dy
extern "C" anc_status anc_fc_backward(anc_ctx *ctx, int64_t n, int64_t d_in, int64_t d_out,
                                      const float *x, const float *w, const float *dy, float *dx,
                                      float *dw, float *db) {
    ENTER(ctx);
    const float zero = 0.0f;
    if (dx && n > 0 && d_in > 0) {
        TRY_STATUS(anc_gemm(ctx, "gemm(fc_backward dx)",
                            {false, CUBLAS_OP_N, CUBLAS_OP_N, (int)d_in, (int)n, (int)d_out, w,
                             ld(d_in), 0, dy, ld(d_out), 0, &zero, dx, ld(d_in), 0, 1}));
    }
    if (d_in > 0 && d_out > 0) {
        TRY_STATUS(anc_gemm(ctx, "gemm(fc_backward dw)",
                            {false, CUBLAS_OP_N, CUBLAS_OP_T, (int)d_in, (int)d_out, (int)n, x,
                             ld(d_in), 0, dy, ld(d_out), 0, &zero, dw, ld(d_in), 0, 1}));
    }
    return anc_bias_grad(ctx, dy, db, (size_t)n, (size_t)d_out, 1);
}

// ---------------------------------------------------------------------------------------------
// LRN across channels. The window of channel c is [c - size/2, c + size/2] clamped to c's column
// (group) of c/groups channels. The window relation is symmetric, which backward relies on.

__device__ inline void lrn_window(int c, int channels, int groups, int size, int *lo, int *hi) {
    int cg = channels / groups;
    int g0 = (c / cg) * cg;
    int a = c - size / 2, b = c + size / 2;
    *lo = a < g0 ? g0 : a;
    *hi = b > g0 + cg - 1 ? g0 + cg - 1 : b;
}

// Element i of [N, C, HW]: its image, channel and pixel.
template <typename I>
__device__ inline void lrn_coords(I i, int c, I hw, I *img, int *ch, I *s) {
    *s = i % hw;
    I t = i / hw;
    *ch = (int)(t % c);
    *img = t / c;
}

// scale[N,C,H,W] = k + alpha * sum_window x^2 ; y = x * scale^-beta
template <typename I>
__global__ void lrn_forward_kernel(I total, int c, I hw, int groups, int size, float alpha,
                                   float beta, float k, const float *x, float *y, float *scale) {
    GRID_STRIDE_T(I, i, total) {
        I img, s;
        int ch, lo, hi;
        lrn_coords(i, c, hw, &img, &ch, &s);
        lrn_window(ch, c, groups, size, &lo, &hi);
        float sum = 0.0f;
        for (int j = lo; j <= hi; ++j) {
            float v = x[(img * c + j) * hw + s];
            sum += v * v;
        }
        float sc = k + alpha * sum;
        scale[i] = sc;
        y[i] = x[i] * powf(sc, -beta);
    }
}

// dx_i = dy_i scale_i^-beta - 2 alpha beta x_i sum_{j: i in window(j)} dy_j y_j / scale_j
template <typename I>
__global__ void lrn_backward_kernel(I total, int c, I hw, int groups, int size, float alpha,
                                    float beta, const float *x, const float *y,
                                    const float *scale, const float *dy, float *dx) {
    GRID_STRIDE_T(I, i, total) {
        I img, s;
        int ch, lo, hi;
        lrn_coords(i, c, hw, &img, &ch, &s);
        lrn_window(ch, c, groups, size, &lo, &hi);
        float acc = 0.0f;
        for (int j = lo; j <= hi; ++j) {
            I o = (img * c + j) * hw + s;
            acc += dy[o] * y[o] / scale[o];
        }
        dx[i] = dy[i] * powf(scale[i], -beta) - 2.0f * alpha * beta * x[i] * acc;
    }
}

// The same LRN with one thread per pixel (image, position) walking the channels of each group
// with a running window sum: each value enters the window once from DRAM (and is read again, from
// cache, when it leaves and as the centre) instead of being summed into `size` windows. The sum
// runs in double: a running f32 sum that subtracts what leaves would keep the rounding of every
// large square it ever held. Threads of a warp take consecutive positions: coalesced.
// src/engine/cuda_mirror.rs mirrors this loop on the CPU (tests/cuda_mirror.rs).
template <typename I>
__global__ void lrn_forward_by_pixel_kernel(I pixels, int c, I hw, int groups, int size,
                                            float alpha, float beta, float k, const float *x,
                                            float *y, float *scale) {
    GRID_STRIDE_T(I, t, pixels) {
        I base = (t / hw) * (I)c * hw + t % hw;
        int cg = c / groups, half = size / 2;
        for (int g0 = 0; g0 < c; g0 += cg) {
            int g1 = g0 + cg;
            double sum = 0.0;
            for (int j = g0; j < g1 && j < g0 + half; ++j) {
                float v = x[base + (I)j * hw];
                sum += (double)(v * v);
            }
            for (int ch = g0; ch < g1; ++ch) {
                int enter = ch + half, leave = ch - half - 1;
                if (enter < g1) {
                    float v = x[base + (I)enter * hw];
                    sum += (double)(v * v);
                }
                if (leave >= g0) {
                    float v = x[base + (I)leave * hw];
                    sum -= (double)(v * v);
                }
                I i = base + (I)ch * hw;
                float sc = k + alpha * (float)sum;
                scale[i] = sc;
                y[i] = x[i] * powf(sc, -beta);
            }
        }
    }
}
// Backward by pixel: the running window sum of dy*y/scale (the window of channel j holds ch iff
// ch's holds j, so the same window walks both).
template <typename I>
__global__ void lrn_backward_by_pixel_kernel(I pixels, int c, I hw, int groups, int size,
                                             float alpha, float beta, const float *x,
                                             const float *y, const float *scale, const float *dy,
                                             float *dx) {
    GRID_STRIDE_T(I, t, pixels) {
        I base = (t / hw) * (I)c * hw + t % hw;
        int cg = c / groups, half = size / 2;
        for (int g0 = 0; g0 < c; g0 += cg) {
            int g1 = g0 + cg;
            double acc = 0.0;
            for (int j = g0; j < g1 && j < g0 + half; ++j) {
                I o = base + (I)j * hw;
                acc += (double)(dy[o] * y[o] / scale[o]);
            }
            for (int ch = g0; ch < g1; ++ch) {
                int enter = ch + half, leave = ch - half - 1;
                if (enter < g1) {
                    I o = base + (I)enter * hw;
                    acc += (double)(dy[o] * y[o] / scale[o]);
                }
                if (leave >= g0) {
                    I o = base + (I)leave * hw;
                    acc -= (double)(dy[o] * y[o] / scale[o]);
                }
                I i = base + (I)ch * hw;
                dx[i] = dy[i] * powf(scale[i], -beta) - 2.0f * alpha * beta * x[i] * (float)acc;
            }
        }
    }
}
extern "C" anc_status anc_lrn_forward_by_pixel(anc_ctx *ctx, int64_t n, int64_t c, int64_t hw,
                                               int64_t groups, int64_t size, float alpha,
                                               float beta, float k, const float *x, float *y,
                                               float *scale) {
    size_t total = (size_t)(n * c * hw), pixels = (size_t)(n * hw);
    if (total == 0) return anc_ok();
    ENTER(ctx);
    LAUNCH_INDEXED(lrn_forward_by_pixel_kernel, total, anc_blocks(pixels), pixels, (int)c, hw,
                   (int)groups, (int)size, alpha, beta, k, x, y, scale);
    LAUNCH_CHECK("lrn_forward_by_pixel");
    return anc_ok();
}
extern "C" anc_status anc_lrn_backward_by_pixel(anc_ctx *ctx, int64_t n, int64_t c, int64_t hw,
                                                int64_t groups, int64_t size, float alpha,
                                                float beta, const float *x, const float *y,
                                                const float *scale, const float *dy, float *dx) {
    size_t total = (size_t)(n * c * hw), pixels = (size_t)(n * hw);
    if (total == 0) return anc_ok();
    ENTER(ctx);
    LAUNCH_INDEXED(lrn_backward_by_pixel_kernel, total, anc_blocks(pixels), pixels, (int)c, hw,
                   (int)groups, (int)size, alpha, beta, x, y, scale, dy, dx);
    LAUNCH_CHECK("lrn_backward_by_pixel");
    return anc_ok();
}
extern "C" anc_status anc_lrn_forward(anc_ctx *ctx, int64_t n, int64_t c, int64_t hw,
                                      int64_t groups, int64_t size, float alpha, float beta,
                                      float k, const float *x, float *y, float *scale) {
    size_t total = (size_t)(n * c * hw);
    if (total == 0) return anc_ok();
    ENTER(ctx);
    LAUNCH_INDEXED(lrn_forward_kernel, total, anc_blocks(total), total, (int)c, hw, (int)groups,
                   (int)size, alpha, beta, k, x, y, scale);
    LAUNCH_CHECK("lrn_forward");
    return anc_ok();
}

extern "C" anc_status anc_lrn_backward(anc_ctx *ctx, int64_t n, int64_t c, int64_t hw,
                                       int64_t groups, int64_t size, float alpha, float beta,
                                       const float *x, const float *y, const float *scale,
                                       const float *dy, float *dx) {
    size_t total = (size_t)(n * c * hw);
    if (total == 0) return anc_ok();
    ENTER(ctx);
    LAUNCH_INDEXED(lrn_backward_kernel, total, anc_blocks(total), total, (int)c, hw, (int)groups,
                   (int)size, alpha, beta, x, y, scale, dy, dx);
    LAUNCH_CHECK("lrn_backward");
    return anc_ok();
}

// ---------------------------------------------------------------------------------------------
// overlapping max pooling, no padding

// For each output window: the offset a*size + b of its first maximum in row-major order (strict >,
// so the first of equal values wins), and its value when y is not NULL. The forward writes y;
// the backward recomputes the offsets into scratch (cheaper than keeping them from the forward).
template <typename I>
__global__ void maxpool_window_kernel(I total, int h, int w, int ho, int wo, int size,
                                      int stride, const float *x, float *y, int *first) {
    GRID_STRIDE_T(I, i, total) {
        int ow = (int)(i % wo);
        I t = i / wo;
        int oh = (int)(t % ho);
        I plane = t / ho;
        const float *base = x + (size_t)plane * h * w;
        int h0 = oh * stride, w0 = ow * stride;
        float m = base[h0 * w + w0];
        int best = 0;
        for (int a = 0; a < size; ++a)
            for (int b = 0; b < size; ++b) {
                float v = base[(h0 + a) * w + (w0 + b)];
                if (v > m) {
                    m = v;
                    best = a * size + b;
                }
            }
        if (y) y[i] = m;
        if (first) first[i] = best;
    }
}

// dx[NC,H,W]: gathers, for each input, the dy of every window whose first maximum it is (from
// first[], the offsets above). A gather (not a scatter with atomics) keeps the sums deterministic.
template <typename I>
__global__ void maxpool_backward_kernel(I total, int h, int w, int ho, int wo, int size,
                                        int stride, const int *first, const float *dy,
                                        float *dx) {
    GRID_STRIDE_T(I, i, total) {
        int col = (int)(i % w);
        I t = i / w;
        int row = (int)(t % h);
        I plane = t / h;
        // Windows oh with oh*stride <= row <= oh*stride + size - 1.
        int oh_lo = row < size ? 0 : (row - size) / stride + 1;
        int oh_hi = row / stride < ho - 1 ? row / stride : ho - 1;
        int ow_lo = col < size ? 0 : (col - size) / stride + 1;
        int ow_hi = col / stride < wo - 1 ? col / stride : wo - 1;
        float acc = 0.0f;
        for (int oh = oh_lo; oh <= oh_hi; ++oh)
            for (int ow = ow_lo; ow <= ow_hi; ++ow) {
                I o = (plane * ho + oh) * wo + ow;
                if (first[o] == (row - oh * stride) * size + (col - ow * stride)) acc += dy[o];
            }
        dx[i] = acc;
    }
}

static anc_status maxpool_windows(anc_ctx *ctx, int64_t nc, int64_t h, int64_t w, int64_t size,
                                  int64_t stride, const float *x, float *y, int *first) {
    int64_t ho = (h - size) / stride + 1, wo = (w - size) / stride + 1;
    size_t total = (size_t)(nc * ho * wo);
    if (total == 0) return anc_ok();
    LAUNCH_INDEXED(maxpool_window_kernel, total, anc_blocks(total), total, (int)h, (int)w,
                   (int)ho, (int)wo, (int)size, (int)stride, x, y, first);
    LAUNCH_CHECK("maxpool_window");
    return anc_ok();
}

extern "C" anc_status anc_maxpool_forward(anc_ctx *ctx, int64_t nc, int64_t h, int64_t w,
                                          int64_t size, int64_t stride, const float *x, float *y) {
    ENTER(ctx);
    return maxpool_windows(ctx, nc, h, w, size, stride, x, y, NULL);
}

extern "C" anc_status anc_maxpool_backward(anc_ctx *ctx, int64_t nc, int64_t h, int64_t w,
                                           int64_t size, int64_t stride, const float *x,
                                           const float *dy, float *dx, int32_t *first) {
    int64_t ho = (h - size) / stride + 1, wo = (w - size) / stride + 1;
    size_t total = (size_t)(nc * h * w);
    if (total == 0) return anc_ok();
    ENTER(ctx);
    anc_status st = maxpool_windows(ctx, nc, h, w, size, stride, x, NULL, first);
    if (st.code != 0) return st;
    LAUNCH_INDEXED(maxpool_backward_kernel, total, anc_blocks(total), total, (int)h, (int)w,
                   (int)ho, (int)wo, (int)size, (int)stride, first, dy, dx);
    LAUNCH_CHECK("maxpool_backward");
    return anc_ok();
}

// ---------------------------------------------------------------------------------------------
// average pooling, no padding (the windows of max pooling)

// y[NC,Ho,Wo] = sum of each size x size window of x[NC,H,W], times 1/size^2
template <typename I>
__global__ void avgpool_forward_kernel(I total, int h, int w, int ho, int wo, int size,
                                       int stride, const float *x, float *y) {
    GRID_STRIDE_T(I, i, total) {
        int ow = (int)(i % wo);
        I t = i / wo;
        int oh = (int)(t % ho);
        I plane = t / ho;
        const float *base = x + (size_t)plane * h * w;
        int h0 = oh * stride, w0 = ow * stride;
        float sum = 0.0f;
        for (int a = 0; a < size; ++a)
            for (int b = 0; b < size; ++b) sum += base[(h0 + a) * w + (w0 + b)];
        y[i] = sum * (1.0f / (float)(size * size));
    }
}

// dx[NC,H,W]: gathers dy/size^2 from every window holding the input (as max pooling's backward
// finds them), so no atomics and a fixed summation order.
template <typename I>
__global__ void avgpool_backward_kernel(I total, int h, int w, int ho, int wo, int size,
                                        int stride, const float *dy, float *dx) {
    GRID_STRIDE_T(I, i, total) {
        int col = (int)(i % w);
        I t = i / w;
        int row = (int)(t % h);
        I plane = t / h;
        int oh_lo = row < size ? 0 : (row - size) / stride + 1;
        int oh_hi = row / stride < ho - 1 ? row / stride : ho - 1;
        int ow_lo = col < size ? 0 : (col - size) / stride + 1;
        int ow_hi = col / stride < wo - 1 ? col / stride : wo - 1;
        float acc = 0.0f;
        for (int oh = oh_lo; oh <= oh_hi; ++oh)
            for (int ow = ow_lo; ow <= ow_hi; ++ow) acc += dy[(plane * ho + oh) * wo + ow];
        dx[i] = acc * (1.0f / (float)(size * size));
    }
}

extern "C" anc_status anc_avgpool_forward(anc_ctx *ctx, int64_t nc, int64_t h, int64_t w,
                                          int64_t size, int64_t stride, const float *x, float *y) {
    int64_t ho = (h - size) / stride + 1, wo = (w - size) / stride + 1;
    size_t total = (size_t)(nc * ho * wo);
    if (total == 0) return anc_ok();
    ENTER(ctx);
    LAUNCH_INDEXED(avgpool_forward_kernel, total, anc_blocks(total), total, (int)h, (int)w,
                   (int)ho, (int)wo, (int)size, (int)stride, x, y);
    LAUNCH_CHECK("avgpool_forward");
    return anc_ok();
}

extern "C" anc_status anc_avgpool_backward(anc_ctx *ctx, int64_t nc, int64_t h, int64_t w,
                                           int64_t size, int64_t stride, const float *dy,
                                           float *dx) {
    int64_t ho = (h - size) / stride + 1, wo = (w - size) / stride + 1;
    size_t total = (size_t)(nc * h * w);
    if (total == 0) return anc_ok();
    ENTER(ctx);
    LAUNCH_INDEXED(avgpool_backward_kernel, total, anc_blocks(total), total, (int)h, (int)w,
                   (int)ho, (int)wo, (int)size, (int)stride, dy, dx);
    LAUNCH_CHECK("avgpool_backward");
    return anc_ok();
}

// ---------------------------------------------------------------------------------------------
// softmax, cross-entropy, label rank: one block per row

// probs[N,K] = softmax(logits); when labels != NULL also loss[n] = logsumexp - logit[label] (the
// same value as -ln probs[label], without the underflow) and dlogits = (probs - onehot) / N.
__global__ void softmax_kernel(int64_t n, int64_t classes, const float *logits,
                               const uint32_t *labels, float *probs, float *dlogits, float *loss) {
    __shared__ float shared[ANC_THREADS];
    int64_t row = blockIdx.x;
    if (row >= n) return;  // whole block leaves together
    const float *z = logits + row * classes;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < classes; j += ANC_THREADS) m = fmaxf(m, z[j]);
    m = anc_block_max(m, shared);
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < classes; j += ANC_THREADS) s += expf(z[j] - m);
    s = anc_block_sum(s, shared);
    float inv = 1.0f / s;
    float *p = probs + row * classes;
    for (int64_t j = threadIdx.x; j < classes; j += ANC_THREADS) p[j] = expf(z[j] - m) * inv;
    if (!labels) return;
    uint32_t label = labels[row];
    bool valid = (int64_t)label < classes;
    float inv_n = 1.0f / (float)n;
    float *d = dlogits + row * classes;
    for (int64_t j = threadIdx.x; j < classes; j += ANC_THREADS)
        d[j] = (p[j] - (j == (int64_t)label ? 1.0f : 0.0f)) * inv_n;
    if (threadIdx.x == 0) loss[row] = valid ? logf(s) - (z[label] - m) : NAN;
}

extern "C" anc_status anc_softmax(anc_ctx *ctx, int64_t n, int64_t classes, const float *logits,
                                  float *probs) {
    if (n == 0 || classes == 0) return anc_ok();
    ENTER(ctx);
    softmax_kernel<<<(unsigned)n, ANC_THREADS, 0, ctx->stream>>>(n, classes, logits, NULL, probs,
                                                                 NULL, NULL);
    LAUNCH_CHECK("softmax");
    return anc_ok();
}

extern "C" anc_status anc_softmax_xent(anc_ctx *ctx, int64_t n, int64_t classes,
                                       const float *logits, const uint32_t *labels, float *probs,
                                       float *dlogits, float *loss) {
    if (n == 0 || classes == 0) return anc_ok();
    ENTER(ctx);
    softmax_kernel<<<(unsigned)n, ANC_THREADS, 0, ctx->stream>>>(n, classes, logits, labels,
                                                                 probs, dlogits, loss);
    LAUNCH_CHECK("softmax_xent");
    return anc_ok();
}
