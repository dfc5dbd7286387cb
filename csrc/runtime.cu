// Device selection, context (stream + cuBLAS handle), memory and copies; the GEMM entry of
// every layer (anc_gemm).
#include <cuda_bf16.h>
#include <new>

#include "common.cuh"

extern "C" anc_status anc_device_count(int *count) {
    *count = 0;
    CUDA_TRY("cudaGetDeviceCount", cudaGetDeviceCount(count));
    return anc_ok();
}

// Releases whatever part of a context was created; safe on a partly built one.
static void anc_release(anc_ctx *ctx) {
    if (!ctx) return;
    cudaSetDevice(ctx->device);
    if (ctx->blas) cublasDestroy(ctx->blas);
    if (ctx->bf16_buf) cudaFree(ctx->bf16_buf);
    if (ctx->reduced) cudaEventDestroy(ctx->reduced);
    if (ctx->backward_done) cudaEventDestroy(ctx->backward_done);
    if (ctx->collective_stream) cudaStreamDestroy(ctx->collective_stream);
    if (ctx->copied) cudaEventDestroy(ctx->copied);
    if (ctx->queued) cudaEventDestroy(ctx->queued);
    if (ctx->copy_stream) cudaStreamDestroy(ctx->copy_stream);
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    delete ctx;
}

