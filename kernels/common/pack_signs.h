/* Sign-bit packing for binarised networks, one source for OpenCL and CUDA.
 *
 * A row of n floats becomes words = ceil(n / 32) uint32 words; bit j (LSB = bit 0) of word w
 * is 1 iff x[32 * w + j] >= 0.  NaN compares false and packs to 0, -0.0 packs to 1, and the
 * padding bits of a row's last word are 0 (the layout of kernels/cpu/pack_signs.hpp).
 *
 * Entry point (a grid-stride loop over the rows * words output words, so any launch
 * geometry covers them):
 *   pack_signs_f32(const float* x, u32* out, i64 rows, i64 n, i64 words)
 */
#ifndef GPUMAT_PACK_SIGNS_H
#define GPUMAT_PACK_SIGNS_H

#include "dialect.h"

INLINE u32 pack_signs_word(GLOBAL const float* RESTRICT src, i64 count)
{
    u32 word = 0;
    if (count >= 32) {
        /* the full-word case with a constant trip count, so compilers unroll it */
        for (int j = 0; j < 32; ++j)
            word |= (u32)(src[j] >= 0.0f) << j;
    } else {
        for (int j = 0; j < (int)count; ++j)
            word |= (u32)(src[j] >= 0.0f) << j;
    }
    return word;
}

KERNEL void pack_signs_f32(GLOBAL const float* RESTRICT x, GLOBAL u32* RESTRICT out,
                           i64 rows, i64 n, i64 words)
{
    const i64 total = rows * words;
    for (i64 t = GLOBAL_ID_0; t < total; t += GLOBAL_SIZE_0) {
        const i64 row = t / words;
        const i64 w = t - row * words;
        out[t] = pack_signs_word(x + row * n + 32 * w, n - 32 * w);
    }
}

#endif /* GPUMAT_PACK_SIGNS_H */
