/* Stream compaction: the flat indices of the nonzero elements, in order (numpy.flatnonzero).
 *
 * The host has counted the nonzeros of every chunk of chunk_len elements (reduce.cl, OP_COUNT)
 * and scanned those counts on the device (chunk_incl: inclusive prefix sums), so chunk c
 * writes from position chunk_incl[c - 1].  One work-group per chunk walks it in tiles of
 * WG * VPT elements: each work-item counts its VPT consecutive elements, the counts are
 * scanned in local memory (Hillis-Steele), and each work-item writes its indices in order.
 *
 * Defines: IN_T, WG, VPT.
 */
#include "dialect.h"

KERNEL void compact_scatter(GLOBAL const IN_T* RESTRICT x, GLOBAL i64* RESTRICT out,
                            GLOBAL const i64* RESTRICT chunk_incl, const i64 n,
                            const i64 chunk_len) {
  LOCAL i64 part[WG];
  const int lid = (int)LOCAL_ID_0;
  const i64 chunk = (i64)GROUP_ID_0;
  const i64 r0 = chunk * chunk_len;
  const i64 r1 = (r0 + chunk_len < n) ? r0 + chunk_len : n;
  i64 carry = (chunk > 0) ? chunk_incl[chunk - 1] : 0;
  for (i64 tile = r0; tile < r1; tile += (i64)WG * VPT) {
    const i64 start = tile + (i64)lid * VPT;
    i64 count = 0;
    for (int k = 0; k < VPT; ++k) {
      const i64 r = start + k;
      if (r < r1 && x[r] != 0) ++count;
    }
    part[lid] = count;
    LOCAL_BARRIER;
    for (int off = 1; off < WG; off <<= 1) {
      const i64 add = (lid >= off) ? part[lid - off] : 0;
      LOCAL_BARRIER;
      part[lid] += add;
      LOCAL_BARRIER;
    }
    i64 at = carry + part[lid] - count;
    for (int k = 0; k < VPT; ++k) {
      const i64 r = start + k;
      if (r < r1 && x[r] != 0) out[at++] = r;
    }
    carry += part[WG - 1];
    LOCAL_BARRIER;
  }
}
