// The inner loops of the direct convolutions (direct_conv.hpp), written once and compiled once
// per instruction set: direct_conv.hpp includes this file several times (no include guard),
// each time with
//   GPUMAT_ISA          the namespace of this copy (baseline, avx2, avx512)
//   GPUMAT_ISA_TARGET   the function attribute that compiles it for that instruction set
//                       (empty for the baseline copy, which uses the compiler's own flags)
//   GPUMAT_ISA_BYTES    the vector width in bytes (16, 32, 64)
//   GPUMAT_ISA_WIDE     1 where there are 32 vector registers (AVX-512), else 0
// Every function here carries GPUMAT_ISA_TARGET, templates included, so nothing compiled from
// this file runs instructions its copy's CPU check did not allow; what it calls outside
// (std::, the scratch buffers) is ordinary baseline code.
//
// The operands are "phase planes" (direct_conv.hpp): the input of one image laid out so that
// every kernel tap reads the same flattened pixel range, shifted by the tap's offset.  So each
// pass is a small GEMM whose one operand is addressed through a table of tap offsets instead
// of being copied out as im2col columns:
//   forward          y[o][q]        = sum_k  W[o][k] * planes[off[k] + q]
//   backward-input   planes[off[k] + q] += sum_o W[o][k] * dy[o][q]       (then un-phased)
//   backward-weight  dW[o][k]       = sum_q  dy[o][q] * planes[off[k] + q]  (two forms)
// with q the flattened output pixel oh * V + ow (V the plane width; ow >= OW are padding
// lanes, computed and dropped, or zero in dy).  Each tile keeps a block of accumulators in
// registers: the block shapes are template arguments, and the menus below list the ones
// compiled; direct_conv.hpp picks one per layer with a cost model.

