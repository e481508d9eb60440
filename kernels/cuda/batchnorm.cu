/* CUDA build of the batch normalisation kernels (kernels in common/batchnorm.h, whose OpenCL
 * build the tests run on PoCL), loaded with
 * cupy.RawModule(code, options=("-I<kernels/common>", "-I<kernels/cuda>")).
 *
 * Entry points (extern "C"; T is float for the _f32 names and double for the _f64 names;
 * pass every size and flag as numpy.int64 and eps as a T scalar; arrays C-contiguous; x is
 * (batch, channels, inner)); common/batchnorm.h documents each:
 *   bn_stats_f32 / _f64                blocks of exactly 256 threads, one per (channel, chunk)
 *   bn_stats_finish_f32 / _f64         one thread per channel, any 1-d grid
 *   bn_inv_std_f32 / _f64              one thread per channel
 *   bn_forward_rows_f32 / _f64         row row0 + blockIdx.y (<= 65535 per launch)
 *   bn_forward_flat_f32 / _f64         grid-stride over the values
 *   bn_backward_sums_f32 / _f64        blocks of exactly 256 threads, one per (channel, chunk)
 *   bn_backward_sums_finish_f32 / _f64 one thread per channel
 *   bn_backward_input_rows_f32 / _f64  as bn_forward_rows
 *   bn_backward_input_flat_f32 / _f64  as bn_forward_flat
 */
#define BN_T float
#define BN_SUFFIX _f32
#include "batchnorm.h"
#undef BN_T
#undef BN_SUFFIX

#define BN_T double
#define BN_SUFFIX _f64
#include "batchnorm.h"
#undef BN_T
#undef BN_SUFFIX
