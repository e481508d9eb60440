/* CNN activation kernels, one source for OpenCL and CUDA: fused bias add + activation, the
 * activations' backward passes, the bias gradient, and softmax / log-softmax forward and
 * backward.  gpumat/activations.py states the semantics (PyTorch's, NaN and the gradient at
 * the kinks included); the NumPy version in gpumat/backends/activations_array_module.py is
 * the reference the tests hold these kernels to.
 *
 * Activation codes (argument `act`, uniform over a launch so the branch never diverges):
 *   0 identity   1 relu   2 leaky_relu(param = negative slope)   3 relu6   4 elu(param = alpha)
 *
 * Layouts.  bias: x is seen as (outer, channels, inner) and bias[c] is added along the middle
 * axis.  softmax: x is seen as (outer, length, inner); each of the outer * inner lines is
 * normalised along `length`, its elements `inner` apart.
 *
 * The element type is ACT_T and the entry points carry ACT_SUFFIX; a wrapper defines both and
 * includes this header once per type (see kernels/opencl/activations.cl), which defines
 * (all sizes i64, T = ACT_T, `param` a T):
 *   bias_act_flat(const T* x, const T* bias, T* out, i64 n, i64 channels, i64 inner,
 *                 i64 has_bias, i64 act, T param)
 *       grid-stride over the n elements, channel (i / inner) % channels; any 1-d grid
 *   bias_act_rows(const T* x, const T* bias, T* out, i64 row0, i64 cols, i64 channels,
 *                 i64 act, T param)
 *       x as rows x cols (rows = outer * channels, cols = inner), the channel of row r is
 *       r % channels; grid dimension 1 (local size 1) is the row, from row0 on, so a launch
 *       covers at most 65535 rows; dimension 0 walks the columns (grid-stride; one
 *       work-group wide is enough); no per-element division
 *   bias_act_cols(const T* x, const T* bias, T* out, i64 row0, i64 cols, i64 act, T param)
 *       the same with rows = outer, cols = channels (inner == 1): bias[col]
 *   act_backward(const T* grad, const T* x, T* out, i64 n, i64 act, T param)
 *       grid-stride elementwise
 *   bias_grad(const T* grad, T* out, i64 outer, i64 channels, i64 inner)
 *       one work-group of ACT_GROUP items per channel (group-stride), local-memory tree sum
 *   softmax_item(const T* x, T* y, i64 lines, i64 length, i64 inner, i64 log)
 *       one work-item per line (grid-stride): for short lines, and for strided lines where
 *       neighbouring items read neighbouring addresses
 *   softmax_group(same arguments)
 *       one work-group of ACT_GROUP items per line (group-stride), local-memory max and sum
 *   softmax_backward_item(const T* grad, const T* y, T* dx, i64 lines, i64 length, i64 inner,
 *                         i64 log) / softmax_backward_group(same arguments)
 *       softmax:     dx = y * (grad - sum(grad * y))
 *       log_softmax: dx = grad - exp(y) * sum(grad)
 * The _group kernels need a local size of exactly ACT_GROUP (256) along dimension 0.
 */
#include "dialect.h"

#ifndef GPUMAT_ACTIVATIONS_COMMON
#define GPUMAT_ACTIVATIONS_COMMON

#ifndef ACT_GROUP
#define ACT_GROUP 256   /* work-group size of the _group kernels and bias_grad (power of 2) */
#endif

#define ACT_CAT_(a, b) a##b
#define ACT_CAT(a, b) ACT_CAT_(a, b)
#define ACT_NAME(base) ACT_CAT(base, ACT_SUFFIX)

#define ACT_IDENTITY 0
#define ACT_RELU 1
#define ACT_LEAKY_RELU 2
#define ACT_RELU6 3
#define ACT_ELU 4

#ifdef GPUMAT_CUDA
  #define ACT_LOCAL_PTR            /* a pointer to __shared__ memory is a plain pointer */
#else
  #define ACT_LOCAL_PTR __local
#endif

#endif /* GPUMAT_ACTIVATIONS_COMMON */

#if !defined(ACT_T) || !defined(ACT_SUFFIX)
#error "define ACT_T and ACT_SUFFIX before including activations.h"
#endif

/* Forward activation.  Comparisons are written so a NaN input falls through to an expression
 * that returns NaN, as torch's do. */
