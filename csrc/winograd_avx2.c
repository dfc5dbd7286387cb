/* The Winograd convolution's transforms with AVX2 + FMA (see winograd.h): each transform is
 * L p L^T on an alpha x alpha (or m x m) block of registers, 8 tiles per register. The tiles'
 * matrices are constants here, and every loop below has a constant trip count once the generic
 * function is inlined into its tile's instance, so the compiler unrolls the products, drops the
 * zero coefficients and turns the +-1 ones into adds and subtracts.
 *
 * The matrices must equal those of src/engine/cpu/winograd.rs (its tests compare these
 * transforms with its f64 ones on every tile).
 *
 * Compiled by build.rs with -O3 -mavx2 -mfma (with the AVX2 sgemm); the caller checks the CPU. */

#include "winograd.h"

#include <immintrin.h>
#include <stddef.h>

#define LANES 8
#define MAX_ALPHA 7
#define INLINE static inline __attribute__((always_inline))

/* F(4x4, 3x3), points 0, +-1, +-2, inf. */
static const float AT_F4X3[4 * 6] = {
    1, 1, 1, 1, 1, 0,
    0, 1, -1, 2, -2, 0,
    0, 1, 1, 4, 4, 0,
    0, 1, -1, 8, -8, 1,
};
static const float BT_F4X3[6 * 6] = {
    4, 0, -5, 0, 1, 0,
    0, -4, -4, 1, 1, 0,
    0, 4, -4, -1, 1, 0,
    0, -2, -1, 2, 1, 0,
    0, 2, -1, -2, 1, 0,
    0, 4, 0, -5, 0, 1,
};
static const float G_F4X3[6 * 3] = {
    1.0f / 4, 0, 0,
    -1.0f / 6, -1.0f / 6, -1.0f / 6,
    -1.0f / 6, 1.0f / 6, -1.0f / 6,
    1.0f / 24, 1.0f / 12, 1.0f / 6,
    1.0f / 24, -1.0f / 12, 1.0f / 6,
    0, 0, 1,
};
/* F(3x3, 5x5), points 0, +-1, +-2, 1/2, inf. */
static const float AT_F3X5[3 * 7] = {
    1, 1, 1, 1, 1, 1, 0,
    0, 1, -1, 2, -2, 0.5f, 0,
    0, 1, 1, 4, 4, 0.25f, 1,
};
static const float G_F3X5[7 * 5] = {
    -1.0f / 2, 0, 0, 0, 0,
    -1.0f / 3, -1.0f / 3, -1.0f / 3, -1.0f / 3, -1.0f / 3,
    1.0f / 9, -1.0f / 9, 1.0f / 9, -1.0f / 9, 1.0f / 9,
    1.0f / 36, 1.0f / 18, 1.0f / 9, 2.0f / 9, 4.0f / 9,
    -1.0f / 60, 1.0f / 30, -1.0f / 15, 2.0f / 15, -4.0f / 15,
    32.0f / 45, 16.0f / 45, 8.0f / 45, 4.0f / 45, 2.0f / 45,
    0, 0, 0, 0, 1,
};
static const float BT_F3X5[7 * 7] = {
    -2, 4, 2.5f, -5, -0.5f, 1, 0,
    0, 2, -2, -4.5f, 0.5f, 1, 0,
    0, -2, 6, -3.5f, -1.5f, 1, 0,
    0, 1, -1.5f, -2, 1.5f, 1, 0,
    0, -1, 2.5f, 0, -2.5f, 1, 0,
    0, 4, 0, -5, 0, 1, 0,
    0, -2, 4, 2.5f, -5, -0.5f, 1,
};

