/* XNOR-popcount kernels for binarised networks, one source for OpenCL C and CUDA C++.
 *
 * Bit layout (every backend): a packed row of n signs is ceil(n / 32) uint32 words; bit j
 * (LSB first) of word w is 1 iff x[32 w + j] >= 0 (NaN -> 0, -0.0 -> 1) and stands for +1,
 * a 0 bit for -1.  For two packed rows of n signs the dot product of the +-1 vectors is
 * n - 2 popcount(a XOR b).  The padding bits of a last word are masked off here (the tail
 * mask of n, on both operands), so callers may leave garbage in them.
 *
 * Entry points:
 *   xnor_pack_conv_input(const float* x, u32* out, i64 N, i64 C, i64 HW, i64 Wc)
 *     x (N, C, H, W) float32 -> out (N, H, W, Wc) uint32, Wc = ceil(C / 32): the channel
 *     signs of every pixel, read straight from NCHW (bit j of word w is
 *     x[n, 32 w + j, h, w] >= 0).  A grid-stride loop over N * Wc * ceil(HW / XNOR_PACK_VW)
 *     runs of consecutive pixels, so any grid covers them; consecutive work-items read
 *     consecutive pixels (coalesced on a GPU, whole vectors on a CPU).
 *   xnor_pack_conv_input_fused(const float* x, u32* out, float* mean, const float* bn_mean,
 *                              const float* inv_std, const float* bn_weight,
 *                              const float* bn_bias, i64 N, C, HW, Wc, int flags)
 *     the same words, with (flag XNOR_PACK_MEAN) mean (N, 1, H, W) float32: the channel
 *     mean of |x| per pixel (float32 sum in channel order, divided by C), from the same
 *     reads; with XNOR_PACK_AFFINE, of x after an evaluation batch norm, folded into the
 *     reads (see below).
 *   xnor_window_mean(const float* mean, float* k, i64 N, int H, W, kh, kw, sh, sw, ph, pw,
 *                    Ho, Wo)
 *     XNOR-Net's K (N, Ho, Wo) from mean (N, 1, H, W): per output pixel the sum of mean
 *     over the kernel taps inside the image, in tap order (kernel row by kernel row) from
 *     0.0f, divided by kh kw (the padding's zeros counted in the average): the bits of the
 *     cpu backend's kernel and of gpumat.native.window_mean_numpy.  A grid-stride loop over
 *     the N Ho output rows.
 *   xnor_conv2d(const u32* x, const u32* w, int* out, int n0, N, H, W, Wc, C, O, kh, kw,
 *               sh, sw, ph, pw, Ho, Wo, i64 out_sn, i64 out_so, i64 out_sp, int out_float,
 *               const float* pixel_scale, const float* filter_scale, const float* bias,
 *               const float* residual, int epilogue)
 *     x (.., H, W, Wc) packed images, w (O, kh, kw, Wc) packed filters; for every image n of
 *     n0 .. n0 + N - 1, filter o and output pixel (oh, ow):
 *       y = sum over the taps (i, j) whose input pixel (oh sh - ph + i, ow sw - pw + j)
 *           lies inside the image of  C - 2 popcount(x[n, ih, iw, :] XOR w[o, i, j, :])
 *     stored at out[n out_sn + o out_so + (oh Wo + ow) out_sp], as int32, or as float32 bits
 *     when out_float != 0 (exact: |y| <= kh kw C, below 2^24 for any real layer).
 *     The epilogue (float results only; flags XNOR_PIXEL_SCALE | XNOR_FILTER_SCALE |
 *     XNOR_BIAS | XNOR_RESIDUAL, 0 for none; the pointers of clear flags are never read and
 *     may be null) stores (((y * pixel_scale[(n0 + n) Ho Wo + oh Wo + ow]) *
 *     filter_scale[o]) + bias[o]) + residual[i] instead, i the result's own index in out,
 *     each operation rounded to float32 on its own (no fused multiply-add), so it is
 *     bit-identical to NumPy's float32 (((y * K) * alpha) + bias) + r on the plain result:
 *     a residual block's addition made as the results are stored.  With XNOR_WINDOW_MEAN
 *     as well as XNOR_PIXEL_SCALE, pixel_scale is the channel mean of |x| (N, 1, H, W) and
 *     each pixel's scale is its K, summed over the taps inside the image in tap order and
 *     divided by kh kw exactly as xnor_window_mean does (the same bits), so a whole
 *     XNOR-Net layer is two launches: the packing with the means, and this one.
 *     Skipping the out-of-image taps is exact, not an approximation: the binarised
 *     convolution with ordinary zero padding, conv2d(b(x), b(w)) with b(v) = +1 if v >= 0
 *     else -1, multiplies the padding zeros by weights, so those taps add exactly 0.
 *     Binary data has no zero to pad with; summing over the valid taps only is the exact
 *     correction.  It is computed as valid_taps * C - 2 * (popcounts over the valid taps).
 *     The XNOR gemm is the 1 x 1 case: out[m, n] = k - 2 popcount(a[m] XOR b[n]) is the
 *     convolution of one 1 x P "image" of packed rows with F packed "filters" (either
 *     operand may play either part; the output strides put the result in (M, N) order).
 *     The launch is a grid of (ceil(N Ho Wo / (WG PB)) WG) x ceil(O / OB) work-items in
 *     groups of (XNOR_WG, 1).
 *
 * How xnor_conv2d works.  A work-group takes XNOR_WG * XNOR_PB output pixels (flattened over
 * n, oh, ow) and XNOR_OB = XNOR_NV * XNOR_VW filters.  It stages the filters in local memory
 * transposed, one row per (tap, word) holding that word of all OB filters (so one load gives
 * VW filters, and all work-items read the same address: a broadcast), with a small table
 * saying where each row's input word lies relative to a pixel.  For 16 or fewer channels a
 * row packs floor(32 / C) taps side by side, so a 3 x 3 filter of 16 channels is 5 words,
 * not 9.  Filters longer than the stage go through it in chunks.  Each work-item then runs,
 * pixel by pixel, over the rows: it builds the pixel's input word for the row (scalar) and
 * XORs it into NV vectors of VW filters.  Pixels whose taps all lie inside the image take a
 * path without any edge test; the others drop out-of-image taps by masking.
 *
 * Two tunings of that one algorithm:
 *   GPUs (and CUDA): XNOR_VW = 1, work-items interleave their pixels (XNOR_CONTIGUOUS = 0)
 *     so a warp's input loads coalesce, the popcount instruction counts each word.
 *   CPUs (PoCL): XNOR_VW = 16 filters per vector, each work-item takes a run of consecutive
 *     pixels.  PoCL's target has no vector popcount (it would be 16 scalar popcnts with lane
 *     shuffles), so words are counted by shifts and masks, eight words at a time through
 *     carry-save adders (Harley-Seal) with one count per eight (XNOR_CSA); and each 16
 *     pixels x 16 filters of results are transposed in registers so that every filter's
 *     16 adjacent outputs leave in one vector store.
 */