INLINE ACT_T ACT_NAME(act_apply)(ACT_T v, i64 act, ACT_T param)
{
    switch (act) {
    case ACT_RELU:       return v < (ACT_T)0 ? (ACT_T)0 : v;
    case ACT_LEAKY_RELU: return v > (ACT_T)0 ? v : v * param;
    case ACT_RELU6:      return v < (ACT_T)0 ? (ACT_T)0 : (v > (ACT_T)6 ? (ACT_T)6 : v);
    case ACT_ELU:        return v > (ACT_T)0 ? v : param * expm1(v);
    default:             return v;
    }
}

/* Backward: torch's threshold_backward, leaky_relu_backward, hardtanh_backward(0, 6) and
 * elu_backward (on the input); each is written as torch writes it, so the value at the kink
 * and for NaN input match. */
INLINE ACT_T ACT_NAME(act_grad)(ACT_T g, ACT_T v, i64 act, ACT_T param)
{
    switch (act) {
    case ACT_RELU:       return v <= (ACT_T)0 ? (ACT_T)0 : g;
    case ACT_LEAKY_RELU: return v > (ACT_T)0 ? g : g * param;
    case ACT_RELU6:      return (v <= (ACT_T)0 || v >= (ACT_T)6) ? (ACT_T)0 : g;
    case ACT_ELU:        return v <= (ACT_T)0 ? g * param * exp(v) : g;
    default:             return g;
    }
}

KERNEL void ACT_NAME(bias_act_flat)(
    GLOBAL const ACT_T* RESTRICT x, GLOBAL const ACT_T* RESTRICT bias,
    GLOBAL ACT_T* RESTRICT out, i64 n, i64 channels, i64 inner, i64 has_bias, i64 act,
    ACT_T param)
{
    if (has_bias && n <= 0xffffffffL) {   /* 32-bit division is several times cheaper */
        const u32 in32 = (u32)inner, ch32 = (u32)channels;
        for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0)
            out[i] = ACT_NAME(act_apply)(x[i] + bias[((u32)i / in32) % ch32], act, param);
        return;
    }
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0) {
        ACT_T v = x[i];
        if (has_bias)
            v += bias[(i / inner) % channels];
        out[i] = ACT_NAME(act_apply)(v, act, param);
    }
}

KERNEL void ACT_NAME(bias_act_rows)(
    GLOBAL const ACT_T* RESTRICT x, GLOBAL const ACT_T* RESTRICT bias,
    GLOBAL ACT_T* RESTRICT out, i64 row0, i64 cols, i64 channels, i64 act, ACT_T param)
{
    /* no loop over rows (PoCL vectorises a single loop far better than a nest): the host
     * launches at most 65535 rows at a time and passes the first as row0 */
    const i64 r = row0 + GROUP_ID_1;
    const ACT_T b = bias[r % channels];
    GLOBAL const ACT_T* src = x + r * cols;
    GLOBAL ACT_T* dst = out + r * cols;
    for (i64 c = GLOBAL_ID_0; c < cols; c += GLOBAL_SIZE_0)
        dst[c] = ACT_NAME(act_apply)(src[c] + b, act, param);
}

KERNEL void ACT_NAME(bias_act_cols)(
    GLOBAL const ACT_T* RESTRICT x, GLOBAL const ACT_T* RESTRICT bias,
    GLOBAL ACT_T* RESTRICT out, i64 row0, i64 cols, i64 act, ACT_T param)
{
    const i64 r = row0 + GROUP_ID_1;
    GLOBAL const ACT_T* src = x + r * cols;
    GLOBAL ACT_T* dst = out + r * cols;
    for (i64 c = GLOBAL_ID_0; c < cols; c += GLOBAL_SIZE_0)
        dst[c] = ACT_NAME(act_apply)(src[c] + bias[c], act, param);
}

KERNEL void ACT_NAME(act_backward)(
    GLOBAL const ACT_T* RESTRICT grad, GLOBAL const ACT_T* RESTRICT x,
    GLOBAL ACT_T* RESTRICT out, i64 n, i64 act, ACT_T param)
{
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0)
        out[i] = ACT_NAME(act_grad)(grad[i], x[i], act, param);
}

/* Tree sum of scratch[0 .. ACT_GROUP) into scratch[0]; every item of the group calls it. */
INLINE void ACT_NAME(group_sum)(ACT_LOCAL_PTR ACT_T* scratch, u32 lid)
{
    for (u32 s = ACT_GROUP / 2; s > 0; s >>= 1) {
        LOCAL_BARRIER;
        if (lid < s)
            scratch[lid] += scratch[lid + s];
    }
    LOCAL_BARRIER;
}

