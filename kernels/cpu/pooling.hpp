// 2-d max and average pooling of NCHW planes, forward and backward, with PyTorch's semantics
// as gpumat/pooling.py states them, bit for bit equal to the NumPy path of the cpu backend
// (gpumat/backends/pool_array_module.py).
//
// Every window is clipped to the input: max pooling pads with -inf, which never beats the
// running maximum, and average pooling pads with zeros, which change no sum (the running sum
// starts at +0.0 and so is never -0.0), so skipping the padding gives the padded result.
// Forward passes work one output row at a time and vectorise across its output columns.
// For the columns whose windows lie inside the input (all but a few at the borders), 2x2 and
// 3x3 max windows fold each output's taps unrolled, in scan order (2x2 at stride 2 in SSE2
// for float, the common CNN pool); other windows take every tap as one strided pass over the
// row.  Either way the update rules stay torch's (max: `v > best || isnan(v)`, ties to the
// first, the last NaN wins; avg: taps summed in scan order).  The border columns take the
// same rules one output at a time.
//
// Backward passes scatter each plane's outputs in increasing output order into a zeroed
// plane, which adds every input position's contributions in the order the NumPy code (and
// torch's scatter loops) do.  Where windows cannot overlap (stride >= kernel) they assign
// instead of add, as NumPy's disjoint path does (the difference: a -0.0 gradient survives).
// Indices outside their output's window contribute nothing.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "parallel.hpp"

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define GPUMAT_POOLING_SSE2 1
#endif

namespace gpumat {

struct Pool2dGeometry {
    int64_t planes, height, width;        // N * C, H, W of the input
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
    int64_t out_h, out_w;

    // A window's extent along one axis: where it starts (negative in the padding) and the
    // input positions [begin, end) it covers once clipped to the input.
    struct Span {
        int64_t start, begin, end;
    };

    int64_t row_start(int64_t r) const { return r * stride_h - pad_h; }
    int64_t col_start(int64_t c) const { return c * stride_w - pad_w; }
    Span rows(int64_t r) const { return clip(row_start(r), kernel_h, height); }
    Span cols(int64_t c) const { return clip(col_start(c), kernel_w, width); }
    bool disjoint() const { return stride_h >= kernel_h && stride_w >= kernel_w; }

    static Span clip(int64_t start, int64_t kernel, int64_t size) {
        return {start, std::max<int64_t>(start, 0), std::min(start + kernel, size)};
    }

