/* OpenCL build of the activation kernels; they live in common/activations.h.
 * Defines the _f32 entry points, and the _f64 ones where GPUMAT_ENABLE_FP64 is set.
 *
 * Plus OpenCL-only fast paths for CPU devices (PoCL & co), which vectorise across
 * work-items and so cannot vectorise a one-item-per-row loop over strided rows
 * (kernels/opencl/activations_vec.h):
 *   softmax_rows_vec_f32 / _f64(const T* x, T* y, i64 lines, i64 length, i64 log)
 *   softmax_backward_rows_vec_f32 / _f64(const T* grad, const T* y, T* dx, i64 lines,
 *                                        i64 length, i64 log)
 *   bias_act_rows_vec_f32 / _f64(const T* x, const T* bias, T* out, i64 rows, i64 cols,
 *                                i64 channels, i64 bias_on_cols, i64 act, T param)
 *   bias_grad_vec_f32 / _f64(const T* grad, T* out, i64 outer, i64 channels, i64 inner)
 *   act_chunks_vec_f32 / _f64(const T* x, T* out, i64 n, i64 chunk, i64 act, T param)
 *   act_backward_chunks_vec_f32 / _f64(const T* grad, const T* x, T* out, i64 n, i64 chunk,
 *                                      i64 act, T param)
 * one work-item per contiguous row (softmax: inner == 1), walking it 8 elements at a time
 * with vload8 / vstore8 and the vector exp; same results as the portable kernels up to
 * summation order. */
#define ACT_T float
#define ACT_SUFFIX _f32
#include "activations.h"
#include "activations_vec.h"
#undef ACT_T
#undef ACT_SUFFIX

#ifdef GPUMAT_ENABLE_FP64
#define ACT_T double
#define ACT_SUFFIX _f64
#include "activations.h"
#include "activations_vec.h"
#undef ACT_T
#undef ACT_SUFFIX
#endif
