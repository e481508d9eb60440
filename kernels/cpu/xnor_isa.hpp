// The inner loops of the XNOR-popcount kernels (xnor.hpp), written once and compiled once per
// instruction set: xnor.hpp includes this file several times (no include guard), each time with
//   GPUMAT_XNOR_ISA      the namespace of this copy
//   GPUMAT_XNOR_TARGET   the function attribute that compiles it for that instruction set
//                        (empty for the baseline copy, which uses the compiler's own flags)
//   GPUMAT_XNOR_KIND     0: baseline (SWAR popcount on 4 lanes), 1: AVX2 (nibble table,
//                        8 lanes), 2: AVX-512BW (nibble table, 16 lanes), 3: AVX-512
//                        VPOPCNTDQ (16 lanes) with BITALG (32 lanes of 16 bits for <= 16
//                        channels)
// Every function here carries GPUMAT_XNOR_TARGET, templates included, so nothing compiled from
// this file runs instructions its copy's CPU check did not allow.  (No lambdas: they would not
// inherit the attribute.)

namespace gpumat {
namespace xnor {
namespace GPUMAT_XNOR_ISA {

#define GPUMAT_XNOR_INLINE GPUMAT_XNOR_TARGET GPUMAT_FORCE_INLINE

// ---- the popcount engines ---------------------------------------------------------------------
// Each engine has a vector V of L uint32 lanes and
//   count(c, x, w)   c + popcount(x XOR w): per lane where !kBytes, else per byte (each byte of
//                    c grows by at most 8 a step, so kChunk = 31 steps fit before flush)
//   flush(acc, c)    acc + the per-lane sums of c's bytes (or acc + c)
//   finish(...)      out[l] = base[l] - 2 acc[l] for the first `count` lanes, int32 or float
//                    (Output: kInt, kFloat converting the int, kFloatFma where every value is
//                    exact in float: base - 2 float(acc) by one FMA, from a float base table)

#if GPUMAT_XNOR_KIND == 3 || GPUMAT_XNOR_KIND == 2

struct Engine {
    using V = __m512i;
    using Word = uint32_t;
    static constexpr bool kWide = true;
    static constexpr int L = 16;
    static constexpr int F = 4;
#if GPUMAT_XNOR_KIND == 3
    static constexpr int NV = 4;
    static constexpr bool kBytes = false;
#else
    static constexpr int NV = 2;
    static constexpr bool kBytes = true;
#endif
    static constexpr int64_t kChunk = 31;

    static GPUMAT_XNOR_INLINE V zero() { return _mm512_setzero_si512(); }
    static GPUMAT_XNOR_INLINE V load(const uint32_t *p) { return _mm512_loadu_si512(p); }
    static GPUMAT_XNOR_INLINE V broadcast(uint32_t w) { return _mm512_set1_epi32((int) w); }
    static GPUMAT_XNOR_INLINE void store(int32_t *p, V v) { _mm512_storeu_si512(p, v); }
    static GPUMAT_XNOR_INLINE int64_t sum(V v) { return _mm512_reduce_add_epi32(v); }

#if GPUMAT_XNOR_KIND == 3
    static GPUMAT_XNOR_INLINE V count(V c, V x, V w) {
        return _mm512_add_epi32(c, _mm512_popcnt_epi32(_mm512_xor_si512(x, w)));
    }
    static GPUMAT_XNOR_INLINE V flush(V acc, V c) { return _mm512_add_epi32(acc, c); }
#else
    static GPUMAT_XNOR_INLINE V count(V c, V x, V w) {
        const V table = _mm512_broadcast_i32x4(
            _mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
        const V low = _mm512_set1_epi8(0x0f);
        const V t = _mm512_xor_si512(x, w);
        const V lo = _mm512_and_si512(t, low);
        const V hi = _mm512_and_si512(_mm512_srli_epi16(t, 4), low);
        return _mm512_add_epi8(c, _mm512_add_epi8(_mm512_shuffle_epi8(table, lo),
                                                  _mm512_shuffle_epi8(table, hi)));
    }
    static GPUMAT_XNOR_INLINE V flush(V acc, V c) {
        const V pairs = _mm512_maddubs_epi16(c, _mm512_set1_epi8(1));
        return _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
    }
#endif

    // the fused epilogue (Scale): separate multiplies and add, the product hidden from the
    // compiler before the add (GCC's intrinsics are plain vector operators that its default
    // -ffp-contract=fast would fuse into an FMA)
    template <bool Scaled>
    static GPUMAT_XNOR_INLINE __m512 scale(__m512 r, const Scale &s, __mmask16 mask) {
        if (Scaled) {
            if (s.pixel != nullptr)
                r = _mm512_mul_ps(r, _mm512_maskz_loadu_ps(mask, s.pixel));
            if (s.has_filter)
                r = _mm512_mul_ps(r, _mm512_set1_ps(s.filter));
            if (s.has_bias) {
                __asm__("" : "+v"(r));
                r = _mm512_add_ps(r, _mm512_set1_ps(s.bias));
            }
            if (s.residual != nullptr) {
                __asm__("" : "+v"(r));
                r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask, s.residual));
            }
        }
        return r;
    }

    template <int Out, bool Table, bool Scaled>
    static GPUMAT_XNOR_INLINE void finish(V acc, const void *base, int32_t base_constant,
                                          void *out, int count, const Scale &s) {
        const __mmask16 mask = (__mmask16) ((1u << count) - 1u);
        if (Out == kFloatFma) {
            // base - 2 acc in one rounding of exact operands: exact
            const __m512 b = Table ? _mm512_maskz_loadu_ps(mask, base)
                                   : _mm512_set1_ps((float) base_constant);
            const __m512 r = scale<Scaled>(
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(-2.0f), b), s, mask);
            if (count == L)
                _mm512_storeu_ps(out, r);
            else
                _mm512_mask_storeu_ps(out, mask, r);
            return;
        }
        const V b = Table ? _mm512_maskz_loadu_epi32(mask, base) : _mm512_set1_epi32(base_constant);
        const V r = _mm512_sub_epi32(b, _mm512_slli_epi32(acc, 1));
        if (Out == kFloat) {
            const __m512 f = scale<Scaled>(_mm512_cvtepi32_ps(r), s, mask);
            if (count == L)
                _mm512_storeu_ps(out, f);
            else
                _mm512_mask_storeu_ps(out, mask, f);
        } else if (count == L) {
            _mm512_storeu_si512(out, r);
        } else {
            _mm512_mask_storeu_epi32(out, mask, r);
        }
    }
};

#if GPUMAT_XNOR_KIND == 3
// 16-bit lanes (BITALG's VPOPCNTW) for convolutions of at most 16 channels: 32 pixels of one
// tap per vector, every bit in use.  The counts stay in 16 bits (at most 16 a step, so up to
// 4095 steps) and are widened to 32 for the results.
struct Engine16 {
    using V = __m512i;
    using Word = uint16_t;
    static constexpr bool kWide = false;
    static constexpr int L = 32;
    static constexpr int F = 4;
    static constexpr int NV = 4;
    static constexpr bool kBytes = false;
    static constexpr int64_t kChunk = 31;

