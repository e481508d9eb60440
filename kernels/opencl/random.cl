/* OpenCL build of the counter-based generator; the kernels live in common/random.h. */
#include "random.h"
