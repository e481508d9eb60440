// XNOR-popcount kernels for binarised networks: the packing of a convolution's input
// (pack_conv_input), the binary matrix product (xnor_gemm) and the binary convolution
// (xnor_conv2d), vectorised for the instruction set the CPU has (chosen at run time, as the
// direct convolutions choose theirs) and split over ThreadPool's threads.
//
// Bits (every backend's layout): a packed row of n signs is ceil(n / 32) uint32 words, bit j
// (LSB first) of word w is 1 iff x[32 w + j] >= 0 (NaN -> 0, -0.0 -> 1), and stands for +1; a
// bit 0 stands for -1.  The dot product of two such +-1 vectors of length k is
// k - 2 popcount(a XOR b): every differing bit is a -1 term, every equal one a +1 term.  The
// padding bits of a row's last word are masked off in every operand here, so whatever a caller
// left in them never counts.
//
// One micro-kernel does both products.  Its "lanes" are one operand laid out word-planar
// (lane l of step k at planes[offsets[k] + l], contiguous along l), its "filters" the other
// operand's words, broadcast: a tile of F filters x NV vectors of lanes accumulates
// popcount(lanes XOR filter) over the steps (AVX-512: XOR, VPOPCNTD, ADD per 16 x 32 binary
// multiply-adds, register-blocked 4 filters x 4 vectors), and its results go out as
// contiguous vectors.
//   xnor_gemm    lanes: the columns of b (or, for a b of few rows, the rows of a), one step
//                per word of k; filters: the other operand's rows.  Where one side has fewer
//                than kFewRows rows, dot products along the words instead (transposing the
//                other side would cost more than the products).
//   xnor_conv2d  lanes: the output pixels q = oh * OW + ow of one image, so that a tile's
//                results are contiguous in the NCHW output; filters: the output channels;
//                steps: the (kernel row i, kernel column group, channel word) triples.
// The convolution's lane operand is a set of "column planes" built per image (or per block
// of output rows): for each channel word c, input row phase a (i mod sh) and kernel column j,
// plane[u][ow] = x[(oh0 + u) sh + a - ph][ow sw + j - pw][c], a row of OW words per output row
// plus the (kh - 1) / sh rows below.  Tap (i, j) of output pixel q then reads
// plane(c, i mod sh, j)[q + (i / sh) OW]: one contiguous run for the whole block, no lanes
// wasted on padding columns, no bounds checks.  Where the channels fill at most half a word
// (C <= 16, one word), g = floor(32 / C) neighbouring kernel columns share one plane word at
// bit offsets 0, C, 2C, ... (the weights likewise), so a 3x3 layer of 10 channels takes 3
// steps instead of 9 -- or, with BITALG and where it wastes fewer bits (11 to 16 channels),
// the planes hold 16-bit words and the lanes are 16 bits wide (32 pixels a vector).
// Threads take chunks of (image, block of output rows), whole images when the batch gives
// enough of them; each chunk builds its own planes in a thread-local scratch (L1/L2-sized
// for the layers of a small CNN).
//
// Padding.  A plane holds the word 0 where the input pixel lies outside the image, so each
// out-of-image tap adds popcount(0 XOR w) = popcount(w) where it should add nothing.  Binary
// data has no zero: conv2d(b(x), b(w)) with zero padding simply omits those taps, so the exact
// result is the sum over the taps inside the image only,
//     out = sum_valid (C - 2 pc(x XOR w))
//         = kh kw C - 2 A - sum_outside (C - 2 pc(w)),     A = the kernel's full popcount sum,
// that is out = base[o][q] - 2 A with base[o][q] = 2 sum_all pc(w_oij) + sum_valid (C -
// 2 pc(w_oij)), which is kh kw C for every interior pixel.  A table of base values (one
// output image's size, built once per call from a row template per row pattern) carries this
// correction, so border pixels cost the interior's price; without padding there is no table.
//
// Instruction sets (isa.hpp: GPUMAT_CPU_ISA caps them, Dispatch::select() at run time):
//   avx512vpopcntdq  16 lanes per zmm, VPOPCNTD: xor, popcount, add per 16 x 32 bits; with
//                    BITALG (required too) 32 lanes of 16 bits (VPOPCNTW) where a convolution
//                    has at most 16 channels, so that no bit goes unused
//   avx512bw         16 lanes, popcount by a nibble table (VPSHUFB) in bytes, widened every
//                    31 steps (a byte then holds at most 31 * 8 = 248)
//   avx2             the same with 8 lanes per ymm (with FMA and POPCNT, as every AVX2 CPU)
//   baseline         4 lanes (SSE2 on x86-64) with a SWAR popcount; plain loops where the
//                    compiler has no vector types ("portable")
// Results are integers computed exactly, identical on every path; float32 output is the
// exact integer rounded once (exact below 2**24; below it one FMA makes base - 2 A from
// exact float operands, above it the int32 result is converted).
//
// Speed (a 2-core Xeon VM with AVX-512 VPOPCNTDQ, against the cpu backend's float direct
// convolution, batch 32, float input packed inside the call, bench/bench_binary.py): ResNet-20's
// 3x3 layers run 9-11x faster with 32 and 64 channels and 6-7x with 16, where memory bounds
// the layer (2 MiB of float input to read and 2 MiB of float output to write: a 2 MiB copy
// takes ~130 us on one core here, the whole layer ~85 us on two); a 256-channel 14x14 layer
// 15x.  The products take 2-2.4 core cycles per 16-lane step (XOR, VPOPCNTD, ADD: 1.5 on two
// vector ports); a call costs about 3 us beyond them (the plan, the result buffer, the
// arguments) once the weights' side is kept (PreparedCache), plus about 3 us of Python.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "compiler.hpp"
#include "isa.hpp"
#include "pack_signs.hpp"
#include "thread_pool.hpp"

