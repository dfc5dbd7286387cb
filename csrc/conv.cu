// Convolution as GEMMs (Caffe / cuda-convnet style), `chunk` images at a time so the GEMMs are big.
//
// Scratch layout for a chunk of B images, P = Ho*Wo output positions, K = Cin*kh*kw:
//   col[K][B][P]          im2col of the chunk (row k = (c*kh + i)*kw + j); group g owns rows
//                         g*Kg .. (g+1)*Kg with Kg = (Cin/G)*kh*kw, matching w[Cout, Cin/G, kh, kw]
//   yt[Cout][B][P]        (backward-weights, and forward / backward-data with `whole_chunk`) y or
//                         dy of the chunk with images moved inside channels
// With images inside each row, one image's block of col is a column-major [P, Kg] matrix with
// leading dimension B*P, so the forward and backward-data GEMMs of all B images are a single
// strided-batched call per group (B GEMMs of m = P), and backward-weights is one GEMM per group
// with k = B*P. With `whole_chunk`, forward and backward-data are one GEMM of m = B*P per group
// too: y and dy move between [B][C][P] and [C][B][P] in one kernel pass instead (the forward's
// bias added in that pass). src/engine/cuda_mirror.rs mirrors these index maps on the CPU.
#include "common.cuh"

struct ConvDims {
    int64_t n, cin, h, w, cout, kh, kw, stride, pad, groups;
    int64_t ho, wo, p, k, kg, coutg;
};

static ConvDims dims(const anc_conv *s) {
    ConvDims d;
    d.n = s->n;
    d.cin = s->c_in;
    d.h = s->h;
    d.w = s->w;
    d.cout = s->c_out;
    d.kh = s->kh;
    d.kw = s->kw;
    d.stride = s->stride;
    d.pad = s->pad;
    d.groups = s->groups;
    d.ho = (s->h + 2 * s->pad - s->kh) / s->stride + 1;
    d.wo = (s->w + 2 * s->pad - s->kw) / s->stride + 1;
    d.p = d.ho * d.wo;
    d.k = s->c_in * s->kh * s->kw;
    d.kg = d.k / s->groups;
    d.coutg = s->c_out / s->groups;
    return d;
}

extern "C" size_t anc_conv_scratch_floats(const anc_conv *s, int64_t chunk, int channel_major) {
    ConvDims d = dims(s);
    size_t col = (size_t)(d.k * chunk * d.p);
    size_t dyt = channel_major ? (size_t)(d.cout * chunk * d.p) : 0;
    return col + dyt;
}

// Index math is 32-bit inside a plane (an image channel or a row of P positions, always far below
// 2^31 elements) and 64-bit only for a row's base offset, computed once per row: 64-bit division
// per element made these copies cost more than the GEMMs they feed.

// Threads per block for a row of `len` elements: whole warps, at most ANC_THREADS.
static inline unsigned row_threads(int64_t len) {
    int64_t t = (len + 31) / 32 * 32;
    return (unsigned)(t < 32 ? 32 : t > ANC_THREADS ? ANC_THREADS : t);
}

// Blocks for `rows` rows of a row-per-block loop, capped (the kernels loop over the rest).
static inline unsigned row_blocks(int64_t rows) {
    const int64_t cap = 1 << 30;
    return (unsigned)(rows < 1 ? 1 : rows > cap ? cap : rows);
}

// col[K][B][P] from x[B, Cin, H, W] (x points at the chunk's first image); zero outside the image.
// One block per row (k, b) of col: the row's channel and kernel offset are uniform in the block.
__global__ void im2col_kernel(const float *x, float *col, int64_t rows, int b_count, int cin,
                              int h, int w, int kh, int kw, int stride, int pad, int wo, int p) {
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int b = (int)(row % b_count);
        int k = (int)(row / b_count);
        int j = k % kw;
        int i = (k / kw) % kh;
        int c = k / (kw * kh);
        const float *plane = x + ((size_t)b * cin + c) * h * w;
        float *out = col + (size_t)row * p;
        for (int pos = threadIdx.x; pos < p; pos += blockDim.x) {
            int oh = pos / wo, ow = pos - oh * wo;
            int hh = oh * stride - pad + i;
            int ww = ow * stride - pad + j;
            bool inside = hh >= 0 && hh < h && ww >= 0 && ww < w;
            out[pos] = inside ? plane[hh * w + ww] : 0.0f;
        }
    }
}

