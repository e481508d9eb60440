/* gemm for the cuda backend: the register-blocked kernel of kernels/common/sgemm.h, the same
 * algorithm the OpenCL build runs on PoCL in CI (with VW=1: scalar columns per thread).
 * Tunables and REAL come as -D defines (NVRTC options). */
#define VW 1
#include "dialect.h"
#include "sgemm.h"
