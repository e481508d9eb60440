/* The strided n-d elementwise kernel family: every map, cast, copy, layout change and
 * indexing operation of the opencl backend (gpumat/backends/opencl_elementwise.py).
 *
 * One program per operand signature, specialised entirely by preprocessor defines and
 * holding one kernel `ew_<op>` per op of a family, so each variant is compiled once and
 * cached; grouping the ops of a signature in one program makes the first use of the next
 * op free (a build costs far more than the kernels in it):
 *
 *   TOUT, T0..T2   storage types of the output and of inputs 0..2 (OpenCL C names)
 *   NIN            number of inputs (0..3)
 *   SCALAR<k>      input k is a by-value kernel argument (already of its target type)
 *   CVT<k>         conversion macro taking input k to the compute type (CVT_BOOL for
 *                  where's condition)
 *   CVTOUT_TC      conversion of a compute-type result to TOUT
 *   CVTOUT_BOOL    conversion of a predicate's (0/1 uchar) result to TOUT
 *   TC, UTC        compute type and its unsigned counterpart (integers wrap through UTC,
 *                  never through signed overflow, which is undefined in C)
 *   TC_KIND        0 bool, 1 unsigned, 2 signed, 3 float (the compute type's kind)
 *   TC_BYTES       the compute type's size in bytes (8 selects double-precision constants)
 *   FAMILY_<name>  which kernels the program holds: unary (every 1-input op, copy
 *                  included), binary (every 2-input op), where, clip, arange, index_axpy,
 *                  transpose (the tiled copy below)
 *   NDIM           iteration dims after the host collapsed contiguous runs; 0 = the 1-d
 *                  contiguous fast path (no index arithmetic, no stride arguments)
 *   INDEX32        the row count fits 31 bits: index division in 32-bit arithmetic
 *   ROW_LOOP       (NDIM > 0) the launch has fewer rows than n: work-items loop over rows
 *   GATHER         (copy only) input 0 holds int64 element offsets added to input 1's address
 *   SCATTER        (copy only) input 0 holds int64 element offsets added to the output's
 *
 * Operands are described by an element offset and, for NDIM > 0, one long8 of element
 * strides per operand over the common iteration shape (stride 0 broadcasts), innermost
 * dimension first (component s0).  Each work-item handles one element; launches are
 * rounded up to whole work-groups, so the kernel checks its ids against the shape.
 */
#include "dialect.h"

/* NumPy computes a + b*c as two rounded operations; contraction to fma would change the
 * last bit of arange and friends. */
#pragma OPENCL FP_CONTRACT OFF

#ifndef NIN
#define NIN 1
#endif
#ifndef NDIM
#define NDIM 0
#endif

/* ---- conversions (T = destination type) ----------------------------------------------- */
#define CVT_SAME(T, v) (v)
#define CVT_CAST(T, v) ((T)(v))
#define CVT_BOOL(T, v) ((T)((v) != 0))
/* float -> unsigned through int64, as NumPy's C casts do on common hardware, so -1.0 gives
 * 255 for uint8 instead of undefined behaviour */
#define CVT_F2U(T, v) ((T)(long)(v))
#define CVT_F2U64(T, v) ((v) >= 9223372036854775808.0f ? (T)(v) : (T)(long)(v))

#ifndef CVT0
#define CVT0 CVT_SAME
#endif
#ifndef CVT1
#define CVT1 CVT_SAME
#endif
#ifndef CVT2
#define CVT2 CVT_SAME
#endif
#ifndef CVTOUT_TC
#define CVTOUT_TC CVT_SAME
#endif
#ifndef CVTOUT_BOOL
#define CVTOUT_BOOL CVT_CAST
#endif

/* ---- arithmetic helpers on the compute type ------------------------------------------- */
#define IS_FLOAT (TC_KIND == 3)
#define IS_SIGNED (TC_KIND == 2)
#define IS_UNSIGNED (TC_KIND == 1)
#define IS_BOOL (TC_KIND == 0)
#define IS_INT (TC_KIND == 1 || TC_KIND == 2)

