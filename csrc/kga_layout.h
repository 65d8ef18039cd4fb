// The layout of the per-row statistics that the forward ops save for their backward; no
// torch headers, so that the CUDA kernels can also be compiled for tests/cuda_emu.
#pragma once

#include <cstdint>

namespace kga_fast {

// Per-row statistics saved by the forward ops, in the accumulation dtype:
//   kl_rows:  (max_p, log Z_p, max_q, log Z_q)                  Z = sum_j exp(x_j - max)
//   jsd_rows: (max_p, log Z_p, max_q, log Z_q, KL(P||M), KL(Q||M))
// The max and log Z are kept apart (not summed into one log-sum-exp) so that
// log P_j = (x_j - max) - log Z stays exact for logits of magnitude 1e4 in float32.
constexpr int64_t kKlStats = 4;
constexpr int64_t kJsdStats = 6;

}  // namespace kga_fast