namespace gpumat {
namespace xnor {

// The mask of a packed row's last word: its `bits mod 32` real bits (all 32 when whole).
inline uint32_t tail_mask(int64_t bits) {
    const int64_t rest = bits % 32;
    return rest == 0 ? ~uint32_t(0) : (uint32_t(1) << rest) - 1u;
}

// (the set-up's popcounts; baseline code, where __builtin_popcount would be a library call)
inline int popcount32(uint32_t v) {
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0f0f0f0fu;
    return (int) ((v * 0x01010101u) >> 24);
}

inline int64_t blocks_of(int64_t count, int64_t block) { return (count + block - 1) / block; }

// ---- what the micro-kernels work on -----------------------------------------------------------

// One pass of the micro-kernel: results out[f][l] = base[f][l] - 2 sum_k popcount(
// planes[offsets[k] + l] XOR weights[f][k]) for filters f and lanes l, written as
// out[(f * out_filter_stride + (l + lane_shift) * out_lane_stride)] (int32 or float32)
// with base[f][l] = base_table[f * base_filter_stride + l + lane_shift], or base_constant where
// there is no table.  Weights come packed per block of F filters: block b's are steps x F
// words, filter b F + f of step k at weights[(b * steps + k) * F + f] (zero past `filters`).
// How results are written: int32; float32 by converting the int32 result; float32 by one FMA
// (base - 2 float(acc)) where every operand and result is an integer below 2**24, so exact --
// one instruction fewer per vector, the same values.
enum Output : int { kInt = 0, kFloat = 1, kFloatFma = 2 };

// Whether float results of sums up to `largest` in magnitude can take the FMA path.
inline Output float_output(bool out_float, double largest) {
    return !out_float ? kInt : largest < double(1 << 24) ? kFloatFma : kFloat;
}

// The fused epilogue of one output vector (float32 results only): r = (((r * pixel[l]) *
// filter) + bias) + residual[l], each term left out where absent, in that order, rounded
// after every operation (never contracted into an FMA: the result is the NumPy expression's
// in float32).
struct Scale {
    const float *pixel;             // this vector's lanes' pixel scales, or null
    const float *residual;          // this vector's lanes' values to add last, or null
    float filter, bias;
    bool has_filter, has_bias;
};

// The baseline copy's epilogue, scalar: out of line, where the compiler may not contract (GCC
// contracts across statements under its default -ffp-contract=fast where the target has FMA).
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, optimize("fp-contract=off")))
#elif defined(__clang__)
__attribute__((noinline))
#endif
inline void scale_values(float *values, int count, const Scale &s) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    for (int l = 0; l < count; ++l) {
        float r = values[l];
        if (s.pixel != nullptr)
            r = r * s.pixel[l];
        if (s.has_filter)
            r = r * s.filter;
        if (s.has_bias)
            r = r + s.bias;
        if (s.residual != nullptr)
            r = r + s.residual[l];
        values[l] = r;
    }
}

// An input transform applied before binarizing (xnor_conv2d's batch_norm): channel c's values
// become (v - mean[c]) * scale[c] + shift[c], each operation rounded on its own, as the batch
// norm kernel computes its evaluation output (batchnorm.hpp, baseline instruction set: no
// FMA), so the signs and |values| are that output's exactly.
struct ChannelAffine {
    const float *mean, *scale, *shift;
};

// Keeps the compiler from fusing the product computed before it with a later add into an FMA
// (GCC contracts across statements under its default -ffp-contract=fast where the target has
// FMA): `v` (a float or a vector of them) is hidden from the optimiser in between.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define GPUMAT_NO_CONTRACT(v) __asm__("" : "+x"(v))
#elif defined(__GNUC__) && defined(__aarch64__)
#define GPUMAT_NO_CONTRACT(v) __asm__("" : "+w"(v))
#else
#define GPUMAT_NO_CONTRACT(v) ((void) 0)    // MSVC: no contraction under /fp:precise
#endif

// (v - mean) * scale + shift, rounded after each operation (see ChannelAffine)
inline float affine_value(float v, float mean, float scale, float shift) {
    float product = (v - mean) * scale;
    GPUMAT_NO_CONTRACT(product);
    return product + shift;
}

struct BlockJob {
    const void *planes;             // uint32 words, or uint16 for 16-bit lanes
    const int64_t *offsets;
    int64_t steps;
    const uint32_t *weights;
    int64_t filters;
    void *out;
    Output output;
    int64_t out_filter_stride, out_lane_stride, lane_shift;
    const void *base_table;         // int32, or float for kFloatFma
    int64_t base_filter_stride;
    int32_t base_constant;
    // the fused epilogue (float output, lanes contiguous in the output; see Scale), each null
    // where absent: pixel_scale indexed as the base table's lanes (lane + lane_shift),
    // filter_scale and bias by filter, residual as the output itself
    const float *pixel_scale = nullptr, *filter_scale = nullptr, *bias = nullptr;
    const float *residual = nullptr;
    bool scaled() const {
        return pixel_scale != nullptr || filter_scale != nullptr || bias != nullptr ||
               residual != nullptr;
    }
};

// Planes for a block of output rows hold this many words after their last row: a tile's last
// vector may read past the block (those lanes are dropped).
constexpr int64_t kPlaneSlack = 64;

// The geometry of one xnor_conv2d call and the layout of its column planes.
struct ConvPlan {
    int64_t batch, channels, height, width, out_channels;
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w;
    int64_t words;              // Wc = ceil(C / 32)
    uint32_t last_mask;         // of the last channel word
    int64_t group;              // kernel columns per plane word (g)
    int64_t column_groups;      // ceil(kw / g)
    int64_t phases;             // input row phases in use: min(sh, kh)
    int64_t steps;              // kh * column_groups * words
    int64_t chunk_rows;         // output rows per block (R)
    int64_t plane_stride;       // words from one plane to the next
    int64_t plane_count;        // words * phases * column_groups
    std::vector<int64_t> offsets;
    // per output column ow: the kernel columns [column_first_tap[ow], column_last_tap[ow])
    // whose input pixel ow * sw + j - pw lies inside the image
    std::vector<int64_t> column_first_tap, column_last_tap;

    int64_t padded_span;        // (OW - 1) sw + kw: the padded input columns a row reads
    // rows gathered with bounds checks rather than cut from a padded copy: where that copy
    // would be mostly padding (strides and paddings far larger than the image, whose scratch
    // grew with them -- 0.8 GB for a 4 x 4 image at stride and padding 10**8)
    bool clipped;
    bool narrow;                // 16-bit lanes (uint16 plane words, g = 1)

    int64_t plane_rows(int64_t rows) const { return rows + (kernel_h - 1) / stride_h; }
    int64_t plane_elements() const { return plane_count * plane_stride; }
    // bytes before the padded input row that follows the planes in the scratch
    int64_t padded_offset() const {
        return blocks_of(plane_elements() * (narrow ? 2 : 4), 64) * 64;
    }
    // uint32 words of scratch: the planes and one padded input row
    int64_t scratch_words() const {
        return padded_offset() / 4 + (clipped ? 0 : padded_span) + 16;
    }
};

// Whether a row buffer of `span` columns (the padded copy of an input row of `width` that
// output rows of `out_w` columns of `kernel_w` taps read) would be mostly padding: then the
// rows are read with bounds checks instead (the same values: the padding adds nothing).
inline bool mostly_padding(int64_t span, int64_t width, int64_t out_w, int64_t kernel_w) {
    return span > 4 * (width + out_w * kernel_w) + 4096;
}

// The kernel taps [first, last) of one axis inside the image for output position `pos`.
inline void valid_taps(int64_t pos, int64_t stride, int64_t pad, int64_t kernel, int64_t size,
                       int64_t &first, int64_t &last) {
    const int64_t start = pos * stride - pad;            // input position of tap 0
    first = std::min(kernel, std::max<int64_t>(0, -start));
    last = std::max(first, std::min(kernel, size - start));
}

