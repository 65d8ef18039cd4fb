// The CUDA device API that csrc/cuda/*.cuh use, emulated on the CPU so that CI (which has
// no GPU) runs the real kernels: one std::thread per CUDA thread, one block at a time,
// warp shuffles and __syncthreads as barriers, __shared__ as statics, and an abort on any
// 16-byte load or store that is not 16-byte aligned (a GPU would fault there).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx, blockDim;

inline void check_aligned16(const void* ptr, const char* what) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
    std::fprintf(stderr, "misaligned 16-byte %s at %p\n", what, ptr);
    std::abort();
  }
}

// 16-byte vector types: copy-assignment is how the kernels store them, so it checks.
#define KGA_EMU_VEC4(NAME, T)                                            \
  struct NAME {                                                          \
    T x, y, z, w;                                                        \
    NAME& operator=(const NAME& o) {                                     \
      check_aligned16(this, "store");                                    \
      x = o.x, y = o.y, z = o.z, w = o.w;                                \
      return *this;                                                      \
    }                                                                    \
  };
KGA_EMU_VEC4(float4, float)
KGA_EMU_VEC4(uint4, unsigned)
struct double2 {
  double x, y;
  double2& operator=(const double2& o) {
    check_aligned16(this, "store");
    x = o.x, y = o.y;
    return *this;
  }
};
struct float2 {
  float x, y;
};
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline double2 make_double2(double a, double b) { return {a, b}; }

template <typename T>
T __ldg(const T* ptr) {
  if (sizeof(T) == 16) check_aligned16(ptr, "load");
  return *ptr;
}

struct __half2 {
  uint16_t x, y;
};
struct __nv_bfloat162 {
  uint16_t x, y;
};
inline float2 __half22float2(__half2 h) {
  return {float(c10::Half(h.x, c10::Half::from_bits())), float(c10::Half(h.y, c10::Half::from_bits()))};
}
inline float2 __bfloat1622float2(__nv_bfloat162 h) {
  return {float(c10::BFloat16(h.x, c10::BFloat16::from_bits())),
          float(c10::BFloat16(h.y, c10::BFloat16::from_bits()))};
}
inline __half2 __floats2half2_rn(float a, float b) { return {c10::Half(a).x, c10::Half(b).x}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {c10::BFloat16(a).x, c10::BFloat16(b).x};
}


struct EmuWarp {
  std::barrier<> bar{32};
  double slot[32];
};
inline thread_local EmuWarp* emu_warp = nullptr;
inline thread_local int emu_lane = 0;
inline thread_local std::barrier<>* emu_block_barrier = nullptr;

template <typename T>
T __shfl_xor_sync(unsigned, T value, int offset) {
  emu_warp->slot[emu_lane] = double(value);  // float and double round-trip exactly
  emu_warp->bar.arrive_and_wait();
  const T other = T(emu_warp->slot[emu_lane ^ offset]);
  emu_warp->bar.arrive_and_wait();
  return other;
}

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

// kernel<<<grid, block>>>(...) as emu_launch(grid, block, [&] { kernel(...); }).
template <typename Kernel>
void emu_launch(dim3 grid, dim3 block, const Kernel& kernel) {
  const unsigned nthreads = block.x * block.y * block.z;
  for (unsigned b = 0; b < grid.x * grid.y * grid.z; ++b) {
    std::barrier<> block_barrier(nthreads);
    std::vector<std::unique_ptr<EmuWarp>> warps;
    for (unsigned w = 0; w < (nthreads + 31) / 32; ++w) warps.push_back(std::make_unique<EmuWarp>());
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < nthreads; ++t) {
      threads.emplace_back([&, t] {
        threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
        blockIdx = dim3(b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y));
        blockDim = block;
        emu_warp = warps[t / 32].get();
        emu_lane = int(t % 32);
        emu_block_barrier = &block_barrier;
        kernel();
      });
    }
    for (auto& th : threads) th.join();
  }
}
