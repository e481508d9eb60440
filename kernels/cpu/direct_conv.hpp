// Direct convolutions for the cpu backend: conv2d (groups = 1), its input gradient and its
// weight gradient without an im2col matrix, vectorised for the instruction set the CPU has
// (chosen at run time) and split over the batch on ThreadPool's threads.
//
// The layout that makes them cheap: per image, the (zero-padded) input is stored as "phase
// planes" -- for stride s, s x s planes of V columns holding every s-th padded pixel, so that
// output pixel (oh, ow) reads plane pixel (oh + du, ow + dv) for a tap whose shift in its
// phase is (du, dv).  With q = oh * V + ow, a whole tap is then one contiguous range of the
// planes, planes[off[k] + q]: every kernel tap reads the same run of q shifted by its offset,
// and vector loads along q need no gather.  The cost is V - OW dropped lanes per output row
// (kw - 1 for stride 1), which is why layers with tiny planes and many channels are better off
// with im2col + BLAS (gpumat/backends/cpu_conv.py decides).  For stride 1 without padding the
// planes are the image itself; otherwise one copy per image, C * H * W values instead of
// im2col's C * kh * kw * OH * OW.
//
//   forward          y = W @ cols            tiles of output channels x pixels (q)
//   backward-input   cols^T += W^T @ dy       tiles of taps x pixels, added into the planes,
//                                             which are then un-phased into dx (the adjoint)
//   backward-weight  dW = dy @ cols^T         tiles of output channels x taps, either with
//                                             vectors along q (summed across lanes at the end:
//                                             few output channels) or along the output
//                                             channels (dy transposed per image: many)
//
// The same forward tiles serve small_gemm (at the end), the cpu backend's small 2-d products.
//
// Threads take chunks of images; the weight gradient sums one partial per chunk, in chunk
// order, and the chunks depend on the batch size only, so every result is the same whatever
// the thread count or scheduling.  Rounding differs from the BLAS path (other summation
// orders) and between instruction sets (vector widths, FMA), within float tolerance.
// Non-finite values: dropped lanes multiply padding zeros, so an inf in the input (or weight)
// may turn more gradient entries into NaN than the reference would.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "compiler.hpp"
#include "isa.hpp"
#include "thread_pool.hpp"

namespace gpumat {
namespace direct {

struct Geometry {
    int64_t batch, channels, height, width, out_channels;
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    int64_t out_h, out_w;

    int64_t taps() const { return channels * kernel_h * kernel_w; }
    // multiply-adds of one pass
    double work() const {
        return (double) batch * out_channels * out_h * out_w * (double) taps();
    }
};

// The phase planes of one image and the offset of every tap (c, i, j) in them.
struct Plan {
    Geometry g;
    int64_t rows, cols;             // U, V: the size of one phase plane
    int64_t plane, phases, channel_size, planes_size;
    int64_t span;                   // the q computed: (OH - 1) * V + OW
    int64_t taps;
    int64_t planes_allocated;       // planes_size + slack for the last tile's dropped lanes
    bool identity;                  // stride 1, no padding: the planes are the image
    std::vector<int64_t> offsets;   // per tap; padded by the jobs that read whole blocks

    //: the widest tile of any menu, in elements (4 AVX-512 vectors of float)
    static constexpr int64_t kWidestTile = 64;

    explicit Plan(const Geometry &geometry) : g(geometry) {
        rows = g.out_h + (g.kernel_h - 1) * g.dilation_h / g.stride_h;
        cols = g.out_w + (g.kernel_w - 1) * g.dilation_w / g.stride_w;
        plane = rows * cols;
        phases = g.stride_h * g.stride_w;
        channel_size = phases * plane;
        planes_size = g.channels * channel_size;
        span = (g.out_h - 1) * cols + g.out_w;
        taps = g.taps();
        planes_allocated = planes_size + kWidestTile;
        identity = phases == 1 && g.pad_h == 0 && g.pad_w == 0 && rows == g.height &&
                   cols == g.width;
        offsets.reserve((size_t) taps);
        for (int64_t c = 0; c < g.channels; ++c)
            for (int64_t i = 0; i < g.kernel_h; ++i)
                for (int64_t j = 0; j < g.kernel_w; ++j) {
                    const int64_t di = i * g.dilation_h, dj = j * g.dilation_w;
                    const int64_t phase = (di % g.stride_h) * g.stride_w + dj % g.stride_w;
                    offsets.push_back(c * channel_size + phase * plane +
                                      (di / g.stride_h) * cols + dj / g.stride_w);
                }
    }
};

// Along one axis of phase b (stride s, padding pad): the plane positions [begin, end) that hold
// input pixels, position v holding input pixel v * s + b - pad; first_input is begin's pixel.
struct PhaseRange {
    int64_t begin, end, first_input;