#if IS_INT
  #define WRAP2(a, op, b) ((TC)((UTC)(a) op (UTC)(b)))
#else
  #define WRAP2(a, op, b) ((TC)((a) op (b)))
#endif

#if IS_FLOAT
/* NumPy's float remainder: fmod, then the sign of the result follows the divisor */
INLINE TC py_remainder(TC a, TC b)
{
    TC m = fmod(a, b);
    if (b == (TC)0)
        return m;                     /* NaN */
    if (m != (TC)0) {
        if ((b < (TC)0) != (m < (TC)0))
            m += b;
    } else {
        m = copysign((TC)0, b);
    }
    return m;
}

/* NumPy's float floor_divide: (a - fmod(a, b)) / b, adjusted towards -inf and snapped to
 * the nearest integer; division by zero gives a / b (inf or NaN) */
INLINE TC py_floor_divide(TC a, TC b)
{
    if (b == (TC)0)
        return a / b;
    TC m = fmod(a, b);
    TC d = (a - m) / b;
    if (m != (TC)0 && ((b < (TC)0) != (m < (TC)0)))
        d -= (TC)1;
    TC f;
    if (d != (TC)0) {
        f = floor(d);
        if (d - f > (TC)0.5)
            f += (TC)1;
    } else {
        f = copysign((TC)0, a / b);
    }
    return f;
}

INLINE TC nan_maximum(TC a, TC b) { return (a >= b || isnan(a)) ? a : b; }
INLINE TC nan_minimum(TC a, TC b) { return (a <= b || isnan(a)) ? a : b; }

/* exp of -|x| never overflows; the two branches are the two stable forms */
/* tanh, exactly +-1 from the first |x| whose tanh rounds there (9.010914 in single,
 * 19.061547465398498 in double precision): the built-in may stay 1 ulp short of it (PoCL's
 * does), and a saturated unit's derivative 1 - y * y must then be 0, as on the other
 * backends, not 1.2e-7 */
#if TC_BYTES == 8
  #define TANH_ONE_FROM 0x1.30fc1931f09cap+4
#else
  #define TANH_ONE_FROM 0x1.205968p+3f
#endif
INLINE TC saturating_tanh(TC x)
{
    return fabs(x) >= TANH_ONE_FROM ? copysign((TC)1, x) : tanh(x);
}

INLINE TC stable_sigmoid(TC x)
{
    TC e = exp(-fabs(x));
    return x >= (TC)0 ? (TC)1 / ((TC)1 + e) : e / ((TC)1 + e);
}
#else
INLINE TC nan_maximum(TC a, TC b) { return a >= b ? a : b; }
INLINE TC nan_minimum(TC a, TC b) { return a <= b ? a : b; }
#endif

#if IS_INT
/* integer division and remainder with NumPy's results where C has undefined behaviour:
 * x // 0 == 0, x % 0 == 0, MIN // -1 == MIN (wraps), MIN % -1 == 0 */
INLINE TC int_floor_divide(TC a, TC b)
{
    if (b == (TC)0)
        return (TC)0;
#if IS_SIGNED
    if (b == (TC)-1)
        return WRAP2(0, -, a);
    TC q = a / b;
    if ((a % b != (TC)0) && ((a < (TC)0) != (b < (TC)0)))
        q -= (TC)1;
    return q;
#else
    return a / b;
#endif
}

/* C-truncating integer division (NumPy has no integer true_divide loop) */
INLINE TC int_truncating_divide(TC a, TC b)
{
    if (b == (TC)0)
        return (TC)0;
#if IS_SIGNED
    if (b == (TC)-1)
        return WRAP2(0, -, a);
#endif
    return a / b;
}

INLINE TC int_remainder(TC a, TC b)
{
    if (b == (TC)0)
        return (TC)0;
#if IS_SIGNED
    if (b == (TC)-1)
        return (TC)0;
    TC r = a % b;
    if (r != (TC)0 && ((r < (TC)0) != (b < (TC)0)))
        r += b;
    return r;
#else
    return a % b;
#endif
}

/* integer power by repeated squaring in wrapping arithmetic; a negative exponent (which
 * NumPy rejects) gives C's truncated result: 1 for base 1, +-1 for base -1, else 0 */