namespace gpumat {
namespace direct {
namespace GPUMAT_ISA {

#define GPUMAT_ALWAYS_INLINE GPUMAT_ISA_TARGET GPUMAT_FORCE_INLINE

#if GPUMAT_VECTOR_EXTENSIONS
template <class T>
struct Simd;
template <>
struct Simd<float> {
    typedef float V __attribute__((vector_size(GPUMAT_ISA_BYTES)));
};
template <>
struct Simd<double> {
    typedef double V __attribute__((vector_size(GPUMAT_ISA_BYTES)));
};
template <class T>
using Vec = typename Simd<T>::V;

template <class V, class T>
GPUMAT_ALWAYS_INLINE V load(const T *p) {
    V v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

template <class T, class V>
GPUMAT_ALWAYS_INLINE void store(T *p, const V &v) {
    __builtin_memcpy(p, &v, sizeof v);
}

template <class V>
GPUMAT_ALWAYS_INLINE V zero() {
    return V{};
}

template <class T, class V>
GPUMAT_ALWAYS_INLINE T lane(const V &v, int i) {
    return v[i];
}
#else
// Compilers without vector extensions: fixed-size arrays the optimiser may vectorise.
template <class T>
struct Lanes {
    static constexpr int count = GPUMAT_ISA_BYTES / (int) sizeof(T);
    T value[count];
    Lanes &operator+=(const Lanes &o) {
        for (int i = 0; i < count; ++i)
            value[i] += o.value[i];
        return *this;
    }
    Lanes operator+(const Lanes &o) const {
        Lanes r = *this;
        return r += o;
    }
    Lanes operator*(const Lanes &o) const {
        Lanes r;
        for (int i = 0; i < count; ++i)
            r.value[i] = value[i] * o.value[i];
        return r;
    }
    Lanes operator*(T s) const {
        Lanes r;
        for (int i = 0; i < count; ++i)
            r.value[i] = value[i] * s;
        return r;
    }
};
template <class T>
using Vec = Lanes<T>;

template <class V, class T>
inline V load(const T *p) {
    V v;
    std::memcpy(v.value, p, sizeof v.value);
    return v;
}

template <class T, class V>
inline void store(T *p, const V &v) {
    std::memcpy(p, v.value, sizeof v.value);
}

template <class V>
inline V zero() {
    V v;
    for (auto &x : v.value)
        x = 0;
    return v;
}

template <class T, class V>
inline T lane(const V &v, int i) {
    return v.value[i];
}
#endif

template <class T>
constexpr int lanes() {
    return GPUMAT_ISA_BYTES / (int) sizeof(T);
}

// ---- blocks of accumulators: M x N vectors, kept in registers ---------------------------------

template <class T, int M, int N>
GPUMAT_ALWAYS_INLINE void zero_block(Vec<T> (&acc)[M][N]) {
    GPUMAT_UNROLL
    for (int m = 0; m < M; ++m)
        GPUMAT_UNROLL
        for (int n = 0; n < N; ++n)
            acc[m][n] = zero<Vec<T>>();
}

// acc[m][n] = the vector at from + (m * N + n) vectors
template <class T, int M, int N>
GPUMAT_ALWAYS_INLINE void load_block(Vec<T> (&acc)[M][N], const T *from) {
    GPUMAT_UNROLL
    for (int m = 0; m < M; ++m)
        GPUMAT_UNROLL
        for (int n = 0; n < N; ++n)
            acc[m][n] = load<Vec<T>>(from + (m * N + n) * lanes<T>());
}

template <class T, int M, int N>
GPUMAT_ALWAYS_INLINE void store_block(const Vec<T> (&acc)[M][N], T *to) {
    GPUMAT_UNROLL
    for (int m = 0; m < M; ++m)
        GPUMAT_UNROLL
        for (int n = 0; n < N; ++n)
            store(to + (m * N + n) * lanes<T>(), acc[m][n]);
}

// row[n] = the n-th vector from `from`
template <class T, int N>
GPUMAT_ALWAYS_INLINE void load_row(Vec<T> (&row)[N], const T *from) {
    GPUMAT_UNROLL
    for (int n = 0; n < N; ++n)
        row[n] = load<Vec<T>>(from + n * lanes<T>());
}

// acc[m][n] += row[n] * scalar(m): one step of every block product here
template <class T, int M, int N, class Scalars>
GPUMAT_ALWAYS_INLINE void add_outer(Vec<T> (&acc)[M][N], const Vec<T> (&row)[N],
                                    const Scalars &scalar) {
    GPUMAT_UNROLL
    for (int m = 0; m < M; ++m) {
        const T value = scalar(m);
        GPUMAT_UNROLL
        for (int n = 0; n < N; ++n)
            acc[m][n] += row[n] * value;
    }
}

// The scalars of add_outer: consecutive values ...
template <class T>
struct Consecutive {
    const T *values;
    GPUMAT_ALWAYS_INLINE T operator()(int m) const { return values[m]; }
};

// ... or one value from each of M streams.
template <class T, int M>
struct Streams {
    const T *const (&streams)[M];
    int64_t at;
    GPUMAT_ALWAYS_INLINE T operator()(int m) const { return streams[m][at]; }
};

// ---- the menus: accumulator block shapes compiled for this instruction set ----------------

#if GPUMAT_ISA_WIDE
constexpr TileShape kForwardShapes[] = {{4, 2}, {4, 4}, {6, 2}, {6, 4}, {8, 1}, {8, 2},
                                        {12, 2}, {16, 1}, {24, 1}};
constexpr TileShape kInputShapes[] = {{4, 2}, {4, 4}, {6, 2}, {6, 4}, {8, 1}, {8, 2},
                                      {12, 2}, {16, 1}};
constexpr TileShape kWeightShapes[] = {{6, 4}, {4, 6}, {3, 8}, {2, 8}, {1, 12}};
constexpr TileShape kWeightTransposedShapes[] = {{8, 1}, {6, 2}, {6, 3}, {6, 4}, {4, 4}};
constexpr TileShape kForwardChannelShapes[] = {{8, 1}, {12, 1}, {16, 1}, {24, 1}, {8, 2},
                                               {12, 2}, {4, 4}, {6, 4}};
#else
constexpr TileShape kForwardShapes[] = {{4, 1}, {4, 2}, {4, 3}, {6, 2}, {8, 1}, {12, 1}};
constexpr TileShape kInputShapes[] = {{4, 1}, {4, 2}, {4, 3}, {6, 2}, {8, 1}, {12, 1}};
constexpr TileShape kWeightShapes[] = {{4, 3}, {3, 4}, {2, 6}, {6, 2}, {1, 8}};
constexpr TileShape kWeightTransposedShapes[] = {{8, 1}, {6, 2}, {4, 2}, {4, 3}};
constexpr TileShape kForwardChannelShapes[] = {{4, 1}, {8, 1}, {12, 1}, {4, 2}, {6, 2},
                                               {3, 4}};
#endif

// ---- phase planes ---------------------------------------------------------------------------

// planes (zeroed where the layout holds padding, which no image writes) <- image x (C x H x W)
template <class T>
GPUMAT_ISA_TARGET void fill_planes(const Plan &p, const T *GPUMAT_RESTRICT x,
                                   T *GPUMAT_RESTRICT planes) {
    const Geometry &g = p.g;
    const int64_t image_plane = g.height * g.width;
    if (p.phases == 1) {
        if (p.identity) {
            std::memcpy(planes, x, sizeof(T) * (size_t) (g.channels * image_plane));
            return;
        }
        for (int64_t c = 0; c < g.channels; ++c)
            for (int64_t h = 0; h < g.height; ++h) {
                const T *GPUMAT_RESTRICT source = x + c * image_plane + h * g.width;
                T *GPUMAT_RESTRICT target =
                    planes + c * p.channel_size + (h + g.pad_h) * p.cols + g.pad_w;
                for (int64_t w = 0; w < g.width; ++w)
                    target[w] = source[w];
            }
        return;
    }
    for (int64_t c = 0; c < g.channels; ++c)
        for (int64_t a = 0; a < g.stride_h; ++a)
            for (int64_t b = 0; b < g.stride_w; ++b) {
                T *target = planes + c * p.channel_size + (a * g.stride_w + b) * p.plane;
                const PhaseRange columns(b, g.stride_w, g.pad_w, g.width, p.cols);
                for (int64_t u = 0; u < p.rows; ++u) {
                    const int64_t h = u * g.stride_h + a - g.pad_h;
                    if (h < 0 || h >= g.height)
                        continue;
                    const T *source = x + c * image_plane + h * g.width + columns.first_input;
                    T *row = target + u * p.cols;
                    for (int64_t v = columns.begin; v < columns.end; ++v, source += g.stride_w)
                        row[v] = *source;
                }
            }
}

// image dx (C x H x W) <- planes: fill_planes' adjoint, the gradient of every input pixel
template <class T>
GPUMAT_ISA_TARGET void drain_planes(const Plan &p, const T *GPUMAT_RESTRICT planes,
                                    T *GPUMAT_RESTRICT dx) {
    const Geometry &g = p.g;
    const int64_t image_plane = g.height * g.width;
    if (p.phases == 1) {
        for (int64_t c = 0; c < g.channels; ++c)
            for (int64_t h = 0; h < g.height; ++h) {
                const T *GPUMAT_RESTRICT source =
                    planes + c * p.channel_size + (h + g.pad_h) * p.cols + g.pad_w;
                T *GPUMAT_RESTRICT target = dx + c * image_plane + h * g.width;
                for (int64_t w = 0; w < g.width; ++w)
                    target[w] = source[w];
            }
        return;
    }
    for (int64_t c = 0; c < g.channels; ++c)
        for (int64_t h = 0; h < g.height; ++h) {
            const int64_t hp = h + g.pad_h, a = hp % g.stride_h, u = hp / g.stride_h;
            T *target = dx + c * image_plane + h * g.width;
            if (u >= p.rows) {              // a row no output reads: no gradient
                std::fill(target, target + g.width, T(0));
                continue;
            }
            for (int64_t b = 0; b < g.stride_w; ++b) {
                const PhaseRange columns(b, g.stride_w, g.pad_w, g.width, p.cols);
                T *out = target + columns.first_input;
                const T *source = planes + c * p.channel_size +
                                  (a * g.stride_w + b) * p.plane + u * p.cols;
                for (int64_t v = columns.begin; v < columns.end; ++v, out += g.stride_w)
                    *out = source[v];
                // input columns of this phase beyond the plane: no output reads them
                for (int64_t w = columns.end * g.stride_w + b - g.pad_w; w < g.width;
                     w += g.stride_w)
                    target[w] = T(0);
            }
        }
}

// rows[o][oh * V + ow] <- dy[o][oh][ow] (the other entries of rows stay zero); rows are
// `pitch` apart
template <class T>
GPUMAT_ISA_TARGET void spread_rows(const Plan &p, const T *GPUMAT_RESTRICT dy, int64_t pitch,
                                   T *GPUMAT_RESTRICT rows) {
    const Geometry &g = p.g;
    for (int64_t o = 0; o < g.out_channels; ++o)
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
            const T *GPUMAT_RESTRICT source = dy + (o * g.out_h + oh) * g.out_w;
            T *GPUMAT_RESTRICT target = rows + o * pitch + oh * p.cols;
            for (int64_t ow = 0; ow < g.out_w; ++ow)
                target[ow] = source[ow];
        }
}

// ---- forward and backward-input: one block product ---------------------------------------------

// The rows of the block product: the planes shifted by each tap's offset (forward) ...
template <class T>
struct ShiftedRows {
    const T *base;
    const int64_t *offsets;
    GPUMAT_ALWAYS_INLINE const T *operator()(int64_t step) const { return base + offsets[step]; }
};

// ... or dy's rows, `pitch` apart (backward-input).
template <class T>
struct StridedRows {
    const T *base;
    int64_t pitch;
    GPUMAT_ALWAYS_INLINE const T *operator()(int64_t step) const { return base + step * pitch; }
};

// acc[m][v] = sum over steps s of panel[s][m] * rows(s)[v-th vector]
template <class T, int MR, int NV, class Rows>
GPUMAT_ALWAYS_INLINE void block_product(const T *GPUMAT_RESTRICT panel, int64_t steps,
                                        const Rows &rows, Vec<T> (&acc)[MR][NV]) {
    zero_block<T>(acc);
    for (int64_t step = 0; step < steps; ++step) {
        Vec<T> row[NV];
        load_row<T>(row, rows(step));
        add_outer<T>(acc, row, Consecutive<T>{panel + step * MR});
    }
}

// ---- forward --------------------------------------------------------------------------------

// tile[m][0, NR) = sum_k panel[k][m] * source[off[k] + (0, NR)]
template <class T, int MR, int NV>
GPUMAT_ALWAYS_INLINE void forward_tile(const T *GPUMAT_RESTRICT panel,
                                       const T *GPUMAT_RESTRICT source,
                                       const int64_t *GPUMAT_RESTRICT offsets, int64_t taps,
                                       T *GPUMAT_RESTRICT tile) {
    Vec<T> acc[MR][NV];
    block_product<T, MR, NV>(panel, taps, ShiftedRows<T>{source, offsets}, acc);
    store_block<T>(acc, tile);
}

template <class T, int MR, int NV>
GPUMAT_ISA_TARGET void forward_images(const ForwardJob<T> &job, int64_t first, int64_t last) {
    const Plan &p = *job.plan;
    const Geometry &g = p.g;
    constexpr int NR = NV * lanes<T>();
    T *planes = scratch<T>(0, (size_t) p.planes_allocated, true);
    alignas(64) T tile[MR * NR];
    const int64_t taps = p.taps, pixels = g.out_h * g.out_w;
    const int64_t blocks = (g.out_channels + MR - 1) / MR;
    for (int64_t n = first; n < last; ++n) {
        fill_planes(p, job.x + n * g.channels * g.height * g.width, planes);
        T *y = job.y + n * g.out_channels * pixels;
        for (int64_t t = 0; t < job.tiles; ++t)
            for (int64_t block = 0; block < blocks; ++block) {
                const T *panel = job.packed + block * taps * MR;
                const int rows = (int) std::min<int64_t>(MR, g.out_channels - block * MR);
                T *y_block = y + block * MR * pixels;
                forward_tile<T, MR, NV>(panel, planes + t * NR, job.offsets, taps, tile);
                for (int64_t s = job.segment_begin[t]; s < job.segment_begin[t + 1]; ++s) {
                    const Segment &seg = job.segments[s];
                    for (int m = 0; m < rows; ++m) {
                        T *to = y_block + m * pixels + seg.pixel;
                        const T *from = tile + m * NR + seg.lane;
                        if (job.bias == nullptr) {
                            std::memcpy(to, from, sizeof(T) * (size_t) seg.count);
                            continue;
                        }
                        const T b = job.bias[block * MR + m];
                        for (int64_t j = 0; j < seg.count; ++j)
                            to[j] = from[j] + b;
                    }
                }
            }
    }
}

// ---- small GEMMs ---------------------------------------------------------------------------

// out = alpha * op(A) @ op(B) + beta * C with op(A) packed in panels of MR rows and op(B) as
// K rows job.pitch apart (a whole number of tiles): the forward tile, its taps the rows of B.
template <class T, int MR, int NV>
GPUMAT_ISA_TARGET void gemm_blocks(const GemmJob<T> &job, int64_t first, int64_t last) {
    constexpr int NR = NV * lanes<T>();
    alignas(64) T tile[MR * NR];
    const int64_t tiles = job.pitch / NR;
    // tile index i: row block i / tiles, column tile i % tiles
    for (int64_t i = first; i < last; ++i) {
        const int64_t block = i / tiles, t = i % tiles;
        const T *panel = job.packed + block * job.k * MR;
        const int64_t rows = std::min<int64_t>(MR, job.m - block * MR);
        forward_tile<T, MR, NV>(panel, job.b + t * NR, job.offsets, job.k, tile);
        const int64_t columns = std::min<int64_t>(NR, job.n - t * NR);
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t at = (block * MR + r) * job.n + t * NR;
            const T *from = tile + r * NR;
            T *to = job.out + at;
            if (job.c == nullptr) {
                for (int64_t j = 0; j < columns; ++j)
                    to[j] = job.alpha * from[j];
            } else {
                const T *c = job.c + at;
                for (int64_t j = 0; j < columns; ++j)
                    to[j] = job.alpha * from[j] + job.beta * c[j];
            }
        }
    }
}

// ---- forward, vectorised along the output channels ------------------------------------------

// tile[p][0, NR) = sum_k panel[k][0, NR) * x[off[k] + p]: MP neighbouring pixels of an
// output row (those past its end read padding lanes and are dropped), NR output channels
template <class T, int MP, int NV>
GPUMAT_ALWAYS_INLINE void forward_channel_tile(const T *GPUMAT_RESTRICT panel,
                                               const T *GPUMAT_RESTRICT x,
                                               const int64_t *GPUMAT_RESTRICT offsets,
                                               int64_t taps, T *GPUMAT_RESTRICT tile) {
    Vec<T> acc[MP][NV];
    zero_block<T>(acc);
    for (int64_t k = 0; k < taps; ++k) {
        Vec<T> weights[NV];
        load_row<T>(weights, panel + k * NV * lanes<T>());
        add_outer<T>(acc, weights, Consecutive<T>{x + offsets[k]});
    }
    store_block<T>(acc, tile);
}

template <class T, int MP, int NV>
GPUMAT_ISA_TARGET void forward_channel_images(const ForwardJob<T> &job, int64_t first,
                                              int64_t last) {
    const Plan &p = *job.plan;
    const Geometry &g = p.g;
    constexpr int NR = NV * lanes<T>();
    T *planes = scratch<T>(0, (size_t) p.planes_allocated, true);
    alignas(64) T tile[MP * NR];
    const int64_t taps = p.taps, pixels = g.out_h * g.out_w;
    const int64_t blocks = (g.out_channels + NR - 1) / NR;
    for (int64_t n = first; n < last; ++n) {
        fill_planes(p, job.x + n * g.channels * g.height * g.width, planes);
        T *y = job.y + n * g.out_channels * pixels;
        for (int64_t oh = 0; oh < g.out_h; ++oh)
            for (int64_t ow = 0; ow < g.out_w; ow += MP) {
                const int64_t count = std::min<int64_t>(MP, g.out_w - ow);
                const T *x = planes + oh * p.cols + ow;
                for (int64_t block = 0; block < blocks; ++block) {
                    forward_channel_tile<T, MP, NV>(job.packed + block * taps * NR, x,
                                                    job.offsets, taps, tile);
                    const int64_t channels = std::min<int64_t>(NR, g.out_channels - block * NR);
                    T *out = y + block * NR * pixels + oh * g.out_w + ow;
                    for (int64_t o = 0; o < channels; ++o) {
                        const T b = job.bias != nullptr ? job.bias[block * NR + o] : T(0);
                        if (job.bias == nullptr) {
                            for (int64_t m = 0; m < count; ++m)
                                out[o * pixels + m] = tile[m * NR + o];
                        } else {
                            for (int64_t m = 0; m < count; ++m)
                                out[o * pixels + m] = tile[m * NR + o] + b;
                        }
                    }
                }
            }
    }
}

// ---- backward-input -------------------------------------------------------------------------

// planes[off[k_m] + (0, NR)] += sum_o panel[o][m] * rows[o][(0, NR)] for the block's rows
template <class T, int MR, int NV>
GPUMAT_ALWAYS_INLINE void input_tile(const T *GPUMAT_RESTRICT panel,
                                     const T *GPUMAT_RESTRICT rows, int64_t pitch,
                                     int64_t channels, const int64_t *GPUMAT_RESTRICT offsets,
                                     int valid, T *planes) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    V acc[MR][NV];
    block_product<T, MR, NV>(panel, channels, StridedRows<T>{rows, pitch}, acc);
    GPUMAT_UNROLL
    for (int m = 0; m < MR; ++m) {
        if (m < valid) {
            T *target = planes + offsets[m];
            GPUMAT_UNROLL
            for (int v = 0; v < NV; ++v)
                store(target + v * W, load<V>(target + v * W) + acc[m][v]);
        }
    }
}

template <class T, int MR, int NV>
GPUMAT_ISA_TARGET void input_images(const InputJob<T> &job, int64_t first, int64_t last) {
    const Plan &p = *job.plan;
    const Geometry &g = p.g;
    constexpr int NR = NV * lanes<T>();
    T *planes = scratch<T>(0, (size_t) p.planes_allocated, false);
    T *rows = scratch<T>(1, (size_t) (g.out_channels * job.pitch), true);
    const int64_t taps = p.taps;
    const int64_t blocks = (taps + MR - 1) / MR;
    for (int64_t n = first; n < last; ++n) {
        spread_rows(p, job.dy + n * g.out_channels * g.out_h * g.out_w, job.pitch, rows);
        std::memset(planes, 0, sizeof(T) * (size_t) p.planes_allocated);
        for (int64_t t = 0; t < job.tiles; ++t)
            for (int64_t block = 0; block < blocks; ++block) {
                const T *panel = job.packed + block * g.out_channels * MR;
                const int valid = (int) std::min<int64_t>(MR, taps - block * MR);
                input_tile<T, MR, NV>(panel, rows + t * NR, job.pitch, g.out_channels,
                                      job.offsets + block * MR, valid, planes + t * NR);
            }
        drain_planes(p, planes, job.dx + n * g.channels * g.height * g.width);
    }
}

// ---- backward-weight, vectorised along the pixels -------------------------------------------

// sums[mo][mk] (vectors) += rows[mo][q] * planes[off[k_mk] + q] over the q of `vectors` vectors
template <class T, int MO, int MK>
GPUMAT_ALWAYS_INLINE void weight_tile(const T *GPUMAT_RESTRICT rows, int64_t pitch,
                                      const T *GPUMAT_RESTRICT planes,
                                      const int64_t *GPUMAT_RESTRICT offsets, int64_t vectors,
                                      T *GPUMAT_RESTRICT sums) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    V acc[MO][MK];
    const T *a[MO];
    const T *b[MK];
    GPUMAT_UNROLL
    for (int mo = 0; mo < MO; ++mo)
        a[mo] = rows + mo * pitch;
    GPUMAT_UNROLL
    for (int mk = 0; mk < MK; ++mk)
        b[mk] = planes + offsets[mk];
    load_block<T>(acc, sums);
    for (int64_t i = 0; i < vectors * W; i += W) {
        V column[MK];
        GPUMAT_UNROLL
        for (int mk = 0; mk < MK; ++mk)
            column[mk] = load<V>(b[mk] + i);
        GPUMAT_UNROLL
        for (int mo = 0; mo < MO; ++mo) {
            const V row = load<V>(a[mo] + i);
            GPUMAT_UNROLL
            for (int mk = 0; mk < MK; ++mk)
                acc[mo][mk] += row * column[mk];
        }
    }
    store_block<T>(acc, sums);
}

