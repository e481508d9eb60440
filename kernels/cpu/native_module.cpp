// gpumat._native: the CPU kernels of the cpu backend, as a nanobind module.  Sign packing
// is here because NumPy has no fast path for it; pooling, the convolution lowering
// (im2col / col2im), the fused activations and batch normalisation because NumPy needs
// several passes or Python loops over kernel taps for them.  gpumat/native.py and the cpu
// backend (gpumat/backends/cpu.py) call them, and fall back to NumPy twins where this module
// is missing; this file still checks its inputs itself, so that a direct call with a bad
// argument raises a Python exception instead of crashing.  Every loop runs without the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "activations.hpp"
#include "arith.hpp"
#include "array_checks.hpp"
#include "batchnorm.hpp"
#include "copy.hpp"
#include "direct_conv.hpp"
#include "im2col.hpp"
#include "pack_signs.hpp"
#include "parallel.hpp"
#include "pooling.hpp"
#include "xnor.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using gpumat::AnyCpuArray;
using gpumat::Pair;
using gpumat::extent;
using gpumat::fail_type;
using gpumat::fail_value;
using gpumat::require_at_least;
using gpumat::require_float;
using gpumat::require_layout;
using gpumat::require_same_dtype;

// Calls body(T{}) with T = float or double as `is_double` says.
template <class Body>
auto with_float(bool is_double, Body &&body) {
    if (is_double)
        return body(double{});
    return body(float{});
}

nb::object pack_signs(const AnyCpuArray &input) {
    if (input.dtype() != nb::dtype<float>())
        throw nb::type_error(("pack_signs: expected a float32 array, got dtype " +
                              gpumat::dtype_name(input.dtype())).c_str());
    const size_t ndim = input.ndim();
    if (ndim == 0)
        throw nb::value_error(
            "pack_signs: expected an array with at least 1 dimension (..., n), "
            "got a 0-dimensional array");
    if (!gpumat::is_c_contiguous(input))
        throw nb::value_error(
            "pack_signs: the input array must be C-contiguous "
            "(numpy.ascontiguousarray makes it so)");

    const size_t n = input.shape(ndim - 1);
    size_t rows = 1;
    for (size_t i = 0; i + 1 < ndim; ++i)
        rows *= input.shape(i);
    const size_t words_per_row = (n + 31) / 32;

    std::vector<size_t> output_shape(ndim);
    for (size_t i = 0; i + 1 < ndim; ++i)
        output_shape[i] = input.shape(i);
    output_shape[ndim - 1] = words_per_row;

    gpumat::Result<uint32_t> output(output_shape, false);
    const float *source = static_cast<const float *>(input.data());
    {
        nb::gil_scoped_release release;
        gpumat::pack_signs_rows(source, output.data(), rows, n);
    }
    return output.release();
}

// ---- strided copies (the cpu backend's indexing and concatenation) ---------------------------

std::vector<size_t> shape_of(const AnyCpuArray &a);   // (below, with the activations)

size_t element_bytes(const AnyCpuArray &a, const char *what) {
    const size_t bytes = (size_t) (a.dtype().bits / 8) * a.dtype().lanes;
    if (a.dtype().bits % 8 != 0 || (bytes != 1 && bytes != 2 && bytes != 4 && bytes != 8))
        fail_type(what, "elements of 1, 2, 4 or 8 bytes, got dtype " +
                            gpumat::dtype_name(a.dtype()));
    return bytes;
}

// src (any strides) into the C-contiguous buffer at dst whose strides are dst_strides
// (elements), offset by `offset` elements.
void copy_view_into(char *dst, int64_t offset, const std::vector<int64_t> &dst_strides,
                    const AnyCpuArray &src, size_t bytes) {
    gpumat::CopyLayout layout;
    for (size_t axis = 0; axis < src.ndim(); ++axis) {
        layout.shape.push_back((int64_t) src.shape(axis));
        layout.dst.push_back(dst_strides[axis]);
        layout.src.push_back((int64_t) src.stride(axis));
    }
    gpumat::copy_strided(dst + offset * (int64_t) bytes, src.data(), (int64_t) bytes, layout);
}

std::vector<int64_t> contiguous_strides(const std::vector<size_t> &shape) {
    std::vector<int64_t> strides(shape.size(), 1);
    for (size_t axis = shape.size(); axis-- > 1;)
        strides[axis - 1] = strides[axis] * (int64_t) shape[axis];
    return strides;
}

// The buffer of a C-contiguous result of `shape`, elements of `bytes` bytes.
gpumat::Result<uint8_t> byte_result(const std::vector<size_t> &shape, size_t bytes) {
    size_t size = bytes;
    for (size_t extent : shape)
        size *= extent;
    return gpumat::Result<uint8_t>({size}, false);
}

nb::object copy_strided(const AnyCpuArray &src) {
    const char *what = "copy_strided";
    const size_t bytes = element_bytes(src, what);
    const std::vector<size_t> shape = shape_of(src);
    gpumat::Result<uint8_t> out = byte_result(shape, bytes);
    {
        nb::gil_scoped_release release;
        copy_view_into(reinterpret_cast<char *>(out.data()), 0, contiguous_strides(shape), src,
                       bytes);
    }
    return out.release_as(shape, src.dtype());
}

nb::object concatenate(const std::vector<AnyCpuArray> &arrays, int64_t axis) {
    const char *what = "concatenate";
    if (arrays.empty())
        fail_value(what, "needs at least one array");
    const AnyCpuArray &first = arrays.front();
    const size_t ndim = first.ndim(), bytes = element_bytes(first, what);
    if (axis < 0 || (size_t) axis >= ndim)
        fail_value(what, "axis " + std::to_string(axis) + " is out of range for " +
                             std::to_string(ndim) + "-d arrays");
    std::vector<size_t> shape = shape_of(first);
    shape[(size_t) axis] = 0;
    for (const AnyCpuArray &a : arrays) {
        if (a.dtype() != first.dtype() || a.ndim() != ndim)
            fail_value(what, "every array needs dtype " + gpumat::dtype_name(first.dtype()) +
                                 " and " + std::to_string(ndim) + " dimensions, got " +
                                 gpumat::dtype_name(a.dtype()) + " " + gpumat::shape_text(a));
        for (size_t d = 0; d < ndim; ++d)
            if (d != (size_t) axis && a.shape(d) != first.shape(d))
                fail_value(what, "shapes " + gpumat::shape_text(first) + " and " +
                                     gpumat::shape_text(a) + " differ outside axis " +
                                     std::to_string(axis));
        shape[(size_t) axis] += a.shape((size_t) axis);
    }
    gpumat::Result<uint8_t> out = byte_result(shape, bytes);
    const std::vector<int64_t> strides = contiguous_strides(shape);
    {
        nb::gil_scoped_release release;
        int64_t at = 0;
        for (const AnyCpuArray &a : arrays) {
            copy_view_into(reinterpret_cast<char *>(out.data()), at * strides[(size_t) axis],
                           strides, a, bytes);
            at += (int64_t) a.shape((size_t) axis);
        }
    }
    return out.release_as(shape, first.dtype());
}

// ---- pooling ---------------------------------------------------------------------------------

gpumat::Pool2dGeometry pool_geometry(const char *what, int64_t planes, int64_t height,
                                     int64_t width, const Pair &kernel, const Pair &stride,
                                     const Pair &padding, const Pair &out_hw) {
    require_at_least(kernel, 1, what, "kernel");
    require_at_least(stride, 1, what, "stride");
    require_at_least(padding, 0, what, "padding");
    require_at_least(out_hw, 0, what, "out_hw");
    return {planes, height, width, kernel.first, kernel.second, stride.first, stride.second,
            padding.first, padding.second, out_hw.first, out_hw.second};
}

nb::tuple pool2d_max(const AnyCpuArray &x, Pair kernel, Pair stride, Pair padding,
                     Pair out_hw, bool with_indices) {
    const char *what = "pool2d_max";
    const bool is_double = require_float(x, what, "x");
    require_layout(x, what, "x", 4);
    const int64_t n = extent(x, 0), c = extent(x, 1), h = extent(x, 2), w = extent(x, 3);
    if (h * w >= (int64_t(1) << 31))
        fail_value(what, "an input plane must have fewer than 2**31 elements, got " +
                             std::to_string(h) + " x " + std::to_string(w));
    const auto g = pool_geometry(what, n * c, h, w, kernel, stride, padding, out_hw);
    const std::vector<size_t> shape{(size_t) n, (size_t) c, (size_t) g.out_h,
                                    (size_t) g.out_w};
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> out(shape, false);
        std::optional<gpumat::Result<int64_t>> index;
        if (with_indices)
            index.emplace(shape, false);
        {
            nb::gil_scoped_release release;
            gpumat::max_pool2d(g, static_cast<const T *>(x.data()), out.data(),
                               index ? index->data() : nullptr);
        }
        nb::object indices = index ? index->release() : nb::none();
        return nb::make_tuple(out.release(), indices);
    });
}

