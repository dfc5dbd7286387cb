/* Single-threaded fp32 GEMMs for x86_64, called by the CPU engine through `extern "C"`
 * declarations in src/engine/cpu/gemm.rs: one per instruction set, same contract:
 * csrc/sgemm_avx2.c (AVX2 + FMA) and csrc/sgemm_avx512.c (AVX-512F). */
#ifndef ALEXNET_SGEMM_H
#define ALEXNET_SGEMM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* C = alpha * A B + beta * C, with A m x k, B k x n, C m x n; element strides:
 * A(i, l) = a[i * rsa + l * csa], B(l, j) = b[l * rsb + j * csb], C(i, j) = c[i * rsc + j]
 * (so A or B may be transposed through their strides; C's columns are contiguous).
 * With beta == 0, C is not read (it may hold NaN). C must not overlap A or B.
 * The caller must have checked that the CPU has the instruction set in the name.
 * Returns 0, or -1 (C untouched) if the packing buffers could not be allocated. */
int alexnet_sgemm_avx2(size_t m, size_t k, size_t n, float alpha, const float *a, size_t rsa,
                       size_t csa, const float *b, size_t rsb, size_t csb, float beta, float *c,
                       size_t rsc);
int alexnet_sgemm_avx512(size_t m, size_t k, size_t n, float alpha, const float *a, size_t rsa,
                         size_t csa, const float *b, size_t rsb, size_t csb, float beta, float *c,
                         size_t rsc);

#ifdef __cplusplus
}
#endif

#endif
