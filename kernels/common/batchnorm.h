/* Batch normalisation kernels, one source for OpenCL and CUDA: per-channel statistics, the
 * normalising map, the per-channel gradient sums and the input gradient.  gpumat/
 * normalization.py states the semantics (torch's); the NumPy version in gpumat/backends/
 * batchnorm_array_module.py is the reference the tests hold these kernels to.
 *
 * Layout: x (and grad) is (batch, channels, inner), contiguous; a channel's M = batch * inner
 * values are numbered j = n * inner + k (row n, offset k in the row), and its value j lives
 * at (n * channels + c) * inner + k.  Per-channel vectors have `channels` elements.
 *
 * Reductions (bn_stats, bn_backward_sums): a work-group of BN_GROUP items per (channel,
 * chunk), group-stride over the channels * chunks pairs; chunk q of a channel is the values
 * j in [M * q / chunks, M * (q + 1) / chunks).  With long rows (by_rows) the items walk each
 * row of the chunk side by side (contiguous, one division per row); with short ones they walk
 * j directly (a division per value, 32-bit where it fits).  The group's partial results meet
 * in a local-memory tree.  With chunks == 1 the group writes the final per-channel results;
 * otherwise it writes its partials to `partial` and a second launch (bn_stats_finish,
 * bn_backward_sums_finish: one work-item per channel) merges a channel's chunks, so a GPU
 * can spread few large channels over many groups.
 *
 * Statistics stay accurate for a large mean with a small spread, whatever the values: each
 * group reads its chunk twice (the second time from cache), first for the chunk's mean, then
 * for the sum of squares around it (plus the plain sum, which corrects for the rounding of
 * that mean).  Chunks merge pairwise (Chan, Golub and LeVeque).  Every mean is kept relative
 * to the channel's first value (`base`), so its rounding is relative to the spread, not to
 * the mean; the mean itself is formed once, at the end.
 *
 * Maps (bn_forward_*, bn_backward_input_*), with the per-channel coefficients computed from
 * the vectors in the kernel:
 *   y  = (x - mean) * (inv_std * weight) + bias
 *   dx = ((g - dbias / M) - (x - mean) * (inv_std * (dweight / M))) * (inv_std * weight)
 *        (training), dx = g * (inv_std * weight) (evaluation)
 * _rows: grid dimension 1 (local size 1) is the row, row0 + group id (a launch covers at most
 * 65535 rows), dimension 0 strides over the row's `cols` values; a row is (n, c) with
 * cols = inner, or with `on_cols` (inner == 1) a batch row whose column is the channel.
 * _flat: grid-stride over all values, channel (i / inner) % channels.
 *
 * The element type is BN_T and the entry points carry BN_SUFFIX; a wrapper defines both and
 * includes this header once per type (kernels/opencl/batchnorm.cl, kernels/cuda/
 * batchnorm.cu).  All sizes are i64, `eps` a T, flags i64 0 / 1; optional vectors (weight,
 * bias) take any buffer with their flag 0:
 *   bn_stats(const T* x, T* partial, T* mean, T* var, T* inv_std, i64 batch, i64 channels,
 *            i64 inner, i64 chunks, i64 by_rows, T eps)          partial: 3 T per group
 *   bn_stats_finish(const T* x, const T* partial, T* mean, T* var, T* inv_std,
 *                   i64 channels, i64 inner, i64 chunks, T eps)
 *   bn_inv_std(const T* var, T* inv_std, i64 channels, T eps)    evaluation's 1/sqrt(var+eps)
 *   bn_forward_rows(const T* x, const T* mean, const T* inv_std, const T* weight,
 *                   const T* bias, T* y, i64 row0, i64 cols, i64 channels, i64 on_cols,
 *                   i64 has_weight, i64 has_bias)
 *   bn_forward_flat(same vectors, T* y, i64 n, i64 channels, i64 inner, i64 has_weight,
 *                   i64 has_bias)
 *   bn_backward_sums(const T* grad, const T* x, const T* mean, const T* inv_std, T* partial,
 *                    T* grad_weight, T* grad_bias, i64 batch, i64 channels, i64 inner,
 *                    i64 chunks, i64 by_rows)                    partial: 2 T per group
 *   bn_backward_sums_finish(const T* partial, const T* inv_std, T* grad_weight,
 *                           T* grad_bias, i64 channels, i64 chunks)
 *   bn_backward_input_rows(const T* grad, const T* x, const T* mean, const T* inv_std,
 *                          const T* weight, const T* grad_weight, const T* grad_bias, T* dx,
 *                          i64 row0, i64 cols, i64 channels, i64 on_cols, i64 has_weight,
 *                          i64 training, i64 count)
 *   bn_backward_input_flat(same vectors, T* dx, i64 n, i64 channels, i64 inner,
 *                          i64 has_weight, i64 training, i64 count)
 * The reductions need a local size of exactly BN_GROUP (256) along dimension 0.
 *
 * The forward map rounds its product and its sum one at a time, never contracted into a
 * fused multiply-add (OpenCL's default FP_CONTRACT and nvcc's --fmad=true would allow one):
 * y is then float32's ((x - mean) * a) + bias, the bits of the cpu backend's kernel and of
 * NumPy, and of xnor.h's packing kernel, which folds an evaluation batch norm in front of a
 * binary convolution and must take the same signs.
 */
