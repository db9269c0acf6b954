// The per-element math of the focal-loss family, written once.
//
// Every function here is a template over the arithmetic type T so that the CUDA kernel
// (T = float or double), the scalar CPU loop and the vectorized CPU loop
// (T = at::vec::Vectorized<float|double>) all call the same formulas. They reach their
// primitives (exp, log1p, pow, select, ...) through Math<T>: the primary template below serves
// scalars, cpu/vec_math.h specialises it for at::vec vectors. A class specialisation is found
// wherever it is declared before the loop is instantiated, so the headers may be included in
// any order.
//
// Stability rules, applied throughout:
//   log sigmoid(x)       = -softplus(-x)
//   log(1 - sigmoid(x))  = -softplus(x)
//   softplus(x)          = max(x, 0) + log1p(exp(-|x|))
//   1 - sigmoid(x)       = sigmoid(-x)
// so no probability is ever passed to a log, and exp() only ever sees -|x| <= 0.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace focal_loss_ext {

// gamma values with a closed form; General goes through pow().
enum class GammaKind : int { Zero = 0, One = 1, Two = 2, General = 3 };

inline GammaKind gamma_kind(double gamma) {
  if (gamma == 0.0) return GammaKind::Zero;
  if (gamma == 1.0) return GammaKind::One;
  if (gamma == 2.0) return GammaKind::Two;
  return GammaKind::General;
}

// How the reduced loss is formed; the integer values are part of the operator schema.
enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

template <typename T>
struct LossGrad {
  T loss;
  T grad;  // d loss / d logit
};

namespace math {

C10_HOST_DEVICE inline float exp(float x) {
  return ::expf(x);
}
C10_HOST_DEVICE inline double exp(double x) {
  return ::exp(x);
}
C10_HOST_DEVICE inline float log1p(float x) {
  return ::log1pf(x);
}
C10_HOST_DEVICE inline double log1p(double x) {
  return ::log1p(x);
}
// log1p on (0, 1], the only range softplus needs (its argument is exp(-|x|)); the CPU vector
// overload uses that range to replace a general log1p with a short series.
C10_HOST_DEVICE inline float log1p_unit(float x) {
  return ::log1pf(x);
}
C10_HOST_DEVICE inline double log1p_unit(double x) {
  return ::log1p(x);
}
C10_HOST_DEVICE inline float abs(float x) {
  return ::fabsf(x);
}
C10_HOST_DEVICE inline double abs(double x) {
  return ::fabs(x);
}
C10_HOST_DEVICE inline float pow(float x, float y) {
  return ::powf(x, y);
}
C10_HOST_DEVICE inline double pow(double x, double y) {
  return ::pow(x, y);
}
C10_HOST_DEVICE inline float expm1(float x) {
  return ::expm1f(x);
}
C10_HOST_DEVICE inline double expm1(double x) {
  return ::expm1(x);
}
C10_HOST_DEVICE inline float log(float x) {
  return ::logf(x);
}
C10_HOST_DEVICE inline double log(double x) {
  return ::log(x);
}
// NaN-propagating, like torch.max: a NaN logit makes its row's loss NaN.
C10_HOST_DEVICE inline float max(float a, float b) {
  return (a != a || a > b) ? a : b;
}
C10_HOST_DEVICE inline double max(double a, double b) {
  return (a != a || a > b) ? a : b;
}
template <typename T>
C10_HOST_DEVICE inline T select(bool cond, T a, T b) {
  return cond ? a : b;
}

}  // namespace math

