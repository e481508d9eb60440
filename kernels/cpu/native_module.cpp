// gpumat._native: the CPU kernels NumPy has no fast path for, as a nanobind
// module.  Python-side validation and the pure-NumPy fallback live in
// gpumat/native.py; this file still checks its inputs itself so that a direct
// call with a bad argument raises a Python exception instead of crashing.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pack_signs.hpp"

namespace nb = nanobind;

namespace {

using AnyCpuArray = nb::ndarray<nb::ro, nb::device::cpu>;
using Uint32Array = nb::ndarray<nb::numpy, uint32_t>;

std::string dtype_name(nb::dlpack::dtype dtype) {
    std::string kind;
    switch ((nb::dlpack::dtype_code) dtype.code) {
        case nb::dlpack::dtype_code::Int: kind = "int"; break;
        case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
        case nb::dlpack::dtype_code::Float: kind = "float"; break;
        case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
        case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
        case nb::dlpack::dtype_code::Bool: return "bool";
        default: kind = "dtype_code" + std::to_string((int) dtype.code) + "_"; break;
    }
    std::string name = kind + std::to_string((int) dtype.bits);
    if (dtype.lanes != 1)
        name += "x" + std::to_string((int) dtype.lanes);
    return name;
}

bool is_c_contiguous(const AnyCpuArray &array) {
    // An empty array has no layout to get wrong (NumPy gives it zero strides).
    if (array.size() == 0)
        return true;
    int64_t expected = 1;
    for (size_t i = array.ndim(); i-- > 0;) {
        const int64_t extent = (int64_t) array.shape(i);
        if (extent != 1 && array.stride(i) != expected)
            return false;
        expected *= extent;
    }
    return true;
}

Uint32Array pack_signs(const AnyCpuArray &input) {
    if (input.dtype() != nb::dtype<float>())
        throw nb::type_error(("pack_signs: expected a float32 array, got dtype " +
                              dtype_name(input.dtype())).c_str());
    const size_t ndim = input.ndim();
    if (ndim == 0)
        throw nb::value_error(
            "pack_signs: expected an array with at least 1 dimension (..., n), "
            "got a 0-dimensional array");
    if (!is_c_contiguous(input))
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

    const size_t total_words = rows * words_per_row;
    // Allocate at least one word so that an empty result still owns a valid
    // pointer; the array's shape says how many words are meaningful.
    std::unique_ptr<uint32_t[]> output(new uint32_t[total_words ? total_words : 1]);
    const float *source = static_cast<const float *>(input.data());
    {
        nb::gil_scoped_release release;
        gpumat::pack_signs_rows(source, output.get(), rows, n);
    }

    nb::capsule owner(output.get(), [](void *pointer) noexcept {
        delete[] static_cast<uint32_t *>(pointer);
    });
    uint32_t *raw = output.release();  // the capsule owns the words from here
    return Uint32Array(raw, ndim, output_shape.data(), owner);
}

}  // namespace

NB_MODULE(_native, module) {
    module.doc() = "gpumat native CPU kernels (nanobind, OpenMP).";

    module.def("pack_signs", &pack_signs, nb::arg("x").noconvert(),
               "Pack the signs of a C-contiguous float32 array of shape (..., n)\n"
               "into uint32 words of shape (..., ceil(n / 32)): bit j of word w\n"
               "is 1 iff x[..., 32 * w + j] >= 0 (NaN gives 0, -0.0 gives 1);\n"
               "padding bits are 0.");

    module.def("openmp_threads", &gpumat::openmp_max_threads,
               "The number of threads an OpenMP parallel region may use (1 without OpenMP).");

    module.def("has_openmp", &gpumat::openmp_enabled,
               "Whether this module was compiled with OpenMP.");
}