static anc_status anc_build(anc_ctx *ctx, char *name, size_t name_len) {
    CUDA_TRY("cudaSetDevice", cudaSetDevice(ctx->device));
    cudaDeviceProp prop;
    CUDA_TRY("cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, ctx->device));
    if (name && name_len > 0) snprintf(name, name_len, "%s", prop.name);
    CUDA_TRY("cudaStreamCreateWithFlags",
             cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
    CUBLAS_TRY("cublasCreate", cublasCreate(&ctx->blas));
    CUBLAS_TRY("cublasSetStream", cublasSetStream(ctx->blas, ctx->stream));
    // Strict f32 until the caller opts into TF32.
    CUBLAS_TRY("cublasSetMathMode", cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH));
    return anc_ok();
}

extern "C" anc_status anc_create(int device, anc_ctx **out, char *name, size_t name_len) {
    *out = NULL;
    // No C++ exception may cross the C boundary.
    anc_ctx *ctx = new (std::nothrow) anc_ctx;
    if (!ctx) return anc_fail(ANC_CUDA, (int)cudaErrorMemoryAllocation, "new anc_ctx", "host allocation failed");
    ctx->device = device;
    ctx->stream = NULL;
    ctx->blas = NULL;
    ctx->copy_stream = NULL;
    ctx->queued = NULL;
    ctx->copied = NULL;
    ctx->collective_stream = NULL;
    ctx->backward_done = NULL;
    ctx->reduced = NULL;
    ctx->bf16 = 0;
    ctx->bf16_buf = NULL;
    ctx->bf16_bytes = 0;
    anc_status st = anc_build(ctx, name, name_len);
    if (st.code != 0) {
        anc_release(ctx);
        return st;
    }
    *out = ctx;
    return anc_ok();
}

extern "C" void anc_destroy(anc_ctx *ctx) {
    if (!ctx) return;
    cudaSetDevice(ctx->device);
    cudaStreamSynchronize(ctx->stream);
    if (ctx->copy_stream) cudaStreamSynchronize(ctx->copy_stream);
    if (ctx->collective_stream) cudaStreamSynchronize(ctx->collective_stream);
    anc_release(ctx);
}

extern "C" anc_status anc_set_tf32(anc_ctx *ctx, int on) {
    ENTER(ctx);
    CUBLAS_TRY("cublasSetMathMode",
               cublasSetMathMode(ctx->blas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    return anc_ok();
}

extern "C" anc_status anc_set_bf16(anc_ctx *ctx, int on) {
    ctx->bf16 = on;
    return anc_ok();
}

// x rounded to bf16, to nearest with ties to even (src/engine/cuda_mirror.rs: bf16_round).
__global__ void to_bf16_kernel(const float *x, __nv_bfloat16 *y, size_t n) {
    GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(x[i]);
}

// Elements a column-major operand spans, gaps between its columns included: op(X) is
// rows_op x cols_op, X is stored transposed when `trans`, `batch` matrices `stride` apart.
static size_t operand_span(cublasOperation_t trans, int rows_op, int cols_op, int ld,
                           long long stride, int batch) {
    size_t rows = trans == CUBLAS_OP_N ? rows_op : cols_op;
    size_t cols = trans == CUBLAS_OP_N ? cols_op : rows_op;
    if (rows == 0 || cols == 0 || batch == 0) return 0;
    return (size_t)ld * (cols - 1) + rows + (size_t)stride * (size_t)(batch - 1);
}

static anc_status to_bf16(anc_ctx *ctx, const float *x, __nv_bfloat16 *y, size_t n) {
    if (n == 0) return anc_ok();
    to_bf16_kernel<<<anc_blocks(n), ANC_THREADS, 0, ctx->stream>>>(x, y, n);
    LAUNCH_CHECK("to_bf16");
    return anc_ok();
}

// The operands' bf16 copies go to the context's grow-only buffer; growing waits for the GEMMs
// queued on the old one first.
static anc_status bf16_room(anc_ctx *ctx, size_t bytes) {
    if (bytes <= ctx->bf16_bytes) return anc_ok();
    CUDA_TRY("cudaStreamSynchronize (before growing the bf16 operands)",
             cudaStreamSynchronize(ctx->stream));
    if (ctx->bf16_buf) cudaFree(ctx->bf16_buf);
    ctx->bf16_buf = NULL;
    ctx->bf16_bytes = 0;
    cudaError_t e = cudaMalloc(&ctx->bf16_buf, bytes);
    if (e != cudaSuccess) {
        ctx->bf16_buf = NULL;
        cudaGetLastError();  // not sticky for the next launch check
        return anc_cuda_status(e, "cudaMalloc(bf16 GEMM operands)");
    }
    ctx->bf16_bytes = bytes;
    return anc_ok();
}

anc_status anc_gemm(anc_ctx *ctx, const char *name, const anc_gemm_args &g) {
    const float one = 1.0f;
    if (!ctx->bf16) {
        if (g.batched)
            CUBLAS_TRY(name, cublasSgemmStridedBatched(ctx->blas, g.ta, g.tb, g.m, g.n, g.k, &one,
                                                       g.a, g.lda, g.stride_a, g.b, g.ldb,
                                                       g.stride_b, g.beta, g.c, g.ldc, g.stride_c,
                                                       g.batch));
        else
            CUBLAS_TRY(name, cublasSgemm(ctx->blas, g.ta, g.tb, g.m, g.n, g.k, &one, g.a, g.lda,
                                         g.b, g.ldb, g.beta, g.c, g.ldc));
        return anc_ok();
    }
    int batch = g.batched ? g.batch : 1;
    size_t na = operand_span(g.ta, g.m, g.k, g.lda, g.batched ? g.stride_a : 0, batch);
    size_t nb = operand_span(g.tb, g.k, g.n, g.ldb, g.batched ? g.stride_b : 0, batch);
    TRY_STATUS(bf16_room(ctx, (na + nb) * sizeof(__nv_bfloat16)));
    __nv_bfloat16 *a16 = (__nv_bfloat16 *)ctx->bf16_buf, *b16 = a16 + na;
    TRY_STATUS(to_bf16(ctx, g.a, a16, na));
    TRY_STATUS(to_bf16(ctx, g.b, b16, nb));
    // bf16 x bf16 products are exact in f32; they are summed in f32 (CUBLAS_COMPUTE_32F).
    if (g.batched)
        CUBLAS_TRY(name, cublasGemmStridedBatchedEx(
                             ctx->blas, g.ta, g.tb, g.m, g.n, g.k, &one, a16, CUDA_R_16BF, g.lda,
                             g.stride_a, b16, CUDA_R_16BF, g.ldb, g.stride_b, g.beta, g.c,
                             CUDA_R_32F, g.ldc, g.stride_c, g.batch, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT));
    else
        CUBLAS_TRY(name, cublasGemmEx(ctx->blas, g.ta, g.tb, g.m, g.n, g.k, &one, a16,
                                      CUDA_R_16BF, g.lda, b16, CUDA_R_16BF, g.ldb, g.beta, g.c,
                                      CUDA_R_32F, g.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return anc_ok();
}

extern "C" anc_status anc_mem_info(int device, size_t *free_bytes, size_t *total_bytes) {
    *free_bytes = 0;
    *total_bytes = 0;
    CUDA_TRY("cudaSetDevice", cudaSetDevice(device));
    CUDA_TRY("cudaMemGetInfo", cudaMemGetInfo(free_bytes, total_bytes));
    return anc_ok();
}

extern "C" anc_status anc_malloc(int device, size_t bytes, void **out) {
    *out = NULL;
    if (bytes == 0) return anc_ok();
    CUDA_TRY("cudaSetDevice", cudaSetDevice(device));
    cudaError_t e = cudaMalloc(out, bytes);
    if (e != cudaSuccess) {
        *out = NULL;
        // A failed cudaMalloc leaves its error as the "last error"; clear it so the next launch
        // check does not report it again.
        cudaGetLastError();
        return anc_cuda_status(e, "cudaMalloc");
    }
    return anc_ok();
}

// Waits for the device before freeing: kernels queued on the engine's (non-blocking) stream may
// still use the memory. Frees even when the wait reports an earlier kernel's error, then returns
// that error.
extern "C" anc_status anc_free(int device, void *ptr) {
    if (!ptr) return anc_ok();
    CUDA_TRY("cudaSetDevice", cudaSetDevice(device));
    cudaError_t waited = cudaDeviceSynchronize();
    CUDA_TRY("cudaFree", cudaFree(ptr));
    if (waited != cudaSuccess) return anc_cuda_status(waited, "cudaDeviceSynchronize (before cudaFree)");
    return anc_ok();
}

extern "C" anc_status anc_memset_zero(anc_ctx *ctx, void *ptr, size_t bytes) {
    if (bytes == 0) return anc_ok();
    ENTER(ctx);
    CUDA_TRY("cudaMemsetAsync", cudaMemsetAsync(ptr, 0, bytes, ctx->stream));
    return anc_ok();
}

// Host memory is pageable and owned by the caller, so both directions wait for the copy.
extern "C" anc_status anc_upload(anc_ctx *ctx, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return anc_ok();
    ENTER(ctx);
    CUDA_TRY("cudaMemcpyAsync(HostToDevice)",
             cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx->stream));
    CUDA_TRY("cudaStreamSynchronize", cudaStreamSynchronize(ctx->stream));
    return anc_ok();
}

// Page-locked host memory (portable: usable by every device's contexts), the staging buffer of
// large uploads: the DMA engines read it at full PCIe rate, where a pageable source is copied
// through the driver's own small staging buffers at a fraction of it.
extern "C" anc_status anc_host_alloc(size_t bytes, void **out) {
    *out = NULL;
    if (bytes == 0) return anc_ok();
    cudaError_t e = cudaHostAlloc(out, bytes, cudaHostAllocPortable);
    if (e != cudaSuccess) {
        *out = NULL;
        cudaGetLastError();  // not sticky for the next launch check
        return anc_cuda_status(e, "cudaHostAlloc");
    }
    return anc_ok();
}

extern "C" anc_status anc_host_free(void *ptr) {
    if (!ptr) return anc_ok();
    CUDA_TRY("cudaFreeHost", cudaFreeHost(ptr));
    return anc_ok();
}

// Queued only: src must be page-locked and stay untouched until the stream is synchronised.
extern "C" anc_status anc_upload_async(anc_ctx *ctx, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return anc_ok();
    ENTER(ctx);
    CUDA_TRY("cudaMemcpyAsync(HostToDevice, page-locked)",
             cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx->stream));
    return anc_ok();
}

static anc_status anc_copy_stream_create(anc_ctx *ctx) {
    if (ctx->copy_stream) return anc_ok();
    CUDA_TRY("cudaEventCreateWithFlags(queued)",
             cudaEventCreateWithFlags(&ctx->queued, cudaEventDisableTiming));
    CUDA_TRY("cudaEventCreateWithFlags(copied)",
             cudaEventCreateWithFlags(&ctx->copied, cudaEventDisableTiming));
    // Created last: its presence says the events exist.
    CUDA_TRY("cudaStreamCreateWithFlags(copy)",
             cudaStreamCreateWithFlags(&ctx->copy_stream, cudaStreamNonBlocking));
    return anc_ok();
}

// The copy waits for the work queued on the compute stream so far (it may still read `dst`, the
// batch before last), then runs beside whatever the compute stream is given next.
extern "C" anc_status anc_prefetch_upload(anc_ctx *ctx, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return anc_ok();
    ENTER(ctx);
    TRY_STATUS(anc_copy_stream_create(ctx));
    CUDA_TRY("cudaEventRecord(queued)", cudaEventRecord(ctx->queued, ctx->stream));
    CUDA_TRY("cudaStreamWaitEvent(copy stream, queued)",
             cudaStreamWaitEvent(ctx->copy_stream, ctx->queued, 0));
    CUDA_TRY("cudaMemcpyAsync(HostToDevice, copy stream)",
             cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx->copy_stream));
    CUDA_TRY("cudaEventRecord(copied)", cudaEventRecord(ctx->copied, ctx->copy_stream));
    return anc_ok();
}

extern "C" anc_status anc_prefetch_join(anc_ctx *ctx) {
    if (!ctx->copy_stream) return anc_ok();
    ENTER(ctx);
    CUDA_TRY("cudaStreamWaitEvent(compute stream, copied)",
             cudaStreamWaitEvent(ctx->stream, ctx->copied, 0));
    return anc_ok();
}

extern "C" anc_status anc_prefetch_host_wait(anc_ctx *ctx) {
    if (!ctx->copy_stream) return anc_ok();
    ENTER(ctx);
    CUDA_TRY("cudaEventSynchronize(copied)", cudaEventSynchronize(ctx->copied));
    return anc_ok();
}

extern "C" anc_status anc_collective_stream(anc_ctx *ctx, void **stream) {
    ENTER(ctx);
    if (!ctx->collective_stream) {
        CUDA_TRY("cudaEventCreateWithFlags(backward_done)",
                 cudaEventCreateWithFlags(&ctx->backward_done, cudaEventDisableTiming));
        CUDA_TRY("cudaEventCreateWithFlags(reduced)",
                 cudaEventCreateWithFlags(&ctx->reduced, cudaEventDisableTiming));
        // Created last: its presence says the events exist.
        CUDA_TRY("cudaStreamCreateWithFlags(collective)",
                 cudaStreamCreateWithFlags(&ctx->collective_stream, cudaStreamNonBlocking));
    }
    *stream = (void *)ctx->collective_stream;
    return anc_ok();
}

extern "C" anc_status anc_collective_fork(anc_ctx *ctx) {
    if (!ctx->collective_stream) return anc_fail(ANC_CUDA, (int)cudaErrorInvalidResourceHandle,
                                                 "anc_collective_fork", "no collective stream yet");
    ENTER(ctx);
    CUDA_TRY("cudaEventRecord(backward_done)", cudaEventRecord(ctx->backward_done, ctx->stream));
    CUDA_TRY("cudaStreamWaitEvent(collective stream, backward_done)",
             cudaStreamWaitEvent(ctx->collective_stream, ctx->backward_done, 0));
    return anc_ok();
}

extern "C" anc_status anc_collective_join(anc_ctx *ctx) {
    if (!ctx->collective_stream) return anc_ok();
    ENTER(ctx);
    CUDA_TRY("cudaEventRecord(reduced)", cudaEventRecord(ctx->reduced, ctx->collective_stream));
    CUDA_TRY("cudaStreamWaitEvent(compute stream, reduced)",
             cudaStreamWaitEvent(ctx->stream, ctx->reduced, 0));
    return anc_ok();
}

extern "C" anc_status anc_download(anc_ctx *ctx, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return anc_ok();
    ENTER(ctx);
    CUDA_TRY("cudaMemcpyAsync(DeviceToHost)",
             cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx->stream));
    CUDA_TRY("cudaStreamSynchronize", cudaStreamSynchronize(ctx->stream));
    return anc_ok();
}

extern "C" anc_status anc_copy(anc_ctx *ctx, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return anc_ok();
    ENTER(ctx);
    CUDA_TRY("cudaMemcpyAsync(DeviceToDevice)",
             cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx->stream));
    return anc_ok();
}