    PhaseRange(int64_t b, int64_t stride, int64_t pad, int64_t size, int64_t plane_size) {
        // v * stride + b - pad in [0, size)
        begin = std::max<int64_t>(0, (pad - b + stride - 1) / stride);
        end = std::min<int64_t>(plane_size, (size - 1 + pad - b) / stride + 1);
        if (size - 1 + pad - b < 0)
            end = 0;
        end = std::max(begin, end);
        first_input = begin * stride + b - pad;
    }
};

// A block of accumulators: (output channels, vectors of pixels) for forward, (taps, vectors)
// for backward-input, (output channels, taps) for the pixel-vectorised weight gradient and
// (taps, vectors of output channels) for the channel-vectorised one.
struct TileShape {
    int first, second;
};

// Lanes [lane, lane + count) of a forward tile are output pixels [pixel, pixel + count).
struct Segment {
    int64_t lane, count, pixel;
};

template <class T>
struct ForwardJob {
    const Plan *plan;
    const T *x;
    const T *packed;                // per block of MR output channels: taps x MR weights
    T *y;
    const int64_t *offsets;
    int64_t tiles;
    const Segment *segments;
    const int64_t *segment_begin;   // tiles + 1 entries
    const T *bias;                  // per output channel, added as the tiles are copied out;
                                    // or null
};

template <class T>
struct InputJob {
    const Plan *plan;
    const T *dy;
    const T *packed;                // per block of MR taps: out_channels x MR weights
    T *dx;
    const int64_t *offsets;
    int64_t tiles, pitch;           // pitch: tiles * NR, the spread rows of dy
};

template <class T>
struct WeightJob {
    const Plan *plan;
    const T *dy;
    const T *x;
    const int64_t *offsets;         // padded to whole blocks of taps
    int64_t pitch;                  // spread dy rows (pixel form) / padded channels (other)
};

// out (m x n) = alpha * op(A) @ op(B) + beta * c (c may be null: beta taken as 0).
template <class T>
struct GemmJob {
    const T *packed;                // per block of MR rows of op(A): k x MR
    const T *b;                     // op(B): k rows `pitch` apart
    const T *c;
    T *out;
    const int64_t *offsets;         // row r of op(B) at r * pitch
    int64_t m, n, k, pitch;
    T alpha, beta;
};

// The tiles [first, last) of a job (tile i: row block i / column tiles, column tile i %).
template <class T>
using GemmFunction = void (*)(const GemmJob<T> &, int64_t first, int64_t last);

// The images [first, last) of a job (the weight gradient: summed into `partial`, O x K).
template <class T>
using ForwardFunction = void (*)(const ForwardJob<T> &, int64_t first, int64_t last);
template <class T>
using InputFunction = void (*)(const InputJob<T> &, int64_t first, int64_t last);
template <class T>
using WeightFunction = void (*)(const WeightJob<T> &, int64_t first, int64_t last, T *partial);

// The shapes one instruction set's copy was compiled for, and its entry for each.
template <class Function>
struct Menu {
    const TileShape *shapes;
    const Function *entries;
    size_t count;
};

template <class T>
struct Kernels {
    const char *name;
    int lanes;                      // of T in one vector
    Menu<ForwardFunction<T>> forward;
    Menu<InputFunction<T>> input;
    Menu<WeightFunction<T>> weight;
    Menu<WeightFunction<T>> weight_transposed;
    Menu<ForwardFunction<T>> forward_channels;
    Menu<GemmFunction<T>> gemm;     // the forward pass's shapes
};

// Per-thread, 64-byte-aligned scratch buffers (slot: which of a kernel's buffers), reused
// across calls: fresh large buffers would page-fault on every call.  Buffers past
// kScratchKept bytes (layers far beyond a small CNN's) are freed when their pass ends.
constexpr size_t kScratchKept = size_t(16) << 20;

template <class T>
struct ScratchBuffer {
    T *data = nullptr;
    size_t size = 0;
    void *raw = nullptr;
    ~ScratchBuffer() { std::free(raw); }
};

template <class T>
ScratchBuffer<T> *scratch_buffers() {
    thread_local ScratchBuffer<T> buffers[3];
    return buffers;
}

// At least `count` T of slot `slot`, zero-filled when asked.
template <class T>
T *scratch(int slot, size_t count, bool zeroed) {
    ScratchBuffer<T> &buffer = scratch_buffers<T>()[slot];
    if (buffer.size < count) {
        const size_t size = std::max(count, buffer.size + buffer.size / 2);
        void *raw = std::malloc(size * sizeof(T) + 64);
        if (raw == nullptr)
            throw std::bad_alloc();
        std::free(buffer.raw);
        buffer.raw = raw;
        buffer.data = reinterpret_cast<T *>((reinterpret_cast<uintptr_t>(raw) + 63) / 64 * 64);
        buffer.size = size;
    }
    if (zeroed)
        std::memset(static_cast<void *>(buffer.data), 0, count * sizeof(T));
    return buffer.data;
}

// Frees this thread's scratch buffers that outgrew kScratchKept.
template <class T>
void trim_scratch() {
    for (int slot = 0; slot < 3; ++slot) {
        ScratchBuffer<T> &buffer = scratch_buffers<T>()[slot];
        if (buffer.size * sizeof(T) > kScratchKept) {
            std::free(buffer.raw);
            buffer = ScratchBuffer<T>();
        }
    }
}

}  // namespace direct
}  // namespace gpumat