#include "dialect.h"

#ifndef GPUMAT_BATCHNORM_COMMON
#define GPUMAT_BATCHNORM_COMMON

#ifndef BN_GROUP
#define BN_GROUP 256    /* work-group size of the reductions (a power of 2) */
#endif

#define BN_CAT_(a, b) a##b
#define BN_CAT(a, b) BN_CAT_(a, b)
#define BN_NAME(base) BN_CAT(base, BN_SUFFIX)

#ifdef GPUMAT_CUDA
  #define BN_LOCAL_PTR          /* a pointer to __shared__ memory is a plain pointer */
  /* round-to-nearest intrinsics: never contracted (see the top of this file) */
  INLINE float bn_mul_rn(float a, float b) { return __fmul_rn(a, b); }
  INLINE float bn_add_rn(float a, float b) { return __fadd_rn(a, b); }
  INLINE double bn_mul_rn(double a, double b) { return __dmul_rn(a, b); }
  INLINE double bn_add_rn(double a, double b) { return __dadd_rn(a, b); }
  #define BN_MUL_RN(a, b) bn_mul_rn(a, b)
  #define BN_ADD_RN(a, b) bn_add_rn(a, b)
#else
  #define BN_LOCAL_PTR __local
  #pragma OPENCL FP_CONTRACT OFF
  #define BN_MUL_RN(a, b) ((a) * (b))
  #define BN_ADD_RN(a, b) ((a) + (b))
#endif

/* Runs the statements (the variadic part) with `at` the offset of each value of channel c's
 * chunk [j0, j1) that item lid visits (values BN_GROUP apart in the walk).  Uses batch,
 * channels, inner and by_rows. */
#define BN_FOR_CHUNK(c, j0, j1, lid, at, ...)                                              \
    do {                                                                                   \
        if (by_rows) {                                                                     \
            for (i64 j_ = (j0); j_ < (j1);) {                                              \
                const i64 n_ = j_ / inner, k0_ = j_ - n_ * inner;                          \
                const i64 k1_ = (j1) - j_ < inner - k0_ ? k0_ + ((j1) - j_) : inner;       \
                const i64 row_ = (n_ * channels + (c)) * inner;                            \
                for (i64 k_ = k0_ + (lid); k_ < k1_; k_ += BN_GROUP) {                     \
                    const i64 at = row_ + k_;                                              \
                    __VA_ARGS__                                                            \
                }                                                                          \
                j_ += k1_ - k0_;                                                           \
            }                                                                              \
        } else if (inner == 1) {                                                           \
            for (i64 j_ = (j0) + (lid); j_ < (j1); j_ += BN_GROUP) {                       \
                const i64 at = j_ * channels + (c);                                        \
                __VA_ARGS__                                                                \
            }                                                                              \
        } else if ((j1) <= 0xffffffffL) {   /* 32-bit division: several times cheaper */   \
            const u32 inner32_ = (u32)inner;                                               \
            for (i64 j_ = (j0) + (lid); j_ < (j1); j_ += BN_GROUP) {                       \
                const u32 n_ = (u32)j_ / inner32_;                                         \
                const i64 at = ((i64)n_ * channels + (c) - (i64)n_) * inner + j_;          \
                __VA_ARGS__                                                                \
            }                                                                              \
        } else {                                                                           \
            for (i64 j_ = (j0) + (lid); j_ < (j1); j_ += BN_GROUP) {                       \
                const i64 n_ = j_ / inner;                                                 \
                const i64 at = (n_ * channels + (c)) * inner + (j_ - n_ * inner);          \
                __VA_ARGS__                                                                \
            }                                                                              \
        }                                                                                  \
    } while (0)

