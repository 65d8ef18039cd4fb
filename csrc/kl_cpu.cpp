// CPU implementations of the kga_fast ops: rows split over threads (at::parallel_for),
// float accumulation (double for float64 inputs). Per row, the KL forward makes two passes
// (max; sums), the JSD forward three (max; Z; sums), each backward one; a row of 32k
// float32 logits stays in the L2 cache between passes. The math is in cpu_rows.h.
#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <atomic>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu_rows.h"
#include "kga.h"

namespace kga_fast::cpu {
namespace {

// Row i of an (N, C) logit tensor as A: a pointer into the tensor when it already holds
// contiguous A, else a converted copy in `scratch` (half, bfloat16, any strides).
class RowReader {
 public:
  explicit RowReader(const at::Tensor& t)
      : base_(t.const_data_ptr()), dtype_(t.scalar_type()), rs_(t.stride(0)), cs_(t.stride(1)),
        cols_(t.size(1)) {}

  template <typename A>
  const A* row(int64_t i, std::vector<A>& scratch) const {
    switch (dtype_) {
      case at::kFloat: return read<float, A>(i, scratch);
      case at::kDouble: return read<double, A>(i, scratch);
      case at::kHalf: return read<c10::Half, A>(i, scratch);
      case at::kBFloat16: return read<c10::BFloat16, A>(i, scratch);
      default: TORCH_CHECK(false, "kga_fast: unsupported dtype ", dtype_);
    }
  }

 private:
  template <typename T, typename A>
  const A* read(int64_t i, std::vector<A>& scratch) const {
    const T* src = static_cast<const T*>(base_) + i * rs_;
    if constexpr (std::is_same_v<T, A>) {
      if (cs_ == 1) return src;
    }
    scratch.resize(cols_);
    for (int64_t j = 0; j < cols_; ++j) scratch[j] = static_cast<A>(src[j * cs_]);
    return scratch.data();
  }

  const void* base_;
  at::ScalarType dtype_;
  int64_t rs_, cs_, cols_;
};

// Row i of a contiguous (N, C) gradient: computed in A, written in the tensor's dtype.
class RowWriter {
 public:
  explicit RowWriter(at::Tensor& t) : base_(t.data_ptr()), dtype_(t.scalar_type()), cols_(t.size(1)) {}

  template <typename A>
  A* row(int64_t i, std::vector<A>& scratch) const {
    if (dtype_ == c10::CppTypeToScalarType<A>::value) return static_cast<A*>(base_) + i * cols_;
    scratch.resize(cols_);
    return scratch.data();
  }

  template <typename A>
  void commit(int64_t i, const A* data) const {
    switch (dtype_) {
      case at::kFloat: return write<float>(i, data);
      case at::kDouble: return write<double>(i, data);
      case at::kHalf: return write<c10::Half>(i, data);
      case at::kBFloat16: return write<c10::BFloat16>(i, data);
      default: TORCH_CHECK(false, "kga_fast: unsupported dtype ", dtype_);
    }
  }

 private:
  template <typename T, typename A>
  void write(int64_t i, const A* data) const {
    T* dst = static_cast<T*>(base_) + i * cols_;
    if (static_cast<const void*>(dst) == static_cast<const void*>(data)) return;  // written in place
    for (int64_t j = 0; j < cols_; ++j) dst[j] = static_cast<T>(data[j]);
  }