// ---- the copies, one per instruction set ------------------------------------------------------

#define GPUMAT_ISA baseline
#define GPUMAT_ISA_TARGET
#define GPUMAT_ISA_BYTES 16
#define GPUMAT_ISA_WIDE 0
#include "direct_conv_isa.hpp"
#undef GPUMAT_ISA
#undef GPUMAT_ISA_TARGET
#undef GPUMAT_ISA_BYTES
#undef GPUMAT_ISA_WIDE

#if GPUMAT_ISA_DISPATCH
#define GPUMAT_ISA avx2
#define GPUMAT_ISA_TARGET __attribute__((target("avx2,fma")))
#define GPUMAT_ISA_BYTES 32
#define GPUMAT_ISA_WIDE 0
#include "direct_conv_isa.hpp"
#undef GPUMAT_ISA
#undef GPUMAT_ISA_TARGET
#undef GPUMAT_ISA_BYTES
#undef GPUMAT_ISA_WIDE

#define GPUMAT_ISA avx512
#define GPUMAT_ISA_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define GPUMAT_ISA_BYTES 64
#define GPUMAT_ISA_WIDE 1
#include "direct_conv_isa.hpp"
#undef GPUMAT_ISA
#undef GPUMAT_ISA_TARGET
#undef GPUMAT_ISA_BYTES
#undef GPUMAT_ISA_WIDE
#endif

namespace gpumat {
namespace direct {

// ---- instruction-set selection ----------------------------------------------------------------

enum class Isa { baseline = 0, avx2 = 1, avx512 = 2 };

inline const char *isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512: return "avx512";
        case Isa::avx2: return "avx2";
        // without vector types the one copy is plain loops: "portable", which the Python
        // side (gpumat/backends/cpu_conv.py) leaves to im2col + BLAS
        default: return GPUMAT_VECTOR_EXTENSIONS ? "baseline" : "portable";
    }
}

// The copies as a ladder (isa.hpp; GPUMAT_CPU_ISA and Dispatch::select() take these names).
struct Rungs {
    using Isa = direct::Isa;

    static Isa detected() {
        const isa::Features &f = isa::features();
        return f.avx512 ? Isa::avx512 : f.avx2 ? Isa::avx2 : Isa::baseline;
    }

    static bool parse(const std::string &name, Isa, Isa &out) {
        if (isa::is_baseline_name(name))
            out = Isa::baseline;
        else if (name == "avx2")
            out = Isa::avx2;
        else if (name == "avx512")
            out = Isa::avx512;
        else
            return false;
        return true;
    }
};