INLINE TC int_power(TC a, TC b)
{
#if IS_SIGNED
    if (b < (TC)0)
        return a == (TC)1 ? (TC)1 : (a == (TC)-1 ? ((b & (TC)1) ? (TC)-1 : (TC)1) : (TC)0);
#endif
    UTC base = (UTC)a, e = (UTC)b, r = (UTC)1;
    while (e) {
        if (e & (UTC)1)
            r = (UTC)(r * base);
        base = (UTC)(base * base);
        e >>= 1;
    }
    return (TC)r;
}
#endif

INLINE TC clip_value(TC x, TC lo, TC hi) { return nan_minimum(nan_maximum(x, lo), hi); }

/* ---- the ops: OPDEF_<name>(a, b, c) on compute-type values (i = flat element index) ---- */
#define OPDEF_copy(a, b, c) (a)

#if IS_BOOL
  #define OPDEF_add(a, b, c) ((TC)((a) | (b)))
  #define OPDEF_subtract(a, b, c) ((TC)((a) ^ (b)))
  #define OPDEF_multiply(a, b, c) ((TC)((a) & (b)))
  #define OPDEF_divide(a, b, c) ((b) ? (a) : (TC)0)
  #define OPDEF_floor_divide(a, b, c) ((b) ? (a) : (TC)0)
  #define OPDEF_mod(a, b, c) ((TC)0)
  #define OPDEF_power(a, b, c) ((TC)((a) | !(b)))
#elif IS_INT
  #define OPDEF_add(a, b, c) WRAP2(a, +, b)
  #define OPDEF_subtract(a, b, c) WRAP2(a, -, b)
  #define OPDEF_multiply(a, b, c) WRAP2(a, *, b)
  #define OPDEF_divide(a, b, c) int_truncating_divide(a, b)
  #define OPDEF_floor_divide(a, b, c) int_floor_divide(a, b)
  #define OPDEF_mod(a, b, c) int_remainder(a, b)
  #define OPDEF_power(a, b, c) int_power(a, b)
#else
  #define OPDEF_add(a, b, c) ((a) + (b))
  #define OPDEF_subtract(a, b, c) ((a) - (b))
  #define OPDEF_multiply(a, b, c) ((a) * (b))
  #define OPDEF_divide(a, b, c) ((a) / (b))
  #define OPDEF_floor_divide(a, b, c) py_floor_divide(a, b)
  #define OPDEF_mod(a, b, c) py_remainder(a, b)
  #define OPDEF_power(a, b, c) pow(a, b)
#endif
#define OPDEF_maximum(a, b, c) nan_maximum(a, b)
#define OPDEF_minimum(a, b, c) nan_minimum(a, b)
#define OPDEF_clip(a, b, c) clip_value(a, b, c)

/* predicates: 0/1 uchar results */
#define OPDEF_equal(a, b, c) ((uchar)((a) == (b)))
#define OPDEF_not_equal(a, b, c) ((uchar)((a) != (b)))
#define OPDEF_less(a, b, c) ((uchar)((a) < (b)))
#define OPDEF_less_equal(a, b, c) ((uchar)((a) <= (b)))
#define OPDEF_greater(a, b, c) ((uchar)((a) > (b)))
#define OPDEF_greater_equal(a, b, c) ((uchar)((a) >= (b)))
#define OPDEF_logical_and(a, b, c) ((uchar)(((a) != (TC)0) & ((b) != (TC)0)))
#define OPDEF_logical_or(a, b, c) ((uchar)(((a) != (TC)0) | ((b) != (TC)0)))
#define OPDEF_logical_xor(a, b, c) ((uchar)(((a) != (TC)0) != ((b) != (TC)0)))
#define OPDEF_logical_not(a, b, c) ((uchar)((a) == (TC)0))
#if IS_FLOAT
  #define OPDEF_isnan(a, b, c) ((uchar)(isnan(a) != 0))
  #define OPDEF_isinf(a, b, c) ((uchar)(isinf(a) != 0))
  #define OPDEF_isfinite(a, b, c) ((uchar)(isfinite(a) != 0))