// Function pointers of one instruction set's copy.
struct Kernels {
    const char *name;
    int lanes;                  // 32-bit lanes per vector
    int filters;                // F: filters per block
    int max_vectors;            // NV of the widest tile
    // lanes [lane_begin, lane_end) of filter block `block`
    void (*run_block)(const BlockJob &, int64_t block, int64_t lane_begin, int64_t lane_end);
    // pixels [p0, p1) of one image x (C x HW floats) packed into out (HW x Wc words), with
    // Wc x (p1 - p0) words of scratch; where mean is not null, also mean[p] = the mean of
    // |x| over the channels of each pixel p (mean: the image's HW floats); where affine is
    // not null, of the transformed values (ChannelAffine) instead of x's
    void (*pack_pixels)(const float *x, uint32_t *out, int64_t channels, int64_t pixels,
                        int64_t p0, int64_t p1, uint32_t *scratch, float *mean,
                        const ChannelAffine *affine);
    // the column planes of output rows [oh0, oh0 + rows) of one image (H x W x Wc words)
    void (*build_planes)(const ConvPlan &, const uint32_t *image, int64_t oh0, int64_t rows,
                         void *scratch);
    // the same with 16-bit lanes (null where this copy has none): convolutions of <= 16
    // channels
    int lanes16, filters16;
    void (*run_block16)(const BlockJob &, int64_t block, int64_t lane_begin, int64_t lane_end);
    void (*build_planes16)(const ConvPlan &, const uint32_t *image, int64_t oh0, int64_t rows,
                           void *scratch);
    // XNOR-Net's K of output rows [oh0, oh0 + rows) of one image from its channel means of
    // |x| (H x W floats; the rows those output rows read), into k (the image's OH x OW),
    // with H x (W + 2 pw) floats of scratch
    void (*window_mean_rows)(const ConvPlan &, const float *mean, int64_t oh0, int64_t rows,
                             float *k, float *padded);
    // counts[r] = the set bits of row r of `rows` rows of `words` words, the last word masked
    void (*row_popcounts)(const uint32_t *rows, int64_t count, int64_t words, uint32_t last_mask,
                          int64_t *counts);
    // xnor_gemm's rows [j_begin, j_end) of b against all m rows of a, vectors along the words
    void (*dot_rows)(const uint32_t *a, const uint32_t *b, int64_t m, int64_t n,
                     int64_t j_begin, int64_t j_end, int64_t words, uint32_t last_mask,
                     int64_t k, Output output, void *out);
};

}  // namespace xnor
}  // namespace gpumat

// ---- the copies, one per instruction set ------------------------------------------------------

#define GPUMAT_XNOR_ISA baseline
#define GPUMAT_XNOR_TARGET
#define GPUMAT_XNOR_KIND 0
#include "xnor_isa.hpp"
#undef GPUMAT_XNOR_ISA
#undef GPUMAT_XNOR_TARGET
#undef GPUMAT_XNOR_KIND

#if GPUMAT_ISA_DISPATCH
#define GPUMAT_XNOR_ISA avx2
#define GPUMAT_XNOR_TARGET __attribute__((target("avx2,fma,popcnt")))
#define GPUMAT_XNOR_KIND 1
#include "xnor_isa.hpp"
#undef GPUMAT_XNOR_ISA
#undef GPUMAT_XNOR_TARGET
#undef GPUMAT_XNOR_KIND

#define GPUMAT_XNOR_ISA avx512bw
#define GPUMAT_XNOR_TARGET \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,popcnt")))
#define GPUMAT_XNOR_KIND 2
#include "xnor_isa.hpp"
#undef GPUMAT_XNOR_ISA
#undef GPUMAT_XNOR_TARGET
#undef GPUMAT_XNOR_KIND

#define GPUMAT_XNOR_ISA avx512vpopcntdq
#define GPUMAT_XNOR_TARGET                                                                \
    __attribute__((target(                                                                \
        "avx512f,avx512vl,avx512bw,avx512dq,avx512vpopcntdq,avx512bitalg,avx2,fma,popcnt")))
#define GPUMAT_XNOR_KIND 3
#include "xnor_isa.hpp"
#undef GPUMAT_XNOR_ISA
#undef GPUMAT_XNOR_TARGET
#undef GPUMAT_XNOR_KIND
#endif

namespace gpumat {
namespace xnor {

// ---- instruction-set selection ----------------------------------------------------------------

enum class Isa { baseline = 0, avx2 = 1, avx512bw = 2, avx512vpopcntdq = 3 };

inline const char *isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512vpopcntdq: return "avx512vpopcntdq";
        case Isa::avx512bw: return "avx512bw";
        case Isa::avx2: return "avx2";
        default: return GPUMAT_VECTOR_EXTENSIONS ? "baseline" : "portable";
    }
}

// The copies as a ladder (isa.hpp): GPUMAT_CPU_ISA and Dispatch::select() take these names
// and the direct convolutions' (baseline, avx2, avx512: the best AVX-512 copy).
struct Rungs {
    using Isa = xnor::Isa;

    static Isa detected() {
        const isa::Features &f = isa::features();
        return f.avx512_popcount ? Isa::avx512vpopcntdq
               : f.avx512        ? Isa::avx512bw
               : f.avx2          ? Isa::avx2
                                 : Isa::baseline;
    }

    static bool parse(const std::string &name, Isa best, Isa &out) {
        if (isa::is_baseline_name(name))
            out = Isa::baseline;
        else if (name == "avx2")
            out = Isa::avx2;
        else if (name == "avx512bw")
            out = Isa::avx512bw;
        else if (name == "avx512")
            out = best >= Isa::avx512bw ? best : Isa::avx512vpopcntdq;
        else if (name == "avx512vpopcntdq")
            out = Isa::avx512vpopcntdq;
        else
            return false;
        return true;
    }
};

using Dispatch = isa::Ladder<Rungs>;

inline const Kernels &kernels_for(Isa isa) {
    static const Kernels base = baseline::kernels();
#if GPUMAT_ISA_DISPATCH
    static const Kernels medium = avx2::kernels();
    static const Kernels wide = avx512bw::kernels();
    static const Kernels widest = avx512vpopcntdq::kernels();
    switch (isa) {
        case Isa::avx512vpopcntdq: return widest;
        case Isa::avx512bw: return wide;
        case Isa::avx2: return medium;
        default: break;
    }
#else
    (void) isa;
#endif
    return base;
}

// ---- threads and scratch ----------------------------------------------------------------------

// Work (lane-words: 32 binary multiply-adds each) below which a call stays on the calling
// thread: the widest copy does about 10 a nanosecond per core, and waking a sleeping worker
// costs 25-45 us on a virtual machine.
constexpr double kSerialWork = double(1 << 20);

// Scratch buffers of the calling thread (the column planes), kept between calls; one that grew
// past kScratchKept bytes is freed after its call.
constexpr size_t kScratchKept = size_t(16) << 20;

struct Scratch {
    void *raw = nullptr;
    uint32_t *data = nullptr;
    size_t size = 0;
    ~Scratch() { std::free(raw); }

    uint32_t *get(size_t count) {
        if (size < count) {
            const size_t grown = std::max(count, size + size / 2);
            void *fresh = std::malloc(grown * sizeof(uint32_t) + 64);
            if (fresh == nullptr)
                throw std::bad_alloc();
            std::free(raw);
            raw = fresh;
            data = reinterpret_cast<uint32_t *>((reinterpret_cast<uintptr_t>(raw) + 63) / 64 * 64);
            size = grown;
        }
        return data;
    }

    void trim() {
        if (size * sizeof(uint32_t) > kScratchKept) {
            std::free(raw);
            raw = nullptr;
            data = nullptr;
            size = 0;
        }
    }
};

