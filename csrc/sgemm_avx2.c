/* Single-threaded fp32 GEMM for x86_64 with AVX2 + FMA, BLIS-style (Van Zee & van de Geijn,
 * "BLIS: A Framework for Rapidly Instantiating BLAS Functionality", 2015):
 *
 *   for jc over n in blocks of NC            B block KC x NC: in L3
 *     for pc over k in blocks of <= KC       pack B(pc, jc) into NR-column micro-panels
 *       for ic over m in blocks of <= MC     pack A(ic, pc) into MR-row micro-panels: in L2
 *         for jr over the NC block by NR     one B micro-panel (KC x 16 = 16 KiB): in L1
 *           for ir over the MC block by MR   6x16 micro-kernel, C tile in 12 ymm registers
 *
 * The micro-kernel does, per k step, 2 loads of B (16 floats), 6 broadcasts of A and 12 FMAs:
 * FMA-bound on Zen 2/3 (2 FMA pipes, latency 4-5, so 12 independent accumulators hide it).
 * Edge tiles: packing pads A and B with zeros to whole micro-panels; the kernel then writes the
 * valid mr x nr corner of its tile through a small buffer. k and m are split into equal blocks
 * (k = 363 -> 2 x 182, not 256 + 107) so no block is a sliver.
 *
 * Compiled by build.rs with -O3 -mavx2 -mfma (this file only); the caller checks the CPU. No
 * global state: the packing buffers are allocated per call, so threads may call concurrently. */

#include "sgemm_avx2.h"

#include <immintrin.h>
#include <stdlib.h>

#define MR 6
#define NR 16
#define KC 256  /* A micro-panel 6 KiB + B micro-panel 16 KiB: within a 32 KiB L1d */
#define MC 144  /* A block 144 x 256 floats = 144 KiB: within a 512 KiB L2 */
#define NC 4080 /* B block 256 x 4080 floats = 4 MiB: within the L3 */

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }
static size_t div_ceil(size_t a, size_t b) { return (a + b - 1) / b; }
static size_t round_up(size_t a, size_t b) { return div_ceil(a, b) * b; }

static void *alloc64(size_t bytes) {
#ifdef _MSC_VER
    return _aligned_malloc(bytes, 64);
#else
    return aligned_alloc(64, round_up(bytes, 64)); /* C11: size a multiple of the alignment */
#endif
}

static void free64(void *p) {
#ifdef _MSC_VER
    _aligned_free(p);
#else
    free(p);
#endif
}

/* Transposes the 8x8 block held in r[0..8] (rows) in place. */
static inline void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* Packs the mc x kc block of A at `a` into MR-row micro-panels: panel q holds rows
 * q*MR .. q*MR+MR as dst[q*MR*kc + p*MR + i] = A(q*MR + i, p), rows past mc zero. */
static void pack_a(size_t mc, size_t kc, const float *a, size_t rsa, size_t csa, float *dst) {
    for (size_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
        const float *ap = a + i0 * rsa;
        size_t mr = min_sz(MR, mc - i0);
        if (mr == MR && csa == 1) {
            /* Rows contiguous in k (A row-major): six streams. */
            const float *r0 = ap, *r1 = ap + rsa, *r2 = ap + 2 * rsa, *r3 = ap + 3 * rsa,
                        *r4 = ap + 4 * rsa, *r5 = ap + 5 * rsa;
            for (size_t p = 0; p < kc; ++p) {
                float *d = dst + p * MR;
                d[0] = r0[p];
                d[1] = r1[p];
                d[2] = r2[p];
                d[3] = r3[p];
                d[4] = r4[p];
                d[5] = r5[p];
            }
        } else if (mr == MR && rsa == 1) {
            /* Columns contiguous (A transposed): six consecutive floats per k step. */
            for (size_t p = 0; p < kc; ++p) {
                const float *s = ap + p * csa;
                float *d = dst + p * MR;
                for (size_t i = 0; i < MR; ++i) d[i] = s[i];
            }
        } else {
            for (size_t p = 0; p < kc; ++p) {
                float *d = dst + p * MR;
                size_t i = 0;
                for (; i < mr; ++i) d[i] = ap[i * rsa + p * csa];
                for (; i < MR; ++i) d[i] = 0.0f;
            }
        }
    }
}

/* Packs the kc x nc block of B at `b` into NR-column micro-panels: panel q holds columns
 * q*NR .. q*NR+NR as dst[q*NR*kc + p*NR + j] = B(p, q*NR + j), columns past nc zero. */
