/* 2-d max and average pooling, forward and backward, one source for OpenCL and CUDA.
 *
 * Layout: contiguous NCHW, seen as `planes` = N * C independent H x W planes; the output
 * planes are OH x OW.  kernel (kh, kw), stride (sh, sw) and padding (ph, pw) follow PyTorch,
 * and so do the results (see gpumat/pooling.py for the rules):
 *   - max: padding is never picked; update rule `v > best || isnan(v)` in window scan order
 *     (row by row), so ties go to the first maximum and the last NaN wins; the index is the
 *     flat h * W + w position in the input plane, starting at the window's first in-bounds
 *     position;
 *   - avg: the sum of the in-bounds values divided by the window clipped to the padded input
 *     (count_include_pad) or by the number of in-bounds positions.
 * Backward passes are gathers: one work-item per input element sums, in increasing output
 * order, the gradients of the outputs whose window covers it (max: only those whose index
 * names it).  No atomics, so results are deterministic and match torch's scatter order.
 *
 * Every kernel is a grid-stride loop over its elements, so any launch geometry covers them.
 * The element type is POOL_T and the entry points carry POOL_SUFFIX: a wrapper defines both
 * and includes this header once per type, e.g.
 *     #define POOL_T float
 *     #define POOL_SUFFIX _f32
 *     #include "pool2d.h"
 * which defines (all sizes i64; store_indices and count_include_pad are 0 or 1):
 *   max_pool2d_forward_f32(const T* x, T* out, i64* indices, i64 store_indices,
 *                          i64 planes, i64 H, i64 W, i64 OH, i64 OW,
 *                          i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
 *   avg_pool2d_forward_f32(const T* x, T* out, i64 count_include_pad,
 *                          i64 planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw)
 *   max_pool2d_backward_f32(const T* grad_out, const i64* indices, T* grad_in,
 *                           i64 planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw)
 *   avg_pool2d_backward_f32(const T* grad_out, T* grad_in, i64 count_include_pad,
 *                           i64 planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw)
 * `indices` is not touched when store_indices is 0 (pass any buffer).
 */
#include "dialect.h"

#ifndef GPUMAT_POOL2D_COMMON
#define GPUMAT_POOL2D_COMMON

#define POOL_CAT_(a, b) a##b
#define POOL_CAT(a, b) POOL_CAT_(a, b)
#define POOL_NAME(base) POOL_CAT(base, POOL_SUFFIX)

INLINE i64 pool_min(i64 a, i64 b) { return a < b ? a : b; }
INLINE i64 pool_max(i64 a, i64 b) { return a > b ? a : b; }

/* torch's avg-pool divisor for the window starting at (hs, ws) of the padded input */
INLINE i64 pool_avg_divisor(i64 hs, i64 ws, i64 H, i64 W, i64 kh, i64 kw, i64 ph, i64 pw,
                            i64 count_include_pad)
{
    const i64 he = pool_min(hs + kh, H + ph), we = pool_min(ws + kw, W + pw);
    if (count_include_pad)
        return (he - hs) * (we - ws);
    return (pool_min(he, H) - pool_max(hs, 0)) * (pool_min(we, W) - pool_max(ws, 0));
}

/* first output index whose window [o * s - p, o * s - p + k) covers input position i, and
 * one past the last (clipped to [0, out)) */
INLINE i64 pool_first_cover(i64 i, i64 k, i64 s, i64 p)
{
    const i64 t = i + p - k;            /* need o * s > t */
    return t < 0 ? 0 : t / s + 1;
}

INLINE i64 pool_end_cover(i64 i, i64 s, i64 p, i64 out)
{
    return pool_min((i + p) / s + 1, out);   /* i + p >= 0 */
}

#endif /* GPUMAT_POOL2D_COMMON */

#if !defined(POOL_T) || !defined(POOL_SUFFIX)
#error "define POOL_T and POOL_SUFFIX before including pool2d.h"
#endif

