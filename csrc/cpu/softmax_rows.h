// The CPU row loop of the softmax focal loss, templated over dtype, gamma and target form; the
// math is in focal_loss_math.h. Compiled once per instruction set by rows_<isa>.cpp, like the
// sigmoid loop.
//
// Each row is read three times (max, sum of exponentials, gradient) -- four with soft targets or
// label smoothing, whose u_c are kept in a row-sized buffer between the last two passes. A row
// of 1000 float logits is 4 KB, so every pass after the first reads it from L1.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <limits>
#include <vector>

#include "rows.h"
#include "vec_io.h"
#include "vec_math.h"

namespace focal_loss_ext {
namespace cpu {
namespace {

// Horizontal sum and max in a fixed lane order.
template <typename T>
T sum_lanes(const at::vec::Vectorized<T>& v) {
  T lanes[at::vec::Vectorized<T>::size()];
  v.store(lanes);
  T total = 0;
  for (const T lane : lanes) total += lane;
  return total;
}

template <typename T>
T max_lanes(const at::vec::Vectorized<T>& v) {
  T lanes[at::vec::Vectorized<T>::size()];
  v.store(lanes);
  T result = lanes[0];
  for (const T lane : lanes) result = math::max(result, lane);
  return result;
}

// kHard: integer labels without label smoothing, where only the target class has a term.
template <typename scalar_t, GammaKind kGamma, bool kLabels, bool kHard>
RowsResult softmax_rows_impl(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  using opmath_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t kWidth = Vec::size();
  const int64_t C = p.classes;
  const auto* alpha = static_cast<const opmath_t*>(p.alpha);
  const auto* weight = static_cast<const opmath_t*>(p.weight);
  const LossOut<scalar_t> loss_out{p.loss_out, p.opmath_loss};
  auto* grad_out = static_cast<scalar_t*>(p.grad_out);
  const opmath_t gamma = static_cast<opmath_t>(p.gamma);
  const Vec zero(0);
  const Vec lowest(-std::numeric_limits<opmath_t>::infinity());
  const Vec keep(static_cast<opmath_t>(1 - p.smoothing));
  const Vec spread(static_cast<opmath_t>(p.smoothing / static_cast<double>(C)));  // smoothing's share per class
  std::vector<opmath_t> u_row(kHard ? 0 : C);

  RowsResult result;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const auto* x = static_cast<const scalar_t*>(p.inputs) + r * C;
    int64_t label = -1;
    if constexpr (kLabels) {
      label = p.labels[r];
      const bool ignored = label == p.ignore_index;
      if (ignored || label < 0 || label >= C) {
        if (!ignored && !result.bad_label) {
          result.bad_label = true;
          result.first_bad_label = label;
        }
        if (loss_out) loss_out.set(r, 0);
        fill_zero<scalar_t>(p.grad_out, r * C, C);
        continue;
      }
      result.count += 1;
    }

    Vec row_max = lowest;
    for (int64_t k0 = 0; k0 < C; k0 += kWidth) {
      const int64_t n = std::min(kWidth, C - k0);
      const Vec v = load<opmath_t>(x + k0, n);
      row_max = Math<Vec>::max(row_max, n == kWidth ? v : Vec::set(lowest, v, n));
    }
    const opmath_t m_scalar = max_lanes(row_max);
    const Vec m(m_scalar);
    Vec shares = zero;
    Vec at_max = zero;
    for (int64_t k0 = 0; k0 < C; k0 += kWidth) {
      const int64_t n = std::min(kWidth, C - k0);
      const Vec z = load<opmath_t>(x + k0, n);
      const Vec share = softmax_share_below_max(z, m);
      const Vec is_max = softmax_at_max(z, m);
      // lanes past n hold padding: keep them out of the sums
      shares = shares + (n == kWidth ? share : Vec::set(zero, share, n));
      at_max = at_max + (n == kWidth ? is_max : Vec::set(zero, is_max, n));
    }
    const opmath_t log_norm_scalar = softmax_log_norm(sum_lanes(shares), sum_lanes(at_max));
    const Vec log_norm(log_norm_scalar);  // log p_c = (z_c - m) - log_norm

    const opmath_t w_row = weight != nullptr ? weight[r] : opmath_t(1);
    const opmath_t grad_prescale = static_cast<opmath_t>(w_row * p.grad_prescale);
    opmath_t row_loss;
    if constexpr (kHard) {
      const opmath_t log_p_y = (static_cast<opmath_t>(x[label]) - m_scalar) - log_norm_scalar;
      const LossGrad<opmath_t> term =
          softmax_focal_term<kGamma>(log_p_y, alpha != nullptr ? alpha[label] : opmath_t(1), gamma);
      row_loss = term.loss;
      if (grad_out != nullptr) {
        scalar_t* g = grad_out + r * C;
        const Vec coef(-term.grad * grad_prescale);
        for (int64_t k0 = 0; k0 < C; k0 += kWidth) {
          const int64_t n = std::min(kWidth, C - k0);
          store(g + k0, Math<Vec>::exp((load<opmath_t>(x + k0, n) - m) - log_norm) * coef, n);
        }
        g[label] = static_cast<scalar_t>(softmax_label_grad(term.grad, log_p_y) * grad_prescale);
      }
    } else {
      const auto* t = static_cast<const scalar_t*>(p.targets) + r * C;
      const Vec gamma_v(gamma);
      Vec loss_acc = zero;
      Vec u_acc = zero;
      for (int64_t k0 = 0; k0 < C; k0 += kWidth) {
        const int64_t n = std::min(kWidth, C - k0);
        const Vec log_p = (load<opmath_t>(x + k0, n) - m) - log_norm;
        Vec q = zero;
        if constexpr (kLabels) {
          if (label >= k0 && label < k0 + n) {
            opmath_t onehot[kWidth] = {};
            onehot[label - k0] = 1;
            q = Vec::loadu(onehot);
          }
        } else {
          q = load<opmath_t>(t + k0, n);
        }
        q = q * keep + spread;
        const Vec w = alpha != nullptr ? Vec::loadu(alpha + k0, n) * q : q;
        const LossGrad<Vec> term = softmax_focal_term<kGamma>(log_p, w, gamma_v);
        // lanes past n hold padding: keep them out of the sums
        loss_acc = loss_acc + (n == kWidth ? term.loss : Vec::set(zero, term.loss, n));
        u_acc = u_acc + (n == kWidth ? term.grad : Vec::set(zero, term.grad, n));
        term.grad.store(u_row.data() + k0, n);
      }
      row_loss = sum_lanes(loss_acc);
      if (grad_out != nullptr) {
        scalar_t* g = grad_out + r * C;
        const Vec u_sum(sum_lanes(u_acc));
        const Vec factor(grad_prescale);
        for (int64_t k0 = 0; k0 < C; k0 += kWidth) {
          const int64_t n = std::min(kWidth, C - k0);
          const Vec prob = Math<Vec>::exp((load<opmath_t>(x + k0, n) - m) - log_norm);
          store(g + k0, (Vec::loadu(u_row.data() + k0, n) - prob * u_sum) * factor, n);
        }
      }
    }
    row_loss *= w_row;
    if (loss_out) {
      loss_out.set(r, row_loss * static_cast<opmath_t>(p.loss_scale));
    } else {
      result.loss_sum += static_cast<double>(row_loss);
    }
  }
  return result;
}

template <typename scalar_t, GammaKind kGamma>
RowsResult softmax_rows_for_gamma(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  if (p.labels == nullptr) return softmax_rows_impl<scalar_t, kGamma, false, false>(p, row_begin, row_end);
  if (p.smoothing == 0) return softmax_rows_impl<scalar_t, kGamma, true, true>(p, row_begin, row_end);
  return softmax_rows_impl<scalar_t, kGamma, true, false>(p, row_begin, row_end);
}

template <typename scalar_t>
RowsResult softmax_rows_for_dtype(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  switch (p.gamma_kind) {
    case GammaKind::Zero:
      return softmax_rows_for_gamma<scalar_t, GammaKind::Zero>(p, row_begin, row_end);
    case GammaKind::One:
      return softmax_rows_for_gamma<scalar_t, GammaKind::One>(p, row_begin, row_end);
    case GammaKind::Two:
      return softmax_rows_for_gamma<scalar_t, GammaKind::Two>(p, row_begin, row_end);
    case GammaKind::General:
      break;
  }
  return softmax_rows_for_gamma<scalar_t, GammaKind::General>(p, row_begin, row_end);
}

inline RowsResult softmax_rows(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  RowsResult result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "softmax_focal_loss_cpu",
                                  [&] { result = softmax_rows_for_dtype<scalar_t>(p, row_begin, row_end); });
  return result;
}

}  // namespace
}  // namespace cpu
}  // namespace focal_loss_ext