nb::object pool2d_avg(const AnyCpuArray &x, Pair kernel, Pair stride, Pair padding,
                      Pair out_hw, bool count_include_pad) {
    const char *what = "pool2d_avg";
    const bool is_double = require_float(x, what, "x");
    require_layout(x, what, "x", 4);
    const int64_t n = extent(x, 0), c = extent(x, 1);
    const auto g = pool_geometry(what, n * c, extent(x, 2), extent(x, 3), kernel, stride,
                                 padding, out_hw);
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> out({(size_t) n, (size_t) c, (size_t) g.out_h, (size_t) g.out_w},
                              false);
        {
            nb::gil_scoped_release release;
            gpumat::avg_pool2d(g, static_cast<const T *>(x.data()), out.data(),
                               count_include_pad);
        }
        return out.release();
    });
}

nb::object pool2d_global_avg(const AnyCpuArray &x) {
    const char *what = "pool2d_global_avg";
    const bool is_double = require_float(x, what, "x");
    require_layout(x, what, "x", 4);
    const int64_t n = extent(x, 0), c = extent(x, 1), size = extent(x, 2) * extent(x, 3);
    if (size == 0)
        fail_value(what, "x of shape " + gpumat::shape_text(x) + " has empty planes");
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> out({(size_t) n, (size_t) c, 1, 1}, false);
        {
            nb::gil_scoped_release release;
            gpumat::plane_means(static_cast<const T *>(x.data()), out.data(), n * c, size);
        }
        return out.release();
    });
}

// The geometry of a pooling backward pass: grad_out is (N, C, OH, OW), the input (N, C, H, W).
gpumat::Pool2dGeometry pool_backward_geometry(const char *what, const AnyCpuArray &grad_out,
                                              const Pair &input_hw, const Pair &kernel,
                                              const Pair &stride, const Pair &padding) {
    require_layout(grad_out, what, "grad_out", 4);
    require_at_least(input_hw, 0, what, "input_hw");
    const Pair out_hw{extent(grad_out, 2), extent(grad_out, 3)};
    return pool_geometry(what, extent(grad_out, 0) * extent(grad_out, 1), input_hw.first,
                         input_hw.second, kernel, stride, padding, out_hw);
}

std::vector<size_t> input_shape_of(const AnyCpuArray &grad_out, const Pair &input_hw) {
    return {grad_out.shape(0), grad_out.shape(1), (size_t) input_hw.first,
            (size_t) input_hw.second};
}

nb::object pool2d_max_backward(const AnyCpuArray &grad_out, const AnyCpuArray &indices,
                               Pair input_hw, Pair kernel, Pair stride, Pair padding) {
    const char *what = "pool2d_max_backward";
    const bool is_double = require_float(grad_out, what, "grad_out");
    const auto g = pool_backward_geometry(what, grad_out, input_hw, kernel, stride, padding);
    if (indices.dtype() != nb::dtype<int64_t>())
        fail_type(what, "indices must be int64, got dtype " +
                            gpumat::dtype_name(indices.dtype()));
    require_layout(indices, what, "indices", 4);
    for (size_t axis = 0; axis < 4; ++axis)
        if (indices.shape(axis) != grad_out.shape(axis))
            fail_value(what, "indices have shape " + gpumat::shape_text(indices) +
                                 " but grad_out has shape " + gpumat::shape_text(grad_out));
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> grad_in(input_shape_of(grad_out, input_hw), false);
        {
            nb::gil_scoped_release release;
            gpumat::max_pool2d_backward(g, static_cast<const T *>(grad_out.data()),
                                        static_cast<const int64_t *>(indices.data()),
                                        grad_in.data());
        }
        return grad_in.release();
    });
}

nb::object pool2d_avg_backward(const AnyCpuArray &grad_out, Pair input_hw, Pair kernel,
                               Pair stride, Pair padding, bool count_include_pad) {
    const char *what = "pool2d_avg_backward";
    const bool is_double = require_float(grad_out, what, "grad_out");
    const auto g = pool_backward_geometry(what, grad_out, input_hw, kernel, stride, padding);
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> grad_in(input_shape_of(grad_out, input_hw), true);
        {
            nb::gil_scoped_release release;
            gpumat::avg_pool2d_backward(g, static_cast<const T *>(grad_out.data()),
                                        count_include_pad, grad_in.data());
        }
        return grad_in.release();
    });
}

// ---- convolution lowering --------------------------------------------------------------------

gpumat::ConvGeometry conv_geometry(const char *what, const std::array<int64_t, 4> &shape,
                                   const Pair &kernel, const Pair &stride, const Pair &padding,
                                   const Pair &dilation, const Pair &out_hw) {
    for (int64_t extent : shape)
        if (extent < 0)
            fail_value(what, "input_shape has a negative dimension");
    require_at_least(kernel, 1, what, "kernel");
    require_at_least(stride, 1, what, "stride");
    require_at_least(padding, 0, what, "padding");
    require_at_least(dilation, 1, what, "dilation");
    require_at_least(out_hw, 0, what, "out_hw");
    return {shape[0], shape[1], shape[2], shape[3],
            kernel.first, kernel.second, stride.first, stride.second,
            padding.first, padding.second, dilation.first, dilation.second,
            out_hw.first, out_hw.second};
}

std::vector<size_t> column_shape(const gpumat::ConvGeometry &g) {
    return {(size_t) g.batch, (size_t) g.rows(), (size_t) g.pixels()};
}

using WritableArray = nb::ndarray<nb::device::cpu>;

nb::object im2col(const AnyCpuArray &x, Pair kernel, Pair stride, Pair padding,
                  Pair dilation, Pair out_hw, std::optional<WritableArray> out) {
    const char *what = "im2col";
    const bool is_double = require_float(x, what, "x");
    require_layout(x, what, "x", 4);
    const auto g = conv_geometry(what, {extent(x, 0), extent(x, 1), extent(x, 2), extent(x, 3)},
                                 kernel, stride, padding, dilation, out_hw);
    const auto shape = column_shape(g);
    if (out) {
        const AnyCpuArray target(*out);
        require_same_dtype(x, target, what, "x", "out");
        require_layout(target, what, "out", (int) shape.size());
        for (size_t axis = 0; axis < shape.size(); ++axis)
            if (target.shape(axis) != shape[axis])
                fail_value(what, "out has shape " + gpumat::shape_text(target) +
                                     ", not the shape of the columns");
    }
    return with_float(is_double, [&](auto zero) -> nb::object {
        using T = decltype(zero);
        std::optional<gpumat::Result<T>> fresh;
        T *cols;
        if (out) {
            cols = static_cast<T *>(out->data());
        } else {
            fresh.emplace(shape, false);
            cols = fresh->data();
        }
        {
            nb::gil_scoped_release release;
            gpumat::im2col(g, static_cast<const T *>(x.data()), cols);
        }
        return out ? nb::none() : fresh->release();
    });
}

nb::object col2im(const AnyCpuArray &cols, std::array<int64_t, 4> input_shape, Pair kernel,
                  Pair stride, Pair padding, Pair dilation, Pair out_hw) {
    const char *what = "col2im";
    const bool is_double = require_float(cols, what, "cols");
    const auto g = conv_geometry(what, input_shape, kernel, stride, padding, dilation, out_hw);
    const auto expected = column_shape(g);
    require_layout(cols, what, "cols", (int) expected.size());
    for (size_t axis = 0; axis < expected.size(); ++axis)
        if (cols.shape(axis) != expected[axis]) {
            std::string wanted = "(";
            for (size_t i = 0; i < expected.size(); ++i)
                wanted += (i ? ", " : "") + std::to_string(expected[i]);
            fail_value(what, "cols has shape " + gpumat::shape_text(cols) + ", but this "
                             "geometry gives columns of shape " + wanted + ")");
        }
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> x({(size_t) input_shape[0], (size_t) input_shape[1],
                             (size_t) input_shape[2], (size_t) input_shape[3]}, false);
        {
            nb::gil_scoped_release release;
            gpumat::col2im(g, static_cast<const T *>(cols.data()), x.data());
        }
        return x.release();
    });
}