    static GPUMAT_XNOR_INLINE V zero() { return _mm512_setzero_si512(); }
    static GPUMAT_XNOR_INLINE V load(const uint16_t *p) { return _mm512_loadu_si512(p); }
    static GPUMAT_XNOR_INLINE V broadcast(uint32_t w) { return _mm512_set1_epi16((short) w); }
    static GPUMAT_XNOR_INLINE V count(V c, V x, V w) {
        return _mm512_add_epi16(c, _mm512_popcnt_epi16(_mm512_xor_si512(x, w)));
    }
    static GPUMAT_XNOR_INLINE V flush(V acc, V c) { return _mm512_add_epi16(acc, c); }

    template <int Out, bool Table, bool Scaled>
    static GPUMAT_XNOR_INLINE void finish(V acc, const void *base, int32_t base_constant,
                                          void *out, int count, const Scale &s) {
        const V low = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(acc));
        Engine::finish<Out, Table, Scaled>(low, base, base_constant, out, std::min(count, 16),
                                           s);
        if (count > 16) {
            const V high = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(acc, 1));
            Scale upper = s;
            if (Scaled && upper.pixel != nullptr)
                upper.pixel += 16;
            if (Scaled && upper.residual != nullptr)
                upper.residual += 16;
            Engine::finish<Out, Table, Scaled>(high, Table ? static_cast<const char *>(base) + 64
                                                           : nullptr,
                                               base_constant, static_cast<char *>(out) + 64,
                                               count - 16, upper);
        }
    }
};
#endif

#elif GPUMAT_XNOR_KIND == 1

struct Engine {
    using V = __m256i;
    using Word = uint32_t;
    static constexpr bool kWide = true;
    static constexpr int L = 8;
    static constexpr int F = 2;
    static constexpr int NV = 3;
    static constexpr bool kBytes = true;
    static constexpr int64_t kChunk = 31;

    static GPUMAT_XNOR_INLINE V zero() { return _mm256_setzero_si256(); }
    static GPUMAT_XNOR_INLINE V load(const uint32_t *p) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
    }
    static GPUMAT_XNOR_INLINE V broadcast(uint32_t w) { return _mm256_set1_epi32((int) w); }
    static GPUMAT_XNOR_INLINE void store(int32_t *p, V v) {
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(p), v);
    }
    static GPUMAT_XNOR_INLINE int64_t sum(V v) {
        const __m128i half = _mm_add_epi32(_mm256_castsi256_si128(v),
                                           _mm256_extracti128_si256(v, 1));
        const __m128i quarter = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0x4e));
        return _mm_cvtsi128_si32(_mm_add_epi32(quarter, _mm_shuffle_epi32(quarter, 0xb1)));
    }
    static GPUMAT_XNOR_INLINE V count(V c, V x, V w) {
        const V table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
        const V low = _mm256_set1_epi8(0x0f);
        const V t = _mm256_xor_si256(x, w);
        const V lo = _mm256_and_si256(t, low);
        const V hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), low);
        return _mm256_add_epi8(c, _mm256_add_epi8(_mm256_shuffle_epi8(table, lo),
                                                  _mm256_shuffle_epi8(table, hi)));
    }
    static GPUMAT_XNOR_INLINE V flush(V acc, V c) {
        const V pairs = _mm256_maddubs_epi16(c, _mm256_set1_epi8(1));
        return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }
    // the fused epilogue (Scale), as the AVX-512 copy's
    template <bool Scaled>
    static GPUMAT_XNOR_INLINE __m256 scale(__m256 r, const Scale &s, V mask, int count) {
        if (Scaled) {
            if (s.pixel != nullptr)
                r = _mm256_mul_ps(r, count == L ? _mm256_loadu_ps(s.pixel)
                                                : _mm256_maskload_ps(s.pixel, mask));
            if (s.has_filter)
                r = _mm256_mul_ps(r, _mm256_set1_ps(s.filter));
            if (s.has_bias) {
                __asm__("" : "+x"(r));
                r = _mm256_add_ps(r, _mm256_set1_ps(s.bias));
            }
            if (s.residual != nullptr) {
                __asm__("" : "+x"(r));
                r = _mm256_add_ps(r, count == L ? _mm256_loadu_ps(s.residual)
                                                : _mm256_maskload_ps(s.residual, mask));
            }
        }
        return r;
    }

    template <int Out, bool Table, bool Scaled>
    static GPUMAT_XNOR_INLINE void finish(V acc, const void *base, int32_t base_constant,
                                          void *out, int count, const Scale &s) {
        const V mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(count),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        if (Out == kFloatFma) {
            __m256 b;
            if (!Table)
                b = _mm256_set1_ps((float) base_constant);
            else if (count == L)
                b = _mm256_loadu_ps(static_cast<const float *>(base));
            else
                b = _mm256_maskload_ps(static_cast<const float *>(base), mask);
            const __m256 r = scale<Scaled>(
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(-2.0f), b), s, mask,
                count);
            if (count == L)
                _mm256_storeu_ps(static_cast<float *>(out), r);
            else
                _mm256_maskstore_ps(static_cast<float *>(out), mask, r);
            return;
        }
        V b;
        if (!Table)
            b = _mm256_set1_epi32(base_constant);
        else if (count == L)
            b = load(static_cast<const uint32_t *>(base));
        else
            b = _mm256_maskload_epi32(static_cast<const int *>(base), mask);
        const V r = _mm256_sub_epi32(b, _mm256_slli_epi32(acc, 1));
        if (Out == kFloat) {
            const __m256 f = scale<Scaled>(_mm256_cvtepi32_ps(r), s, mask, count);
            if (count == L)
                _mm256_storeu_ps(static_cast<float *>(out), f);
            else
                _mm256_maskstore_ps(static_cast<float *>(out), mask, f);
        } else if (count == L) {
            store(static_cast<int32_t *>(out), r);
        } else {
            _mm256_maskstore_epi32(static_cast<int *>(out), mask, r);
        }
    }
};

#else  // GPUMAT_XNOR_KIND == 0

#if GPUMAT_VECTOR_EXTENSIONS
typedef uint32_t Lanes4 __attribute__((vector_size(16)));
#else
// plain arrays where the compiler has no vector types
struct Lanes4 {
    uint32_t v[4];
    uint32_t operator[](int i) const { return v[i]; }
};
#define GPUMAT_XNOR_LANEWISE(op)                                                   \
    inline Lanes4 operator op(const Lanes4 &a, const Lanes4 &b) {                  \
        Lanes4 r;                                                                  \
        for (int i = 0; i < 4; ++i)                                                \
            r.v[i] = a.v[i] op b.v[i];                                             \
        return r;                                                                  \
    }                                                                              \
    inline Lanes4 operator op(const Lanes4 &a, uint32_t s) {                       \
        Lanes4 r;                                                                  \
        for (int i = 0; i < 4; ++i)                                                \
            r.v[i] = a.v[i] op s;                                                  \
        return r;                                                                  \
    }
