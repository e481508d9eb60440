// OpenMP helpers shared by the native CPU kernels: whether the module was built with OpenMP,
// how many threads it may use, and a parallel loop over contiguous chunks that stays on one
// thread for work too small to pay for waking the team.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace gpumat {

inline int openmp_max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

inline bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

// Work (elements touched) below which a loop runs on the calling thread alone.  It is high
// because the threads are not free: NumPy's OpenBLAS keeps its worker threads spinning for a
// while after every GEMM, and libgomp's workers spin after every parallel region, so on a
// machine whose cores BLAS already uses a parallel region costs up to a scheduler time slice
// (measured on 2 cores: LeNet training 5x slower with every kernel parallel).  Only loops of
// several milliseconds pay for that.  The direct convolutions, whose work is worth two cores
// even at LeNet's sizes, use thread_pool.hpp instead: workers that sleep between calls.
constexpr int64_t kParallelThreshold = int64_t(1) << 22;

// Calls body(begin, end) on disjoint chunks covering [0, count), one chunk per thread, with
// as many threads as `work` (elements touched in all) justifies.  An exception thrown by
// a chunk is rethrown on the calling thread after the parallel region.
template <class Body>
void parallel_for_chunks(int64_t count, int64_t work, Body &&body,
                         int64_t threshold = kParallelThreshold) {
    if (count <= 0)
        return;
    int64_t threads = 1;
#ifdef _OPENMP
    threads = std::min<int64_t>({(int64_t) omp_get_max_threads(), count,
                                 std::max<int64_t>(work / std::max<int64_t>(threshold, 1), 1)});
#endif
    if (threads <= 1) {
        body((int64_t) 0, count);
        return;
    }
#ifdef _OPENMP
    std::exception_ptr failure;
#pragma omp parallel num_threads((int) threads)
    {
        const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
        const int64_t begin = count * me / team, end = count * (me + 1) / team;
        try {
            if (begin < end)
                body(begin, end);
        } catch (...) {
#pragma omp critical(gpumat_parallel_failure)
            if (!failure)
                failure = std::current_exception();
        }
    }
    if (failure)
        std::rethrow_exception(failure);
#endif
}

}  // namespace gpumat
