// The operators under torch.autocast (CUDA and CPU): the loss comes back in float32 (opmath) for
// every reduction, as PyTorch's own losses do under autocast, and the gradient in the logits'
// dtype.
//
// The logits are passed on as given, not cast: the kernels already compute float16 and bfloat16
// in float32, so a float32 copy would only cost memory and bandwidth. All this kernel does is
// ask for the loss in opmath (kOpmathLoss on the `reduction` argument, problem.h), with the
// autocast keys excluded so that the call reaches autograd and the backend. One boxed kernel
// serves the three loss operators: they differ in their scalars, not in `reduction`.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "problem.h"

namespace focal_loss_ext {
namespace {

void loss_in_opmath(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const auto index = schema.argumentIndexWithName("reduction");
  TORCH_INTERNAL_ASSERT(index.has_value(), schema.name(), " has no reduction argument");
  c10::IValue& reduction = (*stack)[stack->size() - schema.arguments().size() + *index];
  reduction = reduction.toInt() | kOpmathLoss;
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  op.callBoxed(stack);
}

constexpr const char* kLossOperators[] = {"sigmoid_focal_loss", "sigmoid_focal_loss_star", "softmax_focal_loss"};

void register_autocast(torch::Library& m) {
  for (const char* name : kLossOperators) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&loss_in_opmath>());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(focal_loss_ext, AutocastCUDA, m) {
  register_autocast(m);
}

TORCH_LIBRARY_IMPL(focal_loss_ext, AutocastCPU, m) {
  register_autocast(m);
}

}  // namespace focal_loss_ext