GPUMAT_XNOR_LANEWISE(^)
GPUMAT_XNOR_LANEWISE(&)
GPUMAT_XNOR_LANEWISE(+)
GPUMAT_XNOR_LANEWISE(-)
GPUMAT_XNOR_LANEWISE(>>)
#undef GPUMAT_XNOR_LANEWISE
#endif

struct Engine {
    using V = Lanes4;
    using Word = uint32_t;
    static constexpr bool kWide = true;
    static constexpr int L = 4;
    static constexpr int F = 2;
    static constexpr int NV = 2;
    static constexpr bool kBytes = true;
    static constexpr int64_t kChunk = 31;

    static GPUMAT_XNOR_INLINE V zero() {
        V v;
        std::memset(&v, 0, sizeof v);
        return v;
    }
    static GPUMAT_XNOR_INLINE V load(const uint32_t *p) {
        V v;
        std::memcpy(&v, p, sizeof v);
        return v;
    }
    static GPUMAT_XNOR_INLINE V broadcast(uint32_t w) {
        V v;
        for (int i = 0; i < L; ++i)
            std::memcpy(reinterpret_cast<char *>(&v) + i * sizeof(uint32_t), &w, sizeof w);
        return v;
    }
    static GPUMAT_XNOR_INLINE void store(int32_t *p, V v) { std::memcpy(p, &v, sizeof v); }
    static GPUMAT_XNOR_INLINE int64_t sum(V v) {
        return (int64_t) v[0] + (int64_t) v[1] + (int64_t) v[2] + (int64_t) v[3];
    }
    // per byte: the classic SWAR steps stop at byte sums (at most 8), which add up in the
    // bytes of c without carrying into their neighbours for 31 steps
    static GPUMAT_XNOR_INLINE V count(V c, V x, V w) {
        V t = x ^ w;
        t = t - ((t >> 1) & 0x55555555u);
        t = (t & 0x33333333u) + ((t >> 2) & 0x33333333u);
        t = (t + (t >> 4)) & 0x0f0f0f0fu;
        return c + t;
    }
    static GPUMAT_XNOR_INLINE V flush(V acc, V c) {
        V s = (c & 0x00ff00ffu) + ((c >> 8) & 0x00ff00ffu);
        s = (s & 0x0000ffffu) + (s >> 16);
        return acc + s;
    }
    template <int Out, bool Table, bool Scaled>
    static GPUMAT_XNOR_INLINE void finish(V acc, const void *base, int32_t base_constant,
                                          void *out, int count, const Scale &s) {
        float values[L];
        for (int l = 0; l < count; ++l) {
            const int32_t twice = 2 * (int32_t) acc[l];
            if (Out == kFloatFma) {
                // exact operands, an exact result
                const float b = Table ? static_cast<const float *>(base)[l] : (float) base_constant;
                values[l] = b - (float) twice;
                continue;
            }
            const int32_t r = (Table ? static_cast<const int32_t *>(base)[l] : base_constant) -
                              twice;
            if (Out == kFloat)
                values[l] = (float) r;
            else
                static_cast<int32_t *>(out)[l] = r;
        }
        if (Out == kInt)
            return;
        if (Scaled)
            scale_values(values, count, s);       // out of line, never contracted
        std::memcpy(out, values, sizeof(float) * (size_t) count);
    }
};

#endif

// one word's set bits: the POPCNT instruction where this copy may use it
GPUMAT_XNOR_INLINE int popcount(uint32_t v) {
#if GPUMAT_XNOR_KIND >= 1
    return __builtin_popcount(v);
#else
    return popcount32(v);
#endif
}

// ---- the micro-kernel -------------------------------------------------------------------------

// Filters [f0, f0 + filters) (filters <= F; the block's others are computed and dropped) at
// lanes [lane, lane + count) (count <= NV * L; the vectors past `count` read planes' slack).
template <class E, int NV, int Out, bool Table, bool Scaled>
GPUMAT_XNOR_INLINE void tile(const BlockJob &job, const uint32_t *GPUMAT_RESTRICT weights,
                             int64_t f0, int filters, int64_t lane, int count) {
    using V = typename E::V;
    using Word = typename E::Word;
    constexpr int F = E::F, L = E::L;
    const Word *GPUMAT_RESTRICT x = static_cast<const Word *>(job.planes) + lane;
    const int64_t *GPUMAT_RESTRICT offsets = job.offsets;
    const int64_t steps = job.steps;
    V acc[F][NV];
    GPUMAT_UNROLL
    for (int f = 0; f < F; ++f)
        GPUMAT_UNROLL
        for (int v = 0; v < NV; ++v)
            acc[f][v] = E::zero();
    if constexpr (E::kBytes) {
        for (int64_t k0 = 0; k0 < steps; k0 += E::kChunk) {
            const int64_t k1 = std::min(steps, k0 + E::kChunk);
            V c[F][NV];
            GPUMAT_UNROLL
            for (int f = 0; f < F; ++f)
                GPUMAT_UNROLL
                for (int v = 0; v < NV; ++v)
                    c[f][v] = E::zero();
            for (int64_t k = k0; k < k1; ++k) {
                const Word *row = x + offsets[k];
                V xv[NV];
                GPUMAT_UNROLL
                for (int v = 0; v < NV; ++v)
                    xv[v] = E::load(row + v * L);
                const uint32_t *w = weights + k * F;
                GPUMAT_UNROLL
                for (int f = 0; f < F; ++f) {
                    const V wf = E::broadcast(w[f]);
                    GPUMAT_UNROLL
                    for (int v = 0; v < NV; ++v)
                        c[f][v] = E::count(c[f][v], xv[v], wf);
                }
            }
            GPUMAT_UNROLL
            for (int f = 0; f < F; ++f)
                GPUMAT_UNROLL
                for (int v = 0; v < NV; ++v)
                    acc[f][v] = E::flush(acc[f][v], c[f][v]);
        }
    } else {
        for (int64_t k = 0; k < steps; ++k) {
            const Word *row = x + offsets[k];
            V xv[NV];
            GPUMAT_UNROLL
            for (int v = 0; v < NV; ++v)
                xv[v] = E::load(row + v * L);
            const uint32_t *w = weights + k * F;
            GPUMAT_UNROLL
            for (int f = 0; f < F; ++f) {
                const V wf = E::broadcast(w[f]);
                GPUMAT_UNROLL
                for (int v = 0; v < NV; ++v)
                    acc[f][v] = E::count(acc[f][v], xv[v], wf);
            }
        }
    }

    const int64_t first = lane + job.lane_shift;
    if (!E::kWide || job.out_lane_stride == 1) {
        constexpr size_t elem = Out == kInt ? sizeof(int32_t) : sizeof(float);
        GPUMAT_UNROLL
        for (int f = 0; f < F; ++f) {
            if (f >= filters)
                break;
            char *out = static_cast<char *>(job.out) +
                        (size_t) ((f0 + f) * job.out_filter_stride + first) * elem;
            const char *base = Table ? static_cast<const char *>(job.base_table) +
                                           (size_t) ((f0 + f) * job.base_filter_stride + first) * 4
                                     : nullptr;
            Scale scale{};
            if (Scaled) {
                scale.has_filter = job.filter_scale != nullptr;
                scale.filter = scale.has_filter ? job.filter_scale[f0 + f] : 1.0f;
                scale.has_bias = job.bias != nullptr;
                scale.bias = scale.has_bias ? job.bias[f0 + f] : 0.0f;
            }
            GPUMAT_UNROLL
            for (int v = 0; v < NV; ++v) {
                const int rest = count - v * L;
                if (rest <= 0)
                    break;
                if (Scaled) {
                    scale.pixel = job.pixel_scale == nullptr ? nullptr
                                                             : job.pixel_scale + first + v * L;
                    scale.residual = job.residual == nullptr
                                         ? nullptr
                                         : job.residual + (f0 + f) * job.out_filter_stride +
                                               first + v * L;
                }
                E::template finish<Out, Table, Scaled>(
                    acc[f][v], Table ? base + v * L * 4 : nullptr, job.base_constant,
                    out + (size_t) (v * L) * elem, std::min(rest, L), scale);
            }
        }
    } else if constexpr (E::kWide) {
        // strided lanes (a product whose lanes run down the output's columns): one by one
        // (xnor_gemm's, which has no epilogue: Scaled is never true here)
        alignas(64) int32_t sums[NV * L];
        GPUMAT_UNROLL
        for (int f = 0; f < F; ++f) {
            if (f >= filters)
                break;
            GPUMAT_UNROLL
            for (int v = 0; v < NV; ++v)
                E::store(sums + v * L, acc[f][v]);
            for (int l = 0; l < count; ++l) {
                const int64_t at = (f0 + f) * job.out_filter_stride +
                                   (first + l) * job.out_lane_stride;
                const int64_t b = (f0 + f) * job.base_filter_stride + first + l;
                if (Out == kFloatFma) {
                    const float base = Table ? static_cast<const float *>(job.base_table)[b]
                                             : (float) job.base_constant;
                    static_cast<float *>(job.out)[at] = base - (float) (2 * sums[l]);
                    continue;
                }
                const int32_t base = Table ? static_cast<const int32_t *>(job.base_table)[b]
                                           : job.base_constant;
                const int32_t r = base - 2 * sums[l];
                if (Out == kFloat)
                    static_cast<float *>(job.out)[at] = (float) r;
                else
                    static_cast<int32_t *>(job.out)[at] = r;
            }
        }
    }
}

