/*
 * The FFI surface of the CUDA engine: plain C, no CUDA includes, so bindgen needs only libclang.
 *
 * Conventions:
 * - every function returns an anc_status; code == 0 means success. On failure `call` names the
 *   CUDA/cuBLAS call or kernel launch that failed and `msg` holds the library's error string;
 * - device pointers are `float *` / `void *` obtained from anc_malloc; tensors are f32, NCHW,
 *   contiguous, weights in PyTorch's layouts (see src/engine/mod.rs);
 * - work is queued on the context's stream; only anc_download, anc_upload and anc_synchronize wait;
 * - shapes are validated on the Rust side before any of these is called: the kernels only guard
 *   their own indices.
 */
#ifndef ALEXNET_CUDA_H
#define ALEXNET_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Which library produced a failing anc_status.code (kind is 0 on success). */
enum anc_status_kind { ANC_CUDA = 1, ANC_CUBLAS = 2 };

typedef struct anc_status {
    int code;             /* cudaError_t or cublasStatus_t value */
    int kind;             /* enum anc_status_kind */
    char call[96];        /* e.g. "cudaMalloc" or "im2col<<<>>>" */
    char msg[160];        /* cudaGetErrorString / cublasGetStatusString */
} anc_status;

/* Engine context: device ordinal, stream, cuBLAS handle. Opaque to Rust. */
typedef struct anc_ctx anc_ctx;

/* Convolution geometry (mirrors engine::ConvShape). */
typedef struct anc_conv {
    int64_t n, c_in, h, w, c_out, kh, kw, stride, pad, groups;
} anc_conv;

/* ---- device and memory ---- */
anc_status anc_device_count(int *count);
/* Creates a context on `device`; writes the device name (NUL-terminated) into name[0..name_len). */
anc_status anc_create(int device, anc_ctx **out, char *name, size_t name_len);
void anc_destroy(anc_ctx *ctx);
/* TF32 tensor-core GEMMs on (1) or strict f32 (0). */
anc_status anc_set_tf32(anc_ctx *ctx, int on);
/* bf16 GEMM operands (rounded to nearest even; f32 products, sums and results) on (1) or off. */
anc_status anc_set_bf16(anc_ctx *ctx, int on);
anc_status anc_mem_info(int device, size_t *free_bytes, size_t *total_bytes);
anc_status anc_malloc(int device, size_t bytes, void **out);
anc_status anc_free(int device, void *ptr);
anc_status anc_memset_zero(anc_ctx *ctx, void *ptr, size_t bytes);
anc_status anc_upload(anc_ctx *ctx, void *dst, const void *src, size_t bytes);
anc_status anc_download(anc_ctx *ctx, void *dst, const void *src, size_t bytes);
/* Page-locked host memory for staging large uploads (freed with anc_host_free). */
anc_status anc_host_alloc(size_t bytes, void **out);
anc_status anc_host_free(void *ptr);
/* Queues a copy from page-locked `src` (does not wait; keep src untouched until synchronised). */
anc_status anc_upload_async(anc_ctx *ctx, void *dst, const void *src, size_t bytes);
anc_status anc_copy(anc_ctx *ctx, void *dst, const void *src, size_t bytes);
/* The prefetched batch on a copy stream of its own (created on first use): queues a copy from
 * page-locked `src` there, after the work queued so far on the context's stream, and returns.
 * anc_prefetch_join makes the context's stream wait for that copy (the host does not);
 * anc_prefetch_host_wait makes the host wait for it (before `src` is written again). Both do
 * nothing before the first anc_prefetch_upload. */
anc_status anc_prefetch_upload(anc_ctx *ctx, void *dst, const void *src, size_t bytes);
anc_status anc_prefetch_join(anc_ctx *ctx);
anc_status anc_prefetch_host_wait(anc_ctx *ctx);
/* The collective stream, for a communication library's kernels (NCCL's all-reduces of the
 * gradients) beside the compute stream (created on first use). anc_collective_fork makes it wait
 * for the work queued on the compute stream so far (the backward that wrote the gradients handed
 * over); anc_collective_join makes the compute stream wait for the work queued on it so far (the
 * sums, before the update reads them). Neither makes the host wait. */
