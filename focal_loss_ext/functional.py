"""The public functional API."""

from __future__ import annotations

import numbers

import torch

from . import _ops

__all__ = ["sigmoid_focal_loss"]

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float | torch.Tensor = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    weight: torch.Tensor | None = None,
    normalizer: float | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., 2017), loss and gradient in one fused pass.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` for every element of ``inputs``, with
    ``p = sigmoid(inputs)``; computed from the logits with log-sigmoid written as a softplus, so
    it is finite for every finite logit.

    Args:
        inputs: logits of shape ``(..., K)`` for K classes; float32, float64, float16 or
            bfloat16 (half precision is computed in float32 and stored in its own dtype).
        targets: either floating, the same shape as ``inputs``, with values in [0, 1] (soft
            targets allowed) -- then the result equals ``torchvision.ops.sigmoid_focal_loss``;
            or integer of shape ``inputs.shape[:-1]``, one label per row: ``c`` in ``[0, K)``
            makes class ``c`` positive and the others negative, ``K`` is background (all
            negative), ``ignore_index`` drops the row (zero loss, zero gradient). Any other
            label is an error (CPU: an exception; CUDA: a device-side assert).
        alpha: weight of the positive term; negatives get ``1 - alpha``. A float (negative
            disables the weighting, as in torchvision) or a 1-D tensor of K per-class values.
            Default 0.25.
        gamma: focusing exponent, ``>= 0``. Default 2.0; 0, 1 and 2 have fast paths.
        reduction: ``"none"`` (loss per element, shape of ``inputs``), ``"sum"``, or ``"mean"``
            (over all elements; with integer targets, over the elements of non-ignored rows).
            Default ``"none"``.
        weight: optional per-row weights of shape ``inputs.shape[:-1]``, multiplying each
            row's loss. Default None.
        normalizer: optional divisor of the loss (and its gradient) -- a number, or a 0-dim
            tensor on ``inputs``' device that is read on the device (no host synchronization),
            e.g. RetinaNet's count of positive anchors. It gets no gradient. Default None.
        label_smoothing: ``s`` in [0, 1): targets ``t`` become ``t (1 - s) + s / 2``. Default 0.
        ignore_index: the label that marks an ignored row (integer targets). Default -1.

    Returns:
        The loss: a 0-dim tensor for ``"sum"``/``"mean"``, else ``inputs``' shape; ``inputs``'
        dtype. Gradients flow to ``inputs`` only.
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
    if not isinstance(gamma, numbers.Real) or not gamma >= 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if not isinstance(label_smoothing, numbers.Real) or not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    for name, t in (("targets", targets), ("weight", weight), ("alpha", alpha), ("normalizer", normalizer)):
        if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} requires grad, but sigmoid_focal_loss only differentiates inputs; "
                             f"pass {name}.detach() (or use focal_loss_ext.reference for that gradient)")

    alpha_per_class = None
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() != 1:
            raise ValueError(f"alpha must be a float or a 1-D tensor of K = {inputs.shape[-1] if inputs.dim() else '?'} "
                             f"per-class values, got a tensor of shape {tuple(alpha.shape)}")
        alpha_per_class, alpha = alpha, -1.0
    elif not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a float or a 1-D tensor, got {type(alpha).__name__}")

    scale = 1.0
    normalizer_tensor = None
    if isinstance(normalizer, torch.Tensor):
        normalizer_tensor = normalizer
    elif normalizer is not None:
        if not isinstance(normalizer, numbers.Real) or normalizer == 0:
            raise ValueError(f"normalizer must be a nonzero number or a 0-dim tensor, got {normalizer!r}")
        scale = 1.0 / float(normalizer)

    compute_grad = torch.is_grad_enabled() and inputs.requires_grad
    loss, _, _ = _ops._OPS.sigmoid_focal_loss(
        inputs, targets, alpha_per_class, weight, normalizer_tensor, float(alpha), float(gamma), scale,
        float(label_smoothing), int(ignore_index), _REDUCTIONS[reduction], compute_grad)
    return loss
