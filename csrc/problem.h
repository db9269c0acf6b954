// One call of a focal loss, described for the kernels: FocalLossProblem is shared by the three
// operators (sigmoid_focal_loss, sigmoid_focal_loss_star, softmax_focal_loss) and both backends.
//
// make_problem() validates the arguments (every message names the argument), puts every tensor in
// the layout the kernels read, and allocates the outputs, so that a backend only runs its loop
// over rows x classes.
//
// Scaling, in one vocabulary from Python to the kernels:
//   loss_scale     turns the sum of the (weighted) element or row losses into the returned loss:
//                  loss_scale = host_scale / normalizer / count, each factor where it applies.
//   host_scale     the part known on the host: 1 / a float normalizer (from Python), times 1 / numel
//                  (softmax: 1 / rows) for "mean" with float targets.
//   normalizer     an optional 0-dim tensor divisor, read on the device (no host synchronization).
//   count          for "mean" with integer labels: the elements (softmax: rows) of non-ignored
//                  rows, counted by the pass itself (divide_by_count).
//   grad_prescale  the factor already multiplied into the stored grad_input: when prescale_grad,
//                  loss_scale without the count (the pass is still counting), else 1 (float16,
//                  see below).
//   grad_scale     what the backward still multiplies grad_input by, besides grad_output:
//                  grad_prescale * grad_scale = loss_scale.
//
// The byte budget that the design is built around (float32 logits, integer labels):
//   forward:  logits read once (4 B/elem), labels read once (8 B/row = 0.1 B/elem at K = 80),
//             d loss/d logit written once (4 B/elem) -- the loss itself is reduced on chip;
//   backward: grad_output (a scalar for "sum"/"mean") and grad_scale read on the device; if
//             their product is exactly 1 -- plain loss.backward() with the gradient prescaled --
//             no element is touched and the saved buffer is the gradient.
// So forward + backward move ~8.1 B/elem, the floor for any implementation that reads the
// logits and writes the gradient once.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "focal_loss_math.h"

namespace focal_loss_ext {

// The member of the focal-loss family a problem computes. The sigmoid losses have one loss per
// element; the softmax loss has one per row (the class dimension is reduced).
enum class LossKind : int { SigmoidFocal = 0, SigmoidFocalStar = 1, SoftmaxFocal = 2 };

// The operators' `reduction` argument is a Reduction (0 none, 1 mean, 2 sum), plus kOpmathLoss
// to have the loss returned in opmath (float32 for float16/bfloat16 logits): what the autocast
// kernels (autocast.cpp) ask for. A flag on an existing argument rather than one more argument,
// so that every backend's kernel signature stays as it is. The gradient keeps the logits' dtype.
constexpr int64_t kOpmathLoss = 4;

struct FocalLossProblem {
  LossKind kind = LossKind::SigmoidFocal;
  // Inputs in kernel layout.
  at::Tensor inputs;      // contiguous logits, viewed as (rows, classes)
  at::Tensor targets;     // float form: contiguous, inputs' dtype and shape; label form: int64 (rows)
  bool labels = false;    // true: targets are one integer label per row
  at::Tensor alpha;       // optional per-class alpha (classes), opmath dtype, contiguous
  at::Tensor weight;      // optional per-row weight (rows), opmath dtype, contiguous
  at::Tensor normalizer;  // optional 0-dim divisor, opmath dtype, on the inputs' device
  double alpha_pos = 1;   // scalar alpha for the positive term (1 when disabled)
  double alpha_neg = 1;   // scalar alpha for the negative term
  double gamma = 2;
  double beta = 0;  // FL* only
  double smoothing = 0;
  int64_t ignore_index = -1;
  int64_t rows = 0;
  int64_t classes = 0;
  Reduction reduction = Reduction::None;
  bool opmath_loss = false;  // the loss in opmath dtype (kOpmathLoss), else in the inputs' dtype
  bool compute_grad = false;
  // The scaling words are defined at the top of this file.
  double host_scale = 1;
  bool divide_by_count = false;  // "mean" with integer labels
  // Store grad_input already multiplied by loss_scale. Not for float16: a factor such as
  // 1 / numel would push small gradients below float16's range even when the final,
  // loss-scaled gradient is representable; float16 keeps loss_scale in grad_scale instead.
  bool prescale_grad = true;

  // Outputs.
  at::Tensor loss;        // reduced: 0-dim; "none": inputs' shape (softmax: inputs.shape[:-1]); dtype: opmath_loss
                          // above (the kernels write it in loss.scalar_type())
  at::Tensor grad_input;  // d loss / d inputs, inputs' shape and dtype ((0,) when not computed)
  at::Tensor grad_scale;  // 0-dim opmath: loss_scale / grad_prescale
};

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
                              bool compute_grad);

// Validation shared by the backends' scale_grad_ implementations; returns true when
// grad_output is a single value (the reduced-loss case that the kernels handle). Otherwise
// grad_output has grad_input's shape, or grad_input.shape[:-1] for a per-row loss.
bool check_scale_grad_args(const at::Tensor& grad_input, const at::Tensor& grad_output, const at::Tensor& grad_scale);

// The general (reduction "none") case: grad_input *= grad_output * grad_scale, in opmath
// (a per-row grad_output broadcast over the last dimension).
void scale_grad_elementwise_(at::Tensor& grad_input, const at::Tensor& grad_output, const at::Tensor& grad_scale);

}  // namespace focal_loss_ext
