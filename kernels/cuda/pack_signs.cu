/* CUDA build of sign-bit packing (kernel in common/pack_signs.h), loaded with
 * cupy.RawModule(code, options=("-I<kernels/common>", "-I<kernels/cuda>")).
 *
 * Entry point (extern "C", a grid-stride loop: any grid covers rows * words words):
 *   pack_signs_f32(const float* x, unsigned int* out, long long rows, long long n,
 *                  long long words)
 * x is C-contiguous (rows, n) float32; out is (rows, words) uint32 with
 * words = ceil(n / 32); bit j of word w is x[row, 32 * w + j] >= 0 (NaN -> 0), padding 0.
 * Pass the scalars as numpy.int64.
 */
#include "pack_signs.h"