using Dispatch = isa::Ladder<Rungs>;

template <class T>
const Kernels<T> &kernels_for(Isa isa) {
    static const Kernels<T> base = baseline::kernels<T>("baseline");
#if GPUMAT_ISA_DISPATCH
    static const Kernels<T> wide = avx512::kernels<T>("avx512");
    static const Kernels<T> medium = avx2::kernels<T>("avx2");
    if (isa == Isa::avx512)
        return wide;
    if (isa == Isa::avx2)
        return medium;
#else
    (void) isa;
#endif
    return base;
}

// ---- the cost model that picks a menu entry -----------------------------------------------------

// The passes, for forced_shape().
enum class Pass { forward = 0, input = 1, weight = 2, weight_transposed = 3,
                  forward_channels = 4 };

// A menu entry forced for a pass (tests run every entry), or -1: the cost model decides.
// Forcing an entry of a pass with two forms (forward, weight gradient) forces that form too.
inline std::atomic<int> &forced_shape(Pass pass) {
    static std::atomic<int> slots[5] = {{-1}, {-1}, {-1}, {-1}, {-1}};
    return slots[(int) pass];
}

// Cycles of one step of an a x b accumulator block: a * b FMAs at two a cycle, the a + b
// loads feeding them at two a cycle, or all of them and the loop's few other instructions
// at five a cycle (the front end), whichever binds.
inline double block_step(int a, int b) {
    return std::max({0.5 * a * b, 0.5 * (a + b), (a * b + a + b + 2) / 5.0});
}

inline int64_t blocks_of(int64_t count, int64_t block) { return (count + block - 1) / block; }

// Cycles every tile costs besides its steps (the call, the loop set-up, the store): measured
// ties between shapes go to the larger blocks.
constexpr double kTileCycles = 20.0;

// The menu entry of `pass` that `cost` rates cheapest for the plan (or the forced one).
template <class Function>
size_t cheapest(Pass pass, const Menu<Function> &menu,
                double (*cost)(const Plan &, int, TileShape), const Plan &p, int lanes) {
    const int forced = forced_shape(pass).load(std::memory_order_relaxed);
    if (forced >= 0 && (size_t) forced < menu.count)
        return (size_t) forced;
    size_t best = 0;
    double best_cost = std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < menu.count; ++i) {
        const double c = cost(p, lanes, menu.shapes[i]);
        if (c < best_cost) {
            best_cost = c;
            best = i;
        }
    }
    return best;
}

inline double forward_cost(const Plan &p, int lanes, TileShape s) {
    const int64_t width = (int64_t) s.second * lanes;
    // each tile is stored, then copied out one output row segment at a time
    const double segments = (double) width / (double) p.cols + 1.0;
    return (double) blocks_of(p.g.out_channels, s.first) * blocks_of(p.span, width) *
           (p.taps * block_step(s.first, s.second) + s.first * (s.second + 8.0 * segments) +
            kTileCycles);
}

inline double forward_channel_cost(const Plan &p, int lanes, TileShape s) {
    const int64_t width = (int64_t) s.second * lanes;
    return (double) p.g.out_h * blocks_of(p.g.out_w, s.first) *
           blocks_of(p.g.out_channels, width) *
           (p.taps * block_step(s.first, s.second) + 0.5 * s.first * width + kTileCycles);
}

inline double input_cost(const Plan &p, int lanes, TileShape s) {
    return (double) blocks_of(p.taps, s.first) *
           blocks_of(p.span, (int64_t) s.second * lanes) *
           (p.g.out_channels * block_step(s.first, s.second) + 1.5 * s.first * s.second +
            kTileCycles);
}

inline double weight_cost(const Plan &p, int lanes, TileShape s) {
    // strided layers' taps read s x s phase planes each, whose rows stream poorly through
    // this form's tiles: measured 1.4x slower than modelled (ResNet-20's downsampling)
    const double strided = p.phases > 1 ? 1.5 : 1.0;
    return strided * (double) blocks_of(p.g.out_channels, s.first) *
               blocks_of(p.taps, s.second) *
               (blocks_of(p.span, lanes) * block_step(s.first, s.second) +
                2.0 * s.first * s.second + kTileCycles) +
           0.25 * p.g.out_channels * p.span;              // dy spread into rows
}

