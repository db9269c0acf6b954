"""The public functional API."""

from __future__ import annotations

import math
import numbers

import torch

from . import _ops

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_star", "softmax_focal_loss"]

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _check_args(fn_name, inputs, targets, reduction, label_smoothing, gamma, gamma_min_exclusive=False, **tensors):
    """The argument checks shared by the three losses (the C++ op repeats the ones it needs)."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
    if gamma_min_exclusive:
        if not isinstance(gamma, numbers.Real) or not gamma > 0 or not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    elif not isinstance(gamma, numbers.Real) or not gamma >= 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if not isinstance(label_smoothing, numbers.Real) or not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    for name, t in dict(targets=targets, **tensors).items():
        if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{name} requires grad, but {fn_name} only differentiates inputs; "
                f"pass {name}.detach() (or use focal_loss_ext.reference for that gradient)"
            )


def _alpha_args(alpha, inputs):
    """(per-class alpha tensor or None, scalar alpha) for the op."""
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() != 1:
            classes = inputs.shape[-1] if inputs.dim() else "?"
            raise ValueError(
                f"alpha must be a float or a 1-D tensor of K = {classes} per-class values, "
                f"got a tensor of shape {tuple(alpha.shape)}"
            )
        return alpha, -1.0
    if not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a float or a 1-D tensor, got {type(alpha).__name__}")
    return None, float(alpha)


def _normalizer_args(normalizer):
    """(host_scale, normalizer tensor read on the device or None) for the op (csrc/problem.h)."""
    if isinstance(normalizer, torch.Tensor):
        return 1.0, normalizer
    if normalizer is not None:
        if not isinstance(normalizer, numbers.Real) or normalizer == 0:
            raise ValueError(f"normalizer must be a nonzero number or a 0-dim tensor, got {normalizer!r}")
        return 1.0 / float(normalizer), None
    return 1.0, None


def _compute_grad(inputs):
    return torch.is_grad_enabled() and inputs.requires_grad


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
    _check_args(
        "sigmoid_focal_loss",
        inputs,
        targets,
        reduction,
        label_smoothing,
        gamma,
        weight=weight,
        alpha=alpha,
        normalizer=normalizer,
    )
    alpha_per_class, alpha = _alpha_args(alpha, inputs)
    host_scale, normalizer_tensor = _normalizer_args(normalizer)
    loss, _, _ = _ops._OPS.sigmoid_focal_loss(
        inputs,
        targets,
        alpha_per_class,
        weight,
        normalizer_tensor,
        alpha,
        float(gamma),
        host_scale,
        float(label_smoothing),
        int(ignore_index),
        _REDUCTIONS[reduction],
        _compute_grad(inputs),
    )
    return loss


def sigmoid_focal_loss_star(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 4.0,
    beta: float = 0.0,
    alpha: float | torch.Tensor = 0.25,
    reduction: str = "none",
    *,
    weight: torch.Tensor | None = None,
    normalizer: float | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -1,
) -> torch.Tensor:
    """FL*, the focal-loss variant of Lin et al. (2017, appendix A), loss and gradient fused.

    With ``x_t = x`` for a positive and ``-x`` for a negative, ``p*_t = sigmoid(gamma x_t + beta)``
    and ``FL* = -alpha_t log(p*_t) / gamma``, computed as a softplus of the logit. A soft target
    ``t`` in (0, 1) gives ``t FL*(positive) + (1 - t) FL*(negative)``.

    Compared with ``fvcore.nn.sigmoid_focal_loss_star``: fvcore has no ``beta`` (it is ours with
    ``beta=0``), and for soft targets it scales the logit by ``2t - 1`` instead of mixing the two
    hard cases; the results agree for targets in {0, 1}.

    Args:
        inputs: logits of shape ``(..., K)``; float32, float64, float16 or bfloat16.
        targets: floating of ``inputs``' shape with values in [0, 1], or integer of shape
            ``inputs.shape[:-1]`` (one label per row: ``c`` in ``[0, K)`` positive, ``K``
            background, ``ignore_index`` ignored), as in :func:`sigmoid_focal_loss`.
        gamma: the sharpness, ``> 0`` (the loss is divided by it). Default 4.0.
        beta: the shift of the scaled logit. Default 0.0.
        alpha: weight of the positive term, negatives get ``1 - alpha``; a float (negative
            disables it) or a 1-D tensor of K per-class values. Default 0.25.
        reduction: ``"none"`` (``inputs``' shape), ``"sum"`` or ``"mean"`` (as in
            :func:`sigmoid_focal_loss`). Default ``"none"``.
        weight, normalizer, label_smoothing, ignore_index: as in :func:`sigmoid_focal_loss`.

    Returns:
        The loss, 0-dim for ``"sum"``/``"mean"``, else ``inputs``' shape; ``inputs``' dtype.
    """
    _check_args(
        "sigmoid_focal_loss_star",
        inputs,
        targets,
        reduction,
        label_smoothing,
        gamma,
        gamma_min_exclusive=True,
        weight=weight,
        alpha=alpha,
        normalizer=normalizer,
    )
    if not isinstance(beta, numbers.Real) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta!r}")
    alpha_per_class, alpha = _alpha_args(alpha, inputs)
    host_scale, normalizer_tensor = _normalizer_args(normalizer)
    loss, _, _ = _ops._OPS.sigmoid_focal_loss_star(
        inputs,
        targets,
        alpha_per_class,
        weight,
        normalizer_tensor,
        alpha,
        float(gamma),
        float(beta),
        host_scale,
        float(label_smoothing),
        int(ignore_index),
        _REDUCTIONS[reduction],
        _compute_grad(inputs),
    )
    return loss


def softmax_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: torch.Tensor | None = None,
    gamma: float = 2.0,
    reduction: str = "mean",
    *,
    weight: torch.Tensor | None = None,
    normalizer: float | torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Multi-class (softmax) focal loss, loss and gradient fused in one pass per row.

    ``p = softmax(inputs)`` over the last dimension and, for a target class ``y``,
    ``FL = -alpha[y] (1 - p_y)^gamma log p_y`` with ``log p_y`` from a stable log-softmax. For a
    target distribution ``q`` (class probabilities, or label smoothing) the loss of a row is
    ``-sum_c alpha[c] q_c (1 - p_c)^gamma log p_c``. With ``gamma=0`` and ``alpha=None`` this is
    exactly ``F.cross_entropy`` (class dimension last), label smoothing included.

    Args:
        inputs: logits of shape ``(N, C)`` or ``(..., C)``; float32, float64, float16 or
            bfloat16 (half precision is computed in float32).
        targets: integer class indices of shape ``inputs.shape[:-1]``, each in ``[0, C)`` or
            ``ignore_index`` (the row is skipped: zero loss and gradient; any other value is an
            error); or floating class probabilities of ``inputs``' shape.
        alpha: None (no class weighting) or a 1-D tensor of C per-class weights. Default None.
        gamma: focusing exponent, ``>= 0``. Default 2.0; 0, 1 and 2 have fast paths.
        reduction: ``"none"`` (one loss per row, shape ``inputs.shape[:-1]``), ``"sum"``, or
            ``"mean"`` (over rows; with class indices, over the non-ignored rows, as
            ``F.cross_entropy`` without ``weight``). Default ``"mean"``.
        weight: optional per-row weights of shape ``inputs.shape[:-1]``, multiplying each row's
            loss (not ``F.cross_entropy``'s per-class ``weight``: use ``alpha`` for that; the
            mean still divides by the number of rows). Default None.
        normalizer: optional divisor of the loss: a number, or a 0-dim tensor read on the
            device. Default None.
        ignore_index: the class index that marks an ignored row. Default -100.
        label_smoothing: ``s`` in [0, 1): the target distribution becomes ``q (1 - s) + s / C``,
            as in ``F.cross_entropy``. Default 0.

    Returns:
        The loss: 0-dim for ``"sum"``/``"mean"``, else shape ``inputs.shape[:-1]``; ``inputs``'
        dtype. Gradients flow to ``inputs`` only.
    """
    _check_args(
        "softmax_focal_loss",
        inputs,
        targets,
        reduction,
        label_smoothing,
        gamma,
        weight=weight,
        alpha=alpha,
        normalizer=normalizer,
    )
    if alpha is not None and not (isinstance(alpha, torch.Tensor) and alpha.dim() == 1):
        raise ValueError(
            f"alpha must be None or a 1-D tensor of C = {inputs.shape[-1] if inputs.dim() else '?'} "
            f"per-class weights, got {alpha!r:.60}"
        )
    host_scale, normalizer_tensor = _normalizer_args(normalizer)
    loss, _, _ = _ops._OPS.softmax_focal_loss(
        inputs,
        targets,
        alpha,
        weight,
        normalizer_tensor,
        float(gamma),
        host_scale,
        float(label_smoothing),
        int(ignore_index),
        _REDUCTIONS[reduction],
        _compute_grad(inputs),
    )
    return loss
