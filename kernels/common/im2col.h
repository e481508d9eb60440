/* Convolution lowering kernels, one source for OpenCL C and CUDA C++ (include dialect.h first).
 *
 * Layouts (all C-contiguous, row-major):
 *   x       input, N x C x H x W (NCHW)
 *   cols    im2col's matrix, N x (C * KH * KW) x (OH * OW): row (c, kh, kw), column (oh, ow)
 *   w       depthwise weight, (C * M) x 1 x KH x KW, output channel o = c * M + m reads
 *           input channel c = o / M (M = channel multiplier)
 *   out     N x (C * M) x OH x OW
 * Geometry: input (H, W), kernel (KH, KW), stride (SH, SW), padding (PH, PW), dilation
 * (DH, DW), output (OH, OW) with OH = (H + 2 PH - DH (KH - 1) - 1) / SH + 1 (the host checks
 * OH, OW >= 1).  Input row ih = oh * SH - PH + kh * DH; rows outside [0, H) read as zero.
 *
 * Every kernel is a grid-stride loop (any grid covers the work) with 64-bit indices, except
 * depthwise_conv2d_backward_weight, which needs work-groups of exactly CONV_WG items.
 * Tunables (defines): CONV_RUN, CONV_DW_RUN (outputs along a row per work-item; 1 gives one
 * work-item per element), CONV_WG.
 * Entry points, for each precision (suffix _f32 for float, _f64 for double):
 *   im2col_<p>(const REAL* x, REAL* cols, GEOMETRY)
 *       one work-item per run of CONV_RUN consecutive elements of a row of cols.
 *   col2im_<p>(const REAL* cols, REAL* x, GEOMETRY)
 *       im2col's adjoint: each input pixel sums, in (kh, kw) order, the column entries that
 *       read it (a gather: deterministic, no atomics); one work-item per run of CONV_RUN
 *       consecutive pixels of an input row.
 *   batch_sum_transpose_<p>(const REAL* in, REAL* out, i64 B, i64 R, i64 K)
 *       out (K x R) = sum over b < B of in[b]^T, in B x R x K; one work-item per output.
 *   depthwise_conv2d_<p>(const REAL* x, const REAL* w, REAL* out, i64 M, GEOMETRY)
 *       direct convolution for groups == C, one work-item per run of CONV_DW_RUN
 *       consecutive outputs of a row (the taps' weights and row checks are shared by the run).
 *   depthwise_conv2d_backward_input_<p>(const REAL* grad_out, const REAL* w, REAL* grad_x,
 *                                       i64 M, GEOMETRY)
 *       one work-item per input pixel, gathering over the M channels and KH x KW taps.
 *   depthwise_conv2d_backward_weight_<p>(const REAL* grad_out, const REAL* x, REAL* grad_w,
 *                                        i64 M, GEOMETRY)
 *       one work-group of CONV_WG items per weight element (grid-stride over weights): a
 *       strided sum over the N * OH * OW products, then a local-memory tree.
 * where GEOMETRY = i64 N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW.
 *
 * The including file defines REAL (the element type) and CONV_SUFFIX (_f32 or _f64); the
 * kernel part has no include guard, so a file may include this header once per precision.
 */
#include "dialect.h"

#ifndef GPUMAT_IM2COL_COMMON
#define GPUMAT_IM2COL_COMMON
#ifndef CONV_WG
#define CONV_WG 256   /* work-group size of depthwise_conv2d_backward_weight (a power of 2) */
#endif
#ifndef CONV_RUN
#define CONV_RUN 4    /* im2col: consecutive columns per work-item */
#endif
#ifndef CONV_DW_RUN
#define CONV_DW_RUN 4 /* depthwise_conv2d: consecutive outputs of a row per work-item */
#endif
#define CONV_CAT2(a, b) a##b
#define CONV_CAT(a, b) CONV_CAT2(a, b)
#define CONV_FN(name) CONV_CAT(name, CONV_SUFFIX)
#define CONV_GEOMETRY const i64 N, const i64 C, const i64 H, const i64 W, \
    const i64 KH, const i64 KW, const i64 SH, const i64 SW, const i64 PH, const i64 PW, \
    const i64 DH, const i64 DW, const i64 OH, const i64 OW

