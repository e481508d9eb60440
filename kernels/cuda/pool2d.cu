/* CUDA build of 2-d pooling (kernels in common/pool2d.h), loaded with
 * cupy.RawModule(code, options=("-I<kernels/common>", "-I<kernels/cuda>")).
 *
 * Entry points (extern "C", grid-stride loops: any grid covers the elements; T is float for
 * the _f32 names and double for the _f64 names; pass every scalar as numpy.int64; all arrays
 * C-contiguous, x and grad_in N x C x H x W, out / grad_out / indices N x C x OH x OW,
 * planes = N * C):
 *   max_pool2d_forward_f32 / _f64(const T* x, T* out, long long* indices,
 *       long long store_indices, long long planes, long long H, long long W,
 *       long long OH, long long OW, long long kh, long long kw, long long sh, long long sw,
 *       long long ph, long long pw)                      one thread per output element
 *   avg_pool2d_forward_f32 / _f64(const T* x, T* out, long long count_include_pad,
 *       planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw)    one thread per output element
 *   max_pool2d_backward_f32 / _f64(const T* grad_out, const long long* indices, T* grad_in,
 *       planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw)    one thread per input element
 *   avg_pool2d_backward_f32 / _f64(const T* grad_out, T* grad_in,
 *       long long count_include_pad, planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw)
 *                                                        one thread per input element
 * indices are int64 flat h * W + w positions in the input plane (PyTorch's format); with
 * store_indices = 0 the indices pointer is never dereferenced.
 */
#define POOL_T float
#define POOL_SUFFIX _f32
#include "pool2d.h"
#undef POOL_T
#undef POOL_SUFFIX

#define POOL_T double
#define POOL_SUFFIX _f64
#include "pool2d.h"
#undef POOL_T
#undef POOL_SUFFIX