inline Scratch &thread_scratch() {
    thread_local Scratch scratch;
    return scratch;
}

inline int pool_threads(double work) {
    return work < kSerialWork ? 1 : std::numeric_limits<int>::max();
}

// ---- pack_conv_input ----------------------------------------------------------------------------

// One-pixel images (a binary linear layer's rows, N x C x 1 x 1): the packed words are
// pack_signs' rows, and each row's mean is its own sum in channel order; eight rows at a
// time, so that eight independent sums keep the adder busy where one sum's chain of
// dependent additions would leave it idle.
constexpr int64_t kMeanRows = 8;

// mean[r] for `count` (at most kMeanRows) consecutive rows starting at `row`.
inline void means_abs_block(const float *row, int64_t count, int64_t channels, float *mean) {
    float sums[kMeanRows] = {};
    if (count == kMeanRows) {
        for (int64_t c = 0; c < channels; ++c)
            for (int64_t r = 0; r < kMeanRows; ++r)
                sums[r] += std::fabs(row[r * channels + c]);
    } else {
        for (int64_t r = 0; r < count; ++r)
            for (int64_t c = 0; c < channels; ++c)
                sums[r] += std::fabs(row[r * channels + c]);
    }
    for (int64_t r = 0; r < count; ++r)
        mean[r] = sums[r] / (float) channels;
}

inline void row_means_abs(const float *x, int64_t rows, int64_t channels, float *mean) {
    const int64_t blocks = blocks_of(rows, kMeanRows);
    const int threads = pool_threads((double) rows * channels * 8.0);
    const int64_t chunks = threads == 1 ? 1 : std::min<int64_t>(
        blocks, 4 * (int64_t) ThreadPool::instance().threads());
    ThreadPool::instance().run(chunks, threads, [&](int64_t chunk) {
        for (int64_t b = blocks * chunk / chunks; b < blocks * (chunk + 1) / chunks; ++b) {
            const int64_t r0 = b * kMeanRows;
            means_abs_block(x + r0 * channels, std::min(kMeanRows, rows - r0), channels,
                            mean + r0);
        }
    });
}

// out (rows x channels) = affine(x) per channel, (v - mean) * scale + shift rounded after each
// operation as affine_value does: never contracted into an FMA (baseline code has none, and
// the attribute and pragma keep a build for a wider target from making one), so it
// vectorises where affine_value's barrier would not.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
inline void affine_rows(const float *x, float *out, int64_t rows, int64_t channels,
                        const ChannelAffine &affine) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    const float *mean = affine.mean, *scale = affine.scale, *shift = affine.shift;
    for (int64_t r = 0; r < rows; ++r) {
        const float *source = x + r * channels;
        float *target = out + r * channels;
        for (int64_t c = 0; c < channels; ++c) {
            const float product = (source[c] - mean[c]) * scale[c];
            target[c] = product + shift[c];
        }
    }
}

// The same with the batch norm `affine` applied first (pack_conv_input's batch_norm): eight rows
// at a time are transformed into a thread-local copy (affine_rows: affine_value's bits, as the
// pixel path and the batch norm kernel compute them) and that copy packed and summed, so the
// words and means are those of the normalized rows made first.
inline void pack_rows_affine(const float *x, uint32_t *out, int64_t rows, int64_t channels,
                             const ChannelAffine &affine, float *mean) {
    const int64_t words = blocks_of(channels, 32);
    const int64_t blocks = blocks_of(rows, kMeanRows);
    const int threads = pool_threads((double) rows * channels * 8.0);
    const int64_t chunks = threads == 1 ? 1 : std::min<int64_t>(
        blocks, 4 * (int64_t) ThreadPool::instance().threads());
    ThreadPool::instance().run(chunks, threads, [&](int64_t chunk) {
        thread_local std::vector<float> normalized;
        normalized.resize((size_t) (kMeanRows * channels));
        for (int64_t b = blocks * chunk / chunks; b < blocks * (chunk + 1) / chunks; ++b) {
            const int64_t r0 = b * kMeanRows, count = std::min(kMeanRows, rows - r0);
            affine_rows(x + r0 * channels, normalized.data(), count, channels, affine);
            // (one thread: this block is this chunk's)
            pack_signs_rows(normalized.data(), out + r0 * words, (size_t) count,
                            (size_t) channels, std::numeric_limits<size_t>::max());
            if (mean != nullptr)
                means_abs_block(normalized.data(), count, channels, mean + r0);
        }
    });
}

// out (N x H x W x Wc words) = the channel signs of each pixel of x (N x C x H x W floats):
// bit j of word w of pixel (n, h, x) is x[n][32 w + j][h][x] >= 0, padding bits 0.  Where
// `mean` (N x H x W floats) is not null, the same pass also writes mean[n][h][x] = the mean
// of |x[n][c][h][x]| over the channels: summed in float32 in channel order 0, 1, ..., C - 1
// (starting from 0.0f), then divided by C (one correctly rounded division, not a
// multiplication by 1 / C).  A batch of one-pixel images takes the row paths above.  Where
// `affine` is not null, x is batch-normalized by it first (the packing and the means are those
// of the normalized values, computed as the batch norm kernel computes them).
inline void pack_conv_input(const float *x, uint32_t *out, int64_t batch, int64_t channels,
                            int64_t height, int64_t width, float *mean = nullptr,
                            const ChannelAffine *affine = nullptr) {
    const int64_t pixels = height * width;
    if (batch == 0 || pixels == 0 || channels == 0)
        return;
    if (pixels == 1 && batch > 1 && affine != nullptr) {
        pack_rows_affine(x, out, batch, channels, *affine, mean);
        return;
    }
    if (pixels == 1 && batch > 1) {
        pack_signs_rows(x, out, (size_t) batch, (size_t) channels);
        if (mean != nullptr)
            row_means_abs(x, batch, channels, mean);
        return;
    }
    const Kernels &k = kernels_for(Dispatch::current());
    const int64_t words = blocks_of(channels, 32);
    // memory-bound: a second core pays from about 256 Ki floats (1 MiB, ~25 us) on
    const int threads = pool_threads((double) batch * pixels * channels * 4.0);
    // chunks of one image's pixels, at most kBlock of them (their word-planar scratch stays in
    // L1/L2), enough of them for the threads
    constexpr int64_t kBlock = 4096;
    int64_t per_image = blocks_of(pixels, kBlock);
    if (threads > 1)
        per_image = std::max(per_image, std::min<int64_t>(
            blocks_of(4 * (int64_t) ThreadPool::instance().threads(), batch), blocks_of(pixels, 256)));
    ThreadPool::instance().run(batch * per_image, threads, [&](int64_t chunk) {
        const int64_t n = chunk / per_image, b = chunk % per_image;
        const int64_t p0 = pixels * b / per_image, p1 = pixels * (b + 1) / per_image;
        Scratch &scratch = thread_scratch();
        uint32_t *buffer = words > 1 ? scratch.get((size_t) (words * (p1 - p0))) : nullptr;
        k.pack_pixels(x + n * channels * pixels, out + n * pixels * words, channels, pixels, p0,
                      p1, buffer, mean == nullptr ? nullptr : mean + n * pixels, affine);
        scratch.trim();
    });
}