/* Channel and value range [*j0, *j1) of reduction chunk g (g = channel * chunks + chunk). */
INLINE i64 bn_chunk(i64 g, i64 chunks, i64 per_channel, i64* j0, i64* j1)
{
    const i64 c = g / chunks, q = g - c * chunks;
    *j0 = per_channel * q / chunks;
    *j1 = per_channel * (q + 1) / chunks;
    return c;
}

#endif /* GPUMAT_BATCHNORM_COMMON */

#if !defined(BN_T) || !defined(BN_SUFFIX)
#error "define BN_T and BN_SUFFIX before including batchnorm.h"
#endif

/* Merges the moments (count, mean, M2) of b into a (Chan, Golub and LeVeque's pairwise
 * update); a count of 0 contributes nothing. */
INLINE void BN_NAME(bn_merge)(BN_T* count, BN_T* mean, BN_T* m2, BN_T nb, BN_T mean_b,
                              BN_T m2_b)
{
    const BN_T na = *count, n = na + nb;
    if (nb > (BN_T)0) {
        const BN_T delta = mean_b - *mean, share = nb / n;
        *mean += delta * share;
        *m2 += m2_b + delta * delta * (na * share);
        *count = n;
    }
}

INLINE BN_T BN_NAME(bn_inverse_std)(BN_T var, BN_T eps)
{
    return (BN_T)1 / sqrt(var + eps);
}

/* Tree sum of two arrays into element 0; every item of the group calls it. */
INLINE void BN_NAME(bn_group_sum2)(BN_LOCAL_PTR BN_T* a, BN_LOCAL_PTR BN_T* b, u32 lid)
{
    for (u32 s = BN_GROUP / 2; s > 0; s >>= 1) {
        LOCAL_BARRIER;
        if (lid < s) {
            a[lid] += a[lid + s];
            b[lid] += b[lid + s];
        }
    }
    LOCAL_BARRIER;
}

