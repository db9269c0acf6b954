// The CPU row loop of the sigmoid losses, templated over dtype, per-element rule and target form. Included once per CPU
// capability by rows_<capability>.cpp, each of which sets CPU_CAPABILITY first so that
// at::vec::Vectorized is the AVX2 (or the portable) implementation in its own namespace.
#pragma once

#include "vec_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>

#include "rows.h"

namespace focal_loss_ext {
namespace cpu {
namespace {

template <typename opmath_t, typename scalar_t>
inline at::vec::Vectorized<opmath_t> load(const scalar_t* src, int64_t n) {
  using Vec = at::vec::Vectorized<opmath_t>;
  if constexpr (std::is_same_v<opmath_t, scalar_t>) {
    return Vec::loadu(src, n);
  } else {
    opmath_t buf[Vec::size()] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<opmath_t>(src[i]);
    return Vec::loadu(buf);
  }
}

template <typename scalar_t, typename opmath_t>
inline void store(scalar_t* dst, const at::vec::Vectorized<opmath_t>& v, int64_t n) {
  if constexpr (std::is_same_v<opmath_t, scalar_t>) {
    v.store(dst, n);
  } else {
    opmath_t buf[at::vec::Vectorized<opmath_t>::size()];
    v.store(buf);
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(buf[i]);
  }
}

template <typename scalar_t>
inline void fill_zero(void* base, int64_t offset, int64_t n) {
  if (base != nullptr) std::fill_n(static_cast<scalar_t*>(base) + offset, n, scalar_t(0));
}

template <typename scalar_t, typename Rule, bool kLabels>
RowsResult rows_impl(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  using opmath_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t kWidth = Vec::size();
  const int64_t K = p.classes;
  const auto* x = static_cast<const scalar_t*>(p.inputs);
  const auto* t = static_cast<const scalar_t*>(p.targets);
  const auto* alpha = static_cast<const opmath_t*>(p.alpha);
  const auto* weight = static_cast<const opmath_t*>(p.weight);
  auto* loss_out = static_cast<scalar_t*>(p.loss_out);
  auto* grad_out = static_cast<scalar_t*>(p.grad_out);
  const Vec gamma(static_cast<opmath_t>(p.gamma));
  const Vec beta(static_cast<opmath_t>(p.beta));
  const Vec keep(static_cast<opmath_t>(1 - p.smoothing));
  const Vec half_smoothing(static_cast<opmath_t>(p.smoothing / 2));
  const Vec loss_scale(static_cast<opmath_t>(p.loss_scale));
  const Vec zero(0);
  const Rule rule;

  RowsResult result;
  Vec acc(0);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t base = r * K;
    int64_t label = -1;
    if constexpr (kLabels) {
      label = p.labels[r];
      const bool ignored = label == p.ignore_index;
      if (ignored || label < 0 || label > K) {
        if (!ignored && !result.bad_label) {
          result.bad_label = true;
          result.first_bad_label = label;
        }
        fill_zero<scalar_t>(p.loss_out, base, K);
        fill_zero<scalar_t>(p.grad_out, base, K);
        continue;
      }
      result.count += K;
    }
    const opmath_t w = weight != nullptr ? weight[r] : opmath_t(1);
    const Vec grad_prescale(static_cast<opmath_t>(w * p.grad_prescale));
    const Vec row_weight(w);
    for (int64_t k0 = 0; k0 < K; k0 += kWidth) {
      const int64_t n = std::min(kWidth, K - k0);
      const Vec xv = load<opmath_t>(x + base + k0, n);
      Vec tv = zero;
      if constexpr (kLabels) {
        if (label >= k0 && label < k0 + n) {
          opmath_t onehot[kWidth] = {};
          onehot[label - k0] = 1;
          tv = Vec::loadu(onehot);
        }
      } else {
        tv = load<opmath_t>(t + base + k0, n);
      }
      tv = tv * keep + half_smoothing;
      Vec alpha_pos(static_cast<opmath_t>(p.alpha_pos));
      Vec alpha_neg(static_cast<opmath_t>(p.alpha_neg));
      if (alpha != nullptr) {
        alpha_pos = Vec::loadu(alpha + k0, n);
        alpha_neg = Vec(1) - alpha_pos;
      }
      const LossGrad<Vec> lg = rule(xv, tv, alpha_pos, alpha_neg, gamma, beta);
      const Vec loss = lg.loss * row_weight;
      if (loss_out != nullptr) {
        store(loss_out + base + k0, loss * loss_scale, n);
      } else {
        // lanes past n hold the loss of padding zeros: keep them out of the sum
        acc = acc + (n == kWidth ? loss : Vec::set(zero, loss, n));
      }
      if (grad_out != nullptr) {
        store(grad_out + base + k0, lg.grad * grad_prescale, n);
      }
    }
  }
  opmath_t lanes[kWidth];
  acc.store(lanes);
  for (int64_t i = 0; i < kWidth; ++i) result.loss_sum += static_cast<double>(lanes[i]);
  return result;
}

template <typename scalar_t, typename Rule>
RowsResult rows_for_rule(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  return p.labels != nullptr ? rows_impl<scalar_t, Rule, true>(p, row_begin, row_end)
                             : rows_impl<scalar_t, Rule, false>(p, row_begin, row_end);
}

template <typename scalar_t>
RowsResult rows_for_dtype(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  if (p.star) return rows_for_rule<scalar_t, SigmoidFocalStar>(p, row_begin, row_end);
  switch (p.gamma_kind) {
    case GammaKind::Zero:
      return rows_for_rule<scalar_t, SigmoidFocal<GammaKind::Zero>>(p, row_begin, row_end);
    case GammaKind::One:
      return rows_for_rule<scalar_t, SigmoidFocal<GammaKind::One>>(p, row_begin, row_end);
    case GammaKind::Two:
      return rows_for_rule<scalar_t, SigmoidFocal<GammaKind::Two>>(p, row_begin, row_end);
    case GammaKind::General:
      break;
  }
  return rows_for_rule<scalar_t, SigmoidFocal<GammaKind::General>>(p, row_begin, row_end);
}

inline RowsResult rows_dispatch(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  RowsResult result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "sigmoid_focal_loss_cpu",
                                  [&] { result = rows_for_dtype<scalar_t>(p, row_begin, row_end); });
  return result;
}

}  // namespace
}  // namespace cpu
}  // namespace focal_loss_ext
