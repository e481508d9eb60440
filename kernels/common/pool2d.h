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
 * The row-launched and scatter variants at the end of this file are the OpenCL backend's
 * faster paths for common geometries (the CUDA backend runs the flat kernels).
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

/* The outputs whose windows cover one input position, for the backward gathers: the
 * position within its plane, the plane's first output, and the covering rows [oh0, oh1)
 * and columns [ow0, ow1).  Shared by the max and avg kernels of each launch shape. */
typedef struct { i64 pos, base, oh0, oh1, ow0, ow1; } pool_cover_t;

/* input element t of the flat launch (one work-item per element of every plane) */
INLINE pool_cover_t pool_flat_cover(i64 t, i64 H, i64 W, i64 OH, i64 OW, i64 kh, i64 kw,
                                    i64 sh, i64 sw, i64 ph, i64 pw)
{
    pool_cover_t c;
    c.pos = t % (H * W);
    const i64 h = c.pos / W, w = c.pos - h * W;
    c.base = (t / (H * W)) * OH * OW;
    c.oh0 = pool_first_cover(h, kh, sh, ph);
    c.oh1 = pool_end_cover(h, sh, ph, OH);
    c.ow0 = pool_first_cover(w, kw, sw, pw);
    c.ow1 = pool_end_cover(w, sw, pw, OW);
    return c;
}

/* input row r (plane * H + h), column w of the row launch; the column ranges come from the
 * host-built table `cols` ([W] first covers, then [W] ends) */
INLINE pool_cover_t pool_rows_cover(i64 r, i64 w, GLOBAL const i64* RESTRICT cols, i64 H,
                                    i64 W, i64 OH, i64 OW, i64 kh, i64 sh, i64 ph)
{
    pool_cover_t c;
    const i64 plane = r / H;
    const i64 h = r - plane * H;
    c.pos = h * W + w;
    c.base = plane * OH * OW;
    c.oh0 = pool_first_cover(h, kh, sh, ph);
    c.oh1 = pool_end_cover(h, sh, ph, OH);
    c.ow0 = cols[w];
    c.ow1 = cols[W + w];
    return c;
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
        const pool_cover_t c = pool_flat_cover(t, H, W, OH, OW, kh, kw, sh, sw, ph, pw);
        POOL_T sum = (POOL_T)0;
        for (i64 oh = c.oh0; oh < c.oh1; ++oh)
            for (i64 ow = c.ow0; ow < c.ow1; ++ow) {
                const i64 o = c.base + oh * OW + ow;
                if (indices[o] == c.pos)
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
        const pool_cover_t c = pool_flat_cover(t, H, W, OH, OW, kh, kw, sh, sw, ph, pw);
        POOL_T sum = (POOL_T)0;
        for (i64 oh = c.oh0; oh < c.oh1; ++oh)
            for (i64 ow = c.ow0; ow < c.ow1; ++ow) {
                const i64 divisor = pool_avg_divisor(oh * sh - ph, ow * sw - pw, H, W, kh, kw,
                                                     ph, pw, count_include_pad);
                sum += grad_out[c.base + oh * OW + ow] / (POOL_T)divisor;
            }
        grad_in[t] = sum;
    }
}

/* ---- row-launched variants (the OpenCL backend's paths) ------------------------------------
 * Two-dimensional launch with one work-item per element: dimension 0 is the column (output
 * column ow forward, input column w backward), dimension 1 the row row0 + GLOBAL_ID_1
 * (plane * OH + oh forward, plane * H + h backward); work-items past the last column or row do
 * nothing, and the host launches again with a later row0 where the rows exceed one launch.  No
 * per-element integer division (the row arithmetic is shared by a line of work-items), and
 * the forward window loops have the same trip count in every work-item (out-of-range columns
 * are masked), which PoCL's work-group vectoriser needs.  Results are bit-identical to the
 * flat kernels above.
 *
 * The backward row kernels (gathers) need kernel <= 2 * stride on both axes: at most two
 * output windows cover an input position per axis, the first at oh0 (from
 * pool_first_cover) and the columns' ow0 from the host's table `cols` (i64, 2 * W entries:
 * first covering output column of each input column, then one past the last); the four
 * candidates are added in increasing output order. */