#else
  #define OPDEF_isnan(a, b, c) ((uchar)0)
  #define OPDEF_isinf(a, b, c) ((uchar)0)
  #define OPDEF_isfinite(a, b, c) ((uchar)1)
#endif

#if !IS_FLOAT
  #define OPDEF_bitwise_and(a, b, c) ((TC)((a) & (b)))
  #define OPDEF_bitwise_or(a, b, c) ((TC)((a) | (b)))
  #define OPDEF_bitwise_xor(a, b, c) ((TC)((a) ^ (b)))
#endif

#if IS_BOOL
  #define OPDEF_invert(a, b, c) ((TC)((a) == (TC)0))
  #define OPDEF_negative(a, b, c) (a)
  #define OPDEF_abs(a, b, c) (a)
  #define OPDEF_sign(a, b, c) (a)
  #define OPDEF_square(a, b, c) (a)
  #define OPDEF_reciprocal(a, b, c) (a)
#elif IS_INT
  #define OPDEF_invert(a, b, c) ((TC)(~(a)))
  #define OPDEF_negative(a, b, c) WRAP2(0, -, a)
  #define OPDEF_square(a, b, c) WRAP2(a, *, a)
  #if IS_SIGNED
    #define OPDEF_abs(a, b, c) ((a) < (TC)0 ? WRAP2(0, -, a) : (a))
    #define OPDEF_sign(a, b, c) ((a) > (TC)0 ? (TC)1 : (a) < (TC)0 ? (TC)-1 : (TC)0)
    /* NumPy casts 1.0 / a: 0 -> inf -> the most negative value; |a| > 1 -> 0 */
    #define OPDEF_reciprocal(a, b, c) ((a) == (TC)0 ? (TC)((UTC)1 << (8 * sizeof(TC) - 1)) : ((a) == (TC)1 || (a) == (TC)-1) ? (a) : (TC)0)
  #else
    #define OPDEF_abs(a, b, c) (a)
    #define OPDEF_sign(a, b, c) ((TC)((a) != (TC)0))
    #define OPDEF_reciprocal(a, b, c) ((a) == (TC)1 ? (TC)1 : (TC)0)
  #endif
#else
  #define OPDEF_negative(a, b, c) (-(a))
  #define OPDEF_abs(a, b, c) fabs(a)
  #define OPDEF_sign(a, b, c) (isnan(a) ? (a) : (a) > (TC)0 ? (TC)1 : (a) < (TC)0 ? (TC)-1 : (TC)0)
  #define OPDEF_square(a, b, c) ((a) * (a))
  #define OPDEF_reciprocal(a, b, c) ((TC)1 / (a))
#endif

#if IS_FLOAT
  #define OPDEF_floor(a, b, c) floor(a)
  #define OPDEF_ceil(a, b, c) ceil(a)
  #define OPDEF_round(a, b, c) rint(a)        /* round half to even */
  #define OPDEF_exp(a, b, c) exp(a)
  #define OPDEF_log(a, b, c) log(a)
  #define OPDEF_sqrt(a, b, c) sqrt(a)
  #define OPDEF_tanh(a, b, c) saturating_tanh(a)
  #define OPDEF_sin(a, b, c) sin(a)
  #define OPDEF_cos(a, b, c) cos(a)
  #define OPDEF_log1p(a, b, c) log1p(a)
  #define OPDEF_expm1(a, b, c) expm1(a)
  #define OPDEF_sigmoid(a, b, c) stable_sigmoid(a)
#else
  #define OPDEF_floor(a, b, c) (a)
  #define OPDEF_ceil(a, b, c) (a)
  #define OPDEF_round(a, b, c) (a)
#endif

#define OPDEF_where(a, b, c) ((a) != (TC)0 ? (b) : (c))
/* start + step * i, both rounded separately as NumPy does */
#if IS_FLOAT
  #define OPDEF_arange(a, b, c) ((a) + (b) * (TC)i)
#else
  #define OPDEF_arange(a, b, c) ((TC)((UTC)(a) + (UTC)(b) * (UTC)i))
