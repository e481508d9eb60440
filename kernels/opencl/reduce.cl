/* Reductions over one axis of an array viewed as (outer, R, inner), or over all elements.
 *
 * Work-group layout: WG work-items = TJ outputs x TR threads per output (TJ * TR == WG, both
 * powers of two, TJ a run-time argument so one binary serves every shape).  Output p (a flat
 * index over outer * inner) and chunk c of the reduced axis belong to group
 * (p / TJ) * n_chunks + c.  Each thread folds every TR-th element of its chunk serially (a short
 * run, bounded by the host so float sums stay accurate), then the TR partial results of each
 * output meet in a local-memory tree.  With n_chunks > 1 the results are partials laid out as
 * (outer, n_chunks, inner), and the host reduces them again with reduce_next: a two-stage (or
 * deeper) grid reduction.
 *
 * Defines: OP (operation code below), IN_T (element type), ACC_T (accumulator), PART_T (type
 * written out: the final value type, or the partial type between stages), IS_FLOAT,
 * IDENTITY (neutral element as an ACC_T expression), WG (work-group size).
 */
#include "dialect.h"

#define OP_SUM 1
#define OP_PROD 2
#define OP_MAX 3
#define OP_MIN 4
#define OP_ANY 5
#define OP_ALL 6
#define OP_ARGMAX 7
#define OP_ARGMIN 8
#define OP_COUNT 9   /* number of nonzero elements; later stages sum the counts */

/* GREATER_OR_NAN(v, acc): v replaces acc in max (v larger, or the first NaN met);
 * NAN_OVER(v, acc): v is NaN and acc is not.  Integer builds have no NaN tests at all. */
#if IS_FLOAT
  #define GREATER_OR_NAN(v, acc) ((v) > (acc) || isnan(v))
  #define LESS_OR_NAN(v, acc) ((v) < (acc) || isnan(v))
  #define NAN_OVER(v, acc) (isnan(v) && !isnan(acc))
#else
  #define GREATER_OR_NAN(v, acc) ((v) > (acc))
  #define LESS_OR_NAN(v, acc) ((v) < (acc))
  #define NAN_OVER(v, acc) 0
#endif

#define NO_INDEX ((i64)(~(u64)0 >> 1))   /* loses every tie: the largest index */
#define IS_ARG (OP == OP_ARGMAX || OP == OP_ARGMIN)

/* element -> accumulator, for the first stage and for later stages (partials as input) */
#if OP == OP_ANY || OP == OP_ALL
  #define LOAD_FIRST(v) ((ACC_T)((v) != 0))
  #define LOAD_NEXT(v) ((ACC_T)((v) != 0))
#elif OP == OP_COUNT
  #define LOAD_FIRST(v) ((ACC_T)((v) != 0))
  #define LOAD_NEXT(v) ((ACC_T)(v))
#else
  #define LOAD_FIRST(v) ((ACC_T)(v))
  #define LOAD_NEXT(v) ((ACC_T)(v))
#endif

/* acc = acc (op) v; max/min keep the first NaN they meet (NaN propagates) */
#if OP == OP_SUM || OP == OP_COUNT
  #define COMBINE(acc, v) acc = acc + (v)
#elif OP == OP_PROD
  #define COMBINE(acc, v) acc = acc * (v)
#elif OP == OP_ANY
  #define COMBINE(acc, v) acc = acc | (v)
#elif OP == OP_ALL
  #define COMBINE(acc, v) acc = acc & (v)
#elif OP == OP_MAX
  #define COMBINE(acc, v) acc = GREATER_OR_NAN(v, acc) ? (v) : acc
#elif OP == OP_MIN
  #define COMBINE(acc, v) acc = LESS_OR_NAN(v, acc) ? (v) : acc
#endif

#if IS_ARG
/* Does (bv, bi) beat (av, ai)?  NaN beats everything (first NaN wins); otherwise the larger
 * (argmax) or smaller (argmin) value, and on ties the smaller index.  The order is total, so
 * the result does not depend on the order of combination. */
INLINE int arg_better(ACC_T bv, i64 bi, ACC_T av, i64 ai) {
#if IS_FLOAT
  const int bn = isnan(bv), an = isnan(av);
  if (bn || an) return bn && (!an || bi < ai);
#endif
#if OP == OP_ARGMAX
  return bv > av || (bv == av && bi < ai);
#else
  return bv < av || (bv == av && bi < ai);
#endif
}
#define COMBINE_ARG(acc, acc_i, v, vi) \
  if (arg_better((v), (vi), acc, acc_i)) { acc = (v); acc_i = (vi); }
/* The same inside one work-item's serial run, where indices only grow: a tie never wins. */
#if OP == OP_ARGMAX
  #define COMBINE_ARG_RUN(acc, acc_i, v, vi) \
    if (acc_i == NO_INDEX || (v) > acc || NAN_OVER(v, acc)) { acc = (v); acc_i = (vi); }
#else
  #define COMBINE_ARG_RUN(acc, acc_i, v, vi) \
    if (acc_i == NO_INDEX || (v) < acc || NAN_OVER(v, acc)) { acc = (v); acc_i = (vi); }
#endif
#endif

/* The shared body.  SRC_T/LOAD select first-stage or later-stage input; GET_INDEX(r, at)
 * gives the index an element carries (its position r, or the partial's stored index). */