/* first index i >= 0 with i * s >= lo (s > 0) */
INLINE i64 conv_first_at_least(i64 lo, i64 s)
{
    return lo <= 0 ? 0 : (lo + s - 1) / s;
}
#endif

#if !defined(REAL) || !defined(CONV_SUFFIX)
#error "define REAL and CONV_SUFFIX before including im2col.h"
#endif

KERNEL void CONV_FN(im2col)(GLOBAL const REAL* RESTRICT x, GLOBAL REAL* RESTRICT cols,
                            CONV_GEOMETRY)
{
    /* a work-item fills a run of CONV_RUN columns of one row: the index maths is paid once
     * per run, and its writes are contiguous */
    const i64 runs = (OW + CONV_RUN - 1) / CONV_RUN;
    const i64 total = N * C * KH * KW * OH * runs;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        i64 r = t;
        const i64 ow0 = (r % runs) * CONV_RUN;  r /= runs;
        const i64 oh = r % OH;  r /= OH;
        const i64 row = r;                           /* (nc KH + kh) KW + kw: a row of cols */
        const i64 kw = r % KW;  r /= KW;
        const i64 kh = r % KH;
        const i64 nc = r / KH;                       /* n * C + c */
        const i64 ih = oh * SH - PH + kh * DH;
        const i64 iw0 = ow0 * SW - PW + kw * DW;
        GLOBAL REAL* dst = cols + (row * OH + oh) * OW + ow0;
        const i64 count = (OW - ow0 < CONV_RUN) ? OW - ow0 : CONV_RUN;
        if (ih < 0 || ih >= H) {                     /* a padding row: zeros */
            for (i64 j = 0; j < count; ++j) dst[j] = (REAL)0;
            continue;
        }
        GLOBAL const REAL* src = x + (nc * H + ih) * W;
        if (iw0 >= 0 && iw0 + (count - 1) * SW < W) {  /* the whole run inside the row */
            for (i64 j = 0; j < count; ++j) dst[j] = src[iw0 + j * SW];
        } else {
            for (i64 j = 0; j < count; ++j) {
                const i64 iw = iw0 + j * SW;
                dst[j] = (iw >= 0 && iw < W) ? src[iw] : (REAL)0;
            }
        }
    }
}

KERNEL void CONV_FN(col2im)(GLOBAL const REAL* RESTRICT cols, GLOBAL REAL* RESTRICT x,
                            CONV_GEOMETRY)
{
    /* a work-item sums a run of CONV_RUN pixels of one input row: the index maths and the
     * row taps (kh) are shared by the run; each pixel still adds its taps in (kh, kw) order */
    const i64 runs = (W + CONV_RUN - 1) / CONV_RUN;
    const i64 total = N * C * H * runs;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        const i64 iw0 = (t % runs) * CONV_RUN;
        const i64 r = t / runs;
        const i64 ih = r % H;
        const i64 nc = r / H;
        const i64 count = (W - iw0 < CONV_RUN) ? W - iw0 : CONV_RUN;
        GLOBAL const REAL* src = cols + nc * KH * KW * OH * OW;
        REAL acc[CONV_RUN];
        for (int j = 0; j < CONV_RUN; ++j) acc[j] = (REAL)0;
        for (i64 kh = 0; kh < KH; ++kh) {
            const i64 hp = ih + PH - kh * DH;        /* = oh * SH when tap kh reads row ih */
            if (hp < 0) break;                       /* hp only falls as kh grows */
            const i64 oh = SH == 1 ? hp : hp / SH;
            if (oh * SH != hp || oh >= OH) continue;
            for (i64 kw = 0; kw < KW; ++kw) {
                GLOBAL const REAL* crow = src + ((kh * KW + kw) * OH + oh) * OW;
                const i64 wp0 = iw0 + PW - kw * DW;  /* wp of the run's first pixel */
                for (int j = 0; j < CONV_RUN; ++j) {
                    const i64 wp = wp0 + j;
                    if (j >= count || wp < 0) continue;
                    const i64 ow = SW == 1 ? wp : wp / SW;
                    if (ow * SW == wp && ow < OW) acc[j] += crow[ow];
                }
            }
        }
        GLOBAL REAL* dst = x + (nc * H + ih) * W + iw0;
        for (int j = 0; j < CONV_RUN; ++j)
            if (j < count) dst[j] = acc[j];
    }
}

