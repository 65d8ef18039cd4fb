// Device helpers of the CUDA kernels (kl_cuda.cu): 16-byte vector loads and stores of
// 8-element chunks, the walk over one row, the online softmax state and its reductions.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace kga_fast::cuda {

constexpr int kChunk = 8;  // elements per vector step: one 16-byte load of half/bfloat16

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

// The accurate expf/logf (setup.py builds without --use_fast_math, for parity with the
// reference); __expf/__logf would trade ~1e-6 relative error for fewer instructions.
__device__ __forceinline__ float dexp(float x) { return expf(x); }  // exp(-inf) = 0
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }
__device__ __forceinline__ float dmax(float a, float b) { return fmaxf(a, b); }  // skips NaN
__device__ __forceinline__ double dmax(double a, double b) { return fmax(a, b); }
template <typename A> __device__ __forceinline__ A neg_inf() { return -INFINITY; }

// ---- loads and stores: `ptr` 16-byte aligned for the chunk versions -----------------------
template <typename A> __device__ __forceinline__ void load_chunk(const float* ptr, A (&v)[kChunk]) {
  const float4 lo = __ldg(reinterpret_cast<const float4*>(ptr));
  const float4 hi = __ldg(reinterpret_cast<const float4*>(ptr) + 1);
  v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
}
template <typename A> __device__ __forceinline__ void load_chunk(const double* ptr, A (&v)[kChunk]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const double2 d = __ldg(reinterpret_cast<const double2*>(ptr) + k);
    v[2 * k] = d.x, v[2 * k + 1] = d.y;
  }
}
// Bytes move between uint4 and half2/bfloat162 with memcpy (registers only after
// optimization): reading one type through a pointer to another breaks strict aliasing.
template <typename A> __device__ __forceinline__ void load_chunk(const c10::Half* ptr, A (&v)[kChunk]) {
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(ptr));
  __half2 h[4];
  memcpy(h, &u, sizeof u);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __half22float2(h[k]);
    v[2 * k] = f.x, v[2 * k + 1] = f.y;
  }
}
template <typename A> __device__ __forceinline__ void load_chunk(const c10::BFloat16* ptr, A (&v)[kChunk]) {
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(ptr));
  __nv_bfloat162 h[4];
  memcpy(h, &u, sizeof u);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(h[k]);
    v[2 * k] = f.x, v[2 * k + 1] = f.y;
  }
}