// The partial tile at the end of a lane range: as many vectors as it needs.
template <class E, int NV, int Out, bool Table, bool Scaled>
GPUMAT_XNOR_INLINE void last_tile(const BlockJob &job, const uint32_t *weights, int64_t f0,
                                  int filters, int64_t lane, int count) {
    if constexpr (NV > 1) {
        if (count <= (NV - 1) * E::L) {
            last_tile<E, NV - 1, Out, Table, Scaled>(job, weights, f0, filters, lane, count);
            return;
        }
    }
    tile<E, NV, Out, Table, Scaled>(job, weights, f0, filters, lane, count);
}

template <class E, int Out, bool Table, bool Scaled>
GPUMAT_XNOR_TARGET void run_lanes(const BlockJob &job, int64_t block, int64_t lane_begin,
                                  int64_t lane_end) {
    constexpr int F = E::F, T = E::NV * E::L;
    const uint32_t *weights = job.weights + block * job.steps * F;
    const int64_t f0 = block * F;
    const int filters = (int) std::min<int64_t>(F, job.filters - f0);
    int64_t lane = lane_begin;
    for (; lane + T <= lane_end; lane += T)
        tile<E, E::NV, Out, Table, Scaled>(job, weights, f0, filters, lane, T);
    if (lane < lane_end)
        last_tile<E, E::NV, Out, Table, Scaled>(job, weights, f0, filters, lane,
                                                (int) (lane_end - lane));
}

template <class E>
GPUMAT_XNOR_TARGET void run_block(const BlockJob &job, int64_t block, int64_t lane_begin,
                                  int64_t lane_end) {
    const bool table = job.base_table != nullptr;
    // the epilogue only with float output and lanes contiguous in the output (xnor_conv2d)
    const bool scaled = job.scaled() && job.out_lane_stride == 1;
    switch (job.output) {
        case kFloatFma:
            if (table)
                scaled ? run_lanes<E, kFloatFma, true, true>(job, block, lane_begin, lane_end)
                       : run_lanes<E, kFloatFma, true, false>(job, block, lane_begin, lane_end);
            else
                scaled ? run_lanes<E, kFloatFma, false, true>(job, block, lane_begin, lane_end)
                       : run_lanes<E, kFloatFma, false, false>(job, block, lane_begin, lane_end);
            break;
        case kFloat:
            if (table)
                scaled ? run_lanes<E, kFloat, true, true>(job, block, lane_begin, lane_end)
                       : run_lanes<E, kFloat, true, false>(job, block, lane_begin, lane_end);
            else
                scaled ? run_lanes<E, kFloat, false, true>(job, block, lane_begin, lane_end)
                       : run_lanes<E, kFloat, false, false>(job, block, lane_begin, lane_end);
            break;
        default:
            if (table)
                run_lanes<E, kInt, true, false>(job, block, lane_begin, lane_end);
            else
                run_lanes<E, kInt, false, false>(job, block, lane_begin, lane_end);
            break;
    }
}

// ---- pack_conv_input ----------------------------------------------------------------------------

