// Strided n-d copies for the cpu backend's indexing and concatenation: NumPy copies a view
// (x[:, :, ::2, ::2], a channel slice) element by element on one thread; here rows of the
// view are split over the thread pool (parallel.hpp) and each row is one memcpy or a tight
// loop over a fixed stride.  Elements are moved as raw 1, 2, 4 or 8-byte words, so every
// value, NaN payloads and signed zeros included, arrives bit for bit.
//
// A copy of `shape` elements goes from src (strides src_strides, in elements, any sign, 0 for
// a broadcast axis) to dst (dst_strides); dst must not overlap src nor itself (the callers
// write into fresh buffers).  Axes of extent 1 are dropped and neighbouring axes that are
// contiguous in both operands merged first, so a contiguous block is one memcpy per chunk.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.hpp"

namespace gpumat {

struct CopyLayout {
    std::vector<int64_t> shape, dst, src;   // outermost first; strides in elements

    // Without the axes of extent 1, and with each pair of neighbouring axes that both operands
    // step through contiguously merged into one.  An empty copy keeps a 0 extent.
    CopyLayout simplified() const {
        CopyLayout out;
        for (size_t axis = 0; axis < shape.size(); ++axis) {
            if (shape[axis] == 0)
                return {{0}, {1}, {1}};
            if (shape[axis] == 1)
                continue;
            if (!out.shape.empty() && out.dst.back() == dst[axis] * shape[axis] &&
                out.src.back() == src[axis] * shape[axis]) {
                out.shape.back() *= shape[axis];
                out.dst.back() = dst[axis];
                out.src.back() = src[axis];
                continue;
            }
            out.shape.push_back(shape[axis]);
            out.dst.push_back(dst[axis]);
            out.src.push_back(src[axis]);
        }
        if (out.shape.empty())
            out = {{1}, {1}, {1}};
        return out;
    }
};

// One row: n elements from src (stride ss) to dst (stride ds).
template <class T>
inline void copy_row(T *dst, const T *src, int64_t n, int64_t ds, int64_t ss) {
    if (ds == 1 && ss == 1) {
        std::memcpy(dst, src, (size_t) n * sizeof(T));
    } else if (ds == 1 && ss == 2) {       // every other element: the compiler vectorises it
        for (int64_t i = 0; i < n; ++i)
            dst[i] = src[2 * i];
    } else if (ds == 1) {
        for (int64_t i = 0; i < n; ++i)
            dst[i] = src[i * ss];
    } else {
        for (int64_t i = 0; i < n; ++i)
            dst[i * ds] = src[i * ss];
    }
}

// Elements of a row below which a row is never split (a long row, such as a contiguous
// block, is cut into pieces so that every thread gets some of it).
constexpr int64_t kCopyPiece = int64_t(1) << 14;

template <class T>
void copy_strided_as(T *dst, const T *src, const CopyLayout &layout) {
    const CopyLayout l = layout.simplified();
    const int64_t axes = (int64_t) l.shape.size(), outer = axes - 1;
    const int64_t n = l.shape.back(), ds = l.dst.back(), ss = l.src.back();
    int64_t rows = 1;
    for (int64_t axis = 0; axis < outer; ++axis)
        rows *= l.shape[(size_t) axis];
    if (rows * n == 0)
        return;
    // the offsets of the first element of `row`
    auto locate = [&](int64_t row, std::vector<int64_t> &index, int64_t &d, int64_t &s) {
        d = s = 0;
        for (int64_t axis = outer - 1; axis >= 0; --axis) {
            const size_t a = (size_t) axis;
            index[a] = row % l.shape[a];
            row /= l.shape[a];
            d += index[a] * l.dst[a];
            s += index[a] * l.src[a];
        }
    };
    const int64_t wanted = kChunksPerThread * ThreadPool::instance().threads();
    const int64_t pieces = rows >= wanted ? 1 : std::max<int64_t>(
        1, std::min((wanted + rows - 1) / rows, n / kCopyPiece));
    if (pieces > 1) {
        // few long rows: each unit is one piece of one row
        parallel_for_chunks(rows * pieces, 2 * rows * n, [&](int64_t first, int64_t last) {
            std::vector<int64_t> index((size_t) std::max<int64_t>(outer, 1), 0);
            for (int64_t unit = first; unit < last; ++unit) {
                const int64_t row = unit / pieces, piece = unit % pieces;
                const int64_t begin = n * piece / pieces, end = n * (piece + 1) / pieces;
                int64_t d, s;
                locate(row, index, d, s);
                copy_row(dst + d + begin * ds, src + s + begin * ss, end - begin, ds, ss);
            }
        });
        return;
    }
    parallel_for_chunks(rows, 2 * rows * n, [&](int64_t first, int64_t last) {
        // the outer index of row `first`, then counted up row by row
        std::vector<int64_t> index((size_t) std::max<int64_t>(outer, 1), 0);
        int64_t d, s;
        locate(first, index, d, s);
        for (int64_t row = first; row < last; ++row) {
            copy_row(dst + d, src + s, n, ds, ss);
            for (int64_t axis = outer - 1; axis >= 0; --axis) {
                const size_t a = (size_t) axis;
                d += l.dst[a];
                s += l.src[a];
                if (++index[a] < l.shape[a])
                    break;
                d -= l.dst[a] * l.shape[a];
                s -= l.src[a] * l.shape[a];
                index[a] = 0;
            }
        }
    });
}

// The copy for elements of `itemsize` bytes (1, 2, 4 or 8; false for any other size).
inline bool copy_strided(void *dst, const void *src, int64_t itemsize, const CopyLayout &layout) {
    switch (itemsize) {
        case 1:
            copy_strided_as(static_cast<uint8_t *>(dst), static_cast<const uint8_t *>(src), layout);
            return true;
        case 2:
            copy_strided_as(static_cast<uint16_t *>(dst), static_cast<const uint16_t *>(src),
                            layout);
            return true;
        case 4:
            copy_strided_as(static_cast<uint32_t *>(dst), static_cast<const uint32_t *>(src),
                            layout);
            return true;
        case 8:
            copy_strided_as(static_cast<uint64_t *>(dst), static_cast<const uint64_t *>(src),
                            layout);
            return true;
        default:
            return false;
    }
}

}  // namespace gpumat