KERNEL void BN_NAME(bn_stats)(
    GLOBAL const BN_T* RESTRICT x, GLOBAL BN_T* RESTRICT partial, GLOBAL BN_T* RESTRICT mean,
    GLOBAL BN_T* RESTRICT var, GLOBAL BN_T* RESTRICT inv_std, i64 batch, i64 channels,
    i64 inner, i64 chunks, i64 by_rows, BN_T eps)
{
    LOCAL BN_T first[BN_GROUP];
    LOCAL BN_T second[BN_GROUP];
    const u32 lid = LOCAL_ID_0;
    for (i64 g = GROUP_ID_0; g < channels * chunks; g += NUM_GROUPS_0) {
        i64 j0, j1;
        const i64 c = bn_chunk(g, chunks, batch * inner, &j0, &j1);
        const BN_T base = x[c * inner];   /* the channel's first value (per_channel >= 1) */
        const BN_T count = (BN_T)(j1 - j0);
        /* pass 1: the chunk's mean, relative to base (accurate to rounding of the spread) */
        BN_T s = (BN_T)0;
        BN_FOR_CHUNK(c, j0, j1, lid, at, { s += x[at] - base; });
        first[lid] = s;
        second[lid] = (BN_T)0;
        BN_NAME(bn_group_sum2)(first, second, lid);
        const BN_T shift = j1 > j0 ? first[0] / count : (BN_T)0;
        LOCAL_BARRIER;
        /* pass 2 over the same values (in cache): squares of the centred values, plus their
         * sum, which corrects for the rounding of the pass-1 mean */
        BN_T s1 = (BN_T)0, s2 = (BN_T)0;
        BN_FOR_CHUNK(c, j0, j1, lid, at, {
            const BN_T d = (x[at] - base) - shift;
            s1 += d;
            s2 += d * d;
        });
        first[lid] = s1;
        second[lid] = s2;
        BN_NAME(bn_group_sum2)(first, second, lid);
        if (lid == 0) {
            const BN_T d_mean = j1 > j0 ? first[0] / count : (BN_T)0;
            const BN_T m2 = second[0] - first[0] * d_mean;
            const BN_T chunk_mean = shift + d_mean, chunk_m2 = m2 > (BN_T)0 ? m2 : (BN_T)0;
            if (chunks == 1) {
                const BN_T v = chunk_m2 / count;
                mean[c] = base + chunk_mean;
                var[c] = v;
                inv_std[c] = BN_NAME(bn_inverse_std)(v, eps);
            } else {
                partial[3 * g] = count;
                partial[3 * g + 1] = chunk_mean;
                partial[3 * g + 2] = chunk_m2;
            }
        }
        LOCAL_BARRIER;     /* the tree's results are read before the next group's overwrite */
    }
}

KERNEL void BN_NAME(bn_stats_finish)(
    GLOBAL const BN_T* RESTRICT x, GLOBAL const BN_T* RESTRICT partial,
    GLOBAL BN_T* RESTRICT mean, GLOBAL BN_T* RESTRICT var, GLOBAL BN_T* RESTRICT inv_std,
    i64 channels, i64 inner, i64 chunks, BN_T eps)
{
    for (i64 c = GLOBAL_ID_0; c < channels; c += GLOBAL_SIZE_0) {
        GLOBAL const BN_T* p = partial + 3 * c * chunks;
        BN_T n = (BN_T)0, m = (BN_T)0, m2 = (BN_T)0;
        for (i64 q = 0; q < chunks; ++q)
            BN_NAME(bn_merge)(&n, &m, &m2, p[3 * q], p[3 * q + 1], p[3 * q + 2]);
        const BN_T v = m2 / n;
        mean[c] = x[c * inner] + m;     /* the chunks' means are relative to this value */
        var[c] = v;
        inv_std[c] = BN_NAME(bn_inverse_std)(v, eps);
    }
}

KERNEL void BN_NAME(bn_inv_std)(
    GLOBAL const BN_T* RESTRICT var, GLOBAL BN_T* RESTRICT inv_std, i64 channels, BN_T eps)
{
    for (i64 c = GLOBAL_ID_0; c < channels; c += GLOBAL_SIZE_0)
        inv_std[c] = BN_NAME(bn_inverse_std)(var[c], eps);
}

/* ---- the normalising map ------------------------------------------------------------------ */

INLINE BN_T BN_NAME(bn_scale)(GLOBAL const BN_T* inv_std, GLOBAL const BN_T* weight,
                              i64 has_weight, i64 c)
{
    return has_weight ? inv_std[c] * weight[c] : inv_std[c];
}

