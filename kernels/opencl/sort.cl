/* Stable sort of every line of an array viewed as (outer, R, inner): bitonic sort of
 * (key, index) pairs.
 *
 * Each line is copied into a scratch row of P = next power of two >= R slots; the slots past
 * R are pads.  Rows are stacked, so a bitonic network over the whole scratch buffer whose
 * blocks never exceed P sorts every row on its own (many short lines go in one launch).
 * Comparisons use the index as the last key, which makes the order total: the result is the
 * stable order, whatever the network does.  Pads (index >= R) sort after everything.
 *
 * sort_local_first: gathers the lines into scratch (pads included) and runs every bitonic
 *   step of block sizes 2..k_last inside tiles of 2 * WG elements in local memory.
 * sort_global_step: one compare-exchange step (block k, distance j >= 2 * WG) in global memory.
 * sort_local: for block size k, every step with distance j <= WG, in local memory.
 * sort_scatter: scratch rows -> output values and int64 indices, in the array's layout.
 *
 * Defines: KEY_T, IS_FLOAT, DESCENDING (NaN first, larger first; else NaN last), WG.
 */
#include "dialect.h"

/* Address space of a pointer into local memory (CUDA pointers carry none). */
#ifndef LOCAL_PTR
  #ifdef GPUMAT_CUDA
    #define LOCAL_PTR
  #else
    #define LOCAL_PTR __local
  #endif
#endif

/* Must (a, ia) come after (b, ib)?  A strict total order: pads last, NaNs last (ascending)
 * or first (descending), then by value, then by original index. */
INLINE int goes_after(KEY_T a, i64 ia, KEY_T b, i64 ib, i64 R) {
  const int pa = ia >= R, pb = ib >= R;
  if (pa || pb) return pa && (!pb || ia > ib);
#if IS_FLOAT
  const int na = isnan(a), nb = isnan(b);
#if DESCENDING
  if (na || nb) return nb && (!na || ia > ib);
#else
  if (na || nb) return na && (!nb || ia > ib);
#endif
#endif
#if DESCENDING
  if (a != b) return a < b;
#else
  if (a != b) return a > b;
#endif
  return ia > ib;
}

/* Position of the lower element of compare-exchange pair t at distance j (j a power of 2). */
INLINE i64 pair_low(i64 t, i64 j) { return ((t & ~(j - 1)) << 1) | (t & (j - 1)); }

/* Blocks of size k sort ascending when (position within the row) & k is 0; for k == P that
 * holds for the whole row, so the last merge of every row is ascending. */
#define ASCENDING_BLOCK(pos, k, P) ((((pos) & ((P) - 1)) & (k)) == 0)

/* Runs steps (k, j) for k in [k_first, k_last], j from min(k/2, WG) down to 1, on the tile in
 * local memory.  `base` is the tile's first position in the scratch buffer. */
INLINE void local_network(LOCAL_PTR KEY_T* keys, LOCAL_PTR i64* idx, const i64 base, const int lid,
                          const i64 R, const i64 P, const i64 k_first, const i64 k_last) {
  for (i64 k = k_first; k <= k_last; k <<= 1) {
    for (i64 j = ((k >> 1) < WG ? (k >> 1) : WG); j > 0; j >>= 1) {
      const int lo = (int)pair_low(lid, j), hi = lo + (int)j;
      const KEY_T a = keys[lo], b = keys[hi];
      const i64 ia = idx[lo], ib = idx[hi];
      const int swap = ASCENDING_BLOCK(base + lo, k, P) ? goes_after(a, ia, b, ib, R)
                                                        : goes_after(b, ib, a, ia, R);
      if (swap) {
        keys[lo] = b; keys[hi] = a;
        idx[lo] = ib; idx[hi] = ia;
      }
      LOCAL_BARRIER;
    }
  }
}

KERNEL void sort_local_first(GLOBAL const KEY_T* RESTRICT x, GLOBAL KEY_T* RESTRICT keys,
                             GLOBAL i64* RESTRICT idx, const i64 n_lines, const i64 inner,
                             const i64 R, const i64 P, const int log2_P, const i64 k_last) {
  LOCAL KEY_T local_keys[2 * WG];
  LOCAL i64 local_idx[2 * WG];
  const int lid = (int)LOCAL_ID_0;
  const i64 base = (i64)GROUP_ID_0 * (2 * WG);
  for (int e = lid; e < 2 * WG; e += WG) {
    const i64 q = base + e;
    const i64 line = q >> log2_P, r = q & (P - 1);
    KEY_T key = (KEY_T)0;
    i64 index = R + r;                       /* a pad */
    if (line < n_lines && r < R) {
      const i64 o = line / inner, j = line - o * inner;
      key = x[(o * R + r) * inner + j];
      index = r;
    }
    local_keys[e] = key;
    local_idx[e] = index;
  }
  LOCAL_BARRIER;
  local_network(local_keys, local_idx, base, lid, R, P, 2, k_last);
  for (int e = lid; e < 2 * WG; e += WG) {
    keys[base + e] = local_keys[e];
    idx[base + e] = local_idx[e];
  }
}

KERNEL void sort_local(GLOBAL KEY_T* RESTRICT keys, GLOBAL i64* RESTRICT idx, const i64 R,
                       const i64 P, const i64 k) {
  LOCAL KEY_T local_keys[2 * WG];
  LOCAL i64 local_idx[2 * WG];
  const int lid = (int)LOCAL_ID_0;
  const i64 base = (i64)GROUP_ID_0 * (2 * WG);
  for (int e = lid; e < 2 * WG; e += WG) {
    local_keys[e] = keys[base + e];
    local_idx[e] = idx[base + e];
  }
  LOCAL_BARRIER;
  local_network(local_keys, local_idx, base, lid, R, P, k, k);
  for (int e = lid; e < 2 * WG; e += WG) {
    keys[base + e] = local_keys[e];
    idx[base + e] = local_idx[e];
  }
}

KERNEL void sort_global_step(GLOBAL KEY_T* RESTRICT keys, GLOBAL i64* RESTRICT idx,
                             const i64 n_pairs, const i64 R, const i64 P, const i64 k,
                             const i64 j) {
  const i64 t = GLOBAL_ID_0;
  if (t >= n_pairs) return;
  const i64 lo = pair_low(t, j), hi = lo + j;
  const KEY_T a = keys[lo], b = keys[hi];
  const i64 ia = idx[lo], ib = idx[hi];
  const int swap = ASCENDING_BLOCK(lo, k, P) ? goes_after(a, ia, b, ib, R)
                                             : goes_after(b, ib, a, ia, R);
  if (swap) {
    keys[lo] = b; keys[hi] = a;
    idx[lo] = ib; idx[hi] = ia;
  }
}

KERNEL void sort_scatter(GLOBAL const KEY_T* RESTRICT keys, GLOBAL const i64* RESTRICT idx,
                         GLOBAL KEY_T* RESTRICT out_values, GLOBAL i64* RESTRICT out_index,
                         const i64 n, const i64 inner, const i64 R, const int log2_P) {
  const i64 g = GLOBAL_ID_0;
  if (g >= n) return;
  const i64 line = g / R, r = g - line * R;
  const i64 src = (line << log2_P) + r;
  const i64 o = line / inner, j = line - o * inner;
  const i64 dst = (o * R + r) * inner + j;
  out_values[dst] = keys[src];
  out_index[dst] = idx[src];
}