// acc[p] |= (bit t set where from[t][p] >= 0) for the `count` channels t of one word, at pixels
// [0, pixels): the channels' planes stream through in order, a few at a time (16 planes at once
// would share one L1 set where a plane is 4 KiB, and thrash it).  Mean: also sums[p] +=
// |from[t][p]| for t = 0, 1, ... in order, in float32 (sums[p] starting from 0 where
// `fresh_sums`), from the same loads.
// Affine: each channel t's values are first transformed by (v - am[t]) * as[t] + at[t]
// (ChannelAffine: rounded after each operation; the lanes past `pixels` get garbage, never
// stored).
template <bool Mean, bool Affine>
GPUMAT_XNOR_INLINE void pack_channels(const float *const *from, int count, int first_bit,
                                      int64_t pixels, bool fresh, uint32_t *acc, float *sums,
                                      bool fresh_sums, const float *am, const float *as,
                                      const float *at) {
#if GPUMAT_XNOR_KIND >= 2
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t p = 0; p < pixels; p += 16) {
        const int lanes = (int) std::min<int64_t>(16, pixels - p);
        const __mmask16 mask = (__mmask16) ((1u << lanes) - 1u);
        __m512i a = fresh ? _mm512_setzero_si512() : _mm512_maskz_loadu_epi32(mask, acc + p);
        __m512 sum = zero;
        if (Mean && !fresh_sums)
            sum = _mm512_maskz_loadu_ps(mask, sums + p);
        for (int t = 0; t < count; ++t) {
            __m512 v = _mm512_maskz_loadu_ps(mask, from[t] + p);
            if (Affine) {
                v = _mm512_mul_ps(_mm512_sub_ps(v, _mm512_set1_ps(am[t])), _mm512_set1_ps(as[t]));
                __asm__("" : "+v"(v));
                v = _mm512_add_ps(v, _mm512_set1_ps(at[t]));
            }
            const __mmask16 ge = _mm512_cmp_ps_mask(v, zero, _CMP_GE_OQ);
            a = _mm512_mask_or_epi32(a, ge, a, _mm512_set1_epi32((int) (1u << (first_bit + t))));
            if (Mean)
                sum = _mm512_add_ps(sum, _mm512_abs_ps(v));
        }
        _mm512_mask_storeu_epi32(acc + p, mask, a);
        if (Mean)
            _mm512_mask_storeu_ps(sums + p, mask, sum);
    }
#elif GPUMAT_XNOR_KIND == 1
    const __m256 zero = _mm256_setzero_ps();
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    int64_t p = 0;
    for (; p + 8 <= pixels; p += 8) {
        __m256i a = fresh ? _mm256_setzero_si256()
                          : _mm256_loadu_si256(reinterpret_cast<const __m256i *>(acc + p));
        __m256 sum = zero;
        if (Mean && !fresh_sums)
            sum = _mm256_loadu_ps(sums + p);
        for (int t = 0; t < count; ++t) {
            __m256 v = _mm256_loadu_ps(from[t] + p);
            if (Affine) {
                v = _mm256_mul_ps(_mm256_sub_ps(v, _mm256_set1_ps(am[t])), _mm256_set1_ps(as[t]));
                __asm__("" : "+x"(v));
                v = _mm256_add_ps(v, _mm256_set1_ps(at[t]));
            }
            const __m256i ge = _mm256_castps_si256(_mm256_cmp_ps(v, zero, _CMP_GE_OQ));
            a = _mm256_or_si256(a, _mm256_and_si256(
                                       ge, _mm256_set1_epi32((int) (1u << (first_bit + t)))));
            if (Mean)
                sum = _mm256_add_ps(sum, _mm256_and_ps(v, magnitude));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(acc + p), a);
        if (Mean)
            _mm256_storeu_ps(sums + p, sum);
    }
    for (; p < pixels; ++p) {
        uint32_t a = fresh ? 0u : acc[p];
        float sum = Mean && !fresh_sums ? sums[p] : 0.0f;
        for (int t = 0; t < count; ++t) {
            const float v = Affine ? affine_value(from[t][p], am[t], as[t], at[t]) : from[t][p];
            a |= (uint32_t) (v >= 0.0f) << (first_bit + t);
            if (Mean)
                sum += std::fabs(v);
        }
        acc[p] = a;
        if (Mean)
            sums[p] = sum;
    }
#else
    int64_t p = 0;
#if GPUMAT_VECTOR_EXTENSIONS
    typedef float Floats4 __attribute__((vector_size(16)));
    typedef int32_t Ints4 __attribute__((vector_size(16)));
    const Floats4 zero = {0.0f, 0.0f, 0.0f, 0.0f};
    for (; p + 4 <= pixels; p += 4) {
        Ints4 a = {0, 0, 0, 0};
        if (!fresh)
            std::memcpy(&a, acc + p, sizeof a);
        Floats4 sum = zero;
        if (Mean && !fresh_sums)
            std::memcpy(&sum, sums + p, sizeof sum);
        for (int t = 0; t < count; ++t) {
            Floats4 v;
            std::memcpy(&v, from[t] + p, sizeof v);
            if (Affine) {
                v = (v - am[t]) * as[t];
                GPUMAT_NO_CONTRACT(v);
                v = v + at[t];
            }
            // an ordered compare: false for NaN, true for -0.0
            a |= (v >= zero) & (int32_t) (1u << (first_bit + t));
            if (Mean) {
                Ints4 bits;
                std::memcpy(&bits, &v, sizeof bits);
                bits &= 0x7fffffff;
                Floats4 magnitude;
                std::memcpy(&magnitude, &bits, sizeof magnitude);
                sum += magnitude;
            }
        }
        std::memcpy(acc + p, &a, sizeof a);
        if (Mean)
            std::memcpy(sums + p, &sum, sizeof sum);
    }
#endif
    for (; p < pixels; ++p) {
        uint32_t a = fresh ? 0u : acc[p];
        float sum = Mean && !fresh_sums ? sums[p] : 0.0f;
        for (int t = 0; t < count; ++t) {
            const float v = Affine ? affine_value(from[t][p], am[t], as[t], at[t]) : from[t][p];
            a |= (uint32_t) (v >= 0.0f) << (first_bit + t);
            if (Mean)
                sum += std::fabs(v);
        }
        acc[p] = a;
        if (Mean)
            sums[p] = sum;
    }
#endif
}

// Pixels [p0, p1) of one image x (C x HW floats) packed into out (HW x Wc words): word-planar
// into `scratch` (Wc x (p1 - p0) words; straight into out when Wc is 1), then interleaved.
// Where mean is not null (the image's HW floats), mean[p] = the sum of |x| over the channels
// (in channel order, float32) divided by C, from the same loads.
template <bool Mean, bool Affine>
GPUMAT_XNOR_INLINE void pack_pixels_with(const float *x, uint32_t *out, int64_t channels,
                                         int64_t pixels, int64_t p0, int64_t p1,
                                         uint32_t *scratch, float *mean,
                                         const ChannelAffine *affine) {
    constexpr int kAtOnce = 8;
    const int64_t words = blocks_of(channels, 32), count = p1 - p0;
    const float *from[kAtOnce];
    for (int64_t word = 0; word < words; ++word) {
        uint32_t *acc = words == 1 ? out + p0 : scratch + word * count;
        const int bits = (int) std::min<int64_t>(32, channels - word * 32);
        for (int c0 = 0; c0 < bits; c0 += kAtOnce) {
            const int group = std::min(kAtOnce, bits - c0);
            for (int t = 0; t < group; ++t)
                from[t] = x + (word * 32 + c0 + t) * pixels + p0;
            const int64_t channel = word * 32 + c0;
            pack_channels<Mean, Affine>(from, group, c0, count, c0 == 0, acc,
                                        Mean ? mean + p0 : nullptr, word == 0 && c0 == 0,
                                        Affine ? affine->mean + channel : nullptr,
                                        Affine ? affine->scale + channel : nullptr,
                                        Affine ? affine->shift + channel : nullptr);
        }
    }
    if (words > 1)
        for (int64_t p = 0; p < count; ++p)
            for (int64_t word = 0; word < words; ++word)
                out[(p0 + p) * words + word] = scratch[word * count + p];
    if (Mean) {
        const float divisor = (float) channels;
        float *GPUMAT_RESTRICT sums = mean + p0;
        for (int64_t p = 0; p < count; ++p)
            sums[p] = sums[p] / divisor;
    }
}