__device__ __forceinline__ void store_chunk(float* ptr, const float (&v)[kChunk]) {
  reinterpret_cast<float4*>(ptr)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(ptr)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store_chunk(double* ptr, const double (&v)[kChunk]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) reinterpret_cast<double2*>(ptr)[k] = make_double2(v[2 * k], v[2 * k + 1]);
}
__device__ __forceinline__ void store_chunk(c10::Half* ptr, const float (&v)[kChunk]) {
  __half2 h[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) h[k] = __floats2half2_rn(v[2 * k], v[2 * k + 1]);
  uint4 u;
  memcpy(&u, h, sizeof u);
  *reinterpret_cast<uint4*>(ptr) = u;
}
__device__ __forceinline__ void store_chunk(c10::BFloat16* ptr, const float (&v)[kChunk]) {
  __nv_bfloat162 h[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
  uint4 u;
  memcpy(&u, h, sizeof u);
  *reinterpret_cast<uint4*>(ptr) = u;
}

// ---- one row ---------------------------------------------------------------------------
// The leading element count after which every given pointer is 16-byte aligned (pointers
// to rows of different dtypes, with their element sizes), or -1 when no count below
// kChunk does it (unusual strides): the row is then read with scalar loads only.
__device__ __forceinline__ int common_shift(const void* const* ptrs, const int* sizes, int count) {
  for (int s = 0; s < kChunk; ++s) {
    bool ok = true;
    for (int i = 0; i < count; ++i)
      ok = ok && ((reinterpret_cast<uintptr_t>(ptrs[i]) + uintptr_t(s) * sizes[i]) % 16 == 0);
    if (ok) return s;
  }
  return -1;
}

// Visits a row of c elements split over `lanes` threads: scalar `one(j)` before the
// aligned body and after it, `chunk(j)` for the 8 elements from j in the body.
template <typename Chunk, typename One>
__device__ __forceinline__ void walk_row(int64_t c, int shift, int lane, int lanes, Chunk&& chunk, One&& one) {
  const int64_t head = shift < 0 ? c : (shift < c ? shift : c);
  const int64_t nchunks = (c - head) / kChunk;
  for (int64_t j = lane; j < head; j += lanes) one(j);
  for (int64_t k = lane; k < nchunks; k += lanes) chunk(head + k * kChunk);
  for (int64_t j = head + nchunks * kChunk + lane; j < c; j += lanes) one(j);
}

// ---- online softmax state of a row ----------------------------------------------------------
// Relative to the running maxima ma, mb:  za = sum e^(a - ma),  zb = sum e^(b - mb) and,
// for the KL, s = sum e^(a - ma) ((a - ma) - (b - mb)). Raising the maxima by da, db <= 0
// scales za by e^da, zb by e^db, and s to e^da (s + za (da - db)).
template <typename A>
struct RowState {
  A ma, za, mb, zb, s;
  __device__ static RowState empty() { return {neg_inf<A>(), A(0), neg_inf<A>(), A(0), A(0)}; }
};

template <typename A>
__device__ __forceinline__ A max_step(A old_max, A new_max) {  // -inf - -inf would be NaN
  return old_max == new_max ? A(0) : old_max - new_max;
}

template <typename A>
__device__ __forceinline__ RowState<A> rescale(const RowState<A>& st, A na, A nb) {
  const A da = max_step(st.ma, na), db = max_step(st.mb, nb);
  const A fa = dexp(da);
  const A s = fa * (st.s + st.za * (da - db));
  // fa == 0: nothing of a was finite yet (za == 0, and 0 * -inf is NaN) or all of it underflows.
  return {na, st.za * fa, nb, st.zb * dexp(db), fa == A(0) ? A(0) : s};
}

template <typename A>
__device__ __forceinline__ RowState<A> merge(const RowState<A>& x, const RowState<A>& y) {
  const A na = dmax(x.ma, y.ma), nb = dmax(x.mb, y.mb);
  const RowState<A> u = rescale(x, na, nb), v = rescale(y, na, nb);
  return {na, u.za + v.za, nb, u.zb + v.zb, u.s + v.s};  // symmetric: every lane ends equal
}

// Adds K elements of a and b to the state (kS: also the KL sum s).
template <bool kS, typename A, int K>
__device__ __forceinline__ void absorb(RowState<A>& st, const A (&x)[K], const A (&y)[K]) {
  A cx = st.ma, cy = st.mb;
#pragma unroll
  for (int k = 0; k < K; ++k) cx = dmax(cx, x[k]), cy = dmax(cy, y[k]);
  if (cx != st.ma || cy != st.mb) st = rescale(st, cx, cy);  // rare after a row's first chunks
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const A xs = x[k] == neg_inf<A>() ? neg_inf<A>() : x[k] - cx;
    const A ys = y[k] == neg_inf<A>() ? neg_inf<A>() : y[k] - cy;
    const A e = dexp(xs);
    st.za += e;
    st.zb += dexp(ys);
    if (kS) st.s += e == A(0) ? A(0) : e * (xs - ys);  // b = -inf under a > -inf: +inf, KL = inf
  }
}

template <typename A>
__device__ __forceinline__ RowState<A> shfl_xor(const RowState<A>& st, int offset) {
  return {__shfl_xor_sync(0xffffffffu, st.ma, offset), __shfl_xor_sync(0xffffffffu, st.za, offset),
          __shfl_xor_sync(0xffffffffu, st.mb, offset), __shfl_xor_sync(0xffffffffu, st.zb, offset),
          __shfl_xor_sync(0xffffffffu, st.s, offset)};
}

// The state of the whole row, on every thread of the row. A row is a warp (blockDim.x ==
// 32) or the whole block (blockDim.y == 1); `smem` holds one state per warp.
template <typename A>
__device__ __forceinline__ RowState<A> row_allreduce(RowState<A> st, RowState<A>* smem) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) st = merge(st, shfl_xor(st, offset));
  if (blockDim.x == 32) return st;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = st;
  __syncthreads();
  st = lane < int(blockDim.x / 32) ? smem[lane] : RowState<A>::empty();
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) st = merge(st, shfl_xor(st, offset));
  __syncthreads();  // smem may be reused
  return st;
}

// Two plain sums over the row, on every thread of the row; `smem` holds two per warp.
template <typename A>
__device__ __forceinline__ void row_allreduce_sum2(A& u, A& v, A* smem) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    u += __shfl_xor_sync(0xffffffffu, u, offset);
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  if (blockDim.x == 32) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[2 * warp] = u, smem[2 * warp + 1] = v;
  __syncthreads();
  const bool mine = lane < int(blockDim.x / 32);
  u = mine ? smem[2 * lane] : A(0);
  v = mine ? smem[2 * lane + 1] : A(0);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    u += __shfl_xor_sync(0xffffffffu, u, offset);
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  __syncthreads();
}

}  // namespace kga_fast::cuda