    // First and one-past-last output column whose window lies inside the input columns.
    void interior_columns(int64_t &first, int64_t &last) const {
        first = std::min(out_w, (pad_w + stride_w - 1) / stride_w);
        // col_start(c) + kernel_w <= width  <=>  c <= (width + pad_w - kernel_w) / stride_w
        const int64_t room = width + pad_w - kernel_w;
        last = room < 0 ? 0 : std::min(out_w, room / stride_w + 1);
        last = std::max(last, first);
    }
};

// torch's avg-pool divisor factor along one axis for the output starting at `start`.
inline int64_t avg_divisor(int64_t start, int64_t kernel, int64_t size, int64_t pad,
                           bool count_include_pad) {
    const int64_t end = std::min(start + kernel, size + pad);
    if (count_include_pad)
        return end - start;
    return std::min(end, size) - std::max<int64_t>(start, 0);
}

template <class T>
inline bool takes(T value, T best) {
    // torch's max-pool update rule; `value != value` is isnan without a call
    return value > best || value != value;
}

// Max pooling of the interior columns [first, last) of one output row whose window rows
// h0 .. h0 + KH - 1 all lie inside the input, for a kernel size known at compile time: the
// window's taps are unrolled and each output is one branch-free fold (starting from the
// first tap, which is torch's fold from -inf at the window's first position), so the loop
// vectorises across outputs.
#ifdef GPUMAT_POOLING_SSE2
// Float 2x2 windows at stride 2, four outputs at a time in SSE2 (part of the x86-64
// baseline): the even and odd columns of the two window rows are split with shuffles and
// folded in scan order with torch's rule, positions alongside as int32 lanes.  Returns how
// many of the `count` outputs it did (a multiple of 4); the caller does the rest.
inline int64_t max_pool_2x2_sse2(const float *top, int64_t W, int64_t origin, int64_t count,
                                 float *best, int64_t *index) {
    const int64_t groups = count / 4;
    const __m128i lanes = _mm_set_epi32(6, 4, 2, 0);
    const __m128i zero = _mm_setzero_si128();
    for (int64_t q = 0; q < groups; ++q) {
        const float *t = top + 8 * q, *b = t + W;
        const __m128 t0 = _mm_loadu_ps(t), t1 = _mm_loadu_ps(t + 4);
        const __m128 b0 = _mm_loadu_ps(b), b1 = _mm_loadu_ps(b + 4);
        __m128 value = _mm_shuffle_ps(t0, t1, _MM_SHUFFLE(2, 0, 2, 0));
        const __m128i first = _mm_add_epi32(_mm_set1_epi32((int32_t) (origin + 8 * q)), lanes);
        __m128i at = first;
        auto fold = [&](__m128 v, int32_t offset) {
            const __m128 take = _mm_or_ps(_mm_cmpgt_ps(v, value), _mm_cmpunord_ps(v, v));
            value = _mm_or_ps(_mm_and_ps(take, v), _mm_andnot_ps(take, value));
            const __m128i mask = _mm_castps_si128(take);
            const __m128i position = _mm_add_epi32(first, _mm_set1_epi32(offset));
            at = _mm_or_si128(_mm_and_si128(mask, position), _mm_andnot_si128(mask, at));
        };
        fold(_mm_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)), 1);
        fold(_mm_shuffle_ps(b0, b1, _MM_SHUFFLE(2, 0, 2, 0)), (int32_t) W);
        fold(_mm_shuffle_ps(b0, b1, _MM_SHUFFLE(3, 1, 3, 1)), (int32_t) W + 1);
        _mm_storeu_ps(best + 4 * q, value);
        if (index != nullptr) {     // positions are non-negative: widen with zeros
            _mm_storeu_si128(reinterpret_cast<__m128i *>(index + 4 * q),
                             _mm_unpacklo_epi32(at, zero));
            _mm_storeu_si128(reinterpret_cast<__m128i *>(index + 4 * q + 2),
                             _mm_unpackhi_epi32(at, zero));
        }
    }
    return 4 * groups;
}
#endif

template <int KH, int KW, int SW, class T>
void max_pool_row_fixed(const T *x, int64_t W, int64_t h0, int64_t first_col, int64_t sw,
                        int64_t first, int64_t last, T *best, int64_t *index) {
    if (SW > 0)
        sw = SW;
    const T *window = x + h0 * W + first_col;
    int64_t origin = h0 * W + first_col;
#ifdef GPUMAT_POOLING_SSE2
    if constexpr (std::is_same_v<T, float> && KH == 2 && KW == 2 && SW == 2) {
        const int64_t done = max_pool_2x2_sse2(window, W, origin, last - first, best + first,
                                               index != nullptr ? index + first : nullptr);
        window += 2 * done;
        origin += 2 * done;
        first += done;
    }
#endif
    auto fold = [&](int64_t c, T &b, int32_t &at) {
        const int64_t offset = (c - first) * sw;
        b = window[offset];
        at = (int32_t) (origin + offset);
        for (int i = 0; i < KH; ++i)
            for (int j = 0; j < KW; ++j) {
                if (i == 0 && j == 0)
                    continue;
                const T v = window[offset + i * W + j];
                const bool take = takes(v, b);
                b = take ? v : b;
                at = take ? (int32_t) (origin + offset + i * W + j) : at;
            }
    };
    if (index == nullptr) {
        for (int64_t c = first; c < last; ++c) {
            T b;
            int32_t at;
            fold(c, b, at);
            best[c] = b;
        }
    } else {
        for (int64_t c = first; c < last; ++c) {
            T b;
            int32_t at;
            fold(c, b, at);
            best[c] = b;
            index[c] = at;
        }
    }
}