extern "C" anc_status anc_enable_peer(int device, int peer, int *enabled) {
    *enabled = 0;
    if (device == peer) return anc_ok();
    int can = 0;
    CUDA_TRY("cudaDeviceCanAccessPeer", cudaDeviceCanAccessPeer(&can, device, peer));
    if (!can) return anc_ok();
    CUDA_TRY("cudaSetDevice", cudaSetDevice(device));
    cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) {
        cudaGetLastError(); // clear the sticky "already enabled" so later checks do not see it
    } else if (e != cudaSuccess) {
        return anc_fail(ANC_CUDA, (int)e, "cudaDeviceEnablePeerAccess", cudaGetErrorString(e));
    }
    *enabled = 1;
    return anc_ok();
}

extern "C" anc_status anc_copy_2d(anc_ctx *ctx, void *dst, size_t dpitch, const void *src,
                                  size_t spitch, size_t width, size_t count) {
    if (width == 0 || count == 0) return anc_ok();
    ENTER(ctx);
    // cudaMemcpyDefault: with unified addressing the runtime finds each pointer's device and
    // uses a peer copy where peer access is enabled (anc_enable_peer), else stages through host.
    CUDA_TRY("cudaMemcpy2DAsync(peer)",
             cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, count, cudaMemcpyDefault,
                               ctx->stream));
    return anc_ok();
}

extern "C" anc_status anc_synchronize(anc_ctx *ctx) {
    ENTER(ctx);
    CUDA_TRY("cudaStreamSynchronize", cudaStreamSynchronize(ctx->stream));
    // Errors of earlier kernels that were launched fine but failed while running.
    CUDA_TRY("cudaGetLastError", cudaGetLastError());
    return anc_ok();
}
