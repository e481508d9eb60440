// Bias + activation forward, activation backward and the bias gradient, as Backend.bias_act /
// act_backward / bias_grad in gpumat/backends/base.py specify them: one pass over memory
// each, with the NumPy path's values (gpumat/backends/activations_array_module.py) at the
// kinks, for signed zeros and for NaN:
//
//   relu       NumPy's maximum(v, 0): NaN stays NaN, -0.0 gives +0.0
//   leaky_relu v > 0 ? v : v * slope          (slope rounded to T first, as NumPy does)
//   relu6      NumPy's clip(v, 0, 6): NaN stays NaN, -0.0 stays -0.0
//   elu        v > 0 ? v : alpha * expm1(v)
//   backward   relu 0 where x <= 0; leaky_relu slope * grad where !(x > 0); relu6 0 where
//              x <= 0 or x >= 6; elu (grad * alpha) * exp(x) where x <= 0; NaN x passes
//              grad for relu, relu6 and elu.
//
// The codes are those of ACTIVATIONS in base.py (and kernels/common/activations.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.hpp"

namespace gpumat {

enum Activation : int { kIdentity = 0, kRelu = 1, kLeakyRelu = 2, kRelu6 = 3, kElu = 4 };

inline bool is_activation(int code) { return code >= kIdentity && code <= kElu; }

// Calls body(op) with the forward function of activation `code` as a lambda, so each
// activation gets its own (vectorisable) loop.
template <class T, class Body>
void with_forward(int code, T param, Body &&body) {
    switch (code) {
        case kRelu:
            body([](T v) { return (v > T(0) || v != v) ? v : T(0); });
            break;
        case kLeakyRelu:
            body([param](T v) { return v > T(0) ? v : v * param; });
            break;
        case kRelu6:
            body([](T v) {
                const T low = v < T(0) ? T(0) : v;
                return low > T(6) ? T(6) : low;
            });
            break;
        case kElu:
            body([param](T v) { return v > T(0) ? v : param * std::expm1(v); });
            break;
        default:
            body([](T v) { return v; });
            break;
    }
}

// out = act(x + bias[c]) for x viewed as (outer, channels, inner); bias may be null.
template <class T>
void bias_act(const T *x, const T *bias, T *out, int64_t outer, int64_t channels,
              int64_t inner, int code, T param) {
    const int64_t total = outer * channels * inner;
    with_forward<T>(code, param, [&](auto op) {
        if (bias == nullptr) {
            parallel_for_chunks(total, 2 * total, [&](int64_t first, int64_t last) {
#pragma omp simd
                for (int64_t i = first; i < last; ++i)
                    out[i] = op(x[i]);
            });
            return;
        }
        if (inner == 1) {       // (rows, channels): the bias runs along each row
            parallel_for_chunks(outer, 2 * total, [&](int64_t first, int64_t last) {
                for (int64_t o = first; o < last; ++o) {
                    const T *in = x + o * channels;
                    T *result = out + o * channels;
#pragma omp simd
                    for (int64_t c = 0; c < channels; ++c)
                        result[c] = op(in[c] + bias[c]);
                }
            });
            return;
        }
        parallel_for_chunks(outer * channels, 2 * total, [&](int64_t first, int64_t last) {
            for (int64_t row = first; row < last; ++row) {
                const T b = bias[row % channels];
                const T *in = x + row * inner;
                T *result = out + row * inner;
#pragma omp simd
                for (int64_t i = 0; i < inner; ++i)
                    result[i] = op(in[i] + b);
            }
        });
    });
}

// Calls body(op) with op(grad, x) = grad * act'(x) for activation `code`.  Both operands
// are loaded before the select, so the loops if-convert and vectorise (a load under a
// condition would keep them scalar, with a branch mispredicted on every sign change).
template <class T, class Body>
void with_backward(int code, T param, Body &&body) {
    switch (code) {
        case kRelu:
            body([](T g, T v) { return v <= T(0) ? T(0) : g; });
            break;
        case kLeakyRelu:
            body([param](T g, T v) { return v > T(0) ? g : g * param; });
            break;
        case kRelu6:
            body([](T g, T v) { return (v <= T(0) || v >= T(6)) ? T(0) : g; });
            break;
        case kElu:
            body([param](T g, T v) { return v <= T(0) ? g * param * std::exp(v) : g; });
            break;
        default:
            body([](T g, T) { return g; });
            break;
    }
}

// out = grad * act'(x), elementwise over `count` elements.
template <class T>
void act_backward(const T *grad, const T *x, T *out, int64_t count, int code, T param) {
    with_backward<T>(code, param, [&](auto op) {
        parallel_for_chunks(count, 2 * count, [&, op](int64_t first, int64_t last) {
            const T *g = grad, *v = x;
            T *result = out;
#pragma omp simd
            for (int64_t i = first; i < last; ++i) {
                const T gi = g[i], vi = v[i];
                result[i] = op(gi, vi);
            }
        });
    });
}

// out[c] = sum of grad (outer, channels, inner) over outer and inner, accumulated in double.
template <class T>
void bias_grad(const T *grad, T *out, int64_t outer, int64_t channels, int64_t inner) {
    const int64_t total = outer * channels * inner;
    if (inner == 1) {           // (rows, channels): add the rows, channels side by side
        std::vector<double> sum((size_t) channels, 0.0);
        for (int64_t o = 0; o < outer; ++o) {
            const T *row = grad + o * channels;
            double *s = sum.data();
#pragma omp simd
            for (int64_t c = 0; c < channels; ++c)
                s[c] += (double) row[c];
        }
        for (int64_t c = 0; c < channels; ++c)
            out[c] = (T) sum[(size_t) c];
        return;
    }
    parallel_for_chunks(channels, total, [&](int64_t first, int64_t last) {
        for (int64_t c = first; c < last; ++c) {
            double total_c = 0.0;
            for (int64_t o = 0; o < outer; ++o) {
                const T *line = grad + (o * channels + c) * inner;
                double s = 0.0;
#pragma omp simd reduction(+ : s)
                for (int64_t i = 0; i < inner; ++i)
                    s += (double) line[i];
                total_c += s;
            }
            out[c] = (T) total_c;
        }
    });
}

}  // namespace gpumat
