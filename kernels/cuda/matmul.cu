/* matmul for the cuda backend: the shared tiled GEMM (kernels/common/gemm_tiled.h), the same
 * algorithm the OpenCL build runs on PoCL in CI.  Types and tile sizes come as -D defines
 * (NVRTC options); the defaults in the header give float32. */
#include "dialect.h"
#include "gemm_tiled.h"
