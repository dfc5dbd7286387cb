// Internal helpers shared by the .cu files: status construction, checked calls and launches,
// grid sizing. Not part of the FFI surface (alexnet_cuda.h is).
#ifndef ALEXNET_COMMON_CUH
#define ALEXNET_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include "alexnet_cuda.h"

struct anc_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    // The prefetch copy stream and its events, created by the first anc_prefetch_upload (NULL
    // until then): `queued` marks the compute stream's work at a prefetch, `copied` its copy.
    cudaStream_t copy_stream;
    cudaEvent_t queued, copied;
    // The collective stream (NCCL's all-reduces of gradients) and its events, created by the
    // first anc_collective_stream (NULL until then): `backward_done` marks the compute stream's
    // work at a fork, `reduced` the collective stream's at a join.
    cudaStream_t collective_stream;
    cudaEvent_t backward_done, reduced;
    // --precision bf16: GEMM operands rounded to bf16 (round to nearest even) into `bf16_buf`
    // (grow-only, `bf16_bytes` long), multiplied with f32 accumulation into f32 results.
    int bf16;
    void *bf16_buf;
    size_t bf16_bytes;
};

// The GEMMs of every layer: cuBLAS's f32 GEMM (TF32 when the math mode allows), or with bf16
// operands when ctx->bf16 (anc_gemm in runtime.cu). Column-major, beta as given, cuBLAS's
// argument order, alpha = 1. `batched`: `batch` GEMMs strided by stride_a/b/c (0 = the same
// matrix for each) through the strided-batched call; else one GEMM.
struct anc_gemm_args {
    bool batched;
    cublasOperation_t ta, tb;
    int m, n, k;
    const float *a;
    int lda;
    long long stride_a;
    const float *b;
    int ldb;
    long long stride_b;
    const float *beta;
    float *c;
    int ldc;
    long long stride_c;
    int batch;
};
anc_status anc_gemm(anc_ctx *ctx, const char *name, const anc_gemm_args &g);

// Success: everything zero (code 0, kind 0, empty strings).
static inline anc_status anc_ok() {
    anc_status s;
    memset(&s, 0, sizeof s);
    return s;
}

static inline anc_status anc_fail(int kind, int code, const char *call, const char *msg) {
    anc_status s;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    s.code = code;
    snprintf(s.call, sizeof s.call, "%s", call);
    snprintf(s.msg, sizeof s.msg, "%s", msg ? msg : "(no message)");
    return s;
}

static inline anc_status anc_cuda_status(cudaError_t e, const char *call) {
    return anc_fail(ANC_CUDA, (int)e, call, cudaGetErrorString(e));
}

static inline anc_status anc_cublas_status(cublasStatus_t e, const char *call) {
    return anc_fail(ANC_CUBLAS, (int)e, call, cublasGetStatusString(e));
}

// Every runtime call goes through CUDA_TRY and every cuBLAS call through CUBLAS_TRY: the first
// failure returns from the enclosing function with the call's name.
#define CUDA_TRY(name, expr)                                                                       \
    do {                                                                                           \
        cudaError_t anc_e_ = (expr);                                                               \
        if (anc_e_ != cudaSuccess) return anc_cuda_status(anc_e_, name);                           \
    } while (0)

#define CUBLAS_TRY(name, expr)                                                                     \
    do {                                                                                           \
        cublasStatus_t anc_e_ = (expr);                                                            \
        if (anc_e_ != CUBLAS_STATUS_SUCCESS) return anc_cublas_status(anc_e_, name);               \
    } while (0)

// Returns from the enclosing function with the status of a failed anc_* helper.
#define TRY_STATUS(expr)                                                                           \
    do {                                                                                           \
        anc_status anc_s_ = (expr);                                                                \
        if (anc_s_.code != 0) return anc_s_;                                                       \
    } while (0)

// After each <<<>>>: a bad configuration is reported here; an error inside an earlier kernel
// surfaces at the next check or at the next synchronising call.
#define LAUNCH_CHECK(kernel_name)                                                                  \
    do {                                                                                           \
        cudaError_t anc_e_ = cudaGetLastError();                                                   \
        if (anc_e_ != cudaSuccess) return anc_cuda_status(anc_e_, kernel_name "<<<>>>");           \
    } while (0)

// Each entry point makes the context's device current for the calling host thread (the Rust
// engine may be driven from any thread).
#define ENTER(ctx) CUDA_TRY("cudaSetDevice", cudaSetDevice((ctx)->device))

#define ANC_THREADS 256

// Grid for a grid-stride loop over n elements: enough blocks to fill the GPU, capped so huge n
// loops instead of exceeding launch limits. n == 0 is handled by callers (no launch).
static inline unsigned anc_blocks(size_t n) {
    size_t b = (n + ANC_THREADS - 1) / ANC_THREADS;
    const size_t cap = 65535u * 8u;
    if (b > cap) b = cap;
    if (b == 0) b = 1;
    return (unsigned)b;
}

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n);               \
         i += (size_t)gridDim.x * blockDim.x)

// Grid-stride loop with index type I. Launchers pick I = uint32_t when the element count fits
// (ANC_FITS_32), size_t otherwise: a kernel that splits its index into coordinates does several
// divisions per element, and 64-bit division costs several times the 32-bit one on the GPU.
#define GRID_STRIDE_T(I, i, n)                                                                     \
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (I)(n);                              \
         i += (I)gridDim.x * blockDim.x)

// Below 2^31, so adding the grid's stride to an index below it cannot wrap a uint32_t.
#define ANC_FITS_32(total) ((size_t)(total) < ((size_t)1 << 31))

// Launches kernel<uint32_t> on ctx's stream when `total` (the largest index the kernel forms)
// fits ANC_FITS_32, else kernel<size_t>; the arguments convert to the chosen index type.
#define LAUNCH_INDEXED(kernel, total, grid, ...)                                                   \
    do {                                                                                           \
        if (ANC_FITS_32(total))                                                                    \
            kernel<uint32_t><<<(grid), ANC_THREADS, 0, ctx->stream>>>(__VA_ARGS__);               \
        else                                                                                       \
            kernel<size_t><<<(grid), ANC_THREADS, 0, ctx->stream>>>(__VA_ARGS__);                 \
    } while (0)

// Sum of one float per thread over a block of ANC_THREADS threads; every thread gets the result.
__device__ inline float anc_block_sum(float v, float *shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = ANC_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    float r = shared[0];
    __syncthreads();
    return r;
}

__device__ inline float anc_block_max(float v, float *shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = ANC_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    float r = shared[0];
    __syncthreads();
    return r;
}

// b is added to y[n, c, p] for every n and p: y is [N, C, P] with P = H*W (1 for a fully
// connected layer). Defined in layers.cu, used by conv.cu too.
anc_status anc_add_bias(anc_ctx *ctx, float *y, const float *b, size_t n, size_t c, size_t p);
// db[c] = sum over n and p of dy[n, c, p] (overwritten).
anc_status anc_bias_grad(anc_ctx *ctx, const float *dy, float *db, size_t n, size_t c, size_t p);

#endif