// job.partial[chunk] (O x K) = the weight gradient of images [first, last)
template <class T, int MO, int MK>
GPUMAT_ISA_TARGET void weight_images(const WeightJob<T> &job, int64_t first, int64_t last,
                                     T *partial) {
    const Plan &p = *job.plan;
    const Geometry &g = p.g;
    constexpr int W = lanes<T>();
    const int64_t taps = p.taps;
    const int64_t o_blocks = (g.out_channels + MO - 1) / MO, k_blocks = (taps + MK - 1) / MK;
    const int64_t tile_size = MO * MK * W;
    T *planes = scratch<T>(0, (size_t) p.planes_allocated, true);
    // O rows of dy, plus zero rows up to a whole block
    T *rows = scratch<T>(1, (size_t) (o_blocks * MO * job.pitch), true);
    T *sums = scratch<T>(2, (size_t) (o_blocks * k_blocks * tile_size), true);
    const int64_t vectors = job.pitch / W;
    for (int64_t n = first; n < last; ++n) {
        fill_planes(p, job.x + n * g.channels * g.height * g.width, planes);
        spread_rows(p, job.dy + n * g.out_channels * g.out_h * g.out_w, job.pitch, rows);
        for (int64_t ob = 0; ob < o_blocks; ++ob)
            for (int64_t kb = 0; kb < k_blocks; ++kb)
                weight_tile<T, MO, MK>(rows + ob * MO * job.pitch, job.pitch, planes,
                                       job.offsets + kb * MK, vectors,
                                       sums + (ob * k_blocks + kb) * tile_size);
    }
    for (int64_t ob = 0; ob < o_blocks; ++ob)
        for (int64_t kb = 0; kb < k_blocks; ++kb) {
            const T *tile = sums + (ob * k_blocks + kb) * tile_size;
            const int64_t o_end = std::min<int64_t>(MO, g.out_channels - ob * MO);
            const int64_t k_end = std::min<int64_t>(MK, taps - kb * MK);
            for (int64_t mo = 0; mo < o_end; ++mo)
                for (int64_t mk = 0; mk < k_end; ++mk) {
                    const T *lanes_of = tile + (mo * MK + mk) * W;
                    T total = 0;
                    for (int i = 0; i < W; ++i)
                        total += lanes_of[i];
                    partial[(ob * MO + mo) * taps + kb * MK + mk] = total;
                }
        }
}

