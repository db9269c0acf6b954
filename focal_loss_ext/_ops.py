"""Python-side registrations of the ``focal_loss_ext`` operators: fake kernels and autograd.

The operators are ``sigmoid_focal_loss``, ``sigmoid_focal_loss_star`` (FL*) and
``softmax_focal_loss``; all three take ``(inputs, targets, alpha_per_class, weight,
normalizer, <scalars>..., compute_grad)`` and return ``(loss, grad_input, grad_scale)``, so one
fake kernel and one autograd formula serve them all. The schemas live in
``csrc/focal_loss.cpp`` (``TORCH_LIBRARY``); the CPU and CUDA kernels register themselves in
``csrc/cpu`` and ``csrc/cuda``. The scaling words (``host_scale``, ``normalizer``,
``grad_scale``, prescaled gradient) are defined in ``csrc/problem.h``. Here we add what
torch.compile and autograd need: shape-only (fake) kernels, and a backward that consumes the
gradient the forward pass has already computed.

How the backward stays cheap and correct:

* The forward writes ``grad_input`` = d loss / d inputs, prescaled: already multiplied by the
  loss scale, so for ``loss.backward()`` the only thing left is a multiplication by
  ``grad_output * grad_scale``. ``scale_grad_`` reads that product on the device and skips the
  pass entirely when it is exactly 1; the buffer then *is* the gradient, and autograd hands it
  to ``.grad`` without a copy.
* float16 is the exception: its gradient is computed in the backward, once ``grad_output``
  (often a loss scale such as 65536) is known, with ``grad_output * grad_scale`` folded into the
  row weights, so that every element is one rounding of its float32 value. A gradient stored in
  float16 first and scaled after would be rounded twice, and a small one flushed to a few bits
  before the loss scale lifts it. (bfloat16 has float32's range, and the loss scales are powers
  of two: it keeps the saved gradient.)
* The buffer is handed out once. ``scale_grad_`` modifies it in place, so a second backward
  through the same graph (``retain_graph=True``) cannot reuse it: it recomputes a fresh one
  from the saved inputs with the same kernel (bit-identical), then scales that.
* Under a tracer (torch.compile, opcheck, any tensor subclass) the backward is functional
  instead: the saved buffer times ``grad_output * grad_scale``, which the compiler fuses; the
  in-place shortcut relies on eager autograd's one-shot hand-over, which a traced graph does
  not have.
"""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads the kernels and the schemas)

_OPS = torch.ops.focal_loss_ext
_SUM = 2  # the reduction code of "sum"
# Added to an operator's `reduction` code (0 none, 1 mean, 2 sum): the loss is returned in opmath
# (float32 for float16/bfloat16 inputs). The autocast kernels (csrc/autocast.cpp) add it;
# kOpmathLoss in csrc/problem.h.
OPMATH_LOSS = 4
# Name -> whether the loss has one value per row (the class dimension reduced) or per element.
_LOSS_OPS = {"sigmoid_focal_loss": False, "sigmoid_focal_loss_star": False, "softmax_focal_loss": True}
# Name -> the operator's overload, called directly: the packet's __call__ is one more Python frame.
LOSS_OVERLOADS = {name: getattr(_OPS, name).default for name in _LOSS_OPS}


def _opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _make_fake(per_row: bool):
    def fake(inputs, targets, alpha_per_class, weight, normalizer, *scalars):
        reduction, compute_grad = scalars[-2], scalars[-1]
        torch._check(inputs.dim() >= 1, lambda: "inputs must have shape (..., K)")
        torch._check(inputs.dtype.is_floating_point, lambda: f"inputs must be floating, got {inputs.dtype}")
        shape, target_shape = tuple(inputs.shape), tuple(targets.shape)
        if targets.dtype.is_floating_point:
            torch._check(
                target_shape == shape, lambda: f"floating targets must have inputs' shape {shape}, got {target_shape}"
            )
        else:
            torch._check(
                target_shape == shape[:-1], lambda: f"integer targets must have shape {shape[:-1]}, got {target_shape}"
            )
        operands = (("targets", targets), ("alpha", alpha_per_class), ("weight", weight), ("normalizer", normalizer))
        for name, t in operands:
            if t is not None:
                torch._check(
                    t.device == inputs.device,
                    lambda name=name, t=t: (
                        f"{name} must be on the same device as inputs ({inputs.device}), got {t.device}"
                    ),
                )
        opmath_loss = reduction >= 0 and bool(reduction & OPMATH_LOSS)
        if opmath_loss:
            reduction -= OPMATH_LOSS
        torch._check(reduction in (0, 1, 2), lambda: f"reduction must be 0, 1 or 2 (+ {OPMATH_LOSS}), got {reduction}")
        unreduced_shape = inputs.shape[:-1] if per_row else inputs.shape
        loss_dtype = _opmath_dtype(inputs.dtype) if opmath_loss else inputs.dtype
        loss = inputs.new_empty(unreduced_shape if reduction == 0 else (), dtype=loss_dtype)
        grad = inputs.new_empty(inputs.shape) if compute_grad else inputs.new_empty((0,))
        grad_scale = inputs.new_empty((), dtype=_opmath_dtype(inputs.dtype))
        return loss, grad, grad_scale

    return fake


@torch.library.register_fake("focal_loss_ext::scale_grad_")
def _scale_grad_fake(grad_input, grad_output, grad_scale):
    return None


