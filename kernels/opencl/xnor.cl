/* OpenCL build of the XNOR-popcount kernels (common/xnor.h): xnor_pack_conv_input and
 * xnor_conv2d (which also serves xnor_gemm), plus for fused inference
 * xnor_pack_conv_input_fused (channel means of |x|, a batch norm folded in), xnor_window_mean
 * (K on its own) and xnor_conv2d's K / scale / bias / residual epilogue (xnor.h sets
 * FP_CONTRACT OFF so none of it is contracted into FMAs), tunables as -D defines.
 * gpumat/backends/opencl_xnor.py picks them per device: on CPUs 16-filter vectors, bit
 * counting by shifts and carry-save adders and runs of consecutive pixels per work-item;
 * on GPUs the scalar register block that the CUDA build runs. */
#include "dialect.h"
#include "xnor.h"
