/* Baseline batched GEMM, C = A @ B, in the OpenCL/CUDA common subset (include dialect.h first).
 *
 * Row-major, every matrix contiguous: A is M x K, B is K x N, C is M x N.  A work-group of
 * (TILE_M / WPT_M) x (TILE_N / WPT_N) work-items computes a TILE_M x TILE_N tile of C; each
 * work-item keeps a WPT_M x WPT_N block of accumulators in registers, rows ty + i * THREADS_M
 * and columns tx + j * THREADS_N (strided, so local-memory reads are conflict-free).  K is
 * walked in steps of TILE_K: the group stages a TILE_M x TILE_K slice of A (transposed) and a
 * TILE_K x TILE_N slice of B in local memory, out-of-range elements read as zero, so any M,
 * N, K (K = 0 included: C = 0) works.
 *
 * Batches: the 1-d grid is (batch, tile row, tile column) flattened.  The batch index is split
 * over up to three dimensions (sizes -, batch1, batch2) with element strides for A and B
 * (0 where that operand is broadcast); C is contiguous over the batch.  a_off/b_off/c_off are
 * element offsets, so the host can loop over further batch dimensions without sub-buffers.
 *
 * Types (defines): A_T, B_T (inputs), C_T (output), ACC_T (accumulator: C_T for floats, an
 * unsigned integer for integers so overflow wraps as in NumPy), LOAD_A(v)/LOAD_B(v) (an input
 * element cast to C_T and then ACC_T), STORE(acc) (accumulator -> C_T); OUT_IS_BOOL=1 for
 * a bool C_T.
 */
#ifndef GPUMAT_GEMM_TILED_H
#define GPUMAT_GEMM_TILED_H

#ifndef TILE_M
#define TILE_M 64   /* rows of C per work-group */
#endif
#ifndef TILE_N
#define TILE_N 64   /* columns of C per work-group */
#endif
#ifndef TILE_K
#define TILE_K 16   /* depth of the local-memory slices */
#endif
#ifndef WPT_M
#define WPT_M 4     /* rows of C per work-item */
#endif
#ifndef WPT_N
#define WPT_N 4     /* columns of C per work-item */
#endif

#ifndef A_T
#define A_T float
#endif
#ifndef B_T
#define B_T float
#endif
#ifndef C_T
#define C_T float
#endif
#ifndef ACC_T
#define ACC_T float
#endif
/* A bool result (OUT_IS_BOOL=1) is NumPy's logical matmul: inputs become 0/1, products are
 * summed in an unsigned integer, and any nonzero sum is true. */
#if defined(OUT_IS_BOOL) && OUT_IS_BOOL
  #define LOAD_A(v) ((ACC_T)((v) != 0))
  #define LOAD_B(v) ((ACC_T)((v) != 0))
  #define STORE(acc) ((C_T)((acc) != 0))
#endif
#ifndef LOAD_A
#define LOAD_A(v) ((ACC_T)(C_T)(v))
#endif
#ifndef LOAD_B
#define LOAD_B(v) ((ACC_T)(C_T)(v))
#endif
#ifndef STORE
#define STORE(acc) ((C_T)(acc))
#endif

#define THREADS_M (TILE_M / WPT_M)
#define THREADS_N (TILE_N / WPT_N)
#define GEMM_THREADS (THREADS_M * THREADS_N)

KERNEL void gemm_tiled(GLOBAL const A_T* RESTRICT a, GLOBAL const B_T* RESTRICT b,
                       GLOBAL C_T* RESTRICT c, const i64 M, const i64 N, const i64 K,
                       const i64 tiles_m, const i64 tiles_n, const i64 batch1, const i64 batch2,
                       const i64 a_stride0, const i64 a_stride1, const i64 a_stride2,
                       const i64 b_stride0, const i64 b_stride1, const i64 b_stride2,
                       const i64 a_off, const i64 b_off, const i64 c_off) {
  LOCAL ACC_T a_tile[TILE_K][TILE_M + 1];
  LOCAL ACC_T b_tile[TILE_K][TILE_N];

  const int lid = (int)LOCAL_ID_0;
  const int tx = lid % THREADS_N, ty = lid / THREADS_N;

  i64 g = (i64)GROUP_ID_0;
  const i64 tile_n = g % tiles_n;  g /= tiles_n;
  const i64 tile_m = g % tiles_m;  g /= tiles_m;
  const i64 batch = g;
  const i64 z2 = g % batch2;  g /= batch2;
  const i64 z1 = g % batch1;
  const i64 z0 = g / batch1;

  GLOBAL const A_T* A = a + a_off + z0 * a_stride0 + z1 * a_stride1 + z2 * a_stride2;
  GLOBAL const B_T* B = b + b_off + z0 * b_stride0 + z1 * b_stride1 + z2 * b_stride2;
  GLOBAL C_T* C = c + c_off + batch * M * N;
  const i64 m0 = tile_m * TILE_M, n0 = tile_n * TILE_N;

  ACC_T acc[WPT_M][WPT_N];
  for (int i = 0; i < WPT_M; ++i)
    for (int j = 0; j < WPT_N; ++j) acc[i][j] = (ACC_T)0;

  for (i64 k0 = 0; k0 < K; k0 += TILE_K) {
    /* consecutive work-items read consecutive k of A and consecutive n of B (coalesced) */
    for (int e = lid; e < TILE_M * TILE_K; e += GEMM_THREADS) {
      const int kk = e % TILE_K, mm = e / TILE_K;
      const i64 m = m0 + mm, k = k0 + kk;
      a_tile[kk][mm] = (m < M && k < K) ? LOAD_A(A[m * K + k]) : (ACC_T)0;
    }
    for (int e = lid; e < TILE_K * TILE_N; e += GEMM_THREADS) {
      const int nn = e % TILE_N, kk = e / TILE_N;
      const i64 n = n0 + nn, k = k0 + kk;
      b_tile[kk][nn] = (n < N && k < K) ? LOAD_B(B[k * N + n]) : (ACC_T)0;
    }
    LOCAL_BARRIER;
    for (int kk = 0; kk < TILE_K; ++kk) {
      ACC_T a_reg[WPT_M], b_reg[WPT_N];
      for (int i = 0; i < WPT_M; ++i) a_reg[i] = a_tile[kk][ty + i * THREADS_M];
      for (int j = 0; j < WPT_N; ++j) b_reg[j] = b_tile[kk][tx + j * THREADS_N];
      for (int i = 0; i < WPT_M; ++i)
        for (int j = 0; j < WPT_N; ++j) acc[i][j] += a_reg[i] * b_reg[j];
    }
    LOCAL_BARRIER;
  }

  for (int i = 0; i < WPT_M; ++i) {
    const i64 m = m0 + ty + i * THREADS_M;
    if (m >= M) continue;
    for (int j = 0; j < WPT_N; ++j) {
      const i64 n = n0 + tx + j * THREADS_N;
      if (n < N) C[m * N + n] = STORE(acc[i][j]);
    }
  }
}

#endif /* GPUMAT_GEMM_TILED_H */