/* NaN-propagating maximum (torch's max reduction): a NaN wins and stays. */
INLINE ACT_T ACT_NAME(nan_max)(ACT_T a, ACT_T v)
{
    return (v > a || v != v) ? v : a;
}

INLINE void ACT_NAME(group_max)(ACT_LOCAL_PTR ACT_T* scratch, u32 lid)
{
    for (u32 s = ACT_GROUP / 2; s > 0; s >>= 1) {
        LOCAL_BARRIER;
        if (lid < s)
            scratch[lid] = ACT_NAME(nan_max)(scratch[lid], scratch[lid + s]);
    }
    LOCAL_BARRIER;
}

KERNEL void ACT_NAME(bias_grad)(
    GLOBAL const ACT_T* RESTRICT grad, GLOBAL ACT_T* RESTRICT out, i64 outer, i64 channels,
    i64 inner)
{
    LOCAL ACT_T scratch[ACT_GROUP];
    const u32 lid = LOCAL_ID_0;
    const i64 count = outer * inner;
    for (i64 c = GROUP_ID_0; c < channels; c += NUM_GROUPS_0) {
        ACT_T sum = (ACT_T)0;
        if (inner >= ACT_GROUP) {      /* walk each (o, c) row: contiguous, no division */
            for (i64 o = 0; o < outer; ++o) {
                GLOBAL const ACT_T* row = grad + (o * channels + c) * inner;
                for (i64 k = lid; k < inner; k += ACT_GROUP)
                    sum += row[k];
            }
        } else {
            for (i64 j = lid; j < count; j += ACT_GROUP) {
                const i64 o = j / inner, k = j - o * inner;
                sum += grad[(o * channels + c) * inner + k];
            }
        }
        scratch[lid] = sum;
        ACT_NAME(group_sum)(scratch, lid);
        if (lid == 0)
            out[c] = scratch[0];
        LOCAL_BARRIER;     /* scratch[0] is read before the next channel overwrites it */
    }
}

/* Pass 2 of softmax: s = sum(exp(v - m)) over this item's elements; for softmax (not log)
 * the exponentials are also stored in the output, so pass 3 only scales them (one exp per
 * element, not two; the line is still in cache).  Pass 3 writes y = e / s, or
 * (v - m) - log(s) for log_softmax.  Each item reads back only what it wrote. */
#define ACT_SOFTMAX_SUM(src, dst, first, step, m, s, log_)                                 \
    do {                                                                                   \
        if (log_) {                                                                        \
            for (i64 k = (first); k < length; k += (step))                                 \
                s += exp((src)[k * inner] - (m));                                          \
        } else {                                                                           \
            for (i64 k = (first); k < length; k += (step)) {                               \
                const ACT_T e = exp((src)[k * inner] - (m));                               \
                (dst)[k * inner] = e;                                                      \
                s += e;                                                                    \
            }                                                                              \
        }                                                                                  \
    } while (0)

#define ACT_SOFTMAX_WRITE(src, dst, first, step, m, s, log_)                               \
    do {                                                                                   \
        if (log_) {                                                                        \
            const ACT_T ls = log(s);                                                       \
            for (i64 k = (first); k < length; k += (step))                                 \
                (dst)[k * inner] = ((src)[k * inner] - (m)) - ls;                          \
        } else {                                                                           \
            const ACT_T r = (ACT_T)1 / (s);                                                \
            for (i64 k = (first); k < length; k += (step))                                 \
                (dst)[k * inner] *= r;                                                     \
        }                                                                                  \
    } while (0)

KERNEL void ACT_NAME(softmax_item)(
    GLOBAL const ACT_T* RESTRICT x, GLOBAL ACT_T* RESTRICT y, i64 lines, i64 length,
    i64 inner, i64 log_)
{
    for (i64 g = GLOBAL_ID_0; g < lines; g += GLOBAL_SIZE_0) {
        const i64 o = g / inner, i = g - o * inner;
        GLOBAL const ACT_T* src = x + o * length * inner + i;
        GLOBAL ACT_T* dst = y + o * length * inner + i;
        ACT_T m = src[0];
        for (i64 k = 1; k < length; ++k)
            m = ACT_NAME(nan_max)(m, src[k * inner]);
        ACT_T s = (ACT_T)0;
        ACT_SOFTMAX_SUM(src, dst, 0, 1, m, s, log_);
        ACT_SOFTMAX_WRITE(src, dst, 0, 1, m, s, log_);
    }
}

