/* CUDA build of the convolution lowering kernels (common/im2col.h, the same source the
 * OpenCL build runs on PoCL in CI), loaded with
 * cupy.RawModule(code, options=("-I<kernels/common>", "-I<kernels/cuda>")).
 *
 * Entry points (extern "C"; P is f32 with T = float, f64 with T = double; G stands for the
 * 14 geometry scalars long long N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW):
 *   im2col_P(const T* x, T* cols, G)                          grid-stride, any grid
 *   col2im_P(const T* cols, T* x, G)                          grid-stride, any grid
 *   depthwise_conv2d_P(const T* x, const T* w, T* out, long long M, G)
 *                                                             grid-stride, any grid
 *   depthwise_conv2d_backward_input_P(const T* grad_out, const T* w, T* grad_x,
 *                                     long long M, G)         grid-stride, any grid
 *   depthwise_conv2d_backward_weight_P(const T* grad_out, const T* x, T* grad_w,
 *                                      long long M, G)        blocks of exactly CONV_WG
 *                                                             (256) threads, any grid size
 * Layouts: x N x C x H x W, cols N x (C KH KW) x (OH OW), depthwise w (C M) x 1 x KH x KW,
 * out / grad_out N x (C M) x OH x OW; all C-contiguous.  Pass scalars as numpy.int64.
 */
#include "dialect.h"

#define REAL float
#define CONV_SUFFIX _f32
#include "im2col.h"
#undef REAL
#undef CONV_SUFFIX

#define REAL double
#define CONV_SUFFIX _f64
#include "im2col.h"
#undef REAL
#undef CONV_SUFFIX