// The primitives of arithmetic type T, for the formulas below: scalars here; at::vec vectors in
// cpu/vec_math.h.
template <typename T, typename Enable = void>
struct Math {
  using Mask = bool;
  C10_HOST_DEVICE static T exp(T x) { return math::exp(x); }
  C10_HOST_DEVICE static T exp_neg_abs(T x) { return math::exp(-math::abs(x)); }
  C10_HOST_DEVICE static T expm1(T x) { return math::expm1(x); }
  C10_HOST_DEVICE static T log1p_unit(T x) { return math::log1p_unit(x); }
  C10_HOST_DEVICE static T abs(T x) { return math::abs(x); }
  C10_HOST_DEVICE static T pow(T x, T y) { return math::pow(x, y); }
  C10_HOST_DEVICE static T max(T a, T b) { return math::max(a, b); }
  C10_HOST_DEVICE static T select(bool cond, T a, T b) { return cond ? a : b; }
  // The vector forms fuse these (one rounding); the compiler may contract the scalar ones.
  C10_HOST_DEVICE static T fma(T a, T b, T c) { return a * b + c; }
  C10_HOST_DEVICE static T fms(T a, T b, T c) { return a * b - c; }
  C10_HOST_DEVICE static T fnma(T a, T b, T c) { return c - a * b; }
  C10_HOST_DEVICE static bool ge(T a, T b) { return a >= b; }
  C10_HOST_DEVICE static bool lt(T a, T b) { return a < b; }
  C10_HOST_DEVICE static bool eq(T a, T b) { return a == b; }
  C10_HOST_DEVICE static T add_if(bool cond, T a, T b) { return cond ? a + b : a; }
  C10_HOST_DEVICE static T sub_if(bool cond, T a, T b) { return cond ? a - b : a; }
};

// sigmoid(x), sigmoid(-x), softplus(x), softplus(-x) from a single exp and a single log1p.
template <typename T>
struct SigmoidParts {
  T sig_pos;  // sigmoid(x)
  T sig_neg;  // sigmoid(-x) = 1 - sigmoid(x)
  T sp_pos;   // softplus(x)  = -log(1 - sigmoid(x))
  T sp_neg;   // softplus(-x) = -log(sigmoid(x))
};

template <typename T>
C10_HOST_DEVICE inline SigmoidParts<T> sigmoid_parts(T x) {
  using M = Math<T>;
  const T zero(0);
  const T one(1);
  const T e = M::exp_neg_abs(x);  // exp(-|x|) in (0, 1]: never overflows
  const T inv = one / (one + e);  // sigmoid(|x|): the one divide
  const T small = e * inv;        // sigmoid(-|x|)
  const auto x_nonneg = M::ge(x, zero);
  const auto x_neg = M::lt(x, zero);  // not the complement of x_nonneg: both false for NaN
  const T l = M::log1p_unit(e);
  SigmoidParts<T> p;
  p.sig_pos = M::select(x_nonneg, inv, small);
  p.sig_neg = M::select(x_nonneg, small, inv);
  // max(x, 0) + l and max(-x, 0) + l as masked adds; a NaN logit stays NaN through every output
  // (e, hence l, is NaN).
  p.sp_pos = M::add_if(x_nonneg, l, x);
  p.sp_neg = M::sub_if(x_neg, l, x);
  return p;
}

// Soft target after label smoothing s: t (1 - s) + s / 2.
template <typename T>
C10_HOST_DEVICE inline T smooth_target(T t, T smoothing) {
  return t * (T(1) - smoothing) + smoothing * T(0.5);
}