// dx[B, Cin, H, W] = sum of the col[K][B][P] entries that im2col copied from each pixel. A gather
// per pixel (no atomics): deterministic, and every dx element of the chunk is written. One block
// per (b, c) plane; each pixel visits only the output positions whose window holds it, kernel
// rows and columns in ascending order.
__global__ void col2im_kernel(const float *col, float *dx, int64_t planes, int b_count, int cin,
                              int h, int w, int kh, int kw, int stride, int pad, int ho, int wo,
                              int p) {
    for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        int b = (int)(plane / cin);
        int c = (int)(plane % cin);
        float *out = dx + (size_t)plane * h * w;
        for (int pix = threadIdx.x; pix < h * w; pix += blockDim.x) {
            int hp = pix / w + pad, wp = pix % w + pad;
            // Output rows oh with 0 <= hp - oh*stride < kh, likewise columns.
            int oh_lo = hp < kh ? 0 : (hp - kh) / stride + 1;
            int oh_hi = min(hp / stride, ho - 1);
            int ow_lo = wp < kw ? 0 : (wp - kw) / stride + 1;
            int ow_hi = min(wp / stride, wo - 1);
            float acc = 0.0f;
            for (int oh = oh_hi; oh >= oh_lo; --oh) {
                int i = hp - oh * stride;
                for (int ow = ow_hi; ow >= ow_lo; --ow) {
                    int j = wp - ow * stride;
                    int64_t k = ((int64_t)c * kh + i) * kw + j;
                    acc += col[(size_t)(k * b_count + b) * p + oh * wo + ow];
                }
            }
            out[pix] = acc;
        }
    }
}

// dyt[Cout][B][P] from dy[B][Cout][P] (dy points at the chunk's first image): one block per row.
__global__ void images_inside_channels_kernel(const float *dy, float *dyt, int64_t rows,
                                              int b_count, int cout, int p) {
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int b = (int)(row % b_count);
        int c = (int)(row / b_count);
        const float *src = dy + ((size_t)b * cout + c) * p;
        float *out = dyt + (size_t)row * p;
        for (int pos = threadIdx.x; pos < p; pos += blockDim.x) out[pos] = src[pos];
    }
}

// y[B][Cout][P] = yt[Cout][B][P] + bias[Cout] (y points at the chunk's first image): one block per
// row (b, c) of y, the inverse of images_inside_channels with the forward's bias added.
__global__ void channels_inside_images_bias_kernel(const float *yt, const float *bias, float *y,
                                                   int64_t rows, int b_count, int cout, int p) {
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int c = (int)(row % cout);
        int b = (int)(row / cout);
        const float *src = yt + ((size_t)c * b_count + b) * p;
        float *out = y + (size_t)row * p;
        float add = bias[c];
        for (int pos = threadIdx.x; pos < p; pos += blockDim.x) out[pos] = src[pos] + add;
    }
}

static anc_status im2col(anc_ctx *ctx, const ConvDims &d, const float *x, int64_t b_count,
                         float *col) {
    int64_t rows = d.k * b_count;
    if (rows == 0 || d.p == 0) return anc_ok();
    im2col_kernel<<<row_blocks(rows), row_threads(d.p), 0, ctx->stream>>>(
        x, col, rows, (int)b_count, (int)d.cin, (int)d.h, (int)d.w, (int)d.kh, (int)d.kw,
        (int)d.stride, (int)d.pad, (int)d.wo, (int)d.p);
    LAUNCH_CHECK("im2col");
    return anc_ok();
}

