// CPU backend of the softmax focal loss: the row loop (softmax_rows.h, one build per
// instruction set) run by the block runner of rows.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../problem.h"
#include "rows.h"

namespace focal_loss_ext {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_focal_loss_cpu(const at::Tensor& inputs,
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
  FocalLossProblem p = make_problem(LossKind::SoftmaxFocal, inputs, targets, alpha_per_class, weight, normalizer,
                                    /*alpha=*/-1.0, gamma, /*beta=*/0.0, host_scale, label_smoothing, ignore_index,
                                    reduction, compute_grad);
  run_rows(p, row_kernels().softmax);
  return {p.loss, p.grad_input, p.grad_scale};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(focal_loss_ext, CPU, m) {
  m.impl("softmax_focal_loss", &cpu::softmax_focal_loss_cpu);
}

}  // namespace focal_loss_ext
