/* OpenCL-only batch normalisation for CPU devices (PoCL & co); included by batchnorm.cl once
 * per type (BN_T, BN_SUFFIX and BN_NAME come from there and common/batchnorm.h).
 *
 * One work-item per channel does the whole channel, as gpumat's native CPU kernels do: the
 * statistics (or the gradient sums) over the channel's rows, then the map over the same
 * rows, which are still in the core's cache.  So a forward or backward pass is one launch
 * that reads its inputs from memory about once, where the portable kernels take two launches
 * and, on a CPU, pay for work-group barriers and per-row work-groups.  Rows are walked eight
 * values at a time (vload8 / vstore8); the sums are per lane, per row, then across rows.
 * The values are those of common/batchnorm.h up to summation order:
 *
 *   bn_forward_vec(const T* x, const T* mean_in, const T* var_in, const T* weight,
 *                  const T* bias, T* y, T* mean, T* var, T* inv_std, i64 batch,
 *                  i64 channels, i64 inner, i64 has_weight, i64 has_bias, i64 training, T eps)
 *       training: the two-pass statistics around the channel's first value, written to
 *       mean, var, inv_std; evaluation: inv_std from var_in (mean_in is the mean, and the
 *       mean / var outputs are not written); then y
 *   bn_backward_vec(const T* grad, const T* x, const T* mean, const T* inv_std,
 *                   const T* weight, T* dx, T* grad_weight, T* grad_bias, i64 batch,
 *                   i64 channels, i64 inner, i64 has_weight, i64 training, i64 input_grad,
 *                   i64 param_grads)
 *       the sums (when training or param_grads; written when param_grads), then dx (when
 *       input_grad)
 * Launch one work-item per channel (any local size; a small one lets the channels spread
 * over the cores).
 */
#define BN_V BN_CAT(BN_T, 8)

INLINE BN_T BN_NAME(bn_lanes_sum)(BN_V v)
{
    return ((v.s0 + v.s1) + (v.s2 + v.s3)) + ((v.s4 + v.s5) + (v.s6 + v.s7));
}

/* Offset of row n of channel c. */
#define BN_ROW(n) (((n) * channels + c) * inner)

KERNEL void BN_NAME(bn_forward_vec)(
    GLOBAL const BN_T* RESTRICT x, GLOBAL const BN_T* RESTRICT mean_in,
    GLOBAL const BN_T* RESTRICT var_in, GLOBAL const BN_T* RESTRICT weight,
    GLOBAL const BN_T* RESTRICT bias, GLOBAL BN_T* RESTRICT y, GLOBAL BN_T* RESTRICT mean,
    GLOBAL BN_T* RESTRICT var, GLOBAL BN_T* RESTRICT inv_std, i64 batch, i64 channels,
    i64 inner, i64 has_weight, i64 has_bias, i64 training, BN_T eps)
{
    const i64 whole = inner & ~(i64)7;
    for (i64 c = GLOBAL_ID_0; c < channels; c += GLOBAL_SIZE_0) {
        BN_T m, inv;
        if (training) {
            const BN_T base = x[c * inner], count = (BN_T)(batch * inner);
            BN_T s = (BN_T)0;
            for (i64 n = 0; n < batch; ++n) {
                GLOBAL const BN_T* row = x + BN_ROW(n);
                BN_V sv = (BN_V)0;
                BN_T st = (BN_T)0;
                for (i64 k = 0; k < whole; k += 8)
                    sv += vload8(0, row + k) - base;
                for (i64 k = whole; k < inner; ++k)
                    st += row[k] - base;
                s += BN_NAME(bn_lanes_sum)(sv) + st;
            }
            const BN_T shift = s / count;
            BN_T s1 = (BN_T)0, s2 = (BN_T)0;
            for (i64 n = 0; n < batch; ++n) {
                GLOBAL const BN_T* row = x + BN_ROW(n);
                BN_V v1 = (BN_V)0, v2 = (BN_V)0;
                BN_T t1 = (BN_T)0, t2 = (BN_T)0;
                for (i64 k = 0; k < whole; k += 8) {
                    const BN_V d = (vload8(0, row + k) - base) - shift;
                    v1 += d;
                    v2 += d * d;
                }
                for (i64 k = whole; k < inner; ++k) {
                    const BN_T d = (row[k] - base) - shift;
                    t1 += d;
                    t2 += d * d;
                }
                s1 += BN_NAME(bn_lanes_sum)(v1) + t1;
                s2 += BN_NAME(bn_lanes_sum)(v2) + t2;
            }
            const BN_T d_mean = s1 / count, m2 = s2 - s1 * d_mean;
            const BN_T v = (m2 > (BN_T)0 ? m2 : (BN_T)0) / count;
            m = base + (shift + d_mean);
            inv = BN_NAME(bn_inverse_std)(v, eps);
            mean[c] = m;
            var[c] = v;
        } else {
            m = mean_in[c];
            inv = BN_NAME(bn_inverse_std)(var_in[c], eps);
        }
        inv_std[c] = inv;
        const BN_T a = has_weight ? inv * weight[c] : inv, b = has_bias ? bias[c] : (BN_T)0;
        for (i64 n = 0; n < batch; ++n) {
            GLOBAL const BN_T* src = x + BN_ROW(n);
            GLOBAL BN_T* dst = y + BN_ROW(n);
            if (has_bias) {
                for (i64 k = 0; k < whole; k += 8)
                    vstore8((vload8(0, src + k) - m) * a + b, 0, dst + k);
                for (i64 k = whole; k < inner; ++k)
                    dst[k] = (src[k] - m) * a + b;
            } else {
                for (i64 k = 0; k < whole; k += 8)
                    vstore8((vload8(0, src + k) - m) * a, 0, dst + k);
                for (i64 k = whole; k < inner; ++k)
                    dst[k] = (src[k] - m) * a;
            }
        }
    }
}