// ---- xnor_gemm ---------------------------------------------------------------------------------

// Below this many rows on its smaller side xnor_gemm takes dot products along the words.
constexpr int64_t kFewRows = 4;

// out (m x n, int32 or float32) = k - 2 popcount(a[i] XOR b[j]) over the words of each row
// pair: a is m x Wd, b is n x Wd packed rows of k signs (Wd = ceil(k / 32)).  The lanes run
// along b's rows (the output's columns), or along a's where b has fewer than a vector's rows
// and a more.
inline void xnor_gemm(const uint32_t *a, const uint32_t *b, int64_t m, int64_t n, int64_t k,
                      void *out, bool out_float) {
    if (m == 0 || n == 0)
        return;
    const int64_t words = blocks_of(k, 32);
    const uint32_t last = tail_mask(k);
    const Kernels &isa = kernels_for(Dispatch::current());
    if (std::min(m, n) < kFewRows) {
        // one side has too few rows to fill a block of filters: the lane operand's
        // transposition would cost more than the products, so dot products along the words
        // (with a the side of few rows; out^T = xnor_gemm(b, a) otherwise, written in place)
        const bool few_a = m <= n;
        const int64_t rows = few_a ? m : n, others = few_a ? n : m;
        const double work = (double) rows * others * words;
        const int threads = pool_threads(work * isa.filters);
        const int64_t chunks = threads == 1 ? 1 : std::min<int64_t>(
            others, 4 * (int64_t) ThreadPool::instance().threads());
        const Output output = out_float ? kFloat : kInt;
        if (few_a) {
            ThreadPool::instance().run(chunks, threads, [&](int64_t c) {
                isa.dot_rows(a, b, m, n, others * c / chunks, others * (c + 1) / chunks, words,
                             last, k, output, out);
            });
            return;
        }
        // b has the few rows: compute out^T (n x m) into scratch, then transpose
        std::vector<int32_t> transposed((size_t) (n * m));
        ThreadPool::instance().run(chunks, threads, [&](int64_t c) {
            isa.dot_rows(b, a, n, m, others * c / chunks, others * (c + 1) / chunks, words,
                         last, k, kInt, transposed.data());
        });
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
                const int32_t value = transposed[(size_t) (j * m + i)];
                if (out_float)
                    static_cast<float *>(out)[i * n + j] = (float) value;
                else
                    static_cast<int32_t *>(out)[i * n + j] = value;
            }
        return;
    }
    const bool swapped = n < isa.lanes * 2 && m > n;
    const uint32_t *lane_rows = swapped ? a : b;
    const uint32_t *filter_rows = swapped ? b : a;
    const int64_t lanes = swapped ? m : n, filters = swapped ? n : m;
    const int64_t F = isa.filters, tile = (int64_t) isa.lanes * isa.max_vectors;
    const int64_t blocks = blocks_of(filters, F);
    const double work = (double) blocks * F * (double) lanes * words;
    const int threads = pool_threads(work);
    if (threads > 1)
        ThreadPool::instance().prepare(threads);

    // the lane operand word-planar (words x pitch), the tail masked, padding lanes zero
    const int64_t pitch = blocks_of(lanes, 16) * 16 + kPlaneSlack;
    std::vector<uint32_t> planes((size_t) (words * pitch), 0u);
    for (int64_t l0 = 0; l0 < lanes; l0 += 64)       // in blocks: both sides stay in cache
        for (int64_t w0 = 0; w0 < words; w0 += 16)
            for (int64_t l = l0; l < std::min(lanes, l0 + 64); ++l)
                for (int64_t w = w0; w < std::min(words, w0 + 16); ++w)
                    planes[(size_t) (w * pitch + l)] =
                        lane_rows[l * words + w] & (w == words - 1 ? last : ~0u);
    std::vector<uint32_t> weights((size_t) (blocks * F * words), 0u);
    for (int64_t f = 0; f < filters; ++f)
        for (int64_t w = 0; w < words; ++w)
            weights[(size_t) (((f / F) * words + w) * F + f % F)] =
                filter_rows[f * words + w] & (w == words - 1 ? last : ~0u);
    std::vector<int64_t> offsets((size_t) words);
    for (int64_t w = 0; w < words; ++w)
        offsets[(size_t) w] = w * pitch;

    BlockJob job{};
    job.planes = planes.data();
    job.offsets = offsets.data();
    job.steps = words;
    job.weights = weights.data();
    job.filters = filters;
    job.out = out;
    job.output = float_output(out_float, 3.0 * (double) words * 32);
    job.out_filter_stride = swapped ? 1 : n;
    job.out_lane_stride = swapped ? n : 1;
    job.lane_shift = 0;
    job.base_table = nullptr;
    job.base_constant = (int32_t) k;

    // panels of lanes whose planes stay in L1 across the filter blocks (at least one tile),
    // times groups of filter blocks: enough chunks for the threads to balance
    const int64_t panel = std::max<int64_t>(tile, (8192 / std::max<int64_t>(words, 1)) / tile * tile);
    const int64_t panels = blocks_of(lanes, panel);
    int64_t groups = 1;
    if (threads > 1) {
        const int64_t wanted = 4 * (int64_t) ThreadPool::instance().threads();
        groups = std::min<int64_t>(blocks, blocks_of(wanted, panels));
    }
    const int64_t chunks = panels * groups;
    ThreadPool::instance().run(chunks, threads, [&](int64_t chunk) {
        const int64_t p = chunk / groups, g = chunk % groups;
        const int64_t lane_begin = p * panel, lane_end = std::min(lanes, lane_begin + panel);
        for (int64_t block = blocks * g / groups; block < blocks * (g + 1) / groups; ++block)
            isa.run_block(job, block, lane_begin, lane_end);
    });
}

// An XNOR-Net linear layer's epilogue on xnor_gemm's float32 results (m x n, row-major):
// out[i][j] = ((out[i][j] * row_scale[i]) * col_scale[j]) + bias[j] (K per sample, alpha and
// the bias per output feature), each term left out where null, every operation rounded on
// its own (never contracted into an FMA: this baseline code has no FMA instruction, and the
// attribute and pragma keep a build for a wider target from contracting), so the values are
// NumPy's float32 expression's and the OpenCL / CUDA kernels' (whose stores apply the same
// order).  Rows split over the threads where there are many.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
inline void gemm_epilogue_rows(float *out, int64_t i0, int64_t i1, int64_t n,
                               const float *row_scale, const float *col_scale,
                               const float *bias) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    for (int64_t i = i0; i < i1; ++i) {
        float *row = out + i * n;
        const float r = row_scale != nullptr ? row_scale[i] : 1.0f;
        for (int64_t j = 0; j < n; ++j) {
            float v = row[j];
            if (row_scale != nullptr)
                v = v * r;
            if (col_scale != nullptr)
                v = v * col_scale[j];
            if (bias != nullptr)
                v = v + bias[j];
            row[j] = v;
        }
    }
}