// ---- backward-weight, vectorised along the output channels ----------------------------------

// sums[mk][0, NV vectors) += dyt[p][...] * planes[off[k_mk] + q(p)] over the output pixels
template <class T, int MK, int NV>
GPUMAT_ALWAYS_INLINE void weight_transposed_tile(const Plan &p, const T *GPUMAT_RESTRICT dyt,
                                                 int64_t pitch, const T *GPUMAT_RESTRICT planes,
                                                 const int64_t *GPUMAT_RESTRICT offsets,
                                                 int64_t row_begin, int64_t row_end,
                                                 T *GPUMAT_RESTRICT sums) {
    const Geometry &g = p.g;
    Vec<T> acc[MK][NV];
    const T *b[MK];
    GPUMAT_UNROLL
    for (int mk = 0; mk < MK; ++mk)
        b[mk] = planes + offsets[mk];
    load_block<T>(acc, sums);
    for (int64_t oh = row_begin; oh < row_end; ++oh) {
        const T *d = dyt + oh * g.out_w * pitch;
        const int64_t q0 = oh * p.cols;
        for (int64_t ow = 0; ow < g.out_w; ++ow, d += pitch) {
            Vec<T> row[NV];
            load_row<T>(row, d);
            add_outer<T>(acc, row, Streams<T, MK>{b, q0 + ow});
        }
    }
    store_block<T>(acc, sums);
}