/* sum_u c[u*cs] * p[u*ps] over the nonzero coefficients (+-1 as adds and subtracts). */
INLINE __m256 combine(const int k, const float *c, const int cs, const __m256 *p, const int ps) {
    __m256 acc = _mm256_setzero_ps();
    int first = 1;
#pragma GCC unroll 8
    for (int u = 0; u < k; ++u) {
        const float cu = c[u * cs];
        if (cu == 0.0f) continue;
        const __m256 x = p[u * ps];
        if (first) {
            acc = cu == 1.0f    ? x
                  : cu == -1.0f ? _mm256_sub_ps(_mm256_setzero_ps(), x)
                                : _mm256_mul_ps(_mm256_set1_ps(cu), x);
            first = 0;
        } else {
            acc = cu == 1.0f    ? _mm256_add_ps(acc, x)
                  : cu == -1.0f ? _mm256_sub_ps(acc, x)
                                : _mm256_fmadd_ps(_mm256_set1_ps(cu), x, acc);
        }
    }
    return acc;
}

/* out (n x n, row-major) = L p L^T with p k x k (row-major) and L(i, u) = l[i * rs + u * cs]. */
INLINE void sandwich(const int n, const int k, const float *l, const int rs, const int cs,
                     const __m256 *p, __m256 *out) {
    __m256 t[MAX_ALPHA * MAX_ALPHA];
#pragma GCC unroll 8
    for (int i = 0; i < n; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < k; ++j) t[i * k + j] = combine(k, l + i * rs, cs, p + j, k);
#pragma GCC unroll 8
    for (int i = 0; i < n; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < n; ++j) out[i * n + j] = combine(k, l + j * rs, cs, t + i * k, 1);
}

/* The plane offsets at which LANES consecutive tiles t0 .. t0 + LANES of a unit start in a
 * padded plane of width pw (tile (ty, tx) at ty*m*pw + tx*m); lanes past the unit's last tile
 * get tile 0 (they read valid memory, and what they produce goes past the unit's columns).
 * Returns the number of real lanes. */
INLINE int lanes_at(const int M, size_t t0, size_t tiles, size_t tw, size_t pw,
                    size_t off[LANES]) {
    for (int l = 0; l < LANES; ++l) {
        const size_t t = t0 + l < tiles ? t0 + l : 0;
        off[l] = (t / tw) * M * pw + (t % tw) * M;
    }
    return tiles - t0 < LANES ? (int)(tiles - t0) : LANES;
}

/* pb (ph x pw) = the h x w plane placed at (top, left), zeros around it (the plane's part past
 * ph x pw is not needed by any tile). */
static void padded(const float *plane, size_t h, size_t w, size_t top, size_t left, size_t ph,
                   size_t pw, float *pb) {
    const size_t rows = h + top < ph ? h : ph - top, cols = w + left < pw ? w : pw - left;
    for (size_t y = 0; y < ph; ++y) {
        float *dst = pb + y * pw;
        if (y < top || y >= top + rows) {
            for (size_t x = 0; x < pw; ++x) dst[x] = 0.0f;
            continue;
        }
        const float *src = plane + (y - top) * w;
        for (size_t x = 0; x < left; ++x) dst[x] = 0.0f;
        for (size_t x = 0; x < cols; ++x) dst[left + x] = src[x];
        for (size_t x = left + cols; x < pw; ++x) dst[x] = 0.0f;
    }
}

/* p[u*n + j] = the lanes' n x n blocks of pb, element (u, j). */
INLINE void gather(const int n, const float *pb, size_t pw, const size_t off[LANES],
                   __m256 *p) {
    _Alignas(32) float d[LANES];
    for (int u = 0; u < n; ++u)
        for (int j = 0; j < n; ++j) {
            for (int l = 0; l < LANES; ++l) d[l] = pb[off[l] + u * pw + j];
            p[u * n + j] = _mm256_load_ps(d);
        }
}

INLINE void input_tiles(const int M, const int A, const float *bt, const AlexnetWinoGeo *g,
                        const float *x, float *v, size_t vs, size_t t0, float *pb) {
    const size_t tiles = g->th * g->tw;
    const size_t ph = (g->th - 1) * M + A, pw = (g->tw - 1) * M + A;
    __m256 p[MAX_ALPHA * MAX_ALPHA], out[MAX_ALPHA * MAX_ALPHA];
    size_t off[LANES];
    for (size_t c = 0; c < g->cin; ++c) {
        padded(x + c * g->h * g->w, g->h, g->w, g->pad, g->pad, ph, pw, pb);
        float *dst = v + c * A * A * vs + t0;
        for (size_t tg = 0; tg < tiles; tg += LANES) {
            lanes_at(M, tg, tiles, g->tw, pw, off);
            gather(A, pb, pw, off, p);
            sandwich(A, A, bt, A, 1, p, out);
            for (int xi = 0; xi < A * A; ++xi) _mm256_storeu_ps(dst + xi * vs + tg, out[xi]);
        }
    }
}