// y[N,Cout,Ho,Wo] = conv(x[N,Cin,H,W], w[Cout,Cin/g,kh,kw]) + b[Cout]
extern "C" anc_status anc_conv_forward(anc_ctx *ctx, const anc_conv *s, int64_t chunk,
                                       int whole_chunk, const float *x, const float *w,
                                       const float *b, float *y, float *scratch) {
    ConvDims d = dims(s);
    if (d.n == 0 || d.p == 0 || d.cout == 0) return anc_ok();
    ENTER(ctx);
    const float zero = 0.0f;
    for (int64_t b0 = 0; b0 < d.n; b0 += chunk) {
        int64_t bc = d.n - b0 < chunk ? d.n - b0 : chunk;
        TRY_STATUS(im2col(ctx, d, x + b0 * d.cin * d.h * d.w, bc, scratch));
        float *yc = y + b0 * d.cout * d.p;
        if (whole_chunk) {
            int64_t bp = bc * d.p;
            float *yt = scratch + d.k * bp;
            for (int64_t g = 0; g < d.groups; ++g) {
                // yt_g[B*P, Coutg] (column-major, ld B*P) = col_g[B*P, Kg] (ld B*P) * w_g[Kg, Coutg]
                TRY_STATUS(anc_gemm(ctx, "gemm(conv_forward, whole chunk)",
                                    {false, CUBLAS_OP_N, CUBLAS_OP_N, (int)bp, (int)d.coutg,
                                     (int)d.kg, scratch + g * d.kg * bp, (int)bp, 0,
                                     w + g * d.coutg * d.kg, (int)d.kg, 0, &zero,
                                     yt + g * d.coutg * bp, (int)bp, 0, 1}));
            }
            int64_t rows = bc * d.cout;
            channels_inside_images_bias_kernel<<<row_blocks(rows), row_threads(d.p), 0,
                                                 ctx->stream>>>(yt, b, yc, rows, (int)bc,
                                                                (int)d.cout, (int)d.p);
            LAUNCH_CHECK("channels_inside_images_bias");
            continue;
        }
        for (int64_t g = 0; g < d.groups; ++g) {
            // Per image: y_b[P, Coutg] (column-major, ld P) = col_b[P, Kg] (ld B*P) * w_g[Kg, Coutg]
            TRY_STATUS(anc_gemm(ctx, "gemm strided-batched(conv_forward)",
                                {true, CUBLAS_OP_N, CUBLAS_OP_N, (int)d.p, (int)d.coutg, (int)d.kg,
                                 scratch + g * d.kg * bc * d.p, (int)(bc * d.p), (long long)d.p,
                                 w + g * d.coutg * d.kg, (int)d.kg, 0LL, &zero,
                                 yc + g * d.coutg * d.p, (int)d.p, (long long)(d.cout * d.p),
                                 (int)bc}));
        }
    }
    if (whole_chunk) return anc_ok();
    return anc_add_bias(ctx, y, b, (size_t)d.n, (size_t)d.cout, (size_t)d.p);
}

// dx[N,Cin,H,W] = conv_transpose(dy[N,Cout,Ho,Wo], w[Cout,Cin/g,kh,kw])
extern "C" anc_status anc_conv_backward_data(anc_ctx *ctx, const anc_conv *s, int64_t chunk,
                                             int whole_chunk, const float *dy, const float *w,
                                             float *dx, float *scratch) {
    ConvDims d = dims(s);
    size_t x_len = (size_t)(d.n * d.cin * d.h * d.w);
    if (x_len == 0) return anc_ok();
    ENTER(ctx);
    const float zero = 0.0f;
    for (int64_t b0 = 0; b0 < d.n; b0 += chunk) {
        int64_t bc = d.n - b0 < chunk ? d.n - b0 : chunk;
        const float *dyc = dy + b0 * d.cout * d.p;
        if (whole_chunk) {
            int64_t bp = bc * d.p;
            float *dyt = scratch + d.k * bp;
            int64_t rows = d.cout * bc;
            images_inside_channels_kernel<<<row_blocks(rows), row_threads(d.p), 0, ctx->stream>>>(
                dyc, dyt, rows, (int)bc, (int)d.cout, (int)d.p);
            LAUNCH_CHECK("images_inside_channels");
            for (int64_t g = 0; g < d.groups; ++g) {
                // dcol_g[B*P, Kg] (ld B*P) = dyt_g[B*P, Coutg] (ld B*P) * w_g^T
                TRY_STATUS(anc_gemm(ctx, "gemm(conv_backward_data, whole chunk)",
                                    {false, CUBLAS_OP_N, CUBLAS_OP_T, (int)bp, (int)d.kg,
                                     (int)d.coutg, dyt + g * d.coutg * bp, (int)bp, 0,
                                     w + g * d.coutg * d.kg, (int)d.kg, 0, &zero,
                                     scratch + g * d.kg * bp, (int)bp, 0, 1}));
            }
        }
        for (int64_t g = 0; g < d.groups && !whole_chunk; ++g) {
            // Per image: dcol_b[P, Kg] (ld B*P) = dy_b[P, Coutg] (ld P) * w_g^T with w_g read as
            // the column-major [Kg, Coutg] matrix it is and transposed.
            TRY_STATUS(anc_gemm(ctx, "gemm strided-batched(conv_backward_data)",
                                {true, CUBLAS_OP_N, CUBLAS_OP_T, (int)d.p, (int)d.kg, (int)d.coutg,
                                 dyc + g * d.coutg * d.p, (int)d.p, (long long)(d.cout * d.p),
                                 w + g * d.coutg * d.kg, (int)d.kg, 0LL, &zero,
                                 scratch + g * d.kg * bc * d.p, (int)(bc * d.p), (long long)d.p,
                                 (int)bc}));
        }
        int64_t planes = bc * d.cin;
        col2im_kernel<<<row_blocks(planes), row_threads(d.h * d.w), 0, ctx->stream>>>(
            scratch, dx + b0 * d.cin * d.h * d.w, planes, (int)bc, (int)d.cin, (int)d.h,
            (int)d.w, (int)d.kh, (int)d.kw, (int)d.stride, (int)d.pad, (int)d.ho, (int)d.wo,
            (int)d.p);
        LAUNCH_CHECK("col2im");
    }
    return anc_ok();
}