def _setup_context(ctx, inputs, output):
    x, targets, alpha_per_class, weight, normalizer, *scalars, compute_grad = inputs
    ctx.num_inputs = len(inputs)
    _, grad_input, grad_scale = output
    ctx.set_materialize_grads(False)  # never build zero tensors for the grad_input/grad_scale outputs
    ctx.mark_non_differentiable(grad_input, grad_scale)
    ctx.scalars = tuple(scalars)
    # Eager tensors are exactly torch.Tensor; tracers hand us subclasses (fake, functional, ...).
    ctx.eager = type(grad_input) is torch.Tensor
    if ctx.eager:
        # Kept out of save_for_backward on purpose: scale_grad_ bumps its version counter, which
        # would make a second backward's unpacking of the saved inputs fail.
        ctx.grad_input = grad_input if compute_grad else None
        ctx.grad_scale = grad_scale
        ctx.save_for_backward(x, targets, alpha_per_class, weight, normalizer)
    else:
        ctx.save_for_backward(x, targets, alpha_per_class, weight, normalizer, grad_input, grad_scale)


def _autograd_kernel(op):
    """The operator's Autograd kernel: what ``torch.library.register_autograd`` would register,
    less its per-call walk over the schema to fill in defaulted arguments (``fill_defaults``),
    which costs about 60 us per call for a twelve-argument schema, three times the kernel at
    1 x 80. The schemas have no defaults, so the dispatcher hands over every argument and there
    is nothing to fill. Under a tracer this is the same Function-through-redispatch pattern, so
    torch.compile and opcheck see what they would with register_autograd."""
    below_autograd = torch._C._after_autograd_keyset

    class LossFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args_and_keyset):
            *args, keyset = args_and_keyset  # last, so that needs_input_grad[0] is the logits'
            with torch._C._AutoDispatchBelowAutograd():
                output = op.redispatch(keyset & below_autograd, *args)
            _setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, grad_loss, _grad_of_grad_input, _grad_of_grad_scale):
            return (*_backward(op, ctx, grad_loss), None)

    def kernel(keyset, *args):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return LossFunction.apply(*args, keyset)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & below_autograd, *args)

    return kernel


def _backward(op, ctx, grad_loss):
    """One path: take the gradient the forward saved (or recompute it), then scale it by
    grad_output * grad_scale -- in place in eager mode, functionally under a tracer."""
    nones = (None,) * (ctx.num_inputs - 1)
    if grad_loss is None or not ctx.needs_input_grad[0]:
        return (None,) + nones
    if ctx.eager:
        grad_input, grad_scale = ctx.grad_input, ctx.grad_scale
        ctx.grad_input = None  # handed out below; a later backward must not see it again
    else:
        x, *_, grad_input, grad_scale = ctx.saved_tensors
        if grad_input.shape != x.shape:  # the forward ran without the gradient
            grad_input = None
    if ctx.saved_tensors[0].dtype == torch.float16:
        return (_float16_grad(op, ctx, grad_loss, grad_scale),) + nones
    if grad_input is None:
        # The forward ran without the gradient, or a second backward through a retained graph.
        x, targets, alpha_per_class, weight, normalizer = ctx.saved_tensors[:5]
        _, grad_input, grad_scale = op(x, targets, alpha_per_class, weight, normalizer, *ctx.scalars, True)
    if ctx.eager:
        _OPS.scale_grad_(grad_input, grad_loss, grad_scale)
        return (grad_input,) + nones
    if 0 < grad_loss.dim() < grad_input.dim():  # a per-row loss
        grad_loss = grad_loss.unsqueeze(-1)
    factor = grad_loss.to(grad_scale.dtype) * grad_scale
    return ((grad_input.to(grad_scale.dtype) * factor).to(grad_input.dtype),) + nones


def _float16_grad(op, ctx, grad_loss, grad_scale):
    """The float16 gradient with grad_output * grad_scale folded in before its one rounding.

    A factor per row (a reduced loss, or the softmax loss's "none") joins the row weights of a
    "sum" pass whose loss scale is 1; a factor per element (the sigmoid losses' "none") cannot,
    so that case computes the gradient from a float32 copy of the logits and scales it there.
    """
    x, targets, alpha_per_class, weight, _ = ctx.saved_tensors[:5]
    *head, _host_scale, label_smoothing, ignore_index, _reduction = ctx.scalars
    scalars = (*head, 1.0, label_smoothing, ignore_index, _SUM, True)
    factor = grad_loss.to(grad_scale.dtype) * grad_scale
    rows_shape = x.shape[:-1]
    if factor.dim() < x.dim():
        row_weight = factor if weight is None else weight.reshape(rows_shape).to(factor.dtype) * factor
        _, grad, _ = op(x, targets, alpha_per_class, row_weight.expand(rows_shape), None, *scalars)
        # An ignored row's gradient is 0 whatever its weight, where autograd's product gives
        # 0 * grad_output: NaN for a NaN or infinite grad_output. Multiplying by 1 + 0 * factor
        # restores that and leaves every other bit (the sign of a zero included) as it is.
        one = (1 + factor * 0).to(grad.dtype)
        return grad.mul_(one.unsqueeze(-1) if one.dim() else one)
    # the kernel reads float targets in the logits' dtype: the float32 pass must see the same values
    targets32 = targets.to(x.dtype).float() if targets.is_floating_point() else targets
    _, grad32, _ = op(x.float(), targets32, alpha_per_class, weight, None, *scalars)
    return (grad32 * factor).to(x.dtype)


_LIBRARY = torch.library.Library("focal_loss_ext", "IMPL")  # kept alive: it owns the registrations
for _name, _per_row in _LOSS_OPS.items():
    torch.library.register_fake(f"focal_loss_ext::{_name}")(_make_fake(_per_row))
    _LIBRARY.impl(_name, _autograd_kernel(LOSS_OVERLOADS[_name]), "Autograd", with_keyset=True)