KERNEL void BN_NAME(bn_backward_vec)(
    GLOBAL const BN_T* RESTRICT grad, GLOBAL const BN_T* RESTRICT x,
    GLOBAL const BN_T* RESTRICT mean, GLOBAL const BN_T* RESTRICT inv_std,
    GLOBAL const BN_T* RESTRICT weight, GLOBAL BN_T* RESTRICT dx,
    GLOBAL BN_T* RESTRICT grad_weight, GLOBAL BN_T* RESTRICT grad_bias, i64 batch,
    i64 channels, i64 inner, i64 has_weight, i64 training, i64 input_grad, i64 param_grads)
{
    const i64 whole = inner & ~(i64)7;
    for (i64 c = GLOBAL_ID_0; c < channels; c += GLOBAL_SIZE_0) {
        const BN_T m = mean[c], inv = inv_std[c], count = (BN_T)(batch * inner);
        BN_T sum_grad = (BN_T)0, sum_grad_xhat = (BN_T)0;
        if (training || param_grads) {
            BN_T s = (BN_T)0, p = (BN_T)0;
            for (i64 n = 0; n < batch; ++n) {
                GLOBAL const BN_T* g = grad + BN_ROW(n);
                GLOBAL const BN_T* v = x + BN_ROW(n);
                BN_V sv = (BN_V)0, pv = (BN_V)0;
                BN_T st = (BN_T)0, pt = (BN_T)0;
                for (i64 k = 0; k < whole; k += 8) {
                    const BN_V gv = vload8(0, g + k);
                    sv += gv;
                    pv += gv * (vload8(0, v + k) - m);
                }
                for (i64 k = whole; k < inner; ++k) {
                    st += g[k];
                    pt += g[k] * (v[k] - m);
                }
                s += BN_NAME(bn_lanes_sum)(sv) + st;
                p += BN_NAME(bn_lanes_sum)(pv) + pt;
            }
            sum_grad = s;
            sum_grad_xhat = p * inv;
            if (param_grads) {
                grad_bias[c] = sum_grad;
                grad_weight[c] = sum_grad_xhat;
            }
        }
        if (!input_grad)
            continue;
        const BN_T scale = has_weight ? inv * weight[c] : inv;
        const BN_T grad_shift = training ? sum_grad / count : (BN_T)0;
        const BN_T x_scale = training ? inv * (sum_grad_xhat / count) : (BN_T)0;
        for (i64 n = 0; n < batch; ++n) {
            GLOBAL const BN_T* g = grad + BN_ROW(n);
            GLOBAL const BN_T* v = x + BN_ROW(n);
            GLOBAL BN_T* out = dx + BN_ROW(n);
            if (training) {
                for (i64 k = 0; k < whole; k += 8)
                    vstore8(((vload8(0, g + k) - grad_shift) - (vload8(0, v + k) - m) * x_scale)
                            * scale, 0, out + k);
                for (i64 k = whole; k < inner; ++k)
                    out[k] = ((g[k] - grad_shift) - (v[k] - m) * x_scale) * scale;
            } else {
                for (i64 k = 0; k < whole; k += 8)
                    vstore8(vload8(0, g + k) * scale, 0, out + k);
                for (i64 k = whole; k < inner; ++k)
                    out[k] = g[k] * scale;
            }
        }
    }
}

#undef BN_ROW
#undef BN_V