// job.partial[chunk] (K x O, rows `pitch` apart) = the weight gradient of images [first, last)
template <class T, int MK, int NV>
GPUMAT_ISA_TARGET void weight_transposed_images(const WeightJob<T> &job, int64_t first,
                                                int64_t last, T *partial) {
    const Plan &p = *job.plan;
    const Geometry &g = p.g;
    constexpr int NR = NV * lanes<T>();
    const int64_t taps = p.taps, pixels = g.out_h * g.out_w;
    const int64_t k_blocks = (taps + MK - 1) / MK, o_blocks = job.pitch / NR;
    T *planes = scratch<T>(0, (size_t) p.planes_allocated, true);
    T *dyt = scratch<T>(1, (size_t) (pixels * job.pitch), true);
    T *sums = scratch<T>(2, (size_t) (k_blocks * MK * job.pitch), true);
    for (int64_t n = first; n < last; ++n) {
        fill_planes(p, job.x + n * g.channels * g.height * g.width, planes);
        const T *dy = job.dy + n * g.out_channels * pixels;
        for (int64_t o = 0; o < g.out_channels; ++o)
            for (int64_t i = 0; i < pixels; ++i)
                dyt[i * job.pitch + o] = dy[o * pixels + i];
        const int64_t run = weight_transposed_rows(g, job.pitch);
        for (int64_t row = 0; row < g.out_h; row += run)
            for (int64_t kb = 0; kb < k_blocks; ++kb)
                for (int64_t ob = 0; ob < o_blocks; ++ob)
                    weight_transposed_tile<T, MK, NV>(p, dyt + ob * NR, job.pitch, planes,
                                                      job.offsets + kb * MK, row,
                                                      std::min(g.out_h, row + run),
                                                      sums + (kb * o_blocks + ob) * MK * NR);
    }
    for (int64_t kb = 0; kb < k_blocks; ++kb)
        for (int64_t ob = 0; ob < o_blocks; ++ob) {
            const T *tile = sums + (kb * o_blocks + ob) * MK * NR;
            const int64_t k_end = std::min<int64_t>(MK, taps - kb * MK);
            const int64_t o_end = std::min<int64_t>(NR, g.out_channels - ob * NR);
            for (int64_t mk = 0; mk < k_end; ++mk)
                for (int64_t i = 0; i < o_end; ++i)
                    partial[(ob * NR + i) * taps + kb * MK + mk] = tile[mk * NR + i];
        }
}