KERNEL void POOL_NAME(max_pool2d_forward)(
    GLOBAL const POOL_T* RESTRICT x, GLOBAL POOL_T* RESTRICT out, GLOBAL i64* RESTRICT indices,
    i64 store_indices, i64 planes, i64 H, i64 W, i64 OH, i64 OW,
    i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
{
    const i64 total = planes * OH * OW;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        const i64 ow = t % OW;
        const i64 rest = t / OW;
        const i64 oh = rest % OH;
        const i64 plane = rest / OH;
        i64 h0 = oh * sh - ph, w0 = ow * sw - pw;
        const i64 h1 = pool_min(h0 + kh, H), w1 = pool_min(w0 + kw, W);
        h0 = pool_max(h0, 0);
        w0 = pool_max(w0, 0);
        GLOBAL const POOL_T* src = x + plane * H * W;
        /* starting from the first element gives torch's state after its first step,
         * whatever that element is (-inf and NaN included), with no infinity constant */
        i64 best_index = h0 * W + w0;
        POOL_T best = src[best_index];
        for (i64 h = h0; h < h1; ++h) {
            for (i64 w = w0; w < w1; ++w) {
                const i64 pos = h * W + w;
                const POOL_T v = src[pos];
                if (v > best || v != v) {
                    best = v;
                    best_index = pos;
                }
            }
        }
        out[t] = best;
        if (store_indices)
            indices[t] = best_index;
    }
}

KERNEL void POOL_NAME(avg_pool2d_forward)(
    GLOBAL const POOL_T* RESTRICT x, GLOBAL POOL_T* RESTRICT out, i64 count_include_pad,
    i64 planes, i64 H, i64 W, i64 OH, i64 OW,
    i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
{
    const i64 total = planes * OH * OW;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        const i64 ow = t % OW;
        const i64 rest = t / OW;
        const i64 oh = rest % OH;
        const i64 plane = rest / OH;
        const i64 hs = oh * sh - ph, ws = ow * sw - pw;
        const i64 h0 = pool_max(hs, 0), w0 = pool_max(ws, 0);
        const i64 h1 = pool_min(hs + kh, H), w1 = pool_min(ws + kw, W);
        GLOBAL const POOL_T* src = x + plane * H * W;
        POOL_T sum = (POOL_T)0;
        for (i64 h = h0; h < h1; ++h)
            for (i64 w = w0; w < w1; ++w)
                sum += src[h * W + w];
        const i64 divisor = pool_avg_divisor(hs, ws, H, W, kh, kw, ph, pw, count_include_pad);
        /* an empty window (impossible with torch's padding rule) gives 0, as in torch */
        out[t] = (h0 < h1 && w0 < w1) ? sum / (POOL_T)divisor : (POOL_T)0;
    }
}

KERNEL void POOL_NAME(max_pool2d_backward)(
    GLOBAL const POOL_T* RESTRICT grad_out, GLOBAL const i64* RESTRICT indices,
    GLOBAL POOL_T* RESTRICT grad_in, i64 planes, i64 H, i64 W, i64 OH, i64 OW,
    i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
{
    const i64 total = planes * H * W;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        const i64 pos = t % (H * W);
        const i64 plane = t / (H * W);
        const i64 h = pos / W, w = pos - (pos / W) * W;
        const i64 oh0 = pool_first_cover(h, kh, sh, ph), oh1 = pool_end_cover(h, sh, ph, OH);
        const i64 ow0 = pool_first_cover(w, kw, sw, pw), ow1 = pool_end_cover(w, sw, pw, OW);
        const i64 base = plane * OH * OW;
        POOL_T sum = (POOL_T)0;
        for (i64 oh = oh0; oh < oh1; ++oh)
            for (i64 ow = ow0; ow < ow1; ++ow) {
                const i64 o = base + oh * OW + ow;
                if (indices[o] == pos)
                    sum += grad_out[o];
            }
        grad_in[t] = sum;
    }
}

KERNEL void POOL_NAME(avg_pool2d_backward)(
    GLOBAL const POOL_T* RESTRICT grad_out, GLOBAL POOL_T* RESTRICT grad_in,
    i64 count_include_pad, i64 planes, i64 H, i64 W, i64 OH, i64 OW,
    i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
{
    const i64 total = planes * H * W;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        const i64 pos = t % (H * W);
        const i64 plane = t / (H * W);
        const i64 h = pos / W, w = pos - (pos / W) * W;
        const i64 oh0 = pool_first_cover(h, kh, sh, ph), oh1 = pool_end_cover(h, sh, ph, OH);
        const i64 ow0 = pool_first_cover(w, kw, sw, pw), ow1 = pool_end_cover(w, sw, pw, OW);
        const i64 base = plane * OH * OW;
        POOL_T sum = (POOL_T)0;
        for (i64 oh = oh0; oh < oh1; ++oh)
            for (i64 ow = ow0; ow < ow1; ++ow) {
                const i64 divisor = pool_avg_divisor(oh * sh - ph, ow * sw - pw, H, W, kh, kw,
                                                     ph, pw, count_include_pad);
                sum += grad_out[base + oh * OW + ow] / (POOL_T)divisor;
            }
        grad_in[t] = sum;
    }
}
