/* Register-blocked GEMM, C = alpha * A @ B + beta * C, in the OpenCL/CUDA common subset
 * (include dialect.h first).  Used for float32 (SGEMM) and, with REAL=double, float64.
 *
 * Each work-item computes an MWI x (NWI * VW) block of C: MWI rows, and NWI vectors of VW
 * consecutive columns.  Per step of k it loads NWI vectors of one row of B and broadcasts
 * MWI scalars of A's column k into them with fused multiply-adds, so the accumulators stay in
 * registers for the whole K loop (the micro-kernel of BLIS, with B optionally packed into
 * panels by gemm_pack_b; A is read in place).  On CPU OpenCL (PoCL) the work-group is 1 x 1,
 * so the compiler sees plain vector code over explicit floatVW types, fully unrolled (the
 * UNROLL pragmas matter: without them PoCL keeps the accumulators on the stack, 2-5x
 * slower), and no barriers; on GPUs the tuner picks small VW and larger work-groups.  The
 * optional local-memory tile (USE_LOCAL=1) stages the B panel of a work-group, for devices
 * where that pays (on PoCL it does not: barriers split the work-item loops).
 *
 * Layout (element offsets and strides, so views, leading dimensions and transposes of A are
 * arguments, not copies).  With i = m % MWI, j = n % NB:
 *   A(m, k) = a[a_off + (m / MWI) * a_ps + i * a_sm + k * a_sk]   (plain: a_ps = MWI * a_sm)
 *   B(k, n) = b[b_off + (n / NB) * b_ps + k * ldb + j]             unit column stride
 *   C(m, n) = c[c_off + m * ldc + n]
 * b_ps = NB reads a plain row-major B; gemm_pack_b below makes panels (ldb = NB,
 * b_ps = K * NB), which also serves transposed B and pads the N edge with zeros.
 * Batches run over grid dimension 2 with element strides a_sb, b_sb, c_sb (0 = broadcast).
 * Any M, N, K >= 0: blocks that cross the M edge clamp their row reads and skip stores; blocks
 * that cross the N edge take a guarded scalar path.  beta == 0 never reads C (it may hold
 * garbage, as BLAS allows).
 */
#ifndef GPUMAT_SGEMM_H
#define GPUMAT_SGEMM_H

/* ---- tunables (python -m gpumat.tune searches them) ------------------------------------- */
#ifndef MWI
#define MWI 8        /* rows of C per work-item */
#endif
#ifndef NWI
#define NWI 2        /* vectors of C's columns per work-item */
#endif
#ifndef VW
#define VW 16        /* vector width along N: 1, 2, 4, 8 or 16 (CUDA: 1) */
#endif
#ifndef KWI
#define KWI 4        /* unroll of the K loop */
#endif
#ifndef WGM
#define WGM 1        /* work-group size along M (grid dimension 0) */
#endif
#ifndef WGN
#define WGN 1        /* work-group size along N (grid dimension 1) */
#endif
#ifndef USE_LOCAL
#define USE_LOCAL 0  /* stage B panels of KWG rows in local memory */
#endif
#ifndef KWG
#define KWG 16       /* rows of B per local-memory stage (USE_LOCAL=1) */
#endif

#ifndef REAL
#define REAL float
#endif

#define UNROLL _Pragma("unroll")
#define NB (NWI * VW)          /* columns of C per work-item */

#if defined(GPUMAT_CUDA)
  #if VW != 1
    #error "the CUDA build of sgemm.h supports VW=1 only"
  #endif
  #define GLOBAL_ID_2_ ((long long)blockIdx.z * blockDim.z + threadIdx.z)
  #define GLOBAL_ID_0_ ((long long)blockIdx.x * blockDim.x + threadIdx.x)
  #define GLOBAL_ID_1_ ((long long)blockIdx.y * blockDim.y + threadIdx.y)
#else
  #define GLOBAL_ID_2_ ((long)get_global_id(2))
  #define GLOBAL_ID_0_ ((long)get_global_id(0))
  #define GLOBAL_ID_1_ ((long)get_global_id(1))
#endif

