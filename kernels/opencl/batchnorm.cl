/* OpenCL build of the batch normalisation kernels; they live in common/batchnorm.h.
 * Defines the _f32 entry points, and the _f64 ones where GPUMAT_ENABLE_FP64 is set.
 *
 * Plus OpenCL-only fast paths for CPU devices (PoCL & co), where work-group barriers are
 * expensive and a work-item's loop runs at full speed (kernels/opencl/batchnorm_vec.h):
 *   bn_forward_vec_f32 / _f64, bn_backward_vec_f32 / _f64
 * one work-item per channel, statistics or gradient sums and the map in one launch, walking
 * each row eight values at a time; same results as the portable kernels up to summation
 * order. */
#define BN_T float
#define BN_SUFFIX _f32
#include "batchnorm.h"
#include "batchnorm_vec.h"
#undef BN_T
#undef BN_SUFFIX

#ifdef GPUMAT_ENABLE_FP64
#define BN_T double
#define BN_SUFFIX _f64
#include "batchnorm.h"
#include "batchnorm_vec.h"
#undef BN_T
#undef BN_SUFFIX
#endif
