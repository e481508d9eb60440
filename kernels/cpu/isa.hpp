// Run-time choice among a kernel family's instruction-set copies (the direct convolutions of
// direct_conv.hpp, the XNOR kernels of xnor.hpp).
//
// GCC and Clang on x86-64 compile the extra copies through function attributes (no -m flags,
// so the module still loads on any x86-64) and pick one with __builtin_cpu_supports, which
// also checks that the OS saves the wider registers; elsewhere (or with
// GPUMAT_NO_ISA_DISPATCH) only each family's baseline copy exists.
//
// A family's copies form a ladder, rung 0 (baseline) upwards, each rung running wherever the
// one above it does.  The rung in use is the best one this CPU runs, or a lower one that
// GPUMAT_CPU_ISA (read once, at the first call) or select() asks for -- tests run every
// copy that way; "auto", or a name this CPU lacks, gives the best.
#pragma once

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "compiler.hpp"

#if GPUMAT_VECTOR_EXTENSIONS && (defined(__x86_64__) || defined(__i386__)) && \
    !defined(GPUMAT_NO_ISA_DISPATCH)
#define GPUMAT_ISA_DISPATCH 1
#include <immintrin.h>
#else
#define GPUMAT_ISA_DISPATCH 0
#endif

namespace gpumat {
namespace isa {

// The instruction-set extensions the copies need, as this CPU and OS provide them.
struct Features {
    bool avx2 = false;              // AVX2 with FMA and POPCNT (as on every AVX2 CPU)
    bool avx512 = false;            // AVX-512 F, VL, BW and DQ (Skylake-SP onwards)
    bool avx512_popcount = false;   // AVX-512 VPOPCNTDQ and BITALG (Ice Lake onwards)
};

inline Features detect_features() {
    Features f;
#if GPUMAT_ISA_DISPATCH
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("popcnt");
    f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq");
    f.avx512_popcount = f.avx512 && __builtin_cpu_supports("avx512vpopcntdq") &&
                        __builtin_cpu_supports("avx512bitalg");
#endif
    return f;
}

inline const Features &features() {
    static const Features f = detect_features();
    return f;
}

// A family's ladder.  ``Rungs`` gives the enum ``Isa`` (values 0, 1, ...) and
//   static Isa detected()                                   the best rung this CPU runs
//   static bool parse(const std::string &, Isa best, Isa &) a GPUMAT_CPU_ISA name's rung
template <class Rungs>
struct Ladder {
    using Isa = typename Rungs::Isa;

    static std::atomic<int> &slot() {
        static std::atomic<int> selected{-1};
        return selected;
    }

    // Every rung this CPU runs, best last.
    static std::vector<Isa> supported() {
        std::vector<Isa> rungs;
        for (int i = 0; i <= (int) Rungs::detected(); ++i)
            rungs.push_back((Isa) i);
        return rungs;
    }

    static Isa current() {
        int value = slot().load(std::memory_order_relaxed);
        if (value < 0) {
            const Isa best = Rungs::detected();
            Isa isa = best;
            if (const char *env = std::getenv("GPUMAT_CPU_ISA")) {
                Isa wanted = best;
                if (Rungs::parse(env, best, wanted) && wanted < best)
                    isa = wanted;
            }
            value = (int) isa;
            slot().store(value, std::memory_order_relaxed);
        }
        return (Isa) value;
    }

    // Uses the rung ``name`` stands for ("auto": the best); false when this CPU or build
    // lacks it, or the name is unknown.
    static bool select(const std::string &name) {
        const Isa best = Rungs::detected();
        Isa isa = best;
        if (name != "auto" && (!Rungs::parse(name, best, isa) || isa > best))
            return false;
        slot().store((int) isa);
        return true;
    }
};

// The names every family accepts for its rung 0.
inline bool is_baseline_name(const std::string &name) {
    return name == "baseline" || name == "default" || name == "portable";
}

}  // namespace isa
}  // namespace gpumat