// Calls body(c) for the output columns outside the interior [first, last), whose windows
// reach into the padding and so are clipped one at a time.
template <class Body>
void for_border_columns(const Pool2dGeometry &g, int64_t first, int64_t last, Body &&body) {
    for (int64_t c = 0; c < first; ++c)
        body(c);
    for (int64_t c = std::max(last, first); c < g.out_w; ++c)
        body(c);
}

// The interior columns [first, last) of one output row with window rows `rows`, for any
// kernel: every tap is one pass across the row, in scan order, over the running maxima in
// `best` and their int32 positions in `where`.
template <class T>
void max_pool_row_taps(const Pool2dGeometry &g, const T *x, const Pool2dGeometry::Span &rows,
                       int64_t first, int64_t last, T *best, int32_t *where) {
    const int64_t W = g.width, sw = g.stride_w, count = last - first;
    const int64_t base = first * sw - g.pad_w;   // input column of the first window
    T *b = best + first;
    int32_t *at = where + first;
    const int32_t start = (int32_t) (rows.begin * W + base);
    for (int64_t c = 0; c < count; ++c) {
        b[c] = -std::numeric_limits<T>::infinity();
        at[c] = start + (int32_t) (c * sw);
    }
    for (int64_t h = rows.begin; h < rows.end; ++h) {
        for (int64_t j = 0; j < g.kernel_w; ++j) {
            const T *source = x + (h * W + base + j);
            const int32_t position = (int32_t) (h * W + base + j);
            if (sw == 1) {
#pragma omp simd
                for (int64_t c = 0; c < count; ++c) {
                    const T v = source[c];
                    const bool take = takes(v, b[c]);
                    b[c] = take ? v : b[c];
                    at[c] = take ? position + (int32_t) c : at[c];
                }
            } else {
                for (int64_t c = 0; c < count; ++c) {
                    const T v = source[c * sw];
                    const bool take = takes(v, b[c]);
                    b[c] = take ? v : b[c];
                    at[c] = take ? position + (int32_t) (c * sw) : at[c];
                }
            }
        }
    }
}

// Whether the plane has one output whose window lies inside it from its corner (a global
// pooling written as a window of the plane's size): then one fold in scan order does it.
inline bool single_window(const Pool2dGeometry &g) {
    return g.out_h == 1 && g.out_w == 1 && g.pad_h == 0 && g.pad_w == 0 &&
           g.kernel_h <= g.height && g.kernel_w <= g.width;
}