/* vector type and its loads/stores */
#if VW == 1
  #define VREAL REAL
  #define VLOAD(p) (*(p))
  #define VSTORE(v, p) (*(p) = (v))
  #define VBCAST(s) (s)
#else
  #define VCAT_(a, b) a##b
  #define VCAT(a, b) VCAT_(a, b)
  #define VREAL VCAT(REAL, VW)
  #define VLOAD(p) VCAT(vload, VW)(0, p)
  #define VSTORE(v, p) VCAT(vstore, VW)(v, 0, p)
  #define VBCAST(s) ((VREAL)(s))
#endif
#ifndef VFMA
#define VFMA(a, b, c) fma(VBCAST(a), (b), (c))
#endif

KERNEL void sgemm(GLOBAL const REAL* RESTRICT a, GLOBAL const REAL* RESTRICT b,
                  GLOBAL REAL* RESTRICT c, const i64 M, const i64 N, const i64 K,
                  const REAL alpha, const REAL beta,
                  const i64 a_off, const i64 a_sm, const i64 a_sk, const i64 a_ps,
                  const i64 a_sb, const i64 b_off, const i64 ldb, const i64 b_ps,
                  const i64 b_sb, const i64 c_off, const i64 ldc, const i64 c_sb) {
  const i64 m0 = GLOBAL_ID_0_ * MWI;
  const i64 n0 = GLOBAL_ID_1_ * NB;
  const i64 z = GLOBAL_ID_2_;
  /* the row block's panel of A and the column block's panel of B */
  GLOBAL const REAL* A = a + a_off + z * a_sb + (m0 / MWI) * a_ps;
  GLOBAL REAL* C = c + c_off + z * c_sb;

#if USE_LOCAL
  LOCAL REAL b_tile[KWG][WGN * NB];
  const int lm = (int)LOCAL_ID_0, ln = (int)LOCAL_ID_1;
  const i64 n_group = n0 - (i64)ln * NB;
  GLOBAL const REAL* Bz = b + b_off + z * b_sb;
#endif

  /* rows past M re-read row M-1 (stores skip them), so loads need no guard along M */
  i64 a_row[MWI];
  UNROLL for (int i = 0; i < MWI; ++i) {
    a_row[i] = (m0 + i < M ? i : M - 1 - m0) * a_sm;
  }

  VREAL acc[MWI][NWI];
  UNROLL for (int i = 0; i < MWI; ++i)
    UNROLL for (int j = 0; j < NWI; ++j) acc[i][j] = VBCAST((REAL)0);

#if USE_LOCAL
  /* the whole work-group walks K together (barriers), so out-of-range items still join */
  for (i64 k0 = 0; k0 < K; k0 += KWG) {
    for (int e = lm * WGN + ln; e < KWG * WGN * NB; e += WGM * WGN) {
      const int kk = e / (WGN * NB), nn = e % (WGN * NB);
      const i64 k = k0 + kk, n = n_group + nn;
      b_tile[kk][nn] = (k < K && n < N) ? Bz[(n / NB) * b_ps + k * ldb + n % NB] : (REAL)0;
    }
    LOCAL_BARRIER;
    const int k_end = (m0 >= M || n0 >= N) ? 0 : (K - k0 < KWG ? (int)(K - k0) : KWG);
    for (int kk = 0; kk < k_end; ++kk) {
      VREAL bv[NWI];
      UNROLL for (int j = 0; j < NWI; ++j) bv[j] = VLOAD(&b_tile[kk][ln * NB + j * VW]);
      UNROLL for (int i = 0; i < MWI; ++i) {
        const REAL av = A[a_row[i] + (k0 + kk) * a_sk];
        UNROLL for (int j = 0; j < NWI; ++j) acc[i][j] = VFMA(av, bv[j], acc[i][j]);
      }
    }
    LOCAL_BARRIER;
  }
  if (m0 >= M || n0 >= N) return;
#else
  if (m0 >= M || n0 >= N) return;
  GLOBAL const REAL* B = b + b_off + z * b_sb + (n0 / NB) * b_ps;
  if (n0 + NB <= N) {
    /* interior (along N): vector loads of B */
    i64 k = 0;
    for (; k + KWI <= K; k += KWI) {
      UNROLL for (int kk = 0; kk < KWI; ++kk) {
        VREAL bv[NWI];
        GLOBAL const REAL* Bk = B + (k + kk) * ldb;
        UNROLL for (int j = 0; j < NWI; ++j) bv[j] = VLOAD(Bk + j * VW);
        UNROLL for (int i = 0; i < MWI; ++i) {
          const REAL av = A[a_row[i] + (k + kk) * a_sk];
          UNROLL for (int j = 0; j < NWI; ++j) acc[i][j] = VFMA(av, bv[j], acc[i][j]);
        }
      }
    }
    for (; k < K; ++k) {
      VREAL bv[NWI];
      GLOBAL const REAL* Bk = B + k * ldb;
      UNROLL for (int j = 0; j < NWI; ++j) bv[j] = VLOAD(Bk + j * VW);
      UNROLL for (int i = 0; i < MWI; ++i) {
        const REAL av = A[a_row[i] + k * a_sk];
        UNROLL for (int j = 0; j < NWI; ++j) acc[i][j] = VFMA(av, bv[j], acc[i][j]);
      }
    }
  } else {
    /* the block crosses the N edge: guarded scalar loads gathered into vectors */
    for (i64 k = 0; k < K; ++k) {
      VREAL bv[NWI];
      GLOBAL const REAL* Bk = B + k * ldb;
      UNROLL for (int j = 0; j < NWI; ++j) {
        REAL lanes[VW];
        UNROLL for (int v = 0; v < VW; ++v) {
          const int n = j * VW + v;
          lanes[v] = n0 + n < N ? Bk[n] : (REAL)0;
        }
        bv[j] = VLOAD(lanes);
      }
      UNROLL for (int i = 0; i < MWI; ++i) {
        const REAL av = A[a_row[i] + k * a_sk];
        UNROLL for (int j = 0; j < NWI; ++j) acc[i][j] = VFMA(av, bv[j], acc[i][j]);
      }
    }
  }
#endif

  UNROLL for (int i = 0; i < MWI; ++i) {
    const i64 m = m0 + i;
    if (m >= M) break;
    GLOBAL REAL* Cm = C + m * ldc + n0;
    UNROLL for (int j = 0; j < NWI; ++j) {
      if (n0 + (j + 1) * VW <= N) {
        VREAL r = VBCAST(alpha) * acc[i][j];
        if (beta != (REAL)0) r = VFMA(beta, VLOAD(Cm + j * VW), r);
        VSTORE(r, Cm + j * VW);
      } else {
        REAL lanes[VW];
        VSTORE(acc[i][j], lanes);
        UNROLL for (int v = 0; v < VW; ++v) {
          const i64 n = n0 + j * VW + v;
          if (n < N) {
            REAL r = alpha * lanes[v];
            if (beta != (REAL)0) r = fma(beta, Cm[j * VW + v], r);
            Cm[j * VW + v] = r;
          }
        }
      }
    }
  }
}

/* Copies op(B) into panels for sgemm: panel p holds columns [p * NB, (p + 1) * NB) as a
 * K x NB row-major block, columns past N zero.  B(k, n) = src[src_off + z * s_b + k * s_k +
 * n * s_n], so a transposed or strided B becomes the unit-stride, edge-free layout the
 * vector path wants, and rows of a panel are NB apart (no cache-set aliasing at large ldb).
 * Grid: (ceil(N / NB) * NB, K, batch). */
KERNEL void gemm_pack_b(GLOBAL const REAL* RESTRICT src, GLOBAL REAL* RESTRICT dst,
                        const i64 N, const i64 K, const i64 src_off, const i64 s_k,
                        const i64 s_n, const i64 s_b, const i64 d_b) {
  const i64 n = GLOBAL_ID_0_, k = GLOBAL_ID_1_, z = GLOBAL_ID_2_;
  const i64 np = ((N + NB - 1) / NB) * NB;
  if (n >= np || k >= K) return;
  const REAL v = n < N ? src[src_off + z * s_b + k * s_k + n * s_n] : (REAL)0;
  dst[z * d_b + (n / NB) * (K * NB) + k * NB + n % NB] = v;
}

#endif /* GPUMAT_SGEMM_H */
