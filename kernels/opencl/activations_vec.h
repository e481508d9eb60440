/* OpenCL-only vector softmax for CPU devices; included by activations.cl once per type
 * (ACT_T, ACT_SUFFIX and ACT_NAME come from there and common/activations.h). */
#define ACT_V ACT_CAT(ACT_T, 8)

/* act_apply of common/activations.h, eight lanes at once (select(a, b, c) = c ? b : a) */
INLINE ACT_V ACT_NAME(act_apply8)(ACT_V v, i64 act, ACT_T param)
{
    const ACT_V zero = (ACT_V)0;
    switch (act) {
    case ACT_RELU:       return select(v, zero, v < zero);
    case ACT_LEAKY_RELU: return select(v * param, v, v > zero);
    case ACT_RELU6:      return select(select(v, (ACT_V)6, v > (ACT_V)6), zero, v < zero);
    case ACT_ELU:        return select(param * expm1(v), v, v > zero);
    default:             return v;
    }
}

/* act_grad of common/activations.h, eight lanes at once */
INLINE ACT_V ACT_NAME(act_grad8)(ACT_V g, ACT_V v, i64 act, ACT_T param)
{
    const ACT_V zero = (ACT_V)0;
    switch (act) {
    case ACT_RELU:       return select(g, zero, v <= zero);
    case ACT_LEAKY_RELU: return select(g * param, g, v > zero);
    case ACT_RELU6:      return select(g, zero, (v <= zero) | (v >= (ACT_V)6));
    case ACT_ELU:        return select(g, g * param * exp(v), v <= zero);
    default:             return g;
    }
}

/* activation (no bias) and its backward, one work-item per chunk of `chunk` elements (a
 * multiple of 8) of the flat arrays */
KERNEL void ACT_NAME(act_chunks_vec)(
    GLOBAL const ACT_T* RESTRICT x, GLOBAL ACT_T* RESTRICT out, i64 n, i64 chunk, i64 act,
    ACT_T param)
{
    const i64 chunks = (n + chunk - 1) / chunk;
    for (i64 t = GLOBAL_ID_0; t < chunks; t += GLOBAL_SIZE_0) {
        const i64 start = t * chunk;
        const i64 end = start + chunk < n ? start + chunk : n;
        const i64 whole = start + ((end - start) & ~(i64)7);
        for (i64 k = start; k < whole; k += 8)
            vstore8(ACT_NAME(act_apply8)(vload8(0, x + k), act, param), 0, out + k);
        for (i64 k = whole; k < end; ++k)
            out[k] = ACT_NAME(act_apply)(x[k], act, param);
    }
}

KERNEL void ACT_NAME(act_backward_chunks_vec)(
    GLOBAL const ACT_T* RESTRICT grad, GLOBAL const ACT_T* RESTRICT x,
    GLOBAL ACT_T* RESTRICT out, i64 n, i64 chunk, i64 act, ACT_T param)
{
    const i64 chunks = (n + chunk - 1) / chunk;
    for (i64 t = GLOBAL_ID_0; t < chunks; t += GLOBAL_SIZE_0) {
        const i64 start = t * chunk;
        const i64 end = start + chunk < n ? start + chunk : n;
        const i64 whole = start + ((end - start) & ~(i64)7);
        for (i64 k = start; k < whole; k += 8)
            vstore8(ACT_NAME(act_grad8)(vload8(0, grad + k), vload8(0, x + k), act, param), 0,
                    out + k);
        for (i64 k = whole; k < end; ++k)
            out[k] = ACT_NAME(act_grad)(grad[k], x[k], act, param);
    }
}

/* bias gradient, one work-item per channel: the sum of its (outer) rows of `inner`
 * contiguous elements, eight lanes at a time */
KERNEL void ACT_NAME(bias_grad_vec)(
    GLOBAL const ACT_T* RESTRICT grad, GLOBAL ACT_T* RESTRICT out, i64 outer, i64 channels,
    i64 inner)
{
    const i64 whole = inner & ~(i64)7;
    for (i64 c = GLOBAL_ID_0; c < channels; c += GLOBAL_SIZE_0) {
        ACT_V sv = (ACT_V)0;
        ACT_T s = (ACT_T)0;
        for (i64 o = 0; o < outer; ++o) {
            GLOBAL const ACT_T* row = grad + (o * channels + c) * inner;
            for (i64 k = 0; k < whole; k += 8)
                sv += vload8(0, row + k);
            for (i64 k = whole; k < inner; ++k)
                s += row[k];
        }
        out[c] = s + (((sv.s0 + sv.s1) + (sv.s2 + sv.s3)) + ((sv.s4 + sv.s5) + (sv.s6 + sv.s7)));
    }
}

/* bias + activation, one work-item per row of x seen as rows x cols; the bias is bias[col]
 * (bias_on_cols) or bias[row % channels] */