// The pixels of one image this form takes per pass over its tiles (whole output rows whose
// transposed dy, about 16 KiB, stays in L1 across the tiles).
inline int64_t weight_transposed_rows(const Geometry &g, int64_t padded_channels) {
    return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, g.out_w * padded_channels));
}

inline double weight_transposed_cost(const Plan &p, int lanes, TileShape s) {
    const int64_t width = (int64_t) s.second * lanes;
    const int64_t padded = blocks_of(p.g.out_channels, width) * width;
    const int64_t runs = blocks_of(p.g.out_h, weight_transposed_rows(p.g, padded));
    return (double) blocks_of(p.taps, s.first) * blocks_of(p.g.out_channels, width) *
               (p.g.out_h * p.g.out_w * block_step(s.first, s.second) +
                runs * (2.0 * s.first * s.second + kTileCycles)) +
           2.0 * padded * p.g.out_h * p.g.out_w;          // dy transposed, a strided scatter
}

// ---- the passes -------------------------------------------------------------------------------

// Chunks of images: at most `most`, at least 64K multiply-adds each (a chunk must pay for a
// wake-up); a function of the layer and batch only, never of the thread count, so that the
// weight gradient's per-chunk sums add up the same way whatever the threads.  The forward
// and input passes take many small chunks (a worker that wakes late still finds work); the
// weight gradient fewer, as each chunk ends with a pass over a whole weight-sized partial.
inline int64_t chunk_count(const Geometry &g, int64_t most) {
    const int64_t useful = (int64_t) std::max(1.0, g.work() / 65536.0);
    return std::max<int64_t>(1, std::min<int64_t>({g.batch, most, useful}));
}

// Wakes the pool's workers for a pass over g's batch while the pass sets up (a no-op for one
// chunk).
inline void prepare_threads(const Geometry &g) {
    if (chunk_count(g, 2) > 1)
        ThreadPool::instance().prepare(std::numeric_limits<int>::max());
}

// Calls body(chunk, first image, last image) for the `chunks` chunks of the batch, on the pool.
template <class T, class Body>
void for_image_chunks(const Geometry &g, int64_t chunks, Body &&body) {
    ThreadPool::instance().run(chunks, std::numeric_limits<int>::max(), [&](int64_t c) {
        body(c, g.batch * c / chunks, g.batch * (c + 1) / chunks);
        trim_scratch<T>();
    });
}

// The forward pass's form -- vectors along the pixels (q) or along the output channels --
// and its menu entry, by the cost model (or forced), with the cost.
struct ForwardChoice {
    size_t pixels, channels;
    bool by_channels;
    double cost;

    template <class T>
    ForwardChoice(const Plan &p, const Kernels<T> &isa) {
        pixels = cheapest(Pass::forward, isa.forward, forward_cost, p, isa.lanes);
        channels = cheapest(Pass::forward_channels, isa.forward_channels, forward_channel_cost,
                            p, isa.lanes);
        const double by_pixels = forward_cost(p, isa.lanes, isa.forward.shapes[pixels]);
        const double by_channel =
            forward_channel_cost(p, isa.lanes, isa.forward_channels.shapes[channels]);
        by_channels = by_channel < by_pixels;
        if (forced_shape(Pass::forward).load() >= 0)
            by_channels = false;
        if (forced_shape(Pass::forward_channels).load() >= 0)
            by_channels = true;
        cost = by_channels ? by_channel : by_pixels;
    }
};

