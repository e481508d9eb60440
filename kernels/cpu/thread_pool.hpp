// A small persistent thread pool for every native kernel that splits its work (the direct
// convolutions of direct_conv.hpp, the XNOR kernels of xnor.hpp, and through parallel.hpp the
// one-pass kernels: activations, pooling, batch norm, im2col), built so that it cannot make a
// training step pathologically slow.
//
// Why not OpenMP (parallel.hpp): libgomp's workers spin after every parallel region, and so do
// OpenBLAS's after every GEMM (for about 0.1 s, unless OPENBLAS_THREAD_TIMEOUT says otherwise:
// gpumat/_openblas.py); on a 2-core machine the spinners took the core each other's work
// needed, and LeNet training got 5x slower.  So here:
//   * workers sleep on a condition variable (a futex) between jobs; after a job they watch for
//     the next one for at most GPUMAT_POOL_LINGER_US microseconds (default 500: a training
//     step's passes come that close, and a sleeping vCPU is slow to wake), yielding the core
//     all the while and giving up at once when anything else takes it;
//   * the caller works too, claiming chunks from an atomic counter like any worker, so a
//     worker that wakes late (busy machine, a descheduled vCPU) only takes less of the work;
//     one that never gets the CPU leaves all of it to the caller instead of stalling it;
//   * the caller waits only for chunks a worker has actually claimed: it spins for a few
//     microseconds (the chunk is running on the other core) and then sleeps too.
// A waking worker takes 25-45 us on a virtual machine (a halted vCPU), so a caller with some
// serial set-up to do first (packing weights) calls prepare() before it: the workers wake
// during the set-up and wait for the job spinning, for at most kPrepareSpin, then sleep again.
// Concurrent callers (Python threads with the GIL released) do not queue: whoever finds the
// pool busy runs its chunks alone.  After fork() the child gets a fresh pool (its parent's
// workers do not exist there).  The thread count is GPUMAT_NUM_THREADS, else OMP_NUM_THREADS,
// else the CPUs this process may run on; set_threads() changes it at run time.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#include <unistd.h>
#define GPUMAT_POOL_HAVE_PID 1
#elif defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define GPUMAT_POOL_HAVE_PID 1
#endif

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <immintrin.h>
#define GPUMAT_POOL_PAUSE() _mm_pause()
#else
#define GPUMAT_POOL_PAUSE() std::this_thread::yield()
#endif

namespace gpumat {

class ThreadPool {
  public:
    // The process's pool (a new one in a forked child).  Never destroyed: its workers sleep
    // until the process exits.
    static ThreadPool &instance() {
        static std::atomic<ThreadPool *> current{nullptr};
        static std::mutex creating;
        ThreadPool *pool = current.load(std::memory_order_acquire);
        if (pool != nullptr && pool->owner_ == process_id())
            return *pool;
        std::lock_guard<std::mutex> lock(creating);
        pool = current.load(std::memory_order_acquire);
        if (pool == nullptr || pool->owner_ != process_id()) {
            pool = new ThreadPool();          // a forked child leaks its parent's copy
            current.store(pool, std::memory_order_release);
        }
        return *pool;
    }

    // Threads a job may use, the caller included.
    int threads() const { return threads_.load(std::memory_order_relaxed); }

    void set_threads(int count) {
        threads_.store(std::max(1, std::min(count, kMaxThreads)), std::memory_order_relaxed);
    }

    // Wakes up to max_threads - 1 workers for a run() that follows within kPrepareSpin.
    void prepare(int max_threads) {
        const int helpers = std::min(max_threads, threads()) - 1;
        if (helpers <= 0)
            return;
        start_workers(helpers);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (job_.load(std::memory_order_relaxed) != nullptr)
                return;                          // busy with another caller's job
            ++generation_;
        }
        wake_.notify_all();
    }

