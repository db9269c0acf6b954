// CUDA backend of the softmax focal loss. One warp per row; its 32 lanes take the row's packs of
// V elements (16 bytes), counted from the row's first element, in turn (lane l packs l, l + 32,
// ...), so a row of any length is read in whole packs plus one short pack at its end. A row
// whose start is not 16-byte aligned (classes * element size not a multiple of 16, or an offset
// tensor) loads each pack in the widest pieces its alignment allows, and every lane still holds
// the same elements. Per row: the max, the sum of exponentials, then loss and gradient, with the
// math from focal_loss_math.h; row sums are butterfly reductions (identical bits in every lane).
// Rows are grouped in fixed tiles of kRowsPerTile, whose losses are summed in a fixed order
// (forward.cuh): no float atomics, no host synchronization.
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
// Rows per warp in a tile: the tile's block sum (two barriers) is paid once per 32 rows.
constexpr int kRowsPerWarp = 4;
constexpr int64_t kRowsPerTile = int64_t{kWarps} * kRowsPerWarp;

// Calls f(k, value) for each class k of a row held by this lane, in the same order on every
// pass, with value read from row (packs of V from the row start, lane l taking packs l, l + 32, ...).
template <typename scalar_t, typename F>
__device__ __forceinline__ void for_lane_classes(const scalar_t* row, int64_t classes, int lane, F&& f) {
  constexpr int V = kPackElems<scalar_t>;
  for (int64_t first = int64_t{lane} * V; first < classes; first += int64_t{kWarpSize} * V) {
    const int n = static_cast<int>(std::min<int64_t>(V, classes - first));
    scalar_t x[V];
    load_elements(row + first, n, x);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (j < n) f(first + j, static_cast<at::opmath_type<scalar_t>>(x[j]));
    }
  }
}

// Writes value(k, x_k) as the gradient of each class of the row this lane holds, by the same
// packs as for_lane_classes; kReadsRow false: value ignores x_k, and the row is not read.
template <bool kReadsRow, typename scalar_t, typename F>
__device__ __forceinline__ void store_lane_grads(
    const scalar_t* row, scalar_t* grad, int64_t classes, int lane, F&& value) {
  constexpr int V = kPackElems<scalar_t>;
  for (int64_t first = int64_t{lane} * V; first < classes; first += int64_t{kWarpSize} * V) {
    const int n = static_cast<int>(std::min<int64_t>(V, classes - first));
    scalar_t x[V] = {};
    scalar_t g[V];
    if constexpr (kReadsRow) load_elements(row + first, n, x);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      // Slots past the row's end are not stored; value() is not asked about classes >= C.
      g[j] =
          j < n ? static_cast<scalar_t>(value(first + j, static_cast<at::opmath_type<scalar_t>>(x[j]))) : scalar_t(0);
    }
    store_elements</*kAligned=*/false>(grad + first, n, g);
  }
}

