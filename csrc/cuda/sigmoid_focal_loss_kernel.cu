// CUDA backend of the sigmoid losses (FL and FL*): one grid-stride pass over the logits computes
// every element's loss and gradient; the reduction and the launch are those of forward.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../problem.h"
#include "cuda_helpers.cuh"
#include "forward.cuh"

namespace focal_loss_ext {
namespace cuda {
namespace {

// One thread handles kVec consecutive elements of one row per step (classes % kVec == 0).
template <typename scalar_t, int kVec, typename Rule, bool kLabels>
__global__ void __launch_bounds__(kThreads)
    sigmoid_focal_forward_kernel(const ForwardTensors<scalar_t> io, const ForwardArgs<at::opmath_type<scalar_t>> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  using VecT = Pack<scalar_t, kVec>;
  const Rule rule;
  const auto scales = start_forward(io, a);

  // Grid-stride over packs, carrying (row, column) forward instead of dividing every step.
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t stride_rows = stride / a.packs_per_row;
  const int64_t stride_cols = stride - stride_rows * a.packs_per_row;
  int64_t pack = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t row = pack / a.packs_per_row;
  int64_t col_pack = pack - row * a.packs_per_row;

  opmath_t acc = 0;
  int64_t count = 0;
  for (; pack < a.packs; pack += stride) {
    const int64_t offset = pack * kVec;
    const int64_t k0 = col_pack * kVec;
    int64_t label = -1;
    bool skip = false;
    if constexpr (kLabels) {
      label = io.labels[row];
      skip = label == a.ignore_index;
      CUDA_KERNEL_ASSERT(skip || (label >= 0 && label <= a.classes));
      count += skip ? 0 : kVec;
    }
    VecT loss_pack;
    VecT grad_pack;
    if (skip) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) loss_pack.v[j] = grad_pack.v[j] = scalar_t(0);
    } else {
      const VecT x = *reinterpret_cast<const VecT*>(io.inputs + offset);
      VecT t;
      if constexpr (!kLabels) t = *reinterpret_cast<const VecT*>(io.targets + offset);
      const opmath_t w = io.weight != nullptr ? io.weight[row] : opmath_t(1);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        opmath_t target;
        if constexpr (kLabels) {
          target = label == k0 + j ? opmath_t(1) : opmath_t(0);
        } else {
          target = static_cast<opmath_t>(t.v[j]);
        }
        target = target * a.keep + a.spread;
        opmath_t alpha_pos = a.alpha_pos;
        opmath_t alpha_neg = a.alpha_neg;
        if (io.alpha != nullptr) {
          alpha_pos = io.alpha[k0 + j];
          alpha_neg = opmath_t(1) - alpha_pos;
        }
        const LossGrad<opmath_t> lg =
            rule(static_cast<opmath_t>(x.v[j]), target, alpha_pos, alpha_neg, a.gamma, a.beta);
        const opmath_t loss = lg.loss * w;
        acc += loss;
        loss_pack.v[j] = static_cast<scalar_t>(loss * scales.loss_scale);
        grad_pack.v[j] = static_cast<scalar_t>(lg.grad * (w * scales.grad_prescale));
      }
    }
    if (io.loss_out != nullptr) *reinterpret_cast<VecT*>(io.loss_out + offset) = loss_pack;
    if (io.grad_out != nullptr) *reinterpret_cast<VecT*>(io.grad_out + offset) = grad_pack;

    col_pack += stride_cols;
    row += stride_rows;
    if (col_pack >= a.packs_per_row) {
      col_pack -= a.packs_per_row;
      ++row;
    }
  }
  finish_forward(io, a, acc, count);
}

