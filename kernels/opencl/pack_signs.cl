/* OpenCL build of sign-bit packing; the kernel lives in common/pack_signs.h. */
#include "pack_signs.h"