// y (N x O x OH x OW) = conv2d(x (N x C x H x W), w (O x C x kh x kw))
// y = conv2d(x, w) (+ bias[o] on output channel o where bias is not null: one add per value
// as the results are copied out, the same rounding as adding it afterwards).
template <class T>
void forward(const Geometry &g, const T *x, const T *w, T *y, const T *bias = nullptr) {
    const int64_t pixels = g.out_h * g.out_w;
    if (g.batch == 0 || g.out_channels == 0 || pixels == 0)
        return;
    if (g.taps() == 0) {
        for (int64_t n = 0; n < g.batch; ++n)
            for (int64_t o = 0; o < g.out_channels; ++o) {
                T *plane = y + (n * g.out_channels + o) * pixels;
                std::fill(plane, plane + pixels, bias != nullptr ? T(0) + bias[o] : T(0));
            }
        return;
    }
    prepare_threads(g);
    const Plan p(g);
    const Kernels<T> &isa = kernels_for<T>(Dispatch::current());
    const int64_t taps = p.taps;
    const ForwardChoice choice(p, isa);
    const size_t pixel_choice = choice.pixels, channel_choice = choice.channels;
    const bool by_channels = choice.by_channels;
    std::vector<T> packed;
    std::vector<Segment> segments;
    std::vector<int64_t> segment_begin{0};
    int64_t tiles = 0;
    ForwardFunction<T> entry;
    if (by_channels) {
        // per block of NR output channels: taps x NR weights
        const int64_t nr = (int64_t) isa.forward_channels.shapes[channel_choice].second *
                           isa.lanes;
        packed.assign((size_t) (blocks_of(g.out_channels, nr) * nr * taps), T(0));
        for (int64_t o = 0; o < g.out_channels; ++o)
            for (int64_t k = 0; k < taps; ++k)
                packed[(size_t) (((o / nr) * taps + k) * nr + o % nr)] =
                    w[o * taps + k];
        entry = isa.forward_channels.entries[channel_choice];
    } else {
        // per block of MR output channels: taps x MR weights
        const int mr = isa.forward.shapes[pixel_choice].first;
        const int64_t nr = (int64_t) isa.forward.shapes[pixel_choice].second * isa.lanes;
        packed.assign((size_t) (blocks_of(g.out_channels, mr) * mr * taps), T(0));
        for (int64_t o = 0; o < g.out_channels; ++o)
            for (int64_t k = 0; k < taps; ++k)
                packed[(size_t) (((o / mr) * taps + k) * mr + o % mr)] =
                    w[o * taps + k];
        tiles = blocks_of(p.span, nr);
        for (int64_t t = 0; t < tiles; ++t) {
            const int64_t q0 = t * nr, q1 = std::min(q0 + nr, p.span);
            for (int64_t oh = q0 / p.cols; oh * p.cols < q1 && oh < g.out_h; ++oh) {
                const int64_t begin = std::max(q0, oh * p.cols);
                const int64_t end = std::min(q1, oh * p.cols + g.out_w);
                if (begin < end)
                    segments.push_back(
                        {begin - q0, end - begin, oh * g.out_w + begin - oh * p.cols});
            }
            segment_begin.push_back((int64_t) segments.size());
        }
        entry = isa.forward.entries[pixel_choice];
    }
    const ForwardJob<T> job{&p, x, packed.data(), y, p.offsets.data(), tiles,
                            segments.data(), segment_begin.data(), bias};
    for_image_chunks<T>(g, chunk_count(g, 32), [&](int64_t, int64_t first, int64_t last) {
        entry(job, first, last);
    });
}