// Max pooling of one plane.  `scratch` holds out_w int32 positions (planes under 2**31
// elements, which the caller checks); `index` may be null (no indices wanted).
template <class T>
void max_pool_plane(const Pool2dGeometry &g, const T *x, T *out, int64_t *index,
                    int32_t *scratch) {
    const int64_t W = g.width;
    if (single_window(g)) {       // torch's fold from the first tap, in scan order
        T best = x[0];
        int64_t at = 0;
        for (int64_t h = 0; h < g.kernel_h; ++h)
            for (int64_t w = h == 0 ? 1 : 0; w < g.kernel_w; ++w) {
                const T v = x[h * W + w];
                if (takes(v, best)) {
                    best = v;
                    at = h * W + w;
                }
            }
        out[0] = best;
        if (index != nullptr)
            index[0] = at;
        return;
    }
#ifdef GPUMAT_POOLING_SSE2
    // The common CNN pool (float 2x2 at stride 2, no padding, every window inside the plane,
    // rows of 4 outputs or more): straight down the rows, four outputs at a time and the last
    // group ending at the row's end (overlapping the one before: the same values again), none
    // of the general path's per-row work -- which dominated LeNet's 10 x 10 planes.
    if constexpr (std::is_same_v<T, float>) {
        if (g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 && g.stride_w == 2 &&
            g.pad_h == 0 && g.pad_w == 0 && 2 * g.out_h <= g.height && 2 * g.out_w <= W &&
            g.out_w >= 4) {
            const int64_t tail = g.out_w - 4;
            for (int64_t r = 0; r < g.out_h; ++r) {
                const int64_t origin = 2 * r * W;
                float *best = out + r * g.out_w;
                int64_t *row_index = index != nullptr ? index + r * g.out_w : nullptr;
                if (max_pool_2x2_sse2(x + origin, W, origin, g.out_w, best, row_index) < g.out_w)
                    max_pool_2x2_sse2(x + origin + 2 * tail, W, origin + 2 * tail, 4, best + tail,
                                      row_index != nullptr ? row_index + tail : nullptr);
            }
            return;
        }
    }
#endif
    int64_t first, last;
    g.interior_columns(first, last);
    for (int64_t r = 0; r < g.out_h; ++r) {
        const auto rows = g.rows(r);
        T *best = out + r * g.out_w;
        int64_t *row_index = index != nullptr ? index + r * g.out_w : nullptr;
        for_border_columns(g, first, last, [&](int64_t c) {
            const auto cols = g.cols(c);
            T b = -std::numeric_limits<T>::infinity();
            int64_t at = rows.begin * W + cols.begin;
            for (int64_t h = rows.begin; h < rows.end; ++h)
                for (int64_t w = cols.begin; w < cols.end; ++w) {
                    const T v = x[h * W + w];
                    if (takes(v, b)) {
                        b = v;
                        at = h * W + w;
                    }
                }
            best[c] = b;
            if (row_index != nullptr)
                row_index[c] = at;
        });
        if (last <= first)
            continue;
        const int64_t first_col = first * g.stride_w - g.pad_w, r0 = rows.start;
        const bool whole_rows = r0 >= 0 && r0 + g.kernel_h <= g.height;
        if (whole_rows && g.kernel_h == 2 && g.kernel_w == 2 && g.stride_w == 2) {
            max_pool_row_fixed<2, 2, 2>(x, W, r0, first_col, 2, first, last, best, row_index);
        } else if (whole_rows && g.kernel_h == 3 && g.kernel_w == 3) {
            max_pool_row_fixed<3, 3, 0>(x, W, r0, first_col, g.stride_w, first, last, best,
                                        row_index);
        } else if (whole_rows && g.kernel_h == 2 && g.kernel_w == 2) {
            max_pool_row_fixed<2, 2, 0>(x, W, r0, first_col, g.stride_w, first, last, best,
                                        row_index);
        } else {
            max_pool_row_taps(g, x, rows, first, last, best, scratch);
            if (row_index != nullptr)
                for (int64_t c = first; c < last; ++c)
                    row_index[c] = scratch[c];
        }
    }
}