inline GPUMAT_XNOR_TARGET void pack_pixels(const float *x, uint32_t *out, int64_t channels,
                                           int64_t pixels, int64_t p0, int64_t p1,
                                           uint32_t *scratch, float *mean,
                                           const ChannelAffine *affine) {
    if (affine != nullptr) {
        if (mean != nullptr)
            pack_pixels_with<true, true>(x, out, channels, pixels, p0, p1, scratch, mean, affine);
        else
            pack_pixels_with<false, true>(x, out, channels, pixels, p0, p1, scratch, nullptr,
                                          affine);
    } else if (mean != nullptr) {
        pack_pixels_with<true, false>(x, out, channels, pixels, p0, p1, scratch, mean, nullptr);
    } else {
        pack_pixels_with<false, false>(x, out, channels, pixels, p0, p1, scratch, nullptr,
                                       nullptr);
    }
}

// ---- the column planes of xnor_conv2d -----------------------------------------------------------

// Planes for output rows [oh0, oh0 + rows) of one image (see xnor.hpp): plane (c, a, jg) row
// u, column ow holds the channel word c of input pixel ((oh0 + u) sh + a - ph, ow sw + j - pw)
// for the g kernel columns j of group jg (bit offset (j - jg g) C each), the tail masked, 0
// outside the image; the words after the last row up to the next plane are 0.

// row[ow] = the OR of padded[ow S + j0 + t] << (t C) over the group's G kernel columns t:
// G and the stride S are template arguments where they are 1 or 2 (0: given at run time), so
// that the compiler vectorises the common cases.
template <int G, int S, class Word>
GPUMAT_XNOR_INLINE void group_row(Word *GPUMAT_RESTRICT row,
                                  const uint32_t *GPUMAT_RESTRICT padded, int64_t out_w,
                                  int64_t group, int64_t stride, int channels) {
    const int64_t step = S ? S : stride;
    if (G == 1) {
        for (int64_t ow = 0; ow < out_w; ++ow)
            row[ow] = (Word) padded[ow * step];
    } else if (G == 2) {
        for (int64_t ow = 0; ow < out_w; ++ow)
            row[ow] = (Word) (padded[ow * step] | (padded[ow * step + 1] << channels));
    } else {
        // one pass across the row per kernel column of the group (a uniform shift: the
        // passes vectorise, where a loop over the group inside each word did not -- LeNet's
        // 5 x 5 layer of 6 channels spent longer on its planes than on its products)
        for (int64_t ow = 0; ow < out_w; ++ow)
            row[ow] = (Word) padded[ow * step];
        for (int64_t t = 1; t < group; ++t) {
            const uint32_t *GPUMAT_RESTRICT column = padded + t;
            const int shift = (int) (t * channels);
            for (int64_t ow = 0; ow < out_w; ++ow)
                row[ow] = (Word) (row[ow] | (column[ow * step] << shift));
        }
    }
}

template <int G, class Word>
GPUMAT_XNOR_INLINE void group_row_by_stride(Word *row, const uint32_t *padded,
                                            int64_t out_w, int64_t group, int64_t stride,
                                            int channels) {
    if (stride == 1)
        group_row<G, 1>(row, padded, out_w, group, stride, channels);
    else if (stride == 2)
        group_row<G, 2>(row, padded, out_w, group, stride, channels);
    else
        group_row<G, 0>(row, padded, out_w, group, stride, channels);
}

// One input row's channel word, masked, with its zero padding: padded[x] = the word of input
// column x - pw (0 outside the image), for x in [0, span).
GPUMAT_XNOR_INLINE void padded_row(uint32_t *GPUMAT_RESTRICT padded,
                                   const uint32_t *GPUMAT_RESTRICT source, int64_t span,
                                   int64_t pad, int64_t width, int64_t words, uint32_t mask) {
    const int64_t begin = std::min(pad, span), end = std::min(span, pad + width);
    for (int64_t x = 0; x < begin; ++x)
        padded[x] = 0;
    if (words == 1) {
        for (int64_t x = begin; x < end; ++x)
            padded[x] = source[x - pad] & mask;
    } else {
        for (int64_t x = begin; x < end; ++x)
            padded[x] = source[(x - pad) * words] & mask;
    }
    for (int64_t x = std::max(begin, end); x < span; ++x)
        padded[x] = 0;
}

// A plane row of every column group straight from the input row `source` (its channel word
// c, masked), each kernel column's pixel read where it lies inside the image: group_row's
// values without the padded copy, for plans whose rows are mostly padding (ConvPlan::clipped).
template <class Word>
GPUMAT_XNOR_INLINE void clipped_rows(Word *row, const ConvPlan &p, const uint32_t *source,
                                     uint32_t mask) {
    const int channels = (int) p.channels;
    for (int64_t jg = 0; jg < p.column_groups; ++jg, row += p.plane_stride) {
        const int64_t j0 = jg * p.group, group = std::min(p.group, p.kernel_w - j0);
        for (int64_t ow = 0; ow < p.out_w; ++ow) {
            uint32_t word = 0;
            for (int64_t t = 0; t < group; ++t) {
                const int64_t column = ow * p.stride_w + j0 + t - p.pad_w;
                if (column >= 0 && column < p.width)
                    word |= (source[column * p.words] & mask) << (t * channels);
            }
            row[ow] = (Word) word;
        }
    }
}

