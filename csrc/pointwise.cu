// Elementwise kernels: fill, scale, ReLU, tanh, dropout, the paper's SGD step.
#include "common.cuh"

__global__ void fill_kernel(float *x, size_t n, float value) {
    GRID_STRIDE(i, n) x[i] = value;
}

__global__ void scale_kernel(float *x, size_t n, float a) {
    GRID_STRIDE(i, n) x[i] *= a;
}

// x = max(x, 0)
__global__ void relu_forward_kernel(float *x, size_t n) {
    GRID_STRIDE(i, n) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

// dy *= (y > 0)
__global__ void relu_backward_kernel(const float *y, float *dy, size_t n) {
    GRID_STRIDE(i, n) if (!(y[i] > 0.0f)) dy[i] = 0.0f;
}

// x = tanh(x)
__global__ void tanh_forward_kernel(float *x, size_t n) {
    GRID_STRIDE(i, n) x[i] = tanhf(x[i]);
}

// dy *= 1 - y^2
__global__ void tanh_backward_kernel(const float *y, float *dy, size_t n) {
    GRID_STRIDE(i, n) dy[i] *= 1.0f - y[i] * y[i];
}

// src/rng.rs's constants and three lines (SplitMix64 finaliser), so the mask is bit-identical to
// the CPU's.
#define ANC_GOLDEN_GAMMA 0x9e3779b97f4a7c15ULL
#define ANC_MIX_MUL_1 0xbf58476d1ce4e5b9ULL
#define ANC_MIX_MUL_2 0x94d049bb133111ebULL
#define ANC_F32_UNIFORM_BITS 24

__device__ inline uint64_t anc_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * ANC_MIX_MUL_1;
    z = (z ^ (z >> 27)) * ANC_MIX_MUL_2;
    return z ^ (z >> 31);
}

__device__ inline bool anc_dropout_keep(uint64_t seed, uint64_t index, float p) {
    uint64_t h = anc_mix64(seed ^ anc_mix64(index + ANC_GOLDEN_GAMMA));
    // 24 bits, exact in f32, times 2^-24 (exact): the same value as rng::uniform_at.
    float u = (float)(h >> (64 - ANC_F32_UNIFORM_BITS)) * (1.0f / (float)(1u << ANC_F32_UNIFORM_BITS));
    return u >= p;
}

// x[i] = keep(idx(i)) ? x[i] * keep_scale : 0, idx(i) = (i / width) * total + offset + i % width
__global__ void dropout_kernel(float *x, size_t n, float p, float keep_scale, uint64_t seed,
                               size_t width, size_t total, size_t offset) {
    GRID_STRIDE(i, n) {
        uint64_t index = (uint64_t)((i / width) * total + offset + i % width);
        x[i] = anc_dropout_keep(seed, index, p) ? x[i] * keep_scale : 0.0f;
    }
}

// dst += src
__global__ void add_kernel(float *dst, const float *src, size_t n) {
    GRID_STRIDE(i, n) dst[i] += src[i];
}

// v = momentum*v - weight_decay*lr*w - lr*dw ; w = w + v
__global__ void sgd_kernel(float *w, const float *dw, float *v, size_t n, float lr, float momentum,
                           float weight_decay) {
    GRID_STRIDE(i, n) {
        float vi = momentum * v[i] - weight_decay * lr * w[i] - lr * dw[i];
        v[i] = vi;
        w[i] += vi;
    }
}

extern "C" anc_status anc_fill(anc_ctx *ctx, float *x, size_t n, float value) {
    if (n == 0) return anc_ok();
    ENTER(ctx);
    fill_kernel<<<anc_blocks(n), ANC_THREADS, 0, ctx->stream>>>(x, n, value);
    LAUNCH_CHECK("fill");
    return anc_ok();
}

// Each block's threads sum squares over a grid-stride loop, then the block halves its shared
// partials in a fixed tree; thread 0 writes the block's sum. Deterministic for a given grid.
__global__ void sum_of_squares_kernel(const float *x, size_t n, double *partial) {
    __shared__ double part[ANC_THREADS];
    double s = 0.0;
    GRID_STRIDE(i, n) {
        double v = x[i];
        s += v * v;
    }
    part[threadIdx.x] = s;
    __syncthreads();
    for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = part[0];
}

// One thread adds the blocks' partials in block order (at most 1024 of them).
__global__ void sum_partials_kernel(const double *partial, size_t count, double *total) {
    double s = 0.0;
    for (size_t b = 0; b < count; b++) s += partial[b];
    *total = s;
}