// Average pooling of one plane.
template <class T>
void avg_pool_plane(const Pool2dGeometry &g, const T *x, T *out, bool count_include_pad,
                    T *row_sum) {
    const int64_t W = g.width;
    if (single_window(g)) {       // the taps in scan order from +0.0, as the rows below add them
        T sum = 0;
        for (int64_t h = 0; h < g.kernel_h; ++h)
            for (int64_t w = 0; w < g.kernel_w; ++w)
                sum += x[h * W + w];
        out[0] = sum / (T) (g.kernel_h * g.kernel_w);
        return;
    }
    int64_t first, last;
    g.interior_columns(first, last);
    for (int64_t r = 0; r < g.out_h; ++r) {
        const auto rows = g.rows(r);
        const int64_t row_divisor = avg_divisor(rows.start, g.kernel_h, g.height, g.pad_h,
                                                count_include_pad);
        for_border_columns(g, first, last, [&](int64_t c) {
            const auto cols = g.cols(c);
            T sum = 0;
            for (int64_t h = rows.begin; h < rows.end; ++h)
                for (int64_t w = cols.begin; w < cols.end; ++w)
                    sum += x[h * W + w];
            row_sum[c] = sum;
        });
        const int64_t sw = g.stride_w;
        const int64_t base = first * sw - g.pad_w;
        for (int64_t c = first; c < last; ++c)
            row_sum[c] = 0;
        for (int64_t h = rows.begin; h < rows.end && last > first; ++h)
            for (int64_t j = 0; j < g.kernel_w; ++j) {
                const T *source = x + h * W + base + j;
                T *sum = row_sum + first;
                const int64_t count = last - first;
#pragma omp simd
                for (int64_t c = 0; c < count; ++c)
                    sum[c] += source[c * sw];
            }
        T *row_out = out + r * g.out_w;
        for (int64_t c = 0; c < g.out_w; ++c) {
            const int64_t divisor = row_divisor * avg_divisor(g.col_start(c), g.kernel_w, W,
                                                              g.pad_w, count_include_pad);
            row_out[c] = row_sum[c] / (T) divisor;
        }
    }
}

template <class T>
void max_pool2d(const Pool2dGeometry &g, const T *x, T *out, int64_t *index) {
    const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
    parallel_for_chunks(g.planes, g.planes * in_plane, [&](int64_t begin, int64_t end) {
        std::vector<int32_t> scratch((size_t) std::max<int64_t>(g.out_w, 1));
        for (int64_t p = begin; p < end; ++p)
            max_pool_plane(g, x + p * in_plane, out + p * out_plane,
                           index != nullptr ? index + p * out_plane : nullptr, scratch.data());
    });
}

// Global average pooling: out[p] = the mean of the `size` values of plane p, summed in double
// (vector lanes first, then across them: one fixed order for any call and thread count) and
// divided once.
template <class T>
void plane_means(const T *x, T *out, int64_t planes, int64_t size) {
    parallel_for_chunks(planes, planes * size, [&](int64_t first, int64_t last) {
        for (int64_t p = first; p < last; ++p) {
            const T *values = x + p * size;
            double sum = 0.0;
#pragma omp simd reduction(+ : sum)
            for (int64_t i = 0; i < size; ++i)
                sum += (double) values[i];
            out[p] = (T) (sum / (double) size);
        }
    });
}

template <class T>
void avg_pool2d(const Pool2dGeometry &g, const T *x, T *out, bool count_include_pad) {
    const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
    parallel_for_chunks(g.planes, g.planes * in_plane, [&](int64_t begin, int64_t end) {
        std::vector<T> row_sum((size_t) std::max<int64_t>(g.out_w, 1));
        for (int64_t p = begin; p < end; ++p)
            avg_pool_plane(g, x + p * in_plane, out + p * out_plane, count_include_pad,
                           row_sum.data());
    });
}

// Hides `value` from the optimiser, which would otherwise turn the branch-free arithmetic
// on it back into (mispredicted) branches.
inline void opaque(uint64_t &value) {
#if defined(__GNUC__) || defined(__clang__)
    __asm__("" : "+r"(value));
#else
    (void) value;
#endif
}

// `value` where `keep` is 1, else +0.0, by masking its bits (a select on a float would
// compile to a branch).
template <class T>
inline T masked(T value, uint64_t keep) {
    using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    Bits bits;
    std::memcpy(&bits, &value, sizeof bits);
    bits &= (Bits) 0 - (Bits) keep;
    std::memcpy(&value, &bits, sizeof bits);
    return value;
}