// Planes for output rows [oh0, oh0 + rows) of one image (see xnor.hpp): plane (c, a, jg) row
// u, column ow holds the channel word c of input pixel ((oh0 + u) sh + a - ph, ow sw + j - pw)
// for the g kernel columns j of group jg (bit offset (j - jg g) C each), the tail masked, 0
// outside the image; the words after the last row up to the next plane are 0.  Each input
// row is padded once (into the scratch after the planes) and every column group's row cut
// from it.  Word: uint32_t, or uint16_t for the 16-bit lanes (at most 16 channels, g = 1).
template <class Word>
GPUMAT_XNOR_TARGET void build_planes(const ConvPlan &p, const uint32_t *image, int64_t oh0,
                                     int64_t rows, void *scratch) {
    const int64_t out_w = p.out_w, words = p.words, sw = p.stride_w;
    const int64_t plane_rows = p.plane_rows(rows), used = plane_rows * out_w;
    const int64_t span = p.padded_span;
    const int channels = (int) p.channels;
    Word *planes = static_cast<Word *>(scratch);
    uint32_t *padded = reinterpret_cast<uint32_t *>(static_cast<char *>(scratch) +
                                                    p.padded_offset());
    for (int64_t c = 0; c < words; ++c) {
        const uint32_t mask = c == words - 1 ? p.last_mask : ~0u;
        for (int64_t a = 0; a < p.phases; ++a) {
            Word *first_plane = planes + (c * p.phases + a) * p.column_groups * p.plane_stride;
            for (int64_t u = 0; u < plane_rows; ++u) {
                const int64_t h = (oh0 + u) * p.stride_h + a - p.pad_h;
                Word *row = first_plane + u * out_w;
                if (h < 0 || h >= p.height) {
                    for (int64_t jg = 0; jg < p.column_groups; ++jg)
                        std::memset(row + jg * p.plane_stride, 0, sizeof(Word) * (size_t) out_w);
                    continue;
                }
                if (p.clipped) {
                    clipped_rows(row, p, image + h * p.width * words + c, mask);
                    continue;
                }
                padded_row(padded, image + h * p.width * words + c, span, p.pad_w, p.width,
                           words, mask);
                for (int64_t jg = 0; jg < p.column_groups; ++jg, row += p.plane_stride) {
                    const int64_t j0 = jg * p.group, group = std::min(p.group, p.kernel_w - j0);
                    if (group == 1)
                        group_row_by_stride<1>(row, padded + j0, out_w, group, sw, channels);
                    else if (group == 2)
                        group_row_by_stride<2>(row, padded + j0, out_w, group, sw, channels);
                    else
                        group_row_by_stride<0>(row, padded + j0, out_w, group, sw, channels);
                }
            }
            for (int64_t jg = 0; jg < p.column_groups; ++jg)
                std::memset(first_plane + jg * p.plane_stride + used, 0,
                            sizeof(Word) * (size_t) (p.plane_stride - used));
        }
    }
}

// ---- XNOR-Net's K (xnor_conv2d's window_mean) ---------------------------------------------------

#if GPUMAT_XNOR_KIND >= 2
// R output rows of K (row r at out + r * out_w, its window's top input row top + r * sh, all
// with kernel rows [i_first, i_last) inside the image): each 16-column vector's taps in tap
// order, one register per row.
template <int R>
GPUMAT_XNOR_TARGET void window_sum_rows(const ConvPlan &p, const float *padded, int64_t span,
                                        float *out, int64_t top, int64_t i_first,
                                        int64_t i_last, float divisor) {
    const int64_t out_w = p.out_w, sh = p.stride_h, sw = p.stride_w;
    const __m512 scale = _mm512_set1_ps(divisor);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i even = _mm512_slli_epi32(lane, 1);
    const __m512i strided = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int) sw));
    for (int64_t c0 = 0; c0 < out_w; c0 += 16) {
        const int lanes = (int) std::min<int64_t>(16, out_w - c0);
        const __mmask16 used = (__mmask16) ((1u << lanes) - 1u);
        // stride 2: lane l reads float 2 l, so 2 lanes - 1 floats over two vectors
        const int pair = 2 * lanes - 1;
        const __mmask16 low = (__mmask16) (pair >= 16 ? 0xffffu : (1u << pair) - 1u);
        const __mmask16 high = (__mmask16) (pair > 16 ? (1u << (pair - 16)) - 1u : 0u);
        __m512 acc[R];
        GPUMAT_UNROLL
        for (int r = 0; r < R; ++r)
            acc[r] = _mm512_setzero_ps();
        for (int64_t i = i_first; i < i_last; ++i) {
            for (int64_t j = 0; j < p.kernel_w; ++j) {
                GPUMAT_UNROLL
                for (int r = 0; r < R; ++r) {
                    const float *a = padded + (top + r * sh + i) * span + c0 * sw + j;
                    __m512 v;
                    if (sw == 1)
                        v = _mm512_maskz_loadu_ps(used, a);
                    else if (sw == 2)
                        v = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(low, a), even,
                                                   _mm512_maskz_loadu_ps(high, a + 16));
                    else
                        v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), used, strided, a, 4);
                    acc[r] = _mm512_add_ps(acc[r], v);
                }
            }
        }
        GPUMAT_UNROLL
        for (int r = 0; r < R; ++r)
            _mm512_mask_storeu_ps(out + r * out_w + c0, used, _mm512_div_ps(acc[r], scale));
    }
}
#endif