// ---- the table direct_conv.hpp dispatches through -------------------------------------------

template <class T, size_t... I>
constexpr std::array<ForwardFunction<T>, sizeof...(I)> forward_table(std::index_sequence<I...>) {
    return {{&forward_images<T, kForwardShapes[I].first, kForwardShapes[I].second>...}};
}

template <class T, size_t... I>
constexpr std::array<InputFunction<T>, sizeof...(I)> input_table(std::index_sequence<I...>) {
    return {{&input_images<T, kInputShapes[I].first, kInputShapes[I].second>...}};
}

template <class T, size_t... I>
constexpr std::array<WeightFunction<T>, sizeof...(I)> weight_table(std::index_sequence<I...>) {
    return {{&weight_images<T, kWeightShapes[I].first, kWeightShapes[I].second>...}};
}

template <class T, size_t... I>
constexpr std::array<WeightFunction<T>, sizeof...(I)> weight_transposed_table(
    std::index_sequence<I...>) {
    return {{&weight_transposed_images<T, kWeightTransposedShapes[I].first,
                                       kWeightTransposedShapes[I].second>...}};
}

template <class T, size_t... I>
constexpr std::array<ForwardFunction<T>, sizeof...(I)> forward_channel_table(
    std::index_sequence<I...>) {
    return {{&forward_channel_images<T, kForwardChannelShapes[I].first,
                                     kForwardChannelShapes[I].second>...}};
}

