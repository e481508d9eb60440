/* OpenCL build of the convolution lowering kernels (common/im2col.h).  The host defines
 * CONV_F64=1 for double precision (kernel names end in _f64; only on devices built with
 * GPUMAT_ENABLE_FP64), otherwise the program holds the float32 kernels (suffix _f32). */
#include "dialect.h"

#if defined(CONV_F64) && CONV_F64
  #ifndef GPUMAT_ENABLE_FP64
    #error "double-precision convolution needs a device with cl_khr_fp64"
  #endif
  #define REAL double
  #define CONV_SUFFIX _f64
#else
  #define REAL float
  #define CONV_SUFFIX _f32
#endif
#include "im2col.h"
