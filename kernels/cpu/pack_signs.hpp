// Sign-bit packing for binarised networks: one bit per float, set when x >= 0.
//
// The layout matches the OpenCL/CUDA kernels: a row of n floats becomes
// ceil(n / 32) uint32 words; bit j (LSB = bit 0) of word w stands for element
// 32 * w + j.  NaN compares false and packs to 0, -0.0 compares true and packs
// to 1; the padding bits of a row's last word are 0.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define GPUMAT_PACK_SIGNS_SSE2 1
#endif

#include "thread_pool.hpp"

namespace gpumat {

// Packs 32 consecutive floats into one word.
inline uint32_t pack_full_word(const float *x) {
#ifdef GPUMAT_PACK_SIGNS_SSE2
    // _mm_cmpge_ps is an ordered compare (false for NaN), and movemask takes
    // lane i's top bit to bit i, which is exactly the bit order wanted.
    const __m128 zero = _mm_setzero_ps();
    uint32_t word = 0;
    for (int group = 0; group < 8; ++group) {
        __m128 values = _mm_loadu_ps(x + 4 * group);
        uint32_t mask = (uint32_t) _mm_movemask_ps(_mm_cmpge_ps(values, zero));
        word |= mask << (4 * group);
    }
    return word;
#else
    uint32_t word = 0;
    for (int j = 0; j < 32; ++j)
        word |= (uint32_t) (x[j] >= 0.0f) << j;
    return word;
#endif
}

// Packs the last `count` (< 32) floats of a row; bits count..31 stay 0.
inline uint32_t pack_partial_word(const float *x, size_t count) {
    uint32_t word = 0;
    for (size_t j = 0; j < count; ++j)
        word |= (uint32_t) (x[j] >= 0.0f) << j;
    return word;
}

// Packs `rows` rows of `n` floats (row-major, contiguous) into `rows` rows of
// ceil(n / 32) words.  Below `parallel_threshold` words the work is too small
// to pay for waking the thread pool's workers.
inline void pack_signs_rows(const float *input, uint32_t *output, size_t rows,
                            size_t n, size_t parallel_threshold = 1 << 14) {
    const size_t words_per_row = (n + 31) / 32;
    const size_t full_words = n / 32;
    const size_t tail = n % 32;
    const size_t total_words = rows * words_per_row;
    if (total_words == 0)
        return;

    // One flat loop over every output word balances the work whatever the
    // shape: many short rows and a few long ones parallelise equally well.
    // The blocking pool rather than OpenMP: an OpenMP team spins after each
    // region and starves the caller's next kernel on small machines.
    constexpr size_t kChunkWords = 4096;
    const int64_t chunks = (int64_t) ((total_words + kChunkWords - 1) / kChunkWords);
    const int threads = total_words >= parallel_threshold ? ThreadPool::instance().threads() : 1;
    ThreadPool::instance().run(chunks, threads, [&](int64_t chunk) {
        const size_t first = (size_t) chunk * kChunkWords;
        const size_t last = std::min(total_words, first + kChunkWords);
        for (size_t index = first; index < last; ++index) {
            const size_t row = index / words_per_row;
            const size_t word = index % words_per_row;
            const float *source = input + row * n + word * 32;
            output[index] = word < full_words ? pack_full_word(source)
                                              : pack_partial_word(source, tail);
        }
    });
}

}  // namespace gpumat