#ifndef GPUMAT_XNOR_H
#define GPUMAT_XNOR_H

#include "dialect.h"

/* ---- tunables (preprocessor defines; the launchers pass the values they plan with) ---- */
#ifndef XNOR_VW
#define XNOR_VW 1            /* filters per vector: 1 (any dialect) or 2, 4, 8, 16 (OpenCL) */
#endif
#ifndef XNOR_NV
#define XNOR_NV 8            /* filter vectors per work-item: XNOR_OB = NV * VW filters */
#endif
#ifndef XNOR_PB
#define XNOR_PB 4            /* output pixels per work-item */
#endif
#ifndef XNOR_WG
#define XNOR_WG 64           /* work-items per work-group (the launch must use it) */
#endif
#ifndef XNOR_LOCAL_WORDS
#define XNOR_LOCAL_WORDS 4096 /* capacity of the local filter stage in words (16 KiB) */
#endif
#ifndef XNOR_MAX_ROWS
#define XNOR_MAX_ROWS 512    /* most stage rows (bounds the row table when OB is small) */
#endif
#ifndef XNOR_FLAT_STAGE
#define XNOR_FLAT_STAGE 1    /* 1: stage with all work-items over a flat index (GPUs);
                                0: split the filters over work-items (no divisions; CPUs) */
#endif
#ifndef XNOR_CSA
#define XNOR_CSA (XNOR_VW > 1) /* 1: bit counts by shifts, masks and carry-save adders
                                  (CPUs); 0: one popcount instruction per word (GPUs) */
#endif
#ifndef XNOR_CONTIGUOUS
#define XNOR_CONTIGUOUS (XNOR_VW > 1) /* 1: a work-item's pixels are consecutive (CPUs);
                                         0: work-items interleave (coalesced on GPUs) */
#endif
#ifndef XNOR_PACK_VW
#define XNOR_PACK_VW 1       /* pixels per work-item of xnor_pack_conv_input (vector width) */
#endif

#define XNOR_OB (XNOR_NV * XNOR_VW)

#if XNOR_LOCAL_WORDS < XNOR_OB
  #error "XNOR_LOCAL_WORDS must hold at least one word of each of the XNOR_OB filters"
#endif

#define XNOR_CAT_(a, b) a##b
#define XNOR_CAT(a, b) XNOR_CAT_(a, b)
#define XNOR_UNROLL _Pragma("unroll")
/* xnor_conv2d's loops over a work-item's XNOR_PB pixels: unrolled where a work-item holds
 * one filter per vector (GPUs), so that its per-pixel arrays (corners, totals, K) are
 * indexed by constants and live in registers, not in a stack frame in local memory */
#if XNOR_VW == 1
  #define XNOR_PIXEL_UNROLL XNOR_UNROLL
#else
  #define XNOR_PIXEL_UNROLL
#endif

/* The epilogue's float32 products and sums are rounded one by one, never contracted into
 * fused multiply-adds, so that they equal NumPy's float32 ((y * K) * alpha) + bias bit for
 * bit: OpenCL by the FP_CONTRACT pragma (its default lets a compiler contract a * b + c),
 * CUDA (whose compilers contract by default, --fmad=true) by the round-to-nearest
 * intrinsics, which are never contracted. */
#if defined(GPUMAT_CUDA)
  #if XNOR_VW != 1 || XNOR_PACK_VW != 1
    #error "the CUDA build of xnor.h supports XNOR_VW = XNOR_PACK_VW = 1 only"
  #endif
  #define XNOR_FLOAT_BITS(v) __float_as_int(v)
  #define XNOR_BITS_FLOAT(v) __int_as_float(v)
  #define XNOR_KERNEL(wg) extern "C" __global__ void __launch_bounds__(wg)
  #define XNOR_MUL_RN(a, b) __fmul_rn(a, b)
  #define XNOR_ADD_RN(a, b) __fadd_rn(a, b)
  #define XNOR_FABS(v) fabsf(v)
#else
  #pragma OPENCL FP_CONTRACT OFF
  #define XNOR_FLOAT_BITS(v) as_int(v)
  #define XNOR_BITS_FLOAT(v) as_float(v)
  #define XNOR_KERNEL(wg) __kernel __attribute__((reqd_work_group_size(wg, 1, 1))) void
  #define XNOR_MUL_RN(a, b) ((a) * (b))
  #define XNOR_ADD_RN(a, b) ((a) + (b))
  #define XNOR_FABS(v) fabs(v)
#endif

/* xnor_conv2d's epilogue flags (its `epilogue` argument; a set flag needs out_float) */
#define XNOR_PIXEL_SCALE 1
#define XNOR_FILTER_SCALE 2
#define XNOR_BIAS 4
#define XNOR_RESIDUAL 8
#define XNOR_WINDOW_MEAN 16   /* with XNOR_PIXEL_SCALE: pixel_scale holds the channel means
                               * (N, 1, H, W) and the pixel scale is K, made here as
                               * xnor_window_mean makes it (one launch fewer a layer) */

/* xnor_pack_conv_input_fused's flags */
#define XNOR_PACK_MEAN 1      /* write the channel mean of |x| */
#define XNOR_PACK_AFFINE 2    /* batch-normalize x first (bn_mean, inv_std) */
#define XNOR_PACK_WEIGHT 4    /* ... with a weight (the scale is inv_std * bn_weight) */
#define XNOR_PACK_BIAS 8      /* ... and a bias */

/* vectors of XNOR_VW filter words */
#if XNOR_VW == 1
  typedef u32 xnor_words;
  typedef int xnor_ints;
  typedef float xnor_floats;
  #define XNOR_FLOATS(v) ((float)(v))
  #define XNOR_LOAD_FLOATS(p) (*(p))
  #define XNOR_AS_INTS_F(f) XNOR_FLOAT_BITS(f)
  #define XNOR_LOAD_WORDS(p) (*(p))
  #define XNOR_AS_INTS(v) ((int)(v))
  #define XNOR_INTS(v) ((int)(v))
  #define XNOR_FLOAT_BITS_V(y) XNOR_FLOAT_BITS((float)(y))
  #define XNOR_STORE_LANES(y, lanes) ((lanes)[0] = (y))