// Sigmoid focal loss of one logit x against a target t in [0, 1], and its derivative.
//
//   ce  = t softplus(-x) + (1 - t) softplus(x)           binary cross-entropy with logits
//   q   = t sigmoid(-x) + (1 - t) sigmoid(x)             1 - p_t
//   a_t = alpha_pos t + alpha_neg (1 - t)                 (1 and 1 when alpha is disabled)
//   FL  = a_t ce q^gamma
//   dFL/dx = a_t (dce q^gamma + ce d(q^gamma)),  dce = sigmoid(x) - t = (1 - t) sigmoid(x) - t sigmoid(-x),
//   d(q^gamma) = gamma q^(gamma - 1) (1 - 2t) sigmoid(x) sigmoid(-x).
// For gamma < 1 the factor q^(gamma - 1) is unbounded as q -> 0, so the general case writes
// it as gamma q^gamma r with r = sigmoid(x) sigmoid(-x) / q, which stays in [0, 1] because q
// is a convex combination of sigmoid(x) and sigmoid(-x); r is taken as 0 where q underflows
// to 0 (there q^gamma = 0 already).
template <GammaKind kGamma, typename T>
C10_HOST_DEVICE inline LossGrad<T> sigmoid_focal_term(T x, T t, T alpha_pos, T alpha_neg, T gamma) {
  using M = Math<T>;
  const T one(1);
  const SigmoidParts<T> p = sigmoid_parts(x);
  const T not_t = one - t;
  const T ce = M::fma(t, p.sp_neg, not_t * p.sp_pos);
  // q = t sigmoid(-x) + (1 - t) sigmoid(x) and dce = sigmoid(x) - t from the same two products,
  // so that no 1 - 1 cancellation loses a tiny sigmoid(-x) (x >> 0, t = 1)
  const T pos_part = t * p.sig_neg;
  const T neg_part = not_t * p.sig_pos;
  const T dce = neg_part - pos_part;
  const T a_t = M::fma(alpha_pos, t, alpha_neg * not_t);
  LossGrad<T> out;
  if constexpr (kGamma == GammaKind::Zero) {
    out.loss = a_t * ce;
    out.grad = a_t * dce;
  } else {
    const T q = pos_part + neg_part;
    const T dq = (not_t - t) * (p.sig_pos * p.sig_neg);  // dq/dx
    T q_gamma;
    T dq_gamma;
    if constexpr (kGamma == GammaKind::One) {
      q_gamma = q;
      dq_gamma = dq;
    } else if constexpr (kGamma == GammaKind::Two) {
      q_gamma = q * q;
      dq_gamma = (q + q) * dq;
    } else {
      const T zero(0);
      q_gamma = M::pow(q, gamma);
      const auto q_pos = q > zero;
      const T r = M::select(q_pos, dq / M::select(q_pos, q, one), zero);
      dq_gamma = gamma * q_gamma * r;
    }
    out.loss = a_t * ce * q_gamma;
    out.grad = a_t * M::fma(ce, dq_gamma, dce * q_gamma);
  }
  return out;
}

// The per-element rules handed to the kernel loops (CPU and CUDA). Every rule takes the same
// arguments; beta is used by FL* only.

// The sigmoid focal loss, with gamma fixed at compile time where a closed form exists.
template <GammaKind kGamma>
struct SigmoidFocal {
  template <typename T>
  C10_HOST_DEVICE inline LossGrad<T> operator()(T x, T t, T alpha_pos, T alpha_neg, T gamma, T /*beta*/) const {
    return sigmoid_focal_term<kGamma>(x, t, alpha_pos, alpha_neg, gamma);
  }
};

// FL*, the appendix variant of Lin et al. (2017). With x_t = x for a positive, -x for a negative:
//   FL* = -log sigmoid(gamma x_t + beta) / gamma
//       positive: softplus(-(gamma x + beta)) / gamma,  d/dx = -sigmoid(-(gamma x + beta))
//       negative: softplus(gamma x - beta) / gamma,     d/dx =  sigmoid(gamma x - beta)
// A soft target t in (0, 1) mixes the two hard cases, t FL*(positive) + (1 - t) FL*(negative),
// and the result is alpha_t-weighted as FL. (fvcore instead scales x by 2t - 1; the two agree
// for t in {0, 1} and beta = 0.) gamma > 0 is checked on the host.
struct SigmoidFocalStar {
  template <typename T>
  C10_HOST_DEVICE inline LossGrad<T> operator()(T x, T t, T alpha_pos, T alpha_neg, T gamma, T beta) const {
    const T one(1);
    const T gx = gamma * x;
    const SigmoidParts<T> pos = sigmoid_parts(gx + beta);
    const SigmoidParts<T> neg = sigmoid_parts(gx - beta);
    const T not_t = one - t;
    const T a_t = alpha_pos * t + alpha_neg * not_t;
    LossGrad<T> out;
    out.loss = a_t * (t * pos.sp_neg + not_t * neg.sp_pos) / gamma;
    out.grad = a_t * (not_t * neg.sig_pos - t * pos.sig_neg);
    return out;
  }
};

