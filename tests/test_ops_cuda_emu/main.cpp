// Runs the CUDA kernels of csrc/cuda/kernels.cuh under cuda_emu.h, on buffers written by
// tests/test_ops_cuda_emulated.py, with the launch shape kl_cuda.cu uses:
//   emu DIR OP MODE TP TQ N C ROW_STRIDE_P ROW_STRIDE_Q OFFSET_P OFFSET_Q WANT_P WANT_Q
// OP kl|jsd, MODE fwd|bwd, TP/TQ f32|f16|bf16|f64. Reads DIR/p.bin, DIR/q.bin (the
// forward's out.bin, stats.bin and grad.bin for bwd); writes out.bin, stats.bin (fwd) or
// dp.bin, dq.bin (bwd).
#include "cuda_emu.h"
#include "kernels.cuh"

#include <fstream>
#include <string>

using namespace kga_fast;
using namespace kga_fast::cuda;

namespace {

struct Buffer {
  std::unique_ptr<char, decltype(&std::free)> data{nullptr, &std::free};
  size_t bytes = 0;
};

Buffer allocate(size_t bytes) {  // 64-byte aligned, as the CUDA caching allocator's blocks are
  Buffer b;
  b.bytes = bytes;
  b.data.reset(static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
  return b;
}

Buffer read(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error("cannot read " + path);
  Buffer b = allocate(size_t(in.tellg()));
  in.seekg(0);
  in.read(b.data.get(), std::streamsize(b.bytes));
  return b;
}

void write(const std::string& path, const void* data, size_t bytes) {
  std::ofstream(path, std::ios::binary).write(static_cast<const char*>(data), std::streamsize(bytes));
}

template <typename T> struct Tag { using type = T; };

template <typename F>
void dispatch(const std::string& name, F&& f) {
  if (name == "f32") return f(Tag<float>{});
  if (name == "f16") return f(Tag<c10::Half>{});
  if (name == "bf16") return f(Tag<c10::BFloat16>{});
  if (name == "f64") return f(Tag<double>{});
  throw std::runtime_error("unknown dtype " + name);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 14) {
    std::fprintf(stderr, "usage: emu DIR OP MODE TP TQ N C SP SQ OFFP OFFQ WANT_P WANT_Q\n");
    return 2;
  }
  const std::string dir = argv[1], op = argv[2], mode = argv[3];
  const int64_t n = std::stoll(argv[6]), c = std::stoll(argv[7]), sp = std::stoll(argv[8]),
                sq = std::stoll(argv[9]), offp = std::stoll(argv[10]), offq = std::stoll(argv[11]);
  const bool want_p = std::string(argv[12]) == "1", want_q = std::string(argv[13]) == "1";
  const bool is_kl = op == "kl";
  const int64_t width = is_kl ? kKlStats : kJsdStats;
  const Launch l = launch_for(n, c);
  const Buffer pb = read(dir + "/p.bin"), qb = read(dir + "/q.bin");
  dispatch(argv[4], [&](auto tp) {
    dispatch(argv[5], [&](auto tq) {
      using TP = typename decltype(tp)::type;
      using TQ = typename decltype(tq)::type;
      using A = typename AccOf<TP>::type;
      if constexpr (std::is_same_v<TP, double> != std::is_same_v<TQ, double>) {
        throw std::runtime_error("float64 pairs only with float64 (the host wrapper promotes)");
      } else {
        const TP* p = reinterpret_cast<const TP*>(pb.data.get()) + offp;
        const TQ* q = reinterpret_cast<const TQ*>(qb.data.get()) + offq;
        if (mode == "fwd") {
          Buffer out = allocate(n * sizeof(A)), stats = allocate(n * width * sizeof(A));
          A* o = reinterpret_cast<A*>(out.data.get());
          A* s = reinterpret_cast<A*>(stats.data.get());
          if (is_kl) emu_launch(l.grid, l.block, [&] { forward_kernel<true, TP, TQ>(p, q, n, c, sp, sq, o, s); });
          else emu_launch(l.grid, l.block, [&] { forward_kernel<false, TP, TQ>(p, q, n, c, sp, sq, o, s); });
          write(dir + "/out.bin", o, out.bytes);
          write(dir + "/stats.bin", s, stats.bytes);
        } else {
          const Buffer gb = read(dir + "/grad.bin"), ob = read(dir + "/out.bin"), sb = read(dir + "/stats.bin");
          Buffer dpb = allocate(n * c * sizeof(TP)), dqb = allocate(n * c * sizeof(TQ));
          const A* g = reinterpret_cast<const A*>(gb.data.get());
          const A* o = reinterpret_cast<const A*>(ob.data.get());
          const A* s = reinterpret_cast<const A*>(sb.data.get());
          TP* dp = want_p ? reinterpret_cast<TP*>(dpb.data.get()) : nullptr;
          TQ* dq = want_q ? reinterpret_cast<TQ*>(dqb.data.get()) : nullptr;
          if (is_kl) emu_launch(l.grid, l.block, [&] { backward_kernel<true, TP, TQ>(g, p, q, n, c, sp, sq, o, s, dp, dq); });
          else emu_launch(l.grid, l.block, [&] { backward_kernel<false, TP, TQ>(g, p, q, n, c, sp, sq, o, s, dp, dq); });
          if (want_p) write(dir + "/dp.bin", dp, dpb.bytes);
          if (want_q) write(dir + "/dq.bin", dq, dqb.bytes);
        }
      }
    });
  });
  return 0;
}