INLINE void gradient_tiles(const int M, const int A, const float *at, const AlexnetWinoGeo *g,
                           const float *dy, float *q, size_t qs, size_t t0, float *pb) {
    const size_t tiles = g->th * g->tw;
    const size_t ph = g->th * M, pw = g->tw * M;
    __m256 p[MAX_ALPHA * MAX_ALPHA], out[MAX_ALPHA * MAX_ALPHA];
    size_t off[LANES];
    for (size_t k = 0; k < g->cout; ++k) {
        padded(dy + k * g->ho * g->wo, g->ho, g->wo, 0, 0, ph, pw, pb);
        float *dst = q + k * A * A * qs + t0;
        for (size_t tg = 0; tg < tiles; tg += LANES) {
            lanes_at(M, tg, tiles, g->tw, pw, off);
            gather(M, pb, pw, off, p);
            /* A = (A^T)^T: A(x, i) = at[i * A + x]. */
            sandwich(A, M, at, 1, A, p, out);
            for (int xi = 0; xi < A * A; ++xi) _mm256_storeu_ps(dst + xi * qs + tg, out[xi]);
        }
    }
}

INLINE void output_tiles(const int M, const int A, const float *at, const AlexnetWinoGeo *g,
                         const float *m, size_t ms, size_t t0, const float *bias, float *y,
                         float *pb) {
    const size_t tiles = g->th * g->tw;
    const size_t pw = g->tw * M;
    _Alignas(32) float o[LANES];
    __m256 p[MAX_ALPHA * MAX_ALPHA], out[MAX_ALPHA * MAX_ALPHA];
    size_t off[LANES];
    for (size_t k = 0; k < g->cout; ++k) {
        const __m256 b = _mm256_set1_ps(bias ? bias[k] : 0.0f);
        const float *src = m + k * A * A * ms + t0;
        for (size_t tg = 0; tg < tiles; tg += LANES) {
            const int lanes = lanes_at(M, tg, tiles, g->tw, pw, off);
            for (int xi = 0; xi < A * A; ++xi) p[xi] = _mm256_loadu_ps(src + xi * ms + tg);
            sandwich(M, A, at, A, 1, p, out);
            for (int i = 0; i < M; ++i)
                for (int j = 0; j < M; ++j) {
                    _mm256_store_ps(o, _mm256_add_ps(out[i * M + j], b));
                    for (int l = 0; l < lanes; ++l) pb[off[l] + i * pw + j] = o[l];
                }
        }
        float *plane = y + k * g->ho * g->wo;
        for (size_t oy = 0; oy < g->ho; ++oy)
            for (size_t ox = 0; ox < g->wo; ++ox) plane[oy * g->wo + ox] = pb[oy * pw + ox];
    }
}

/* u[xi][i] = (G f_i G^T)[xi] for the cin filters f_i of one output channel: tap (a, b) of f_i at
 * w[i * is + a * R + b], or at w[i * is + (R-1-a) * R + (R-1-b)] when flip (rotated by 180
 * degrees); 8 filters per register. */
INLINE void filter_tiles(const int R, const int A, const float *g, const float *w, size_t is,
                         int flip, size_t cin, float *u) {
    _Alignas(32) float d[LANES];
    __m256 p[MAX_ALPHA * MAX_ALPHA], out[MAX_ALPHA * MAX_ALPHA];
    for (size_t i0 = 0; i0 < cin; i0 += LANES) {
        const size_t lanes = cin - i0 < LANES ? cin - i0 : LANES;
        for (int a = 0; a < R; ++a)
            for (int b = 0; b < R; ++b) {
                const size_t tap = flip ? (size_t)((R - 1 - a) * R + R - 1 - b) : (size_t)(a * R + b);
                for (size_t l = 0; l < LANES; ++l) d[l] = l < lanes ? w[(i0 + l) * is + tap] : 0.0f;
                p[a * R + b] = _mm256_load_ps(d);
            }
        sandwich(A, R, g, R, 1, p, out);
        for (int xi = 0; xi < A * A; ++xi) {
            float *dst = u + xi * cin + i0;
            if (lanes == LANES) {
                _mm256_storeu_ps(dst, out[xi]);
            } else {
                _mm256_store_ps(d, out[xi]);
                for (size_t l = 0; l < lanes; ++l) dst[l] = d[l];
            }
        }
    }
}

