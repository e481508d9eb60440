// Elementwise arithmetic of two arrays of one shape and one float dtype -- out = a + b,
// a - b, a * b or a / b -- in one pass over memory split over ThreadPool's threads.  NumPy's
// own loops run on one thread (a 2 MiB float32 add: 163-226 us on the 2-core VM here, 68-80 us
// in this pass, as long as ReLU's backward pass over the same bytes), and ResNet's residual
// additions and autograd's gradient sums are such adds.
// Every element is one IEEE operation, correctly rounded whatever the vector width, so the
// results are NumPy's bit for bit (NaN payloads, infinities, signed zeros, subnormals: this
// module is built without fast-math, so nothing flushes them) -- except that where both
// operands of an add or a multiply are NaN, either one's payload may come out: IEEE 754 leaves
// it open and compilers swap the operands of commutative operations (NumPy's loops too).
//
// The codes are ARITH_OPS's in gpumat/backends/cpu.py.
#pragma once

#include <cstdint>

#include "parallel.hpp"

namespace gpumat {

enum Arith : int { kAdd = 0, kSubtract = 1, kMultiply = 2, kDivide = 3 };

inline bool is_arith(int code) { return code >= kAdd && code <= kDivide; }

// Calls body(op) with operation `code` as a lambda, so each gets its own vectorised loop.
template <class T, class Body>
void with_arith(int code, Body &&body) {
    switch (code) {
    case kAdd: return body([](T a, T b) { return a + b; });
    case kSubtract: return body([](T a, T b) { return a - b; });
    case kMultiply: return body([](T a, T b) { return a * b; });
    default: return body([](T a, T b) { return a / b; });
    }
}

template <class T>
void arith(const T *a, const T *b, T *out, int64_t count, int code) {
    with_arith<T>(code, [&](auto op) {
        parallel_for_chunks(count, 3 * count, [&, op](int64_t first, int64_t last) {
            const T *x = a, *y = b;
            T *result = out;
#pragma omp simd
            for (int64_t i = first; i < last; ++i)
                result[i] = op(x[i], y[i]);
        });
    });
}

}  // namespace gpumat