    // Calls task(chunk) once for every chunk in [0, chunks), on the caller and on up to
    // max_threads - 1 workers, and returns when all have returned.  The first exception a
    // chunk throws is rethrown here (the remaining chunks still run).
    template <class Task>
    void run(int64_t chunks, int max_threads, Task &&task) {
        if (chunks <= 0)
            return;
        const int helpers = (int) std::min<int64_t>(
            {(int64_t) std::min(max_threads, threads()) - 1, chunks - 1});
        // a chunk that runs another job (a nested call) runs it alone, on its own thread: the
        // caller of the outer job holds running_, which it must not try to lock again
        std::unique_lock<std::mutex> exclusive;
        if (helpers > 0 && !inside_job())
            exclusive = std::unique_lock<std::mutex>(running_, std::try_to_lock);
        if (!exclusive.owns_lock()) {
            for (int64_t chunk = 0; chunk < chunks; ++chunk)
                task(chunk);
            return;
        }
        Job job;
        job.chunks = chunks;
        job.helpers = helpers;
        job.context = &task;
        job.call = [](void *context, int64_t chunk) {
            (*static_cast<std::remove_reference_t<Task> *>(context))(chunk);
        };
        start_workers(helpers);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            job_.store(&job, std::memory_order_release);
            ++generation_;
        }
        wake_.notify_all();
        work(job);
        {
            std::lock_guard<std::mutex> lock(mutex_);   // no worker joins from here on
            job_.store(nullptr, std::memory_order_relaxed);
        }
        wait_for_helpers(job);
        if (job.failure)
            std::rethrow_exception(job.failure);
    }

  private:
    static constexpr int kMaxThreads = 256;
    static constexpr auto kPrepareSpin = std::chrono::microseconds(200);
    static constexpr auto kPreempted = std::chrono::microseconds(50);

    struct Job {
        int64_t chunks = 0;
        int helpers = 0;
        void *context = nullptr;
        void (*call)(void *, int64_t) = nullptr;
        std::atomic<int64_t> next{0};
        std::atomic<int> active{0};     // workers inside work() now
        std::mutex failure_lock;
        std::exception_ptr failure;
    };

    ThreadPool() : owner_(process_id()) {
        threads_.store(default_threads());
        if (const char *text = std::getenv("GPUMAT_POOL_LINGER_US"))
            linger_ = std::chrono::microseconds(std::strtol(text, nullptr, 10));
    }

    static long process_id() {
#ifdef GPUMAT_POOL_HAVE_PID
        return (long) getpid();
#else
        return 0;
#endif
    }

    static int env_threads(const char *name) {
        const char *text = std::getenv(name);
        if (text == nullptr || *text == '\0')
            return 0;
        const long value = std::strtol(text, nullptr, 10);   // "4,2" (OpenMP nesting): 4
        return value > 0 ? (int) std::min<long>(value, kMaxThreads) : 0;
    }

    static int default_threads() {
        int count = env_threads("GPUMAT_NUM_THREADS");
        if (count == 0)
            count = env_threads("OMP_NUM_THREADS");
        if (count > 0)
            return count;
#if defined(__linux__)
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
            return std::min(CPU_COUNT(&set), kMaxThreads);
#endif
        return (int) std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(),
                                                     kMaxThreads));
    }

    // Whether this thread is running a job's chunk now.
    static bool &inside_job() {
        static thread_local bool inside = false;
        return inside;
    }

    static void work(Job &job) {
        struct Inside {                  // (restored however work() leaves)
            bool previous = inside_job();
            Inside() { inside_job() = true; }
            ~Inside() { inside_job() = previous; }
        } inside;
        for (;;) {
            const int64_t chunk = job.next.fetch_add(1, std::memory_order_relaxed);
            if (chunk >= job.chunks)
                return;
            try {
                job.call(job.context, chunk);
            } catch (...) {
                std::lock_guard<std::mutex> lock(job.failure_lock);
                if (!job.failure)
                    job.failure = std::current_exception();
            }
        }
    }

    void start_workers(int count) {
        std::lock_guard<std::mutex> lock(mutex_);
        while ((int) workers_.size() < count) {
            const int index = (int) workers_.size();
            std::thread thread([this, index] { worker_loop(index); });
            thread.detach();
            workers_.push_back(index);
        }
    }

    void worker_loop(int index) {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return generation_.load() != seen; });
            seen = generation_.load();
            Job *job = job_.load(std::memory_order_relaxed);
            if (job == nullptr) {
                // prepare(): the job is being set up; wait for it a little, spinning
                lock.unlock();
                const auto give_up = std::chrono::steady_clock::now() + kPrepareSpin;
                for (int spin = 0; job_.load(std::memory_order_acquire) == nullptr; ++spin) {
                    if ((spin & 63) == 63 && std::chrono::steady_clock::now() > give_up)
                        break;
                    GPUMAT_POOL_PAUSE();
                }
                lock.lock();
                job = job_.load(std::memory_order_relaxed);
                seen = generation_.load();
            }
            if (job == nullptr || index >= job->helpers)
                continue;
            job->active.fetch_add(1, std::memory_order_acq_rel);
            lock.unlock();
            work(*job);
            lock.lock();          // the caller may be asleep in wait_for_helpers
            if (job->active.fetch_sub(1, std::memory_order_acq_rel) == 1)
                done_.notify_all();
            linger(lock, seen);
        }
    }

    // After a job: watch for the next one for up to linger_ before sleeping.  A training
    // step's passes come a few hundred microseconds apart, and a sleeping worker's vCPU
    // halts: waking it costs 25-45 us and its caches (LeNet-5 on 2 cores: 3.6 ms a step
    // without this, 3.1 ms with 0.5 ms; with another process busy on one core 3.4 and
    // 3.75 ms, ResNet-20 96 and 111 ms).  The watch yields the core every few spins and
    // ends as soon as something else took the core in between (a gap in the clock).
    void linger(std::unique_lock<std::mutex> &lock, uint64_t seen) {
        if (linger_.count() <= 0)
            return;
        lock.unlock();
        auto last = std::chrono::steady_clock::now();
        const auto give_up = last + linger_;
        for (int spin = 0; generation_.load(std::memory_order_acquire) == seen; ++spin) {
            if ((spin & 15) == 15) {
                const auto now = std::chrono::steady_clock::now();
                if (now > give_up || now - last > kPreempted)
                    break;
                last = now;
                std::this_thread::yield();
            }
            GPUMAT_POOL_PAUSE();
        }
        lock.lock();
    }

    void wait_for_helpers(Job &job) {
        // a helper inside work() is running its last chunk on another core: spin briefly,
        // then sleep (it may have been descheduled, and spinning would keep it off the core)
        const auto give_up = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
        for (int spin = 0; job.active.load(std::memory_order_acquire) != 0; ++spin) {
            if ((spin & 63) == 63 && std::chrono::steady_clock::now() > give_up) {
                std::unique_lock<std::mutex> lock(mutex_);
                done_.wait(lock, [&] { return job.active.load() == 0; });
                return;
            }
            GPUMAT_POOL_PAUSE();
        }
        // the workers that touched `job` have left it; take the mutex once so that none is
        // still between its last access and unlocking (it holds the mutex there)
        std::lock_guard<std::mutex> lock(mutex_);
    }

    const long owner_;
    std::atomic<int> threads_{1};
    std::mutex running_;               // one job at a time
    std::mutex mutex_;                 // job_, generation_, workers_
    std::condition_variable wake_, done_;
    std::atomic<Job *> job_{nullptr};   // written under mutex_; read by spinning workers too
    std::atomic<uint64_t> generation_{0};   // written under mutex_
    std::chrono::microseconds linger_{500};
    std::vector<int> workers_;
};

}  // namespace gpumat