#endif
/* a * b + c in wrapping int64: flat element offsets for advanced indexing */
#define OPDEF_index_axpy(a, b, c) ((TC)((UTC)(a) * (UTC)(b) + (UTC)(c)))

/* ---- argument lists ------------------------------------------------------------------- */
#if NDIM > 0
  #define STRIDES_ARG(k) , long8 stride##k
  #define SHAPE_ARGS , long8 shape, long8 stride_out
#else
  #define STRIDES_ARG(k)
  #define SHAPE_ARGS
#endif

#define ARRAY_ARGS(k, T) , GLOBAL const T* RESTRICT in##k, long offset##k
#define SCALAR_ARGS(k, T) , T in##k

#if NIN > 0
  #ifdef SCALAR0
    #define IN0_ARGS SCALAR_ARGS(0, T0)
    #define IN0_STRIDES
    #define LOAD0 in0
  #else
    #define IN0_ARGS ARRAY_ARGS(0, T0)
    #define IN0_STRIDES STRIDES_ARG(0)
    #define LOAD0 in0[o0]
  #endif
  #define VALUE0 CVT0(TC, LOAD0)
#else
  #define IN0_ARGS
  #define IN0_STRIDES
  #define VALUE0 ((TC)0)
#endif
#if NIN > 1
  #ifdef SCALAR1
    #define IN1_ARGS SCALAR_ARGS(1, T1)
    #define IN1_STRIDES
    #define LOAD1 in1
  #else
    #define IN1_ARGS ARRAY_ARGS(1, T1)
    #define IN1_STRIDES STRIDES_ARG(1)
    #define LOAD1 in1[o1]
  #endif
  #define VALUE1 CVT1(TC, LOAD1)
#else
  #define IN1_ARGS
  #define IN1_STRIDES
  #define VALUE1 ((TC)0)
#endif
#if NIN > 2
  #ifdef SCALAR2
    #define IN2_ARGS SCALAR_ARGS(2, T2)
    #define IN2_STRIDES
    #define LOAD2 in2
  #else
    #define IN2_ARGS ARRAY_ARGS(2, T2)
    #define IN2_STRIDES STRIDES_ARG(2)
    #define LOAD2 in2[o2]
  #endif
  #define VALUE2 CVT2(TC, LOAD2)
#else
  #define IN2_ARGS
  #define IN2_STRIDES
  #define VALUE2 ((TC)0)
#endif

#define KERNEL_ARGS GLOBAL TOUT* RESTRICT out, long offset_out IN0_ARGS IN1_ARGS IN2_ARGS, \
                    long n SHAPE_ARGS IN0_STRIDES IN1_STRIDES IN2_STRIDES

/* ---- per-operand offset bookkeeping ---------------------------------------------------- */
#if NIN > 0 && !defined(SCALAR0)
  #define INIT0 long o0 = offset0;
  #define ADV0(k, c) o0 += (long)(k) * stride0.c;
  #define ADV0_FLAT(i) o0 += (i);
#else
  #define INIT0
  #define ADV0(k, c)
  #define ADV0_FLAT(i)
#endif
#if NIN > 1 && !defined(SCALAR1)
  #define INIT1 long o1 = offset1;
  #define ADV1(k, c) o1 += (long)(k) * stride1.c;
  #define ADV1_FLAT(i) o1 += (i);
#else
  #define INIT1
  #define ADV1(k, c)
  #define ADV1_FLAT(i)
#endif
#if NIN > 2 && !defined(SCALAR2)
  #define INIT2 long o2 = offset2;
  #define ADV2(k, c) o2 += (long)(k) * stride2.c;
  #define ADV2_FLAT(i) o2 += (i);
#else
  #define INIT2
  #define ADV2(k, c)
  #define ADV2_FLAT(i)
#endif

#ifdef INDEX32
  typedef uint index_t;
#else
  typedef long index_t;
#endif

/* peel one dimension (component c of the long8s) off the flat index of the outer dims */
#define STEP(c) {                                                  \
        index_t q_ = rem / (index_t)shape.c;                       \
        index_t k_ = rem - q_ * (index_t)shape.c;                  \
        rem = q_;                                                  \
        oo += (long)k_ * stride_out.c;                             \
        ADV0(k_, c) ADV1(k_, c) ADV2(k_, c)                        \
    }
