// Batch normalisation forward and backward, as Backend.batch_norm_forward / _backward in
// gpumat/backends/base.py specify them, for x seen as (batch, channels, inner).
//
// Each channel is finished before the next is started: its statistics (or gradient sums)
// are gathered over its batch rows, and the same rows, still in the core's cache (a channel
// of a CNN batch is well under a megabyte), are then mapped.  So the forward and the
// backward each read their inputs from memory about once.  Short rows (inner below
// kBatchNormColumnInner: N x C, or tiny feature maps) go column-wise instead: every row of
// (channels * inner) values at once, with per-column accumulators and coefficients, so the
// loops stay long and vectorise.
//
// Statistics are accumulated in double around a per-channel shift (the channel's first
// value): the differences of float values are exact in double, so a large mean with a small
// spread loses nothing.  The per-element maps are in T with the NumPy twin's order of
// operations (gpumat/backends/batchnorm_array_module.py):
//   y  = (x - mean) * (inv_std * weight) + bias
//   dx = ((grad - dbias / M) - (x - mean) * (inv_std * (dweight / M))) * (inv_std * weight)
// with dbias = sum(grad), dweight = sum(grad * (x - mean)) * inv_std per channel and M the
// values per channel; evaluation's dx is grad * (inv_std * weight).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.hpp"

