// CUDA backend of the softmax focal loss. One warp per row (grid-stride over rows) and its 32
// lanes stride over the classes, so a row of any length is handled 32 classes at a time. Per
// row: the max, the sum of exponentials, then loss and gradient, with the math from
// focal_loss_math.h. Row sums are butterfly reductions (identical bits in every lane, every
// run); row losses are summed per block, and the block partials by the shared finalize kernel
// in a fixed order: no float atomics, no host synchronization.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../problem.h"
#include "cuda_helpers.cuh"
#include "forward.cuh"

namespace focal_loss_ext {
namespace cuda {
namespace {

constexpr int kWarpSize = 32;

// kHard: integer labels without label smoothing, where only the target class has a term.
template <typename scalar_t, GammaKind kGamma, bool kLabels, bool kHard>
__global__ void __launch_bounds__(kThreads)
    softmax_focal_forward_kernel(const ForwardTensors<scalar_t> io, const ForwardArgs<at::opmath_type<scalar_t>> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto scales = start_forward(io, a);

  const int lane = threadIdx.x % kWarpSize;
  const int64_t C = a.classes;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * kWarps;
  opmath_t acc = 0;   // lane 0: sum of this warp's row losses
  int64_t count = 0;  // lane 0: this warp's non-ignored rows (label form)
  // The row is the same for the whole warp, so every branch on it below is warp-uniform and
  // all 32 lanes reach every shuffle.
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; row < a.rows;
       row += warps_in_grid) {
    const scalar_t* x = io.inputs + row * C;
    scalar_t* g = io.grad_out != nullptr ? io.grad_out + row * C : nullptr;
    int64_t label = -1;
    if constexpr (kLabels) {
      label = io.labels[row];
      if (label == a.ignore_index) {
        if (io.loss_out != nullptr && lane == 0) io.loss_out[row] = scalar_t(0);
        if (g != nullptr) {
          for (int64_t k = lane; k < C; k += kWarpSize) g[k] = scalar_t(0);
        }
        continue;
      }
      CUDA_KERNEL_ASSERT(label >= 0 && label < C);
      count += lane == 0 ? 1 : 0;
    }

    opmath_t m = -std::numeric_limits<opmath_t>::infinity();
    for (int64_t k = lane; k < C; k += kWarpSize) m = math::max(m, static_cast<opmath_t>(x[k]));
    m = warp_all_max(m);
    opmath_t exp_sum = 0;
    for (int64_t k = lane; k < C; k += kWarpSize) exp_sum += math::exp(static_cast<opmath_t>(x[k]) - m);
    const opmath_t lse = m + math::log(warp_all_sum(exp_sum));  // log sum_k exp(z_k)

    const opmath_t w_row = io.weight != nullptr ? io.weight[row] : opmath_t(1);
    const opmath_t row_grad_prescale = w_row * scales.grad_prescale;
    opmath_t row_loss;
    if constexpr (kHard) {
      const opmath_t log_p_y = static_cast<opmath_t>(x[label]) - lse;
      const LossGrad<opmath_t> term =
          softmax_focal_term<kGamma>(log_p_y, io.alpha != nullptr ? io.alpha[label] : opmath_t(1), a.gamma);
      row_loss = term.loss;
      if (g != nullptr) {
        const opmath_t coef = -term.grad * row_grad_prescale;
        const opmath_t at_label = softmax_label_grad(term.grad, log_p_y) * row_grad_prescale;
        for (int64_t k = lane; k < C; k += kWarpSize) {
          g[k] = static_cast<scalar_t>(k == label ? at_label : math::exp(static_cast<opmath_t>(x[k]) - lse) * coef);
        }
      }
    } else {
      // Class k's term; evaluated twice (sums, then gradient) instead of kept, as there is no
      // row-sized buffer on chip for rows of any length.
      const auto class_term = [&](int64_t k, opmath_t log_p) {
        opmath_t q;
        if constexpr (kLabels) {
          q = k == label ? opmath_t(1) : opmath_t(0);
        } else {
          q = static_cast<opmath_t>(io.targets[row * C + k]);
        }
        q = q * a.keep + a.spread;
        const opmath_t w = io.alpha != nullptr ? io.alpha[k] * q : q;
        return softmax_focal_term<kGamma>(log_p, w, a.gamma);
      };
      opmath_t loss_sum = 0;
      opmath_t u_sum = 0;
      for (int64_t k = lane; k < C; k += kWarpSize) {
        const LossGrad<opmath_t> term = class_term(k, static_cast<opmath_t>(x[k]) - lse);
        loss_sum += term.loss;
        u_sum += term.grad;
      }
      row_loss = warp_all_sum(loss_sum);
      u_sum = warp_all_sum(u_sum);
      if (g != nullptr) {
        for (int64_t k = lane; k < C; k += kWarpSize) {
          const opmath_t log_p = static_cast<opmath_t>(x[k]) - lse;
          const LossGrad<opmath_t> term = class_term(k, log_p);
          g[k] = static_cast<scalar_t>((term.grad - math::exp(log_p) * u_sum) * row_grad_prescale);
        }
      }
    }
    if (lane == 0) {
      if (io.loss_out != nullptr) {
        io.loss_out[row] = static_cast<scalar_t>(row_loss * w_row * scales.loss_scale);
      } else {
        acc += row_loss * w_row;
      }
    }
  }
  finish_forward(io, a, acc, count);
}

// kHard where only the target class has a term: integer labels without label smoothing.
template <typename scalar_t, GammaKind kGamma>
void launch_for_targets(FocalLossProblem& p, const ForwardArgs<at::opmath_type<scalar_t>>& args) {
  const int64_t threads = p.rows * kWarpSize;  // one warp per row
  if (!p.labels) {
    launch_forward<softmax_focal_forward_kernel<scalar_t, kGamma, false, false>, scalar_t>(p, threads, args);
  } else if (p.smoothing == 0) {
    launch_forward<softmax_focal_forward_kernel<scalar_t, kGamma, true, true>, scalar_t>(p, threads, args);
  } else {
    launch_forward<softmax_focal_forward_kernel<scalar_t, kGamma, true, false>, scalar_t>(p, threads, args);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_focal_loss_cuda(const at::Tensor& inputs,
                                                                       const at::Tensor& targets,
                                                                       const c10::optional<at::Tensor>& alpha_per_class,
                                                                       const c10::optional<at::Tensor>& weight,
                                                                       const c10::optional<at::Tensor>& normalizer,
                                                                       double gamma,
                                                                       double host_scale,
                                                                       double label_smoothing,
                                                                       int64_t ignore_index,
                                                                       int64_t reduction,
                                                                       bool compute_grad) {
  const c10::cuda::CUDAGuard device_guard(inputs.device());
  FocalLossProblem p = make_problem(LossKind::SoftmaxFocal, inputs, targets, alpha_per_class, weight, normalizer,
                                    /*alpha=*/-1.0, gamma, /*beta=*/0.0, host_scale, label_smoothing, ignore_index,
                                    reduction, compute_grad);
  if (finish_empty(p)) return {p.loss, p.grad_input, p.grad_scale};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.inputs.scalar_type(), "softmax_focal_loss_cuda", [&] {
    const auto args = make_forward_args<at::opmath_type<scalar_t>>(p);
    dispatch_gamma(p.gamma, [&](auto gamma) { launch_for_targets<scalar_t, decltype(gamma)::value>(p, args); });
  });
  return {p.loss, p.grad_input, p.grad_scale};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(focal_loss_ext, CUDA, m) {
  m.impl("softmax_focal_loss", &cuda::softmax_focal_loss_cuda);
}

}  // namespace focal_loss_ext