KERNEL void ACT_NAME(bias_act_rows_vec)(
    GLOBAL const ACT_T* RESTRICT x, GLOBAL const ACT_T* RESTRICT bias,
    GLOBAL ACT_T* RESTRICT out, i64 rows, i64 cols, i64 channels, i64 bias_on_cols, i64 act,
    ACT_T param)
{
    const i64 whole = cols & ~(i64)7;
    for (i64 r = GLOBAL_ID_0; r < rows; r += GLOBAL_SIZE_0) {
        GLOBAL const ACT_T* src = x + r * cols;
        GLOBAL ACT_T* dst = out + r * cols;
        if (bias_on_cols) {
            for (i64 k = 0; k < whole; k += 8)
                vstore8(ACT_NAME(act_apply8)(vload8(0, src + k) + vload8(0, bias + k), act,
                                             param), 0, dst + k);
            for (i64 k = whole; k < cols; ++k)
                dst[k] = ACT_NAME(act_apply)(src[k] + bias[k], act, param);
        } else {
            const ACT_T b = bias[r % channels];
            for (i64 k = 0; k < whole; k += 8)
                vstore8(ACT_NAME(act_apply8)(vload8(0, src + k) + b, act, param), 0, dst + k);
            for (i64 k = whole; k < cols; ++k)
                dst[k] = ACT_NAME(act_apply)(src[k] + b, act, param);
        }
    }
}

KERNEL void ACT_NAME(softmax_rows_vec)(
    GLOBAL const ACT_T* RESTRICT x, GLOBAL ACT_T* RESTRICT y, i64 lines, i64 length, i64 log_)
{
    const i64 whole = length & ~(i64)7;
    for (i64 g = GLOBAL_ID_0; g < lines; g += GLOBAL_SIZE_0) {
        GLOBAL const ACT_T* src = x + g * length;
        GLOBAL ACT_T* dst = y + g * length;
        ACT_T m = src[0];
        if (whole) {
            ACT_V mv = vload8(0, src);
            for (i64 k = 8; k < whole; k += 8) {
                const ACT_V v = vload8(0, src + k);
                mv = select(mv, v, (v > mv) | isnan(v));     /* NaN-propagating max */
            }
            const ACT_T lanes[8] = {mv.s0, mv.s1, mv.s2, mv.s3, mv.s4, mv.s5, mv.s6, mv.s7};
            for (int j = 0; j < 8; ++j)
                m = ACT_NAME(nan_max)(m, lanes[j]);
        }
        for (i64 k = whole; k < length; ++k)
            m = ACT_NAME(nan_max)(m, src[k]);
        ACT_V sv = (ACT_V)0;
        ACT_T s = (ACT_T)0;
        if (log_) {
            for (i64 k = 0; k < whole; k += 8)
                sv += exp(vload8(0, src + k) - m);
            for (i64 k = whole; k < length; ++k)
                s += exp(src[k] - m);
        } else {
            for (i64 k = 0; k < whole; k += 8) {
                const ACT_V e = exp(vload8(0, src + k) - m);
                vstore8(e, 0, dst + k);
                sv += e;
            }
            for (i64 k = whole; k < length; ++k) {
                const ACT_T e = exp(src[k] - m);
                dst[k] = e;
                s += e;
            }
        }
        s += ((sv.s0 + sv.s1) + (sv.s2 + sv.s3)) + ((sv.s4 + sv.s5) + (sv.s6 + sv.s7));
        if (log_) {
            const ACT_T ls = log(s);   /* not m + log(s): with |m| large that rounds */
            for (i64 k = 0; k < whole; k += 8)
                vstore8((vload8(0, src + k) - m) - ls, 0, dst + k);
            for (i64 k = whole; k < length; ++k)
                dst[k] = (src[k] - m) - ls;
        } else {
            const ACT_T r = (ACT_T)1 / s;
            for (i64 k = 0; k < whole; k += 8)
                vstore8(vload8(0, dst + k) * r, 0, dst + k);
            for (i64 k = whole; k < length; ++k)
                dst[k] *= r;
        }
    }
}

KERNEL void ACT_NAME(softmax_backward_rows_vec)(
    GLOBAL const ACT_T* RESTRICT grad, GLOBAL const ACT_T* RESTRICT y,
    GLOBAL ACT_T* RESTRICT dx, i64 lines, i64 length, i64 log_)
{
    const i64 whole = length & ~(i64)7;
    for (i64 g = GLOBAL_ID_0; g < lines; g += GLOBAL_SIZE_0) {
        GLOBAL const ACT_T* gg = grad + g * length;
        GLOBAL const ACT_T* gy = y + g * length;
        GLOBAL ACT_T* gx = dx + g * length;
        ACT_V dv = (ACT_V)0;
        ACT_T dot = (ACT_T)0;
        if (log_) {
            for (i64 k = 0; k < whole; k += 8)
                dv += vload8(0, gg + k);
            for (i64 k = whole; k < length; ++k)
                dot += gg[k];
        } else {
            for (i64 k = 0; k < whole; k += 8)
                dv += vload8(0, gg + k) * vload8(0, gy + k);
            for (i64 k = whole; k < length; ++k)
                dot += gg[k] * gy[k];
        }
        dot += ((dv.s0 + dv.s1) + (dv.s2 + dv.s3)) + ((dv.s4 + dv.s5) + (dv.s6 + dv.s7));
        if (log_) {
            for (i64 k = 0; k < whole; k += 8)
                vstore8(vload8(0, gg + k) - exp(vload8(0, gy + k)) * dot, 0, gx + k);
            for (i64 k = whole; k < length; ++k)
                gx[k] = gg[k] - exp(gy[k]) * dot;
        } else {
            for (i64 k = 0; k < whole; k += 8)
                vstore8(vload8(0, gy + k) * (vload8(0, gg + k) - dot), 0, gx + k);
            for (i64 k = whole; k < length; ++k)
                gx[k] = gy[k] * (gg[k] - dot);
        }
    }
}

#undef ACT_V