// 2x2 windows at stride 2 without padding tile the plane: each pair of input rows is
// zeroed while in cache and then takes its outputs' gradients at their indices (checked
// against the window's four positions, a branch the forward's indices always take).
template <class T>
void max_pool_backward_plane_2x2(const Pool2dGeometry &g, const T *go, const int64_t *at,
                                 T *gi) {
    const int64_t W = g.width, ow = g.out_w;
    std::fill(gi, gi + g.height * W, T(0));
    for (int64_t r = 0; r < g.out_h; ++r) {
        const T *grad = go + r * ow;
        const int64_t *index = at + r * ow;
        const int64_t origin = 2 * r * W;
        for (int64_t c = 0; c < ow; ++c) {
            // The window-relative position is 0, 1, W or W + 1 for an index in the window.
            // No branch on it (the maximum's place is random, so a branch would mispredict
            // half the time): a foreign index writes 0 to the window's first position,
            // which no other window shares and which is 0 already.
            const int64_t first = origin + 2 * c, p = index[c] - first;
            uint64_t inside = ((uint64_t) p <= 1u) | ((uint64_t) (p - W) <= 1u);
            opaque(inside);
            gi[first + (int64_t) (inside * (uint64_t) p)] = masked(grad[c], inside);
        }
    }
}

// grad_in = each output's gradient added at its index, in increasing output order (assigned
// where windows cannot overlap, as NumPy's disjoint path does).
template <class T>
void max_pool2d_backward(const Pool2dGeometry &g, const T *grad_out, const int64_t *index,
                         T *grad_in) {
    const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
    const bool assign = g.disjoint();
    const bool tiles_2x2 = g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 &&
                           g.stride_w == 2 && g.pad_h == 0 && g.pad_w == 0 &&
                           2 * g.out_h <= g.height && 2 * g.out_w <= g.width;
    parallel_for_chunks(g.planes, g.planes * (in_plane + out_plane),
                        [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
            const T *go = grad_out + p * out_plane;
            const int64_t *at = index + p * out_plane;
            T *gi = grad_in + p * in_plane;
            if (tiles_2x2) {
                max_pool_backward_plane_2x2(g, go, at, gi);
                continue;
            }
            for (int64_t e = 0; e < in_plane; ++e)
                gi[e] = T(0);
            for (int64_t r = 0; r < g.out_h; ++r) {
                const int64_t r0 = g.row_start(r);
                for (int64_t c = 0; c < g.out_w; ++c) {
                    const int64_t o = r * g.out_w + c;
                    const int64_t position = at[o];
                    if (position < 0 || position >= in_plane)
                        continue;
                    const int64_t di = position / g.width - r0;
                    const int64_t dj = position % g.width - g.col_start(c);
                    if (di < 0 || di >= g.kernel_h || dj < 0 || dj >= g.kernel_w)
                        continue;
                    if (assign)
                        gi[position] = go[o];
                    else
                        gi[position] += go[o];
                }
            }
        }
    });
}

// grad_in (zeroed by the caller) += each output's share over its window.
template <class T>
void avg_pool2d_backward(const Pool2dGeometry &g, const T *grad_out, bool count_include_pad,
                         T *grad_in) {
    const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
    const int64_t W = g.width;
    const bool assign = g.disjoint();
    parallel_for_chunks(g.planes, g.planes * in_plane, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
            const T *go = grad_out + p * out_plane;
            T *gi = grad_in + p * in_plane;
            for (int64_t r = 0; r < g.out_h; ++r) {
                const auto rows = g.rows(r);
                const int64_t row_divisor = avg_divisor(rows.start, g.kernel_h, g.height,
                                                        g.pad_h, count_include_pad);
                for (int64_t c = 0; c < g.out_w; ++c) {
                    const auto cols = g.cols(c);
                    const int64_t divisor = row_divisor * avg_divisor(
                        cols.start, g.kernel_w, W, g.pad_w, count_include_pad);
                    const T delta = go[r * g.out_w + c] / (T) divisor;
                    for (int64_t h = rows.begin; h < rows.end; ++h)
                        for (int64_t w = cols.begin; w < cols.end; ++w) {
                            if (assign)
                                gi[h * W + w] = delta;
                            else
                                gi[h * W + w] += delta;
                        }
                }
            }
        }
    });
}

}  // namespace gpumat
