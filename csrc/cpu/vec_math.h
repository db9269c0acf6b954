// at::vec overloads of the primitives that focal_loss_math.h calls, so that the same
// per-element formulas run eight (AVX2) or sixteen (AVX-512) lanes at a time on the CPU.
//
// Include this before focal_loss_math.h: the templates there call math::exp etc. by
// qualified name, which only sees the overloads declared before the template definitions.
#pragma once

#ifdef FOCAL_LOSS_EXT_MATH_H
#error "include cpu/vec_math.h before focal_loss_math.h"
#endif

#include <ATen/cpu/vec/vec.h>

namespace focal_loss_ext {
namespace math {

template <typename T>
inline at::vec::Vectorized<T> exp(const at::vec::Vectorized<T>& x) {
  return x.exp();
}
template <typename T>
inline at::vec::Vectorized<T> log1p(const at::vec::Vectorized<T>& x) {
  return x.log1p();
}
template <typename T>
inline at::vec::Vectorized<T> log1p_unit(const at::vec::Vectorized<T>& x) {
  return x.log1p();
}
// float lanes, x in [0, 1]: log1p(x) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = x / (2 + x)
// <= 1/3. Every term is positive (no cancellation) and the first omitted one, s^15/15 relative
// to s, is below 1.5e-8, under float's half ulp; Sleef's general log1p costs ~4x as much and
// was the largest part of the CPU kernel's time.
inline at::vec::Vectorized<float> log1p_unit(const at::vec::Vectorized<float>& x) {
  using Vec = at::vec::Vectorized<float>;
  const Vec s = x / (Vec(2.0f) + x);
  const Vec s2 = s * s;
  Vec series(1.0f / 13.0f);
  series = at::vec::fmadd(series, s2, Vec(1.0f / 11.0f));
  series = at::vec::fmadd(series, s2, Vec(1.0f / 9.0f));
  series = at::vec::fmadd(series, s2, Vec(1.0f / 7.0f));
  series = at::vec::fmadd(series, s2, Vec(1.0f / 5.0f));
  series = at::vec::fmadd(series, s2, Vec(1.0f / 3.0f));
  series = at::vec::fmadd(series, s2, Vec(1.0f));
  return Vec(2.0f) * s * series;
}
template <typename T>
inline at::vec::Vectorized<T> abs(const at::vec::Vectorized<T>& x) {
  return x.abs();
}
template <typename T>
inline at::vec::Vectorized<T> pow(const at::vec::Vectorized<T>& x, const at::vec::Vectorized<T>& y) {
  return x.pow(y);
}
template <typename T>
inline at::vec::Vectorized<T> expm1(const at::vec::Vectorized<T>& x) {
  return x.expm1();
}
template <typename T>
inline at::vec::Vectorized<T> log(const at::vec::Vectorized<T>& x) {
  return x.log();
}
// NaN-propagating, like the scalar overload.
template <typename T>
inline at::vec::Vectorized<T> max(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) {
  return at::vec::maximum(a, b);
}
// mask lanes are all ones (true) or all zeros (false), as at::vec comparisons return them.
template <typename T>
inline at::vec::Vectorized<T> select(const at::vec::Vectorized<T>& mask,
                                     const at::vec::Vectorized<T>& a,
                                     const at::vec::Vectorized<T>& b) {
  return at::vec::Vectorized<T>::blendv(b, a, mask);
}

}  // namespace math
}  // namespace focal_loss_ext

#include "../focal_loss_math.h"
