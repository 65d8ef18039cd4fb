// Shared by the CPU (csrc/*.cpp) and CUDA (csrc/cuda/*.cu) ops of kga_fast: argument
// checks and the dtype rules.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <tuple>
#include <utility>

#include "kga_layout.h"

namespace kga_fast {

inline bool is_logit_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// Checks two logit tensors and returns the accumulation dtype: float64 when either input
// is float64 (so that gradcheck sees double precision), float32 otherwise.
inline at::ScalarType check_pair(const at::Tensor& p, const at::Tensor& q, const char* op) {
  TORCH_CHECK(p.dim() == 2 && q.dim() == 2, op, ": expected two (N, C) logit tensors, got shapes ",
              p.sizes(), " and ", q.sizes());
  TORCH_CHECK(p.sizes() == q.sizes(), op, ": logits of different shapes ", p.sizes(), " and ",
              q.sizes());
  TORCH_CHECK(p.size(0) > 0 && p.size(1) > 0, op, ": empty logits of shape ", p.sizes());
  TORCH_CHECK(p.device() == q.device(), op, ": logits on different devices, ", p.device(), " and ",
              q.device());
  TORCH_CHECK(is_logit_dtype(p.scalar_type()) && is_logit_dtype(q.scalar_type()), op,
              ": logits must be float32, float16, bfloat16 or float64, got ", p.scalar_type(),
              " and ", q.scalar_type());
  bool dbl = p.scalar_type() == at::kDouble || q.scalar_type() == at::kDouble;
  return dbl ? at::kDouble : at::kFloat;
}

// float64 mixed with a narrower dtype: both are computed in float64 (a gradcheck-only case,
// so the copy does not matter). Any other mix is read natively by the kernels.
inline std::pair<at::Tensor, at::Tensor> promote_pair(const at::Tensor& p, const at::Tensor& q,
                                                      at::ScalarType acc) {
  if (acc != at::kDouble) return {p, q};
  return {p.to(at::kDouble), q.to(at::kDouble)};
}

// Checks the saved tensors handed to a backward op; returns grad_out as a contiguous (N,)
// vector in the accumulation dtype (autograd may pass an expanded or float64 gradient).
inline at::Tensor check_backward(const at::Tensor& grad_out, const at::Tensor& p,
                                 const at::Tensor& q, const at::Tensor& stats, int64_t width,
                                 const char* op) {
  at::ScalarType acc = check_pair(p, q, op);
  const int64_t n = p.size(0);
  TORCH_CHECK(grad_out.dim() == 1 && grad_out.size(0) == n, op, ": grad_out must have shape (",
              n, "), got ", grad_out.sizes());
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == n && stats.size(1) == width &&
                  stats.scalar_type() == acc && stats.is_contiguous(),
              op, ": stats must be the forward's contiguous (", n, ", ", width, ") ", acc,
              " tensor, got ", stats.sizes(), " ", stats.scalar_type());
  TORCH_CHECK(grad_out.device() == p.device() && stats.device() == p.device(), op,
              ": grad_out, stats and logits on different devices");
  return grad_out.to(acc).contiguous();
}

// The gradient for one input: a contiguous tensor of its shape and dtype when asked for,
// else an empty one (a frozen teacher costs no memory and no work).
inline at::Tensor grad_buffer(const at::Tensor& like, bool wanted) {
  return wanted ? at::empty(like.sizes(), like.options()) : at::empty({0}, like.options());
}

}  // namespace kga_fast
