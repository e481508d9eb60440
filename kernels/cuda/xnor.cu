/* CUDA build of the XNOR-popcount kernels (common/xnor.h), the algorithm the OpenCL build
 * runs on PoCL in CI, with XNOR_VW = XNOR_PACK_VW = 1: a thread keeps XNOR_PB pixels x
 * XNOR_NV filters, popcounts are __popc.  Loaded with cupy.RawModule(code, options=
 * ("-I<kernels/common>", "-I<kernels/cuda>", "-DXNOR_...")) by gpumat/backends/cuda_xnor.py.
 *
 * Entry points (extern "C"; arguments and layouts in common/xnor.h):
 *   xnor_pack_conv_input  grid-stride, any grid; i64 scalars as numpy.int64
 *   xnor_pack_conv_input_fused  the same, and (flags) the channel mean of |x| per pixel,
 *                         x batch-normalized first; the map rounds with __fmul_rn /
 *                         __fadd_rn, as common/batchnorm.h's
 *   xnor_window_mean      grid-stride, any grid: K from the channel means
 *   xnor_conv2d           block (XNOR_WG, 1, 1), grid (ceil(N Ho Wo / (XNOR_WG XNOR_PB)),
 *                         ceil(O / XNOR_NV)); int scalars as numpy.int32, i64 as numpy.int64;
 *                         the optional pixel / filter scale, bias and residual epilogue
 *                         rounds with __fmul_rn / __fadd_rn (nvcc and NVRTC contract
 *                         a * b + c into an FMA by default; the intrinsics never are)
 */
#define XNOR_VW 1
#define XNOR_PACK_VW 1
#include "dialect.h"
#include "xnor.h"