#else
  typedef XNOR_CAT(uint, XNOR_VW) xnor_words;
  typedef XNOR_CAT(int, XNOR_VW) xnor_ints;
  typedef XNOR_CAT(float, XNOR_VW) xnor_floats;
  #define XNOR_FLOATS(v) XNOR_CAT(convert_float, XNOR_VW)(v)
  #define XNOR_LOAD_FLOATS(p) XNOR_CAT(vload, XNOR_VW)(0, p)
  #define XNOR_AS_INTS_F(f) XNOR_CAT(as_int, XNOR_VW)(f)
  #define XNOR_LOAD_WORDS(p) XNOR_CAT(vload, XNOR_VW)(0, p)
  #define XNOR_AS_INTS(v) XNOR_CAT(as_int, XNOR_VW)(v)
  #define XNOR_INTS(v) ((xnor_ints)(v))
  #define XNOR_FLOAT_BITS_V(y) XNOR_CAT(as_int, XNOR_VW)(XNOR_CAT(convert_float, XNOR_VW)(y))
  /* lanes leave through a private array: one vector store, then scalar loads, cheaper on
   * CPUs than an extract per lane */
  #define XNOR_STORE_LANES(y, lanes) XNOR_CAT(vstore, XNOR_VW)(y, 0, lanes)
#endif

/* vectors of XNOR_PACK_VW consecutive pixels */
#if XNOR_PACK_VW == 1
  typedef u32 xnor_pack_words;
  typedef float xnor_pack_floats;
  #define XNOR_PACK_STORE_FLOATS(v, p) (*(p) = (v))
  #define XNOR_PACK_LOAD(p) (*(p))
  #define XNOR_PACK_NONNEG(v) ((u32)((v) >= 0.0f))
  #define XNOR_PACK_LANE(v, l) (v)
#else
  typedef XNOR_CAT(uint, XNOR_PACK_VW) xnor_pack_words;
  typedef XNOR_CAT(float, XNOR_PACK_VW) xnor_pack_floats;
  #define XNOR_PACK_STORE_FLOATS(v, p) XNOR_CAT(vstore, XNOR_PACK_VW)(v, 0, p)
  #define XNOR_PACK_LOAD(p) XNOR_CAT(vload, XNOR_PACK_VW)(0, p)
  /* a vector comparison gives -1 (all bits) for true: its top bit is the sign bit we want */
  #define XNOR_PACK_NONNEG(v) (XNOR_CAT(as_uint, XNOR_PACK_VW)((v) >= 0.0f) >> 31)
  #define XNOR_PACK_LANE(v, l) (v)[l]
#endif

INLINE u32 xnor_tail_mask(int bits)
{
    const int r = bits & 31;
    return r ? ((1u << r) - 1u) : 0xffffffffu;
}

#if XNOR_CSA
/* Bit counting by shifts and masks.  LLVM lowers popcount(uint16) on AVX-512 CPUs without
 * VPOPCNTDQ (PoCL's skylake-avx512 target) to 16 scalar popcnts with lane extracts and
 * inserts, and popcount(uchar16) no better (both about 5x slower than this on PoCL 3.1);
 * these stay in vector registers.  xnor_byte_counts leaves each byte's count
 * (0..8) in that byte, so counts of several words add up per byte before the one
 * horizontal step, xnor_sum_bytes (bytes up to 255). */
INLINE xnor_words xnor_byte_counts(xnor_words v)
{
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    return (v + (v >> 4)) & 0x0f0f0f0fu;
}

INLINE xnor_words xnor_sum_bytes(xnor_words v)
{
    v = (v & 0x00ff00ffu) + ((v >> 8) & 0x00ff00ffu);
    return (v + (v >> 16)) & 0xffffu;
}

/* carry-save adder, bitwise: 2 * high + low = a + b + c (low may alias a) */
#define XNOR_CARRY_SAVE(high, low, a, b, c)                                         \
    do {                                                                            \
        const xnor_words u_ = (a) ^ (b);                                            \
        high = ((a) & (b)) | (u_ & (c));                                            \
        low = u_ ^ (c);                                                             \
    } while (0)
#endif

/* The CPU layout's store path: a 16 x 16 block of outputs, (pixels, filters), transposed
 * in registers, so that each filter's 16 pixel outputs, adjacent in memory, leave in one
 * vector store instead of 16 scattered scalar ones.  Needs 16-filter vectors and
 * work-items whose pixels are consecutive. */
#ifndef XNOR_TRANSPOSED_STORE
  #define XNOR_TRANSPOSED_STORE (XNOR_VW == 16 && XNOR_CONTIGUOUS && XNOR_PB % 16 == 0)
#endif
#if XNOR_TRANSPOSED_STORE
#define XNOR_LO32 (uint16)(0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29)
#define XNOR_HI32 (uint16)(2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31)
#define XNOR_LO64 (uint16)(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29)
#define XNOR_HI64 (uint16)(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31)
#define XNOR_EVEN128 (uint16)(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27)
#define XNOR_ODD128 (uint16)(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31)
/* a[i] becomes column i of the 16 x 16 matrix whose rows were a[0..15]: the usual four
 * rounds (32-bit and 64-bit unpacks within 128-bit lanes, then two 128-bit lane shuffles),
 * each shuffle one AVX-512 instruction */
#define XNOR_TRANSPOSE16(a)                                                         \
    do {                                                                            \
        int16 t_[16];                                                               \
        XNOR_UNROLL                                                                 \
        for (int i_ = 0; i_ < 8; ++i_) {                                            \
            t_[2 * i_] = shuffle2((a)[2 * i_], (a)[2 * i_ + 1], XNOR_LO32);         \
            t_[2 * i_ + 1] = shuffle2((a)[2 * i_], (a)[2 * i_ + 1], XNOR_HI32);     \
        }                                                                           \
        XNOR_UNROLL                                                                 \
        for (int i_ = 0; i_ < 4; ++i_) {                                            \
            (a)[4 * i_] = shuffle2(t_[4 * i_], t_[4 * i_ + 2], XNOR_LO64);          \
            (a)[4 * i_ + 1] = shuffle2(t_[4 * i_], t_[4 * i_ + 2], XNOR_HI64);      \
            (a)[4 * i_ + 2] = shuffle2(t_[4 * i_ + 1], t_[4 * i_ + 3], XNOR_LO64);  \
            (a)[4 * i_ + 3] = shuffle2(t_[4 * i_ + 1], t_[4 * i_ + 3], XNOR_HI64);  \
        }                                                                           \
        XNOR_UNROLL                                                                 \
        for (int i_ = 0; i_ < 8; ++i_) {                                            \
            const int j_ = i_ < 4 ? i_ : i_ + 4;                                    \
            t_[j_] = shuffle2((a)[j_], (a)[j_ + 4], XNOR_EVEN128);                  \
            t_[j_ + 4] = shuffle2((a)[j_], (a)[j_ + 4], XNOR_ODD128);               \
        }                                                                           \
        XNOR_UNROLL                                                                 \
        for (int i_ = 0; i_ < 8; ++i_) {                                            \
            (a)[i_] = shuffle2(t_[i_], t_[i_ + 8], XNOR_EVEN128);                   \
            (a)[i_ + 8] = shuffle2(t_[i_], t_[i_ + 8], XNOR_ODD128);                \
        }                                                                           \
    } while (0)