anc_status anc_collective_stream(anc_ctx *ctx, void **stream);
anc_status anc_collective_fork(anc_ctx *ctx);
anc_status anc_collective_join(anc_ctx *ctx);
anc_status anc_synchronize(anc_ctx *ctx);
/* Lets `device` read and write `peer`'s memory directly (NVLink/PCIe peer copies). *enabled = 0
   where the pair cannot (copies then stage through host memory); not an error. */
anc_status anc_enable_peer(int device, int peer, int *enabled);
/* count blocks of width bytes, src at spitch, dst at dpitch; src may be on another device (UVA).
   Queued on ctx's stream (the destination's). */
anc_status anc_copy_2d(anc_ctx *ctx, void *dst, size_t dpitch, const void *src, size_t spitch,
                       size_t width, size_t count);

/* ---- pointwise ---- */
anc_status anc_fill(anc_ctx *ctx, float *x, size_t n, float value);
/* *result = sum of x[i]^2 in f64 over n values, in a fixed order (deterministic): `blocks`
 * blocks of 256 threads (1..1024) each write a partial sum to scratch[block], one block adds
 * them into scratch[blocks]; waits for the stream and copies that to *result. `scratch` holds
 * blocks + 1 doubles of device memory. */
anc_status anc_sum_of_squares(anc_ctx *ctx, const float *x, size_t n, size_t blocks,
                              double *scratch, double *result);
anc_status anc_scale(anc_ctx *ctx, float *x, size_t n, float a);
anc_status anc_relu_forward(anc_ctx *ctx, float *x, size_t n);
anc_status anc_relu_backward(anc_ctx *ctx, const float *y, float *dy, size_t n);
anc_status anc_tanh_forward(anc_ctx *ctx, float *x, size_t n);
anc_status anc_tanh_backward(anc_ctx *ctx, const float *y, float *dy, size_t n);
/* x[i] = keep(seed, idx(i), p) ? x[i] * keep_scale : 0, keep = SplitMix64 rule of src/rng.rs,
   idx(i) = (i / width) * total + offset + i % width (a column's slice of the layer's mask) */
anc_status anc_dropout(anc_ctx *ctx, float *x, size_t n, float p, float keep_scale, uint64_t seed,
                       size_t width, size_t total, size_t offset);
/* dst += src */
anc_status anc_add(anc_ctx *ctx, float *dst, const float *src, size_t n);
/* v = momentum*v - weight_decay*lr*w - lr*dw ; w = w + v */
anc_status anc_sgd_update(anc_ctx *ctx, float *w, const float *dw, float *v, size_t n, float lr,
                          float momentum, float weight_decay);

/* ---- convolution (im2col + cuBLAS) ----
 * `scratch` holds at least anc_conv_scratch_floats(s, chunk, channel_major) floats, with
 * channel_major = 1 for backward-weights and for forward / backward-data with whole_chunk; the
 * batch is processed `chunk` images at a time. whole_chunk = 1: one GEMM of m = chunk*Ho*Wo per
 * group instead of `chunk` strided-batched GEMMs of m = Ho*Wo. */
size_t anc_conv_scratch_floats(const anc_conv *s, int64_t chunk, int channel_major);
/* y[N,Cout,Ho,Wo] = conv(x[N,Cin,H,W], w[Cout,Cin/g,kh,kw]) + b[Cout] */
anc_status anc_conv_forward(anc_ctx *ctx, const anc_conv *s, int64_t chunk, int whole_chunk,
                            const float *x, const float *w, const float *b, float *y,
                            float *scratch);
/* dx[N,Cin,H,W] = conv_transpose(dy[N,Cout,Ho,Wo], w) */
anc_status anc_conv_backward_data(anc_ctx *ctx, const anc_conv *s, int64_t chunk, int whole_chunk,
                                  const float *dy, const float *w, float *dx, float *scratch);
