/* OpenCL build of 2-d pooling; the kernels live in common/pool2d.h.
 * Defines the _f32 entry points, and the _f64 ones where GPUMAT_ENABLE_FP64 is set. */
#define POOL_T float
#define POOL_SUFFIX _f32
#include "pool2d.h"
#undef POOL_T
#undef POOL_SUFFIX

#ifdef GPUMAT_ENABLE_FP64
#define POOL_T double
#define POOL_SUFFIX _f64
#include "pool2d.h"
#undef POOL_T
#undef POOL_SUFFIX
#endif
