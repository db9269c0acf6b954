// CPU backend of the sigmoid losses (FL and FL*), and the block runner that the softmax loss
// shares: fixed-size blocks of rows run in parallel; their partial sums are combined in
// block order, so the loss is the same for any thread count and any run.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../problem.h"
#include "rows.h"

namespace focal_loss_ext {
namespace cpu {
namespace {

// Elements per block: small enough that the float lanes of a block sum over at most a few
// hundred terms each (error ~1e-6 relative), large enough to amortise the task overhead.
constexpr int64_t kElementsPerBlock = 4096;

}  // namespace

bool use_avx2() {
  static const bool avx2 = [] {
    const char* env = std::getenv("ATEN_CPU_CAPABILITY");
    const bool forced_default = env != nullptr && std::string(env) == "default";
#if defined(__x86_64__) || defined(_M_X64)
    return !forced_default && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
#else
    (void)forced_default;
    return false;
#endif
  }();
  return avx2;
}

void run_rows(FocalLossProblem& p, RowsFn rows_fn) {
  // On the CPU the normalizer can be read without a device round trip.
  double loss_scale = p.host_scale;
  if (p.normalizer.defined()) loss_scale /= p.normalizer.item<double>();

  RowsPlan plan;
  plan.dtype = p.inputs.scalar_type();
  plan.gamma_kind = gamma_kind(p.gamma);
  plan.star = p.kind == LossKind::SigmoidFocalStar;
  plan.inputs = p.inputs.const_data_ptr();
  plan.targets = p.labels ? nullptr : p.targets.const_data_ptr();
  plan.labels = p.labels ? p.targets.const_data_ptr<int64_t>() : nullptr;
  plan.alpha = p.alpha.defined() ? p.alpha.const_data_ptr() : nullptr;
  plan.weight = p.weight.defined() ? p.weight.const_data_ptr() : nullptr;
  plan.alpha_pos = p.alpha_pos;
  plan.alpha_neg = p.alpha_neg;
  plan.gamma = p.gamma;
  plan.beta = p.beta;
  plan.smoothing = p.smoothing;
  plan.loss_scale = loss_scale;
  plan.grad_prescale = p.prescale_grad ? loss_scale : 1.0;
  plan.classes = p.classes;
  plan.ignore_index = p.ignore_index;
  plan.loss_out = p.reduction == Reduction::None ? p.loss.mutable_data_ptr() : nullptr;
  plan.grad_out = p.compute_grad ? p.grad_input.mutable_data_ptr() : nullptr;

  const int64_t rows_per_block = std::max<int64_t>(1, kElementsPerBlock / std::max<int64_t>(p.classes, 1));
  const int64_t blocks = p.classes == 0 ? 0 : (p.rows + rows_per_block - 1) / rows_per_block;
  std::vector<RowsResult> partials(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      partials[b] = rows_fn(plan, b * rows_per_block, std::min(p.rows, (b + 1) * rows_per_block));
    }
  });

  double total = 0;
  int64_t count = 0;
  for (const RowsResult& r : partials) {
    if (p.kind == LossKind::SoftmaxFocal) {
      TORCH_CHECK(!r.bad_label, "targets: label ", r.first_bad_label, " is out of range; expected a class in [0, ",
                  p.classes, ") or ignore_index (", p.ignore_index, ")");
    } else {
      TORCH_CHECK(!r.bad_label, "targets: label ", r.first_bad_label, " is out of range; expected a class in [0, ",
                  p.classes, "), ", p.classes, " (background) or ignore_index (", p.ignore_index, ")");
    }
    total += r.loss_sum;
    count += r.count;
  }
  double grad_scale = p.prescale_grad ? 1.0 : loss_scale;
  if (p.divide_by_count) {
    total /= static_cast<double>(count);  // NaN when every row is ignored, as for an empty mean
    grad_scale = count > 0 ? grad_scale / static_cast<double>(count) : 0.0;
  }
  if (p.reduction != Reduction::None) p.loss.fill_(total * loss_scale);
  p.grad_scale.fill_(grad_scale);
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> sigmoid_focal_loss_cpu(const at::Tensor& inputs,
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
  FocalLossProblem p =
      make_problem(LossKind::SigmoidFocal, inputs, targets, alpha_per_class, weight, normalizer, alpha, gamma,
                   /*beta=*/0.0, host_scale, label_smoothing, ignore_index, reduction, compute_grad);
  run_rows(p, use_avx2() ? &sigmoid_focal_rows_avx2 : &sigmoid_focal_rows_default);
  return {p.loss, p.grad_input, p.grad_scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sigmoid_focal_loss_star_cpu(
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
  FocalLossProblem p =
      make_problem(LossKind::SigmoidFocalStar, inputs, targets, alpha_per_class, weight, normalizer, alpha, gamma, beta,
                   host_scale, label_smoothing, ignore_index, reduction, compute_grad);
  run_rows(p, use_avx2() ? &sigmoid_focal_rows_avx2 : &sigmoid_focal_rows_default);
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
  m.impl("sigmoid_focal_loss_star", &cpu::sigmoid_focal_loss_star_cpu);
  m.impl("scale_grad_", &cpu::scale_grad_cpu_);
}

}  // namespace focal_loss_ext