inline void gemm_epilogue(float *out, int64_t m, int64_t n, const float *row_scale,
                          const float *col_scale, const float *bias) {
    if (m == 0 || n == 0 || (row_scale == nullptr && col_scale == nullptr && bias == nullptr))
        return;
    // memory-bound, a few operations a value: a second thread pays from about 1 Mi values
    const int threads = (double) m * n < double(1 << 20) ? 1 : std::numeric_limits<int>::max();
    const int64_t chunks = threads == 1 ? 1 : std::min<int64_t>(
        m, 4 * (int64_t) ThreadPool::instance().threads());
    ThreadPool::instance().run(chunks, threads, [&](int64_t c) {
        gemm_epilogue_rows(out, m * c / chunks, m * (c + 1) / chunks, n, row_scale, col_scale,
                           bias);
    });
}

// ---- xnor_conv2d -------------------------------------------------------------------------------

// The plan of a call: plane layout, steps and their offsets, block rows.
inline ConvPlan conv_plan(int64_t batch, int64_t channels, int64_t height, int64_t width,
                          int64_t out_channels, int64_t kernel_h, int64_t kernel_w,
                          int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                          int64_t out_h, int64_t out_w, const Kernels &isa) {
    ConvPlan p;
    p.batch = batch;
    p.channels = channels;
    p.height = height;
    p.width = width;
    p.out_channels = out_channels;
    p.kernel_h = kernel_h;
    p.kernel_w = kernel_w;
    p.stride_h = stride_h;
    p.stride_w = stride_w;
    p.pad_h = pad_h;
    p.pad_w = pad_w;
    p.out_h = out_h;
    p.out_w = out_w;
    p.words = blocks_of(channels, 32);
    p.last_mask = tail_mask(channels);
    p.group = (p.words == 1 && channels <= 16) ? std::min<int64_t>(kernel_w, 32 / channels) : 1;
    // 16-bit lanes: kh kw steps of 32 lanes against kh ceil(kw / g) of 16 (their counts stay
    // below 2**16 up to 4095 steps)
    p.narrow = isa.run_block16 != nullptr && p.words == 1 && channels <= 16 &&
               kernel_h * kernel_w <= 4095 && kernel_w < 2 * blocks_of(kernel_w, p.group);
    if (p.narrow)
        p.group = 1;
    p.column_groups = blocks_of(kernel_w, p.group);
    p.phases = std::min(stride_h, kernel_h);
    p.steps = kernel_h * p.column_groups * p.words;
    p.plane_count = p.words * p.phases * p.column_groups;
    p.padded_span = (out_w - 1) * stride_w + kernel_w;
    p.clipped = mostly_padding(p.padded_span, width, out_w, kernel_w);

    // Blocks of output rows: whole images when the batch alone gives the threads enough
    // chunks, else a few blocks per image (each builds its own planes, (kh - 1) / sh rows
    // more than it covers, so blocks stay at least 4 rows where the image has them).
    const int64_t F = p.narrow ? isa.filters16 : isa.filters;
    const double work = (double) batch * blocks_of(out_channels, F) * F * out_h * out_w *
                        (double) p.steps / (p.narrow ? 2 : 1);
    const int threads = pool_threads(work) == 1 ? 1 : ThreadPool::instance().threads();
    const int64_t wanted = 4 * (int64_t) threads;
    int64_t rows = out_h;
    if (threads > 1 && batch < wanted) {
        const int64_t per_image = blocks_of(wanted, batch);
        rows = std::max<int64_t>(std::min<int64_t>(out_h, 4), blocks_of(out_h, per_image));
    }
    p.chunk_rows = std::max<int64_t>(rows, 1);
    p.plane_stride = blocks_of(p.plane_rows(p.chunk_rows) * out_w + kPlaneSlack, 16) * 16;

    for (int64_t ow = 0; ow < out_w; ++ow) {
        int64_t first, last;
        valid_taps(ow, stride_w, pad_w, kernel_w, width, first, last);
        p.column_first_tap.push_back(first);
        p.column_last_tap.push_back(last);
    }

    // steps in (kernel row, column group, channel word) order
    p.offsets.reserve((size_t) p.steps);
    for (int64_t i = 0; i < kernel_h; ++i)
        for (int64_t jg = 0; jg < p.column_groups; ++jg)
            for (int64_t c = 0; c < p.words; ++c) {
                const int64_t plane = (c * p.phases + i % stride_h) * p.column_groups + jg;
                p.offsets.push_back(plane * p.plane_stride + (i / stride_h) * out_w);
            }
    return p;
}

// The weights (O x kh x kw x Wc words) packed per block of F filters, one word per step, with
// the channel tail masked and g kernel columns side by side in a word.
inline std::vector<uint32_t> pack_conv_weights(const ConvPlan &p, const uint32_t *w, int64_t F) {
    const int64_t blocks = blocks_of(p.out_channels, F), steps = p.steps, words = p.words;
    std::vector<uint32_t> packed((size_t) (blocks * steps * F), 0u);
    for (int64_t o = 0; o < p.out_channels; ++o) {
        const uint32_t *source = w + o * p.kernel_h * p.kernel_w * words;
        uint32_t *target = packed.data() + ((o / F) * steps * F + o % F);
        if (p.group == 1) {
            // the steps' (i, j, c) order is the weights' own
            for (int64_t step = 0, c = 0; step < steps; ++step) {
                target[step * F] = source[step] & (c == words - 1 ? p.last_mask : ~0u);
                c = c == words - 1 ? 0 : c + 1;
            }
            continue;
        }
        // one channel word (C <= 16): g columns per word
        int64_t step = 0;
        for (int64_t i = 0; i < p.kernel_h; ++i)
            for (int64_t jg = 0; jg < p.column_groups; ++jg, ++step) {
                uint32_t word = 0;
                for (int64_t t = 0; t < p.group && jg * p.group + t < p.kernel_w; ++t)
                    word |= (source[i * p.kernel_w + jg * p.group + t] & p.last_mask)
                            << (t * p.channels);
                target[step * F] = word;
            }
    }
    return packed;
}