/* dw[i][a][b] = (G^T dU_i G)(a, b) for the cin input channels of one output channel, from
 * du[xi][i]. */
INLINE void filter_grads(const int R, const int A, const float *g, const float *du, size_t cin,
                         float *dw) {
    _Alignas(32) float d[LANES];
    __m256 p[MAX_ALPHA * MAX_ALPHA], out[MAX_ALPHA * MAX_ALPHA];
    for (size_t i0 = 0; i0 < cin; i0 += LANES) {
        const size_t lanes = cin - i0 < LANES ? cin - i0 : LANES;
        for (int xi = 0; xi < A * A; ++xi) {
            const float *src = du + xi * cin + i0;
            if (lanes == LANES) {
                p[xi] = _mm256_loadu_ps(src);
            } else {
                for (size_t l = 0; l < LANES; ++l) d[l] = l < lanes ? src[l] : 0.0f;
                p[xi] = _mm256_load_ps(d);
            }
        }
        /* G^T (R x A): G^T(a, x) = g[x * R + a]. */
        sandwich(R, A, g, 1, R, p, out);
        for (int tap = 0; tap < R * R; ++tap) {
            _mm256_store_ps(d, out[tap]);
            for (size_t l = 0; l < lanes; ++l) dw[(i0 + l) * R * R + tap] = d[l];
        }
    }
}

void alexnet_wino_filters(int tile, const float *w, size_t is, int flip, size_t cin, float *u) {
    switch (tile) {
    case ALEXNET_WINO_F4X3: filter_tiles(3, 6, G_F4X3, w, is, flip, cin, u); break;
    case ALEXNET_WINO_F3X5: filter_tiles(5, 7, G_F3X5, w, is, flip, cin, u); break;
    }
}

void alexnet_wino_filter_grads(int tile, const float *du, size_t cin, float *dw) {
    switch (tile) {
    case ALEXNET_WINO_F4X3: filter_grads(3, 6, G_F4X3, du, cin, dw); break;
    case ALEXNET_WINO_F3X5: filter_grads(5, 7, G_F3X5, du, cin, dw); break;
    }
}

void alexnet_wino_input(int tile, const AlexnetWinoGeo *g, const float *x, float *v, size_t vs,
                        size_t t0, float *pad) {
    switch (tile) {
    case ALEXNET_WINO_F4X3: input_tiles(4, 6, BT_F4X3, g, x, v, vs, t0, pad); break;
    case ALEXNET_WINO_F3X5: input_tiles(3, 7, BT_F3X5, g, x, v, vs, t0, pad); break;
    }
}

void alexnet_wino_gradient(int tile, const AlexnetWinoGeo *g, const float *dy, float *q,
                           size_t qs, size_t t0, float *pad) {
    switch (tile) {
    case ALEXNET_WINO_F4X3: gradient_tiles(4, 6, AT_F4X3, g, dy, q, qs, t0, pad); break;
    case ALEXNET_WINO_F3X5: gradient_tiles(3, 7, AT_F3X5, g, dy, q, qs, t0, pad); break;
    }
}

void alexnet_wino_output(int tile, const AlexnetWinoGeo *g, const float *m, size_t ms, size_t t0,
                         const float *bias, float *y, float *pad) {
    switch (tile) {
    case ALEXNET_WINO_F4X3: output_tiles(4, 6, AT_F4X3, g, m, ms, t0, bias, y, pad); break;
    case ALEXNET_WINO_F3X5: output_tiles(3, 7, AT_F3X5, g, m, ms, t0, bias, y, pad); break;
    }
}