KERNEL void BN_NAME(bn_forward_rows)(
    GLOBAL const BN_T* RESTRICT x, GLOBAL const BN_T* RESTRICT mean,
    GLOBAL const BN_T* RESTRICT inv_std, GLOBAL const BN_T* RESTRICT weight,
    GLOBAL const BN_T* RESTRICT bias, GLOBAL BN_T* RESTRICT y, i64 row0, i64 cols,
    i64 channels, i64 on_cols, i64 has_weight, i64 has_bias)
{
    const i64 r = row0 + GROUP_ID_1;
    GLOBAL const BN_T* src = x + r * cols;
    GLOBAL BN_T* dst = y + r * cols;
    if (on_cols) {
        for (i64 k = GLOBAL_ID_0; k < cols; k += GLOBAL_SIZE_0) {
            const BN_T v = BN_MUL_RN(src[k] - mean[k],
                                     BN_NAME(bn_scale)(inv_std, weight, has_weight, k));
            dst[k] = has_bias ? BN_ADD_RN(v, bias[k]) : v;
        }
        return;
    }
    const i64 c = r % channels;
    const BN_T m = mean[c], a = BN_NAME(bn_scale)(inv_std, weight, has_weight, c);
    if (has_bias) {
        const BN_T b = bias[c];
        for (i64 k = GLOBAL_ID_0; k < cols; k += GLOBAL_SIZE_0)
            dst[k] = BN_ADD_RN(BN_MUL_RN(src[k] - m, a), b);
    } else {
        for (i64 k = GLOBAL_ID_0; k < cols; k += GLOBAL_SIZE_0)
            dst[k] = (src[k] - m) * a;
    }
}

KERNEL void BN_NAME(bn_forward_flat)(
    GLOBAL const BN_T* RESTRICT x, GLOBAL const BN_T* RESTRICT mean,
    GLOBAL const BN_T* RESTRICT inv_std, GLOBAL const BN_T* RESTRICT weight,
    GLOBAL const BN_T* RESTRICT bias, GLOBAL BN_T* RESTRICT y, i64 n, i64 channels,
    i64 inner, i64 has_weight, i64 has_bias)
{
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0) {
        const i64 c = n <= 0xffffffffL ? (i64)(((u32)i / (u32)inner) % (u32)channels)
                                       : (i / inner) % channels;
        const BN_T v = BN_MUL_RN(x[i] - mean[c],
                                 BN_NAME(bn_scale)(inv_std, weight, has_weight, c));
        y[i] = has_bias ? BN_ADD_RN(v, bias[c]) : v;
    }
}

/* ---- backward ----------------------------------------------------------------------------- */

KERNEL void BN_NAME(bn_backward_sums)(
    GLOBAL const BN_T* RESTRICT grad, GLOBAL const BN_T* RESTRICT x,
    GLOBAL const BN_T* RESTRICT mean, GLOBAL const BN_T* RESTRICT inv_std,
    GLOBAL BN_T* RESTRICT partial, GLOBAL BN_T* RESTRICT grad_weight,
    GLOBAL BN_T* RESTRICT grad_bias, i64 batch, i64 channels, i64 inner, i64 chunks,
    i64 by_rows)
{
    LOCAL BN_T sums[BN_GROUP];
    LOCAL BN_T products[BN_GROUP];
    const u32 lid = LOCAL_ID_0;
    for (i64 g = GROUP_ID_0; g < channels * chunks; g += NUM_GROUPS_0) {
        i64 j0, j1;
        const i64 c = bn_chunk(g, chunks, batch * inner, &j0, &j1);
        const BN_T m = mean[c];
        BN_T s = (BN_T)0, p = (BN_T)0;
        BN_FOR_CHUNK(c, j0, j1, lid, at, {
            const BN_T gv = grad[at];
            s += gv;
            p += gv * (x[at] - m);
        });
        sums[lid] = s;
        products[lid] = p;
        BN_NAME(bn_group_sum2)(sums, products, lid);
        if (lid == 0) {
            if (chunks == 1) {
                grad_bias[c] = sums[0];
                grad_weight[c] = products[0] * inv_std[c];
            } else {
                partial[2 * g] = sums[0];
                partial[2 * g + 1] = products[0];
            }
        }
        LOCAL_BARRIER;
    }
}

KERNEL void BN_NAME(bn_backward_sums_finish)(
    GLOBAL const BN_T* RESTRICT partial, GLOBAL const BN_T* RESTRICT inv_std,
    GLOBAL BN_T* RESTRICT grad_weight, GLOBAL BN_T* RESTRICT grad_bias, i64 channels,
    i64 chunks)
{
    for (i64 c = GLOBAL_ID_0; c < channels; c += GLOBAL_SIZE_0) {
        GLOBAL const BN_T* p = partial + 2 * c * chunks;
        BN_T s = (BN_T)0, prod = (BN_T)0;
        for (i64 q = 0; q < chunks; ++q) {
            s += p[2 * q];
            prod += p[2 * q + 1];
        }
        grad_bias[c] = s;
        grad_weight[c] = prod * inv_std[c];
    }
}

