// Argument checks and result allocation shared by the bindings in native_module.cpp: every
// kernel validates dtype, layout and shape itself and raises a Python exception, so that a
// direct call with a bad argument never crashes the interpreter.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
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

// The buffers of the results below.  Large ones that NumPy frees come back here and serve
// later results of the same size: glibc hands large freed blocks back to the kernel (munmap,
// or a trimmed heap) once its adaptive thresholds allow, and then every page of the next
// allocation faults again -- measured 1500 faults and +50% time per LeNet-5 training step,
// whose layers allocate the same few sizes every step.  At most kMaxHeld bytes wait here
// (the oldest go first); clear() frees them, held() counts them.
class BufferCache {
  public:
    static constexpr size_t kHeader = 64;              // the size, and 64-byte alignment
    static constexpr size_t kMinCached = size_t(64) << 10;
    static constexpr size_t kMaxHeld = size_t(64) << 20;

    static BufferCache &instance() {
        static BufferCache *cache = new BufferCache();  // never destroyed: NumPy may free
        return *cache;                                 // results after static destructors
    }

    // A 64-byte-aligned buffer of at least `bytes`.
    void *take(size_t bytes) {
        const size_t size = rounded(bytes);
        if (size >= kMinCached) {
            std::lock_guard<std::mutex> lock(mutex_);
            for (size_t i = entries_.size(); i-- > 0;)
                if (entries_[i].first == size) {
                    char *base = entries_[i].second;
                    entries_.erase(entries_.begin() + (std::ptrdiff_t) i);
                    held_ -= size;
                    return base + kHeader;
                }
        }
        char *base = static_cast<char *>(std::malloc(size + 2 * kHeader));
        if (base == nullptr)
            throw std::bad_alloc();
        // align the user pointer to 64 bytes; the header just before it keeps what free()
        // and the cache need
        char *user = base + kHeader + (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
        Header *header = reinterpret_cast<Header *>(user - kHeader);
        header->size = size;
        header->base = base;
        return user;
    }

    // Takes back a buffer from take().
    void give(void *pointer) noexcept {
        if (pointer == nullptr)
            return;
        char *user = static_cast<char *>(pointer);
        const Header *header = reinterpret_cast<const Header *>(user - kHeader);
        const size_t size = header->size;
        if (size < kMinCached || size > kMaxHeld) {
            std::free(header->base);
            return;
        }
        std::vector<char *> spill;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            entries_.emplace_back(size, user - kHeader);
            held_ += size;
            while (held_ > kMaxHeld) {
                spill.push_back(entries_.front().second);
                held_ -= entries_.front().first;
                entries_.erase(entries_.begin());
            }
        }
        for (char *entry : spill)
            std::free(reinterpret_cast<Header *>(entry)->base);
    }

    size_t held() {
        std::lock_guard<std::mutex> lock(mutex_);
        return held_;
    }

    void clear() {
        std::vector<std::pair<size_t, char *>> entries;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            entries.swap(entries_);
            held_ = 0;
        }
        for (auto &entry : entries)
            std::free(reinterpret_cast<Header *>(entry.second)->base);
    }

  private:
    struct Header {
        size_t size;
        char *base;
    };

    // cached sizes in whole pages, so that near sizes share buffers
    static size_t rounded(size_t bytes) {
        return bytes < kMinCached ? bytes : (bytes + 4095) / 4096 * 4096;
    }

    std::mutex mutex_;
    std::vector<std::pair<size_t, char *>> entries_;   // (size, header), oldest first
    size_t held_ = 0;
};

// A buffer of `count` T (zero-filled when `zeroed`) that becomes a NumPy array.
template <class T>
class Result {
  public:
    Result(std::vector<size_t> shape, bool zeroed) : shape_(std::move(shape)) {
        size_t count = 1;
        for (size_t extent : shape_)
            count *= extent;
        const size_t allocated = count ? count : 1;   // an empty result still owns a pointer
        if (allocated > std::numeric_limits<size_t>::max() / (2 * sizeof(T)))
            throw std::bad_alloc();
        data_ = static_cast<T *>(BufferCache::instance().take(allocated * sizeof(T)));
        if (zeroed)
            std::memset(static_cast<void *>(data_), 0, allocated * sizeof(T));
    }
    Result(const Result &) = delete;
    Result &operator=(const Result &) = delete;
    ~Result() { BufferCache::instance().give(data_); }

    T *data() { return data_; }

    // The NumPy array owning the buffer (this Result no longer does).
    nb::object release() {
        nb::capsule owner(data_, [](void *pointer) noexcept {
            BufferCache::instance().give(pointer);
        });
        T *raw = data_;
        data_ = nullptr;
        return nb::cast(nb::ndarray<nb::numpy, T>(raw, shape_.size(), shape_.data(), owner));
    }

    // The same as a C-contiguous array of `shape` and another element type of the same
    // total size (a byte buffer handed out as float32, int64, bool, ...).
    nb::object release_as(const std::vector<size_t> &shape, nb::dlpack::dtype dtype) {
        nb::capsule owner(data_, [](void *pointer) noexcept {
            BufferCache::instance().give(pointer);
        });
        T *raw = data_;
        data_ = nullptr;
        return nb::cast(nb::ndarray<nb::numpy>(raw, shape.size(), shape.data(), owner, nullptr,
                                               dtype));
    }

  private:
    std::vector<size_t> shape_;
    T *data_ = nullptr;
};

}  // namespace gpumat
