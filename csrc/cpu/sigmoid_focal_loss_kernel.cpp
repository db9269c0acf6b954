// CPU backend of the sigmoid losses (FL and FL*): the row loop (sigmoid_rows.h, one build per
// instruction set) run by the block runner of rows.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../problem.h"
#include "rows.h"

namespace focal_loss_ext {
namespace cpu {
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
  run_rows(p, row_kernels().sigmoid);
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
  run_rows(p, row_kernels().sigmoid);
  return {p.loss, p.grad_input, p.grad_scale};
}

void scale_grad_cpu_(at::Tensor grad_input, const at::Tensor& grad_output, const at::Tensor& grad_scale) {
  if (!check_scale_grad_args(grad_input, grad_output, grad_scale)) {
    scale_grad_elementwise_(grad_input, grad_output, grad_scale);
    return;
  }
  const double factor = grad_output.item<double>() * grad_scale.item<double>();
  if (factor == 1.0) return;  // plain loss.backward(): the saved buffer already is the gradient
  // A 0-dim opmath tensor, not a Scalar: mul_(Scalar) would round the factor to grad_input's
  // dtype first (a loss scale of 65536 is inf in float16).
  grad_input.mul_(at::scalar_tensor(factor, grad_scale.options()));
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(focal_loss_ext, CPU, m) {
  m.impl("sigmoid_focal_loss", &cpu::sigmoid_focal_loss_cpu);
  m.impl("sigmoid_focal_loss_star", &cpu::sigmoid_focal_loss_star_cpu);
  m.impl("scale_grad_", &cpu::scale_grad_cpu_);
}

}  // namespace focal_loss_ext
