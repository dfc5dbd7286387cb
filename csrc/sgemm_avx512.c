/* Single-threaded fp32 GEMM for x86_64 with AVX-512F: the 12x32 micro-kernel inside the BLIS
 * loop nest of csrc/sgemm_blis.inc.
 *
 * The micro-kernel does, per k step, 2 loads of B (32 floats), 12 broadcasts of A and 24 FMAs
 * into 24 zmm accumulators: FMA-bound on cores with two 512-bit FMA pipes (Skylake-SP and later
 * Xeons: 64 flops per cycle, 2.7x the AVX2 kernel's measured rate on this project's 2-core box),
 * and 14 loads per 12 cycles leave the load ports room. 12 rows divide the convolutions' output
 * channels per group (48, 96, 192, 384) and the backward-data shapes (1200, 1728, 2304).
 * An edge tile with at most 16 valid columns (conv3-5's n = 169 = 5 x 32 + 9) runs a 12x16
 * kernel, so the padding costs 7 columns, not 23.
 *
 * Compiled by build.rs with -O3 -mavx512f -mfma (this file only); the caller checks the CPU. */

#include "sgemm.h"

#include <immintrin.h>
#include <stddef.h>

#define MR 12
#define NR 32
#define KC 256 /* A micro-panel 12 KiB + B micro-panel 32 KiB: within a 48 KiB L1d */
#define MC 240 /* A block 240 x 256 floats = 240 KiB: within a 2 MiB L2 */
#define NC 4096 /* B block 256 x 4096 floats = 4 MiB: within the L3 */

/* Row i of the tile: one broadcast of A, FMAs into the row's accumulators. */
#define FMA2(i)                                                                                 \
    ai = _mm512_set1_ps(a[i]);                                                                  \
    c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);                                                 \
    c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1)
#define FMA1(i)                                                                                 \
    ai = _mm512_set1_ps(a[i]);                                                                  \
    c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0)
#define ZERO2(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps()
#define ZERO1(i) __m512 c##i##0 = _mm512_setzero_ps()
#define FOR_ROWS(X) X(0); X(1); X(2); X(3); X(4); X(5); X(6); X(7); X(8); X(9); X(10); X(11)

/* One 16-float vector of C row i at column offset j: alpha * acc (+ beta * C). */
static inline void store16(float *ci, __m512 acc, float alpha, float beta) {
    const __m512 v = _mm512_mul_ps(_mm512_set1_ps(alpha), acc);
    if (beta == 0.0f)
        _mm512_storeu_ps(ci, v);
    else
        _mm512_storeu_ps(ci, _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_loadu_ps(ci), v));
}

/* C tile (12 x 32 at c, row stride rsc) = alpha * Apanel Bpanel + beta * C tile; with
 * beta == 0 the tile is not read. a, b: packed micro-panels (b 64-byte aligned). */
static inline void kernel_full(size_t kc, const float *restrict a, const float *restrict b,
                               float *restrict c, size_t rsc, float alpha, float beta) {
    FOR_ROWS(ZERO2);
    for (size_t i = 0; i < MR; ++i) {
        _mm_prefetch((const char *)(c + i * rsc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * rsc + NR - 1), _MM_HINT_T0);
    }
#pragma GCC unroll 2
    for (size_t p = 0; p < kc; ++p) {
        const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        __m512 ai;
        FOR_ROWS(FMA2);
        a += MR;
        b += NR;
    }
#define STORE2(i)                                                                               \
    store16(c + (i) * rsc, c##i##0, alpha, beta);                                               \
    store16(c + (i) * rsc + 16, c##i##1, alpha, beta)
    FOR_ROWS(STORE2);
#undef STORE2
}

/* The left half of the tile: 12 x 16 into t (row stride 16), from the same packed panels. */
static inline void kernel_half(size_t kc, const float *restrict a, const float *restrict b,
                               float *restrict t) {
    FOR_ROWS(ZERO1);
#pragma GCC unroll 4
    for (size_t p = 0; p < kc; ++p) {
        const __m512 b0 = _mm512_load_ps(b);
        __m512 ai;
        FOR_ROWS(FMA1);
        a += MR;
        b += NR;
    }
#define STORE1(i) _mm512_store_ps(t + (i) * 16, c##i##0)
    FOR_ROWS(STORE1);
#undef STORE1
}

/* The product's first nr <= 32 columns into t, for an edge tile; returns t's row stride. */
static size_t kernel_buffered(size_t kc, const float *a, const float *b, float *t, size_t nr) {
    if (nr <= 16) {
        kernel_half(kc, a, b, t);
        return 16;
    }
    kernel_full(kc, a, b, t, NR, 1.0f, 0.0f);
    return NR;
}

#define SGEMM_FN alexnet_sgemm_avx512
#include "sgemm_blis.inc"
