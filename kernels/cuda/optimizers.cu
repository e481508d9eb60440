/* CUDA build of the fused optimizer updates (kernels/common/optimizers.h, whose OpenCL build
 * the tests run on PoCL), loaded with cupy.RawModule(code, options=("-I<kernels/common>",
 * "-I<kernels/cuda>")).  Entry points (extern "C"; T is float for _f32, double for _f64;
 * sizes and flags as numpy.int64, scalars as T; grid-stride, any 1-d grid):
 *   sgd_update_f32 / _f64(T* p, const T* g, T* buf, long long n, T lr, T momentum,
 *                         T dampening, T weight_decay, long long nesterov, long long first)
 *   adam_update_f32 / _f64(T* p, const T* g, T* m, T* v, long long n, T lr, T beta1, T beta2,
 *                          T eps, T weight_decay, long long decoupled, T step_size,
 *                          T bias2_sqrt) */
#define OPT_T float
#define OPT_SUFFIX _f32
#include "optimizers.h"
#undef OPT_T
#undef OPT_SUFFIX

#define OPT_T double
#define OPT_SUFFIX _f64
#include "optimizers.h"
#undef OPT_T
#undef OPT_SUFFIX