bool same_bytes(const AnyCpuArray &a, const AnyCpuArray &b) {
    const char *what = "same_bytes";
    require_layout(a, what, "a", -1);
    require_layout(b, what, "b", -1);
    if (a.nbytes() != b.nbytes())
        return false;
    nb::gil_scoped_release release;
    return std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// ---- direct convolution ----------------------------------------------------------------------

// The checked geometry of conv2d (groups = 1) of an input of `input` shape with a weight of
// out_channels x weight_channels x kernel.
gpumat::direct::Geometry direct_geometry(const char *what, const std::array<int64_t, 4> &input,
                                         int64_t out_channels, int64_t weight_channels,
                                         const Pair &kernel, const Pair &stride,
                                         const Pair &padding, const Pair &dilation) {
    if (out_channels < 0)
        fail_value(what, "the weight has a negative dimension");
    // the input shape and the hyper-parameters, checked as for im2col
    const auto lowering = conv_geometry(what, input, kernel, stride, padding, dilation, {0, 0});
    if (weight_channels != input[1])
        fail_value(what, "the input has " + std::to_string(input[1]) + " channels but the "
                         "weight has " + std::to_string(weight_channels) + " (groups = 1)");
    const int64_t limit = int64_t(1) << 31;
    if (kernel.first > limit || kernel.second > limit || stride.first > limit ||
        stride.second > limit || padding.first > limit || padding.second > limit ||
        dilation.first > limit || dilation.second > limit || input[2] > limit ||
        input[3] > limit)
        fail_value(what, "a size or geometry value is too large (over 2**31)");
    auto out_size = [&](int64_t size, int64_t k, int64_t s, int64_t p, int64_t d,
                        const char *axis) {
        const int64_t span = d * (k - 1) + 1;
        if (size + 2 * p < span)
            fail_value(what, std::string("the dilated kernel ") + axis + " " +
                                 std::to_string(span) + " exceeds the padded input " + axis +
                                 " " + std::to_string(size + 2 * p));
        return (size + 2 * p - span) / s + 1;
    };
    gpumat::direct::Geometry g{lowering.batch, lowering.channels, lowering.height,
                               lowering.width, out_channels, lowering.kernel_h,
                               lowering.kernel_w, lowering.stride_h, lowering.stride_w,
                               lowering.pad_h, lowering.pad_w, lowering.dilation_h,
                               lowering.dilation_w, 0, 0};
    g.out_h = out_size(g.height, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, "height");
    g.out_w = out_size(g.width, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, "width");
    // the phase planes of one image, and the work, must stay addressable
    const double planes = (double) g.channels * (g.out_h + (double) (g.kernel_h - 1) *
                          g.dilation_h) * (g.out_w + (double) (g.kernel_w - 1) * g.dilation_w);
    if (planes > 1e12 || (double) g.taps() * (double) out_channels > 1e12)
        fail_value(what, "the layer is too large for the direct convolution");
    return g;
}

std::array<int64_t, 4> shape4(const AnyCpuArray &a) {
    return {extent(a, 0), extent(a, 1), extent(a, 2), extent(a, 3)};
}

// Checks the (N, O, OH, OW) gradient of the output against the geometry.
void require_grad_out(const char *what, const AnyCpuArray &grad_out,
                      const gpumat::direct::Geometry &g) {
    const std::array<int64_t, 4> expected{g.batch, g.out_channels, g.out_h, g.out_w};
    if (shape4(grad_out) != expected)
        fail_value(what, "grad_out has shape " + gpumat::shape_text(grad_out) + " but this "
                         "convolution's output has shape (" + std::to_string(g.batch) + ", " +
                         std::to_string(g.out_channels) + ", " + std::to_string(g.out_h) +
                         ", " + std::to_string(g.out_w) + ")");
}

// Checks an elementwise pair's operands: each float, one dtype, C-contiguous (returned:
// whether float64).
bool require_float_pair(const AnyCpuArray &a, const AnyCpuArray &b, const char *what,
                        const char *name_a, const char *name_b) {
    const bool is_double = require_float(a, what, name_a);
    require_float(b, what, name_b);
    require_same_dtype(a, b, what, name_a, name_b);
    require_layout(a, what, name_a, -1);
    require_layout(b, what, name_b, -1);
    return is_double;
}

// Fails naming both shapes unless `a` and `b` have one shape (elementwise pairs).
void require_same_shape(const AnyCpuArray &a, const AnyCpuArray &b, const char *what,
                        const char *name_a, const char *name_b) {
    if (shape_of(a) != shape_of(b))
        fail_value(what, std::string(name_a) + " has shape " + gpumat::shape_text(a) + " but " +
                             name_b + " has shape " + gpumat::shape_text(b));
}

// Checks the two operands of a direct convolution pass: 4-d, C-contiguous, one float dtype
// (returned: whether float64).
bool require_operands(const char *what, const AnyCpuArray &a, const char *name_a,
                      const AnyCpuArray &b, const char *name_b) {
    const bool is_double = require_float(a, what, name_a);
    require_same_dtype(a, b, what, name_a, name_b);
    require_layout(a, what, name_a, 4);
    require_layout(b, what, name_b, 4);
    return is_double;
}

// A fresh result of `shape` that kernel(a, b, out) fills without the GIL, with T the float
// type `is_double` says (the direct convolutions' passes, and the elementwise pairs).
template <class Kernel>
nb::object direct_result(bool is_double, const std::vector<size_t> &shape, const AnyCpuArray &a,
                         const AnyCpuArray &b, Kernel &&kernel) {
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> out(shape, false);
        {
            nb::gil_scoped_release release;
            kernel(static_cast<const T *>(a.data()), static_cast<const T *>(b.data()),
                   out.data());
        }
        return out.release();
    });
}

nb::object conv2d_direct(const AnyCpuArray &x, const AnyCpuArray &w, Pair stride, Pair padding,
                         Pair dilation, std::optional<AnyCpuArray> bias) {
    const char *what = "conv2d_direct";
    const bool is_double = require_operands(what, x, "x", w, "w");
    const auto g = direct_geometry(what, shape4(x), extent(w, 0), extent(w, 1),
                                   {extent(w, 2), extent(w, 3)}, stride, padding, dilation);
    if (bias) {
        require_same_dtype(x, *bias, what, "x", "bias");
        require_layout(*bias, what, "bias", 1);
        if (extent(*bias, 0) != g.out_channels)
            fail_value(what, "bias has " + std::to_string(extent(*bias, 0)) + " elements but w "
                             "has " + std::to_string(g.out_channels) + " output channels");
    }
    const std::vector<size_t> shape{(size_t) g.batch, (size_t) g.out_channels,
                                    (size_t) g.out_h, (size_t) g.out_w};
    return direct_result(is_double, shape, x, w, [&](auto x_data, auto w_data, auto y) {
        using T = std::remove_const_t<std::remove_pointer_t<decltype(x_data)>>;
        gpumat::direct::forward(g, x_data, w_data, y,
                                bias ? static_cast<const T *>(bias->data()) : nullptr);
    });
}

nb::object conv2d_direct_backward_input(const AnyCpuArray &grad_out, const AnyCpuArray &w,
                                        std::array<int64_t, 4> input_shape, Pair stride,
                                        Pair padding, Pair dilation) {
    const char *what = "conv2d_direct_backward_input";
    const bool is_double = require_operands(what, grad_out, "grad_out", w, "w");
    const auto g = direct_geometry(what, input_shape, extent(w, 0), extent(w, 1),
                                   {extent(w, 2), extent(w, 3)}, stride, padding, dilation);
    require_grad_out(what, grad_out, g);
    const std::vector<size_t> shape{(size_t) input_shape[0], (size_t) input_shape[1],
                                    (size_t) input_shape[2], (size_t) input_shape[3]};
    return direct_result(is_double, shape, grad_out, w, [&](auto dy, auto w_data, auto dx) {
        gpumat::direct::backward_input(g, dy, w_data, dx);
    });
}

nb::object conv2d_direct_backward_weight(const AnyCpuArray &grad_out, const AnyCpuArray &x,
                                         Pair kernel, Pair stride, Pair padding,
                                         Pair dilation) {
    const char *what = "conv2d_direct_backward_weight";
    const bool is_double = require_operands(what, grad_out, "grad_out", x, "x");
    if (grad_out.shape(0) != x.shape(0))
        fail_value(what, "grad_out has " + std::to_string(grad_out.shape(0)) + " images but "
                         "x has " + std::to_string(x.shape(0)));
    const auto g = direct_geometry(what, shape4(x), extent(grad_out, 1), extent(x, 1), kernel,
                                   stride, padding, dilation);
    require_grad_out(what, grad_out, g);
    const std::vector<size_t> shape{(size_t) g.out_channels, (size_t) g.channels,
                                    (size_t) g.kernel_h, (size_t) g.kernel_w};
    return direct_result(is_double, shape, grad_out, x, [&](auto dy, auto x_data, auto dw) {
        gpumat::direct::backward_weight(g, dy, x_data, dw);
    });
}

