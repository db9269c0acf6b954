// CPU backend: fixed-size blocks of rows run in parallel; their partial sums are combined in
// block order, so the loss is the same for any thread count and any run.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../sigmoid_focal_loss.h"
#include "rows.h"

namespace focal_loss_ext {
namespace cpu {
namespace {

// Elements per block: small enough that the float lanes of a block sum over at most a few
// hundred terms each (error ~1e-6 relative), large enough to amortise the task overhead.
constexpr int64_t kElementsPerBlock = 4096;

// The AVX2 loop where the CPU has AVX2, FMA and F16C, unless ATEN_CPU_CAPABILITY=default asks
// for the portable code (as it does for PyTorch's own kernels).
RowsFn pick_rows_fn() {
  static const RowsFn fn = [] {
    const char* env = std::getenv("ATEN_CPU_CAPABILITY");
    const bool forced_default = env != nullptr && std::string(env) == "default";
#if defined(__x86_64__) || defined(_M_X64)
    if (!forced_default && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
      return &sigmoid_focal_rows_avx2;
    }
#endif
    (void)forced_default;
    return &sigmoid_focal_rows_default;
  }();
  return fn;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sigmoid_focal_loss_cpu(
    const at::Tensor& inputs, const at::Tensor& targets, const c10::optional<at::Tensor>& alpha_per_class,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& normalizer, double alpha,
    double gamma, double scale, double label_smoothing, int64_t ignore_index, int64_t reduction,
    bool compute_grad) {
  SigmoidFocalProblem p = make_sigmoid_focal_problem(inputs, targets, alpha_per_class, weight, normalizer,
                                                     alpha, gamma, scale, label_smoothing, ignore_index,
                                                     reduction, compute_grad);
  // On the CPU the normalizer can be read without a device round trip.
  double factor = p.host_factor;
  if (p.normalizer.defined()) factor /= p.normalizer.item<double>();

  RowsPlan plan;
  plan.dtype = p.inputs.scalar_type();
  plan.gamma_kind = gamma_kind(p.gamma);
  plan.inputs = p.inputs.const_data_ptr();
  plan.targets = p.labels ? nullptr : p.targets.const_data_ptr();
  plan.labels = p.labels ? p.targets.const_data_ptr<int64_t>() : nullptr;
  plan.alpha = p.alpha.defined() ? p.alpha.const_data_ptr() : nullptr;
  plan.weight = p.weight.defined() ? p.weight.const_data_ptr() : nullptr;
  plan.alpha_pos = p.alpha_pos;
  plan.alpha_neg = p.alpha_neg;
  plan.gamma = p.gamma;
  plan.smoothing = p.smoothing;
  plan.loss_factor = factor;
  plan.grad_factor = p.fold_into_grad ? factor : 1.0;
  plan.classes = p.classes;
  plan.ignore_index = p.ignore_index;
  plan.loss_out = p.reduction == Reduction::None ? p.loss.mutable_data_ptr() : nullptr;
  plan.grad_out = p.compute_grad ? p.grad_input.mutable_data_ptr() : nullptr;

  const int64_t rows_per_block = std::max<int64_t>(1, kElementsPerBlock / std::max<int64_t>(p.classes, 1));
  const int64_t blocks = p.classes == 0 ? 0 : (p.rows + rows_per_block - 1) / rows_per_block;
  std::vector<RowsResult> partials(blocks);
  const RowsFn rows_fn = pick_rows_fn();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      partials[b] = rows_fn(plan, b * rows_per_block, std::min(p.rows, (b + 1) * rows_per_block));
    }
  });

  double total = 0;
  int64_t count = 0;
  for (const RowsResult& r : partials) {
    TORCH_CHECK(!r.bad_label, "targets: label ", r.first_bad_label, " is out of range; expected a class in [0, ",
                p.classes, "), ", p.classes, " (background) or ignore_index (", p.ignore_index, ")");
    total += r.loss_sum;
    count += r.count;
  }
  double grad_scale = p.fold_into_grad ? 1.0 : factor;
  if (p.mean_over_count) {
    total /= static_cast<double>(count);  // NaN when every row is ignored, as for an empty mean
    grad_scale = count > 0 ? grad_scale / static_cast<double>(count) : 0.0;
  }
  if (p.reduction != Reduction::None) p.loss.fill_(total * factor);
  p.grad_scale.fill_(grad_scale);
  return {p.loss, p.grad_input, p.grad_scale};
}

void scale_grad_cpu_(at::Tensor grad_input, const at::Tensor& grad_output, const at::Tensor& grad_scale) {
  if (!check_scale_grad_args(grad_input, grad_output, grad_scale)) {
    scale_grad_elementwise_(grad_input, grad_output, grad_scale);
    return;
  }
  const double factor = grad_output.item<double>() * grad_scale.item<double>();
  if (factor == 1.0) return;  // plain loss.backward(): the saved buffer already is the gradient
  grad_input.mul_(factor);
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(focal_loss_ext, CPU, m) {
  m.impl("sigmoid_focal_loss", &cpu::sigmoid_focal_loss_cpu);
  m.impl("scale_grad_", &cpu::scale_grad_cpu_);
}

}  // namespace focal_loss_ext
