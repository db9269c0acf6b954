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

#include "../sigmoid_focal_loss.h"

namespace focal_loss_ext {
namespace cuda {
namespace {

// 256 threads = 8 warps: at 8 resident blocks per SM that is the full 2048 threads of a Hopper
// SM, the occupancy a latency-bound streaming loop wants; also the width of the block
// reductions below.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Resident blocks per SM used to size the persistent grid (2048 threads / kThreads).
constexpr int kBlocksPerSm = 8;
// 16-byte accesses: the widest single load/store instruction (LDG.E.128 / STG.E.128).
constexpr int kAccessBytes = 16;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

int multiprocessor_count(int device) {
  // Read once per device: cudaDeviceGetAttribute does not synchronize, but it is not free.
  static int counts[64] = {};
  if (device < 64 && counts[device] > 0) return counts[device];
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device < 64) counts[device] = count;
  return count;
}

int64_t grid_for(int64_t work_items, int device) {
  const int64_t wanted = (work_items + kThreads - 1) / kThreads;
  const int64_t resident = static_cast<int64_t>(multiprocessor_count(device)) * kBlocksPerSm;
  return std::max<int64_t>(1, std::min(wanted, resident));
}

// Sum over the block in a fixed order (shuffle tree within warps, then warp results in
// order); the result is valid in thread 0.
template <typename T>
__device__ T block_sum(T value) {
  __shared__ T warp_sums[kWarps];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  T total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  }
  __syncthreads();  // warp_sums may be reused by a following call
  return total;
}

template <typename opmath_t>
struct ForwardArgs {
  const opmath_t* alpha;       // optional (classes)
  const opmath_t* weight;      // optional (rows)
  const opmath_t* normalizer;  // optional 0-dim
  opmath_t alpha_pos;
  opmath_t alpha_neg;
  opmath_t gamma;
  opmath_t keep;            // 1 - label_smoothing
  opmath_t half_smoothing;  // label_smoothing / 2
  opmath_t host_factor;
  bool fold_into_grad;
  bool mean_over_count;
  int64_t classes;
  int64_t ignore_index;
  int64_t packs;          // rows * classes / kVec
  int64_t packs_per_row;  // classes / kVec
};

template <typename opmath_t>
__device__ __forceinline__ opmath_t loss_factor(const ForwardArgs<opmath_t>& a) {
  return a.normalizer != nullptr ? a.host_factor / *a.normalizer : a.host_factor;
}

// One thread handles kVec consecutive elements of one row per step (classes % kVec == 0).
template <typename scalar_t, int kVec, GammaKind kGamma, bool kLabels>
__global__ void __launch_bounds__(kThreads) sigmoid_focal_forward_kernel(
    const scalar_t* __restrict__ inputs,
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
  const SigmoidFocal<kGamma> rule;
  const opmath_t factor = loss_factor(a);
  const opmath_t grad_factor = a.fold_into_grad ? factor : opmath_t(1);
  if (loss_out != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *grad_scale = a.fold_into_grad ? opmath_t(1) : factor;

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
        const LossGrad<opmath_t> lg = rule(static_cast<opmath_t>(x.v[j]), target, alpha_pos, alpha_neg, a.gamma);
        const opmath_t loss = lg.loss * w;
        acc += loss;
        loss_pack.v[j] = static_cast<scalar_t>(loss * factor);
        grad_pack.v[j] = static_cast<scalar_t>(lg.grad * (w * grad_factor));
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
  if (a.mean_over_count) count = block_sum(count);
  if (threadIdx.x == 0) {
    partial_sums[blockIdx.x] = acc;
    partial_counts[blockIdx.x] = count;
  }
}

// One block: sums the partials in a fixed order and writes the loss and grad_scale.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) sigmoid_focal_finalize_kernel(
    const at::opmath_type<scalar_t>* __restrict__ partial_sums,
    const int64_t* __restrict__ partial_counts,
    int64_t partials,
    scalar_t* __restrict__ loss,
    at::opmath_type<scalar_t>* __restrict__ grad_scale,
    const ForwardArgs<at::opmath_type<scalar_t>> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t sum = 0;
  int64_t count = 0;
  for (int64_t i = threadIdx.x; i < partials; i += kThreads) {
    sum += partial_sums[i];
    count += partial_counts[i];
  }
  sum = block_sum(sum);
  if (a.mean_over_count) count = block_sum(count);
  if (threadIdx.x != 0) return;
  const opmath_t factor = loss_factor(a);
  opmath_t scale = a.fold_into_grad ? opmath_t(1) : factor;
  if (a.mean_over_count) {
    sum /= static_cast<opmath_t>(count);  // NaN when every row is ignored, as for an empty mean
    scale = count > 0 ? scale / static_cast<opmath_t>(count) : opmath_t(0);
  }
  *loss = static_cast<scalar_t>(sum * factor);
  *grad_scale = scale;
}

bool aligned(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % kAccessBytes == 0;
}

template <typename scalar_t, int kVec, GammaKind kGamma, bool kLabels>
void launch_forward(const SigmoidFocalProblem& p, const ForwardArgs<at::opmath_type<scalar_t>>& args,
                    at::Tensor& partial_sums, at::Tensor& partial_counts, int64_t grid,
                    cudaStream_t stream) {
  using opmath_t = at::opmath_type<scalar_t>;
  const bool reduce = p.reduction != Reduction::None;
  sigmoid_focal_forward_kernel<scalar_t, kVec, kGamma, kLabels><<<grid, kThreads, 0, stream>>>(
      p.inputs.const_data_ptr<scalar_t>(),
      kLabels ? nullptr : p.targets.const_data_ptr<scalar_t>(),
      kLabels ? p.targets.const_data_ptr<int64_t>() : nullptr,
      reduce ? nullptr : p.loss.mutable_data_ptr<scalar_t>(),
      p.compute_grad ? p.grad_input.mutable_data_ptr<scalar_t>() : nullptr,
      reduce ? partial_sums.mutable_data_ptr<opmath_t>() : nullptr,
      reduce ? partial_counts.mutable_data_ptr<int64_t>() : nullptr,
      p.grad_scale.mutable_data_ptr<opmath_t>(),
      args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int kVec, GammaKind kGamma>
void launch_forward_targets(const SigmoidFocalProblem& p, const ForwardArgs<at::opmath_type<scalar_t>>& args,
                            at::Tensor& partial_sums, at::Tensor& partial_counts, int64_t grid,
                            cudaStream_t stream) {
  if (p.labels) {
    launch_forward<scalar_t, kVec, kGamma, true>(p, args, partial_sums, partial_counts, grid, stream);
  } else {
    launch_forward<scalar_t, kVec, kGamma, false>(p, args, partial_sums, partial_counts, grid, stream);
  }
}

template <typename scalar_t, int kVec>
void launch_forward_gamma(const SigmoidFocalProblem& p, const ForwardArgs<at::opmath_type<scalar_t>>& args,
                          at::Tensor& partial_sums, at::Tensor& partial_counts, int64_t grid,
                          cudaStream_t stream) {
  switch (gamma_kind(p.gamma)) {
    case GammaKind::Zero:
      return launch_forward_targets<scalar_t, kVec, GammaKind::Zero>(p, args, partial_sums, partial_counts, grid, stream);
    case GammaKind::One:
      return launch_forward_targets<scalar_t, kVec, GammaKind::One>(p, args, partial_sums, partial_counts, grid, stream);
    case GammaKind::Two:
      return launch_forward_targets<scalar_t, kVec, GammaKind::Two>(p, args, partial_sums, partial_counts, grid, stream);
    case GammaKind::General:
      return launch_forward_targets<scalar_t, kVec, GammaKind::General>(p, args, partial_sums, partial_counts, grid,
                                                                        stream);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sigmoid_focal_loss_cuda(
    const at::Tensor& inputs, const at::Tensor& targets, const c10::optional<at::Tensor>& alpha_per_class,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& normalizer, double alpha,
    double gamma, double scale, double label_smoothing, int64_t ignore_index, int64_t reduction,
    bool compute_grad) {
  const c10::cuda::CUDAGuard device_guard(inputs.device());
  SigmoidFocalProblem p = make_sigmoid_focal_problem(inputs, targets, alpha_per_class, weight, normalizer,
                                                     alpha, gamma, scale, label_smoothing, ignore_index,
                                                     reduction, compute_grad);
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
  const int device = inputs.get_device();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.inputs.scalar_type(), "sigmoid_focal_loss_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    constexpr int kVecMax = kAccessBytes / sizeof(scalar_t);
    const bool vectorize = p.classes % kVecMax == 0 && aligned(p.inputs.const_data_ptr()) &&
                           (p.labels || aligned(p.targets.const_data_ptr())) &&
                           aligned(p.loss.const_data_ptr()) &&
                           (!p.compute_grad || aligned(p.grad_input.const_data_ptr()));
    const int vec = vectorize ? kVecMax : 1;

    ForwardArgs<opmath_t> args;
    args.alpha = p.alpha.defined() ? p.alpha.const_data_ptr<opmath_t>() : nullptr;
    args.weight = p.weight.defined() ? p.weight.const_data_ptr<opmath_t>() : nullptr;
    args.normalizer = p.normalizer.defined() ? p.normalizer.const_data_ptr<opmath_t>() : nullptr;
    args.alpha_pos = static_cast<opmath_t>(p.alpha_pos);
    args.alpha_neg = static_cast<opmath_t>(p.alpha_neg);
    args.gamma = static_cast<opmath_t>(p.gamma);
    args.keep = static_cast<opmath_t>(1 - p.smoothing);
    args.half_smoothing = static_cast<opmath_t>(p.smoothing / 2);
    args.host_factor = static_cast<opmath_t>(p.host_factor);
    args.fold_into_grad = p.fold_into_grad;
    args.mean_over_count = p.mean_over_count;
    args.classes = p.classes;
    args.ignore_index = p.ignore_index;
    args.packs = p.inputs.numel() / vec;
    args.packs_per_row = p.classes / vec;

    const int64_t grid = grid_for(args.packs, device);
    const bool reduce = p.reduction != Reduction::None;
    const auto opts = p.inputs.options();
    at::Tensor partial_sums = reduce ? at::empty({grid}, opts.dtype(p.grad_scale.scalar_type())) : at::Tensor();
    at::Tensor partial_counts = reduce ? at::empty({grid}, opts.dtype(at::kLong)) : at::Tensor();
    if (vectorize) {
      launch_forward_gamma<scalar_t, kVecMax>(p, args, partial_sums, partial_counts, grid, stream);
    } else {
      launch_forward_gamma<scalar_t, 1>(p, args, partial_sums, partial_counts, grid, stream);
    }
    if (reduce) {
      sigmoid_focal_finalize_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
          partial_sums.const_data_ptr<opmath_t>(), partial_counts.const_data_ptr<int64_t>(), grid,
          p.loss.mutable_data_ptr<scalar_t>(), p.grad_scale.mutable_data_ptr<opmath_t>(), args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {p.loss, p.grad_input, p.grad_scale};
}

// grad *= grad_output * grad_scale, both read on the device; every block returns at once
// when the product is exactly 1, so plain loss.backward() costs one launch and no traffic.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads) scale_grad_kernel(
    scalar_t* __restrict__ grad,
    const scalar_t* __restrict__ grad_output,
    const at::opmath_type<scalar_t>* __restrict__ grad_scale,
    int64_t numel) {
  using opmath_t = at::opmath_type<scalar_t>;
  using VecT = Pack<scalar_t, kVec>;
  const opmath_t factor = static_cast<opmath_t>(*grad_output) * *grad_scale;
  if (factor == opmath_t(1)) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = numel / kVec;
  for (int64_t i = first; i < packs; i += stride) {
    VecT v = *reinterpret_cast<VecT*>(grad + i * kVec);
#pragma unroll
    for (int j = 0; j < kVec; ++j) v.v[j] = static_cast<scalar_t>(static_cast<opmath_t>(v.v[j]) * factor);
    *reinterpret_cast<VecT*>(grad + i * kVec) = v;
  }
  for (int64_t i = packs * kVec + first; i < numel; i += stride) {
    grad[i] = static_cast<scalar_t>(static_cast<opmath_t>(grad[i]) * factor);
  }
}

void scale_grad_cuda_(at::Tensor grad_input, const at::Tensor& grad_output, const at::Tensor& grad_scale) {
  const c10::cuda::CUDAGuard device_guard(grad_input.device());
  if (!check_scale_grad_args(grad_input, grad_output, grad_scale)) {
    scale_grad_elementwise_(grad_input, grad_output, grad_scale);
    return;
  }
  if (grad_input.numel() == 0) return;
  const at::Tensor go = grad_output.to(grad_input.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_input.scalar_type(), "scale_grad_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    constexpr int kVecMax = kAccessBytes / sizeof(scalar_t);
    const int64_t grid = grid_for(grad_input.numel() / kVecMax + 1, grad_input.get_device());
    if (aligned(grad_input.const_data_ptr())) {
      scale_grad_kernel<scalar_t, kVecMax><<<grid, kThreads, 0, stream>>>(
          grad_input.mutable_data_ptr<scalar_t>(), go.const_data_ptr<scalar_t>(),
          grad_scale.const_data_ptr<opmath_t>(), grad_input.numel());
    } else {
      scale_grad_kernel<scalar_t, 1><<<grid, kThreads, 0, stream>>>(
          grad_input.mutable_data_ptr<scalar_t>(), go.const_data_ptr<scalar_t>(),
          grad_scale.const_data_ptr<opmath_t>(), grad_input.numel());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(focal_loss_ext, CUDA, m) {
  m.impl("sigmoid_focal_loss", &cuda::sigmoid_focal_loss_cuda);
  m.impl("scale_grad_", &cuda::scale_grad_cuda_);
}

}  // namespace focal_loss_ext