// base[o][q] (O x OH*OW): the part of each output that does not depend on the input, with
// the taps outside the image taken out (see the top of this file).  Output rows with the same
// valid kernel rows share one template row.
// (int32 entries, or float where `as_float`: the same integers, exact below 2**24)
inline std::vector<int32_t> conv_base_table(const ConvPlan &p, const uint32_t *w,
                                            const Kernels &isa, bool as_float) {
    const int64_t kh = p.kernel_h, kw = p.kernel_w, out_w = p.out_w;
    const int64_t pixels = p.out_h * out_w;
    std::vector<int32_t> table((size_t) (p.out_channels * pixels));
    // the row pattern of every output row: its valid kernel rows [first, last)
    std::vector<int64_t> row_first, row_last, pattern_of((size_t) p.out_h);
    for (int64_t oh = 0; oh < p.out_h; ++oh) {
        int64_t first, last;
        valid_taps(oh, p.stride_h, p.pad_h, kh, p.height, first, last);
        size_t k = 0;
        while (k < row_first.size() && (row_first[k] != first || row_last[k] != last))
            ++k;
        if (k == row_first.size()) {
            row_first.push_back(first);
            row_last.push_back(last);
        }
        pattern_of[(size_t) oh] = (int64_t) k;
    }
    const size_t patterns = row_first.size();
    std::vector<int64_t> counts((size_t) (p.out_channels * kh * kw));
    isa.row_popcounts(w, p.out_channels * kh * kw, p.words, p.last_mask, counts.data());
    std::vector<int64_t> tap_sum((size_t) (kh * kw)), column_sum((size_t) kw + 1);
    std::vector<int32_t> rows(patterns * (size_t) out_w);
    for (int64_t o = 0; o < p.out_channels; ++o) {
        int64_t all_pc = 0;
        for (int64_t t = 0; t < kh * kw; ++t) {
            const int64_t pc = counts[(size_t) (o * kh * kw + t)];
            tap_sum[(size_t) t] = p.channels - 2 * pc;
            all_pc += pc;
        }
        for (size_t k = 0; k < patterns; ++k) {
            // column_sum[j]: the valid rows' taps of kernel columns before j
            column_sum[0] = 0;
            for (int64_t j = 0; j < kw; ++j) {
                int64_t sum = 0;
                for (int64_t i = row_first[k]; i < row_last[k]; ++i)
                    sum += tap_sum[(size_t) (i * kw + j)];
                column_sum[(size_t) j + 1] = column_sum[(size_t) j] + sum;
            }
            int32_t *row = rows.data() + k * (size_t) out_w;
            for (int64_t ow = 0; ow < out_w; ++ow)
                row[ow] = (int32_t) (2 * all_pc +
                                     column_sum[(size_t) p.column_last_tap[(size_t) ow]] -
                                     column_sum[(size_t) p.column_first_tap[(size_t) ow]]);
        }
        if (as_float)
            for (size_t i = 0; i < rows.size(); ++i) {
                const float value = (float) rows[i];
                std::memcpy(&rows[i], &value, sizeof value);
            }
        int32_t *target = table.data() + o * pixels;
        for (int64_t oh = 0; oh < p.out_h; ++oh, target += out_w) {
            const int32_t *row = rows.data() + (size_t) pattern_of[(size_t) oh] * (size_t) out_w;
            for (int64_t ow = 0; ow < out_w; ++ow)
                target[ow] = row[ow];
        }
    }
    return table;
}

// ---- the weights' side of a call, kept between calls -------------------------------------------

// What xnor_conv2d makes from the weights alone before any product: the weight blocks
// (pack_conv_weights) and the border's base table (conv_base_table).  Both depend only on the
// weights' words, the layer's geometry (not the batch) and the instruction set's copy, and cost
// a few microseconds a call on ResNet-20's layers (tens on a 256-channel one: ~40 us of a
// ~500 us call) -- most of a small layer's serial part.  A layer in eval mode convolves with
// the same packed weights on every call, so they are kept: an entry is found by the weights'
// address and geometry and used only if the weights' words are still the ones it was made from
// (compared in full: a caller may refill the same buffer), so a hit gives exactly what a
// rebuild would.
struct PreparedWeights {
    // the key: geometry, the copy's kernels, the output path the base table was made for
    const Kernels *isa;
    int64_t geometry[12];
    bool float_base;
    const uint32_t *address;
    std::vector<uint32_t> words;        // the weights the entry was made from
    // the entry
    std::vector<uint32_t> blocks;
    std::vector<int32_t> base;          // empty without padding

    size_t bytes() const {
        return sizeof(*this) + (words.size() + blocks.size() + base.size()) * sizeof(uint32_t);
    }
};

// A small cache of PreparedWeights, least recently used first out: a few dozen layers' worth
// (a ResNet-32 has 30 binary convolutions), at most kPreparedBytes in all.
class PreparedCache {
  public:
    static constexpr size_t kEntries = 96;
    static constexpr size_t kPreparedBytes = size_t(64) << 20;

    static PreparedCache &instance() {
        static PreparedCache *cache = new PreparedCache();     // never destroyed (exit order)
        return *cache;
    }

    template <class Build>
    std::shared_ptr<const PreparedWeights> get(const Kernels &isa, const int64_t (&geometry)[12],
                                               bool float_base, const uint32_t *w,
                                               size_t word_count, Build &&build) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (size_t i = entries_.size(); i-- > 0;) {
                const PreparedWeights &e = *entries_[i];
                if (e.address != w || e.isa != &isa || e.float_base != float_base ||
                    std::memcmp(e.geometry, geometry, sizeof geometry) != 0)
                    continue;
                if (e.words.size() == word_count &&
                    std::memcmp(e.words.data(), w, word_count * sizeof(uint32_t)) == 0) {
                    ++hits_;
                    std::shared_ptr<const PreparedWeights> found = entries_[i];
                    entries_.erase(entries_.begin() + (std::ptrdiff_t) i);
                    entries_.push_back(found);             // most recently used last
                    return found;
                }
                bytes_ -= e.bytes();                        // the buffer was refilled: stale
                entries_.erase(entries_.begin() + (std::ptrdiff_t) i);
                break;
            }
            ++misses_;
        }
        auto made = std::make_shared<PreparedWeights>();
        made->isa = &isa;
        std::memcpy(made->geometry, geometry, sizeof geometry);
        made->float_base = float_base;
        made->address = w;
        made->words.assign(w, w + word_count);
        build(*made);
        if (made->bytes() <= kPreparedBytes / 4) {
            std::lock_guard<std::mutex> lock(mutex_);
            bytes_ += made->bytes();
            entries_.push_back(made);
            while (!entries_.empty() && (entries_.size() > kEntries || bytes_ > kPreparedBytes)) {
                bytes_ -= entries_.front()->bytes();
                entries_.erase(entries_.begin());
            }
        }
        return made;
    }

    void clear() {
        std::lock_guard<std::mutex> lock(mutex_);
        entries_.clear();
        bytes_ = 0;
        hits_ = misses_ = 0;
    }

    // entries, bytes, and hits and misses since the last clear()
    void stats(int64_t &entries, int64_t &bytes, int64_t &hits, int64_t &misses) {
        std::lock_guard<std::mutex> lock(mutex_);
        entries = (int64_t) entries_.size();
        bytes = (int64_t) bytes_;
        hits = hits_;
        misses = misses_;
    }

  private:
    std::mutex mutex_;
    std::vector<std::shared_ptr<const PreparedWeights>> entries_;
    size_t bytes_ = 0;
    int64_t hits_ = 0, misses_ = 0;
};