nb::object small_gemm(const AnyCpuArray &a, const AnyCpuArray &b, std::optional<AnyCpuArray> c,
                      double alpha, double beta, bool trans_a, bool trans_b) {
    const char *what = "gemm";
    const bool is_double = require_float(a, what, "a");
    require_same_dtype(a, b, what, "a", "b");
    require_layout(a, what, "a", 2);
    require_layout(b, what, "b", 2);
    const int64_t m = extent(a, trans_a ? 1 : 0), k = extent(a, trans_a ? 0 : 1);
    const int64_t k_b = extent(b, trans_b ? 1 : 0), n = extent(b, trans_b ? 0 : 1);
    if (k != k_b)
        fail_value(what, "op(a) is " + std::to_string(m) + " x " + std::to_string(k) +
                             " but op(b) is " + std::to_string(k_b) + " x " +
                             std::to_string(n));
    if (c) {
        require_same_dtype(a, *c, what, "a", "c");
        require_layout(*c, what, "c", 2);
        if (extent(*c, 0) != m || extent(*c, 1) != n)
            fail_value(what, "c has shape " + gpumat::shape_text(*c) + ", not the product's (" +
                                 std::to_string(m) + ", " + std::to_string(n) + ")");
    }
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> out({(size_t) m, (size_t) n}, false);
        const T *c_data = c ? static_cast<const T *>(c->data()) : nullptr;
        {
            nb::gil_scoped_release release;
            gpumat::direct::small_gemm(static_cast<const T *>(a.data()),
                                       static_cast<const T *>(b.data()), c_data, out.data(), m,
                                       n, k, trans_a, trans_b, (T) alpha, (T) beta);
        }
        return out.release();
    });
}

std::vector<std::string> direct_conv_isas() {
    std::vector<std::string> names;
    for (auto isa : gpumat::direct::Dispatch::supported())
        names.emplace_back(gpumat::direct::isa_name(isa));
    return names;
}

void set_direct_conv_isa(const std::string &name) {
    if (!gpumat::direct::Dispatch::select(name)) {
        std::string known = "auto";
        for (const auto &isa : direct_conv_isas())
            known += ", " + isa;
        fail_value("set_direct_conv_isa", "'" + name + "' is not an instruction set this CPU "
                                          "and build run; choose one of: " + known);
    }
}

gpumat::direct::Pass direct_conv_pass(const std::string &name) {
    using gpumat::direct::Pass;
    if (name == "forward")
        return Pass::forward;
    if (name == "backward_input")
        return Pass::input;
    if (name == "backward_weight_pixels")
        return Pass::weight;
    if (name == "backward_weight_channels")
        return Pass::weight_transposed;
    if (name == "forward_channels")
        return Pass::forward_channels;
    fail_value("direct_conv", "unknown pass '" + name + "' (forward, forward_channels, "
                              "backward_input, backward_weight_pixels, "
                              "backward_weight_channels)");
}

// The accumulator block shapes the current instruction set's copy has, per pass (float32).
nb::dict direct_conv_tiles() {
    const auto &k = gpumat::direct::kernels_for<float>(gpumat::direct::Dispatch::current());
    auto listed = [](const gpumat::direct::TileShape *shapes, size_t count) {
        nb::list out;
        for (size_t i = 0; i < count; ++i)
            out.append(nb::make_tuple(shapes[i].first, shapes[i].second));
        return out;
    };
    nb::dict tiles;
    tiles["forward"] = listed(k.forward.shapes, k.forward.count);
    tiles["forward_channels"] = listed(k.forward_channels.shapes, k.forward_channels.count);
    tiles["backward_input"] = listed(k.input.shapes, k.input.count);
    tiles["backward_weight_pixels"] = listed(k.weight.shapes, k.weight.count);
    tiles["backward_weight_channels"] =
        listed(k.weight_transposed.shapes, k.weight_transposed.count);
    return tiles;
}

void force_direct_conv_tile(const std::string &pass, int index) {
    if (index < -1)
        fail_value("force_direct_conv_tile", "index must be -1 (the cost model) or a menu "
                                             "entry, got " + std::to_string(index));
    gpumat::direct::forced_shape(direct_conv_pass(pass)).store(index);
}

void set_native_threads(int count) {
    if (count < 1)
        fail_value("set_native_threads", "the thread count must be at least 1, got " +
                                             std::to_string(count));
    gpumat::ThreadPool::instance().set_threads(count);
}

// ---- activations -----------------------------------------------------------------------------

void require_activation(int act, const char *what) {
    if (!gpumat::is_activation(act))
        fail_value(what, "unknown activation code " + std::to_string(act) +
                             " (0 identity, 1 relu, 2 leaky_relu, 3 relu6, 4 elu)");
}

// (outer, channels, inner) of `a` around `axis`.
std::array<int64_t, 3> around_axis(const AnyCpuArray &a, int64_t axis, const char *what) {
    if (axis < 0 || axis >= (int64_t) a.ndim())
        fail_value(what, "axis " + std::to_string(axis) + " is out of range for a " +
                             std::to_string(a.ndim()) + "-dimensional array");
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < axis; ++i)
        outer *= extent(a, (size_t) i);
    for (size_t i = (size_t) axis + 1; i < a.ndim(); ++i)
        inner *= extent(a, i);
    return {outer, extent(a, (size_t) axis), inner};
}

std::vector<size_t> shape_of(const AnyCpuArray &a) {
    std::vector<size_t> shape(a.ndim());
    for (size_t i = 0; i < a.ndim(); ++i)
        shape[i] = a.shape(i);
    return shape;
}

nb::object bias_act(const AnyCpuArray &x, std::optional<AnyCpuArray> bias, int64_t axis,
                    int act, double param) {
    const char *what = "bias_act";
    const bool is_double = require_float(x, what, "x");
    require_layout(x, what, "x", -1);
    require_activation(act, what);
    std::array<int64_t, 3> dims{1, 1, (int64_t) x.size()};
    if (bias) {
        require_float(*bias, what, "bias");
        require_same_dtype(x, *bias, what, "x", "bias");
        dims = around_axis(x, axis, what);
        require_layout(*bias, what, "bias", 1);
        if (extent(*bias, 0) != dims[1])
            fail_value(what, "bias has " + std::to_string(extent(*bias, 0)) + " elements but "
                             "x has " + std::to_string(dims[1]) + " along axis " +
                             std::to_string(axis));
    }
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> out(shape_of(x), false);
        const T *b = bias ? static_cast<const T *>(bias->data()) : nullptr;
        {
            nb::gil_scoped_release release;
            gpumat::bias_act(static_cast<const T *>(x.data()), b, out.data(), dims[0], dims[1],
                             dims[2], act, (T) param);
        }
        return out.release();
    });
}

nb::object act_backward(const AnyCpuArray &grad, const AnyCpuArray &x, int act,
                        double param) {
    const char *what = "act_backward";
    const bool is_double = require_float_pair(grad, x, what, "grad", "x");
    require_activation(act, what);
    require_same_shape(grad, x, what, "grad", "x");
    const int64_t n = (int64_t) grad.size();
    return direct_result(is_double, shape_of(grad), grad, x, [&](auto g, auto v, auto out) {
        using T = std::remove_pointer_t<decltype(out)>;
        gpumat::act_backward(g, v, out, n, act, (T) param);
    });
}

nb::object arith(const AnyCpuArray &a, const AnyCpuArray &b, int op) {
    const char *what = "arith";
    const bool is_double = require_float_pair(a, b, what, "a", "b");
    if (!gpumat::is_arith(op))
        fail_value(what, "unknown operation code " + std::to_string(op) +
                             " (0 add, 1 subtract, 2 multiply, 3 divide)");
    require_same_shape(a, b, what, "a", "b");
    const int64_t n = (int64_t) a.size();
    return direct_result(is_double, shape_of(a), a, b, [&](auto x, auto y, auto out) {
        gpumat::arith(x, y, out, n, op);
    });
}

nb::object bias_grad(const AnyCpuArray &grad, int64_t axis) {
    const char *what = "bias_grad";
    const bool is_double = require_float(grad, what, "grad");
    require_layout(grad, what, "grad", -1);
    const auto dims = around_axis(grad, axis, what);
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> out({(size_t) dims[1]}, false);
        {
            nb::gil_scoped_release release;
            gpumat::bias_grad(static_cast<const T *>(grad.data()), out.data(), dims[0],
                              dims[1], dims[2]);
        }
        return out.release();
    });
}

// ---- batch normalisation -----------------------------------------------------------------------