#endif

/* ---- pack_conv_input ------------------------------------------------------------------ */

KERNEL void xnor_pack_conv_input(GLOBAL const float* RESTRICT x, GLOBAL u32* RESTRICT out,
                                 i64 N, i64 C, i64 HW, i64 Wc)
{
    const i64 blocks = (HW + XNOR_PACK_VW - 1) / XNOR_PACK_VW;
    const i64 total = N * Wc * blocks;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        const i64 rest = t / blocks;
        const i64 p0 = (t - rest * blocks) * XNOR_PACK_VW;
        const i64 n = rest / Wc;
        const i64 cw = rest - n * Wc;
        GLOBAL const float* src = x + (n * C + 32 * cw) * HW + p0;
        GLOBAL u32* dst = out + (n * HW + p0) * Wc + cw;
        const i64 count = C - 32 * cw;
        if (p0 + XNOR_PACK_VW <= HW) {
            xnor_pack_words word = 0;
            if (count >= 32) {
                XNOR_UNROLL
                for (int j = 0; j < 32; ++j)
                    word |= XNOR_PACK_NONNEG(XNOR_PACK_LOAD(src + j * HW)) << j;
            } else {
                for (int j = 0; j < (int)count; ++j)
                    word |= XNOR_PACK_NONNEG(XNOR_PACK_LOAD(src + j * HW)) << j;
            }
            XNOR_UNROLL
            for (int l = 0; l < XNOR_PACK_VW; ++l)
                dst[l * Wc] = XNOR_PACK_LANE(word, l);
        } else {             /* the pixels past the last whole vector of a plane */
            for (i64 p = 0; p < HW - p0; ++p) {
                u32 word = 0;
                const int bits = count >= 32 ? 32 : (int)count;
                for (int j = 0; j < bits; ++j)
                    word |= (u32)(src[p + j * HW] >= 0.0f) << j;
                dst[p * Wc] = word;
            }
        }
    }
}

/* xnor_pack_conv_input_fused(x, out, mean, bn_mean, inv_std, bn_weight, bn_bias, N, C, HW,
 * Wc, flags): xnor_pack_conv_input's words, and with XNOR_PACK_MEAN mean (N, 1, H, W)
 * float32 = the mean over channels of |x[n, :, h, w]|, from the same reads.  A work-item
 * takes a run of XNOR_PACK_VW pixels through all Wc words (so one work-item sees all of its
 * pixels' channels: no reduction across work-items), summing |x| in float32 in channel order
 * 0 .. C - 1, then divides the sum by C (one float32 division, not a multiplication by 1 / C).
 * A grid-stride loop over N * ceil(HW / XNOR_PACK_VW).
 *
 * XNOR_PACK_AFFINE: channel c's values are batch-normalized before they are binarized and
 * averaged, v = ((x - bn_mean[c]) * a) + bn_bias[c] with a = inv_std[c] * bn_weight[c]
 * (inv_std[c] alone without XNOR_PACK_WEIGHT, no bias term without XNOR_PACK_BIAS), each
 * operation rounded on its own: common/batchnorm.h's evaluation map bit for bit, given the
 * inv_std its bn_inv_std makes, so the words and means are exactly those of the batch
 * norm's output -- XNOR-Net's BatchNorm -> sign of an inference layer in one pass.  The
 * pointers of clear flags are never read. */
/* v (a float or a vector of them) of channel c batch-normalized in place, as above */
#define XNOR_PACK_AFFINE_MAP(v, c)                                                  \
    do {                                                                            \
        if (flags & XNOR_PACK_AFFINE) {                                             \
            float a_ = inv_std[c];                                                  \
            if (flags & XNOR_PACK_WEIGHT)                                           \
                a_ = XNOR_MUL_RN(a_, bn_weight[c]);                                 \
            v = XNOR_MUL_RN(v - bn_mean[c], a_);                                    \
            if (flags & XNOR_PACK_BIAS)                                             \
                v = XNOR_ADD_RN(v, bn_bias[c]);                                     \
        }                                                                           \
    } while (0)

KERNEL void xnor_pack_conv_input_fused(GLOBAL const float* RESTRICT x,
                                       GLOBAL u32* RESTRICT out,
                                       GLOBAL float* RESTRICT mean,
                                       GLOBAL const float* RESTRICT bn_mean,
                                       GLOBAL const float* RESTRICT inv_std,
                                       GLOBAL const float* RESTRICT bn_weight,
                                       GLOBAL const float* RESTRICT bn_bias,
                                       i64 N, i64 C, i64 HW, i64 Wc, int flags)
{
    const i64 blocks = (HW + XNOR_PACK_VW - 1) / XNOR_PACK_VW;
    const i64 total = N * blocks;
    const float channels = (float)C;
    const int with_mean = flags & XNOR_PACK_MEAN;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        const i64 n = t / blocks;
        const i64 p0 = (t - n * blocks) * XNOR_PACK_VW;
        if (p0 + XNOR_PACK_VW <= HW) {
            xnor_pack_floats sum = 0.0f;
            for (i64 cw = 0; cw < Wc; ++cw) {
                GLOBAL const float* src = x + (n * C + 32 * cw) * HW + p0;
                const i64 count = C - 32 * cw;
                xnor_pack_words word = 0;
                if (count >= 32) {
                    XNOR_UNROLL
                    for (int j = 0; j < 32; ++j) {
                        xnor_pack_floats v = XNOR_PACK_LOAD(src + j * HW);
                        XNOR_PACK_AFFINE_MAP(v, 32 * cw + j);
                        word |= XNOR_PACK_NONNEG(v) << j;
                        sum += XNOR_FABS(v);
                    }
                } else {
                    for (int j = 0; j < (int)count; ++j) {
                        xnor_pack_floats v = XNOR_PACK_LOAD(src + j * HW);
                        XNOR_PACK_AFFINE_MAP(v, 32 * cw + j);
                        word |= XNOR_PACK_NONNEG(v) << j;
                        sum += XNOR_FABS(v);
                    }
                }
                GLOBAL u32* dst = out + (n * HW + p0) * Wc + cw;
                XNOR_UNROLL
                for (int l = 0; l < XNOR_PACK_VW; ++l)
                    dst[l * Wc] = XNOR_PACK_LANE(word, l);
            }
            if (with_mean)
                XNOR_PACK_STORE_FLOATS(sum / channels, mean + n * HW + p0);
        } else {             /* the pixels past the last whole vector of a plane */
            for (i64 p = p0; p < HW; ++p) {
                float sum = 0.0f;
                for (i64 cw = 0; cw < Wc; ++cw) {
                    GLOBAL const float* src = x + (n * C + 32 * cw) * HW + p;
                    const int bits = C - 32 * cw >= 32 ? 32 : (int)(C - 32 * cw);
                    u32 word = 0;
                    for (int j = 0; j < bits; ++j) {
                        float v = src[j * HW];
                        XNOR_PACK_AFFINE_MAP(v, 32 * cw + j);
                        word |= (u32)(v >= 0.0f) << j;
                        sum += XNOR_FABS(v);
                    }
                    out[(n * HW + p) * Wc + cw] = word;
                }
                if (with_mean)
                    mean[n * HW + p] = sum / channels;
            }
        }
    }
}

