// The im2col lowering of a 2-d convolution and its adjoint col2im, for NCHW input, as
// Backend.im2col / col2im in gpumat/backends/base.py specify them.
//
// The column matrix of an image has one row per (channel c, kernel row i, kernel column j)
// and one column per output pixel (oh, ow): (N, C*kh*kw, OH*OW) for a batch.  Each row is
// one tap's out_h x out_w block of an input plane, so both kernels work tap by tap with the
// rows and columns that fall outside the input worked out once per call.  col2im gathers
// nothing: it zeroes each input plane and adds every tap's block into it in kernel order
// (i, j), which is the order, and so the rounding, of the NumPy path
// (gpumat/backends/conv_array_module.py).
//
// A single (C*kh*kw, N*OH*OW) layout, one GEMM for the whole batch, was measured on LeNet-5
// and lost to NumPy's batched per-image products, so only the image-major layout is here.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "compiler.hpp"  // GPUMAT_RESTRICT: the columns and the input never overlap, which
                          // spares every short row loop a run-time overlap check
#include "parallel.hpp"

namespace gpumat {

struct ConvGeometry {
    int64_t batch, channels, height, width;
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    int64_t out_h, out_w;

    int64_t rows() const { return channels * kernel_h * kernel_w; }
    int64_t pixels() const { return out_h * out_w; }
};

// Along one axis, the outputs [begin, end) of kernel tap t that read inside the input;
// output o reads input position o * stride + offset.
struct TapRange {
    int64_t offset, begin, end;

    TapRange(int64_t t, int64_t size, int64_t stride, int64_t pad, int64_t dilation,
             int64_t out) {
        offset = t * dilation - pad;
        begin = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
        const int64_t room = size - 1 - offset;       // largest o * stride allowed
        end = room < 0 ? 0 : std::min(room / stride + 1, out);
        begin = std::min(begin, end);
    }
};

// The TapRanges of every kernel row and column, computed once per call (they divide).
struct Taps {
    std::vector<TapRange> rows, columns;

    explicit Taps(const ConvGeometry &g) {
        for (int64_t i = 0; i < g.kernel_h; ++i)
            rows.emplace_back(i, g.height, g.stride_h, g.pad_h, g.dilation_h, g.out_h);
        for (int64_t j = 0; j < g.kernel_w; ++j)
            columns.emplace_back(j, g.width, g.stride_w, g.pad_w, g.dilation_w, g.out_w);
    }
};

// One tap's out_h x out_w block of columns from an input plane: the rows and columns that
// read outside the input are 0.  A function of its own with few live values: for the short
// rows of a convolution (often under 16 pixels) the per-row bookkeeping is the cost.
template <class T>
void copy_tap(const ConvGeometry &g, const T *plane, const TapRange &rows,
              const TapRange &columns, T *out) {
    const int64_t ow = g.out_w, sw = g.stride_w;
    const int64_t pitch = g.stride_h * g.width;                  // input rows per output row
    for (int64_t e = 0; e < rows.begin * ow; ++e)
        out[e] = T(0);
    const T *in = plane + ((rows.begin * g.stride_h + rows.offset) * g.width + columns.offset);
    const int64_t begin = columns.begin, end = columns.end;
    for (int64_t oh = rows.begin; oh < rows.end; ++oh, in += pitch) {
        T *GPUMAT_RESTRICT row = out + oh * ow;
        const T *GPUMAT_RESTRICT source = in;
        for (int64_t o = 0; o < begin; ++o)
            row[o] = T(0);
        if (sw == 1) {
            for (int64_t o = begin; o < end; ++o)
                row[o] = source[o];
        } else {
            for (int64_t o = begin; o < end; ++o)
                row[o] = in[o * sw];
        }
        for (int64_t o = end; o < ow; ++o)
            row[o] = T(0);
    }
    for (int64_t e = rows.end * ow; e < g.out_h * ow; ++e)
        out[e] = T(0);
}

// cols[n, k, oh * out_w + ow] for every image n and row k = (c, i, j).
template <class T>
void im2col(const ConvGeometry &g, const T *x, T *cols) {
    const int64_t plane = g.height * g.width;
    const Taps taps(g);
    const int64_t planes = g.batch * g.channels;
    parallel_for_chunks(planes, planes * g.kernel_h * g.kernel_w * g.pixels(),
                        [&](int64_t first, int64_t last) {
        for (int64_t p = first; p < last; ++p) {
            const int64_t n = p / g.channels, c = p % g.channels;
            for (int64_t i = 0; i < g.kernel_h; ++i)
                for (int64_t j = 0; j < g.kernel_w; ++j) {
                    const int64_t k = (c * g.kernel_h + i) * g.kernel_w + j;
                    copy_tap(g, x + p * plane, taps.rows[(size_t) i],
                             taps.columns[(size_t) j], cols + (n * g.rows() + k) * g.pixels());
                }
        }
    });
}

// plane += one tap's block of columns, at the input positions im2col copied it from.
template <class T>
void add_tap(const ConvGeometry &g, const T *in, const TapRange &rows,
             const TapRange &columns, T *plane) {
    const int64_t ow = g.out_w, sw = g.stride_w, count = columns.end - columns.begin;
    const int64_t pitch = g.stride_h * g.width;
    T *out = plane + ((rows.begin * g.stride_h + rows.offset) * g.width + columns.offset
                      + columns.begin * sw);
    in += rows.begin * ow + columns.begin;
    for (int64_t oh = rows.begin; oh < rows.end; ++oh, out += pitch, in += ow) {
        if (sw == 1) {
            T *GPUMAT_RESTRICT target = out;
            const T *GPUMAT_RESTRICT source = in;
            for (int64_t o = 0; o < count; ++o)
                target[o] += source[o];
        } else {
            for (int64_t o = 0; o < count; ++o)
                out[o * sw] += in[o];
        }
    }
}

// x[n, c] = the sum, in kernel order, of the cols entries im2col would copy from it: each
// plane zeroed, then every tap's block added in (i, j) order, the order (and so the
// rounding) of the NumPy path.
template <class T>
void col2im(const ConvGeometry &g, const T *cols, T *x) {
    const int64_t plane = g.height * g.width, planes = g.batch * g.channels;
    const int64_t work = planes * (g.kernel_h * g.kernel_w * g.pixels() + plane);
    const Taps taps(g);
    parallel_for_chunks(planes, work, [&](int64_t first, int64_t last) {
        for (int64_t p = first; p < last; ++p) {
            const int64_t n = p / g.channels, c = p % g.channels;
            T *target = x + p * plane;
            std::fill(target, target + plane, T(0));
            for (int64_t i = 0; i < g.kernel_h; ++i)
                for (int64_t j = 0; j < g.kernel_w; ++j) {
                    const int64_t k = (c * g.kernel_h + i) * g.kernel_w + j;
                    add_tap(g, cols + (n * g.rows() + k) * g.pixels(),
                            taps.rows[(size_t) i], taps.columns[(size_t) j], target);
                }
        }
    });
}

}  // namespace gpumat
