// Math<Vectorized<T>>: the primitives of focal_loss_math.h on at::vec vectors, so that the same
// per-element formulas run 8 (AVX2) or 16 (AVX-512) float lanes at a time. Self-sufficient:
// include it before or after focal_loss_math.h.
//
// float lanes get their own exp and log1p on [0, 1], written for throughput (no table, no
// branch, masked where the ISA has masks); double lanes keep Sleef's (via at::vec). Bounds,
// checked against float64 over the whole float range in tests/test_cpu_isa.py:
//   exp         <= 2 ulp for every float input (subnormal results included; NaN -> NaN,
//               +inf -> inf, -inf -> 0)
//   log1p_unit  <= 3 ulp on [0, 1] (2.75 measured), the only range softplus needs (its
//               argument is exp(-|x|))
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../focal_loss_math.h"

namespace focal_loss_ext {
namespace vec_math {

using VecF = at::vec::Vectorized<float>;

// max(lo, min(hi, x)) that keeps a NaN x: the x86 min/max return their second operand when
// either is NaN.
inline VecF clamp_keep_nan(const VecF& x, float lo, float hi) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_max_ps(_mm512_set1_ps(lo), _mm512_min_ps(_mm512_set1_ps(hi), x));
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_max_ps(_mm256_set1_ps(lo), _mm256_min_ps(_mm256_set1_ps(hi), x));
#else
  float v[VecF::size()];
  x.store(v);
  for (float& lane : v) lane = lane < lo ? lo : (lane > hi ? hi : lane);
  return VecF::loadu(v);
#endif
}

// p * 2^n for integral n in [-152, 129], rounded once (subnormal results included).
inline VecF scale_by_pow2(const VecF& p, const VecF& n) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_scalef_ps(p, n);
#else
  // Two factors 2^(n/2), 2^(n - n/2), each a normal float, so that only the last product rounds.
#if defined(CPU_CAPABILITY_AVX2)
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
#else
  float pv[VecF::size()];
  float nv[VecF::size()];
  p.store(pv);
  n.store(nv);
  for (int64_t i = 0; i < VecF::size(); ++i) {
    const int32_t ni = static_cast<int32_t>(nv[i]);
    const int32_t n1 = ni >> 1;
    const uint32_t b1 = static_cast<uint32_t>(n1 + 127) << 23;
    const uint32_t b2 = static_cast<uint32_t>(ni - n1 + 127) << 23;
    float s1;
    float s2;
    std::memcpy(&s1, &b1, sizeof s1);
    std::memcpy(&s2, &b2, sizeof s2);
    pv[i] = pv[i] * s1 * s2;
  }
  return VecF::loadu(pv);
#endif
#endif
}

// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (Cody-Waite: ln 2
// split in a 9-bit head, so n * head is exact for |n| < 2^15, and a tail); exp(r) by a degree-7
// polynomial, 1 + r + r^2 P(r) with P the classic minimax fit (Cephes' expf). x is clamped to
// [-105, 89] first: beyond it the result is 0 or inf anyway, and n stays small.
inline VecF exp(const VecF& x_in) {
  const VecF x = clamp_keep_nan(x_in, -105.0f, 89.0f);
  const VecF n = (x * VecF(1.44269504088896341f)).round();
  VecF r = at::vec::fmadd(n, VecF(-0.693359375f), x);
  r = at::vec::fmadd(n, VecF(2.12194440e-4f), r);
  VecF poly(1.9875691500e-4f);
  poly = at::vec::fmadd(poly, r, VecF(1.3981999507e-3f));
  poly = at::vec::fmadd(poly, r, VecF(8.3334519073e-3f));
  poly = at::vec::fmadd(poly, r, VecF(4.1665795894e-2f));
  poly = at::vec::fmadd(poly, r, VecF(1.6666665459e-1f));
  poly = at::vec::fmadd(poly, r, VecF(5.0000001201e-1f));
  const VecF e_r = at::vec::fmadd(poly, r * r, r) + VecF(1.0f);
  return scale_by_pow2(e_r, n);
}

// log1p(x) for x in [0, 1]: 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = x / (2 + x) <= 1/3.
// Every term is positive (no cancellation) and the first omitted one, s^15/15 relative to s, is
// below 1.5e-8, under float's half ulp.
inline VecF log1p_unit(const VecF& x) {
  const VecF s = x / (VecF(2.0f) + x);
  const VecF s2 = s * s;
  VecF series(1.0f / 13.0f);
  series = at::vec::fmadd(series, s2, VecF(1.0f / 11.0f));
  series = at::vec::fmadd(series, s2, VecF(1.0f / 9.0f));
  series = at::vec::fmadd(series, s2, VecF(1.0f / 7.0f));
  series = at::vec::fmadd(series, s2, VecF(1.0f / 5.0f));
  series = at::vec::fmadd(series, s2, VecF(1.0f / 3.0f));
  series = at::vec::fmadd(series, s2, VecF(1.0f));
  return (s + s) * series;
}

}  // namespace vec_math

template <typename T>
struct Math<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;
  static Vec exp(const Vec& x) {
    if constexpr (std::is_same_v<T, float>) {
      return vec_math::exp(x);
    } else {
      return x.exp();
    }
  }
  static Vec log1p_unit(const Vec& x) {
    if constexpr (std::is_same_v<T, float>) {
      return vec_math::log1p_unit(x);
    } else {
      return x.log1p();
    }
  }
  static Vec expm1(const Vec& x) { return x.expm1(); }
  static Vec abs(const Vec& x) { return x.abs(); }
  static Vec pow(const Vec& x, const Vec& y) { return x.pow(y); }
  // NaN-propagating, like the scalar one.
  static Vec max(const Vec& a, const Vec& b) { return at::vec::maximum(a, b); }
  // mask lanes are all ones (true) or all zeros (false), as at::vec comparisons return them.
  static Vec select(const Vec& mask, const Vec& a, const Vec& b) { return Vec::blendv(b, a, mask); }
};

}  // namespace focal_loss_ext