// ---------------------------------------------------------------------------------------------
// Softmax focal loss of one row z (C logits) against a target distribution q (one-hot for a
// label, q = t (1 - s) + s / C after label smoothing s, as in F.cross_entropy):
//
//   p = softmax(z),   L = sum_c w_c f(p_c),   f(p) = -(1 - p)^gamma log p,   w_c = alpha_c q_c.
//
// Gradient. dp_c/dz_j = p_c (delta_cj - p_j), so
//   dL/dz_j = sum_c w_c f'(p_c) p_c (delta_cj - p_j) = u_j - p_j U,
//   u_c = w_c p_c f'(p_c) = w_c (gamma p_c (1 - p_c)^(gamma - 1) log p_c - (1 - p_c)^gamma),
//   U   = sum_c u_c.
// For a hard label y (w = alpha_y e_y) only u_y is nonzero: dL/dz_j = u_y (delta_jy - p_j), and
// at j = y that is u_y (1 - p_y), with no cancellation. gamma = 0 gives u_c = -w_c and the
// familiar dL/dz_j = p_j sum_c w_c - w_j.
//
// Everything is computed from the row's log-softmax (never a log of a probability), written so
// that it keeps relative precision when one class dominates:
//   log p_c = (z_c - m) - log1p(R),   m = max(z),   R = sum of exp(z_j - m) over j != argmax,
// i.e. log sum_k exp(z_k - m) with the max's own exp(0) = 1 summed apart: as log(1 + R) it
// would round to 0 once R < eps (a loss of 0 for a confident correct class, whose true loss is
// ~R; F.cross_entropy returns that 0). The row loops sum softmax_share_below_max and
// softmax_at_max over the classes and pass both sums to softmax_log_norm. Then
// 1 - p_c = -expm1(log p_c), accurate near p_c = 1.
// For gamma < 1 the factor (1 - p)^(gamma - 1) is unbounded as p -> 1, so the general case writes
// u_c = w_c (1 - p)^gamma (gamma p log p / (1 - p) - 1), where log p / (1 - p) lies in
// (-inf, -1] and tends to -1 as p -> 1 (taken as -1 where 1 - p rounds to 0).

// Class z's share of R: exp(z - m) below the row's max m, 0 at it (counted by softmax_at_max
// instead). A NaN logit makes m NaN, and the share with it.
template <typename T>
C10_HOST_DEVICE inline T softmax_share_below_max(T z, T m) {
  return Math<T>::select(z == m, T(0), Math<T>::exp(z - m));
}

// 1 for a class at the row's max, else 0.
template <typename T>
C10_HOST_DEVICE inline T softmax_at_max(T z, T m) {
  return Math<T>::select(z == m, T(1), T(0));
}

// log sum_k exp(z_k - m) = log1p(R) from the row's sums of the two above: R is the shares plus
// the classes tied at the max but one.
template <typename T>
C10_HOST_DEVICE inline T softmax_log_norm(T share_sum, T at_max_count) {
  return math::log1p(share_sum + (at_max_count - T(1)));
}

// One class's term: loss = w f(p) and grad = u (the diagonal part above), from log p.
template <GammaKind kGamma, typename T>
C10_HOST_DEVICE inline LossGrad<T> softmax_focal_term(T log_p, T w, T gamma) {
  LossGrad<T> out;
  if constexpr (kGamma == GammaKind::Zero) {
    out.loss = -w * log_p;
    out.grad = -w;
  } else {
    const T one(1);
    const T p = Math<T>::exp(log_p);
    const T r = -Math<T>::expm1(log_p);  // 1 - p
    if constexpr (kGamma == GammaKind::One) {
      out.loss = -w * r * log_p;
      out.grad = w * (p * log_p - r);
    } else if constexpr (kGamma == GammaKind::Two) {
      out.loss = -w * r * r * log_p;
      out.grad = w * r * (T(2) * p * log_p - r);
    } else {
      const T zero(0);
      const T r_gamma = Math<T>::pow(r, gamma);
      const auto r_pos = r > zero;
      const T ratio = Math<T>::select(r_pos, log_p / Math<T>::select(r_pos, r, one), -one);  // log p / (1 - p)
      out.loss = -w * r_gamma * log_p;
      out.grad = w * r_gamma * (gamma * p * ratio - one);
    }
  }
  return out;
}

// Hard label y: the gradient at the target class, u_y (1 - p_y). (Every other class gets -p_j u_y.)
template <typename T>
C10_HOST_DEVICE inline T softmax_label_grad(T u_y, T log_p_y) {
  return -u_y * Math<T>::expm1(log_p_y);
}

}  // namespace focal_loss_ext