/* ---- xnor_window_mean --------------------------------------------------------------------- */

/* K (see the top of this file): a grid-stride loop over the N Ho output rows.  A work-item
 * sums a row's windows tap by tap, each tap over the run of output columns whose input
 * pixel lies inside the image, into the row of k itself (in cache): every pixel still adds
 * its taps in tap order, and the inner loop is a strided walk with no tests. */
KERNEL void xnor_window_mean(GLOBAL const float* RESTRICT mean, GLOBAL float* RESTRICT k,
                             i64 N, int H, int W, int kh, int kw, int sh, int sw, int ph,
                             int pw, int Ho, int Wo)
{
    const i64 rows = N * Ho;
    const float taps = (float)(kh * kw);
    for (i64 t = GLOBAL_ID_0; t < rows; t += GLOBAL_SIZE_0) {
        const i64 n = t / Ho;
        const int oh = (int)(t - n * Ho);
        GLOBAL float* row = k + t * Wo;
        for (int ow = 0; ow < Wo; ++ow)
            row[ow] = 0.0f;
        for (int i = 0; i < kh; ++i) {
            const int ih = oh * sh - ph + i;
            if (ih < 0 || ih >= H)
                continue;
            GLOBAL const float* src = mean + (n * H + ih) * W;
            for (int j = 0; j < kw; ++j) {
                /* output columns whose input column ow sw - pw + j lies in [0, W) (in
                 * 64 bits: pw - j + sw - 1 passes INT_MAX for strides near 2**31) */
                const int first = pw - j > 0 ? (int)(((i64)pw - j + sw - 1) / sw) : 0;
                const int end = W - 1 + pw - j >= 0 ? (W - 1 + pw - j) / sw + 1 : 0;
                const int last = end < Wo ? end : Wo;
                for (int ow = first; ow < last; ++ow)
                    row[ow] += src[ow * sw + j - pw];
            }
        }
        for (int ow = 0; ow < Wo; ++ow)
            row[ow] = row[ow] / taps;
    }
}

/* ---- xnor_conv2d ---------------------------------------------------------------------- */

/* Rows of the local stage (and slots of its row table, 20 bytes each) */
#if XNOR_LOCAL_WORDS / XNOR_OB < XNOR_MAX_ROWS
  #define XNOR_ROWS (XNOR_LOCAL_WORDS / XNOR_OB)
#else
  #define XNOR_ROWS XNOR_MAX_ROWS
#endif

/* A pixel's stream.  Row r of the stage holds word r of every filter of the group, where a
 * filter's rows are its (tap, channel word) words in order, or, when C <= 16 (one word per
 * tap, at most 16 bits used), `per_row` = floor(32 / C) taps side by side (tap m of the row
 * in bits m C .. m C + C - 1), so a 3 x 3 filter of 16 channels is 5 words, not 9.  Slot
 * s = r * per_row + m of the row table says where tap m's input word lies relative to the
 * pixel's top-left input corner (slot_offset), its tap row and column (for the image-edge
 * test), its mask (the channel tail; 0 for the unused slots of a short last row) and its
 * bit position in the row (slot_shift).
 *
 * XNOR_WORD(r, PER_ROW, INTERIOR, xv, keep) sets xv to the pixel's input word for row r
 * and keep to the bits of the row that count: every bit for pixels whose taps all lie
 * inside the image (INTERIOR = 1); otherwise out-of-image taps are read as 0 (from x[0],
 * which exists) and their bits dropped from keep, since they add nothing to the
 * convolution.  PER_ROW is 1, 2 (unrolled) or 3 (any: the runtime per_row). */
#define XNOR_SLOT(s, INTERIOR, xv, keep)                                            \
    do {                                                                            \
        const int s_ = (s);                                                         \
        if (INTERIOR) {                                                             \
            xv |= (x[xq + slot_offset[s_]] & slot_mask[s_]) << slot_shift[s_];      \
        } else {                                                                    \
            const int ok_ = (unsigned)(ih0q + slot_i[s_]) < (unsigned)H &&          \
                            (unsigned)(iw0q + slot_j[s_]) < (unsigned)W;            \
            const u32 bits_ = ok_ ? slot_mask[s_] : 0u;                             \
            xv |= (x[ok_ ? xq + slot_offset[s_] : 0] & bits_) << slot_shift[s_];    \
            keep |= bits_ << slot_shift[s_];                                        \
        }                                                                           \
    } while (0)
#define XNOR_WORD(r, PER_ROW, INTERIOR, xv, keep)                                   \
    do {                                                                            \
        xv = 0;                                                                     \
        keep = (INTERIOR) ? 0xffffffffu : 0u;                                       \
        if ((PER_ROW) == 1) {                                                       \
            XNOR_SLOT(r, INTERIOR, xv, keep);                                       \
        } else if ((PER_ROW) == 2) {                                                \
            XNOR_SLOT(2 * (r), INTERIOR, xv, keep);                                 \
            XNOR_SLOT(2 * (r) + 1, INTERIOR, xv, keep);                             \
        } else {                                                                    \
            for (int slot_m_ = 0; slot_m_ < per_row; ++slot_m_)                     \
                XNOR_SLOT((r) * per_row + slot_m_, INTERIOR, xv, keep);             \
        }                                                                           \
    } while (0)
/* the XOR of row r's input word with filter vector v (interior pixels need no mask) */
#define XNOR_D(r, xv, keep, INTERIOR, v)                                            \
    ((INTERIOR) ? (xv) ^ XNOR_LOAD_WORDS(stage + (r) * XNOR_OB + (v) * XNOR_VW)      \
                : ((xv) ^ XNOR_LOAD_WORDS(stage + (r) * XNOR_OB + (v) * XNOR_VW)) & (keep))