#define LAST(c) {                                                  \
        oo += (long)rem * stride_out.c;                            \
        ADV0(rem, c) ADV1(rem, c) ADV2(rem, c)                     \
    }

#if NDIM == 0 || NDIM == 1
  #define OUTER_DIMS
#elif NDIM == 2
  #define OUTER_DIMS LAST(s1)
#elif NDIM == 3
  #define OUTER_DIMS STEP(s1) LAST(s2)
#elif NDIM == 4
  #define OUTER_DIMS STEP(s1) STEP(s2) LAST(s3)
#elif NDIM == 5
  #define OUTER_DIMS STEP(s1) STEP(s2) STEP(s3) LAST(s4)
#elif NDIM == 6
  #define OUTER_DIMS STEP(s1) STEP(s2) STEP(s3) STEP(s4) LAST(s5)
#elif NDIM == 7
  #define OUTER_DIMS STEP(s1) STEP(s2) STEP(s3) STEP(s4) STEP(s5) LAST(s6)
#elif NDIM == 8
  #define OUTER_DIMS STEP(s1) STEP(s2) STEP(s3) STEP(s4) STEP(s5) STEP(s6) LAST(s7)
#else
  #error "elementwise.cl: NDIM must be 0..8"
#endif

/* Opens the loop that sets oo / o0..o2 (element offsets of this work-item's operands) and
 * `i`; END_LOCATE closes it.
 * NDIM == 0: a 1-d launch over n contiguous elements.
 * NDIM >= 1: a 2-d launch; grid dimension 0 runs along the innermost iteration dim
 * (component s0, so neighbouring work-items touch neighbouring elements) and dimension 1
 * over the n rows formed by the outer dims s1..s{NDIM-1} (outermost last), so a 2-d
 * problem needs no index division at all.  With ROW_LOOP the rows are a grid-stride loop,
 * for launches beyond the 65535 work-groups some devices allow along dimension 1. */
