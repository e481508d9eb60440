// Argument checks and result allocation shared by the bindings in native_module.cpp: every
// kernel validates dtype, layout and shape itself and raises a Python exception, so that a
// direct call with a bad argument never crashes the interpreter.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace gpumat {

namespace nb = nanobind;

using AnyCpuArray = nb::ndarray<nb::ro, nb::device::cpu>;
using Pair = std::pair<int64_t, int64_t>;

inline std::string dtype_name(nb::dlpack::dtype dtype) {
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

inline bool is_c_contiguous(const AnyCpuArray &array) {
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

inline std::string shape_text(const AnyCpuArray &array) {
    std::string text = "(";
    for (size_t i = 0; i < array.ndim(); ++i)
        text += (i ? ", " : "") + std::to_string(array.shape(i));
    return text + (array.ndim() == 1 ? ",)" : ")");
}

[[noreturn]] inline void fail_value(const std::string &what, const std::string &message) {
    throw nb::value_error((what + ": " + message).c_str());
}

[[noreturn]] inline void fail_type(const std::string &what, const std::string &message) {
    throw nb::type_error((what + ": " + message).c_str());
}

// Checks `array` is C-contiguous with `ndim` dimensions (any ndim when -1).
inline void require_layout(const AnyCpuArray &array, const char *what, const char *name,
                           int ndim) {
    if (ndim >= 0 && array.ndim() != (size_t) ndim)
        fail_value(what, std::string(name) + " must be " + std::to_string(ndim) +
                             "-dimensional, got shape " + shape_text(array));
    if (!is_c_contiguous(array))
        fail_value(what, std::string(name) + " must be C-contiguous "
                                             "(numpy.ascontiguousarray makes it so)");
}

// Whether `array` holds float64 (else float32); a TypeError for any other dtype.
inline bool require_float(const AnyCpuArray &array, const char *what, const char *name) {
    if (array.dtype() == nb::dtype<float>())
        return false;
    if (array.dtype() == nb::dtype<double>())
        return true;
    fail_type(what, std::string(name) + " must be float32 or float64, got dtype " +
                        dtype_name(array.dtype()));
}

inline void require_same_dtype(const AnyCpuArray &a, const AnyCpuArray &b, const char *what,
                               const char *name_a, const char *name_b) {
    if (a.dtype() != b.dtype())
        fail_type(what, std::string(name_a) + " is " + dtype_name(a.dtype()) + " but " +
                            name_b + " is " + dtype_name(b.dtype()) + "; they must match");
}

inline void require_at_least(const Pair &pair, int64_t minimum, const char *what,
                             const char *name) {
    if (pair.first < minimum || pair.second < minimum)
        fail_value(what, std::string(name) + " must be at least " + std::to_string(minimum) +
                             ", got (" + std::to_string(pair.first) + ", " +
                             std::to_string(pair.second) + ")");
}

inline int64_t extent(const AnyCpuArray &array, size_t axis) {
    return (int64_t) array.shape(axis);
}

// A malloc'ed (calloc'ed when `zeroed`) buffer of `count` T that becomes a NumPy array.
template <class T>
class Result {
  public:
    Result(std::vector<size_t> shape, bool zeroed) : shape_(std::move(shape)) {
        size_t count = 1;
        for (size_t extent : shape_)
            count *= extent;
        const size_t allocated = count ? count : 1;   // an empty result still owns a pointer
        data_ = static_cast<T *>(zeroed ? std::calloc(allocated, sizeof(T))
                                        : std::malloc(allocated * sizeof(T)));
        if (data_ == nullptr)
            throw std::bad_alloc();
    }
    Result(const Result &) = delete;
    Result &operator=(const Result &) = delete;
    ~Result() { std::free(data_); }

    T *data() { return data_; }

    // The NumPy array owning the buffer (this Result no longer does).
    nb::object release() {
        nb::capsule owner(data_, [](void *pointer) noexcept { std::free(pointer); });
        T *raw = data_;
        data_ = nullptr;
        return nb::cast(nb::ndarray<nb::numpy, T>(raw, shape_.size(), shape_.data(), owner));
    }

  private:
    std::vector<size_t> shape_;
    T *data_ = nullptr;
};

}  // namespace gpumat
