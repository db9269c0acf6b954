// CUDA backend of the sigmoid losses (FL and FL*): one pass over the logits computes every
// element's loss and gradient; the reduction and the launch are those of forward.cuh.
//
// The contiguous (rows, classes) problem is read as one flat array of packs of V elements (16
// bytes), whatever the number of classes: a pack may span two rows, so each element's row and
// class are carried along (one division per thread and tile, none per element). A tile is
// kPacksPerThread packs per thread of a block, counted from element 0.
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

// Packs per thread in a tile, taken one after another: the tile's block sum (two barriers) is
// paid once per 4 packs per thread, 4096 float32 elements. Load latency is hidden by the other
// resident warps, as one pack per thread is in flight.
constexpr int kPacksPerThread = 4;

template <typename scalar_t>
constexpr int64_t kTileElems = int64_t{kThreads} * kPackElems<scalar_t> * kPacksPerThread;

// Reduction "none": n <= V losses from element `first` on, in the loss tensor's dtype.
template <typename scalar_t, int V>
__device__ __forceinline__ void store_losses(const ForwardTensors<scalar_t>& io,
                                             const ForwardArgs<at::opmath_type<scalar_t>>& a,
                                             int64_t first,
                                             int n,
                                             const at::opmath_type<scalar_t> (&loss)[V]) {
  using opmath_t = at::opmath_type<scalar_t>;
  if (a.loss_in_opmath) return store_elements</*kAligned=*/true>(static_cast<opmath_t*>(io.loss_out) + first, n, loss);
  scalar_t out[V];
#pragma unroll
  for (int j = 0; j < V; ++j) out[j] = static_cast<scalar_t>(loss[j]);
  store_elements</*kAligned=*/true>(static_cast<scalar_t*>(io.loss_out) + first, n, out);
}

template <typename scalar_t, typename Rule, bool kLabels>
__global__ void __launch_bounds__(kThreads)
    sigmoid_focal_forward_kernel(const ForwardTensors<scalar_t> io, const ForwardArgs<at::opmath_type<scalar_t>> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int V = kPackElems<scalar_t>;
  // Consecutive packs of a thread are a block's width apart, so each access of a warp is
  // contiguous; the carry below moves (row, class) by that step.
  constexpr int64_t kStep = int64_t{kThreads} * V;
  const Rule rule;
  const auto scales = start_forward(io, a);
  const int64_t numel = a.rows * a.classes;
  const int64_t step_rows = kStep / a.classes;
  const int64_t step_cols = kStep - step_rows * a.classes;

  for (int64_t tile = blockIdx.x; tile < a.tiles; tile += gridDim.x) {
    int64_t first = tile * kTileElems<scalar_t> + static_cast<int64_t>(threadIdx.x) * V;
    int64_t row = first / a.classes;
    int64_t col = first - row * a.classes;
    opmath_t acc = 0;
    int64_t count = 0;
#pragma unroll 1
    for (int u = 0; u < kPacksPerThread; ++u) {
      if (first < numel) {  // past the end: nothing to do, but the tile's block sum is still reached
        const int n = static_cast<int>(std::min<int64_t>(V, numel - first));
        scalar_t x[V];
        scalar_t t[V];
        load_elements(io.inputs + first, n, x);
        if constexpr (!kLabels) load_elements(io.targets + first, n, t);
        opmath_t loss[V];
        scalar_t grad[V];
        int64_t r = row;
        int64_t k = col;
        int64_t label = -1;
        opmath_t w = 1;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          loss[j] = 0;
          grad[j] = scalar_t(0);
          if (j >= n) continue;
          if (j == 0 || k == 0) {  // the pack's first element, or it has crossed into a new row
            if constexpr (kLabels) {
              label = io.labels[r];
              CUDA_KERNEL_ASSERT(label == a.ignore_index || (label >= 0 && label <= a.classes));
            }
            w = io.weight != nullptr ? io.weight[r] : opmath_t(1);
          }
          const bool skip = kLabels && label == a.ignore_index;
          if (!skip) {
            count += kLabels ? 1 : 0;
            opmath_t target;
            if constexpr (kLabels) {
              target = label == k ? opmath_t(1) : opmath_t(0);
            } else {
              target = static_cast<opmath_t>(t[j]);
            }
            target = target * a.keep + a.spread;
            opmath_t alpha_pos = a.alpha_pos;
            opmath_t alpha_neg = a.alpha_neg;
            if (io.alpha != nullptr) {
              alpha_pos = io.alpha[k];
              alpha_neg = opmath_t(1) - alpha_pos;
            }
            const LossGrad<opmath_t> lg =
                rule(static_cast<opmath_t>(x[j]), target, alpha_pos, alpha_neg, a.gamma, a.beta);
            const opmath_t element_loss = lg.loss * w;
            acc += element_loss;
            loss[j] = element_loss * scales.loss_scale;
            grad[j] = static_cast<scalar_t>(lg.grad * (w * scales.grad_prescale));
          }
          if (++k == a.classes) {
            k = 0;
            ++r;
          }
        }
        if (io.loss_out != nullptr) store_losses(io, a, first, n, loss);
        if (io.grad_out != nullptr) store_elements</*kAligned=*/true>(io.grad_out + first, n, grad);
      }
      first += kStep;
      row += step_rows;
      col += step_cols;
      if (col >= a.classes) {
        col -= a.classes;
        ++row;
      }
    }
    finish_tile(io, a, tile, acc, count);
  }
}

template <typename scalar_t, typename Rule>
void launch_for_targets(FocalLossProblem& p, const ForwardArgs<at::opmath_type<scalar_t>>& args) {
  if (p.labels) {
    launch_forward<sigmoid_focal_forward_kernel<scalar_t, Rule, true>, scalar_t>(p, args);
  } else {
    launch_forward<sigmoid_focal_forward_kernel<scalar_t, Rule, false>, scalar_t>(p, args);
  }
}

// FL and FL*: the same pass, with the per-element rule picked from p.kind and p.gamma.
template <typename scalar_t>
void launch_for_rule(FocalLossProblem& p, const ForwardArgs<at::opmath_type<scalar_t>>& args) {
  if (p.kind == LossKind::SigmoidFocalStar) return launch_for_targets<scalar_t, SigmoidFocalStar>(p, args);
  dispatch_gamma(p.gamma,
                 [&](auto gamma) { launch_for_targets<scalar_t, SigmoidFocal<decltype(gamma)::value>>(p, args); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_sigmoid_losses(FocalLossProblem& p) {
  if (finish_empty(p)) return {p.loss, p.grad_input, p.grad_scale};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.inputs.scalar_type(), "sigmoid_focal_loss_cuda", [&] {
    // The outputs are fresh allocations, written from element 0 in whole packs: the kernel
    // stores them without testing alignment. The inputs may sit anywhere (load_widest).
    TORCH_INTERNAL_ASSERT(aligned(p.loss.const_data_ptr()) && aligned(p.grad_input.const_data_ptr()));
    ForwardArgs<at::opmath_type<scalar_t>> args = make_forward_args<at::opmath_type<scalar_t>>(p);
    args.tiles = (p.inputs.numel() + kTileElems<scalar_t> - 1) / kTileElems<scalar_t>;
    launch_for_rule<scalar_t>(p, args);
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
