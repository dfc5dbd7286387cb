// Convolution as GEMMs (Caffe / cuda-convnet style), `chunk` images at a time so the GEMMs are big.
//
// Scratch layout for a chunk of B images, P = Ho*Wo output positions, K = Cin*kh*kw:
//   col[K][B][P]          im2col of the chunk (row k = (c*kh + i)*kw + j); group g owns rows
//                         g*Kg .. (g+1)*Kg with Kg = (Cin/G)*kh*kw, matching w[Cout, Cin/G, kh, kw]
//   dyt[Cout][B][P]       (backward-weights only) dy of the chunk with images moved inside channels
// With images inside each row, one image's block of col is a column-major [P, Kg] matrix with
// leading dimension B*P, so the forward and backward-data GEMMs of all B images are a single
// strided-batched call per group, and backward-weights is one GEMM per group with k = B*P.
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

extern "C" size_t anc_conv_scratch_floats(const anc_conv *s, int64_t chunk, int backward_weights) {
    ConvDims d = dims(s);
    size_t col = (size_t)(d.k * chunk * d.p);
    size_t dyt = backward_weights ? (size_t)(d.cout * chunk * d.p) : 0;
    return col + dyt;
}

// col[K][B][P] from x[B, Cin, H, W] (x points at the chunk's first image); zero outside the image.
__global__ void im2col_kernel(size_t total, const float *x, float *col, int64_t b_count,
                              int64_t cin, int64_t h, int64_t w, int64_t kh, int64_t kw,
                              int64_t stride, int64_t pad, int64_t wo, int64_t p) {
    GRID_STRIDE(idx, total) {
        int64_t pos = (int64_t)(idx % p);
        int64_t t = (int64_t)(idx / p);
        int64_t b = t % b_count;
        int64_t k = t / b_count;
        int64_t j = k % kw;
        int64_t i = (k / kw) % kh;
        int64_t c = k / (kw * kh);
        int64_t oh = pos / wo, ow = pos % wo;
        int64_t hh = oh * stride - pad + i;
        int64_t ww = ow * stride - pad + j;
        bool inside = hh >= 0 && hh < h && ww >= 0 && ww < w && c < cin;
        col[idx] = inside ? x[((b * cin + c) * h + hh) * w + ww] : 0.0f;
    }
}

// dx[B, Cin, H, W] = sum of the col[K][B][P] entries that im2col copied from each pixel. A gather
// per pixel (no atomics): deterministic, and every dx element of the chunk is written.
__global__ void col2im_kernel(size_t total, const float *col, float *dx, int64_t b_count,
                              int64_t cin, int64_t h, int64_t w, int64_t kh, int64_t kw,
                              int64_t stride, int64_t pad, int64_t ho, int64_t wo, int64_t p) {
    GRID_STRIDE(idx, total) {
        int64_t xw = (int64_t)(idx % w);
        int64_t xh = (int64_t)((idx / w) % h);
        int64_t c = (int64_t)((idx / (w * h)) % cin);
        int64_t b = (int64_t)(idx / (w * h * cin));
        float acc = 0.0f;
        for (int64_t i = 0; i < kh; ++i) {
            int64_t hp = xh + pad - i;  // = oh * stride when this kernel row touches xh
            if (hp < 0 || hp % stride != 0) continue;
            int64_t oh = hp / stride;
            if (oh >= ho) continue;
            for (int64_t j = 0; j < kw; ++j) {
                int64_t wp = xw + pad - j;
                if (wp < 0 || wp % stride != 0) continue;
                int64_t ow = wp / stride;
                if (ow >= wo) continue;
                int64_t k = (c * kh + i) * kw + j;
                acc += col[(k * b_count + b) * p + oh * wo + ow];
            }
        }
        dx[idx] = acc;
    }
}

// dyt[Cout][B][P] from dy[B][Cout][P] (dy points at the chunk's first image).
__global__ void images_inside_channels_kernel(size_t total, const float *dy, float *dyt,
                                              int64_t b_count, int64_t cout, int64_t p) {
    GRID_STRIDE(idx, total) {
        int64_t pos = (int64_t)(idx % p);
        int64_t b = (int64_t)((idx / p) % b_count);
        int64_t c = (int64_t)(idx / (p * b_count));
        dyt[idx] = dy[(b * cout + c) * p + pos];
    }
}

static anc_status im2col(anc_ctx *ctx, const ConvDims &d, const float *x, int64_t b_count,
                         float *col) {
    size_t total = (size_t)(d.k * b_count * d.p);
    if (total == 0) return anc_ok();
    im2col_kernel<<<anc_blocks(total), ANC_THREADS, 0, ctx->stream>>>(
        total, x, col, b_count, d.cin, d.h, d.w, d.kh, d.kw, d.stride, d.pad, d.wo, d.p);
    LAUNCH_CHECK("im2col");
    return anc_ok();
}

#define TRY_STATUS(expr)                                                                           \
    do {                                                                                           \
        anc_status anc_s_ = (expr);                                                                \
        if (anc_s_.code != 0) return anc_s_;                                                       \
    } while (0)

