/* The transforms of the CPU engine's Winograd convolution (src/engine/cpu/winograd.rs holds the
 * algorithm and the GEMMs between these): input tiles to the transformed domain, transformed
 * products back to output tiles, and output-tile gradients to the transformed domain, each for
 * one unit (one image's planes of one group), on 8 consecutive tiles at once (one AVX2 register
 * per transformed value; a register may span tile rows); and filters to the transformed domain
 * and the transformed weight gradient back, for one output channel, 8 filters per register.
 *
 * Layouts: planes are row-major; the transformed arrays V, M and Q are [channels][alpha^2][stride]
 * with the unit's tiles at columns t0 .. t0 + th*tw (tile (ty, tx) at t0 + ty*tw + tx). The
 * caller sizes stride >= t0 + th*tw + 8: whole registers are loaded and stored past the unit's
 * last tile (what lands there is overwritten by the next unit, or lies in the padding).
 * Each takes a scratch plane `pad` of at least ((th-1)*m + alpha) * ((tw-1)*m + alpha) floats: the unit's planes are
 * copied there one at a time with zeros around them, so that no tile's load needs a bounds check.
 * The caller must have checked that the CPU has AVX2 and FMA. */
#ifndef ALEXNET_WINOGRAD_H
#define ALEXNET_WINOGRAD_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The tiles F(m x m, r x r) these transforms know (their matrices are in winograd_avx2.c and,
 * for the tests and the filter transforms, in winograd.rs). */
enum AlexnetWinoTile { ALEXNET_WINO_F4X3 = 0, ALEXNET_WINO_F3X5 = 1 };

/* One unit's geometry: channels in and out, input map h x w, output map ho x wo, zero padding,
 * th x tw tiles. */
typedef struct {
    size_t cin, cout, h, w, ho, wo, pad, th, tw;
} AlexnetWinoGeo;

/* V[c][xi][t0 + tile] = (B^T d B)[xi] for every input tile d of x ([cin][h][w]), zero outside. */
void alexnet_wino_input(int tile, const AlexnetWinoGeo *g, const float *x, float *v, size_t vs,
                        size_t t0, float *pad);
/* Q[k][xi][t0 + tile] = (A dy A^T)[xi] for every m x m tile of dy ([cout][ho][wo]), zero past
 * the edge. */
void alexnet_wino_gradient(int tile, const AlexnetWinoGeo *g, const float *dy, float *q,
                           size_t qs, size_t t0, float *pad);
/* y[k] = A^T M[k][.] A (+ bias[k] unless bias is NULL) for every tile, into y ([cout][ho][wo]),
 * dropping the outputs past the edge. */
void alexnet_wino_output(int tile, const AlexnetWinoGeo *g, const float *m, size_t ms, size_t t0,
                         const float *bias, float *y, float *pad);

/* u[xi][i] = (G f_i G^T)[xi] for the cin r x r filters f_i of one output channel, tap (a, b) of
 * f_i at w[i*is + a*r + b] (flip: at w[i*is + (r-1-a)*r + r-1-b], rotated by 180 degrees). */
void alexnet_wino_filters(int tile, const float *w, size_t is, int flip, size_t cin, float *u);
/* dw[i][a][b] = (G^T dU_i G)(a, b) from du[xi][i], for the cin filters of one output channel. */
void alexnet_wino_filter_grads(int tile, const float *du, size_t cin, float *dw);

#ifdef __cplusplus
}
#endif

#endif
