// make_problem() and the checks of scale_grad_, shared by the CPU and CUDA backends.
#include "problem.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/accumulate.h>

namespace focal_loss_ext {

namespace {

at::ScalarType opmath_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// A small per-row or per-class operand: same device as the logits, 1-D of the given length,
// floating; returned contiguous in opmath dtype.
at::Tensor as_opmath_vector(
    const at::Tensor& t, const char* name, int64_t length, const char* length_meaning, const at::Tensor& inputs) {
  TORCH_CHECK(t.device() == inputs.device(), name, " must be on the same device as inputs (", inputs.device(),
              "), got ", t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ", t.scalar_type());
  TORCH_CHECK(t.numel() == length, name, " must have ", length, " elements (", length_meaning, "), got shape ",
              t.sizes());
  return t.reshape({length}).to(opmath_dtype(inputs.scalar_type())).contiguous();
}

}  // namespace

FocalLossProblem make_problem(LossKind kind,
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
  TORCH_CHECK(at::isFloatingType(inputs.scalar_type()),
              "inputs must be a floating tensor (float32, float64, float16 or bfloat16), got ", inputs.scalar_type());
  TORCH_CHECK(inputs.dim() >= 1, "inputs must have shape (..., K) with K classes, got a 0-dim tensor");
  TORCH_CHECK(targets.device() == inputs.device(), "targets must be on the same device as inputs (", inputs.device(),
              "), got ", targets.device());
  const bool opmath_loss = (reduction & kOpmathLoss) != 0;
  TORCH_CHECK(reduction >= 0 && (reduction & ~kOpmathLoss) <= 2,
              "reduction must be 0 (none), 1 (mean) or 2 (sum), plus ", kOpmathLoss, " for the loss in opmath, got ",
              reduction);
  reduction &= ~kOpmathLoss;
  if (kind == LossKind::SigmoidFocalStar) {
    TORCH_CHECK(gamma > 0 && std::isfinite(gamma), "gamma must be a finite number > 0 (FL* divides by it), got ",
                gamma);
    TORCH_CHECK(std::isfinite(beta), "beta must be a finite number, got ", beta);
  } else {
    TORCH_CHECK(gamma >= 0 && std::isfinite(gamma), "gamma must be a finite number >= 0, got ", gamma);
  }
  TORCH_CHECK(label_smoothing >= 0 && label_smoothing < 1, "label_smoothing must be in [0, 1), got ", label_smoothing);
  TORCH_CHECK(std::isfinite(alpha), "alpha must be finite (negative disables it), got ", alpha);

  const bool loss_per_row = kind == LossKind::SoftmaxFocal;
  TORCH_CHECK(!loss_per_row || inputs.size(-1) > 0,
              "inputs must have at least one class (a softmax over an empty last dimension), got shape ",
              inputs.sizes());
  FocalLossProblem p;
  p.kind = kind;
  p.beta = beta;
  p.classes = inputs.size(-1);
  p.rows = c10::multiply_integers(inputs.sizes().slice(0, inputs.dim() - 1));  // K = 0 still has rows
  p.inputs = inputs.contiguous();
  p.gamma = gamma;
  p.smoothing = label_smoothing;
  p.ignore_index = ignore_index;
  p.reduction = static_cast<Reduction>(reduction);
  p.opmath_loss = opmath_loss;
  p.compute_grad = compute_grad;
  p.prescale_grad = inputs.scalar_type() != at::kHalf;
  const auto opmath = opmath_dtype(inputs.scalar_type());

  const auto target_dtype = targets.scalar_type();
  if (at::isFloatingType(target_dtype)) {
    TORCH_CHECK(targets.sizes() == inputs.sizes(), "floating targets must have the same shape as inputs ",
                inputs.sizes(), ", got ", targets.sizes(), " (integer targets take one label per row: shape ",
                inputs.sizes().slice(0, inputs.dim() - 1), ")");
    p.targets = targets.to(inputs.scalar_type()).contiguous();
  } else if (at::isIntegralType(target_dtype, /*includeBool=*/false)) {
    p.labels = true;
    const auto row_shape = inputs.sizes().slice(0, inputs.dim() - 1);
    TORCH_CHECK(targets.sizes() == row_shape, "integer targets must have shape inputs.shape[:-1] = ", row_shape,
                " (one label per row), got ", targets.sizes());
    p.targets = targets.to(at::kLong).contiguous();
  } else {
    TORCH_CHECK(false, "targets must be floating (same shape as inputs) or integer (one label per row, ",
                "shape inputs.shape[:-1]), got dtype ", target_dtype);
  }

  if (alpha_per_class.has_value()) {
    p.alpha = as_opmath_vector(*alpha_per_class, "alpha", p.classes, "one per class, K = inputs.shape[-1]", inputs);
  } else if (alpha >= 0) {
    p.alpha_pos = alpha;
    p.alpha_neg = 1 - alpha;
  }
  if (weight.has_value()) {
    p.weight = as_opmath_vector(*weight, "weight", p.rows, "one per row, shape inputs.shape[:-1]", inputs);
  }
  if (normalizer.has_value()) {
    const auto& n = *normalizer;
    TORCH_CHECK(n.numel() == 1 && n.dim() == 0, "normalizer must be a number or a 0-dim tensor, got shape ", n.sizes());
    TORCH_CHECK(n.device() == inputs.device(), "normalizer must be on the same device as inputs (", inputs.device(),
                "), got ", n.device());
    TORCH_CHECK(!at::isComplexType(n.scalar_type()) && n.scalar_type() != at::kBool,
                "normalizer must be a real number, got dtype ", n.scalar_type());
    p.normalizer = n.to(opmath).contiguous();
  }

  p.host_scale = host_scale;
  if (p.reduction == Reduction::Mean) {
    if (p.labels) {
      p.divide_by_count = true;
    } else {
      // inf for empty input: mean of nothing is NaN
      p.host_scale /= static_cast<double>(loss_per_row ? p.rows : inputs.numel());
    }
  }

  const auto options = inputs.options();
  const auto loss_options = opmath_loss ? options.dtype(opmath) : options;
  const auto loss_shape = loss_per_row ? inputs.sizes().slice(0, inputs.dim() - 1) : inputs.sizes();
  p.loss = p.reduction == Reduction::None ? at::empty(loss_shape, loss_options) : at::empty({}, loss_options);
  p.grad_input = compute_grad ? at::empty(inputs.sizes(), options) : at::empty({0}, options);
  p.grad_scale = at::empty({}, options.dtype(opmath));
  return p;
}

bool check_scale_grad_args(const at::Tensor& grad_input, const at::Tensor& grad_output, const at::Tensor& grad_scale) {
  TORCH_CHECK(grad_input.is_contiguous(), "grad_input must be contiguous");
  TORCH_CHECK(grad_output.device() == grad_input.device() && grad_scale.device() == grad_input.device(),
              "grad_output and grad_scale must be on grad_input's device (", grad_input.device(), "), got ",
              grad_output.device(), " and ", grad_scale.device());
  TORCH_CHECK(grad_scale.numel() == 1 && grad_scale.scalar_type() == opmath_dtype(grad_input.scalar_type()),
              "grad_scale must be a single ", opmath_dtype(grad_input.scalar_type()), " value, got ",
              grad_scale.scalar_type(), " of shape ", grad_scale.sizes());
  if (grad_output.numel() == 1 && grad_output.dim() == 0) {
    return true;
  }
  const bool per_row =
      grad_input.dim() >= 1 && grad_output.sizes() == grad_input.sizes().slice(0, grad_input.dim() - 1);
  TORCH_CHECK(grad_output.sizes() == grad_input.sizes() || per_row,
              "grad_output must be a 0-dim tensor (reduced loss) or have grad_input's shape ", grad_input.sizes(),
              " (or its shape without the last dimension, for a per-row loss), got ", grad_output.sizes());
  return false;
}

void scale_grad_elementwise_(at::Tensor& grad_input, const at::Tensor& grad_output, const at::Tensor& grad_scale) {
  const auto opmath = grad_scale.scalar_type();
  const at::Tensor factor =
      (grad_output.dim() < grad_input.dim() ? grad_output.unsqueeze(-1) : grad_output).to(opmath) * grad_scale;
  if (grad_input.scalar_type() == opmath) {
    grad_input.mul_(factor);
  } else {
    grad_input.copy_(grad_input.to(opmath) * factor);
  }
}

}  // namespace focal_loss_ext
