// CUDA backend of the softmax focal loss. One warp per row (grid-stride over rows) and its 32
// lanes stride over the classes, so a row of any length is handled 32 classes at a time. Per
// row: the max, the sum of exponentials, then loss and gradient, with the math from
// focal_loss_math.h. Row sums are butterfly reductions (identical bits in every lane, every
// run); row losses are summed per block, and the block partials by the shared finalize kernel
// in a fixed order: no float atomics, no host synchronization.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <limits>

#include "../problem.h"
#include "cuda_helpers.cuh"

namespace focal_loss_ext {
namespace cuda {
namespace {

constexpr int kWarpSize = 32;

template <typename opmath_t>
struct SoftmaxArgs {
  const opmath_t* alpha;       // optional (classes)
  const opmath_t* weight;      // optional (rows)
  const opmath_t* normalizer;  // optional 0-dim
  opmath_t gamma;
  opmath_t keep;    // 1 - label_smoothing
  opmath_t spread;  // label_smoothing / classes
  opmath_t host_scale;
  bool prescale_grad;
  bool divide_by_count;
  int64_t rows;
  int64_t classes;
  int64_t ignore_index;
};

// kHard: integer labels without label smoothing, where only the target class has a term.
template <typename scalar_t, GammaKind kGamma, bool kLabels, bool kHard>
__global__ void __launch_bounds__(kThreads)
    softmax_focal_forward_kernel(const scalar_t* __restrict__ inputs,
                                 const scalar_t* __restrict__ targets,  // probability form
                                 const int64_t* __restrict__ labels,    // label form
                                 scalar_t* __restrict__ loss_out,       // reduction "none" only: (rows)
                                 scalar_t* __restrict__ grad_out,       // nullptr: no gradient
                                 at::opmath_type<scalar_t>* __restrict__ partial_sums,
                                 int64_t* __restrict__ partial_counts,
                                 at::opmath_type<scalar_t>* __restrict__ grad_scale,
                                 const SoftmaxArgs<at::opmath_type<scalar_t>> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t loss_scale = loss_scale_of(a);
  const opmath_t grad_prescale = a.prescale_grad ? loss_scale : opmath_t(1);
  if (loss_out != nullptr && blockIdx.x == 0 && threadIdx.x == 0)
    *grad_scale = a.prescale_grad ? opmath_t(1) : loss_scale;

  const int lane = threadIdx.x % kWarpSize;
  const int64_t C = a.classes;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * kWarps;
  opmath_t acc = 0;   // lane 0: sum of this warp's row losses
  int64_t count = 0;  // lane 0: this warp's non-ignored rows (label form)
  // The row is the same for the whole warp, so every branch on it below is warp-uniform and
  // all 32 lanes reach every shuffle.
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; row < a.rows;
       row += warps_in_grid) {
    const scalar_t* x = inputs + row * C;
    scalar_t* g = grad_out != nullptr ? grad_out + row * C : nullptr;
    int64_t label = -1;
    if constexpr (kLabels) {
      label = labels[row];
      if (label == a.ignore_index) {
        if (loss_out != nullptr && lane == 0) loss_out[row] = scalar_t(0);
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

    const opmath_t w_row = a.weight != nullptr ? a.weight[row] : opmath_t(1);
    const opmath_t row_grad_prescale = w_row * grad_prescale;
    opmath_t row_loss;
    if constexpr (kHard) {
      const opmath_t log_p_y = static_cast<opmath_t>(x[label]) - lse;
      const LossGrad<opmath_t> term =
          softmax_focal_term<kGamma>(log_p_y, a.alpha != nullptr ? a.alpha[label] : opmath_t(1), a.gamma);
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
          q = static_cast<opmath_t>(targets[row * C + k]);
        }
        q = q * a.keep + a.spread;
        const opmath_t w = a.alpha != nullptr ? a.alpha[k] * q : q;
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
      if (loss_out != nullptr) {
        loss_out[row] = static_cast<scalar_t>(row_loss * w_row * loss_scale);
      } else {
        acc += row_loss * w_row;
      }
    }
  }
  if (partial_sums == nullptr) return;  // reduction "none"
  acc = block_sum(acc);
  if (a.divide_by_count) count = block_sum(count);
  if (threadIdx.x == 0) {
    partial_sums[blockIdx.x] = acc;
    partial_counts[blockIdx.x] = count;
  }
}

template <typename scalar_t, GammaKind kGamma, bool kLabels, bool kHard>
void launch(const FocalLossProblem& p,
            const SoftmaxArgs<at::opmath_type<scalar_t>>& args,
            int device,
            cudaStream_t stream) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto kernel = softmax_focal_forward_kernel<scalar_t, kGamma, kLabels, kHard>;
  static const int blocks_per_sm = resident_blocks_per_sm(kernel);
  const int64_t grid = grid_for(p.rows * kWarpSize, device, blocks_per_sm);  // one warp per row
  const bool reduce = p.reduction != Reduction::None;
  const auto opts = p.inputs.options();
  at::Tensor partial_sums = reduce ? at::empty({grid}, opts.dtype(p.grad_scale.scalar_type())) : at::Tensor();
  at::Tensor partial_counts = reduce ? at::empty({grid}, opts.dtype(at::kLong)) : at::Tensor();
  FOCAL_LOSS_EXT_LAUNCH(kernel, grid, kThreads, 0, stream)(
      p.inputs.const_data_ptr<scalar_t>(), kLabels ? nullptr : p.targets.const_data_ptr<scalar_t>(),
      kLabels ? p.targets.const_data_ptr<int64_t>() : nullptr, reduce ? nullptr : p.loss.mutable_data_ptr<scalar_t>(),
      p.compute_grad ? p.grad_input.mutable_data_ptr<scalar_t>() : nullptr,
      reduce ? partial_sums.mutable_data_ptr<opmath_t>() : nullptr,
      reduce ? partial_counts.mutable_data_ptr<int64_t>() : nullptr, p.grad_scale.mutable_data_ptr<opmath_t>(), args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (reduce) {
    FOCAL_LOSS_EXT_LAUNCH(finalize_kernel<scalar_t>, 1, kThreads, 0, stream)(
        partial_sums.const_data_ptr<opmath_t>(), partial_counts.const_data_ptr<int64_t>(), grid,
        p.loss.mutable_data_ptr<scalar_t>(), p.grad_scale.mutable_data_ptr<opmath_t>(), args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, GammaKind kGamma>
void launch_for_targets(const FocalLossProblem& p,
                        const SoftmaxArgs<at::opmath_type<scalar_t>>& args,
                        int device,
                        cudaStream_t stream) {
  if (!p.labels) return launch<scalar_t, kGamma, false, false>(p, args, device, stream);
  if (p.smoothing == 0) return launch<scalar_t, kGamma, true, true>(p, args, device, stream);
  return launch<scalar_t, kGamma, true, false>(p, args, device, stream);
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
  if (p.rows == 0) {
    // Nothing to launch a pass over; fill_ stays on the device (no host round trip).
    if (p.reduction != Reduction::None) {
      const bool nan = p.reduction == Reduction::Mean;
      p.loss.fill_(nan ? std::numeric_limits<double>::quiet_NaN() : 0.0);
    }
    p.grad_scale.fill_(1);
    return {p.loss, p.grad_input, p.grad_scale};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int device = inputs.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.inputs.scalar_type(), "softmax_focal_loss_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    SoftmaxArgs<opmath_t> args;
    args.alpha = p.alpha.defined() ? p.alpha.const_data_ptr<opmath_t>() : nullptr;
    args.weight = p.weight.defined() ? p.weight.const_data_ptr<opmath_t>() : nullptr;
    args.normalizer = p.normalizer.defined() ? p.normalizer.const_data_ptr<opmath_t>() : nullptr;
    args.gamma = static_cast<opmath_t>(p.gamma);
    args.keep = static_cast<opmath_t>(1 - p.smoothing);
    args.spread = static_cast<opmath_t>(p.smoothing / static_cast<double>(p.classes));
    args.host_scale = static_cast<opmath_t>(p.host_scale);
    args.prescale_grad = p.prescale_grad;
    args.divide_by_count = p.divide_by_count;
    args.rows = p.rows;
    args.classes = p.classes;
    args.ignore_index = p.ignore_index;
    switch (gamma_kind(p.gamma)) {
      case GammaKind::Zero:
        return launch_for_targets<scalar_t, GammaKind::Zero>(p, args, device, stream);
      case GammaKind::One:
        return launch_for_targets<scalar_t, GammaKind::One>(p, args, device, stream);
      case GammaKind::Two:
        return launch_for_targets<scalar_t, GammaKind::Two>(p, args, device, stream);
      case GammaKind::General:
        break;
    }
    launch_for_targets<scalar_t, GammaKind::General>(p, args, device, stream);
  });
  return {p.loss, p.grad_input, p.grad_scale};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(focal_loss_ext, CUDA, m) {
  m.impl("softmax_focal_loss", &cuda::softmax_focal_loss_cuda);
}

}  // namespace focal_loss_ext
