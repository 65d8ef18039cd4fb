// Scalar exp and log for float that GCC auto-vectorizes inside the row loops of
// kl_cpu.cpp (std::exp is a libm call, which stops vectorization). Cephes' expf/logf
// polynomials (~1 ulp), written with selects between computed values and integer bit
// tricks only: arithmetic inside one arm of a select is control flow that GCC does not
// if-convert without AVX-512 masks, and the loop stays scalar.
//
// Special values, as the kernels need them:
//   vexp(-inf) = 0 and vexp(x) = 0 below -87.33 (so a result is 0 or a normal float),
//   vexp(NaN) = NaN;  vlog(0) = -inf, vlog(x < 0) = NaN, vlog(NaN) = NaN, vlog(inf) = inf.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#define KGA_INLINE inline __attribute__((always_inline))

// With GCC's default -ftrapping-math the clamps and selects below stay branches on
// AVX2 and SSE and the loops stay scalar; the kernels never rely on FP exceptions.
#if defined(__GNUC__) && !defined(__clang__)
#define KGA_NO_TRAPPING_MATH_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC optimize(\"no-trapping-math\")")
#define KGA_NO_TRAPPING_MATH_END _Pragma("GCC pop_options")
#else
#define KGA_NO_TRAPPING_MATH_BEGIN
#define KGA_NO_TRAPPING_MATH_END
#endif
#define KGA_LAMBDA_INLINE __attribute__((always_inline))

KGA_NO_TRAPPING_MATH_BEGIN
namespace kga_fast::cpu {

KGA_INLINE float as_float(int32_t i) {
  float f;
  __builtin_memcpy(&f, &i, sizeof f);
  return f;
}

KGA_INLINE int32_t as_int(float f) {
  int32_t i;
  __builtin_memcpy(&i, &f, sizeof i);
  return i;
}

KGA_INLINE float vexp(float x) {
  constexpr float kLo = -87.33f;  // exp(kLo) is just above FLT_MIN
  constexpr float kHi = 88.72f;
  float xc = x < kLo ? kLo : x;
  xc = xc > kHi ? kHi : xc;
  // n = round(x / ln 2) with the 1.5 * 2^23 trick: n lands in the low mantissa bits of t.
  const float t = xc * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  float r = xc - n * 0.693359375f;  // ln 2 split in two for an exact reduction
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const float scale = as_float((as_int(t) - 0x4B400000 + 127) << 23);  // 2^n
  y = y * scale;
  y = x > kHi ? std::numeric_limits<float>::infinity() : y;
  return x < kLo ? 0.0f : y;
}

KGA_INLINE float vlog(float x) {
  // x = m * 2^e with m in [sqrt(1/2), sqrt(2)); log x = log1p(m - 1) + e ln 2.
  // Valid for normal x; the kernels never pass a subnormal (vexp gives none).
  const int32_t bits = as_int(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = as_float((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  float r = m + y + e * 0.693359375f;
  r = x == std::numeric_limits<float>::infinity() ? x : r;
  r = x == 0.0f ? -std::numeric_limits<float>::infinity() : r;
  r = x < 0.0f ? std::numeric_limits<float>::quiet_NaN() : r;
  return x != x ? x : r;
}

// float64 is the gradcheck path: exactness over speed.
KGA_INLINE double vexp(double x) { return std::exp(x); }
KGA_INLINE double vlog(double x) { return std::log(x); }

}  // namespace kga_fast::cpu
KGA_NO_TRAPPING_MATH_END