KERNEL void CONV_FN(batch_sum_transpose)(GLOBAL const REAL* RESTRICT in,
                                         GLOBAL REAL* RESTRICT out,
                                         const i64 B, const i64 R, const i64 K)
{
    /* out (K x R) = sum over b of in[b] (R x K) transposed: conv2d_backward_weight's per-image
     * (C kh kw) x O products summed over the batch into the O x (C kh kw) weight gradient,
     * adding the images in order */
    const i64 total = R * K;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        const i64 r = t % R;
        const i64 k = t / R;
        GLOBAL const REAL* src = in + r * K + k;
        REAL acc = (REAL)0;
        for (i64 b = 0; b < B; ++b) acc += src[b * R * K];
        out[t] = acc;
    }
}

KERNEL void CONV_FN(depthwise_conv2d)(GLOBAL const REAL* RESTRICT x, GLOBAL const REAL* RESTRICT w,
                                      GLOBAL REAL* RESTRICT out, const i64 M, CONV_GEOMETRY)
{
    /* the index maths and the row checks are paid once per run of outputs, and (stride 1)
     * neighbouring outputs read the same input values from cache */
    const i64 CM = C * M;
    const i64 runs = (OW + CONV_DW_RUN - 1) / CONV_DW_RUN;
    const i64 total = N * CM * OH * runs;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        i64 r = t;
        const i64 ow0 = (r % runs) * CONV_DW_RUN;  r /= runs;
        const i64 oh = r % OH;
        const i64 no = r / OH;                       /* n * CM + o */
        const i64 o = no % CM;
        const i64 n = no / CM;
        GLOBAL const REAL* xc = x + (n * C + o / M) * H * W;
        GLOBAL const REAL* wo = w + o * KH * KW;
        const i64 ih0 = oh * SH - PH, iw0 = ow0 * SW - PW;
        const i64 count = (OW - ow0 < CONV_DW_RUN) ? OW - ow0 : CONV_DW_RUN;
        /* every tap of every output of the run inside the row: no column checks */
        const int inside = count == CONV_DW_RUN && iw0 >= 0 &&
                           iw0 + (CONV_DW_RUN - 1) * SW + (KW - 1) * DW < W;
        REAL acc[CONV_DW_RUN];
        for (int j = 0; j < CONV_DW_RUN; ++j) acc[j] = (REAL)0;
        for (i64 kh = 0; kh < KH; ++kh) {
            const i64 ih = ih0 + kh * DH;
            if (ih < 0 || ih >= H) continue;
            GLOBAL const REAL* row = xc + ih * W;
            for (i64 kw = 0; kw < KW; ++kw) {
                const REAL wv = wo[kh * KW + kw];
                const i64 iw = iw0 + kw * DW;
                if (inside) {
                    for (int j = 0; j < CONV_DW_RUN; ++j) acc[j] += row[iw + j * SW] * wv;
                } else {
                    for (int j = 0; j < CONV_DW_RUN; ++j) {
                        const i64 col = iw + j * SW;
                        if (j < count && col >= 0 && col < W) acc[j] += row[col] * wv;
                    }
                }
            }
        }
        GLOBAL REAL* dst = out + (no * OH + oh) * OW + ow0;
        for (int j = 0; j < CONV_DW_RUN; ++j)
            if (j < count) dst[j] = acc[j];
    }
}