extern "C" anc_status anc_sum_of_squares(anc_ctx *ctx, const float *x, size_t n, size_t blocks,
                                         double *scratch, double *result) {
    *result = 0.0;
    if (n == 0) return anc_ok();
    ENTER(ctx);
    sum_of_squares_kernel<<<(unsigned)blocks, ANC_THREADS, 0, ctx->stream>>>(x, n, scratch);
    LAUNCH_CHECK("sum_of_squares");
    sum_partials_kernel<<<1, 1, 0, ctx->stream>>>(scratch, blocks, scratch + blocks);
    LAUNCH_CHECK("sum_of_squares (partials)");
    CUDA_TRY("cudaMemcpyAsync(DeviceToHost, sum of squares)",
             cudaMemcpyAsync(result, scratch + blocks, sizeof(double), cudaMemcpyDeviceToHost,
                             ctx->stream));
    CUDA_TRY("cudaStreamSynchronize", cudaStreamSynchronize(ctx->stream));
    return anc_ok();
}

extern "C" anc_status anc_scale(anc_ctx *ctx, float *x, size_t n, float a) {
    if (n == 0) return anc_ok();
    ENTER(ctx);
    scale_kernel<<<anc_blocks(n), ANC_THREADS, 0, ctx->stream>>>(x, n, a);
    LAUNCH_CHECK("scale");
    return anc_ok();
}

extern "C" anc_status anc_relu_forward(anc_ctx *ctx, float *x, size_t n) {
    if (n == 0) return anc_ok();
    ENTER(ctx);
    relu_forward_kernel<<<anc_blocks(n), ANC_THREADS, 0, ctx->stream>>>(x, n);
    LAUNCH_CHECK("relu_forward");
    return anc_ok();
}

extern "C" anc_status anc_relu_backward(anc_ctx *ctx, const float *y, float *dy, size_t n) {
    if (n == 0) return anc_ok();
    ENTER(ctx);
    relu_backward_kernel<<<anc_blocks(n), ANC_THREADS, 0, ctx->stream>>>(y, dy, n);
    LAUNCH_CHECK("relu_backward");
    return anc_ok();
}

extern "C" anc_status anc_tanh_forward(anc_ctx *ctx, float *x, size_t n) {
    if (n == 0) return anc_ok();
    ENTER(ctx);
    tanh_forward_kernel<<<anc_blocks(n), ANC_THREADS, 0, ctx->stream>>>(x, n);
    LAUNCH_CHECK("tanh_forward");
    return anc_ok();
}

extern "C" anc_status anc_tanh_backward(anc_ctx *ctx, const float *y, float *dy, size_t n) {
    if (n == 0) return anc_ok();
    ENTER(ctx);
    tanh_backward_kernel<<<anc_blocks(n), ANC_THREADS, 0, ctx->stream>>>(y, dy, n);
    LAUNCH_CHECK("tanh_backward");
    return anc_ok();
}

extern "C" anc_status anc_dropout(anc_ctx *ctx, float *x, size_t n, float p, float keep_scale,
                                  uint64_t seed, size_t width, size_t total, size_t offset) {
    if (n == 0) return anc_ok();
    ENTER(ctx);
    dropout_kernel<<<anc_blocks(n), ANC_THREADS, 0, ctx->stream>>>(x, n, p, keep_scale, seed,
                                                                     width, total, offset);
    LAUNCH_CHECK("dropout");
    return anc_ok();
}

extern "C" anc_status anc_add(anc_ctx *ctx, float *dst, const float *src, size_t n) {
    if (n == 0) return anc_ok();
    ENTER(ctx);
    add_kernel<<<anc_blocks(n), ANC_THREADS, 0, ctx->stream>>>(dst, src, n);
    LAUNCH_CHECK("add");
    return anc_ok();
}

extern "C" anc_status anc_sgd_update(anc_ctx *ctx, float *w, const float *dw, float *v, size_t n,
                                     float lr, float momentum, float weight_decay) {
    if (n == 0) return anc_ok();
    ENTER(ctx);
    sgd_kernel<<<anc_blocks(n), ANC_THREADS, 0, ctx->stream>>>(w, dw, v, n, lr, momentum,
                                                               weight_decay);
    LAUNCH_CHECK("sgd_update");
    return anc_ok();
}