// (batch, channels, inner) of an N x C x ... array.
gpumat::BatchNormShape batch_norm_shape(const AnyCpuArray &x, const char *what,
                                        const char *name) {
    require_layout(x, what, name, -1);
    if (x.ndim() < 2)
        fail_value(what, std::string(name) + " must be N x C or N x C x ... (at least "
                                             "2-dimensional), got shape " +
                             gpumat::shape_text(x));
    int64_t inner = 1;
    for (size_t i = 2; i < x.ndim(); ++i)
        inner *= extent(x, i);
    return {extent(x, 0), extent(x, 1), inner};
}

// A per-channel vector: x's dtype, 1-d, C elements.
template <class T>
const T *channel_vector(const std::optional<AnyCpuArray> &v, const AnyCpuArray &x,
                        int64_t channels, const char *what, const char *name) {
    if (!v)
        return nullptr;
    require_float(*v, what, name);
    require_same_dtype(x, *v, what, "x", name);
    require_layout(*v, what, name, 1);
    if (extent(*v, 0) != channels)
        fail_value(what, std::string(name) + " has " + std::to_string(extent(*v, 0)) +
                             " elements but x has " + std::to_string(channels) +
                             " channels");
    return static_cast<const T *>(v->data());
}

nb::tuple batch_norm_forward(const AnyCpuArray &x, std::optional<AnyCpuArray> weight,
                             std::optional<AnyCpuArray> bias, std::optional<AnyCpuArray> mean,
                             std::optional<AnyCpuArray> var, double eps) {
    const char *what = "batch_norm_forward";
    const bool is_double = require_float(x, what, "x");
    const auto shape = batch_norm_shape(x, what, "x");
    if (mean.has_value() != var.has_value())
        fail_value(what, "mean and var must be given together (evaluation) or both None "
                         "(training)");
    const bool training = !mean.has_value();
    if (training && shape.per_channel() == 0 && shape.channels > 0)
        fail_value(what, "training needs at least one value per channel, got x of shape " +
                             gpumat::shape_text(x));
    if (!(eps >= 0.0))
        fail_value(what, "eps must be >= 0, got " + std::to_string(eps));
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        const size_t channels = (size_t) shape.channels;
        gpumat::BatchNormForward<T> f{};
        f.x = static_cast<const T *>(x.data());
        f.weight = channel_vector<T>(weight, x, shape.channels, what, "weight");
        f.bias = channel_vector<T>(bias, x, shape.channels, what, "bias");
        f.mean_in = channel_vector<T>(mean, x, shape.channels, what, "mean");
        f.var_in = channel_vector<T>(var, x, shape.channels, what, "var");
        f.eps = eps;
        gpumat::Result<T> y(shape_of(x), false), inv_std({channels}, false);
        std::optional<gpumat::Result<T>> batch_mean, batch_var;
        if (training) {
            batch_mean.emplace(std::vector<size_t>{channels}, false);
            batch_var.emplace(std::vector<size_t>{channels}, false);
            f.mean = batch_mean->data();
            f.var = batch_var->data();
        }
        f.y = y.data();
        f.inv_std = inv_std.data();
        {
            nb::gil_scoped_release release;
            gpumat::batch_norm_forward(f, shape);
        }
        nb::object mean_out = training ? batch_mean->release() : nb::none();
        nb::object var_out = training ? batch_var->release() : nb::none();
        return nb::make_tuple(y.release(), mean_out, var_out, inv_std.release());
    });
}

nb::tuple batch_norm_backward(const AnyCpuArray &grad, const AnyCpuArray &x,
                              const AnyCpuArray &mean, const AnyCpuArray &inv_std,
                              std::optional<AnyCpuArray> weight, bool training,
                              bool input_grad, bool param_grads) {
    const char *what = "batch_norm_backward";
    const bool is_double = require_float(grad, what, "grad");
    require_float(x, what, "x");
    require_same_dtype(grad, x, what, "grad", "x");
    const auto shape = batch_norm_shape(x, what, "x");
    require_layout(grad, what, "grad", -1);
    require_same_shape(grad, x, what, "grad", "x");
    if (training && shape.per_channel() == 0 && shape.channels > 0)
        fail_value(what, "training needs at least one value per channel, got x of shape " +
                             gpumat::shape_text(x));
    const std::optional<AnyCpuArray> mean_arg(mean), inv_std_arg(inv_std);
    return with_float(is_double, [&](auto zero) {
        using T = decltype(zero);
        const size_t channels = (size_t) shape.channels;
        gpumat::BatchNormBackward<T> b{};
        b.grad = static_cast<const T *>(grad.data());
        b.x = static_cast<const T *>(x.data());
        b.mean = channel_vector<T>(mean_arg, x, shape.channels, what, "mean");
        b.inv_std = channel_vector<T>(inv_std_arg, x, shape.channels, what, "inv_std");
        b.weight = channel_vector<T>(weight, x, shape.channels, what, "weight");
        b.training = training;
        std::optional<gpumat::Result<T>> grad_x, grad_weight, grad_bias;
        if (input_grad) {
            grad_x.emplace(shape_of(x), false);
            b.grad_x = grad_x->data();
        }
        if (param_grads) {
            grad_weight.emplace(std::vector<size_t>{channels}, false);
            grad_bias.emplace(std::vector<size_t>{channels}, false);
            b.grad_weight = grad_weight->data();
            b.grad_bias = grad_bias->data();
        }
        {
            nb::gil_scoped_release release;
            gpumat::batch_norm_backward(b, shape);
        }
        auto out = [](std::optional<gpumat::Result<T>> &r) -> nb::object {
            return r ? r->release() : nb::none();
        };
        return nb::make_tuple(out(grad_x), out(grad_weight), out(grad_bias));
    });
}

// ---- XNOR-popcount (binarised networks) --------------------------------------------------------

void require_packed(const AnyCpuArray &a, const char *what, const char *name, int ndim) {
    if (a.dtype() != nb::dtype<uint32_t>())
        fail_type(what, std::string(name) + " must be uint32 (packed signs), got dtype " +
                            gpumat::dtype_name(a.dtype()));
    require_layout(a, what, name, ndim);
}

// Whether `out_dtype` ("int32" or "float32") asks for float32; a TypeError for anything else.
bool float_output(const std::string &out_dtype, const char *what) {
    if (out_dtype == "float32")
        return true;
    if (out_dtype != "int32")
        fail_type(what, "out_dtype must be int32 or float32, got " + out_dtype);
    return false;
}

// A fresh int32 or float32 result of `shape` that kernel(out) fills without the GIL.
template <class Kernel>
nb::object xnor_result(bool is_float, const std::vector<size_t> &shape, Kernel &&kernel) {
    auto run = [&](auto zero) {
        using T = decltype(zero);
        gpumat::Result<T> out(shape, false);
        {
            nb::gil_scoped_release release;
            kernel(static_cast<void *>(out.data()));
        }
        return out.release();
    };
    return is_float ? run(float{}) : run(int32_t{});
}

// the largest k (or kh * kw * C) whose sums stay well inside int32
constexpr int64_t kMaxXnorBits = int64_t(1) << 28;

// An optional float32 C-contiguous epilogue operand of xnor_gemm / xnor_conv2d with `shape`.
const float *xnor_scale(const std::optional<AnyCpuArray> &v, const char *what, const char *name,
                        const std::vector<int64_t> &shape) {
    if (!v)
        return nullptr;
    if (v->dtype() != nb::dtype<float>())
        fail_type(what, std::string(name) + " must be float32, got dtype " +
                            gpumat::dtype_name(v->dtype()));
    require_layout(*v, what, name, (int) shape.size());
    bool same = true;
    for (size_t i = 0; i < shape.size(); ++i)
        same = same && extent(*v, i) == shape[i];
    if (!same) {
        std::string wanted = "(";
        for (size_t i = 0; i < shape.size(); ++i)
            wanted += (i ? ", " : "") + std::to_string(shape[i]);
        fail_value(what, std::string(name) + " must have shape " + wanted +
                             (shape.size() == 1 ? ",)" : ")") + ", got " +
                             gpumat::shape_text(*v));
    }
    return static_cast<const float *>(v->data());
}

// The evaluation batch norm folded into a packing (xnor_conv2d's and pack_conv_input's bn_*):
// its per-channel scale and shift as the batch norm kernel makes them (its
// evaluation_inv_std, times the weight).  `affine` points into the vectors: keep the struct.
struct FoldedBatchNorm {
    std::vector<float> scale, shift;
    gpumat::xnor::ChannelAffine affine{};
};