/* dw[Cout,Cin/g,kh,kw] = sum_n dy ⋆ x ; db[Cout] = sum dy (overwritten) */
anc_status anc_conv_backward_weights(anc_ctx *ctx, const anc_conv *s, int64_t chunk,
                                     const float *x, const float *dy, float *dw, float *db,
                                     float *scratch);

/* ---- fully connected ---- */
/* y[N,out] = x[N,in] w[out,in]^T + b[out] */
anc_status anc_fc_forward(anc_ctx *ctx, int64_t n, int64_t d_in, int64_t d_out, const float *x,
                          const float *w, const float *b, float *y);
/* dx[N,in] = dy w (skipped when dx is NULL); dw[out,in] = dy^T x; db[out] = sum_n dy */
anc_status anc_fc_backward(anc_ctx *ctx, int64_t n, int64_t d_in, int64_t d_out, const float *x,
                           const float *w, const float *dy, float *dx, float *dw, float *db);

/* ---- LRN across channels; the c channels form `groups` independent columns ---- */
/* scale = k + alpha * sum_window x^2 ; y = x * scale^-beta  (alpha already divided by n if asked) */
anc_status anc_lrn_forward(anc_ctx *ctx, int64_t n, int64_t c, int64_t hw, int64_t groups,
                           int64_t size, float alpha, float beta, float k, const float *x, float *y,
                           float *scale);
anc_status anc_lrn_backward(anc_ctx *ctx, int64_t n, int64_t c, int64_t hw, int64_t groups,
                            int64_t size, float alpha, float beta, const float *x, const float *y,
                            const float *scale, const float *dy, float *dx);
/* The same two, one thread per pixel walking the channels with a running window sum. */
anc_status anc_lrn_forward_by_pixel(anc_ctx *ctx, int64_t n, int64_t c, int64_t hw, int64_t groups,
                                    int64_t size, float alpha, float beta, float k, const float *x,
                                    float *y, float *scale);
anc_status anc_lrn_backward_by_pixel(anc_ctx *ctx, int64_t n, int64_t c, int64_t hw,
                                     int64_t groups, int64_t size, float alpha, float beta,
                                     const float *x, const float *y, const float *scale,
                                     const float *dy, float *dx);

/* ---- overlapping max pooling (no padding; ties: first maximum in row-major order) ---- */
anc_status anc_maxpool_forward(anc_ctx *ctx, int64_t nc, int64_t h, int64_t w, int64_t size,
                               int64_t stride, const float *x, float *y);
/* dx from dy; `first` is scratch for nc*Ho*Wo int32 (each window's first-maximum offset) */
anc_status anc_maxpool_backward(anc_ctx *ctx, int64_t nc, int64_t h, int64_t w, int64_t size,
                                int64_t stride, const float *x, const float *dy, float *dx,
                                int32_t *first);

/* ---- average pooling (no padding; the windows of max pooling) ---- */
anc_status anc_avgpool_forward(anc_ctx *ctx, int64_t nc, int64_t h, int64_t w, int64_t size,
                               int64_t stride, const float *x, float *y);
/* dx = each dy / size^2, summed over the windows that hold the input */
anc_status anc_avgpool_backward(anc_ctx *ctx, int64_t nc, int64_t h, int64_t w, int64_t size,
                                int64_t stride, const float *dy, float *dx);

/* ---- softmax, cross-entropy, top-k ---- */
/* probs[N,K] = softmax(logits) */
anc_status anc_softmax(anc_ctx *ctx, int64_t n, int64_t classes, const float *logits,
                       float *probs);
/* probs = softmax(logits); loss[n] = -ln probs[n, labels[n]]; dlogits = (probs - onehot) / N */
anc_status anc_softmax_xent(anc_ctx *ctx, int64_t n, int64_t classes, const float *logits,
                            const uint32_t *labels, float *probs, float *dlogits, float *loss);

#ifdef __cplusplus
}
#endif

#endif /* ALEXNET_CUDA_H */