KERNEL void POOL_NAME(max_pool2d_forward_rows)(
    GLOBAL const POOL_T* RESTRICT x, GLOBAL POOL_T* RESTRICT out, GLOBAL i64* RESTRICT indices,
    i64 store_indices, i64 row0, i64 planes, i64 H, i64 W, i64 OH, i64 OW,
    i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
{
    const i64 ow = GLOBAL_ID_0;
    const i64 r = row0 + GLOBAL_ID_1;
    if (ow >= OW || r >= planes * OH)
        return;
    const i64 ws = ow * sw - pw;
    const i64 w0 = pool_max(ws, 0);
    {
        const i64 plane = r / OH;
        const i64 oh = r - plane * OH;
        const i64 hs = oh * sh - ph;
        const i64 h0 = pool_max(hs, 0), h1 = pool_min(hs + kh, H);
        GLOBAL const POOL_T* src = x + plane * H * W;
        i64 best_index = h0 * W + w0;
        POOL_T best = src[best_index];
        for (i64 h = h0; h < h1; ++h) {
            for (i64 j = 0; j < kw; ++j) {
                const i64 w = ws + j;
                if (w >= 0 && w < W) {
                    const i64 pos = h * W + w;
                    const POOL_T v = src[pos];
                    if (v > best || v != v) {
                        best = v;
                        best_index = pos;
                    }
                }
            }
        }
        out[r * OW + ow] = best;
        if (store_indices)
            indices[r * OW + ow] = best_index;
    }
}

KERNEL void POOL_NAME(avg_pool2d_forward_rows)(
    GLOBAL const POOL_T* RESTRICT x, GLOBAL POOL_T* RESTRICT out, i64 count_include_pad,
    i64 row0, i64 planes, i64 H, i64 W, i64 OH, i64 OW,
    i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
{
    const i64 ow = GLOBAL_ID_0;
    const i64 r = row0 + GLOBAL_ID_1;
    if (ow >= OW || r >= planes * OH)
        return;
    const i64 ws = ow * sw - pw;
    const i64 w0 = pool_max(ws, 0), w1 = pool_min(ws + kw, W);
    {
        const i64 plane = r / OH;
        const i64 oh = r - plane * OH;
        const i64 hs = oh * sh - ph;
        const i64 h0 = pool_max(hs, 0), h1 = pool_min(hs + kh, H);
        GLOBAL const POOL_T* src = x + plane * H * W;
        POOL_T sum = (POOL_T)0;
        for (i64 h = h0; h < h1; ++h)
            for (i64 j = 0; j < kw; ++j) {
                const i64 w = ws + j;
                if (w >= 0 && w < W)
                    sum += src[h * W + w];
            }
        const i64 divisor = pool_avg_divisor(hs, ws, H, W, kh, kw, ph, pw, count_include_pad);
        out[r * OW + ow] = (h0 < h1 && w0 < w1) ? sum / (POOL_T)divisor : (POOL_T)0;
    }
}

KERNEL void POOL_NAME(max_pool2d_backward_rows)(
    GLOBAL const POOL_T* RESTRICT grad_out, GLOBAL const i64* RESTRICT indices,
    GLOBAL POOL_T* RESTRICT grad_in, GLOBAL const i64* RESTRICT cols, i64 row0,
    i64 planes, i64 H, i64 W, i64 OH, i64 OW,
    i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
{
    const i64 w = GLOBAL_ID_0;
    const i64 r = row0 + GLOBAL_ID_1;
    if (w >= W || r >= planes * H)
        return;
    const pool_cover_t c = pool_rows_cover(r, w, cols, H, W, OH, OW, kh, sh, ph);
    const i64 pos = c.pos;
    const i64 o = c.base + c.oh0 * OW + c.ow0;
    const int a0 = c.oh0 < c.oh1, a1 = c.oh0 + 1 < c.oh1;
    const int b0 = c.ow0 < c.ow1, b1 = c.ow0 + 1 < c.ow1;
    /* increasing output order, as the flat kernel and torch add them */
    POOL_T sum = (POOL_T)0;
    if (a0 && b0 && indices[o] == pos)
        sum += grad_out[o];
    if (a0 && b1 && indices[o + 1] == pos)
        sum += grad_out[o + 1];
    if (a1 && b0 && indices[o + OW] == pos)
        sum += grad_out[o + OW];
    if (a1 && b1 && indices[o + OW + 1] == pos)
        sum += grad_out[o + OW + 1];
    grad_in[r * W + w] = sum;
}

KERNEL void POOL_NAME(avg_pool2d_backward_rows)(
    GLOBAL const POOL_T* RESTRICT grad_out, GLOBAL POOL_T* RESTRICT grad_in,
    GLOBAL const i64* RESTRICT cols, i64 count_include_pad, i64 row0,
    i64 planes, i64 H, i64 W, i64 OH, i64 OW,
    i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
{
    const i64 w = GLOBAL_ID_0;
    const i64 r = row0 + GLOBAL_ID_1;
    if (w >= W || r >= planes * H)
        return;
    const pool_cover_t c = pool_rows_cover(r, w, cols, H, W, OH, OW, kh, sh, ph);
    const i64 o = c.base + c.oh0 * OW + c.ow0;
    const int a0 = c.oh0 < c.oh1, a1 = c.oh0 + 1 < c.oh1;
    const int b0 = c.ow0 < c.ow1, b1 = c.ow0 + 1 < c.ow1;
    const i64 hs = c.oh0 * sh - ph, ws = c.ow0 * sw - pw;
    POOL_T sum = (POOL_T)0;
    if (a0 && b0)
        sum += grad_out[o] / (POOL_T)pool_avg_divisor(hs, ws, H, W, kh, kw, ph, pw,
                                                      count_include_pad);
    if (a0 && b1)
        sum += grad_out[o + 1] / (POOL_T)pool_avg_divisor(hs, ws + sw, H, W, kh, kw, ph, pw,
                                                          count_include_pad);
    if (a1 && b0)
        sum += grad_out[o + OW] / (POOL_T)pool_avg_divisor(hs + sh, ws, H, W, kh, kw, ph, pw,
                                                           count_include_pad);
    if (a1 && b1)
        sum += grad_out[o + OW + 1] / (POOL_T)pool_avg_divisor(hs + sh, ws + sw, H, W, kh, kw,
                                                               ph, pw, count_include_pad);
    grad_in[r * W + w] = sum;
}

/* Scatter form of the backward passes, valid only when stride >= kernel on both axes (no two
 * windows overlap).  Row launch over the outputs: dimension 0 is ow, dimension 1 the rows
 * row0 + GLOBAL_ID_1 = plane * OH + oh.  Each work-item owns its output's stride cell (sh x sw
 * input positions from the window start, clipped to the input) and writes every position of
 * it: its gradient where it belongs (max: the position its index names; avg: each window
 * position), zero elsewhere.  Cells never overlap, so each input position is written by at
 * most one work-item (no atomics, deterministic); positions in no cell (the far edge in floor
 * mode) are left alone: the host zero-fills grad_in first when such positions exist. */
KERNEL void POOL_NAME(max_pool2d_backward_scatter)(
    GLOBAL const POOL_T* RESTRICT grad_out, GLOBAL const i64* RESTRICT indices,
    GLOBAL POOL_T* RESTRICT grad_in, i64 row0, i64 planes, i64 H, i64 W, i64 OH, i64 OW,
    i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
{
    const i64 ow = GLOBAL_ID_0;
    const i64 r = row0 + GLOBAL_ID_1;
    if (ow >= OW || r >= planes * OH)
        return;
    const i64 plane = r / OH;
    const i64 oh = r - plane * OH;
    const i64 o = r * OW + ow;
    const i64 target = indices[o];
    const POOL_T g = grad_out[o];
    GLOBAL POOL_T* dst = grad_in + plane * H * W;
    const i64 hs = oh * sh - ph, ws = ow * sw - pw;
    for (i64 i = 0; i < sh; ++i) {
        const i64 h = hs + i;
        for (i64 j = 0; j < sw; ++j) {
            const i64 w = ws + j;
            if (h >= 0 && h < H && w >= 0 && w < W) {
                const i64 pos = h * W + w;
                dst[pos] = (i < kh && j < kw && pos == target) ? g : (POOL_T)0;
            }
        }
    }
}

KERNEL void POOL_NAME(avg_pool2d_backward_scatter)(
    GLOBAL const POOL_T* RESTRICT grad_out, GLOBAL POOL_T* RESTRICT grad_in,
    i64 count_include_pad, i64 row0, i64 planes, i64 H, i64 W, i64 OH, i64 OW,
    i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw)
{
    const i64 ow = GLOBAL_ID_0;
    const i64 r = row0 + GLOBAL_ID_1;
    if (ow >= OW || r >= planes * OH)
        return;
    const i64 plane = r / OH;
    const i64 oh = r - plane * OH;
    const i64 hs = oh * sh - ph, ws = ow * sw - pw;
    const i64 divisor = pool_avg_divisor(hs, ws, H, W, kh, kw, ph, pw, count_include_pad);
    const POOL_T g = grad_out[r * OW + ow] / (POOL_T)divisor;
    GLOBAL POOL_T* dst = grad_in + plane * H * W;
    for (i64 i = 0; i < sh; ++i) {
        const i64 h = hs + i;
        for (i64 j = 0; j < sw; ++j) {
            const i64 w = ws + j;
            if (h >= 0 && h < H && w >= 0 && w < W)
                dst[h * W + w] = (i < kh && j < kw) ? g : (POOL_T)0;
        }
    }
}
