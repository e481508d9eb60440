/* Inclusive prefix sums (cumsum) along one axis of an array viewed as (outer, R, inner).
 *
 * scan_serial: one work-item per line, a plain running sum (adjacent work-items take adjacent
 *   lines, so reads are coalesced when inner > 1).  Used when there are many lines or they
 *   are short.
 * scan_blocks: long lines.  Each line is cut into blocks of block_len elements, one
 *   work-group per (line, block).  The host has already reduced every block to its sum and
 *   scanned those sums (block_incl, laid out (outer, n_blocks, inner)), so a block starts
 *   from the sum of the blocks before it.  Inside a block the group walks tiles of WG * VPT
 *   elements: each work-item scans VPT consecutive elements in registers, the WG thread
 *   totals are scanned in local memory (Hillis-Steele), and a carry moves between tiles.
 *
 * Defines: IN_T, ACC_T (accumulator; unsigned for signed integers so overflow wraps as in
 * NumPy), OUT_T, WG, VPT.
 */
#include "dialect.h"

KERNEL void scan_serial(GLOBAL const IN_T* RESTRICT x, GLOBAL OUT_T* RESTRICT y,
                        const i64 n_lines, const i64 inner, const i64 R) {
  const i64 p = GLOBAL_ID_0;
  if (p >= n_lines) return;
  const i64 o = p / inner, j = p - o * inner;
  const i64 base = o * R * inner + j;
  ACC_T acc = (ACC_T)0;
  for (i64 r = 0; r < R; ++r) {
    const i64 at = base + r * inner;
    acc = acc + (ACC_T)x[at];
    y[at] = (OUT_T)acc;
  }
}

KERNEL void scan_blocks(GLOBAL const IN_T* RESTRICT x, GLOBAL OUT_T* RESTRICT y,
                        GLOBAL const OUT_T* RESTRICT block_incl, const i64 inner,
                        const i64 R, const i64 block_len, const i64 n_blocks) {
  LOCAL ACC_T part[WG];
  const int lid = (int)LOCAL_ID_0;
  const i64 group = (i64)GROUP_ID_0;
  const i64 b = group % n_blocks, p = group / n_blocks;
  const i64 o = p / inner, j = p - o * inner;
  const i64 base = o * R * inner + j;
  const i64 r0 = b * block_len;
  const i64 r1 = (r0 + block_len < R) ? r0 + block_len : R;
  ACC_T carry = (ACC_T)0;
  if (b > 0) carry = (ACC_T)block_incl[(o * n_blocks + b - 1) * inner + j];
  for (i64 tile = r0; tile < r1; tile += (i64)WG * VPT) {
    const i64 start = tile + (i64)lid * VPT;
    ACC_T run[VPT];
    ACC_T s = (ACC_T)0;
    for (int k = 0; k < VPT; ++k) {
      const i64 r = start + k;
      if (r < r1) s = s + (ACC_T)x[base + r * inner];
      run[k] = s;
    }
    part[lid] = s;
    LOCAL_BARRIER;
    for (int off = 1; off < WG; off <<= 1) {
      const ACC_T add = (lid >= off) ? part[lid - off] : (ACC_T)0;
      LOCAL_BARRIER;
      part[lid] = part[lid] + add;
      LOCAL_BARRIER;
    }
    const ACC_T before = carry + ((lid > 0) ? part[lid - 1] : (ACC_T)0);
    for (int k = 0; k < VPT; ++k) {
      const i64 r = start + k;
      if (r < r1) y[base + r * inner] = (OUT_T)(before + run[k]);
    }
    carry = carry + part[WG - 1];
    LOCAL_BARRIER;
  }
}