#if XNOR_CSA
/* Harley-Seal: eight rows at a time pass through a tree of carry-save adders into the
 * pixel's running ones, twos and fours bit planes, and only the eights plane is counted;
 * the rows past the last whole eight (and streams shorter than eight) are counted by byte
 * into `bytes`.  One horizontal sum per pixel and chunk finishes the count. */
#define XNOR_STREAM(PER_ROW, INTERIOR)                                              \
    do {                                                                            \
        int r = 0;                                                                  \
        for (; r + 8 <= rows; r += 8) {                                             \
            u32 xv[8], keep[8];                                                     \
            XNOR_UNROLL                                                             \
            for (int k = 0; k < 8; ++k)                                             \
                XNOR_WORD(r + k, PER_ROW, INTERIOR, xv[k], keep[k]);                \
            XNOR_UNROLL                                                             \
            for (int v = 0; v < XNOR_NV; ++v) {                                     \
                xnor_words twos_a, twos_b, fours_a, fours_b, eights;                \
                XNOR_CARRY_SAVE(twos_a, ones[v], ones[v],                           \
                                XNOR_D(r, xv[0], keep[0], INTERIOR, v),             \
                                XNOR_D(r + 1, xv[1], keep[1], INTERIOR, v));        \
                XNOR_CARRY_SAVE(twos_b, ones[v], ones[v],                           \
                                XNOR_D(r + 2, xv[2], keep[2], INTERIOR, v),         \
                                XNOR_D(r + 3, xv[3], keep[3], INTERIOR, v));        \
                XNOR_CARRY_SAVE(fours_a, twos[v], twos[v], twos_a, twos_b);         \
                XNOR_CARRY_SAVE(twos_a, ones[v], ones[v],                           \
                                XNOR_D(r + 4, xv[4], keep[4], INTERIOR, v),         \
                                XNOR_D(r + 5, xv[5], keep[5], INTERIOR, v));        \
                XNOR_CARRY_SAVE(twos_b, ones[v], ones[v],                           \
                                XNOR_D(r + 6, xv[6], keep[6], INTERIOR, v),         \
                                XNOR_D(r + 7, xv[7], keep[7], INTERIOR, v));        \
                XNOR_CARRY_SAVE(fours_b, twos[v], twos[v], twos_a, twos_b);         \
                XNOR_CARRY_SAVE(eights, fours[v], fours[v], fours_a, fours_b);      \
                acc[v] += xnor_sum_bytes(xnor_byte_counts(eights)) << 3;            \
            }                                                                       \
        }                                                                           \
        for (; r < rows; ++r) {                                                     \
            u32 xv0, keep0;                                                         \
            XNOR_WORD(r, PER_ROW, INTERIOR, xv0, keep0);                            \
            XNOR_UNROLL                                                             \
            for (int v = 0; v < XNOR_NV; ++v)                                       \
                bytes[v] += xnor_byte_counts(XNOR_D(r, xv0, keep0, INTERIOR, v));   \
        }                                                                           \
    } while (0)
#else
#define XNOR_STREAM(PER_ROW, INTERIOR)                                              \
    do {                                                                            \
        for (int r = 0; r < rows; ++r) {                                            \
            u32 xv0, keep0;                                                         \
            XNOR_WORD(r, PER_ROW, INTERIOR, xv0, keep0);                            \
            XNOR_UNROLL                                                             \
            for (int v = 0; v < XNOR_NV; ++v)                                       \
                acc[v] += POPCOUNT32(XNOR_D(r, xv0, keep0, INTERIOR, v));           \
        }                                                                           \
    } while (0)
#endif