static void pack_b(size_t kc, size_t nc, const float *b, size_t rsb, size_t csb, float *dst) {
    for (size_t j0 = 0; j0 < nc; j0 += NR, dst += NR * kc) {
        const float *bp = b + j0 * csb;
        size_t nr = min_sz(NR, nc - j0);
        if (nr == NR && csb == 1) {
            /* Rows contiguous (B row-major): 16 floats per k step. */
            for (size_t p = 0; p < kc; ++p) {
                const float *s = bp + p * rsb;
                _mm256_store_ps(dst + p * NR, _mm256_loadu_ps(s));
                _mm256_store_ps(dst + p * NR + 8, _mm256_loadu_ps(s + 8));
            }
        } else if (nr == NR && rsb == 1) {
            /* Columns contiguous (B transposed): 8x8 transposes, then the k tail. */
            size_t p = 0;
            for (; p + 8 <= kc; p += 8) {
                for (size_t h = 0; h < NR; h += 8) {
                    __m256 r[8];
                    for (size_t j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(bp + (h + j) * csb + p);
                    transpose8(r);
                    for (size_t q = 0; q < 8; ++q) _mm256_store_ps(dst + (p + q) * NR + h, r[q]);
                }
            }
            for (; p < kc; ++p)
                for (size_t j = 0; j < NR; ++j) dst[p * NR + j] = bp[j * csb + p];
        } else {
            for (size_t p = 0; p < kc; ++p) {
                float *d = dst + p * NR;
                size_t j = 0;
                for (; j < nr; ++j) d[j] = bp[p * rsb + j * csb];
                for (; j < NR; ++j) d[j] = 0.0f;
            }
        }
    }
}

/* C tile (6 x 16 at c, row stride rsc) = alpha * Apanel Bpanel + beta * C tile; with
 * beta == 0 the tile is not read. a, b: packed micro-panels (b 32-byte aligned). */
static inline void kernel_6x16(size_t kc, const float *restrict a, const float *restrict b,
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

/* An edge tile: the valid mr x nr corner of the 6 x 16 product goes into C. */
static void kernel_edge(size_t kc, const float *a, const float *b, float *c, size_t rsc,
                        float alpha, float beta, size_t mr, size_t nr) {
    _Alignas(64) float t[MR * NR];
    kernel_6x16(kc, a, b, t, NR, 1.0f, 0.0f);
    for (size_t i = 0; i < mr; ++i) {
        float *ci = c + i * rsc;
        const float *ti = t + i * NR;
        if (beta == 0.0f)
            for (size_t j = 0; j < nr; ++j) ci[j] = alpha * ti[j];
        else
            for (size_t j = 0; j < nr; ++j) ci[j] = beta * ci[j] + alpha * ti[j];
    }
}

int alexnet_sgemm_avx2(size_t m, size_t k, size_t n, float alpha, const float *a, size_t rsa,
                       size_t csa, const float *b, size_t rsb, size_t csb, float beta, float *c,
                       size_t rsc) {
    if (m == 0 || n == 0) return 0;
    if (k == 0) {
        for (size_t i = 0; i < m; ++i)
            for (size_t j = 0; j < n; ++j) c[i * rsc + j] = beta == 0.0f ? 0.0f : beta * c[i * rsc + j];
        return 0;
    }
    /* Equal blocks: k in ceil(k / KC) blocks of kc <= KC; m likewise in multiples of MR. */
    const size_t kc_max = div_ceil(k, div_ceil(k, KC));
    const size_t mc_max = round_up(div_ceil(m, div_ceil(m, MC)), MR);
    const size_t nc_max = min_sz(round_up(n, NR), NC);
    float *pa = alloc64(sizeof(float) * mc_max * kc_max);
    float *pb = alloc64(sizeof(float) * kc_max * nc_max);
    if (!pa || !pb) {
        free64(pa);
        free64(pb);
        return -1;
    }
    for (size_t jc = 0; jc < n; jc += NC) {
        const size_t nc = min_sz(NC, n - jc);
        for (size_t pc = 0; pc < k; pc += kc_max) {
            const size_t kc = min_sz(kc_max, k - pc);
            /* The first k block applies the caller's beta; the later ones accumulate. */
            const float beta_pc = pc == 0 ? beta : 1.0f;
            pack_b(kc, nc, b + pc * rsb + jc * csb, rsb, csb, pb);
            for (size_t ic = 0; ic < m; ic += mc_max) {
                const size_t mc = min_sz(mc_max, m - ic);
                pack_a(mc, kc, a + ic * rsa + pc * csa, rsa, csa, pa);
                for (size_t jr = 0; jr < nc; jr += NR) {
                    const size_t nr = min_sz(NR, nc - jr);
                    const float *bp = pb + jr * kc;
                    for (size_t ir = 0; ir < mc; ir += MR) {
                        const size_t mr = min_sz(MR, mc - ir);
                        const float *ap = pa + ir * kc;
                        float *cp = c + (ic + ir) * rsc + jc + jr;
                        if (mr == MR && nr == NR)
                            kernel_6x16(kc, ap, bp, cp, rsc, alpha, beta_pc);
                        else
                            kernel_edge(kc, ap, bp, cp, rsc, alpha, beta_pc, mr, nr);
                    }
                }
            }
        }
    }
    free64(pa);
    free64(pb);
    return 0;
}
