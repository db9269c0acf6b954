// What every forward kernel of the family shares: its arguments, its first and last steps, the
// one-block finalize kernel, and the host code that launches them. A kernel file only writes
// its loop over the elements (or rows) of a tile and picks the template arguments.
//
// The reduction: the problem is cut into fixed tiles of elements (sigmoid losses) or rows
// (softmax), counted from its first element, whatever the grid, the SM count or where the
// tensor sits in its storage. A block sums each tile it takes in a fixed order (every thread
// its own elements in index order, then block_sum's fixed tree) into that tile's partial, and
// finalize_kernel sums the partials in tile order and applies loss_scale. So the loss and the
// gradient are the same bits for the same values under any launch and any alignment; no float
// atomics, and no step waits for the host, so the operators can be captured in a CUDA graph.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

#include <limits>
#include <type_traits>

#include "../problem.h"
#include "cuda_helpers.cuh"

namespace focal_loss_ext {
namespace cuda {
namespace {

// The problem's tensors as the kernels read and write them.
template <typename scalar_t>
struct ForwardTensors {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* inputs;      // (rows, classes)
  const scalar_t* targets;     // float form: (rows, classes); label form: nullptr
  const int64_t* labels;       // label form: (rows); float form: nullptr
  const opmath_t* alpha;       // optional (classes)
  const opmath_t* weight;      // optional (rows)
  const opmath_t* normalizer;  // optional 0-dim
  // The loss in p.loss's dtype: scalar_t, or opmath_t under autocast (ForwardArgs::loss_in_opmath).
  void* loss_out;           // reduction "none": the loss; else nullptr
  void* loss_reduced;       // "sum" / "mean": the 0-dim loss, written by finalize_kernel
  scalar_t* grad_out;       // nullptr: no gradient
  opmath_t* partial_sums;   // reduced: one per tile; else nullptr
  int64_t* partial_counts;  // reduced: one per tile
  opmath_t* grad_scale;     // 0-dim
};

// The problem's scalars in opmath; the scaling words are those of problem.h.
template <typename opmath_t>
struct ForwardArgs {
  opmath_t alpha_pos;  // sigmoid losses
  opmath_t alpha_neg;  // sigmoid losses
  opmath_t gamma;
  opmath_t beta;    // FL* only
  opmath_t keep;    // 1 - label_smoothing
  opmath_t spread;  // label_smoothing's share per outcome: / 2 (sigmoid), / classes (softmax)
  opmath_t host_scale;
  bool prescale_grad;
  bool divide_by_count;
  bool loss_in_opmath;  // p.loss is opmath_t (autocast), not the inputs' dtype
  int64_t rows;
  int64_t classes;
  int64_t ignore_index;
  int64_t tiles;  // fixed tiles of the problem (kernel files define their size)
};

template <typename opmath_t>
ForwardArgs<opmath_t> make_forward_args(const FocalLossProblem& p) {
  const bool per_row = p.kind == LossKind::SoftmaxFocal;
  ForwardArgs<opmath_t> a;
  a.alpha_pos = static_cast<opmath_t>(p.alpha_pos);
  a.alpha_neg = static_cast<opmath_t>(p.alpha_neg);
  a.gamma = static_cast<opmath_t>(p.gamma);
  a.beta = static_cast<opmath_t>(p.beta);
  a.keep = static_cast<opmath_t>(1 - p.smoothing);
  a.spread = static_cast<opmath_t>(p.smoothing / (per_row ? static_cast<double>(p.classes) : 2.0));
  a.host_scale = static_cast<opmath_t>(p.host_scale);
  a.prescale_grad = p.prescale_grad;
  a.divide_by_count = p.divide_by_count;
  a.loss_in_opmath = p.loss.scalar_type() != p.inputs.scalar_type();
  TORCH_INTERNAL_ASSERT(!a.loss_in_opmath || p.loss.scalar_type() == p.grad_scale.scalar_type(),
                        "the loss must be in the inputs' dtype or in opmath, got ", p.loss.scalar_type());
  a.rows = p.rows;
  a.classes = p.classes;
  a.ignore_index = p.ignore_index;
  a.tiles = 0;
  return a;
}

// loss_scale without the count, and the gradient's share of it (problem.h).
template <typename opmath_t>
struct Scales {
  opmath_t loss_scale;
  opmath_t grad_prescale;
};

template <typename opmath_t>
__device__ __forceinline__ opmath_t loss_scale_without_count(const opmath_t* normalizer,
                                                             const ForwardArgs<opmath_t>& a) {
  return normalizer != nullptr ? a.host_scale / *normalizer : a.host_scale;
}

// A forward kernel's first step. With reduction "none" there is no finalize kernel, so block 0
// writes grad_scale here.
template <typename scalar_t>
__device__ __forceinline__ Scales<at::opmath_type<scalar_t>> start_forward(
    const ForwardTensors<scalar_t>& io, const ForwardArgs<at::opmath_type<scalar_t>>& a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t loss_scale = loss_scale_without_count(io.normalizer, a);
  if (io.loss_out != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
    *io.grad_scale = a.prescale_grad ? opmath_t(1) : loss_scale;
  }
  return {loss_scale, a.prescale_grad ? loss_scale : opmath_t(1)};
}

// Writes loss value i in the loss tensor's dtype (the inputs' dtype, or opmath under autocast).
template <typename scalar_t>
__device__ __forceinline__ void store_loss(void* loss,
                                           int64_t i,
                                           at::opmath_type<scalar_t> value,
                                           const ForwardArgs<at::opmath_type<scalar_t>>& a) {
  if (a.loss_in_opmath) {
    static_cast<at::opmath_type<scalar_t>*>(loss)[i] = value;
  } else {
    static_cast<scalar_t*>(loss)[i] = static_cast<scalar_t>(value);
  }
}

// The end of a tile, reached by every thread of the block: the tile's loss sum (and count) into
// its own partial. block_sum's order depends on threadIdx only, and each thread's value on the
// elements it was given by index, so the partial is the same for any grid and block order.
template <typename scalar_t>
__device__ __forceinline__ void finish_tile(const ForwardTensors<scalar_t>& io,
                                            const ForwardArgs<at::opmath_type<scalar_t>>& a,
                                            int64_t tile,
                                            at::opmath_type<scalar_t> loss_sum,
                                            int64_t count) {
  if (io.partial_sums == nullptr) return;  // reduction "none"
  loss_sum = block_sum(loss_sum);
  if (a.divide_by_count) count = block_sum(count);
  if (threadIdx.x == 0) {
    io.partial_sums[tile] = loss_sum;
    io.partial_counts[tile] = count;
  }
}

// One block: sums the tiles' partials in a fixed order (thread t the tiles t, t + kThreads, ...
// in turn, then block_sum) and writes the loss and grad_scale.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const ForwardTensors<scalar_t> io, const ForwardArgs<at::opmath_type<scalar_t>> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t sum = 0;
  int64_t count = 0;
  for (int64_t i = threadIdx.x; i < a.tiles; i += kThreads) {
    sum += io.partial_sums[i];
    count += io.partial_counts[i];
  }
  sum = block_sum(sum);
  if (a.divide_by_count) count = block_sum(count);
  if (threadIdx.x != 0) return;
  const opmath_t loss_scale = loss_scale_without_count(io.normalizer, a);
  opmath_t scale = a.prescale_grad ? opmath_t(1) : loss_scale;
  if (a.divide_by_count) {
    sum /= static_cast<opmath_t>(count);  // NaN when every row is ignored, as for an empty mean
    scale = count > 0 ? scale / static_cast<opmath_t>(count) : opmath_t(0);
  }
  store_loss<scalar_t>(io.loss_reduced, 0, sum * loss_scale, a);
  *io.grad_scale = scale;
}

// Calls f(std::integral_constant<GammaKind, kind>{}) for the problem's gamma, so that a kernel
// is instantiated once per closed form of (1 - p)^gamma.
template <typename F>
void dispatch_gamma(double gamma, F&& f) {
  switch (gamma_kind(gamma)) {
    case GammaKind::Zero:
      return f(std::integral_constant<GammaKind, GammaKind::Zero>{});
    case GammaKind::One:
      return f(std::integral_constant<GammaKind, GammaKind::One>{});
    case GammaKind::Two:
      return f(std::integral_constant<GammaKind, GammaKind::Two>{});
    case GammaKind::General:
      break;
  }
  f(std::integral_constant<GammaKind, GammaKind::General>{});
}

// Fills the outputs of an empty problem and returns true; there is nothing to launch a pass
// over. fill_ stays on the device (no host round trip).
bool finish_empty(FocalLossProblem& p) {
  if (p.inputs.numel() != 0) return false;
  if (p.reduction != Reduction::None) {
    p.loss.fill_(p.reduction == Reduction::Mean ? std::numeric_limits<double>::quiet_NaN() : 0.0);
  }
  p.grad_scale.fill_(1);
  return true;
}

// Launches kKernel(io, args) over a persistent grid for args.tiles tiles and, for a reduced
// loss, finalize_kernel over the tiles' partials, on the current stream.
template <auto kKernel, typename scalar_t>
void launch_forward(FocalLossProblem& p, const ForwardArgs<at::opmath_type<scalar_t>>& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t grid = grid_for<kKernel>(args.tiles);
  const bool reduce = p.reduction != Reduction::None;
  const auto options = p.inputs.options();
  const at::Tensor partial_sums =
      reduce ? at::empty({args.tiles}, options.dtype(p.grad_scale.scalar_type())) : at::Tensor();
  const at::Tensor partial_counts = reduce ? at::empty({args.tiles}, options.dtype(at::kLong)) : at::Tensor();

  ForwardTensors<scalar_t> io;
  io.inputs = p.inputs.const_data_ptr<scalar_t>();
  io.targets = p.labels ? nullptr : p.targets.const_data_ptr<scalar_t>();
  io.labels = p.labels ? p.targets.const_data_ptr<int64_t>() : nullptr;
  io.alpha = p.alpha.defined() ? p.alpha.const_data_ptr<opmath_t>() : nullptr;
  io.weight = p.weight.defined() ? p.weight.const_data_ptr<opmath_t>() : nullptr;
  io.normalizer = p.normalizer.defined() ? p.normalizer.const_data_ptr<opmath_t>() : nullptr;
  io.loss_out = reduce ? nullptr : p.loss.mutable_data_ptr();
  io.loss_reduced = reduce ? p.loss.mutable_data_ptr() : nullptr;
  io.grad_out = p.compute_grad ? p.grad_input.mutable_data_ptr<scalar_t>() : nullptr;
  io.partial_sums = reduce ? partial_sums.mutable_data_ptr<opmath_t>() : nullptr;
  io.partial_counts = reduce ? partial_counts.mutable_data_ptr<int64_t>() : nullptr;
  io.grad_scale = p.grad_scale.mutable_data_ptr<opmath_t>();

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FOCAL_LOSS_EXT_LAUNCH(kKernel, grid, kThreads, 0, stream)(io, args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (reduce) {
    FOCAL_LOSS_EXT_LAUNCH(finalize_kernel<scalar_t>, 1, kThreads, 0, stream)(io, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace
}  // namespace cuda
}  // namespace focal_loss_ext