// dx (N x C x H x W) = the gradient of conv2d's input, given dy (N x O x OH x OW) and w
template <class T>
void backward_input(const Geometry &g, const T *dy, const T *w, T *dx) {
    const int64_t input_size = g.batch * g.channels * g.height * g.width;
    if (input_size == 0)
        return;
    if (g.out_channels == 0 || g.out_h * g.out_w == 0) {
        std::fill(dx, dx + input_size, T(0));
        return;
    }
    prepare_threads(g);
    const Plan p(g);
    const Kernels<T> &isa = kernels_for<T>(Dispatch::current());
    const size_t choice = cheapest(Pass::input, isa.input, input_cost, p, isa.lanes);
    // Stride 1: dx is also the forward convolution of dy, padded by d (k - 1) - p, with the
    // weight flipped in space and its channel axes swapped.  That gathers instead of adding
    // into the planes, and may vectorise along the channels; it multiplies padding zeros
    // where p < d (k - 1) / 2 (none for "same" padding).  The cost model picks.
    if (g.stride_h == 1 && g.stride_w == 1 && g.pad_h <= g.dilation_h * (g.kernel_h - 1) &&
        g.pad_w <= g.dilation_w * (g.kernel_w - 1) &&
        forced_shape(Pass::input).load() < 0) {
        Geometry t = g;
        t.channels = g.out_channels;
        t.height = g.out_h;
        t.width = g.out_w;
        t.out_channels = g.channels;
        t.pad_h = g.dilation_h * (g.kernel_h - 1) - g.pad_h;
        t.pad_w = g.dilation_w * (g.kernel_w - 1) - g.pad_w;
        t.out_h = g.height;
        t.out_w = g.width;
        const Plan transposed(t);
        if (ForwardChoice(transposed, isa).cost < input_cost(p, isa.lanes, isa.input.shapes[choice])) {
            const int64_t kernel_taps = g.kernel_h * g.kernel_w;
            std::vector<T> flipped((size_t) (g.out_channels * p.taps));
            for (int64_t o = 0; o < g.out_channels; ++o)
                for (int64_t c = 0; c < g.channels; ++c)
                    for (int64_t k = 0; k < kernel_taps; ++k)
                        flipped[(size_t) ((c * g.out_channels + o) * kernel_taps + k)] =
                            w[(o * g.channels + c) * kernel_taps + kernel_taps - 1 - k];
            forward(t, dy, flipped.data(), dx);
            return;
        }
    }
    const int mr = isa.input.shapes[choice].first;
    const int64_t nr = (int64_t) isa.input.shapes[choice].second * isa.lanes;
    const int64_t blocks = blocks_of(p.taps, mr), taps = p.taps, o_count = g.out_channels;
    // Taps in (j, i, c) order, channels innermost, then kernel rows: the rows of one block
    // then add into different planes, or rows of a plane V apart.  In (c, i, j) order
    // neighbouring taps add into ranges one pixel apart, and every load would wait for the
    // overlapping store before it (a failed store-to-load forward): measured 1.4-2x slower.
    std::vector<int64_t> offsets((size_t) taps);
    std::vector<T> packed((size_t) (blocks * mr * o_count), T(0));
    for (int64_t r = 0; r < taps; ++r) {
        const int64_t c = r % g.channels, i = (r / g.channels) % g.kernel_h;
        const int64_t j = r / (g.channels * g.kernel_h);
        const int64_t k = (c * g.kernel_h + i) * g.kernel_w + j;
        offsets[(size_t) r] = p.offsets[(size_t) k];
        for (int64_t o = 0; o < o_count; ++o)
            packed[(size_t) (((r / mr) * o_count + o) * mr + r % mr)] = w[o * taps + k];
    }
    const int64_t tiles = blocks_of(p.span, nr);
    const InputJob<T> job{&p, dy, packed.data(), dx, offsets.data(), tiles, tiles * nr};
    const auto entry = isa.input.entries[choice];
    for_image_chunks<T>(g, chunk_count(g, 32), [&](int64_t, int64_t first, int64_t last) {
        entry(job, first, last);
    });
}

// dw (O x C x kh x kw) = the gradient of conv2d's weight, given dy (N x O x OH x OW) and x
template <class T>
void backward_weight(const Geometry &g, const T *dy, const T *x, T *dw) {
    const int64_t taps = g.taps(), weights = g.out_channels * taps;
    if (weights == 0)
        return;
    if (g.batch == 0 || g.out_h * g.out_w == 0) {
        std::fill(dw, dw + weights, T(0));
        return;
    }
    prepare_threads(g);
    const Plan p(g);
    const Kernels<T> &isa = kernels_for<T>(Dispatch::current());
    const size_t pixel_choice = cheapest(Pass::weight, isa.weight, weight_cost, p, isa.lanes);
    const size_t channel_choice = cheapest(Pass::weight_transposed, isa.weight_transposed,
                                           weight_transposed_cost, p, isa.lanes);
    const TileShape pixel_shape = isa.weight.shapes[pixel_choice];
    const TileShape channel_shape = isa.weight_transposed.shapes[channel_choice];
    bool by_channels = weight_transposed_cost(p, isa.lanes, channel_shape) <
                       weight_cost(p, isa.lanes, pixel_shape);
    if (forced_shape(Pass::weight).load() >= 0)
        by_channels = false;
    if (forced_shape(Pass::weight_transposed).load() >= 0)
        by_channels = true;
    const int64_t tap_block = by_channels ? channel_shape.first : pixel_shape.second;
    std::vector<int64_t> offsets(p.offsets);
    offsets.resize((size_t) (blocks_of(taps, tap_block) * tap_block), 0);
    const int64_t pitch = by_channels
        ? blocks_of(g.out_channels, (int64_t) channel_shape.second * isa.lanes) *
              channel_shape.second * isa.lanes
        : blocks_of(p.span, isa.lanes) * isa.lanes;
    const WeightJob<T> job{&p, dy, x, offsets.data(), pitch};
    const auto entry = by_channels ? isa.weight_transposed.entries[channel_choice]
                                   : isa.weight.entries[pixel_choice];
    const int64_t chunks = chunk_count(g, 8);
    std::vector<T> partials((size_t) ((chunks - 1) * weights));
    for_image_chunks<T>(g, chunks, [&](int64_t c, int64_t first, int64_t last) {
        entry(job, first, last, c == 0 ? dw : partials.data() + (c - 1) * weights);
    });
    for (int64_t c = 1; c < chunks; ++c) {
        const T *partial = partials.data() + (c - 1) * weights;
        for (int64_t i = 0; i < weights; ++i)
            dw[i] += partial[i];
    }
}

