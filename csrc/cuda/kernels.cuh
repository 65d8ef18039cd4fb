// The CUDA kernels and their launch shape, in a header so that tests/cuda_emu can run them
// on the CPU (this project's CI has no GPU). Host wrappers: kl_cuda.cu.
#pragma once

#include "../kga_layout.h"
#include "row_utils.cuh"

namespace kga_fast::cuda {

constexpr double kLn2 = 0.693147180559945309;

// Row of this thread, or -1 past the end (only in warp-per-row blocks, which never sync).
__device__ __forceinline__ int64_t my_row(int64_t n) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  return row < n ? row : -1;
}

// KL forward, one pass with the online state of row_utils.cuh:
//   KL = sum P (log P - log Q) = s / Z_a - log Z_a + log Z_b.
// JSD forward, two passes: the online Z_a, Z_b; then with M = (P + Q) / 2,
//   KL(P||M) = sum P (log P - log M), KL(Q||M) alike, JSD = (KL(P||M) + KL(Q||M)) / 2.
template <bool kIsKl, typename TP, typename TQ, typename A = typename AccOf<TP>::type>
__global__ void __launch_bounds__(1024) forward_kernel(const TP* __restrict__ p, const TQ* __restrict__ q,
                                                       int64_t n, int64_t c, int64_t sp, int64_t sq,
                                                       A* __restrict__ out, A* __restrict__ stats) {
  __shared__ RowState<A> states[32];
  __shared__ A sums[64];
  const int64_t row = my_row(n);
  if (row < 0) return;
  const TP* a = p + row * sp;
  const TQ* b = q + row * sq;
  const void* ptrs[2] = {a, b};
  const int sizes[2] = {int(sizeof(TP)), int(sizeof(TQ))};
  const int shift = common_shift(ptrs, sizes, 2);
  RowState<A> st = RowState<A>::empty();
  walk_row(
      c, shift, threadIdx.x, blockDim.x,
      [&](int64_t j) {
        A x[kChunk], y[kChunk];
        load_chunk(a + j, x);
        load_chunk(b + j, y);
        absorb<kIsKl>(st, x, y);
      },
      [&](int64_t j) {
        const A x[1] = {static_cast<A>(a[j])}, y[1] = {static_cast<A>(b[j])};
        absorb<kIsKl>(st, x, y);
      });
  st = row_allreduce(st, states);
  const A lza = dlog(st.za), lzb = dlog(st.zb);
  A* r = stats + row * (kIsKl ? kKlStats : kJsdStats);
  if constexpr (kIsKl) {
    if (threadIdx.x == 0) out[row] = st.s / st.za - lza + lzb;
  } else {
    A kpm = 0, kqm = 0;
    auto term = [&](A x, A y) {
      const A lp = (x - st.ma) - lza, lq = (y - st.mb) - lzb;
      const A pj = dexp(lp), qj = dexp(lq);
      const A lm = dlog(pj + qj) - A(kLn2);
      kpm += pj == A(0) ? A(0) : pj * (lp - lm);  // 0 log 0 = 0 for masked classes
      kqm += qj == A(0) ? A(0) : qj * (lq - lm);
    };
    walk_row(
        c, shift, threadIdx.x, blockDim.x,
        [&](int64_t j) {
          A x[kChunk], y[kChunk];
          load_chunk(a + j, x);
          load_chunk(b + j, y);
#pragma unroll
          for (int k = 0; k < kChunk; ++k) term(x[k], y[k]);
        },
        [&](int64_t j) { term(static_cast<A>(a[j]), static_cast<A>(b[j])); });
    row_allreduce_sum2(kpm, kqm, sums);
    if (threadIdx.x == 0) out[row] = A(0.5) * (kpm + kqm), r[4] = kpm, r[5] = kqm;
  }
  if (threadIdx.x == 0) r[0] = st.ma, r[1] = lza, r[2] = st.mb, r[3] = lzb;
}