  void* base_;
  at::ScalarType dtype_;
  int64_t cols_;
};

// Rows per parallel task: enough elements that a task outweighs its scheduling cost.
int64_t grain(int64_t c) { return std::max<int64_t>(1, 32768 / c); }

// One row loop for both forwards: `row_fwd(a, b, i)` computes row i from its two logit rows.
template <typename A, typename RowFwd>
void forward_rows(const RowReader& rp, const RowReader& rq, int64_t n, int64_t c, const RowFwd& row_fwd) {
  at::parallel_for(0, n, grain(c), [&](int64_t begin, int64_t end) {
    std::vector<A> sa, sb;
    for (int64_t i = begin; i < end; ++i) row_fwd(rp.row(i, sa), rq.row(i, sb), i);
  });
}

template <typename A>
void kl_forward(const RowReader& rp, const RowReader& rq, int64_t n, int64_t c, A* out, A* stats) {
  forward_rows<A>(rp, rq, n, c, [&](const A* a, const A* b, int64_t i) {
    A* st = stats + i * kKlStats;
    A sums[3];  // Z_a, Z_b, S
    row_max2(a, b, c, &st[0], &st[2]);
    kl_sums(a, b, c, st[0], st[2], sums);
    st[1] = std::log(sums[0]);
    st[3] = std::log(sums[1]);
    out[i] = sums[2] / sums[0] - st[1] + st[3];
  });
}

template <typename A>
void jsd_forward(const RowReader& rp, const RowReader& rq, int64_t n, int64_t c, A* out, A* stats) {
  forward_rows<A>(rp, rq, n, c, [&](const A* a, const A* b, int64_t i) {
    A* st = stats + i * kJsdStats;
    A z[2];
    row_max2(a, b, c, &st[0], &st[2]);
    z_sums(a, b, c, st[0], st[2], z);
    st[1] = std::log(z[0]);
    st[3] = std::log(z[1]);
    jsd_sums(a, b, c, st, &st[4]);
    out[i] = A(0.5) * (st[4] + st[5]);
  });
}

// One backward for both ops: `row_grad(a, b, i, da, db)` fills the gradient rows asked
// for (a null writer: that gradient is not wanted and costs nothing).
template <typename A, typename RowGrad>
void backward_rows(const RowReader& rp, const RowReader& rq, int64_t n, int64_t c,
                   const RowWriter* wp, const RowWriter* wq, const RowGrad& row_grad) {
  at::parallel_for(0, n, grain(c), [&](int64_t begin, int64_t end) {
    std::vector<A> sa, sb, ga, gb;
    for (int64_t i = begin; i < end; ++i) {
      A* da = wp ? wp->row(i, ga) : nullptr;
      A* db = wq ? wq->row(i, gb) : nullptr;
      row_grad(rp.row(i, sa), rq.row(i, sb), i, da, db);
      if (wp) wp->commit(i, da);
      if (wq) wq->commit(i, db);
    }
  });
}

template <bool kIsKl>
std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& p_in, const at::Tensor& q_in) {
  const char* name = kIsKl ? "kga_fast::kl_rows" : "kga_fast::jsd_rows";
  const at::ScalarType acc = check_pair(p_in, q_in, name);
  // No structured bindings: lambdas capture them only from C++20, and torch 2.11 builds
  // extensions as C++17.
  const auto promoted = promote_pair(p_in, q_in, acc);
  const at::Tensor& p = promoted.first;
  const at::Tensor& q = promoted.second;
  const int64_t n = p.size(0), c = p.size(1);
  at::Tensor out = at::empty({n}, p.options().dtype(acc));
  at::Tensor stats = at::empty({n, kIsKl ? kKlStats : kJsdStats}, p.options().dtype(acc));
  const RowReader rp(p), rq(q);
  auto run = [&](auto zero) {
    using A = decltype(zero);
    if constexpr (kIsKl) kl_forward<A>(rp, rq, n, c, out.data_ptr<A>(), stats.data_ptr<A>());
    else jsd_forward<A>(rp, rq, n, c, out.data_ptr<A>(), stats.data_ptr<A>());
  };
  acc == at::kDouble ? run(0.0) : run(0.0f);
  return {out, stats};
}

template <bool kIsKl>
std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out, const at::Tensor& p_in,
                                                const at::Tensor& q_in, const at::Tensor& out_in,
                                                const at::Tensor& stats, bool want_p, bool want_q) {
  const char* name = kIsKl ? "kga_fast::kl_rows_backward" : "kga_fast::jsd_rows_backward";
  const at::Tensor g = check_backward(grad_out, p_in, q_in, stats, kIsKl ? kKlStats : kJsdStats, name);
  const auto promoted = promote_pair(p_in, q_in, stats.scalar_type());
  const at::Tensor& p = promoted.first;
  const at::Tensor& q = promoted.second;
  at::Tensor dp = grad_buffer(p, want_p), dq = grad_buffer(q, want_q);
  if (want_p || want_q) {
    const RowReader rp(p), rq(q);
    const int64_t n = p.size(0), c = p.size(1);
    std::optional<RowWriter> wp, wq;
    if (want_p) wp.emplace(dp);
    if (want_q) wq.emplace(dq);
    const RowWriter* wpp = wp ? &*wp : nullptr;
    const RowWriter* wqp = wq ? &*wq : nullptr;
    auto run = [&](auto zero) {
      using A = decltype(zero);
      const A* gv = g.data_ptr<A>();
      const A* st = stats.data_ptr<A>();
      if constexpr (kIsKl) {
        const at::Tensor out = out_in.to(stats.scalar_type()).contiguous();
        TORCH_CHECK(out.dim() == 1 && out.size(0) == p.size(0), name, ": out must have shape (N,)");
        const A* kl = out.data_ptr<A>();
        backward_rows<A>(rp, rq, n, c, wpp, wqp, [&](const A* a, const A* b, int64_t i, A* da, A* db) {
          const A* row_st = st + i * kKlStats;
          if (da && db) kl_grad_row<A, true, true>(a, b, c, row_st, kl[i], gv[i], da, db);
          else if (da) kl_grad_row<A, true, false>(a, b, c, row_st, kl[i], gv[i], da, db);
          else kl_grad_row<A, false, true>(a, b, c, row_st, kl[i], gv[i], da, db);
        });
      } else {
        backward_rows<A>(rp, rq, n, c, wpp, wqp, [&](const A* a, const A* b, int64_t i, A* da, A* db) {
          const A* row_st = st + i * kJsdStats;
          if (da && db) jsd_grad_row<A, true, true>(a, b, c, row_st, gv[i], da, db);
          else if (da) jsd_grad_row<A, true, false>(a, b, c, row_st, gv[i], da, db);
          else jsd_grad_row<A, false, true>(a, b, c, row_st, gv[i], da, db);
        });
      }
    };
    stats.scalar_type() == at::kDouble ? run(0.0) : run(0.0f);
  }
  // Gradients come back in each input's own dtype (float64 promotion undone).
  if (want_p && dp.scalar_type() != p_in.scalar_type()) dp = dp.to(p_in.scalar_type());
  if (want_q && dq.scalar_type() != q_in.scalar_type()) dq = dq.to(q_in.scalar_type());
  if (!want_p) dp = at::empty({0}, p_in.options());
  if (!want_q) dq = at::empty({0}, q_in.options());
  return {dp, dq};
}

std::tuple<at::Tensor, at::Tensor> jsd_backward_cpu(const at::Tensor& grad_out, const at::Tensor& p,
                                                    const at::Tensor& q, const at::Tensor& stats,
                                                    bool want_p, bool want_q) {
  return backward_cpu<false>(grad_out, p, q, at::Tensor(), stats, want_p, want_q);
}

// How many threads at::parallel_for really runs on for n one-item tasks: 1 for a build that
// lost OpenMP (the pragma inside at::parallel_for is compiled in the extension, so without
// -fopenmp every kernel here would silently run on one thread). Checked by tests/test_ops.py.
int64_t parallel_threads(int64_t n) {
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) { seen |= uint64_t{1} << (at::get_thread_num() % 64); });
  return __builtin_popcountll(seen.load());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kga_fast, m) {
  m.def("parallel_threads(int n) -> int", &parallel_threads);
}

TORCH_LIBRARY_IMPL(kga_fast, CPU, m) {
  m.impl("kl_rows", &forward_cpu<true>);
  m.impl("kl_rows_backward", &backward_cpu<true>);
  m.impl("jsd_rows", &forward_cpu<false>);
  m.impl("jsd_rows_backward", &jsd_backward_cpu);
}

}  // namespace kga_fast::cpu