// out (m x n) = alpha * op(a) @ op(b) + beta * c, op(a) m x k and op(b) k x n (a is k x m
// where trans_a, b is n x k where trans_b; c m x n or null): for the small products of a
// small network's dense layers, where BLAS's threads cost more than they give (their
// spinning workers take the core the convolutions' pool needs).  op(b) is copied into rows
// padded to whole tiles, so it must stay small (the cpu backend sends at most 1 MiB).
template <class T>
void small_gemm(const T *a, const T *b, const T *c, T *out, int64_t m, int64_t n, int64_t k,
                bool trans_a, bool trans_b, T alpha, T beta) {
    if (m == 0 || n == 0)
        return;
    const Kernels<T> &isa = kernels_for<T>(Dispatch::current());
    size_t choice = 0;
    double best = std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < isa.gemm.count; ++i) {
        const TileShape s = isa.gemm.shapes[i];
        const double cost = (double) blocks_of(m, s.first) *
                            blocks_of(n, (int64_t) s.second * isa.lanes) *
                            (k * block_step(s.first, s.second) + kTileCycles);
        if (cost < best) {
            best = cost;
            choice = i;
        }
    }
    const int mr = isa.gemm.shapes[choice].first;
    const int64_t nr = (int64_t) isa.gemm.shapes[choice].second * isa.lanes;
    const int64_t pitch = blocks_of(n, nr) * nr;
    T *packed = scratch<T>(0, (size_t) (blocks_of(m, mr) * mr * k), true);
    T *rows = scratch<T>(1, (size_t) (k * pitch), false);
    for (int64_t r = 0; r < k; ++r)
        std::fill(rows + r * pitch + n, rows + (r + 1) * pitch, T(0));
    // the copies go in order of the source, or in 16 x 16 blocks where they transpose it
    if (trans_a) {
        for (int64_t r = 0; r < k; ++r)
            for (int64_t i = 0; i < m; ++i)
                packed[((i / mr) * k + r) * mr + i % mr] = a[r * m + i];
    } else {
        for (int64_t i = 0; i < m; ++i)
            for (int64_t r = 0; r < k; ++r)
                packed[((i / mr) * k + r) * mr + i % mr] = a[i * k + r];
    }
    if (trans_b) {
        for (int64_t r0 = 0; r0 < k; r0 += 16)
            for (int64_t j0 = 0; j0 < n; j0 += 16)
                for (int64_t j = j0; j < std::min(n, j0 + 16); ++j)
                    for (int64_t r = r0; r < std::min(k, r0 + 16); ++r)
                        rows[r * pitch + j] = b[j * k + r];
    } else {
        for (int64_t r = 0; r < k; ++r)
            std::memcpy(rows + r * pitch, b + r * n, sizeof(T) * (size_t) n);
    }
    std::vector<int64_t> offsets((size_t) k);
    for (int64_t r = 0; r < k; ++r)
        offsets[(size_t) r] = r * pitch;
    const GemmJob<T> job{packed, rows, beta == T(0) ? nullptr : c, out, offsets.data(),
                         m, n, k, pitch, alpha, beta};
    // on the calling thread: split over the pool, LeNet-5's largest product (64 x 400 x 120)
    // got slower (the other core reads the packed operands out of this one's cache)
    isa.gemm.entries[choice](job, 0, blocks_of(m, mr) * (pitch / nr));
    trim_scratch<T>();
}

}  // namespace direct
}  // namespace gpumat
