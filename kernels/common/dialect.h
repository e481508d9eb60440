/* One kernel source for OpenCL C and CUDA C++.
 *
 * Kernels written against these macros compile as OpenCL C (PoCL in every CI run, any GPU's
 * driver) and as CUDA C++ (nvcc in CI, NVRTC through cupy.RawModule at run time), so the
 * algorithm CUDA runs is the one the OpenCL tests check.  Keep CUDA-only fast paths small and
 * in separate files.
 */
#ifndef GPUMAT_DIALECT_H
#define GPUMAT_DIALECT_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
  #define GPUMAT_CUDA 1
  #define KERNEL extern "C" __global__
  #define GLOBAL
  #define LOCAL __shared__
  #define CONSTANT const
  #define RESTRICT __restrict__
  #define INLINE __device__ __forceinline__
  #define LOCAL_BARRIER __syncthreads()
  #define GLOBAL_ID_0 ((long long)blockIdx.x * blockDim.x + threadIdx.x)
  #define GLOBAL_ID_1 ((long long)blockIdx.y * blockDim.y + threadIdx.y)
  #define GLOBAL_SIZE_0 ((long long)gridDim.x * blockDim.x)
  #define LOCAL_ID_0 threadIdx.x
  #define LOCAL_ID_1 threadIdx.y
  #define GROUP_ID_0 blockIdx.x
  #define GROUP_ID_1 blockIdx.y
  #define LOCAL_SIZE_0 blockDim.x
  #define NUM_GROUPS_0 gridDim.x
  #define POPCOUNT32(x) __popc(x)
  #define POPCOUNT64(x) __popcll(x)
  typedef long long i64;
  typedef unsigned long long u64;
  typedef unsigned int u32;
  typedef unsigned char u8;
#else
  #define GPUMAT_OPENCL 1
  #define KERNEL __kernel
  #define GLOBAL __global
  #define LOCAL __local
  #define CONSTANT __constant
  #define RESTRICT restrict
  #define INLINE inline
  #define LOCAL_BARRIER barrier(CLK_LOCAL_MEM_FENCE)
  #define GLOBAL_ID_0 ((long)get_global_id(0))
  #define GLOBAL_ID_1 ((long)get_global_id(1))
  #define GLOBAL_SIZE_0 ((long)get_global_size(0))
  #define LOCAL_ID_0 get_local_id(0)
  #define LOCAL_ID_1 get_local_id(1)
  #define GROUP_ID_0 get_group_id(0)
  #define GROUP_ID_1 get_group_id(1)
  #define LOCAL_SIZE_0 get_local_size(0)
  #define NUM_GROUPS_0 get_num_groups(0)
  #define POPCOUNT32(x) popcount(x)
  #define POPCOUNT64(x) popcount(x)
  typedef long i64;
  typedef ulong u64;
  typedef uint u32;
  typedef uchar u8;
  #ifdef GPUMAT_ENABLE_FP64
    #pragma OPENCL EXTENSION cl_khr_fp64 : enable
  #endif
#endif

#endif /* GPUMAT_DIALECT_H */
