/* CUDA build of the counter-based generator (kernels in common/random.h), loaded with
 * cupy.RawModule(code, options=("-I<kernels/common>", "-I<kernels/cuda>")).
 *
 * Entry points (extern "C", grid-stride loops: any grid covers n elements):
 *   random_uniform_f32 (float*     out, long long n, unsigned long long key,
 *                       unsigned long long counter)
 *   random_uniform_f64 (double*    out, long long n, unsigned long long key,
 *                       unsigned long long counter)
 *   random_normal_f32  (float*     out, long long n, unsigned long long key,
 *                       unsigned long long counter)
 *   random_normal_f64  (double*    out, long long n, unsigned long long key,
 *                       unsigned long long counter)
 *   random_integers_i64(long long* out, long long n, unsigned long long key,
 *                       unsigned long long counter, long long low,
 *                       unsigned long long span)
 * key is gpumat.random's key (the `seed` argument of Backend.random), counter the first
 * draw's index; integers gives int64 values that the caller casts to the wanted dtype.
 * Pass scalars as numpy.int64 / numpy.uint64.
 */
#include "random.h"
