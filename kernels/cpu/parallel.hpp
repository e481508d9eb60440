// The parallel loop of the native CPU kernels that are one pass over memory (activations,
// pooling, batch norm, im2col / col2im): contiguous chunks of independent units (elements,
// planes, channels, rows) run on ThreadPool's threads (thread_pool.hpp), the caller included.
// Each unit is computed the same way whichever chunk it falls in, so results never depend on
// the thread count.  Also whether the module was built with OpenMP (which now only vectorises
// the `#pragma omp simd` loops: no kernel opens an OpenMP parallel region).
//
// Why ThreadPool and not OpenMP: libgomp's workers spin after every parallel region, and so do
// OpenBLAS's after every GEMM; on a 2-core machine they took the core each other's work needed
// (LeNet training 5x slower with every kernel parallel), which is why these loops used to run
// on one thread below 4M elements -- that is, always, at the sizes of a CNN.  ThreadPool's
// workers sleep between jobs (after a short linger), and the caller claims chunks like any
// worker, so a worker that wakes late only takes less of the work.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "thread_pool.hpp"

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

// Work (elements touched: read plus written) below which a loop runs on the calling thread
// alone.  A memory-bound loop costs ~0.1-0.3 ns an element on one core; handing chunks to a
// lingering worker costs a few microseconds, to a sleeping one a futex wake (the caller does
// not wait for it: it runs the chunks itself until the worker arrives).  Measured on a 2-core
// VM, relu (bias_act) of 2**16 floats: 7.6 us on one thread and no gain on two; 2**17: 15.2 vs
// 10.2 us; 2**18: 38.7 vs 20.6 us.
constexpr int64_t kParallelThreshold = int64_t(1) << 16;

// Chunks per thread: a worker that wakes late, or shares its core, leaves its share to the
// others in pieces instead of all at once.
constexpr int64_t kChunksPerThread = 4;

// Calls body(begin, end) on disjoint chunks covering [0, count), on as many of ThreadPool's
// threads as `work` (elements touched in all) justifies, at most `max_threads` (the pool's own
// count when larger).  An exception thrown by a chunk is rethrown on the calling thread once
// every chunk has run.  Called from inside another ThreadPool job (the pool busy) it runs
// serially on the calling thread.
template <class Body>
void parallel_for_chunks(int64_t count, int64_t work, Body &&body,
                         int64_t threshold = kParallelThreshold) {
    if (count <= 0)
        return;
    ThreadPool &pool = ThreadPool::instance();
    const int64_t threads = std::min<int64_t>(
        {(int64_t) pool.threads(), count,
         std::max<int64_t>(work / std::max<int64_t>(threshold, 1), 1)});
    if (threads <= 1) {
        body((int64_t) 0, count);
        return;
    }
    const int64_t chunks = std::min<int64_t>(count, threads * kChunksPerThread);
    pool.run(chunks, (int) threads, [&](int64_t chunk) {
        const int64_t begin = count * chunk / chunks, end = count * (chunk + 1) / chunks;
        if (begin < end)
            body(begin, end);
    });
}

}  // namespace gpumat
