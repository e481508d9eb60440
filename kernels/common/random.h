/* Counter-based random numbers, the same bits on every backend (see gpumat/random.py).
 *
 * Element i of a draw is mix64(key + (counter + i) * GAMMA), SplitMix64's output function,
 * in wrapping 64-bit arithmetic.  The conversions below follow gpumat.random.reference
 * operation for operation: uniform and integers are exact, so they match bit for bit;
 * normal goes through log/cos/sqrt and matches to the device's float rounding.
 *
 * Entry points (all grid-stride loops, so any launch geometry covers n elements):
 *   random_uniform_f32 (float*  out, i64 n, u64 key, u64 counter)
 *   random_uniform_f64 (double* out, i64 n, u64 key, u64 counter)   [fp64 devices]
 *   random_normal_f32  (float*  out, i64 n, u64 key, u64 counter)
 *   random_normal_f64  (double* out, i64 n, u64 key, u64 counter)   [fp64 devices]
 *   random_integers_i64(i64*    out, i64 n, u64 key, u64 counter, i64 low, u64 span)
 * integers draws low + floor(u * span) as ((z >> 32) * span) >> 32 with span <= 2**32.
 */
#ifndef GPUMAT_RANDOM_H
#define GPUMAT_RANDOM_H

#include "dialect.h"

#if defined(GPUMAT_CUDA) || defined(GPUMAT_ENABLE_FP64)
  #define GPUMAT_RANDOM_FP64 1
#endif

#ifdef GPUMAT_CUDA
  #define RANDOM_LOG_F32 logf
  #define RANDOM_COS_F32 cosf
  #define RANDOM_SQRT_F32 sqrtf
#else
  #define RANDOM_LOG_F32 log
  #define RANDOM_COS_F32 cos
  #define RANDOM_SQRT_F32 sqrt
#endif

/* unsuffixed hex literals too wide for long take the first unsigned 64-bit type in both
 * OpenCL C and C++, whatever the width of long on the host */
#define RANDOM_GAMMA ((u64)0x9E3779B97F4A7C15)
#define RANDOM_2_POW_M24_F32 5.9604644775390625e-08f   /* 2**-24 */
#define RANDOM_2_POW_M32 2.3283064365386962890625e-10     /* 2**-32 */
#define RANDOM_2_POW_M53 1.1102230246251565404236316680908203125e-16  /* 2**-53 */

INLINE u64 random_mix64(u64 z)
{
    z = (z ^ (z >> 30)) * (u64)0xBF58476D1CE4E5B9;
    z = (z ^ (z >> 27)) * (u64)0x94D049BB133111EB;
    return z ^ (z >> 31);
}

INLINE u64 random_bits(u64 key, u64 counter, i64 i)
{
    return random_mix64(key + (counter + (u64)i) * RANDOM_GAMMA);
}

KERNEL void random_uniform_f32(GLOBAL float* RESTRICT out, i64 n, u64 key, u64 counter)
{
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0)
        out[i] = (float)(random_bits(key, counter, i) >> 40) * RANDOM_2_POW_M24_F32;
}

KERNEL void random_normal_f32(GLOBAL float* RESTRICT out, i64 n, u64 key, u64 counter)
{
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0) {
        const u64 z = random_bits(key, counter, i);
        /* Box-Muller: u1 in (0, 1] so the log is finite */
        const float u1 = ((float)(z >> 40) + 1.0f) * RANDOM_2_POW_M24_F32;
        const float u2 = (float)(z & (u64)0xFFFFFF) * RANDOM_2_POW_M24_F32;
        const float radius = RANDOM_SQRT_F32(-2.0f * RANDOM_LOG_F32(u1));
        out[i] = radius * RANDOM_COS_F32(6.2831853071795864769f * u2);
    }
}

KERNEL void random_integers_i64(GLOBAL i64* RESTRICT out, i64 n, u64 key, u64 counter,
                                i64 low, u64 span)
{
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0) {
        const u64 z = random_bits(key, counter, i);
        const u64 offset = ((z >> 32) * span) >> 32;
        out[i] = (i64)((u64)low + offset);
    }
}

#ifdef GPUMAT_RANDOM_FP64
KERNEL void random_uniform_f64(GLOBAL double* RESTRICT out, i64 n, u64 key, u64 counter)
{
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0)
        out[i] = (double)(random_bits(key, counter, i) >> 11) * RANDOM_2_POW_M53;
}

KERNEL void random_normal_f64(GLOBAL double* RESTRICT out, i64 n, u64 key, u64 counter)
{
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0) {
        const u64 z = random_bits(key, counter, i);
        const double u1 = ((double)(z >> 32) + 1.0) * RANDOM_2_POW_M32;
        const double u2 = (double)(z & (u64)0xFFFFFFFF) * RANDOM_2_POW_M32;
        const double radius = sqrt(-2.0 * log(u1));
        out[i] = radius * cos(6.283185307179586 * u2);
    }
}
#endif

#endif /* GPUMAT_RANDOM_H */