#if NDIM == 0
  #define LOCATE                                                   \
    const long i = GLOBAL_ID_0;                                    \
    if (i >= n)                                                    \
        return;                                                    \
    {                                                              \
        long oo = offset_out + i;                                  \
        INIT0 INIT1 INIT2                                          \
        ADV0_FLAT(i) ADV1_FLAT(i) ADV2_FLAT(i)
#else
  #ifdef ROW_LOOP
    #define FOR_ROWS for (long row = GLOBAL_ID_1; row < n; row += (long)get_global_size(1))
  #else
    /* one row per work-item (the straight form vectorises better on CPU devices) */
    #define FOR_ROWS for (long row = GLOBAL_ID_1; row < n; row = n)
  #endif
  #define LOCATE                                                   \
    const long i = GLOBAL_ID_0;                                    \
    if (i >= shape.s0)                                             \
        return;                                                    \
    FOR_ROWS {                                                     \
        long oo = offset_out + i * stride_out.s0;                  \
        INIT0 INIT1 INIT2                                          \
        ADV0(i, s0) ADV1(i, s0) ADV2(i, s0)                        \
        index_t rem = (index_t)row;                                \
        OUTER_DIMS
#endif
#define END_LOCATE }

/* ---- tiled transpose (FAMILY_transpose) ---------------------------------------------- *
 * A strided copy whose output-contiguous dim (s0) is not the input-contiguous one (s1):
 * a 32 x 32 tile goes through local memory, so reads run along the input's contiguous dim
 * and writes along the output's (both coalesced on a GPU, both streaming on a CPU).
 * Grid: (ceil(s0/32)*32, <= ceil(s1/32)*8, <= n batches); the dims s2..s{NDIM-1} are
 * batch dims decomposed from the batch index (outermost last). */
#define TILE_DIM 32
#define TILE_ROWS 8
#if NDIM <= 2
  #define BATCH_DIMS
#elif NDIM == 3
  #define BATCH_DIMS LAST(s2)
#elif NDIM == 4
  #define BATCH_DIMS STEP(s2) LAST(s3)
#elif NDIM == 5
  #define BATCH_DIMS STEP(s2) STEP(s3) LAST(s4)
#elif NDIM == 6
  #define BATCH_DIMS STEP(s2) STEP(s3) STEP(s4) LAST(s5)
#elif NDIM == 7
  #define BATCH_DIMS STEP(s2) STEP(s3) STEP(s4) STEP(s5) LAST(s6)
#else
  #define BATCH_DIMS STEP(s2) STEP(s3) STEP(s4) STEP(s5) STEP(s6) LAST(s7)
#endif

/* one kernel: out = CVTOUT(OPDEF_<name>(inputs converted to TC)) */
#define ELEMENTWISE(name, result_type, cvtout)                     \
KERNEL void ew_##name(KERNEL_ARGS)                                 \
{                                                                  \
    LOCATE                                                         \
        const TC a = VALUE0;                                       \
        const TC b = VALUE1;                                       \
        const TC c = VALUE2;                                       \
        const result_type r = OPDEF_##name(a, b, c);               \
        out[oo] = cvtout(TOUT, r);                                 \
    END_LOCATE                                                     \
}
/* the op names (abs, floor, ...) are OpenCL builtins that some compilers define as macros,
 * so they may only ever appear next to ## (never expanded): hence no ARITHMETIC(name)
 * wrapper macros, and ELEMENTWISE spelled out below */

#if defined(GATHER)
KERNEL void ew_copy(KERNEL_ARGS)
{
    LOCATE
        out[oo] = CVTOUT_TC(TOUT, CVT1(TC, in1[o1 + in0[o0]]));
    END_LOCATE
}
#elif defined(SCATTER)
KERNEL void ew_copy(KERNEL_ARGS)
{
    LOCATE
        out[oo + in0[o0]] = CVTOUT_TC(TOUT, CVT1(TC, LOAD1));
    END_LOCATE
}
#elif defined(FAMILY_unary)
ELEMENTWISE(copy, TC, CVTOUT_TC)
ELEMENTWISE(negative, TC, CVTOUT_TC)
ELEMENTWISE(abs, TC, CVTOUT_TC)
ELEMENTWISE(sign, TC, CVTOUT_TC)
ELEMENTWISE(floor, TC, CVTOUT_TC)
ELEMENTWISE(ceil, TC, CVTOUT_TC)
ELEMENTWISE(round, TC, CVTOUT_TC)
ELEMENTWISE(square, TC, CVTOUT_TC)
ELEMENTWISE(reciprocal, TC, CVTOUT_TC)
ELEMENTWISE(logical_not, uchar, CVTOUT_BOOL)
ELEMENTWISE(isnan, uchar, CVTOUT_BOOL)
ELEMENTWISE(isinf, uchar, CVTOUT_BOOL)
ELEMENTWISE(isfinite, uchar, CVTOUT_BOOL)
  #if IS_FLOAT
ELEMENTWISE(exp, TC, CVTOUT_TC)
ELEMENTWISE(log, TC, CVTOUT_TC)
ELEMENTWISE(sqrt, TC, CVTOUT_TC)
ELEMENTWISE(tanh, TC, CVTOUT_TC)
ELEMENTWISE(sin, TC, CVTOUT_TC)
ELEMENTWISE(cos, TC, CVTOUT_TC)
ELEMENTWISE(log1p, TC, CVTOUT_TC)
ELEMENTWISE(expm1, TC, CVTOUT_TC)
ELEMENTWISE(sigmoid, TC, CVTOUT_TC)
  #else
ELEMENTWISE(invert, TC, CVTOUT_TC)
  #endif
#elif defined(FAMILY_binary)
ELEMENTWISE(add, TC, CVTOUT_TC)
ELEMENTWISE(subtract, TC, CVTOUT_TC)
ELEMENTWISE(multiply, TC, CVTOUT_TC)
ELEMENTWISE(divide, TC, CVTOUT_TC)
ELEMENTWISE(floor_divide, TC, CVTOUT_TC)
ELEMENTWISE(mod, TC, CVTOUT_TC)
ELEMENTWISE(power, TC, CVTOUT_TC)
ELEMENTWISE(maximum, TC, CVTOUT_TC)
ELEMENTWISE(minimum, TC, CVTOUT_TC)
ELEMENTWISE(equal, uchar, CVTOUT_BOOL)
ELEMENTWISE(not_equal, uchar, CVTOUT_BOOL)
ELEMENTWISE(less, uchar, CVTOUT_BOOL)
ELEMENTWISE(less_equal, uchar, CVTOUT_BOOL)
ELEMENTWISE(greater, uchar, CVTOUT_BOOL)
ELEMENTWISE(greater_equal, uchar, CVTOUT_BOOL)
ELEMENTWISE(logical_and, uchar, CVTOUT_BOOL)
ELEMENTWISE(logical_or, uchar, CVTOUT_BOOL)
ELEMENTWISE(logical_xor, uchar, CVTOUT_BOOL)
  #if !IS_FLOAT
ELEMENTWISE(bitwise_and, TC, CVTOUT_TC)
ELEMENTWISE(bitwise_or, TC, CVTOUT_TC)
ELEMENTWISE(bitwise_xor, TC, CVTOUT_TC)
  #endif
#elif defined(FAMILY_transpose)
KERNEL void ew_transpose(GLOBAL TOUT* RESTRICT out, long offset_out,
                         GLOBAL const T0* RESTRICT in0, long offset0, long n,
                         long8 shape, long8 stride_out, long8 stride0)
{
    LOCAL TOUT tile[TILE_DIM][TILE_DIM + 1];    /* [s0][s1]; +1 avoids bank conflicts */
    const long base0 = (long)GROUP_ID_0 * TILE_DIM;
    const int lx = (int)LOCAL_ID_0;
    const int ly = (int)LOCAL_ID_1;
    const long tiles1 = (shape.s1 + TILE_DIM - 1) / TILE_DIM;
    /* grid-stride loops over tiles along s1 and over batches: some devices allow no more
     * than 65535 work-groups along dimensions 1 and 2.  The bounds are uniform across the
     * work-group, so every work-item reaches the barriers. */
    for (long batch = (long)get_group_id(2); batch < n; batch += (long)get_num_groups(2)) {
        long oo = offset_out;
        long o0 = offset0;
        index_t rem = (index_t)batch;
        BATCH_DIMS
        for (long t1 = (long)GROUP_ID_1; t1 < tiles1; t1 += (long)get_num_groups(1)) {
            const long base1 = t1 * TILE_DIM;
            /* read: neighbouring lx walk the input-contiguous dim s1 */
            for (int k = 0; k < TILE_DIM; k += TILE_ROWS) {
                const long i0 = base0 + ly + k;
                const long i1 = base1 + lx;
                if (i0 < shape.s0 && i1 < shape.s1)
                    tile[ly + k][lx] = CVTOUT_TC(TOUT, CVT0(TC, in0[o0 + i0 * stride0.s0
                                                                     + i1 * stride0.s1]));
            }
            LOCAL_BARRIER;
            /* write: neighbouring lx walk the output-contiguous dim s0 */
            for (int k = 0; k < TILE_DIM; k += TILE_ROWS) {
                const long i0 = base0 + lx;
                const long i1 = base1 + ly + k;
                if (i0 < shape.s0 && i1 < shape.s1)
                    out[oo + i0 * stride_out.s0 + i1 * stride_out.s1] = tile[lx][ly + k];
            }
            LOCAL_BARRIER;   /* before the next tile overwrites this one */
        }
    }
}
#elif defined(FAMILY_where)
ELEMENTWISE(where, TC, CVTOUT_TC)
#elif defined(FAMILY_clip)
ELEMENTWISE(clip, TC, CVTOUT_TC)
#elif defined(FAMILY_arange)
ELEMENTWISE(arange, TC, CVTOUT_TC)
#elif defined(FAMILY_index_axpy)
ELEMENTWISE(index_axpy, TC, CVTOUT_TC)
#else
  #error "elementwise.cl: define one FAMILY_<name>"
#endif