/* dx = ((g - grad_shift) - (x - mean) * x_scale) * scale; evaluation: g * scale */
INLINE BN_T BN_NAME(bn_input_grad)(BN_T g, BN_T v, BN_T m, BN_T scale, BN_T grad_shift,
                                   BN_T x_scale, i64 training)
{
    return training ? ((g - grad_shift) - (v - m) * x_scale) * scale : g * scale;
}

/* the coefficients of channel c: scale, grad_shift and x_scale of bn_input_grad */
#define BN_INPUT_COEFFICIENTS(c)                                                           \
    const BN_T m_ = mean[c], inv_ = inv_std[c];                                            \
    const BN_T scale_ = has_weight ? inv_ * weight[c] : inv_;                              \
    const BN_T grad_shift_ = training ? grad_bias[c] / (BN_T)count : (BN_T)0;              \
    const BN_T x_scale_ = training ? inv_ * (grad_weight[c] / (BN_T)count) : (BN_T)0

KERNEL void BN_NAME(bn_backward_input_rows)(
    GLOBAL const BN_T* RESTRICT grad, GLOBAL const BN_T* RESTRICT x,
    GLOBAL const BN_T* RESTRICT mean, GLOBAL const BN_T* RESTRICT inv_std,
    GLOBAL const BN_T* RESTRICT weight, GLOBAL const BN_T* RESTRICT grad_weight,
    GLOBAL const BN_T* RESTRICT grad_bias, GLOBAL BN_T* RESTRICT dx, i64 row0, i64 cols,
    i64 channels, i64 on_cols, i64 has_weight, i64 training, i64 count)
{
    const i64 r = row0 + GROUP_ID_1;
    GLOBAL const BN_T* g = grad + r * cols;
    GLOBAL const BN_T* v = x + r * cols;
    GLOBAL BN_T* out = dx + r * cols;
    if (on_cols) {
        for (i64 k = GLOBAL_ID_0; k < cols; k += GLOBAL_SIZE_0) {
            BN_INPUT_COEFFICIENTS(k);
            out[k] = BN_NAME(bn_input_grad)(g[k], v[k], m_, scale_, grad_shift_, x_scale_,
                                            training);
        }
        return;
    }
    const i64 c = r % channels;
    BN_INPUT_COEFFICIENTS(c);
    if (training) {
        for (i64 k = GLOBAL_ID_0; k < cols; k += GLOBAL_SIZE_0)
            out[k] = ((g[k] - grad_shift_) - (v[k] - m_) * x_scale_) * scale_;
    } else {
        for (i64 k = GLOBAL_ID_0; k < cols; k += GLOBAL_SIZE_0)
            out[k] = g[k] * scale_;
    }
}

KERNEL void BN_NAME(bn_backward_input_flat)(
    GLOBAL const BN_T* RESTRICT grad, GLOBAL const BN_T* RESTRICT x,
    GLOBAL const BN_T* RESTRICT mean, GLOBAL const BN_T* RESTRICT inv_std,
    GLOBAL const BN_T* RESTRICT weight, GLOBAL const BN_T* RESTRICT grad_weight,
    GLOBAL const BN_T* RESTRICT grad_bias, GLOBAL BN_T* RESTRICT dx, i64 n, i64 channels,
    i64 inner, i64 has_weight, i64 training, i64 count)
{
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0) {
        const i64 c = n <= 0xffffffffL ? (i64)(((u32)i / (u32)inner) % (u32)channels)
                                       : (i / inner) % channels;
        BN_INPUT_COEFFICIENTS(c);
        dx[i] = BN_NAME(bn_input_grad)(grad[i], training ? x[i] : (BN_T)0, m_, scale_,
                                       grad_shift_, x_scale_, training);
    }
}
