// The CPU row loop of the sigmoid losses (FL, FL*), templated over dtype, per-element rule and
// target form; the math is in focal_loss_math.h. Compiled once per instruction set by
// rows_<isa>.cpp, each with its own compiler flags, so that at::vec::Vectorized is that ISA's
// implementation (in its own namespace).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>

#include "rows.h"
#include "vec_io.h"
#include "vec_math.h"

namespace focal_loss_ext {
namespace cpu {
namespace {

// kGrad: whether the gradient is wanted; without it the compiler drops the gradient's arithmetic
// (forward only costs ~20% fewer operations).
//
// Each instance is its own function (noinline) and inlines everything it calls: the rule, the
// vector math, the loads and stores. Otherwise the compiler inlines some instances into the
// dispatcher, runs out of inlining budget there and calls the rule out of line, once per
// vector, with its result (loss and gradient, both computed) passed through memory.
template <typename scalar_t, typename Rule, bool kLabels, bool kGrad>
C10_NOINLINE RowsResult sigmoid_rows_impl(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  using opmath_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<opmath_t>;
  using M = Math<Vec>;
  constexpr int64_t kWidth = Vec::size();
  const int64_t K = p.classes;
  const auto* x = static_cast<const scalar_t*>(p.inputs);
  const auto* t = static_cast<const scalar_t*>(p.targets);
  const auto* alpha = static_cast<const opmath_t*>(p.alpha);
  const auto* weight = static_cast<const opmath_t*>(p.weight);
  const LossOut<scalar_t> loss_out{p.loss_out, p.opmath_loss};
  auto* grad_out = static_cast<scalar_t*>(p.grad_out);
  const Vec gamma(static_cast<opmath_t>(p.gamma));
  const Vec beta(static_cast<opmath_t>(p.beta));
  const Vec keep(static_cast<opmath_t>(1 - p.smoothing));
  const Vec half_smoothing(static_cast<opmath_t>(p.smoothing / 2));
  // the smoothed targets of a label's class and of the others: t (1 - s) + s / 2 for t = 1, 0
  const Vec target_pos = at::vec::fmadd(Vec(1), keep, half_smoothing);
  const Vec target_neg = at::vec::fmadd(Vec(0), keep, half_smoothing);
  const Vec loss_scale(static_cast<opmath_t>(p.loss_scale));
  const Vec scalar_alpha_pos(static_cast<opmath_t>(p.alpha_pos));
  const Vec scalar_alpha_neg(static_cast<opmath_t>(p.alpha_neg));
  const Vec one(1);
  const Vec width(static_cast<opmath_t>(kWidth));
  // Class index of each lane, for the label compare (exact in float for K < 2^24).
  const Vec lane_index = Vec::arange(opmath_t(0), opmath_t(1));
  const Rule rule;

  RowsResult result;
  Vec acc(0);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t base = r * K;
    Vec label_v;
    if constexpr (kLabels) {
      const int64_t label = p.labels[r];
      const bool ignored = label == p.ignore_index;
      if (ignored || label < 0 || label > K) {
        if (!ignored && !result.bad_label) {
          result.bad_label = true;
          result.first_bad_label = label;
        }
        loss_out.zero(base, K);
        fill_zero<scalar_t>(p.grad_out, base, K);
        continue;
      }
      result.count += K;
      label_v = Vec(static_cast<opmath_t>(label));
    }
    const opmath_t w = weight != nullptr ? weight[r] : opmath_t(1);
    const Vec grad_prescale(static_cast<opmath_t>(w * p.grad_prescale));
    const Vec row_weight(w);
    // One vector of the row: n lanes from class k0 (n = kWidth but at the row's end).
    auto step = [&](int64_t k0, int64_t n, const Vec& index) FOCAL_LOSS_EXT_ALWAYS_INLINE {
      const Vec xv = load<opmath_t>(x + base + k0, n);
      Vec tv;
      if constexpr (kLabels) {
        tv = M::select(M::eq(index, label_v), target_pos, target_neg);  // the one-hot target
      } else {
        tv = at::vec::fmadd(load<opmath_t>(t + base + k0, n), keep, half_smoothing);
      }
      Vec alpha_pos = scalar_alpha_pos;
      Vec alpha_neg = scalar_alpha_neg;
      if (alpha != nullptr) {
        alpha_pos = load<opmath_t>(alpha + k0, n);
        alpha_neg = one - alpha_pos;
      }
      const LossGrad<Vec> lg = rule(xv, tv, alpha_pos, alpha_neg, gamma, beta);
      if (loss_out) {
        loss_out.write(base + k0, lg.loss * (row_weight * loss_scale), n);
      } else {
        // lanes past n hold the loss of padding zeros: keep them out of the sum
        acc = at::vec::fmadd(n == kWidth ? lg.loss : first_lanes(lg.loss, n), row_weight, acc);
      }
      if constexpr (kGrad) {
        store(grad_out + base + k0, lg.grad * grad_prescale, n);
      }
    };
    Vec index = lane_index;
    int64_t k0 = 0;
    for (; k0 + kWidth <= K; k0 += kWidth, index = index + width) step(k0, kWidth, index);
    if (k0 < K) step(k0, K - k0, index);
  }
  opmath_t lanes[kWidth];
  acc.store(lanes);
  for (int64_t i = 0; i < kWidth; ++i) result.loss_sum += static_cast<double>(lanes[i]);
  return result;
}

template <typename scalar_t, typename Rule, bool kLabels>
RowsResult sigmoid_rows_for_targets(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  return p.grad_out != nullptr ? sigmoid_rows_impl<scalar_t, Rule, kLabels, true>(p, row_begin, row_end)
                               : sigmoid_rows_impl<scalar_t, Rule, kLabels, false>(p, row_begin, row_end);
}

template <typename scalar_t, typename Rule>
RowsResult sigmoid_rows_for_rule(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  return p.labels != nullptr ? sigmoid_rows_for_targets<scalar_t, Rule, true>(p, row_begin, row_end)
                             : sigmoid_rows_for_targets<scalar_t, Rule, false>(p, row_begin, row_end);
}

template <typename scalar_t>
RowsResult sigmoid_rows_for_dtype(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  if (p.star) return sigmoid_rows_for_rule<scalar_t, SigmoidFocalStar>(p, row_begin, row_end);
  switch (p.gamma_kind) {
    case GammaKind::Zero:
      return sigmoid_rows_for_rule<scalar_t, SigmoidFocal<GammaKind::Zero>>(p, row_begin, row_end);
    case GammaKind::One:
      return sigmoid_rows_for_rule<scalar_t, SigmoidFocal<GammaKind::One>>(p, row_begin, row_end);
    case GammaKind::Two:
      return sigmoid_rows_for_rule<scalar_t, SigmoidFocal<GammaKind::Two>>(p, row_begin, row_end);
    case GammaKind::General:
      break;
  }
  return sigmoid_rows_for_rule<scalar_t, SigmoidFocal<GammaKind::General>>(p, row_begin, row_end);
}

inline RowsResult sigmoid_rows(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  RowsResult result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "sigmoid_focal_loss_cpu",
                                  [&] { result = sigmoid_rows_for_dtype<scalar_t>(p, row_begin, row_end); });
  return result;
}

}  // namespace
}  // namespace cpu
}  // namespace focal_loss_ext
