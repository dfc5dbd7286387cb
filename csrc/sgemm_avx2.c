/* Single-threaded fp32 GEMM for x86_64 with AVX2 + FMA: the 6x16 micro-kernel inside the BLIS
 * loop nest of csrc/sgemm_blis.inc.
 *
 * The micro-kernel does, per k step, 2 loads of B (16 floats), 6 broadcasts of A and 12 FMAs:
 * FMA-bound on Zen 2/3 (2 FMA pipes, latency 4-5, so 12 independent accumulators hide it).
 *
 * Compiled by build.rs with -O3 -mavx2 -mfma (this file only); the caller checks the CPU. */

#include "sgemm.h"

#include <immintrin.h>
#include <stddef.h>

#define MR 6
#define NR 16
#define KC 256  /* A micro-panel 6 KiB + B micro-panel 16 KiB: within a 32 KiB L1d */
#define MC 144  /* A block 144 x 256 floats = 144 KiB: within a 512 KiB L2 */
#define NC 4080 /* B block 256 x 4080 floats = 4 MiB: within the L3 */

/* C tile (6 x 16 at c, row stride rsc) = alpha * Apanel Bpanel + beta * C tile; with
 * beta == 0 the tile is not read. a, b: packed micro-panels (b 32-byte aligned). */
static inline void kernel_full(size_t kc, const float *restrict a, const float *restrict b,
                               float *restrict c, size_t rsc, float alpha, float beta) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    for (size_t i = 0; i < MR; ++i) {
        _mm_prefetch((const char *)(c + i * rsc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * rsc + NR - 1), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (size_t p = 0; p < kc; ++p) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), ai;
        ai = _mm256_broadcast_ss(a + 0);
        c00 = _mm256_fmadd_ps(ai, b0, c00);
        c01 = _mm256_fmadd_ps(ai, b1, c01);
        ai = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(ai, b0, c10);
        c11 = _mm256_fmadd_ps(ai, b1, c11);
        ai = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(ai, b0, c20);
        c21 = _mm256_fmadd_ps(ai, b1, c21);
        ai = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(ai, b0, c30);
        c31 = _mm256_fmadd_ps(ai, b1, c31);
        ai = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(ai, b0, c40);
        c41 = _mm256_fmadd_ps(ai, b1, c41);
        ai = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(ai, b0, c50);
        c51 = _mm256_fmadd_ps(ai, b1, c51);
        a += MR;
        b += NR;
    }
    const __m256 va = _mm256_set1_ps(alpha);
#define ROW(i, lo, hi)                                                                          \
    do {                                                                                        \
        float *ci = c + (i) * rsc;                                                              \
        if (beta == 0.0f) {                                                                     \
            _mm256_storeu_ps(ci, _mm256_mul_ps(va, lo));                                        \
            _mm256_storeu_ps(ci + 8, _mm256_mul_ps(va, hi));                                    \
        } else {                                                                                \
            const __m256 vb = _mm256_set1_ps(beta);                                             \
            _mm256_storeu_ps(ci, _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci), _mm256_mul_ps(va, lo))); \
            _mm256_storeu_ps(ci + 8,                                                            \
                             _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + 8), _mm256_mul_ps(va, hi))); \
        }                                                                                       \
    } while (0)
    ROW(0, c00, c01);
    ROW(1, c10, c11);
    ROW(2, c20, c21);
    ROW(3, c30, c31);
    ROW(4, c40, c41);
    ROW(5, c50, c51);
#undef ROW
}

/* The whole 6 x 16 product into t (row stride NR), for an edge tile; returns the stride. */
static size_t kernel_buffered(size_t kc, const float *a, const float *b, float *t, size_t nr) {
    (void)nr;
    kernel_full(kc, a, b, t, NR, 1.0f, 0.0f);
    return NR;
}

#define SGEMM_FN alexnet_sgemm_avx2
#include "sgemm_blis.inc"