// out (N x O x OH x OW, int32 or float32) = conv2d(b(x), b(w)) with zero padding, b(v) = +1
// for v >= 0 and -1 else, of the packed input xp (N x H x W x Wc) and weights wp
// (O x kh x kw x Wc) of C channels; (OH, OW) must be the convolution's output size.
// Float output only: pixel_scale (N x OH x OW), filter_scale (O), bias (O) and residual
// (N x O x OH x OW), each null where absent, make it out[n][o][q] = (((v * pixel_scale[n][q])
// * filter_scale[o]) + bias[o]) + residual[n][o][q] in float32, v the float result, applied as
// the results are stored (see Scale): a residual block's addition in the same pass.
// Where `xf` (N x C x H x W floats) is not null it is the input instead of xp (then unused):
// each chunk binarizes and packs the input rows its planes read into its own scratch, in the
// same parallel pass as its products -- no packed copy of the batch, no second hand-over to
// the threads, and the words are still in cache when the planes are built from them.  With
// `window_mean` (float input and output only; pixel_scale then unused) the chunk also takes
// the channel mean of |x| in that packing pass and makes XNOR-Net's K of its output rows from
// it (Kernels::window_mean_rows), the pixel scale of its results: a binary layer's whole
// inference in one call.  `input` (float input only) transforms the input's values before
// they are binarized and averaged: the evaluation batch norm in front of an XNOR-Net layer,
// folded into its packing pass (see ChannelAffine).
inline void xnor_conv2d(const uint32_t *xp, const uint32_t *wp, int64_t batch, int64_t channels,
                        int64_t height, int64_t width, int64_t out_channels, int64_t kernel_h,
                        int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                        int64_t pad_w, int64_t out_h, int64_t out_w, void *out,
                        bool out_float, const float *pixel_scale = nullptr,
                        const float *filter_scale = nullptr, const float *bias = nullptr,
                        const float *xf = nullptr, bool window_mean = false,
                        const ChannelAffine *input = nullptr, const float *residual = nullptr) {
    if (!out_float) {
        pixel_scale = filter_scale = bias = residual = nullptr;   // (the bindings refuse them)
        window_mean = false;
    }
    window_mean = window_mean && xf != nullptr;
    if (xf == nullptr)
        input = nullptr;
    const int64_t pixels = out_h * out_w;
    if (batch == 0 || out_channels == 0 || pixels == 0)
        return;
    const Kernels &isa = kernels_for(Dispatch::current());
    const ConvPlan p = conv_plan(batch, channels, height, width, out_channels, kernel_h,
                                 kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w, isa);
    const int64_t F = p.narrow ? isa.filters16 : isa.filters;
    const auto run_block = p.narrow ? isa.run_block16 : isa.run_block;
    const auto build_planes = p.narrow ? isa.build_planes16 : isa.build_planes;
    const int64_t blocks = blocks_of(out_channels, F);
    const double work = (double) batch * blocks * F * pixels * (double) p.steps;
    const int threads = pool_threads(work);
    if (threads > 1)
        ThreadPool::instance().prepare(threads);

    // |base| <= 3 kh kw C, 2 acc <= 2 kh kw Wc 32
    const Output output = float_output(
        out_float, 3.0 * (double) (kernel_h * kernel_w) * (double) (p.words * 32));
    const int64_t geometry[12] = {channels, height, width, out_channels, kernel_h, kernel_w,
                                  stride_h, stride_w, pad_h, pad_w, out_h, out_w};
    const std::shared_ptr<const PreparedWeights> prepared = PreparedCache::instance().get(
        isa, geometry, output == kFloatFma, wp,
        (size_t) (out_channels * kernel_h * kernel_w * p.words), [&](PreparedWeights &e) {
            e.blocks = pack_conv_weights(p, wp, F);
            if (pad_h > 0 || pad_w > 0)
                e.base = conv_base_table(p, wp, isa, output == kFloatFma);
        });
    const std::vector<uint32_t> &weights = prepared->blocks;
    const std::vector<int32_t> &base = prepared->base;

    const int64_t row_blocks = blocks_of(out_h, p.chunk_rows);
    const int64_t image_words = height * width * p.words;
    const size_t elem = out_float ? sizeof(float) : sizeof(int32_t);
    // float input: the chunk's scratch holds, after the planes, one packed image (only the
    // rows the planes read are written) and pack_pixels' word-planar buffer (Wc > 1)
    const int64_t plane_words = blocks_of(p.scratch_words(), 16) * 16;
    const int64_t packed_words = xf == nullptr ? 0 : blocks_of(image_words, 16) * 16;
    const int64_t pack_buffer_words = xf == nullptr || p.words == 1 ? 0 : image_words;
    // ... and with window_mean, the image's channel means and the K of its output pixels
    const int64_t mean_words = window_mean ? blocks_of(height * width, 16) * 16 : 0;
    const int64_t k_words = window_mean ? blocks_of(pixels, 16) * 16 : 0;
    // (rows of the means between their padding zeros, unless mostly padding: window_mean_rows)
    const bool window_clipped =
        window_mean && mostly_padding(width + 2 * pad_w, width, out_w, kernel_w);
    const int64_t window_words = window_mean && !window_clipped ? height * (width + 2 * pad_w)
                                                                : 0;
    ThreadPool::instance().run(batch * row_blocks, threads, [&](int64_t chunk) {
        const int64_t n = chunk / row_blocks, rb = chunk % row_blocks;
        const int64_t oh0 = rb * p.chunk_rows;
        const int64_t rows = std::min(p.chunk_rows, out_h - oh0);
        Scratch &scratch = thread_scratch();
        uint32_t *planes = scratch.get((size_t) (plane_words + packed_words + pack_buffer_words +
                                                 mean_words + k_words + window_words));
        float *mean = window_mean ? reinterpret_cast<float *>(planes + plane_words + packed_words +
                                                              pack_buffer_words)
                                  : nullptr;
        const uint32_t *image = xp + n * image_words;
        if (xf != nullptr) {
            // the input rows build_planes reads: (oh0 + u) sh + a - ph for u < plane rows,
            // a < phases, inside the image
            const int64_t first = std::max<int64_t>(0, oh0 * stride_h - pad_h);
            const int64_t last = std::min<int64_t>(
                height, (oh0 + p.plane_rows(rows) - 1) * stride_h + p.phases - pad_h);
            uint32_t *packed = planes + plane_words;
            if (last > first)
                isa.pack_pixels(xf + n * channels * height * width, packed, channels,
                                height * width, first * width, last * width,
                                packed + packed_words, mean, input);
            image = packed;
        }
        float *k = nullptr;
        if (window_mean) {
            k = mean + mean_words;
            isa.window_mean_rows(p, mean, oh0, rows, k, window_clipped ? nullptr : k + k_words);
        }
        build_planes(p, image, oh0, rows, planes);
        BlockJob job{};
        job.planes = planes;
        job.offsets = p.offsets.data();
        job.steps = p.steps;
        job.weights = weights.data();
        job.filters = out_channels;
        job.out = static_cast<char *>(out) + (size_t) (n * out_channels * pixels) * elem;
        job.output = output;
        job.out_filter_stride = pixels;
        job.out_lane_stride = 1;
        job.lane_shift = oh0 * out_w;
        job.base_table = base.empty() ? nullptr : base.data();
        job.base_filter_stride = pixels;
        job.base_constant = (int32_t) (kernel_h * kernel_w * channels);
        job.pixel_scale = window_mean ? k
                          : pixel_scale == nullptr ? nullptr : pixel_scale + n * pixels;
        job.filter_scale = filter_scale;
        job.bias = bias;
        job.residual = residual == nullptr ? nullptr : residual + n * out_channels * pixels;
        for (int64_t block = 0; block < blocks; ++block)
            run_block(job, block, 0, rows * out_w);
        scratch.trim();
    });
}

}  // namespace xnor
}  // namespace gpumat