template <typename scalar_t, int kVec, typename Rule>
void launch_for_targets(FocalLossProblem& p, const ForwardArgs<at::opmath_type<scalar_t>>& args) {
  if (p.labels) {
    launch_forward<sigmoid_focal_forward_kernel<scalar_t, kVec, Rule, true>, scalar_t>(p, args.packs, args);
  } else {
    launch_forward<sigmoid_focal_forward_kernel<scalar_t, kVec, Rule, false>, scalar_t>(p, args.packs, args);
  }
}

// FL and FL*: the same pass, with the per-element rule picked from p.kind and p.gamma.
template <typename scalar_t, int kVec>
void launch_for_rule(FocalLossProblem& p, const ForwardArgs<at::opmath_type<scalar_t>>& args) {
  if (p.kind == LossKind::SigmoidFocalStar) return launch_for_targets<scalar_t, kVec, SigmoidFocalStar>(p, args);
  dispatch_gamma(
      p.gamma, [&](auto gamma) { launch_for_targets<scalar_t, kVec, SigmoidFocal<decltype(gamma)::value>>(p, args); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_sigmoid_losses(FocalLossProblem& p) {
  if (finish_empty(p)) return {p.loss, p.grad_input, p.grad_scale};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.inputs.scalar_type(), "sigmoid_focal_loss_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    constexpr int kVecMax = kAccessBytes / sizeof(scalar_t);
    const bool vectorize = p.classes % kVecMax == 0 && aligned(p.inputs.const_data_ptr()) &&
                           (p.labels || aligned(p.targets.const_data_ptr())) && aligned(p.loss.const_data_ptr()) &&
                           (!p.compute_grad || aligned(p.grad_input.const_data_ptr()));
    ForwardArgs<opmath_t> args = make_forward_args<opmath_t>(p);
    if (vectorize) {
      args.packs = p.inputs.numel() / kVecMax;
      args.packs_per_row = p.classes / kVecMax;
      launch_for_rule<scalar_t, kVecMax>(p, args);
    } else {
      launch_for_rule<scalar_t, 1>(p, args);
    }
  });
  return {p.loss, p.grad_input, p.grad_scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sigmoid_focal_loss_cuda(const at::Tensor& inputs,
                                                                       const at::Tensor& targets,
                                                                       const c10::optional<at::Tensor>& alpha_per_class,
                                                                       const c10::optional<at::Tensor>& weight,
                                                                       const c10::optional<at::Tensor>& normalizer,
                                                                       double alpha,
                                                                       double gamma,
                                                                       double host_scale,
                                                                       double label_smoothing,
                                                                       int64_t ignore_index,
                                                                       int64_t reduction,
                                                                       bool compute_grad) {
  const c10::cuda::CUDAGuard device_guard(inputs.device());
  FocalLossProblem p =
      make_problem(LossKind::SigmoidFocal, inputs, targets, alpha_per_class, weight, normalizer, alpha, gamma,
                   /*beta=*/0.0, host_scale, label_smoothing, ignore_index, reduction, compute_grad);
  return run_sigmoid_losses(p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sigmoid_focal_loss_star_cuda(
    const at::Tensor& inputs,
    const at::Tensor& targets,
    const c10::optional<at::Tensor>& alpha_per_class,
    const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& normalizer,
    double alpha,
    double gamma,
    double beta,
    double host_scale,
    double label_smoothing,
    int64_t ignore_index,
    int64_t reduction,
    bool compute_grad) {
  const c10::cuda::CUDAGuard device_guard(inputs.device());
  FocalLossProblem p =
      make_problem(LossKind::SigmoidFocalStar, inputs, targets, alpha_per_class, weight, normalizer, alpha, gamma, beta,
                   host_scale, label_smoothing, ignore_index, reduction, compute_grad);
  return run_sigmoid_losses(p);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(focal_loss_ext, CUDA, m) {
  m.impl("sigmoid_focal_loss", &cuda::sigmoid_focal_loss_cuda);
  m.impl("sigmoid_focal_loss_star", &cuda::sigmoid_focal_loss_star_cuda);
}

}  // namespace focal_loss_ext