// Whether the optional operands ask for a batch norm (bn_mean given); fills `folded` after
// checking them (C float32 values each, bn_var with bn_mean, eps finite and >= 0).
bool fold_batch_norm(const std::optional<AnyCpuArray> &bn_mean,
                     const std::optional<AnyCpuArray> &bn_var,
                     const std::optional<AnyCpuArray> &bn_weight,
                     const std::optional<AnyCpuArray> &bn_bias, double bn_eps,
                     int64_t channels, const char *what, FoldedBatchNorm &folded) {
    if ((bn_var || bn_weight || bn_bias) && !bn_mean)
        fail_value(what, "bn_var, bn_weight and bn_bias need bn_mean");
    if (!bn_mean)
        return false;
    if (!bn_var)
        fail_value(what, "bn_mean needs bn_var");
    if (!(bn_eps >= 0.0) || !std::isfinite(bn_eps))
        fail_value(what, "bn_eps must be finite and >= 0, got " + std::to_string(bn_eps));
    const float *mean_data = xnor_scale(bn_mean, what, "bn_mean", {channels});
    const float *var_data = xnor_scale(bn_var, what, "bn_var", {channels});
    const float *weight_data = xnor_scale(bn_weight, what, "bn_weight", {channels});
    const float *shift_data = xnor_scale(bn_bias, what, "bn_bias", {channels});
    folded.scale.resize((size_t) channels);
    folded.shift.assign((size_t) channels, 0.0f);
    for (int64_t c = 0; c < channels; ++c) {
        const float inv_std = gpumat::evaluation_inv_std(var_data[c], bn_eps);
        folded.scale[(size_t) c] = weight_data ? inv_std * weight_data[c] : inv_std;
        if (shift_data)
            folded.shift[(size_t) c] = shift_data[c];
    }
    folded.affine = {mean_data, folded.scale.data(), folded.shift.data()};
    return true;
}

nb::object pack_conv_input(const AnyCpuArray &x, bool mean_abs,
                           std::optional<AnyCpuArray> bn_mean, std::optional<AnyCpuArray> bn_var,
                           std::optional<AnyCpuArray> bn_weight,
                           std::optional<AnyCpuArray> bn_bias, double bn_eps) {
    const char *what = "pack_conv_input";
    if (x.dtype() != nb::dtype<float>())
        fail_type(what, "x must be float32, got dtype " + gpumat::dtype_name(x.dtype()));
    require_layout(x, what, "x", 4);
    const int64_t n = extent(x, 0), c = extent(x, 1), h = extent(x, 2), w = extent(x, 3);
    FoldedBatchNorm folded;
    const bool normalizes = fold_batch_norm(bn_mean, bn_var, bn_weight, bn_bias, bn_eps, c,
                                            what, folded);
    const int64_t words = (c + 31) / 32;
    gpumat::Result<uint32_t> out({(size_t) n, (size_t) h, (size_t) w, (size_t) words}, false);
    std::optional<gpumat::Result<float>> mean;
    if (mean_abs) {
        // C = 0: the mean of nothing, NaN (as NumPy's)
        mean.emplace(std::vector<size_t>{(size_t) n, 1, (size_t) h, (size_t) w}, false);
        if (c == 0)
            std::fill(mean->data(), mean->data() + n * h * w,
                      std::numeric_limits<float>::quiet_NaN());
    }
    const float *source = static_cast<const float *>(x.data());
    {
        nb::gil_scoped_release release;
        gpumat::xnor::pack_conv_input(source, out.data(), n, c, h, w,
                                      mean ? mean->data() : nullptr,
                                      normalizes ? &folded.affine : nullptr);
    }
    if (!mean)
        return out.release();
    nb::object packed = out.release();
    return nb::make_tuple(packed, mean->release());
}

nb::object xnor_gemm(const AnyCpuArray &a, const AnyCpuArray &b, int64_t k,
                     const std::string &out_dtype,
                     const std::optional<AnyCpuArray> &row_scale,
                     const std::optional<AnyCpuArray> &col_scale,
                     const std::optional<AnyCpuArray> &bias) {
    const char *what = "xnor_gemm";
    require_packed(a, what, "a", 2);
    require_packed(b, what, "b", 2);
    const bool is_float = float_output(out_dtype, what);
    if (k < 1 || k > kMaxXnorBits)
        fail_value(what, "k must be between 1 and " + std::to_string(kMaxXnorBits) + ", got " +
                             std::to_string(k));
    const int64_t words = (k + 31) / 32;
    if (extent(a, 1) != words || extent(b, 1) != words)
        fail_value(what, "k = " + std::to_string(k) + " needs " + std::to_string(words) +
                             " words per row, but a has shape " + gpumat::shape_text(a) +
                             " and b has shape " + gpumat::shape_text(b));
    const int64_t m = extent(a, 0), n = extent(b, 0);
    const uint32_t *a_data = static_cast<const uint32_t *>(a.data());
    const uint32_t *b_data = static_cast<const uint32_t *>(b.data());
    if ((row_scale || col_scale || bias) && !is_float)
        fail_type(what, "row_scale, col_scale and bias need float32 results");
    const float *rows = xnor_scale(row_scale, what, "row_scale", {m});
    const float *cols = xnor_scale(col_scale, what, "col_scale", {n});
    const float *shift = xnor_scale(bias, what, "bias", {n});
    return xnor_result(is_float, {(size_t) m, (size_t) n}, [&](void *out) {
        gpumat::xnor::xnor_gemm(a_data, b_data, m, n, k, out, is_float);
        if (is_float)
            gpumat::xnor::gemm_epilogue(static_cast<float *>(out), m, n, rows, cols, shift);
    });
}

nb::object xnor_conv2d(const AnyCpuArray &xp, const AnyCpuArray &wp, int64_t channels,
                       Pair stride, Pair padding, Pair out_hw, const std::string &out_dtype,
                       std::optional<AnyCpuArray> pixel_scale,
                       std::optional<AnyCpuArray> filter_scale, std::optional<AnyCpuArray> bias,
                       bool window_mean, std::optional<AnyCpuArray> bn_mean,
                       std::optional<AnyCpuArray> bn_var, std::optional<AnyCpuArray> bn_weight,
                       std::optional<AnyCpuArray> bn_bias, double bn_eps,
                       std::optional<AnyCpuArray> residual) {
    const char *what = "xnor_conv2d";
    // xp: packed (N, H, W, Wc) words, or the float32 (N, C, H, W) input, packed inside
    const bool float_input = xp.dtype() == nb::dtype<float>();
    if (float_input) {
        require_layout(xp, what, "xp", 4);
        if (extent(xp, 1) != channels)
            fail_value(what, "the float input xp " + gpumat::shape_text(xp) + " has " +
                                 std::to_string(extent(xp, 1)) + " channels, but channels = " +
                                 std::to_string(channels));
    } else {
        if (xp.dtype() != nb::dtype<uint32_t>())
            fail_type(what, "xp must be uint32 (packed signs) or float32 (the input, packed "
                            "here), got dtype " + gpumat::dtype_name(xp.dtype()));
        require_layout(xp, what, "xp", 4);
    }
    require_packed(wp, what, "wp", 4);
    const bool is_float = float_output(out_dtype, what);
    require_at_least(stride, 1, what, "stride");
    require_at_least(padding, 0, what, "padding");
    require_at_least(out_hw, 0, what, "out_hw");
    if (channels < 1)
        fail_value(what, "channels must be at least 1, got " + std::to_string(channels));
    const int64_t words = (channels + 31) / 32;
    if ((!float_input && extent(xp, 3) != words) || extent(wp, 3) != words)
        fail_value(what, std::to_string(channels) + " channels need " + std::to_string(words) +
                             " words per pixel, but " +
                             (float_input ? std::string() : "xp has shape " +
                                                                gpumat::shape_text(xp) + " and ") +
                             "wp has shape " + gpumat::shape_text(wp));
    const int64_t n = extent(xp, 0);
    const int64_t h = extent(xp, float_input ? 2 : 1), w = extent(xp, float_input ? 3 : 2);
    const int64_t o = extent(wp, 0), kh = extent(wp, 1), kw = extent(wp, 2);
    if (kh < 1 || kw < 1)
        fail_value(what, "the kernel must be at least 1 x 1, got wp of shape " +
                             gpumat::shape_text(wp));
    const int64_t limit = int64_t(1) << 31;
    if (h >= limit || w >= limit || kh >= limit || kw >= limit || stride.first >= limit ||
        stride.second >= limit || padding.first >= limit || padding.second >= limit ||
        kh * kw * words * 32 > kMaxXnorBits)
        fail_value(what, "a size or geometry value is too large");
    if (h + 2 * padding.first < kh || w + 2 * padding.second < kw)
        fail_value(what, "the kernel " + std::to_string(kh) + " x " + std::to_string(kw) +
                             " exceeds the padded input " + std::to_string(h + 2 * padding.first) +
                             " x " + std::to_string(w + 2 * padding.second));
    const int64_t oh = (h + 2 * padding.first - kh) / stride.first + 1;
    const int64_t ow = (w + 2 * padding.second - kw) / stride.second + 1;
    if (out_hw.first != oh || out_hw.second != ow)
        fail_value(what, "out_hw is (" + std::to_string(out_hw.first) + ", " +
                             std::to_string(out_hw.second) + ") but this geometry gives (" +
                             std::to_string(oh) + ", " + std::to_string(ow) + ")");
    if (!is_float && (pixel_scale || filter_scale || bias || window_mean || residual))
        fail_value(what, "pixel_scale, filter_scale, bias, window_mean and residual need "
                         "out_dtype float32");
    if (window_mean && (!float_input || pixel_scale))
        fail_value(what, "window_mean makes the pixel scale from the float32 input: it needs "
                         "xp as float32 (N, C, H, W) and no pixel_scale");
    // the evaluation batch norm folded into the packing
    if (bn_mean && !float_input)
        fail_value(what, "bn_mean normalizes the float32 input: it needs xp as float32 "
                         "(N, C, H, W)");
    FoldedBatchNorm folded;
    const bool normalizes = fold_batch_norm(bn_mean, bn_var, bn_weight, bn_bias, bn_eps,
                                            channels, what, folded);
    const float *pixel_data = xnor_scale(pixel_scale, what, "pixel_scale", {n, oh, ow});
    const float *residual_data = xnor_scale(residual, what, "residual", {n, o, oh, ow});
    const float *filter_data = xnor_scale(filter_scale, what, "filter_scale", {o});
    const float *bias_data = xnor_scale(bias, what, "bias", {o});
    const uint32_t *x_data = float_input ? nullptr : static_cast<const uint32_t *>(xp.data());
    const float *x_floats = float_input ? static_cast<const float *>(xp.data()) : nullptr;
    const uint32_t *w_data = static_cast<const uint32_t *>(wp.data());
    return xnor_result(is_float, {(size_t) n, (size_t) o, (size_t) oh, (size_t) ow},
                       [&](void *out) {
        gpumat::xnor::xnor_conv2d(x_data, w_data, n, channels, h, w, o, kh, kw, stride.first,
                                  stride.second, padding.first, padding.second, oh, ow, out,
                                  is_float, pixel_data, filter_data, bias_data, x_floats,
                                  window_mean, normalizes ? &folded.affine : nullptr,
                                  residual_data);
    });
}

