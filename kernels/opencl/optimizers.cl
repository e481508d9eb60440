/* OpenCL build of the fused optimizer updates (kernels/common/optimizers.h):
 *   sgd_update_f32 / _f64(T* p, const T* g, T* buf, long n, T lr, T momentum, T dampening,
 *                         T weight_decay, long nesterov, long first)
 *   adam_update_f32 / _f64(T* p, const T* g, T* m, T* v, long n, T lr, T beta1, T beta2,
 *                          T eps, T weight_decay, long decoupled, T step_size, T bias2_sqrt)
 * The _f64 entry points exist where GPUMAT_ENABLE_FP64 is set. */
#define OPT_T float
#define OPT_SUFFIX _f32
#include "optimizers.h"
#undef OPT_T
#undef OPT_SUFFIX

#ifdef GPUMAT_ENABLE_FP64
#define OPT_T double
#define OPT_SUFFIX _f64
#include "optimizers.h"
#undef OPT_T
#undef OPT_SUFFIX
#endif
