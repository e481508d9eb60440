// Compiler portability macros shared by the native CPU kernels (direct_conv.hpp, xnor.hpp):
// vector extensions, forced inlining, restrict and loop unrolling.  Each can be predefined
// (e.g. -DGPUMAT_VECTOR_EXTENSIONS=0 for the plain-array baseline).
#pragma once

// GCC and Clang: vector types (vector_size), which compile to each copy's vector width.
// Other compilers (or -DGPUMAT_VECTOR_EXTENSIONS=0): plain arrays, one baseline copy.
#ifndef GPUMAT_VECTOR_EXTENSIONS
#if defined(__GNUC__) || defined(__clang__)
#define GPUMAT_VECTOR_EXTENSIONS 1
#else
#define GPUMAT_VECTOR_EXTENSIONS 0
#endif
#endif

#ifndef GPUMAT_FORCE_INLINE
#if defined(__GNUC__) || defined(__clang__)
#define GPUMAT_FORCE_INLINE __attribute__((always_inline)) inline
#else
#define GPUMAT_FORCE_INLINE inline
#endif
#endif

#ifndef GPUMAT_RESTRICT
#if defined(__GNUC__) || defined(__clang__) || defined(_MSC_VER)
#define GPUMAT_RESTRICT __restrict
#else
#define GPUMAT_RESTRICT
#endif
#endif

#ifndef GPUMAT_UNROLL
#if defined(__clang__)
#define GPUMAT_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define GPUMAT_UNROLL _Pragma("GCC unroll 32")
#else
#define GPUMAT_UNROLL
#endif
#endif
