// CUDA kernels of the kga_fast ops. Compiled for sm_90 on a machine without a GPU; they
// run only where bench/gpu_check.sh runs the CUDA tests (see bench/RESULTS.md).
//
// A row belongs to a warp (C <= 4096: 8 rows per 256-thread block) or to a whole block
// (256 threads up to C = 65536, 1024 beyond). Each thread reads its share of both rows in
// 8-element chunks with 16-byte loads, after a few scalar elements that bring every row
// pointer to a 16-byte boundary; float accumulation (double for float64 inputs); each op
// is one kernel launch on the current stream. Kernels: kernels.cuh; helpers: row_utils.cuh.
// c10 headers only: ATen/cuda/CUDAContext.h pulls in cuBLAS and cuSPARSE headers, which a
// minimal CUDA toolkit (nvcc and the runtime) does not have.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../kga.h"
#include "kernels.cuh"

namespace kga_fast::cuda {
namespace {

template <typename T> struct Tag { using type = T; };

template <typename F>
void dispatch_one(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(Tag<float>{});
    case at::kHalf: return f(Tag<c10::Half>{});
    case at::kBFloat16: return f(Tag<c10::BFloat16>{});
    default: TORCH_CHECK(false, "kga_fast: unsupported dtype ", t);
  }
}

// (TP, TQ) in {float, half, bfloat16}^2 (autocast mixes them), or (double, double).
template <typename F>
void dispatch_pair(at::ScalarType tp, at::ScalarType tq, F&& f) {
  if (tp == at::kDouble || tq == at::kDouble) {
    TORCH_INTERNAL_ASSERT(tp == tq, "float64 must be promoted first");
    return f(Tag<double>{}, Tag<double>{});
  }
  dispatch_one(tp, [&](auto a) { dispatch_one(tq, [&](auto b) { f(a, b); }); });
}

// The kernels read rows with any row stride but need unit column stride.
at::Tensor unit_col_stride(const at::Tensor& t) { return t.stride(1) == 1 ? t : t.contiguous(); }

Launch checked_launch(int64_t n, int64_t c) {
  TORCH_CHECK(n < (int64_t(1) << 31), "kga_fast: too many rows for one launch: ", n);
  return launch_for(n, c);
}

template <bool kIsKl>
std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& p_in, const at::Tensor& q_in) {
  const at::ScalarType acc = check_pair(p_in, q_in, kIsKl ? "kga_fast::kl_rows" : "kga_fast::jsd_rows");
  const auto promoted = promote_pair(p_in, q_in, acc);
  const at::Tensor p = unit_col_stride(promoted.first), q = unit_col_stride(promoted.second);
  const c10::cuda::CUDAGuard guard(p.device());
  const int64_t n = p.size(0), c = p.size(1);
  at::Tensor out = at::empty({n}, p.options().dtype(acc));
  at::Tensor stats = at::empty({n, kIsKl ? kKlStats : kJsdStats}, p.options().dtype(acc));
  const Launch l = checked_launch(n, c);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_pair(p.scalar_type(), q.scalar_type(), [&](auto tp, auto tq) {
    using TP = typename decltype(tp)::type;
    using TQ = typename decltype(tq)::type;
    using A = typename AccOf<TP>::type;
    forward_kernel<kIsKl, TP, TQ><<<l.grid, l.block, 0, stream>>>(
        p.data_ptr<TP>(), q.data_ptr<TQ>(), n, c, p.stride(0), q.stride(0), out.data_ptr<A>(), stats.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, stats};
}

template <bool kIsKl>
std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out, const at::Tensor& p_in,
                                                 const at::Tensor& q_in, const at::Tensor& out_in,
                                                 const at::Tensor& stats, bool want_p, bool want_q) {
  const char* name = kIsKl ? "kga_fast::kl_rows_backward" : "kga_fast::jsd_rows_backward";
  const at::Tensor g = check_backward(grad_out, p_in, q_in, stats, kIsKl ? kKlStats : kJsdStats, name);
  const auto promoted = promote_pair(p_in, q_in, stats.scalar_type());
  const at::Tensor p = unit_col_stride(promoted.first), q = unit_col_stride(promoted.second);
  const c10::cuda::CUDAGuard guard(p.device());
  const int64_t n = p.size(0), c = p.size(1);
  at::Tensor dp = grad_buffer(p, want_p), dq = grad_buffer(q, want_q);
  at::Tensor out;
  if (kIsKl) {
    out = out_in.to(stats.scalar_type()).contiguous();
    TORCH_CHECK(out.dim() == 1 && out.size(0) == n, name, ": out must have shape (", n, ")");
  }
  if (want_p || want_q) {
    const Launch l = checked_launch(n, c);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_pair(p.scalar_type(), q.scalar_type(), [&](auto tp, auto tq) {
      using TP = typename decltype(tp)::type;
      using TQ = typename decltype(tq)::type;
      using A = typename AccOf<TP>::type;
      backward_kernel<kIsKl, TP, TQ><<<l.grid, l.block, 0, stream>>>(
          g.data_ptr<A>(), p.data_ptr<TP>(), q.data_ptr<TQ>(), n, c, p.stride(0), q.stride(0),
          kIsKl ? out.data_ptr<A>() : nullptr, stats.data_ptr<A>(), want_p ? dp.data_ptr<TP>() : nullptr,
          want_q ? dq.data_ptr<TQ>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // Gradients come back in each input's own dtype (float64 promotion undone).
  dp = want_p ? dp.to(p_in.scalar_type()) : at::empty({0}, p_in.options());
  dq = want_q ? dq.to(q_in.scalar_type()) : at::empty({0}, q_in.options());
  return {dp, dq};
}

std::tuple<at::Tensor, at::Tensor> jsd_backward_cuda(const at::Tensor& grad_out, const at::Tensor& p,
                                                     const at::Tensor& q, const at::Tensor& stats,
                                                     bool want_p, bool want_q) {
  return backward_cuda<false>(grad_out, p, q, at::Tensor(), stats, want_p, want_q);
}

}  // namespace

TORCH_LIBRARY_IMPL(kga_fast, CUDA, m) {
  m.impl("kl_rows", &forward_cuda<true>);
  m.impl("kl_rows_backward", &backward_cuda<true>);
  m.impl("jsd_rows", &forward_cuda<false>);
  m.impl("jsd_rows_backward", &jsd_backward_cuda);
}

}  // namespace kga_fast::cuda
