/* gemm for the opencl backend: the register-blocked kernel of kernels/common/sgemm.h. */
#include "dialect.h"
#include "sgemm.h"