KERNEL void ACT_NAME(softmax_group)(
    GLOBAL const ACT_T* RESTRICT x, GLOBAL ACT_T* RESTRICT y, i64 lines, i64 length,
    i64 inner, i64 log_)
{
    LOCAL ACT_T scratch[ACT_GROUP];
    const u32 lid = LOCAL_ID_0;
    for (i64 g = GROUP_ID_0; g < lines; g += NUM_GROUPS_0) {
        const i64 o = g / inner, i = g - o * inner;
        GLOBAL const ACT_T* src = x + o * length * inner + i;
        GLOBAL ACT_T* dst = y + o * length * inner + i;
        ACT_T m = src[0];      /* every line has length >= 1: seeding with it needs no -inf */
        for (i64 k = lid; k < length; k += ACT_GROUP)
            m = ACT_NAME(nan_max)(m, src[k * inner]);
        scratch[lid] = m;
        ACT_NAME(group_max)(scratch, lid);
        m = scratch[0];
        LOCAL_BARRIER;
        ACT_T s = (ACT_T)0;
        ACT_SOFTMAX_SUM(src, dst, (i64)lid, ACT_GROUP, m, s, log_);
        scratch[lid] = s;
        ACT_NAME(group_sum)(scratch, lid);
        s = scratch[0];
        LOCAL_BARRIER;
        ACT_SOFTMAX_WRITE(src, dst, (i64)lid, ACT_GROUP, m, s, log_);
    }
}

/* dx for one line; `dot` is sum(grad * y) for softmax and sum(grad) for log_softmax. */
#define ACT_SOFTMAX_BACKWARD_WRITE(first, step, dot, log_)                                 \
    do {                                                                                   \
        if (log_) {                                                                        \
            for (i64 k = (first); k < length; k += (step))                                 \
                gx[k * inner] = gg[k * inner] - exp(gy[k * inner]) * (dot);                \
        } else {                                                                           \
            for (i64 k = (first); k < length; k += (step))                                 \
                gx[k * inner] = gy[k * inner] * (gg[k * inner] - (dot));                   \
        }                                                                                  \
    } while (0)

KERNEL void ACT_NAME(softmax_backward_item)(
    GLOBAL const ACT_T* RESTRICT grad, GLOBAL const ACT_T* RESTRICT y,
    GLOBAL ACT_T* RESTRICT dx, i64 lines, i64 length, i64 inner, i64 log_)
{
    for (i64 g = GLOBAL_ID_0; g < lines; g += GLOBAL_SIZE_0) {
        const i64 o = g / inner, i = g - o * inner;
        const i64 base = o * length * inner + i;
        GLOBAL const ACT_T* gg = grad + base;
        GLOBAL const ACT_T* gy = y + base;
        GLOBAL ACT_T* gx = dx + base;
        ACT_T dot = (ACT_T)0;
        if (log_) {
            for (i64 k = 0; k < length; ++k)
                dot += gg[k * inner];
        } else {
            for (i64 k = 0; k < length; ++k)
                dot += gg[k * inner] * gy[k * inner];
        }
        ACT_SOFTMAX_BACKWARD_WRITE(0, 1, dot, log_);
    }
}

KERNEL void ACT_NAME(softmax_backward_group)(
    GLOBAL const ACT_T* RESTRICT grad, GLOBAL const ACT_T* RESTRICT y,
    GLOBAL ACT_T* RESTRICT dx, i64 lines, i64 length, i64 inner, i64 log_)
{
    LOCAL ACT_T scratch[ACT_GROUP];
    const u32 lid = LOCAL_ID_0;
    for (i64 g = GROUP_ID_0; g < lines; g += NUM_GROUPS_0) {
        const i64 o = g / inner, i = g - o * inner;
        const i64 base = o * length * inner + i;
        GLOBAL const ACT_T* gg = grad + base;
        GLOBAL const ACT_T* gy = y + base;
        GLOBAL ACT_T* gx = dx + base;
        ACT_T dot = (ACT_T)0;
        if (log_) {
            for (i64 k = lid; k < length; k += ACT_GROUP)
                dot += gg[k * inner];
        } else {
            for (i64 k = lid; k < length; k += ACT_GROUP)
                dot += gg[k * inner] * gy[k * inner];
        }
        scratch[lid] = dot;
        ACT_NAME(group_sum)(scratch, lid);
        dot = scratch[0];
        LOCAL_BARRIER;
        ACT_SOFTMAX_BACKWARD_WRITE((i64)lid, ACT_GROUP, dot, log_);
    }
}