#if IS_ARG
#define REDUCE_BODY(SRC_T, LOAD, GET_INDEX)                                                    \
  LOCAL ACC_T local_acc[WG];                                                                   \
  LOCAL i64 local_idx[WG];                                                                     \
  const int lid = (int)LOCAL_ID_0;                                                             \
  const int jl = lid % tj, t = lid / tj, tr = WG / tj;                                         \
  const i64 group = (i64)GROUP_ID_0;                                                           \
  const i64 chunk = group % n_chunks;                                                          \
  const i64 p = (group / n_chunks) * tj + jl;                                                  \
  ACC_T acc = IDENTITY;                                                                        \
  i64 acc_i = NO_INDEX;                                                                        \
  i64 o = 0, j = 0;                                                                            \
  if (p < n_out) {                                                                             \
    o = p / inner; j = p - o * inner;                                                          \
    const i64 r0 = chunk * chunk_len;                                                          \
    const i64 r1 = (r0 + chunk_len < R) ? r0 + chunk_len : R;                                  \
    const i64 base = o * R * inner + j;                                                        \
    for (i64 r = r0 + t; r < r1; r += tr) {                                                    \
      const i64 at = base + r * inner;                                                         \
      const ACC_T v = LOAD(x[at]);                                                             \
      COMBINE_ARG_RUN(acc, acc_i, v, GET_INDEX(r, at));                                        \
    }                                                                                          \
  }                                                                                            \
  local_acc[lid] = acc;                                                                        \
  local_idx[lid] = acc_i;                                                                      \
  LOCAL_BARRIER;                                                                               \
  for (int s = tr >> 1; s > 0; s >>= 1) {                                                      \
    if (t < s) {                                                                               \
      const ACC_T v = local_acc[lid + s * tj];                                                 \
      const i64 vi = local_idx[lid + s * tj];                                                  \
      COMBINE_ARG(acc, acc_i, v, vi);                                                          \
      local_acc[lid] = acc;                                                                    \
      local_idx[lid] = acc_i;                                                                  \
    }                                                                                          \
    LOCAL_BARRIER;                                                                             \
  }                                                                                            \
  if (t == 0 && p < n_out) {                                                                   \
    const i64 dst = (o * n_chunks + chunk) * inner + j;                                        \
    if (write_value) out_value[dst] = (PART_T)acc;                                             \
    out_index[dst] = acc_i;                                                                    \
  }
#else
#define REDUCE_BODY(SRC_T, LOAD, GET_INDEX)                                                    \
  LOCAL ACC_T local_acc[WG];                                                                   \
  const int lid = (int)LOCAL_ID_0;                                                             \
  const int jl = lid % tj, t = lid / tj, tr = WG / tj;                                         \
  const i64 group = (i64)GROUP_ID_0;                                                           \
  const i64 chunk = group % n_chunks;                                                          \
  const i64 p = (group / n_chunks) * tj + jl;                                                  \
  ACC_T acc = IDENTITY;                                                                        \
  i64 o = 0, j = 0;                                                                            \
  if (p < n_out) {                                                                             \
    o = p / inner; j = p - o * inner;                                                          \
    const i64 r0 = chunk * chunk_len;                                                          \
    const i64 r1 = (r0 + chunk_len < R) ? r0 + chunk_len : R;                                  \
    GLOBAL const SRC_T* line = x + (o * R * inner + j);                                        \
    if (inner == 1) {                                                                          \
      for (i64 r = r0 + t; r < r1; r += tr) { const ACC_T v = LOAD(line[r]); COMBINE(acc, v); } \
    } else {                                                                                   \
      for (i64 r = r0 + t; r < r1; r += tr) {                                                  \
        const ACC_T v = LOAD(line[r * inner]);                                                 \
        COMBINE(acc, v);                                                                       \
      }                                                                                        \
    }                                                                                          \
  }                                                                                            \
  local_acc[lid] = acc;                                                                        \
  LOCAL_BARRIER;                                                                               \
  for (int s = tr >> 1; s > 0; s >>= 1) {                                                      \
    if (t < s) {                                                                               \
      const ACC_T v = local_acc[lid + s * tj];                                                 \
      COMBINE(acc, v);                                                                         \
      local_acc[lid] = acc;                                                                    \
    }                                                                                          \
    LOCAL_BARRIER;                                                                             \
  }                                                                                            \
  if (t == 0 && p < n_out) {                                                                   \
    const i64 dst = (o * n_chunks + chunk) * inner + j;                                        \
    out_value[dst] = (PART_T)acc;                                                              \
  }
#endif

#define POSITION(r, at) (r)
#define STORED(r, at) (x_index[at])

/* First stage: reads the input; an arg-reduction's index is the position along the axis. */
KERNEL void reduce_first(GLOBAL const IN_T* RESTRICT x, GLOBAL PART_T* RESTRICT out_value,
                         GLOBAL i64* RESTRICT out_index, const i64 n_out, const i64 inner,
                         const i64 R, const i64 chunk_len, const i64 n_chunks, const int tj,
                         const int write_value) {
  REDUCE_BODY(IN_T, LOAD_FIRST, POSITION)
}

/* Later stages: reads partials (and, for arg-reductions, the indices they carry). */
KERNEL void reduce_next(GLOBAL const PART_T* RESTRICT x, GLOBAL const i64* RESTRICT x_index,
                        GLOBAL PART_T* RESTRICT out_value, GLOBAL i64* RESTRICT out_index,
                        const i64 n_out, const i64 inner, const i64 R, const i64 chunk_len,
                        const i64 n_chunks, const int tj, const int write_value) {
  REDUCE_BODY(PART_T, LOAD_NEXT, STORED)
}