namespace gpumat {

// Rows shorter than this go column-wise.
constexpr int64_t kBatchNormColumnInner = 16;

struct BatchNormShape {
    int64_t batch, channels, inner;
    int64_t per_channel() const { return batch * inner; }
    int64_t total() const { return batch * channels * inner; }
    bool column_wise() const { return inner < kBatchNormColumnInner; }
};

// Per-channel results and arguments of a forward pass; the pointers a mode does not use are
// null.  weight and bias may be null (1 and 0).
template <class T>
struct BatchNormForward {
    const T *x, *weight, *bias;
    const T *mean_in, *var_in;          // evaluation's statistics; null in training
    T *y, *mean, *var, *inv_std;        // mean and var are written in training only
    double eps;
};

template <class T>
struct BatchNormBackward {
    const T *grad, *x, *mean, *inv_std, *weight;
    T *grad_x, *grad_weight, *grad_bias;   // null when not asked for (the last two together)
    bool training;
};

// Mean and biased variance from shifted sums s1 = sum(v - shift), s2 = sum((v - shift)^2).
inline void moments(double shift, double s1, double s2, double count, double &mean,
                    double &var) {
    const double d = s1 / count;
    mean = shift + d;
    var = std::max(s2 / count - d * d, 0.0);
}

// The training statistics of one channel, written as T.
template <class T>
void store_statistics(const BatchNormForward<T> &f, int64_t c, double shift, double s1,
                      double s2, double count) {
    double mean, var;
    moments(shift, s1, s2, count, mean, var);
    f.mean[c] = (T) mean;
    f.var[c] = (T) var;
    f.inv_std[c] = (T) (1.0 / std::sqrt(var + f.eps));
}

// Evaluation's 1 / sqrt(var + eps) of one channel, in T.
template <class T>
T evaluation_inv_std(T var, double eps) {
    return T(1) / std::sqrt(var + (T) eps);
}

template <class T>
T channel_scale(const T *inv_std, const T *weight, int64_t c) {
    return weight ? inv_std[c] * weight[c] : inv_std[c];
}

// y = (x - mean) * scale (+ shift) over `count` values.
template <class T>
void normalize_values(const T *x, T *y, int64_t count, T mean, T scale, const T *bias) {
    if (bias) {
        const T shift = *bias;
#pragma omp simd
        for (int64_t i = 0; i < count; ++i)
            y[i] = (x[i] - mean) * scale + shift;
    } else {
#pragma omp simd
        for (int64_t i = 0; i < count; ++i)
            y[i] = (x[i] - mean) * scale;
    }
}

// ---- forward ----------------------------------------------------------------------------------

template <class T>
void batch_norm_forward_by_channel(const BatchNormForward<T> &f, const BatchNormShape &s) {
    const bool training = f.mean_in == nullptr;
    const int64_t inner = s.inner, count = s.per_channel();
    parallel_for_chunks(s.channels, (training ? 2 : 1) * s.total(),
                        [&](int64_t first, int64_t last) {
        for (int64_t c = first; c < last; ++c) {
            if (training) {
                const double shift = (double) f.x[c * inner];
                double s1 = 0.0, s2 = 0.0;
                for (int64_t n = 0; n < s.batch; ++n) {
                    const T *row = f.x + (n * s.channels + c) * inner;
                    double r1 = 0.0, r2 = 0.0;
#pragma omp simd reduction(+ : r1, r2)
                    for (int64_t i = 0; i < inner; ++i) {
                        const double d = (double) row[i] - shift;
                        r1 += d;
                        r2 += d * d;
                    }
                    s1 += r1;
                    s2 += r2;
                }
                store_statistics(f, c, shift, s1, s2, (double) count);
            }
            const T mean = training ? f.mean[c] : f.mean_in[c];
            const T scale = channel_scale(f.inv_std, f.weight, c);
            for (int64_t n = 0; n < s.batch; ++n) {
                const int64_t at = (n * s.channels + c) * inner;
                normalize_values(f.x + at, f.y + at, inner, mean, scale,
                                 f.bias ? f.bias + c : nullptr);
            }
        }
    });
}

// Per-column copies of per-channel values: out[c * inner + k] = value(c).
template <class T, class Value>
std::vector<T> per_column(const BatchNormShape &s, Value &&value) {
    std::vector<T> out((size_t) (s.channels * s.inner));
    for (int64_t c = 0; c < s.channels; ++c)
        std::fill(out.begin() + c * s.inner, out.begin() + (c + 1) * s.inner, (T) value(c));
    return out;
}

// Calls body(first_row, last_row) over the batch in parallel chunks.
template <class Body>
void over_rows(const BatchNormShape &s, int64_t work, Body &&body) {
    parallel_for_chunks(s.batch, work, body);
}

template <class T>
void batch_norm_forward_by_column(const BatchNormForward<T> &f, const BatchNormShape &s) {
    const int64_t width = s.channels * s.inner;
    if (f.mean_in == nullptr) {
        // columns of one channel share its shift, so their sums add up directly
        const std::vector<double> shift = per_column<double>(
            s, [&](int64_t c) { return (double) f.x[c * s.inner]; });
        std::vector<double> s1((size_t) width, 0.0), s2((size_t) width, 0.0);
        parallel_for_chunks(width, s.total(), [&](int64_t first, int64_t last) {
            for (int64_t n = 0; n < s.batch; ++n) {
                const T *row = f.x + n * width;
                double *a = s1.data(), *b = s2.data();
                const double *k = shift.data();
#pragma omp simd
                for (int64_t j = first; j < last; ++j) {
                    const double d = (double) row[j] - k[j];
                    a[j] += d;
                    b[j] += d * d;
                }
            }
        });
        for (int64_t c = 0; c < s.channels; ++c) {
            double t1 = 0.0, t2 = 0.0;
            for (int64_t k = 0; k < s.inner; ++k) {
                t1 += s1[(size_t) (c * s.inner + k)];
                t2 += s2[(size_t) (c * s.inner + k)];
            }
            store_statistics(f, c, shift[(size_t) (c * s.inner)], t1, t2,
                             (double) s.per_channel());
        }
    }
    const T *mean_of = f.mean_in ? f.mean_in : f.mean;
    const std::vector<T> mean = per_column<T>(s, [&](int64_t c) { return mean_of[c]; });
    const std::vector<T> scale = per_column<T>(
        s, [&](int64_t c) { return channel_scale(f.inv_std, f.weight, c); });
    const std::vector<T> shift = per_column<T>(
        s, [&](int64_t c) { return f.bias ? f.bias[c] : T(0); });
    over_rows(s, s.total(), [&](int64_t first, int64_t last) {
        const T *m = mean.data(), *a = scale.data(), *b = shift.data();
        for (int64_t n = first; n < last; ++n) {
            const T *in = f.x + n * width;
            T *out = f.y + n * width;
            if (f.bias) {
#pragma omp simd
                for (int64_t j = 0; j < width; ++j)
                    out[j] = (in[j] - m[j]) * a[j] + b[j];
            } else {
#pragma omp simd
                for (int64_t j = 0; j < width; ++j)
                    out[j] = (in[j] - m[j]) * a[j];
            }
        }
    });
}

template <class T>
void batch_norm_forward(const BatchNormForward<T> &f, const BatchNormShape &s) {
    if (f.mean_in != nullptr)           // evaluation: inv_std from the given variance, in T
        for (int64_t c = 0; c < s.channels; ++c)
            f.inv_std[c] = evaluation_inv_std(f.var_in[c], f.eps);
    if (s.total() == 0)                 // training has M >= 1 here, so only C == 0 or N == 0
        return;
    if (s.column_wise())
        batch_norm_forward_by_column(f, s);
    else
        batch_norm_forward_by_channel(f, s);
}

// ---- backward ---------------------------------------------------------------------------------

// The per-channel coefficients of dx: dx = ((grad - grad_shift) - (x - mean) * x_scale) * scale
template <class T>
struct InputGradientMap {
    T mean, scale, grad_shift, x_scale;
};

template <class T>
InputGradientMap<T> input_gradient_map(const BatchNormBackward<T> &b, int64_t c, T grad_bias,
                                       T grad_weight, T count) {
    InputGradientMap<T> map{b.mean[c], channel_scale(b.inv_std, b.weight, c), T(0), T(0)};
    if (b.training) {
        map.grad_shift = grad_bias / count;
        map.x_scale = b.inv_std[c] * (grad_weight / count);
    }
    return map;
}

template <class T>
void input_gradient_values(const BatchNormBackward<T> &b, int64_t at, int64_t count,
                           const InputGradientMap<T> &map) {
    const T *g = b.grad + at, *v = b.x + at;
    T *out = b.grad_x + at;
    if (b.training) {
#pragma omp simd
        for (int64_t i = 0; i < count; ++i)
            out[i] = ((g[i] - map.grad_shift) - (v[i] - map.mean) * map.x_scale) * map.scale;
    } else {
#pragma omp simd
        for (int64_t i = 0; i < count; ++i)
            out[i] = g[i] * map.scale;
    }
}

template <class T>
void batch_norm_backward_by_channel(const BatchNormBackward<T> &b, const BatchNormShape &s) {
    const bool sums = b.training || b.grad_weight != nullptr;
    const int64_t inner = s.inner;
    const T count = (T) s.per_channel();
    const int64_t work = ((sums ? 2 : 0) + (b.grad_x ? 3 : 0)) * s.total();
    parallel_for_chunks(s.channels, work, [&](int64_t first, int64_t last) {
        for (int64_t c = first; c < last; ++c) {
            T grad_bias = T(0), grad_weight = T(0);
            if (sums) {
                const double mean = (double) b.mean[c];
                double s_grad = 0.0, s_product = 0.0;
                for (int64_t n = 0; n < s.batch; ++n) {
                    const int64_t at = (n * s.channels + c) * inner;
                    const T *g = b.grad + at, *v = b.x + at;
                    double r_grad = 0.0, r_product = 0.0;
#pragma omp simd reduction(+ : r_grad, r_product)
                    for (int64_t i = 0; i < inner; ++i) {
                        r_grad += (double) g[i];
                        r_product += (double) g[i] * ((double) v[i] - mean);
                    }
                    s_grad += r_grad;
                    s_product += r_product;
                }
                grad_bias = (T) s_grad;
                grad_weight = (T) (s_product * (double) b.inv_std[c]);
                if (b.grad_weight) {
                    b.grad_bias[c] = grad_bias;
                    b.grad_weight[c] = grad_weight;
                }
            }
            if (b.grad_x) {
                const auto map = input_gradient_map(b, c, grad_bias, grad_weight, count);
                for (int64_t n = 0; n < s.batch; ++n)
                    input_gradient_values(b, (n * s.channels + c) * inner, inner, map);
            }
        }
    });
}

template <class T>
void batch_norm_backward_by_column(const BatchNormBackward<T> &b, const BatchNormShape &s) {
    const bool sums = b.training || b.grad_weight != nullptr;
    const int64_t width = s.channels * s.inner;
    std::vector<T> grad_bias((size_t) s.channels, T(0)), grad_weight((size_t) s.channels, T(0));
    if (sums) {
        const std::vector<double> mean = per_column<double>(
            s, [&](int64_t c) { return (double) b.mean[c]; });
        std::vector<double> s_grad((size_t) width, 0.0), s_product((size_t) width, 0.0);
        parallel_for_chunks(width, 2 * s.total(), [&](int64_t first, int64_t last) {
            for (int64_t n = 0; n < s.batch; ++n) {
                const T *g = b.grad + n * width, *v = b.x + n * width;
                double *a = s_grad.data(), *p = s_product.data();
                const double *m = mean.data();
#pragma omp simd
                for (int64_t j = first; j < last; ++j) {
                    a[j] += (double) g[j];
                    p[j] += (double) g[j] * ((double) v[j] - m[j]);
                }
            }
        });
        for (int64_t c = 0; c < s.channels; ++c) {
            double t_grad = 0.0, t_product = 0.0;
            for (int64_t k = 0; k < s.inner; ++k) {
                t_grad += s_grad[(size_t) (c * s.inner + k)];
                t_product += s_product[(size_t) (c * s.inner + k)];
            }
            grad_bias[(size_t) c] = (T) t_grad;
            grad_weight[(size_t) c] = (T) (t_product * (double) b.inv_std[c]);
            if (b.grad_weight) {
                b.grad_bias[c] = grad_bias[(size_t) c];
                b.grad_weight[c] = grad_weight[(size_t) c];
            }
        }
    }
    if (!b.grad_x)
        return;
    const T count = (T) s.per_channel();
    std::vector<InputGradientMap<T>> maps((size_t) s.channels);
    for (int64_t c = 0; c < s.channels; ++c)
        maps[(size_t) c] = input_gradient_map(b, c, grad_bias[(size_t) c],
                                              grad_weight[(size_t) c], count);
    const std::vector<T> mean = per_column<T>(s, [&](int64_t c) { return maps[c].mean; });
    const std::vector<T> scale = per_column<T>(s, [&](int64_t c) { return maps[c].scale; });
    const std::vector<T> grad_shift = per_column<T>(
        s, [&](int64_t c) { return maps[c].grad_shift; });
    const std::vector<T> x_scale = per_column<T>(s, [&](int64_t c) { return maps[c].x_scale; });
    over_rows(s, 3 * s.total(), [&](int64_t first, int64_t last) {
        const T *m = mean.data(), *a = scale.data(), *k = grad_shift.data(),
                *q = x_scale.data();
        for (int64_t n = first; n < last; ++n) {
            const T *g = b.grad + n * width, *v = b.x + n * width;
            T *out = b.grad_x + n * width;
            if (b.training) {
#pragma omp simd
                for (int64_t j = 0; j < width; ++j)
                    out[j] = ((g[j] - k[j]) - (v[j] - m[j]) * q[j]) * a[j];
            } else {
#pragma omp simd
                for (int64_t j = 0; j < width; ++j)
                    out[j] = g[j] * a[j];
            }
        }
    });
}

template <class T>
void batch_norm_backward(const BatchNormBackward<T> &b, const BatchNormShape &s) {
    if (s.total() == 0) {               // sums over nothing; no dx to write
        if (b.grad_weight)
            for (int64_t c = 0; c < s.channels; ++c)
                b.grad_weight[c] = b.grad_bias[c] = T(0);
        return;
    }
    if (s.column_wise())
        batch_norm_backward_by_column(b, s);
    else
        batch_norm_backward_by_channel(b, s);
}

}  // namespace gpumat