KERNEL void CONV_FN(depthwise_conv2d_backward_input)(GLOBAL const REAL* RESTRICT grad_out,
                                                     GLOBAL const REAL* RESTRICT w,
                                                     GLOBAL REAL* RESTRICT grad_x,
                                                     const i64 M, CONV_GEOMETRY)
{
    const i64 total = N * C * H * W;
    const i64 L = OH * OW;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        const i64 iw = t % W;
        const i64 r = t / W;
        const i64 ih = r % H;
        const i64 nc = r / H;                        /* n * C + c: channels c M .. c M + M - 1 */
        GLOBAL const REAL* g = grad_out + nc * M * L;
        GLOBAL const REAL* wc = w + (nc % C) * M * KH * KW;
        REAL acc = (REAL)0;
        for (i64 kh = 0; kh < KH; ++kh) {
            const i64 hp = ih + PH - kh * DH;
            if (hp < 0) break;
            const i64 oh = SH == 1 ? hp : hp / SH;
            if (oh * SH != hp || oh >= OH) continue;
            for (i64 kw = 0; kw < KW; ++kw) {
                const i64 wp = iw + PW - kw * DW;
                if (wp < 0) break;
                const i64 ow = SW == 1 ? wp : wp / SW;
                if (ow * SW != wp || ow >= OW) continue;
                /* the tap is valid for all M channels of the group: its index maths is shared */
                for (i64 m = 0; m < M; ++m)
                    acc += g[m * L + oh * OW + ow] * wc[(m * KH + kh) * KW + kw];
            }
        }
        grad_x[t] = acc;
    }
}

KERNEL void CONV_FN(depthwise_conv2d_backward_weight)(GLOBAL const REAL* RESTRICT grad_out,
                                                      GLOBAL const REAL* RESTRICT x,
                                                      GLOBAL REAL* RESTRICT grad_w,
                                                      const i64 M, CONV_GEOMETRY)
{
    LOCAL REAL partial[CONV_WG];
    const int lid = (int)LOCAL_ID_0;
    /* lanes of a group walk along output rows (coalesced), the rest of the group over rows */
    int lanes = 1;
    while (lanes < OW && lanes < 32) lanes <<= 1;
    const int lane = lid & (lanes - 1);
    const int row_step = CONV_WG / lanes;
    const int row0 = lid / lanes;
    const i64 CM = C * M;
    const i64 weights = CM * KH * KW;
    /* the loop bound is the same for every item of a group, so the barriers are uniform */
    for (i64 g = (i64)GROUP_ID_0; g < weights; g += (i64)NUM_GROUPS_0) {
        const i64 kw = g % KW;
        const i64 r = g / KW;
        const i64 kh = r % KH;
        const i64 o = r / KH;
        const i64 c = o / M;
        /* the outputs whose tap (kh, kw) lands inside the input: ih, iw in [0, H), [0, W) */
        const i64 oh_lo = conv_first_at_least(PH - kh * DH, SH);
        const i64 oh_hi0 = conv_first_at_least(H + PH - kh * DH, SH);
        const i64 ow_lo = conv_first_at_least(PW - kw * DW, SW);
        const i64 ow_hi0 = conv_first_at_least(W + PW - kw * DW, SW);
        const i64 oh_hi = oh_hi0 < OH ? oh_hi0 : OH;
        const i64 ow_hi = ow_hi0 < OW ? ow_hi0 : OW;
        const i64 rows = oh_hi > oh_lo ? oh_hi - oh_lo : 0;
        REAL acc = (REAL)0;
        for (i64 e = row0; e < N * rows; e += row_step) {
            const i64 n = e / rows;
            const i64 oh = oh_lo + (e - n * rows);
            const i64 ih = oh * SH - PH + kh * DH;
            GLOBAL const REAL* grow = grad_out + ((n * CM + o) * OH + oh) * OW;
            GLOBAL const REAL* xrow = x + ((n * C + c) * H + ih) * W + kw * DW - PW;
            for (i64 ow = ow_lo + lane; ow < ow_hi; ow += lanes)
                acc += grow[ow] * xrow[ow * SW];
        }
        partial[lid] = acc;
        LOCAL_BARRIER;
        for (int s = CONV_WG / 2; s > 0; s >>= 1) {
            if (lid < s) partial[lid] += partial[lid + s];
            LOCAL_BARRIER;
        }
        if (lid == 0) grad_w[g] = partial[0];
        LOCAL_BARRIER;
    }
}