// dw[Cout,Cin/g,kh,kw] = sum_n dy ⋆ x ; db[Cout] = sum_{n,h,w} dy (both overwritten)
extern "C" anc_status anc_conv_backward_weights(anc_ctx *ctx, const anc_conv *s, int64_t chunk,
                                                const float *x, const float *dy, float *dw,
                                                float *db, float *scratch) {
    ConvDims d = dims(s);
    if (d.cout == 0) return anc_ok();
    ENTER(ctx);
    const float one = 1.0f, zero = 0.0f;
    size_t w_len = (size_t)(d.cout * d.kg);
    if (d.n == 0 || d.p == 0) {
        CUDA_TRY("cudaMemsetAsync(dw)", cudaMemsetAsync(dw, 0, w_len * sizeof(float), ctx->stream));
        CUDA_TRY("cudaMemsetAsync(db)",
                 cudaMemsetAsync(db, 0, (size_t)d.cout * sizeof(float), ctx->stream));
        return anc_ok();
    }
    for (int64_t b0 = 0; b0 < d.n; b0 += chunk) {
        int64_t bc = d.n - b0 < chunk ? d.n - b0 : chunk;
        float *col = scratch;
        float *dyt = scratch + d.k * bc * d.p;
        TRY_STATUS(im2col(ctx, d, x + b0 * d.cin * d.h * d.w, bc, col));
        int64_t rows = d.cout * bc;
        images_inside_channels_kernel<<<row_blocks(rows), row_threads(d.p), 0, ctx->stream>>>(
            dy + b0 * d.cout * d.p, dyt, rows, (int)bc, (int)d.cout, (int)d.p);
        LAUNCH_CHECK("images_inside_channels");
        // The first chunk overwrites dw (beta = 0 never reads it), later chunks accumulate.
        const float *beta = b0 == 0 ? &zero : &one;
        int64_t bp = bc * d.p;
        for (int64_t g = 0; g < d.groups; ++g) {
            // dw_g[Kg, Coutg] (column-major, ld Kg) = col_g^T[Kg, B*P] * dyt_g[B*P, Coutg]
            TRY_STATUS(anc_gemm(ctx, "gemm(conv_backward_weights)",
                                {false, CUBLAS_OP_T, CUBLAS_OP_N, (int)d.kg, (int)d.coutg, (int)bp,
                                 col + g * d.kg * bp, (int)bp, 0, dyt + g * d.coutg * bp, (int)bp,
                                 0, beta, dw + g * d.coutg * d.kg, (int)d.kg, 0, 1}));
        }
    }
    return anc_bias_grad(ctx, dy, db, (size_t)d.n, (size_t)d.cout, (size_t)d.p);
}
