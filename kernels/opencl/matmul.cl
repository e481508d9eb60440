/* matmul for the opencl backend: the shared tiled GEMM (kernels/common/gemm_tiled.h). */
#include "dialect.h"
#include "gemm_tiled.h"
