/* CUDA build of the activation kernels (kernels in common/activations.h, whose OpenCL build
 * the tests run on PoCL), loaded with
 * cupy.RawModule(code, options=("-I<kernels/common>", "-I<kernels/cuda>")).
 *
 * Entry points (extern "C"; T is float for the _f32 names and double for the _f64 names; pass
 * every size as numpy.int64 and `param` as a T scalar; arrays C-contiguous; act codes
 * 0 identity, 1 relu, 2 leaky_relu(param = slope), 3 relu6, 4 elu(param = alpha)):
 *   bias_act_flat_f32 / _f64(const T* x, const T* bias, T* out, long long n,
 *       long long channels, long long inner, long long has_bias, long long act, T param)
 *                                        grid-stride over n elements, any 1-d grid
 *   bias_act_rows_f32 / _f64(const T* x, const T* bias, T* out, long long row0,
 *       long long cols, long long channels, long long act, T param)
 *                                        row row0 + blockIdx.y (rows = outer * channels,
 *                                        launched <= 65535 at a time), bias[row % channels];
 *                                        x threads stride over the cols = inner columns
 *   bias_act_cols_f32 / _f64(const T* x, const T* bias, T* out, long long row0,
 *       long long cols, long long act, T param)
 *                                        the same with rows = outer, cols = channels
 *                                        (inner == 1), bias[col]
 *   act_backward_f32 / _f64(const T* grad, const T* x, T* out, long long n, long long act,
 *       T param)                         grid-stride elementwise
 *   bias_grad_f32 / _f64(const T* grad, T* out, long long outer, long long channels,
 *       long long inner)                 blocks of exactly 256 threads, one per channel
 *   softmax_item_f32 / _f64(const T* x, T* y, long long lines, long long length,
 *       long long inner, long long log)  one thread per line, any 1-d grid
 *   softmax_group_f32 / _f64(same)       blocks of exactly 256 threads, one per line
 *   softmax_backward_item_f32 / _f64(const T* grad, const T* y, T* dx, long long lines,
 *       long long length, long long inner, long long log)   one thread per line
 *   softmax_backward_group_f32 / _f64(same)                  blocks of 256, one per line
 * x is (outer, channels, inner) for the bias kernels and (outer, length, inner) for softmax,
 * lines = outer * inner.  log = 1 selects log_softmax.
 */
#define ACT_T float
#define ACT_SUFFIX _f32
#include "activations.h"
#undef ACT_T
#undef ACT_SUFFIX

#define ACT_T double
#define ACT_SUFFIX _f64
#include "activations.h"
#undef ACT_T
#undef ACT_SUFFIX