// k[oh][ow] for output rows [oh0, oh0 + rows) = the sum of mean[ih][iw] (the channel mean of
// |x|) over the kernel taps inside the image, in tap order (kernel row by kernel row), float32
// from 0, divided by kh kw: the average over the whole window with the padding's zeros
// counted, as a box filter's.  The rows read are first copied between pw zeros on either
// side (into `padded`, H x (W + 2 pw) floats), so that every tap of a kernel row is one
// vectorised pass over the whole output row with no clipping: adding such a zero changes
// nothing, as each sum is never -0.0 (it starts at +0.0 and adds means, >= 0 or NaN), so the
// result is the skipping sum's exactly (native.window_mean_numpy skips them).  Where those
// rows would be mostly padding (padded null: xnor.hpp's mostly_padding) the taps are read in
// place with bounds checks instead.
inline GPUMAT_XNOR_TARGET void window_mean_rows(const ConvPlan &p, const float *mean,
                                                int64_t oh0, int64_t rows, float *k,
                                                float *padded) {
    const float divisor = (float) (p.kernel_h * p.kernel_w);
    const int64_t out_w = p.out_w, sh = p.stride_h, sw = p.stride_w, width = p.width;
    const int64_t pw = p.pad_w, span = width + 2 * pw;
    if (padded == nullptr) {
        // rows that would be mostly padding (xnor.hpp: mostly_padding): the taps inside the
        // image in the same order, with bounds checks; skipping a padding zero changes no sum
        for (int64_t oh = oh0; oh < oh0 + rows; ++oh) {
            const int64_t top = oh * sh - p.pad_h;
            int64_t i_first, i_last;
            valid_taps(oh, sh, p.pad_h, p.kernel_h, p.height, i_first, i_last);
            for (int64_t ow = 0; ow < out_w; ++ow) {
                float sum = 0.0f;
                for (int64_t i = i_first; i < i_last; ++i)
                    for (int64_t j = 0; j < p.kernel_w; ++j) {
                        const int64_t column = ow * sw + j - pw;
                        if (column >= 0 && column < width)
                            sum += mean[(top + i) * width + column];
                    }
                k[oh * out_w + ow] = sum / divisor;
            }
        }
        return;
    }
    const int64_t first = std::max<int64_t>(0, oh0 * sh - p.pad_h);
    const int64_t last = std::min<int64_t>(p.height, (oh0 + rows - 1) * sh - p.pad_h + p.kernel_h);
    for (int64_t r = first; r < last; ++r) {
        float *GPUMAT_RESTRICT to = padded + r * span;
        std::fill(to, to + pw, 0.0f);
        std::copy(mean + r * width, mean + (r + 1) * width, to + pw);
        std::fill(to + pw + width, to + span, 0.0f);
    }
#if GPUMAT_XNOR_KIND >= 2
    // AVX-512: 16 output columns a vector, its sums kept in a register through all the taps
    // in the same order (the same bits) rather than added into the row tap by tap (a load
    // and a store of the row per tap: about half the time on ResNet-20's layers); stride 2
    // takes the even lanes of two loads, larger strides gather.  Loads are masked to the
    // lanes in use, so nothing past the padded rows is read.  Each sum is one chain of
    // dependent additions (kh kw of them, 4 cycles each), so output rows whose windows cover
    // the same kernel rows go up to eight at a time, their chains side by side.
    int64_t oh = oh0;
    while (oh < oh0 + rows) {
        const int64_t top = oh * sh - p.pad_h;
        int64_t i_first, i_last, next_first, next_last;
        valid_taps(oh, sh, p.pad_h, p.kernel_h, p.height, i_first, i_last);
        int64_t together = 1;
        for (; together < 8 && oh + together < oh0 + rows; ++together) {
            valid_taps(oh + together, sh, p.pad_h, p.kernel_h, p.height, next_first, next_last);
            if (next_first != i_first || next_last != i_last)
                break;
        }
        for (int64_t r = 0; r < together;) {
            float *out = k + (oh + r) * out_w;
            const int64_t at = top + r * sh;
            if (together - r >= 8) {
                window_sum_rows<8>(p, padded, span, out, at, i_first, i_last, divisor);
                r += 8;
            } else if (together - r >= 4) {
                window_sum_rows<4>(p, padded, span, out, at, i_first, i_last, divisor);
                r += 4;
            } else if (together - r >= 2) {
                window_sum_rows<2>(p, padded, span, out, at, i_first, i_last, divisor);
                r += 2;
            } else {
                window_sum_rows<1>(p, padded, span, out, at, i_first, i_last, divisor);
                r += 1;
            }
        }
        oh += together;
    }
    return;
#endif
    for (int64_t oh = oh0; oh < oh0 + rows; ++oh) {
        float *GPUMAT_RESTRICT row = k + oh * out_w;
        for (int64_t ow = 0; ow < out_w; ++ow)
            row[ow] = 0.0f;
        const int64_t top = oh * sh - p.pad_h;
        int64_t i_first, i_last;
        valid_taps(oh, sh, p.pad_h, p.kernel_h, p.height, i_first, i_last);
        for (int64_t i = i_first; i < i_last; ++i) {
            const float *GPUMAT_RESTRICT a = padded + (top + i) * span;
            for (int64_t j = 0; j < p.kernel_w; ++j) {
                if (sw == 1)
                    for (int64_t ow = 0; ow < out_w; ++ow)
                        row[ow] += a[ow + j];
                else
                    for (int64_t ow = 0; ow < out_w; ++ow)
                        row[ow] += a[ow * sw + j];
            }
        }
        for (int64_t ow = 0; ow < out_w; ++ow)
            row[ow] = row[ow] / divisor;
    }
}

// ---- xnor_gemm with few rows on one side: vectors along the words -----------------------------

// out[i][j] = k - 2 popcount(a[i] XOR b[j]) for the m rows of a and the rows j in
// [j_begin, j_end) of b (out is m x n, row-major): each pair a dot product along the words,
// b's rows streamed once past all of a's (few, and cached).  The last word is masked.
inline GPUMAT_XNOR_TARGET void dot_rows(const uint32_t *a, const uint32_t *b, int64_t m,
                                        int64_t n, int64_t j_begin, int64_t j_end,
                                        int64_t words, uint32_t last_mask, int64_t k,
                                        Output output, void *out) {
    using E = Engine;
    using V = E::V;
    constexpr int L = E::L;
    const int64_t vectors = (words - 1) / L;         // whole vectors before the last word
    for (int64_t j = j_begin; j < j_end; ++j) {
        const uint32_t *row_b = b + j * words;
        for (int64_t i = 0; i < m; ++i) {
            const uint32_t *row_a = a + i * words;
            V acc = E::zero();
            for (int64_t v0 = 0; v0 < vectors; v0 += E::kChunk) {
                const int64_t v1 = std::min(vectors, v0 + E::kChunk);
                if constexpr (E::kBytes) {
                    V c = E::zero();
                    for (int64_t v = v0; v < v1; ++v)
                        c = E::count(c, E::load(row_a + v * L), E::load(row_b + v * L));
                    acc = E::flush(acc, c);
                } else {
                    for (int64_t v = v0; v < v1; ++v)
                        acc = E::count(acc, E::load(row_a + v * L), E::load(row_b + v * L));
                }
            }
            int64_t differing = E::sum(acc);
            for (int64_t w = vectors * L; w + 1 < words; ++w)
                differing += popcount(row_a[w] ^ row_b[w]);
            differing += popcount((row_a[words - 1] ^ row_b[words - 1]) & last_mask);
            const int64_t value = k - 2 * differing;
            if (output == kInt)
                static_cast<int32_t *>(out)[i * n + j] = (int32_t) value;
            else
                static_cast<float *>(out)[i * n + j] = (float) (int32_t) value;
        }
    }
}

inline GPUMAT_XNOR_TARGET void row_popcounts(const uint32_t *rows, int64_t count, int64_t words,
                                             uint32_t last_mask, int64_t *counts) {
    for (int64_t r = 0; r < count; ++r, rows += words) {
        int64_t sum = 0;
        for (int64_t c = 0; c + 1 < words; ++c)
            sum += popcount(rows[c]);
        counts[r] = sum + popcount(rows[words - 1] & last_mask);
    }
}

inline Kernels kernels() {
    Kernels k;
#if GPUMAT_XNOR_KIND == 3
    k.name = "avx512vpopcntdq";
#elif GPUMAT_XNOR_KIND == 2
    k.name = "avx512bw";
#elif GPUMAT_XNOR_KIND == 1
    k.name = "avx2";
#else
    k.name = GPUMAT_VECTOR_EXTENSIONS ? "baseline" : "portable";
#endif
    k.lanes = Engine::L;
    k.filters = Engine::F;
    k.max_vectors = Engine::NV;
    k.run_block = &run_block<Engine>;
    k.pack_pixels = &pack_pixels;
    k.build_planes = &build_planes<uint32_t>;
#if GPUMAT_XNOR_KIND == 3
    k.lanes16 = Engine16::L;
    k.filters16 = Engine16::F;
    k.run_block16 = &run_block<Engine16>;
    k.build_planes16 = &build_planes<uint16_t>;
#else
    k.lanes16 = 0;
    k.filters16 = 0;
    k.run_block16 = nullptr;
    k.build_planes16 = nullptr;
#endif
    k.window_mean_rows = &window_mean_rows;
    k.row_popcounts = &row_popcounts;
    k.dot_rows = &dot_rows;
    return k;
}

#undef GPUMAT_XNOR_INLINE

}  // namespace GPUMAT_XNOR_ISA
}  // namespace xnor
}  // namespace gpumat