// kHard: integer labels without label smoothing, where only the target class has a term.
template <typename scalar_t, GammaKind kGamma, bool kLabels, bool kHard>
__global__ void __launch_bounds__(kThreads)
    softmax_focal_forward_kernel(const ForwardTensors<scalar_t> io, const ForwardArgs<at::opmath_type<scalar_t>> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto scales = start_forward(io, a);

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t C = a.classes;
  for (int64_t tile = blockIdx.x; tile < a.tiles; tile += gridDim.x) {
    opmath_t acc = 0;   // lane 0: sum of this warp's row losses in the tile
    int64_t count = 0;  // lane 0: this warp's non-ignored rows in the tile (label form)
    // The row is the same for the whole warp, so every branch on it below is warp-uniform and
    // all 32 lanes reach every shuffle.
    for (int u = 0; u < kRowsPerWarp; ++u) {
      const int64_t row = tile * kRowsPerTile + int64_t{u} * kWarps + warp;
      if (row >= a.rows) break;
      const scalar_t* x = io.inputs + row * C;
      scalar_t* g = io.grad_out != nullptr ? io.grad_out + row * C : nullptr;
      int64_t label = -1;
      if constexpr (kLabels) {
        label = io.labels[row];
        if (label == a.ignore_index) {
          if (io.loss_out != nullptr && lane == 0) store_loss<scalar_t>(io.loss_out, row, opmath_t(0), a);
          if (g != nullptr) store_lane_grads<false>(x, g, C, lane, [](int64_t, opmath_t) { return opmath_t(0); });
          continue;
        }
        CUDA_KERNEL_ASSERT(label >= 0 && label < C);
        count += lane == 0 ? 1 : 0;
      }

      opmath_t m = -std::numeric_limits<opmath_t>::infinity();
      for_lane_classes(x, C, lane, [&](int64_t, opmath_t z) { m = math::max(m, z); });
      m = warp_all_max(m);
      // log p_k = (z_k - m) - log_norm, with log_norm = log1p(R) summed apart from the max's own
      // 1, so that a confident row's tiny loss keeps its relative precision (focal_loss_math.h)
      opmath_t shares = 0;
      opmath_t at_max = 0;
      for_lane_classes(x, C, lane, [&](int64_t, opmath_t z) {
        shares += softmax_share_below_max(z, m);
        at_max += softmax_at_max(z, m);
      });
      const opmath_t log_norm = softmax_log_norm(warp_all_sum(shares), warp_all_sum(at_max));
      const auto log_p_of = [&](opmath_t z) { return (z - m) - log_norm; };

      const opmath_t w_row = io.weight != nullptr ? io.weight[row] : opmath_t(1);
      const opmath_t row_grad_prescale = w_row * scales.grad_prescale;
      opmath_t row_loss;
      if constexpr (kHard) {
        const opmath_t log_p_y = log_p_of(static_cast<opmath_t>(x[label]));
        const LossGrad<opmath_t> term =
            softmax_focal_term<kGamma>(log_p_y, io.alpha != nullptr ? io.alpha[label] : opmath_t(1), a.gamma);
        row_loss = term.loss;
        if (g != nullptr) {
          const opmath_t coef = -term.grad * row_grad_prescale;
          const opmath_t at_label = softmax_label_grad(term.grad, log_p_y) * row_grad_prescale;
          store_lane_grads<true>(x, g, C, lane, [&](int64_t k, opmath_t z) {
            return k == label ? at_label : math::exp(log_p_of(z)) * coef;
          });
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
        for_lane_classes(x, C, lane, [&](int64_t k, opmath_t z) {
          const LossGrad<opmath_t> term = class_term(k, log_p_of(z));
          loss_sum += term.loss;
          u_sum += term.grad;
        });
        row_loss = warp_all_sum(loss_sum);
        u_sum = warp_all_sum(u_sum);
        if (g != nullptr) {
          store_lane_grads<true>(x, g, C, lane, [&](int64_t k, opmath_t z) {
            const opmath_t log_p = log_p_of(z);
            return (class_term(k, log_p).grad - math::exp(log_p) * u_sum) * row_grad_prescale;
          });
        }
      }
      if (lane == 0) {
        if (io.loss_out != nullptr) {
          store_loss<scalar_t>(io.loss_out, row, row_loss * w_row * scales.loss_scale, a);
        } else {
          acc += row_loss * w_row;
        }
      }
    }
    finish_tile(io, a, tile, acc, count);
  }
}

// kHard where only the target class has a term: integer labels without label smoothing.
template <typename scalar_t, GammaKind kGamma>
void launch_for_targets(FocalLossProblem& p, const ForwardArgs<at::opmath_type<scalar_t>>& args) {
  if (!p.labels) {
    launch_forward<softmax_focal_forward_kernel<scalar_t, kGamma, false, false>, scalar_t>(p, args);
  } else if (p.smoothing == 0) {
    launch_forward<softmax_focal_forward_kernel<scalar_t, kGamma, true, true>, scalar_t>(p, args);
  } else {
    launch_forward<softmax_focal_forward_kernel<scalar_t, kGamma, true, false>, scalar_t>(p, args);
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
    auto args = make_forward_args<at::opmath_type<scalar_t>>(p);
    args.tiles = (p.rows + kRowsPerTile - 1) / kRowsPerTile;
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