XNOR_KERNEL(XNOR_WG) xnor_conv2d(GLOBAL const u32* RESTRICT x, GLOBAL const u32* RESTRICT w,
                                 GLOBAL int* RESTRICT out, int n0, int N, int H, int W,
                                 int Wc, int C, int O, int kh, int kw, int sh, int sw,
                                 int ph, int pw, int Ho, int Wo,
                                 i64 out_sn, i64 out_so, i64 out_sp, int out_float,
                                 GLOBAL const float* pixel_scale,
                                 GLOBAL const float* filter_scale,
                                 GLOBAL const float* bias, GLOBAL const float* residual,
                                 int epilogue)
{
    /* the group's filters, transposed: stage[r * OB + f] is row r of filter o0 + f */
    LOCAL u32 stage[XNOR_ROWS * XNOR_OB];
    LOCAL int slot_offset[XNOR_ROWS], slot_i[XNOR_ROWS], slot_j[XNOR_ROWS];
    LOCAL u32 slot_mask[XNOR_ROWS], slot_shift[XNOR_ROWS];

    const int lid = (int)LOCAL_ID_0;
    const int o0 = (int)GROUP_ID_1 * XNOR_OB;
    const int taps = kh * kw;
    const u32 tail = xnor_tail_mask(C);
    int per_row = Wc == 1 && C <= 16 ? 32 / C : 1;
    per_row = per_row < taps ? per_row : taps;
    per_row = per_row < XNOR_ROWS ? per_row : XNOR_ROWS;
    const int depth = per_row > 1 ? (taps + per_row - 1) / per_row : taps * Wc;
    const int chunk = XNOR_ROWS / per_row;     /* rows per chunk: their slots fit */

    /* this work-item's pixels (of images n0 .. n0 + N - 1; the launcher splits batches so
     * that pixel indices fit an int): top-left input corner, its offset into x (possibly
     * outside the image), whether every tap is inside, output offset */
    const int pixels = Ho * Wo;
#if XNOR_CONTIGUOUS
    const int p_first = ((int)GROUP_ID_0 * XNOR_WG + lid) * XNOR_PB;
    #define XNOR_PIXEL_STEP 1
#else
    const int p_first = (int)GROUP_ID_0 * (XNOR_WG * XNOR_PB) + lid;
    #define XNOR_PIXEL_STEP XNOR_WG
#endif
    /* pixel_scale index of the work-item's pixel q: pixel_first + q * XNOR_PIXEL_STEP */
    const i64 pixel_first = (i64)n0 * pixels + p_first;
    i64 x_corner[XNOR_PB], o_base[XNOR_PB];
    int ih0[XNOR_PB], iw0[XNOR_PB], live[XNOR_PB], interior[XNOR_PB];
    xnor_words total[XNOR_PB][XNOR_NV];
    /* the first pixel's (n, oh, ow) by division, the others by stepping */
    int n = p_first / pixels;
    int oh = (p_first - n * pixels) / Wo;
    int ow = p_first - n * pixels - oh * Wo;
    XNOR_PIXEL_UNROLL
    for (int q = 0; q < XNOR_PB; ++q) {
        live[q] = n < N;
        ih0[q] = oh * sh - ph;
        iw0[q] = ow * sw - pw;
        interior[q] = ih0[q] >= 0 && iw0[q] >= 0 && ih0[q] + kh <= H && iw0[q] + kw <= W;
        x_corner[q] = (((i64)(n0 + n) * H + ih0[q]) * W + iw0[q]) * Wc;
        o_base[q] = (n0 + n) * out_sn + (i64)(oh * Wo + ow) * out_sp;
        XNOR_UNROLL
        for (int v = 0; v < XNOR_NV; ++v)
            total[q][v] = 0;
        ow += XNOR_PIXEL_STEP;
        while (ow >= Wo) {
            ow -= Wo;
            if (++oh == Ho) {
                oh = 0;
                ++n;
            }
        }
    }

    for (int r0 = 0; r0 < depth; r0 += chunk) {
        const int rows = depth - r0 < chunk ? depth - r0 : chunk;

        LOCAL_BARRIER;                      /* the previous chunk's readers are done */
        for (int s = lid; s < rows * per_row; s += XNOR_WG) {
            int t, c, m;
            if (per_row == 1) {
                t = (r0 + s) / Wc;
                c = r0 + s - t * Wc;
                m = 0;
            } else {
                t = r0 * per_row + s;
                c = 0;
                m = s % per_row;
            }
            const int i = t / kw;
            const int j = t - i * kw;
            const int used = t < taps;
            slot_offset[s] = used ? (i * W + j) * Wc + c : 0;
            slot_i[s] = used ? i : 0;
            slot_j[s] = used ? j : 0;
            slot_mask[s] = !used ? 0u : c == Wc - 1 ? tail : 0xffffffffu;
            slot_shift[s] = (u32)(m * C);
        }
#if XNOR_FLAT_STAGE
        /* all work-items over (filter, row), consecutive ones on consecutive words */
        for (int s = lid; s < rows * XNOR_OB; s += XNOR_WG) {
            const int f = s / rows;
            const int r = s - f * rows;
            GLOBAL const u32* src = w + (i64)(o0 + f) * taps * Wc;
            u32 word = 0;
            if (o0 + f < O) {
                if (per_row == 1) {
                    word = src[r0 + r];
                    if ((r0 + r) % Wc == Wc - 1)
                        word &= tail;
                } else {
                    const int t0 = (r0 + r) * per_row;
                    for (int m = 0; m < per_row && t0 + m < taps; ++m)
                        word |= (src[t0 + m] & tail) << (m * C);
                }
            }
            stage[r * XNOR_OB + f] = word;
        }
#else
        /* each work-item copies whole filters: no divisions */
        for (int f = lid; f < XNOR_OB; f += XNOR_WG) {
            GLOBAL const u32* src = w + (i64)(o0 + f) * taps * Wc;
            const int ok = o0 + f < O;
            if (per_row == 1) {
                int c = r0 % Wc;
                for (int r = 0; r < rows; ++r) {
                    u32 word = ok ? src[r0 + r] : 0u;
                    if (c == Wc - 1) {
                        word &= tail;
                        c = 0;
                    } else {
                        ++c;
                    }
                    stage[r * XNOR_OB + f] = word;
                }
            } else {
                for (int r = 0; r < rows; ++r) {
                    const int t0 = (r0 + r) * per_row;
                    u32 word = 0;
                    for (int m = 0; ok && m < per_row && t0 + m < taps; ++m)
                        word |= (src[t0 + m] & tail) << (m * C);
                    stage[r * XNOR_OB + f] = word;
                }
            }
        }
#endif
        LOCAL_BARRIER;

        XNOR_PIXEL_UNROLL
        for (int q = 0; q < XNOR_PB; ++q) {
            if (!live[q])
                continue;
            const i64 xq = x_corner[q];
            const int ih0q = ih0[q];
            const int iw0q = iw0[q];
            xnor_words acc[XNOR_NV];
#if XNOR_CSA
            xnor_words ones[XNOR_NV], twos[XNOR_NV], fours[XNOR_NV], bytes[XNOR_NV];
#endif
            XNOR_UNROLL
            for (int v = 0; v < XNOR_NV; ++v) {
                acc[v] = 0;
#if XNOR_CSA
                ones[v] = twos[v] = fours[v] = bytes[v] = 0;
#endif
            }
            if (per_row == 1) {
                if (interior[q])
                    XNOR_STREAM(1, 1);
                else
                    XNOR_STREAM(1, 0);
            } else if (per_row == 2) {          /* 16 channels */
                if (interior[q])
                    XNOR_STREAM(2, 1);
                else
                    XNOR_STREAM(2, 0);
            } else {
                if (interior[q])
                    XNOR_STREAM(3, 1);
                else
                    XNOR_STREAM(3, 0);
            }
            XNOR_UNROLL
            for (int v = 0; v < XNOR_NV; ++v) {
#if XNOR_CSA
                /* per byte at most 4*8 + 2*8 + 8 + 7*8 = 112 */
                if (rows >= 8)
                    bytes[v] += (xnor_byte_counts(fours[v]) << 2)
                                + (xnor_byte_counts(twos[v]) << 1)
                                + xnor_byte_counts(ones[v]);
                acc[v] += xnor_sum_bytes(bytes[v]);
#endif
                total[q][v] += acc[v];
            }
        }
    }

    /* The epilogue, applied to float results as they are stored: XNOR_FILTER_FACTORS(o)
     * loads filter_scale and bias of the vector of filters o .. o + VW - 1 (0 past O, or
     * when not asked for) into fs_ and bs_; XNOR_EPILOGUE(y, q) turns the ints y of pixel q
     * into the bits of ((float(y) * pixel_scale) * filter_scale) + bias, each step rounded
     * on its own (XNOR_MUL_RN / XNOR_ADD_RN) and skipped when its flag is clear. */
    #define XNOR_FILTER_FACTORS(o)                                                  \
        xnor_floats fs_ = 0.0f, bs_ = 0.0f;                                         \
        if (epilogue & (XNOR_FILTER_SCALE | XNOR_BIAS)) {                           \
            float fl_[XNOR_VW], bl_[XNOR_VW];                                       \
            XNOR_UNROLL                                                             \
            for (int l_ = 0; l_ < XNOR_VW; ++l_) {                                  \
                const int ok_ = (o) + l_ < O;                                       \
                fl_[l_] = ok_ && (epilogue & XNOR_FILTER_SCALE)                     \
                          ? filter_scale[(o) + l_] : 0.0f;                          \
                bl_[l_] = ok_ && (epilogue & XNOR_BIAS) ? bias[(o) + l_] : 0.0f;     \
            }                                                                       \
            fs_ = XNOR_LOAD_FLOATS(fl_);                                            \
            bs_ = XNOR_LOAD_FLOATS(bl_);                                            \
        }
    #define XNOR_EPILOGUE(y, q)                                                     \
        do {                                                                        \
            xnor_floats f_ = XNOR_FLOATS(y);                                        \
            if (epilogue & XNOR_PIXEL_SCALE)                                        \
                f_ = XNOR_MUL_RN(f_, (epilogue & XNOR_WINDOW_MEAN) ? window_k[q]    \
                                 : live[q] ? pixel_scale[pixel_first +              \
                                     (i64)(q) * XNOR_PIXEL_STEP] : 0.0f);           \
            if (epilogue & XNOR_FILTER_SCALE)                                       \
                f_ = XNOR_MUL_RN(f_, fs_);                                          \
            if (epilogue & XNOR_BIAS)                                               \
                f_ = XNOR_ADD_RN(f_, bs_);                                          \
            y = XNOR_AS_INTS_F(f_);                                                 \
        } while (0)

    /* the float result bits y stored at out[at] plus residual[at] (XNOR_RESIDUAL), rounded
     * once: the epilogue's last step, taken where each result is stored */
    #define XNOR_PLUS_RESIDUAL(y, at)                                               \
        ((epilogue & XNOR_RESIDUAL)                                                 \
             ? XNOR_FLOAT_BITS(XNOR_ADD_RN(XNOR_BITS_FLOAT(y), residual[at])) : (y))
#if XNOR_TRANSPOSED_STORE
    /* the same for 16 adjacent results (int16 of float bits) stored from out[at] on */
    #define XNOR_PLUS_RESIDUAL16(y, at)                                             \
        ((epilogue & XNOR_RESIDUAL)                                                 \
             ? as_int16(as_float16(y) + vload16(0, residual + (at))) : (y))
#endif

    /* y = valid_taps * C - 2 * popcounts.  Stored filter by filter, each filter's pixels in
     * turn: on a CPU the VW filters of a vector lie a whole plane apart (4 KiB for 32 x 32
     * images, one cache set), so lane-by-lane stores of each pixel would thrash L1. */
    int base[XNOR_PB];
    /* and K of each pixel (XNOR_WINDOW_MEAN) over the same taps inside the image: the
     * channel means kernel row by kernel row from 0.0f, divided by kh kw -- xnor_window_mean's
     * order and bits; 0 for the pixels past the batch, as a given pixel_scale's */
    float window_k[XNOR_PB];
    const float window_taps = (float)taps;
    XNOR_PIXEL_UNROLL
    for (int q = 0; q < XNOR_PB; ++q) {
        const int rlo = ih0[q] < 0 ? -ih0[q] : 0;
        const int rhi = H - ih0[q] < kh ? H - ih0[q] : kh;
        const int clo = iw0[q] < 0 ? -iw0[q] : 0;
        const int chi = W - iw0[q] < kw ? W - iw0[q] : kw;
        const int rows = rhi > rlo ? rhi - rlo : 0;
        const int cols = chi > clo ? chi - clo : 0;
        base[q] = rows * cols * C;
        if (epilogue & XNOR_WINDOW_MEAN) {
            float sum = 0.0f;
            if (live[q]) {
                GLOBAL const float* corner = pixel_scale + x_corner[q] / Wc;
                for (int i = rlo; i < rhi; ++i)
                    for (int j = clo; j < chi; ++j)
                        sum += corner[(i64)i * W + j];
            }
            window_k[q] = live[q] ? sum / window_taps : 0.0f;
        }
    }
#if XNOR_TRANSPOSED_STORE
    /* 16 consecutive pixels x 16 filters at a time: transposed in registers, so each
     * filter's 16 outputs leave in one vector store where they are adjacent */
    XNOR_UNROLL
    for (int v = 0; v < XNOR_NV; ++v) {
        const int o_first = o0 + v * 16;
        const int lanes = O - o_first < 16 ? O - o_first : 16;
        XNOR_FILTER_FACTORS(o_first);
        for (int q0 = 0; q0 < XNOR_PB; q0 += 16) {
            int16 block[16];
            XNOR_UNROLL
            for (int k = 0; k < 16; ++k) {
                int16 y = (int16)(base[q0 + k]) - 2 * as_int16(total[q0 + k][v]);
                if (out_float)
                    XNOR_EPILOGUE(y, q0 + k);
                block[k] = y;
            }
            if (lanes == 16 && out_so == 1) {            /* filters adjacent (xnor_gemm) */
                for (int k = 0; k < 16; ++k)
                    if (live[q0 + k]) {
                        const i64 at = o_base[q0 + k] + o_first;
                        vstore16(XNOR_PLUS_RESIDUAL16(block[k], at), 0, out + at);
                    }
            } else if (lanes == 16 && live[q0 + 15] && o_base[q0 + 15] - o_base[q0] == 15) {
                XNOR_TRANSPOSE16(block);
                XNOR_UNROLL
                for (int l = 0; l < 16; ++l) {
                    const i64 at = o_base[q0] + (i64)(o_first + l) * out_so;
                    /* (16 adjacent pixels of filter l) */
                    vstore16(XNOR_PLUS_RESIDUAL16(block[l], at), 0, out + at);
                }
            } else {
                for (int l = 0; l < lanes; ++l)
                    for (int k = 0; k < 16; ++k)
                        if (live[q0 + k]) {
                            const i64 at = o_base[q0 + k] + (i64)(o_first + l) * out_so;
                            out[at] = XNOR_PLUS_RESIDUAL(block[k][l], at);
                        }
            }
        }
    }
#else
    XNOR_UNROLL
    for (int v = 0; v < XNOR_NV; ++v) {
        XNOR_FILTER_FACTORS(o0 + v * XNOR_VW);
        int ys[XNOR_PB][XNOR_VW];
        XNOR_PIXEL_UNROLL
        for (int q = 0; q < XNOR_PB; ++q) {
            xnor_ints y = XNOR_INTS(base[q]) - 2 * XNOR_AS_INTS(total[q][v]);
            if (out_float)
                XNOR_EPILOGUE(y, q);
            XNOR_STORE_LANES(y, ys[q]);
        }
        const int o_first = o0 + v * XNOR_VW;
        const int lanes = O - o_first < XNOR_VW ? O - o_first : XNOR_VW;
        XNOR_PIXEL_UNROLL
        for (int l = 0; l < XNOR_VW; ++l) {
            if (l >= lanes)
                break;
            XNOR_PIXEL_UNROLL
            for (int q = 0; q < XNOR_PB; ++q) {
                if (live[q]) {
                    const i64 at = o_base[q] + (i64)(o_first + l) * out_so;
                    out[at] = XNOR_PLUS_RESIDUAL(ys[q][l], at);
                }
            }
        }
    }
#endif
}

#endif /* GPUMAT_XNOR_H */