template <class T, size_t... I>
constexpr std::array<GemmFunction<T>, sizeof...(I)> gemm_table(std::index_sequence<I...>) {
    return {{&gemm_blocks<T, kForwardShapes[I].first, kForwardShapes[I].second>...}};
}

template <class T, size_t N>
constexpr size_t count_of(const T (&)[N]) {
    return N;
}

template <class T>
Kernels<T> kernels(const char *name) {
    static const auto forward =
        forward_table<T>(std::make_index_sequence<count_of(kForwardShapes)>());
    static const auto input = input_table<T>(std::make_index_sequence<count_of(kInputShapes)>());
    static const auto weight =
        weight_table<T>(std::make_index_sequence<count_of(kWeightShapes)>());
    static const auto transposed = weight_transposed_table<T>(
        std::make_index_sequence<count_of(kWeightTransposedShapes)>());
    static const auto forward_channels = forward_channel_table<T>(
        std::make_index_sequence<count_of(kForwardChannelShapes)>());
    static const auto gemm = gemm_table<T>(std::make_index_sequence<count_of(kForwardShapes)>());
    Kernels<T> k;
    k.name = name;
    k.gemm = {kForwardShapes, gemm.data(), gemm.size()};
    k.forward_channels = {kForwardChannelShapes, forward_channels.data(),
                          forward_channels.size()};
    k.lanes = lanes<T>();
    k.forward = {kForwardShapes, forward.data(), forward.size()};
    k.input = {kInputShapes, input.data(), input.size()};
    k.weight = {kWeightShapes, weight.data(), weight.size()};
    k.weight_transposed = {kWeightTransposedShapes, transposed.data(), transposed.size()};
    return k;
}

#undef GPUMAT_ALWAYS_INLINE

}  // namespace GPUMAT_ISA
}  // namespace direct
}  // namespace gpumat
