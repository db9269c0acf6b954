// Math<Vectorized<T>>: the primitives of focal_loss_math.h on at::vec vectors, so that the same
// per-element formulas run 8 (AVX2) or 16 (AVX-512) float lanes at a time. Self-sufficient:
// include it before or after focal_loss_math.h.
//
// float lanes get their own exp and log1p on [0, 1], written for throughput (no table, no
// branch, no divide); double lanes keep Sleef's (via at::vec). Bounds, checked against float64
// over the whole float range in tests/test_cpu_isa.py:
//   exp         <= 2 ulp for every float input (subnormal results included; NaN -> NaN,
//               +inf -> inf, -inf -> 0)
//   log1p_unit  <= 2.5 ulp on [0, 1] (1.8 measured with FMA, 2.15 in the portable build), the
//               only range softplus needs (its argument is exp(-|x|))
// Masks: comparisons give Math<Vec>::Mask, a k-register on AVX-512 (one instruction per compare
// and per select) and a lane mask elsewhere.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../focal_loss_math.h"

namespace focal_loss_ext {
namespace vec_math {

using VecF = at::vec::Vectorized<float>;

// max(lo, x) and max(lo, min(hi, x)) that keep a NaN x: the x86 min/max return their second
// operand when either is NaN.
inline VecF max_keep_nan(float lo, const VecF& x) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_max_ps(_mm512_set1_ps(lo), x);
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_max_ps(_mm256_set1_ps(lo), x);
#else
  float v[VecF::size()];
  x.store(v);
  for (float& lane : v) lane = lane < lo ? lo : lane;
  return VecF::loadu(v);
#endif
}

inline VecF clamp_keep_nan(const VecF& x, float lo, float hi) {
#if defined(CPU_CAPABILITY_AVX512)
  return max_keep_nan(lo, _mm512_min_ps(_mm512_set1_ps(hi), x));
#elif defined(CPU_CAPABILITY_AVX2)
  return max_keep_nan(lo, _mm256_min_ps(_mm256_set1_ps(hi), x));
#else
  float v[VecF::size()];
  x.store(v);
  for (float& lane : v) lane = lane > hi ? hi : lane;
  return max_keep_nan(lo, VecF::loadu(v));
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
// polynomial, 1 + r + r^2 P(r) with P the classic minimax fit (Cephes' expf). x must lie in
// [-105, 89] or be NaN: beyond it the result is 0 or inf anyway, and n stays small.
inline VecF exp_in_range(const VecF& x) {
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

inline VecF exp(const VecF& x) {
  return exp_in_range(clamp_keep_nan(x, -105.0f, 89.0f));
}

// exp(-|x|), in (0, 1]: -|x| is x with the sign bit set, and only the lower clamp can bind.
inline VecF exp_neg_abs(const VecF& x) {
  return exp_in_range(max_keep_nan(-105.0f, x | VecF(-0.0f)));
}

// log1p(x) for x in [0, 1]: x P(x), P a degree-9 fit of log1p(x) / x on [0, 1] (minimax for the
// relative error, 5.7e-9, with P(0) = 1 exactly), by Horner's rule. No divide: the atanh series
// it replaces needed x / (2 + x), a second divide per element beside the sigmoid's.
inline VecF log1p_unit(const VecF& x) {
  VecF p(-3.3387308940291405e-3f);
  p = at::vec::fmadd(p, x, VecF(2.027777023613453e-2f));
  p = at::vec::fmadd(p, x, VecF(-5.775914341211319e-2f));
  p = at::vec::fmadd(p, x, VecF(1.0684537142515182e-1f));
  p = at::vec::fmadd(p, x, VecF(-1.5353277325630188e-1f));
  p = at::vec::fmadd(p, x, VecF(1.9692455232143402e-1f));
  p = at::vec::fmadd(p, x, VecF(-2.495734691619873e-1f));
  p = at::vec::fmadd(p, x, VecF(3.33302766084671e-1f));
  p = at::vec::fmadd(p, x, VecF(-4.9999913573265076e-1f));
  p = at::vec::fmadd(p, x, VecF(1.0f));
  return x * p;
}

}  // namespace vec_math

template <typename T>
struct Math<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;
  static constexpr bool kFloat = std::is_same_v<T, float>;
#if defined(CPU_CAPABILITY_AVX512)
  using Mask = std::conditional_t<kFloat, __mmask16, __mmask8>;
#else
  using Mask = Vec;  // lanes all ones (true) or all zeros (false), as at::vec comparisons return them
#endif

  static Vec exp(const Vec& x) {
    if constexpr (kFloat) {
      return vec_math::exp(x);
    } else {
      return x.exp();
    }
  }
  static Vec exp_neg_abs(const Vec& x) {
    if constexpr (kFloat) {
      return vec_math::exp_neg_abs(x);
    } else {
      return (-x.abs()).exp();
    }
  }
  static Vec log1p_unit(const Vec& x) {
    if constexpr (kFloat) {
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
  // a * b + c, a * b - c, c - a * b, each rounded once (the portable build rounds twice).
  static Vec fma(const Vec& a, const Vec& b, const Vec& c) { return at::vec::fmadd(a, b, c); }
  static Vec fms(const Vec& a, const Vec& b, const Vec& c) { return at::vec::fmsub(a, b, c); }
  static Vec fnma(const Vec& a, const Vec& b, const Vec& c) { return at::vec::fnmadd(a, b, c); }

  // a >= b, a < b, a == b; false where either is NaN.
  static Mask ge(const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kFloat) return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ);
    if constexpr (!kFloat) return _mm512_cmp_pd_mask(a, b, _CMP_GE_OQ);
#else
    return a >= b;
#endif
  }
  static Mask lt(const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kFloat) return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ);
    if constexpr (!kFloat) return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ);
#else
    return a < b;
#endif
  }
  static Mask eq(const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kFloat) return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ);
    if constexpr (!kFloat) return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ);
#else
    return a == b;
#endif
  }
  // mask ? a : b
  static Vec select(const Mask& mask, const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kFloat) return _mm512_mask_blend_ps(mask, b, a);
    if constexpr (!kFloat) return _mm512_mask_blend_pd(mask, b, a);
#else
    return Vec::blendv(b, a, mask);
#endif
  }
#if defined(CPU_CAPABILITY_AVX512)
  // A lane mask as at::vec's own comparisons return it (the softmax rules use those).
  static Vec select(const Vec& mask, const Vec& a, const Vec& b) { return Vec::blendv(b, a, mask); }
#endif
  // mask ? a + b : a, and mask ? a - b : a (a itself, not a + 0, where the mask is false).
  static Vec add_if(const Mask& mask, const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kFloat) return _mm512_mask_add_ps(a, mask, a, b);
    if constexpr (!kFloat) return _mm512_mask_add_pd(a, mask, a, b);
#else
    return a + (b & mask);
#endif
  }
  static Vec sub_if(const Mask& mask, const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kFloat) return _mm512_mask_sub_ps(a, mask, a, b);
    if constexpr (!kFloat) return _mm512_mask_sub_pd(a, mask, a, b);
#else
    return a - (b & mask);
#endif
  }
};

}  // namespace focal_loss_ext