// Backward, elementwise from the row's stats in one pass, times the row's grad_out g:
//   KL:  dKL/da_j = P_j (log P_j - log Q_j - KL),   dKL/db_j = Q_j - P_j;
//   JSD: dJSD/da_j = P_j (log P_j - log M_j - KL(P||M)) / 2, and alike for b.
// A null da or db: that gradient is not wanted and not computed.
template <bool kIsKl, typename TP, typename TQ, typename A = typename AccOf<TP>::type>
__global__ void __launch_bounds__(1024) backward_kernel(const A* __restrict__ g, const TP* __restrict__ p,
                                                        const TQ* __restrict__ q, int64_t n, int64_t c,
                                                        int64_t sp, int64_t sq, const A* __restrict__ out,
                                                        const A* __restrict__ stats, TP* __restrict__ dp,
                                                        TQ* __restrict__ dq) {
  const int64_t row = my_row(n);
  if (row < 0) return;
  const A* r = stats + row * (kIsKl ? kKlStats : kJsdStats);
  const A ma = r[0], lza = r[1], mb = r[2], lzb = r[3], gr = g[row];
  const A kl = kIsKl ? out[row] : A(0), kpm = kIsKl ? A(0) : r[4], kqm = kIsKl ? A(0) : r[5];
  const TP* a = p + row * sp;
  const TQ* b = q + row * sq;
  TP* da = dp == nullptr ? nullptr : dp + row * c;
  TQ* db = dq == nullptr ? nullptr : dq + row * c;
  const void* ptrs[4] = {a, b, da == nullptr ? a : da, db == nullptr ? b : db};
  const int sizes[4] = {int(sizeof(TP)), int(sizeof(TQ)), int(sizeof(TP)), int(sizeof(TQ))};
  auto grad = [&](A x, A y, A& gx, A& gy) {
    const A lp = (x - ma) - lza, lq = (y - mb) - lzb;
    const A pj = dexp(lp);
    if constexpr (kIsKl) {
      if (da != nullptr) gx = pj == A(0) ? A(0) : gr * (pj * (lp - lq - kl));
      if (db != nullptr) gy = gr * (dexp(lq) - pj);
    } else {
      const A qj = dexp(lq), lm = dlog(pj + qj) - A(kLn2), half_g = A(0.5) * gr;
      gx = pj == A(0) ? A(0) : half_g * (pj * ((lp - lm) - kpm));
      gy = qj == A(0) ? A(0) : half_g * (qj * ((lq - lm) - kqm));
    }
  };
  walk_row(
      c, common_shift(ptrs, sizes, 4), threadIdx.x, blockDim.x,
      [&](int64_t j) {
        A x[kChunk], y[kChunk], gx[kChunk], gy[kChunk];
        load_chunk(a + j, x);
        load_chunk(b + j, y);
#pragma unroll
        for (int k = 0; k < kChunk; ++k) grad(x[k], y[k], gx[k], gy[k]);
        if (da != nullptr) store_chunk(da + j, gx);
        if (db != nullptr) store_chunk(db + j, gy);
      },
      [&](int64_t j) {
        A gx = 0, gy = 0;
        grad(static_cast<A>(a[j]), static_cast<A>(b[j]), gx, gy);
        if (da != nullptr) da[j] = static_cast<TP>(gx);
        if (db != nullptr) db[j] = static_cast<TQ>(gy);
      });
}

// A warp per row for C <= 4096 (8 rows per block), else a block per row.
struct Launch {
  dim3 grid, block;
};

inline Launch launch_for(int64_t n, int64_t c) {  // n < 2^31 (checked by the caller)
  if (c <= 4096) return {dim3(unsigned((n + 7) / 8)), dim3(32, 8)};
  return {dim3(unsigned(n)), dim3(c <= 65536 ? 256 : 1024)};
}

}  // namespace kga_fast::cuda