std::vector<std::string> xnor_isas() {
    std::vector<std::string> names;
    for (auto isa : gpumat::xnor::Dispatch::supported())
        names.emplace_back(gpumat::xnor::isa_name(isa));
    return names;
}

void set_xnor_isa(const std::string &name) {
    if (!gpumat::xnor::Dispatch::select(name)) {
        std::string known = "auto";
        for (const auto &isa : xnor_isas())
            known += ", " + isa;
        fail_value("set_xnor_isa", "'" + name + "' is not an instruction set this CPU and "
                                   "build run; choose one of: " + known);
    }
}

}  // namespace

NB_MODULE(_native, module) {
    module.doc() = "gpumat native CPU kernels (nanobind; their work split over one thread pool).";

    module.def("copy_strided", &copy_strided, "src"_a.noconvert(),
               "A C-contiguous copy of src (any strides; elements of 1, 2, 4 or 8 bytes),\n"
               "bit for bit, its rows split over the thread pool.");
    module.def("concatenate", &concatenate, "arrays"_a, "axis"_a,
               "numpy.concatenate(arrays, axis) for arrays of one dtype (any strides;\n"
               "elements of 1, 2, 4 or 8 bytes), bit for bit, split over the thread pool.");
    module.def("pack_signs", &pack_signs, nb::arg("x").noconvert(),
               "Pack the signs of a C-contiguous float32 array of shape (..., n)\n"
               "into uint32 words of shape (..., ceil(n / 32)): bit j of word w\n"
               "is 1 iff x[..., 32 * w + j] >= 0 (NaN gives 0, -0.0 gives 1);\n"
               "padding bits are 0.");

    module.def("pool2d_max", &pool2d_max, "x"_a.noconvert(), "kernel"_a, "stride"_a,
               "padding"_a, "out_hw"_a, "with_indices"_a,
               "Max pooling of a C-contiguous float NCHW array with torch's semantics:\n"
               "(out, int64 flat h * W + w indices, or None without with_indices).");
    module.def("pool2d_avg", &pool2d_avg, "x"_a.noconvert(), "kernel"_a, "stride"_a,
               "padding"_a, "out_hw"_a, "count_include_pad"_a,
               "Average pooling of a C-contiguous float NCHW array with torch's semantics.");
    module.def("pool2d_global_avg", &pool2d_global_avg, "x"_a.noconvert(),
               "Global average pooling of a C-contiguous float NCHW array: (N, C, 1, 1), each\n"
               "plane's values summed in float64 and divided once.");
    module.def("pool2d_max_backward", &pool2d_max_backward, "grad_out"_a.noconvert(),
               "indices"_a.noconvert(), "input_hw"_a, "kernel"_a, "stride"_a, "padding"_a,
               "Gradient of max pooling: each output's gradient added at its index (an\n"
               "index outside its output's window contributes nothing).");
    module.def("pool2d_avg_backward", &pool2d_avg_backward, "grad_out"_a.noconvert(),
               "input_hw"_a, "kernel"_a, "stride"_a, "padding"_a, "count_include_pad"_a,
               "Gradient of average pooling.");
    module.def("im2col", &im2col, "x"_a.noconvert(), "kernel"_a, "stride"_a, "padding"_a,
               "dilation"_a, "out_hw"_a, "out"_a.noconvert() = nb::none(),
               "The (N, C*kh*kw, OH*OW) columns of a C-contiguous float NCHW array,\n"
               "written into `out` (a writable C-contiguous array of that shape and x's\n"
               "dtype) when given, which returns None.");
    module.def("col2im", &col2im, "cols"_a.noconvert(), "input_shape"_a, "kernel"_a,
               "stride"_a, "padding"_a, "dilation"_a, "out_hw"_a,
               "im2col's adjoint: the NCHW array of input_shape where each pixel sums\n"
               "the column entries im2col copies from it, in kernel order.");
    module.def("same_bytes", &same_bytes, "a"_a.noconvert(), "b"_a.noconvert(),
               "Whether two C-contiguous arrays hold the same bytes (memcmp).");
    module.def("bias_act", &bias_act, "x"_a.noconvert(), "bias"_a.noconvert().none(),
               "axis"_a, "act"_a, "param"_a,
               "act(x + bias broadcast along axis) (bias None: act(x)); act is a code of\n"
               "gpumat.backends.base.ACTIVATIONS, param the slope or alpha.");
    module.def("act_backward", &act_backward, "grad"_a.noconvert(), "x"_a.noconvert(),
               "act"_a, "param"_a, "grad * act'(x), with torch's values at the kinks.");
    module.def("arith", &arith, "a"_a.noconvert(), "b"_a.noconvert(), "op"_a,
               "a + b, a - b, a * b or a / b (op 0-3) of two C-contiguous float arrays of\n"
               "one shape and dtype, in one pass over the threads (NumPy's bits).");
    module.def("bias_grad", &bias_grad, "grad"_a.noconvert(), "axis"_a,
               "grad summed over every axis but axis (accumulated in float64).");
    module.def("batch_norm_forward", &batch_norm_forward, "x"_a.noconvert(),
               "weight"_a.noconvert().none(), "bias"_a.noconvert().none(),
               "mean"_a.noconvert().none(), "var"_a.noconvert().none(), "eps"_a,
               "Batch norm of an N x C x ... array over channel axis 1: (y, mean, var,\n"
               "inv_std); training (mean and var None) computes the batch's mean and\n"
               "biased variance, evaluation uses the given ones (returned as None).");
    module.def("batch_norm_backward", &batch_norm_backward, "grad"_a.noconvert(),
               "x"_a.noconvert(), "mean"_a.noconvert(), "inv_std"_a.noconvert(),
               "weight"_a.noconvert().none(), "training"_a, "input_grad"_a, "param_grads"_a,
               "Gradients of batch_norm_forward: (dx, dweight, dbias), None where not\n"
               "asked for.");

    module.def("conv2d_direct", &conv2d_direct, "x"_a.noconvert(), "w"_a.noconvert(),
               "stride"_a, "padding"_a, "dilation"_a, "bias"_a.noconvert().none() = nb::none(),
               "conv2d (groups 1) of C-contiguous float NCHW x and O x C x kh x kw w by\n"
               "the direct kernels: no im2col columns, vectorised for the CPU's\n"
               "instruction set, images split over the native threads.  bias (O values of\n"
               "x's dtype) is added as the results are stored (the bits of adding it after).");
    module.def("conv2d_direct_backward_input", &conv2d_direct_backward_input,
               "grad_out"_a.noconvert(), "w"_a.noconvert(), "input_shape"_a, "stride"_a,
               "padding"_a, "dilation"_a,
               "The gradient of conv2d_direct with respect to its input.");
    module.def("conv2d_direct_backward_weight", &conv2d_direct_backward_weight,
               "grad_out"_a.noconvert(), "x"_a.noconvert(), "kernel"_a, "stride"_a,
               "padding"_a, "dilation"_a,
               "The gradient of conv2d_direct with respect to its weight (O x C x kh x kw).");
    module.def("gemm", &small_gemm, "a"_a.noconvert(), "b"_a.noconvert(),
               "c"_a.noconvert().none(), "alpha"_a, "beta"_a, "trans_a"_a, "trans_b"_a,
               "alpha * op(a) @ op(b) + beta * c (c None: no c) for C-contiguous 2-d float\n"
               "arrays of one dtype, op transposing where asked, on the calling thread\n"
               "(the cpu backend's small products: no BLAS threads).");
    module.def("direct_conv_isa",
               [] { return std::string(gpumat::direct::isa_name(gpumat::direct::Dispatch::current())); },
               "The instruction set the direct convolutions use: baseline (SSE2 on\n"
               "x86-64, the compiler's flags elsewhere), avx2 (with FMA) or avx512.");
    module.def("direct_conv_isas", &direct_conv_isas,
               "The instruction sets this CPU and build can run, best last.");
    module.def("set_direct_conv_isa", &set_direct_conv_isa, "name"_a,
               "Use the named instruction set ('auto': the best); for tests and\n"
               "comparisons (GPUMAT_CPU_ISA caps it at import).");
    module.def("direct_conv_tiles", &direct_conv_tiles,
               "Per pass, the accumulator block shapes compiled for the current\n"
               "instruction set.");
    module.def("force_direct_conv_tile", &force_direct_conv_tile, "pass_name"_a, "index"_a,
               "Force a pass to one entry of direct_conv_tiles() (-1: the cost model\n"
               "picks); forcing a backward_weight form also forces that form.");
    module.def("pack_conv_input", &pack_conv_input, "x"_a.noconvert(), "mean_abs"_a = false,
               "bn_mean"_a.noconvert().none() = nb::none(),
               "bn_var"_a.noconvert().none() = nb::none(),
               "bn_weight"_a.noconvert().none() = nb::none(),
               "bn_bias"_a.noconvert().none() = nb::none(), "bn_eps"_a = 1e-5,
               "The channel signs of each pixel of a C-contiguous float32 N x C x H x W\n"
               "array, packed: uint32 N x H x W x ceil(C / 32), bit j of word w of pixel\n"
               "(n, h, x) set iff x[n, 32 w + j, h, x] >= 0 (NaN 0, -0.0 1), padding 0.\n"
               "mean_abs: returns (packed, mean), mean float32 N x 1 x H x W the mean of |x|\n"
               "over the channels (float32 sum in channel order, divided by C), same pass.\n"
               "bn_mean, bn_var (, bn_weight, bn_bias, bn_eps): x batch-normalized with those\n"
               "evaluation statistics first, as xnor_conv2d's packing does.");
    module.def("xnor_gemm", &xnor_gemm, "a"_a.noconvert(), "b"_a.noconvert(), "k"_a,
               "out_dtype"_a, "row_scale"_a.noconvert().none() = nb::none(),
               "col_scale"_a.noconvert().none() = nb::none(),
               "bias"_a.noconvert().none() = nb::none(),
               "k - 2 popcount(a[i] XOR b[j]) for packed uint32 rows a (m x ceil(k / 32))\n"
               "and b (n x ceil(k / 32)) of k signs: the m x n products of the +-1\n"
               "vectors, int32 or float32 (out_dtype); the padding bits never count.\n"
               "float32 only: optional row_scale (m), col_scale (n) and bias (n) make\n"
               "each value ((v * row_scale[i]) * col_scale[j]) + bias[j], rounded step\n"
               "by step (an XNOR-Net linear layer's K, alpha and bias).");
    module.def("xnor_conv2d", &xnor_conv2d, "xp"_a.noconvert(), "wp"_a.noconvert(),
               "channels"_a, "stride"_a, "padding"_a, "out_hw"_a, "out_dtype"_a,
               "pixel_scale"_a.noconvert().none() = nb::none(),
               "filter_scale"_a.noconvert().none() = nb::none(),
               "bias"_a.noconvert().none() = nb::none(), "window_mean"_a = false,
               "bn_mean"_a.noconvert().none() = nb::none(),
               "bn_var"_a.noconvert().none() = nb::none(),
               "bn_weight"_a.noconvert().none() = nb::none(),
               "bn_bias"_a.noconvert().none() = nb::none(), "bn_eps"_a = 1e-5,
               "residual"_a.noconvert().none() = nb::none(),
               "conv2d(b(x), b(w)) with zero padding, b = +1 for a set bit and -1 else, of\n"
               "a packed input xp (N x H x W x ceil(C / 32), from pack_conv_input) and\n"
               "packed weights wp (O x kh x kw x ceil(C / 32)): N x O x OH x OW, int32 or\n"
               "float32 (out_dtype).  xp may instead be the float32 N x C x H x W input\n"
               "(b(v) = +1 for v >= 0), binarized and packed inside, chunk by chunk, in the\n"
               "same pass (the same results as packing it first).  out_hw must be the\n"
               "geometry's output size.  float32 output\n"
               "only: pixel_scale (N, OH, OW), filter_scale (O,), bias (O,) make it\n"
               "((v * pixel_scale[n, oh, ow]) * filter_scale[o]) + bias[o] in float32\n"
               "(no FMA), each factor left out where None, applied as results are stored.\n"
               "window_mean (float32 xp, no pixel_scale): the pixel scale is XNOR-Net's K,\n"
               "made in the same pass: the channel mean of |x| (pack_conv_input's) summed\n"
               "over the kernel taps inside the image in tap order, divided by kh * kw.\n"
               "bn_mean, bn_var (and bn_weight, bn_bias, each (C,) float32; float32 xp):\n"
               "the input is first batch-normalized with these evaluation statistics,\n"
               "(x - mean) * (weight / sqrt(var + eps)) + bias as batch_norm_forward\n"
               "computes it, bit for bit, inside the packing pass.\n"
               "residual (N, O, OH, OW) float32: added last, as the results are stored\n"
               "(a residual block's addition).");
    module.def("xnor_isa",
               [] { return std::string(gpumat::xnor::isa_name(gpumat::xnor::Dispatch::current())); },
               "The instruction set the XNOR kernels use: baseline, avx2, avx512bw or\n"
               "avx512vpopcntdq.");
    module.def("xnor_isas", &xnor_isas,
               "The instruction sets this CPU and build can run the XNOR kernels with, best\n"
               "last.");
    module.def("set_xnor_isa", &set_xnor_isa, "name"_a,
               "Use the named instruction set for the XNOR kernels ('auto': the best,\n"
               "'avx512': the best AVX-512 one); GPUMAT_CPU_ISA caps it at import.");
    module.def("native_threads", [] { return gpumat::ThreadPool::instance().threads(); },
               "Threads the direct convolutions use (the caller included):\n"
               "GPUMAT_NUM_THREADS, else OMP_NUM_THREADS, else the usable CPUs.");
    module.def("set_native_threads", &set_native_threads, "count"_a,
               "Set the thread count of the direct convolutions.");

    module.def("buffer_cache_bytes", [] { return gpumat::BufferCache::instance().held(); },
               "Bytes of freed result buffers the module keeps for reuse (at most 64 MiB).");
    module.def("clear_buffer_cache", [] { gpumat::BufferCache::instance().clear(); },
               "Free the result buffers kept for reuse.");

    module.def("xnor_prepared_cache",
               [] {
                   int64_t entries, bytes, hits, misses;
                   gpumat::xnor::PreparedCache::instance().stats(entries, bytes, hits, misses);
                   nb::dict d;
                   d["entries"] = entries;
                   d["bytes"] = bytes;
                   d["hits"] = hits;
                   d["misses"] = misses;
                   return d;
               },
               "xnor_conv2d's kept weight preparations (weight blocks and border tables, made\n"
               "once per layer's weights and geometry): entries, bytes, and hits and misses\n"
               "since the last clear.");
    module.def("clear_xnor_prepared_cache",
               [] { gpumat::xnor::PreparedCache::instance().clear(); },
               "Drop xnor_conv2d's kept weight preparations (and zero the counts).");

    module.def("openmp_threads", &gpumat::openmp_max_threads,
               "The number of threads an OpenMP parallel region may use (1 without OpenMP).");

    module.def("has_openmp", &gpumat::openmp_enabled,
               "Whether this module was compiled with OpenMP.");
}
