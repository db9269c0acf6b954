// CUDA backend: one grid-stride pass over the logits computes every element's loss and
// gradient; the loss is reduced per block and the block partials are summed in a fixed order
// by a one-block kernel, so results are bit-identical run to run (no float atomics) and no
// step waits for the host (the op can be captured in a CUDA graph).
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

template <typename opmath_t>
struct ForwardArgs {
  const opmath_t* alpha;       // optional (classes)
  const opmath_t* weight;      // optional (rows)
  const opmath_t* normalizer;  // optional 0-dim
  opmath_t alpha_pos;
  opmath_t alpha_neg;
  opmath_t gamma;
  opmath_t beta;            // FL* only
  opmath_t keep;            // 1 - label_smoothing
  opmath_t half_smoothing;  // label_smoothing / 2
  opmath_t host_scale;
  bool prescale_grad;
  bool divide_by_count;
  int64_t classes;
  int64_t ignore_index;
  int64_t packs;          // rows * classes / kVec
  int64_t packs_per_row;  // classes / kVec
};

// One thread handles kVec consecutive elements of one row per step (classes % kVec == 0).
template <typename scalar_t, int kVec, typename Rule, bool kLabels>
__global__ void __launch_bounds__(kThreads)
    sigmoid_focal_forward_kernel(const scalar_t* __restrict__ inputs,
                                 const scalar_t* __restrict__ targets,  // float form
                                 const int64_t* __restrict__ labels,    // label form
                                 scalar_t* __restrict__ loss_out,       // reduction "none" only
                                 scalar_t* __restrict__ grad_out,       // nullptr: no gradient
                                 at::opmath_type<scalar_t>* __restrict__ partial_sums,
                                 int64_t* __restrict__ partial_counts,
                                 at::opmath_type<scalar_t>* __restrict__ grad_scale,
                                 const ForwardArgs<at::opmath_type<scalar_t>> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  using VecT = Pack<scalar_t, kVec>;
  const Rule rule;
  const opmath_t loss_scale = loss_scale_of(a);
  const opmath_t grad_prescale = a.prescale_grad ? loss_scale : opmath_t(1);
  if (loss_out != nullptr && blockIdx.x == 0 && threadIdx.x == 0)
    *grad_scale = a.prescale_grad ? opmath_t(1) : loss_scale;

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
      label = labels[row];
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
      const VecT x = *reinterpret_cast<const VecT*>(inputs + offset);
      VecT t;
      if constexpr (!kLabels) t = *reinterpret_cast<const VecT*>(targets + offset);
      const opmath_t w = a.weight != nullptr ? a.weight[row] : opmath_t(1);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        opmath_t target;
        if constexpr (kLabels) {
          target = label == k0 + j ? opmath_t(1) : opmath_t(0);
        } else {
          target = static_cast<opmath_t>(t.v[j]);
        }
        target = target * a.keep + a.half_smoothing;
        opmath_t alpha_pos = a.alpha_pos;
        opmath_t alpha_neg = a.alpha_neg;
        if (a.alpha != nullptr) {
          alpha_pos = a.alpha[k0 + j];
          alpha_neg = opmath_t(1) - alpha_pos;
        }
        const LossGrad<opmath_t> lg =
            rule(static_cast<opmath_t>(x.v[j]), target, alpha_pos, alpha_neg, a.gamma, a.beta);
        const opmath_t loss = lg.loss * w;
        acc += loss;
        loss_pack.v[j] = static_cast<scalar_t>(loss * loss_scale);
        grad_pack.v[j] = static_cast<scalar_t>(lg.grad * (w * grad_prescale));
      }
    }
    if (loss_out != nullptr) *reinterpret_cast<VecT*>(loss_out + offset) = loss_pack;
    if (grad_out != nullptr) *reinterpret_cast<VecT*>(grad_out + offset) = grad_pack;

    col_pack += stride_cols;
    row += stride_rows;
    if (col_pack >= a.packs_per_row) {
      col_pack -= a.packs_per_row;
      ++row;
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

// Launches the forward pass; returns the grid it used (the number of partials written).
template <typename scalar_t, int kVec, typename Rule, bool kLabels>
int64_t launch_forward(const FocalLossProblem& p,
                       const ForwardArgs<at::opmath_type<scalar_t>>& args,
                       at::Tensor& partial_sums,
                       at::Tensor& partial_counts,
                       int device,
                       cudaStream_t stream) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto kernel = sigmoid_focal_forward_kernel<scalar_t, kVec, Rule, kLabels>;
  static const int blocks_per_sm = resident_blocks_per_sm(kernel);
  const int64_t grid = grid_for(args.packs, device, blocks_per_sm);
  TORCH_INTERNAL_ASSERT(!partial_sums.defined() || grid <= partial_sums.numel());
  const bool reduce = p.reduction != Reduction::None;
  FOCAL_LOSS_EXT_LAUNCH(kernel, grid, kThreads, 0, stream)(
      p.inputs.const_data_ptr<scalar_t>(), kLabels ? nullptr : p.targets.const_data_ptr<scalar_t>(),
      kLabels ? p.targets.const_data_ptr<int64_t>() : nullptr, reduce ? nullptr : p.loss.mutable_data_ptr<scalar_t>(),
      p.compute_grad ? p.grad_input.mutable_data_ptr<scalar_t>() : nullptr,
      reduce ? partial_sums.mutable_data_ptr<opmath_t>() : nullptr,
      reduce ? partial_counts.mutable_data_ptr<int64_t>() : nullptr, p.grad_scale.mutable_data_ptr<opmath_t>(), args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grid;
}

template <typename scalar_t, int kVec, typename Rule>
int64_t launch_forward_targets(const FocalLossProblem& p,
                               const ForwardArgs<at::opmath_type<scalar_t>>& args,
                               at::Tensor& partial_sums,
                               at::Tensor& partial_counts,
                               int device,
                               cudaStream_t stream) {
  return p.labels ? launch_forward<scalar_t, kVec, Rule, true>(p, args, partial_sums, partial_counts, device, stream)
                  : launch_forward<scalar_t, kVec, Rule, false>(p, args, partial_sums, partial_counts, device, stream);
}

template <typename scalar_t, int kVec>
int64_t launch_forward_gamma(const FocalLossProblem& p,
                             const ForwardArgs<at::opmath_type<scalar_t>>& args,
                             at::Tensor& partial_sums,
                             at::Tensor& partial_counts,
                             int device,
                             cudaStream_t stream) {
  if (p.kind == LossKind::SigmoidFocalStar) {
    return launch_forward_targets<scalar_t, kVec, SigmoidFocalStar>(p, args, partial_sums, partial_counts, device,
                                                                    stream);
  }
  switch (gamma_kind(p.gamma)) {
    case GammaKind::Zero:
      return launch_forward_targets<scalar_t, kVec, SigmoidFocal<GammaKind::Zero>>(p, args, partial_sums,
                                                                                   partial_counts, device, stream);
    case GammaKind::One:
      return launch_forward_targets<scalar_t, kVec, SigmoidFocal<GammaKind::One>>(p, args, partial_sums, partial_counts,
                                                                                  device, stream);
    case GammaKind::Two:
      return launch_forward_targets<scalar_t, kVec, SigmoidFocal<GammaKind::Two>>(p, args, partial_sums, partial_counts,
                                                                                  device, stream);
    case GammaKind::General:
      break;
  }
  return launch_forward_targets<scalar_t, kVec, SigmoidFocal<GammaKind::General>>(p, args, partial_sums, partial_counts,
                                                                                  device, stream);
}

// FL and FL*: the same pass, with the rule picked from p.kind.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_sigmoid_losses(FocalLossProblem& p) {
  if (p.inputs.numel() == 0) {
    // Nothing to launch a pass over; fill_ stays on the device (no host round trip).
    if (p.reduction != Reduction::None) {
      const bool nan = p.reduction == Reduction::Mean;
      p.loss.fill_(nan ? std::numeric_limits<double>::quiet_NaN() : 0.0);
    }
    p.grad_scale.fill_(1);
    return {p.loss, p.grad_input, p.grad_scale};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int device = p.inputs.get_device();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.inputs.scalar_type(), "sigmoid_focal_loss_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    constexpr int kVecMax = kAccessBytes / sizeof(scalar_t);
    const bool vectorize = p.classes % kVecMax == 0 && aligned(p.inputs.const_data_ptr()) &&
                           (p.labels || aligned(p.targets.const_data_ptr())) && aligned(p.loss.const_data_ptr()) &&
                           (!p.compute_grad || aligned(p.grad_input.const_data_ptr()));
    const int vec = vectorize ? kVecMax : 1;

    ForwardArgs<opmath_t> args;
    args.alpha = p.alpha.defined() ? p.alpha.const_data_ptr<opmath_t>() : nullptr;
    args.weight = p.weight.defined() ? p.weight.const_data_ptr<opmath_t>() : nullptr;
    args.normalizer = p.normalizer.defined() ? p.normalizer.const_data_ptr<opmath_t>() : nullptr;
    args.alpha_pos = static_cast<opmath_t>(p.alpha_pos);
    args.alpha_neg = static_cast<opmath_t>(p.alpha_neg);
    args.gamma = static_cast<opmath_t>(p.gamma);
    args.beta = static_cast<opmath_t>(p.beta);
    args.keep = static_cast<opmath_t>(1 - p.smoothing);
    args.half_smoothing = static_cast<opmath_t>(p.smoothing / 2);
    args.host_scale = static_cast<opmath_t>(p.host_scale);
    args.prescale_grad = p.prescale_grad;
    args.divide_by_count = p.divide_by_count;
    args.classes = p.classes;
    args.ignore_index = p.ignore_index;
    args.packs = p.inputs.numel() / vec;
    args.packs_per_row = p.classes / vec;

    const bool reduce = p.reduction != Reduction::None;
    // Room for one partial per block of the largest grid any variant launches: a full SM
    // holds at most 2048 threads.
    const int64_t max_grid = static_cast<int64_t>(multiprocessor_count(device)) * (2048 / kThreads);
    const auto opts = p.inputs.options();
    at::Tensor partial_sums = reduce ? at::empty({max_grid}, opts.dtype(p.grad_scale.scalar_type())) : at::Tensor();
    at::Tensor partial_counts = reduce ? at::empty({max_grid}, opts.dtype(at::kLong)) : at::Tensor();
    const int64_t grid =
        vectorize ? launch_forward_gamma<scalar_t, kVecMax>(p, args, partial_sums, partial_counts, device, stream)
                  : launch_forward_gamma<scalar_t, 1>(p, args, partial_sums, partial_counts, device, stream);
    if (reduce) {
      FOCAL_LOSS_EXT_LAUNCH(finalize_kernel<scalar_t>, 1, kThreads, 0, stream)(
          partial_sums.const_data_ptr<opmath_t>(), partial_counts.const_data_ptr<int64_t>(), grid,
          p.loss.mutable_data_ptr<scalar_t>(), p.grad_scale.mutable_data_ptr<opmath_t>(), args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
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