// y[N,Cout,Ho,Wo] = conv(x[N,Cin,H,W], w[Cout,Cin/g,kh,kw]) + b[Cout]
extern "C" anc_status anc_conv_forward(anc_ctx *ctx, const anc_conv *s, int64_t chunk,
                                       const float *x, const float *w, const float *b, float *y,
                                       float *scratch) {
    ConvDims d = dims(s);
    if (d.n == 0 || d.p == 0 || d.cout == 0) return anc_ok();
    ENTER(ctx);
    const float one = 1.0f, zero = 0.0f;
    for (int64_t b0 = 0; b0 < d.n; b0 += chunk) {
        int64_t bc = d.n - b0 < chunk ? d.n - b0 : chunk;
        TRY_STATUS(im2col(ctx, d, x + b0 * d.cin * d.h * d.w, bc, scratch));
        float *yc = y + b0 * d.cout * d.p;
        for (int64_t g = 0; g < d.groups; ++g) {
            // Per image: y_b[P, Coutg] (column-major, ld P) = col_b[P, Kg] (ld B*P) * w_g[Kg, Coutg]
            CUBLAS_TRY("cublasSgemmStridedBatched(conv_forward)",
                       cublasSgemmStridedBatched(
                           ctx->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)d.p, (int)d.coutg, (int)d.kg,
                           &one, scratch + g * d.kg * bc * d.p, (int)(bc * d.p), (long long)d.p,
                           w + g * d.coutg * d.kg, (int)d.kg, 0LL, &zero, yc + g * d.coutg * d.p,
                           (int)d.p, (long long)(d.cout * d.p), (int)bc));
        }
    }
    return anc_add_bias(ctx, y, b, (size_t)d.n, (size_t)d.cout, (size_t)d.p);
}

// dx[N,Cin,H,W] = conv_transpose(dy[N,Cout,Ho,Wo], w[Cout,Cin/g,kh,kw])
extern "C" anc_status anc_conv_backward_data(anc_ctx *ctx, const anc_conv *s, int64_t chunk,
                                             const float *dy, const float *w, float *dx,
                                             float *scratch) {
    ConvDims d = dims(s);
    size_t x_len = (size_t)(d.n * d.cin * d.h * d.w);
    if (x_len == 0) return anc_ok();
    ENTER(ctx);
    const float one = 1.0f, zero = 0.0f;
    for (int64_t b0 = 0; b0 < d.n; b0 += chunk) {
        int64_t bc = d.n - b0 < chunk ? d.n - b0 : chunk;
        const float *dyc = dy + b0 * d.cout * d.p;
        for (int64_t g = 0; g < d.groups; ++g) {
            // Per image: dcol_b[P, Kg] (ld B*P) = dy_b[P, Coutg] (ld P) * w_g^T with w_g read as
            // the column-major [Kg, Coutg] matrix it is and transposed.
            CUBLAS_TRY("cublasSgemmStridedBatched(conv_backward_data)",
                       cublasSgemmStridedBatched(
                           ctx->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)d.p, (int)d.kg, (int)d.coutg,
                           &one, dyc + g * d.coutg * d.p, (int)d.p, (long long)(d.cout * d.p),
                           w + g * d.coutg * d.kg, (int)d.kg, 0LL, &zero,
                           scratch + g * d.kg * bc * d.p, (int)(bc * d.p), (long long)d.p,
                           (int)bc));
        }
        size_t total = (size_t)(bc * d.cin * d.h * d.w);
        col2im_kernel<<<anc_blocks(total), ANC_THREADS, 0, ctx->stream>>>(
            total, scratch, dx + b0 * d.cin * d.h * d.w, bc, d.cin, d.h, d.w, d.kh, d.kw,
            d.stride, d.pad, d.ho, d.wo, d.p);
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
        size_t total = (size_t)(d.cout * bc * d.p);
        images_inside_channels_kernel<<<anc_blocks(total), ANC_THREADS, 0, ctx->stream>>>(
            total, dy + b0 * d.cout * d.p, dyt, bc, d.cout, d.p);
        LAUNCH_CHECK("images_inside_channels");
        // The first chunk overwrites dw (beta = 0 never reads it), later chunks accumulate.
        const float *beta = b0 == 0 ? &zero : &one;
        int64_t bp = bc * d.p;
        for (int64_t g = 0; g < d.groups; ++g) {
            // dw_g[Kg, Coutg] (column-major, ld Kg) = col_g^T[Kg, B*P] * dyt_g[B*P, Coutg]
            CUBLAS_TRY("cublasSgemm(conv_backward_weights)",
                       cublasSgemm(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)d.kg, (int)d.coutg,
                                   (int)bp, &one, col + g * d.kg * bp, (int)bp,
                                   dyt + g * d.coutg * bp, (int)bp, beta, dw + g * d.coutg * d.kg,
                                   (int)d.kg));
        }
    }
    return anc_bias_grad(ctx, dy, db, (size_t)d.n, (size_t)d.cout, (size_t)d.p);
}
