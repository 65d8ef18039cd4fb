// Row kernels of the CPU ops, on one row of C logits a (from p) and b (from q) in the
// accumulation type A (float, or double for float64 inputs). Each is a plain loop that GCC
// auto-vectorizes; target_clones compiles it for AVX-512, AVX2+FMA and baseline x86-64 and
// picks one when the extension loads (the build itself must not use -march=native).
//
// Notation: x = a - max_a, y = b - max_b, Z_a = sum e^x, Z_b = sum e^y,
// log P = x - log Z_a, log Q = y - log Z_b. A term P * (...) is 0 where P == 0 (masked
// -inf logits, or an exp that underflows), so 0 * log 0 never makes a NaN; a NaN logit
// still reaches a sum and turns its row into NaN.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cpu_math.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(KGA_CLONES)
#define KGA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KGA_CLONES
#endif

KGA_NO_TRAPPING_MATH_BEGIN
namespace kga_fast::cpu {

constexpr int64_t kLanes = 16;           // independent accumulators: one vector, no reassociation
constexpr int64_t kBlock = 64 * kLanes;  // elements summed before joining the row total

// Sums K per-element terms over a row: kLanes accumulators per term, added into the row
// total every kBlock elements (two-level summation: ~1e-7 relative error for any C).
template <int K, typename A, typename Term>
KGA_INLINE void lane_sums(int64_t c, const Term& term, A* out) {
  A total[K][kLanes] = {};
  const int64_t cv = c - c % kLanes;
  for (int64_t b0 = 0; b0 < cv; b0 += kBlock) {
    const int64_t b1 = std::min(b0 + kBlock, cv);
    A part[K][kLanes] = {};
    for (int64_t i = b0; i < b1; i += kLanes)
      for (int64_t j = 0; j < kLanes; ++j) {
        A t[K];
        term(i + j, t);
        for (int k = 0; k < K; ++k) part[k][j] += t[k];
      }
    for (int k = 0; k < K; ++k)
      for (int64_t j = 0; j < kLanes; ++j) total[k][j] += part[k][j];
  }
  for (int k = 0; k < K; ++k) {
    out[k] = 0;
    for (int64_t j = 0; j < kLanes; ++j) out[k] += total[k][j];
  }
  for (int64_t i = cv; i < c; ++i) {
    A t[K];
    term(i, t);
    for (int k = 0; k < K; ++k) out[k] += t[k];
  }
}

// Pass 1 of every forward: the row maxima. For float, as an integer max over keys that
// order like the floats (a float select-max does not vectorize: GCC turns it into scalar
// maxss); a NaN may come out as the max, which makes its row NaN as it must be.
KGA_INLINE int32_t order_key(float f) {
  const int32_t b = as_int(f);
  return b ^ ((b >> 31) & 0x7fffffff);
}
KGA_INLINE float from_order_key(int32_t k) { return as_float(k ^ ((k >> 31) & 0x7fffffff)); }

KGA_CLONES inline void row_max2(const float* __restrict__ a, const float* __restrict__ b, int64_t c,
                                float* ma, float* mb) {
  int32_t ka = INT32_MIN, kb = INT32_MIN;
  for (int64_t i = 0; i < c; ++i) {
    ka = std::max(ka, order_key(a[i]));
    kb = std::max(kb, order_key(b[i]));
  }
  *ma = from_order_key(ka);
  *mb = from_order_key(kb);
}

// float64 (the gradcheck path): plain loops; a NaN is skipped here and caught by the sums.
template <typename A>
void row_max2(const A* a, const A* b, int64_t c, A* ma, A* mb) {
  *ma = *mb = -std::numeric_limits<A>::infinity();
  for (int64_t i = 0; i < c; ++i) {
    *ma = a[i] > *ma ? a[i] : *ma;
    *mb = b[i] > *mb ? b[i] : *mb;
  }
}

// KL forward, pass 2: Z_a, Z_b and S = sum e^x (x - y); then
//   KL = sum P (log P - log Q) = S / Z_a - log Z_a + log Z_b.
template <typename A>
KGA_CLONES void kl_sums(const A* __restrict__ a, const A* __restrict__ b, int64_t c, A ma, A mb,
                        A* out) {
  auto term = [=](int64_t i, A* t) KGA_LAMBDA_INLINE {
    const A x = a[i] - ma, y = b[i] - mb;
    const A e = vexp(x);
    t[0] = e;
    t[1] = vexp(y);
    const A term = e * (x - y);  // computed outside the select: see cpu_math.h
    t[2] = e == A(0) ? A(0) : term;
  };
  lane_sums<3, A>(c, term, out);
}

// KL backward, given the row's stats and KL and the incoming gradient g:
//   dKL/da_j = P_j (log P_j - log Q_j - KL),   dKL/db_j = Q_j - P_j.
// One instantiation per set of wanted gradients: with the three loops in one function GCC
// merges them into one loop with branches, which it does not vectorize.
template <typename A, bool kWantA, bool kWantB>
KGA_CLONES void kl_grad_row(const A* __restrict__ a, const A* __restrict__ b, int64_t c,
                            const A* st, A kl, A g, A* __restrict__ da, A* __restrict__ db) {
  const A ma = st[0], lza = st[1], mb = st[2], lzb = st[3];
  for (int64_t i = 0; i < c; ++i) {
    const A lp = (a[i] - ma) - lza, lq = (b[i] - mb) - lzb;
    const A p = vexp(lp), dkl = g * (p * (lp - lq - kl));
    if constexpr (kWantA) da[i] = p == A(0) ? A(0) : dkl;
    if constexpr (kWantB) db[i] = g * (vexp(lq) - p);
  }
}

// JSD forward, pass 2: Z_a and Z_b.
template <typename A>
KGA_CLONES void z_sums(const A* __restrict__ a, const A* __restrict__ b, int64_t c, A ma, A mb,
                       A* out) {
  auto term = [=](int64_t i, A* t) KGA_LAMBDA_INLINE {
    t[0] = vexp(a[i] - ma);
    t[1] = vexp(b[i] - mb);
  };
  lane_sums<2, A>(c, term, out);
}

// JSD forward, pass 3, with M = (P + Q) / 2 and log M = log(P + Q) - ln 2:
//   KL(P||M) = sum P (log P - log M),  KL(Q||M) likewise;  JSD = (KL(P||M) + KL(Q||M)) / 2.
template <typename A>
KGA_CLONES void jsd_sums(const A* __restrict__ a, const A* __restrict__ b, int64_t c,
                         const A* st, A* out) {
  const A ma = st[0], lza = st[1], mb = st[2], lzb = st[3];
  auto term = [=](int64_t i, A* t) KGA_LAMBDA_INLINE {
    const A lp = (a[i] - ma) - lza, lq = (b[i] - mb) - lzb;
    const A p = vexp(lp), q = vexp(lq);
    const A lm = vlog(p + q) - A(0.693147180559945309);
    const A tp = p * (lp - lm), tq = q * (lq - lm);
    t[0] = p == A(0) ? A(0) : tp;
    t[1] = q == A(0) ? A(0) : tq;
  };
  lane_sums<2, A>(c, term, out);
}

// JSD backward (softmax chain rule on dJSD/dP_j = log(P_j / M_j) / 2):
//   dJSD/da_j = P_j (log P_j - log M_j - KL(P||M)) / 2,  and likewise for b with Q.
template <typename A, bool kWantA, bool kWantB>
KGA_CLONES void jsd_grad_row(const A* __restrict__ a, const A* __restrict__ b, int64_t c,
                             const A* st, A g, A* __restrict__ da, A* __restrict__ db) {
  const A ma = st[0], lza = st[1], mb = st[2], lzb = st[3], kpm = st[4], kqm = st[5];
  const A half_g = A(0.5) * g;
  for (int64_t i = 0; i < c; ++i) {
    const A lp = (a[i] - ma) - lza, lq = (b[i] - mb) - lzb;
    const A p = vexp(lp), q = vexp(lq);
    const A lm = vlog(p + q) - A(0.693147180559945309);
    const A tp = half_g * (p * ((lp - lm) - kpm)), tq = half_g * (q * ((lq - lm) - kqm));
    if constexpr (kWantA) da[i] = p == A(0) ? A(0) : tp;
    if constexpr (kWantB) db[i] = q == A(0) ? A(0) : tq;
  }
}

}  // namespace kga_fast::cpu
KGA_NO_TRAPPING_MATH_END
