"""The public functional API."""

from __future__ import annotations

import math
import numbers

import torch

from . import _ops

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_star", "softmax_focal_loss"]

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Stated once and appended to the three docstrings (end of file): autocast, and what a caller
# can get wrong.
_AUTOCAST_AND_RAISES = """
    Under ``torch.autocast`` (CPU or CUDA) the loss is computed from the float16 or bfloat16
    logits as given (in float32 arithmetic, without a float32 copy of them) and returned in
    float32 for every reduction, as PyTorch's own losses are, so that a sum above 65504 stays
    finite and a ``GradScaler``'s scale multiplies a float32 loss; the gradient keeps the logits'
    dtype. Outside autocast the loss has the logits' dtype.

    Raises:
        TypeError: an argument of the wrong type or dtype (``inputs`` not a floating tensor,
            ``targets`` neither floating nor integer, a non-floating ``alpha`` or ``weight``).
        ValueError: a value or shape out of range (shapes that do not match ``inputs``, tensors
            on another device, ``gamma``, ``label_smoothing``, ``reduction``, a zero
            ``normalizer``, an operand that requires grad).
        RuntimeError: an integer label outside the allowed range, which only the kernel sees
            (CPU: an exception; CUDA: a device-side assert). The operators under
            ``torch.ops.focal_loss_ext`` repeat every check above and raise RuntimeError.
"""


def _focal_loss(
    loss_fn,
    inputs,
    targets,
    alpha,
    gamma,
    reduction,
    weight,
    normalizer,
    label_smoothing,
    ignore_index,
    beta=None,
):
    """check -> alpha -> normalizer -> op, the same for the three losses.

    ``loss_fn`` is the public function, named as its operator; the softmax loss takes no scalar
    alpha and FL* takes ``beta``, and the operators' scalar arguments follow that
    (csrc/focal_loss.cpp).
    """
    name = loss_fn.__name__
    for arg, t in (("targets", targets), ("weight", weight), ("alpha", alpha), ("normalizer", normalizer)):
        if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{arg} requires grad, but {name} only differentiates inputs; "
                f"pass {arg}.detach() (or use focal_loss_ext.reference for that gradient)"
            )
    per_row = name == "softmax_focal_loss"
    _check_tensors(inputs, targets, weight, normalizer, per_row)
    _check_scalars(name, reduction, gamma, label_smoothing, beta)
    alpha_per_class, alpha_scalar = _alpha_args(name, alpha, inputs)
    host_scale, normalizer_tensor = _normalizer_args(normalizer)
    scalars = [] if per_row else [alpha_scalar]
    scalars.append(float(gamma))
    if beta is not None:
        scalars.append(float(beta))
    scalars += [host_scale, float(label_smoothing), int(ignore_index), _REDUCTIONS[reduction]]
    # float16 computes its gradient in the backward, where grad_output is known (_ops.py)
    compute_grad = torch.is_grad_enabled() and inputs.requires_grad and inputs.dtype != torch.float16
    loss, _, _ = _ops.LOSS_OVERLOADS[name](
        inputs, targets, alpha_per_class, weight, normalizer_tensor, *scalars, compute_grad
    )
    return loss


def _check_tensors(inputs, targets, weight, normalizer, per_row):
    for arg, t in (("inputs", inputs), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if inputs.dtype not in _FLOATING:
        raise TypeError(f"inputs must be a floating tensor (float32, float64, float16 or bfloat16), got {inputs.dtype}")
    if inputs.dim() == 0:
        raise ValueError("inputs must have shape (..., K) with K classes, got a 0-dim tensor")
    shape, rows_shape = tuple(inputs.shape), tuple(inputs.shape[:-1])
    if per_row and shape[-1] == 0:
        raise ValueError(f"inputs must have at least one class (a softmax over an empty last dimension), got {shape}")
    if targets.dtype.is_floating_point:
        if tuple(targets.shape) != shape:
            raise ValueError(
                f"floating targets must have the same shape as inputs {shape}, got {tuple(targets.shape)} "
                f"(integer targets take one label per row: shape {rows_shape})"
            )
    elif targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(
            "targets must be floating (same shape as inputs) or integer (one label per row, "
            f"shape inputs.shape[:-1]), got dtype {targets.dtype}"
        )
    elif tuple(targets.shape) != rows_shape:
        raise ValueError(
            f"integer targets must have shape inputs.shape[:-1] = {rows_shape} (one label per row), "
            f"got {tuple(targets.shape)}"
        )
    if weight is not None:
        _check_vector("weight", weight, inputs, math.prod(rows_shape), "one per row, shape inputs.shape[:-1]")
    if isinstance(normalizer, torch.Tensor):
        if normalizer.dim() != 0:
            raise ValueError(f"normalizer must be a number or a 0-dim tensor, got shape {tuple(normalizer.shape)}")
        if normalizer.dtype.is_complex or normalizer.dtype == torch.bool:
            raise TypeError(f"normalizer must be a real number, got dtype {normalizer.dtype}")
    for arg, t in (("targets", targets), ("normalizer", normalizer)):
        if isinstance(t, torch.Tensor) and t.device != inputs.device:
            raise ValueError(f"{arg} must be on the same device as inputs ({inputs.device}), got {t.device}")


def _check_vector(arg, t, inputs, length, meaning):
    """A per-row or per-class operand: a floating tensor of `length` elements on inputs' device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != inputs.device:
        raise ValueError(f"{arg} must be on the same device as inputs ({inputs.device}), got {t.device}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{arg} must be a floating tensor, got {t.dtype}")
    if t.numel() != length:
        raise ValueError(f"{arg} must have {length} elements ({meaning}), got shape {tuple(t.shape)}")


def _is_real(value) -> bool:
    # the common types first: an isinstance check against the numbers ABC costs a microsecond,
    # and a small call (1 x 80) makes several
    return type(value) in (float, int) or isinstance(value, numbers.Real)


def _check_scalars(name, reduction, gamma, label_smoothing, beta):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
    if name == "sigmoid_focal_loss_star":
        if not _is_real(gamma) or not gamma > 0 or not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
        if not _is_real(beta) or not math.isfinite(beta):
            raise ValueError(f"beta must be a finite number, got {beta!r}")
    elif not _is_real(gamma) or not gamma >= 0 or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if not _is_real(label_smoothing) or not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")


def _alpha_args(name, alpha, inputs):
    """(per-class alpha tensor or None, scalar alpha) for the op; the softmax loss has no scalar."""
    classes = inputs.shape[-1]
    if isinstance(alpha, torch.Tensor) and alpha.dim() == 1:
        _check_vector("alpha", alpha, inputs, classes, "one per class, K = inputs.shape[-1]")
        return alpha, -1.0
    if name == "softmax_focal_loss":
        if alpha is None:
            return None, -1.0
        raise ValueError(f"alpha must be None or a 1-D tensor of C = {classes} per-class weights, got {alpha!r:.60}")
    if isinstance(alpha, torch.Tensor):
        raise ValueError(
            f"alpha must be a float or a 1-D tensor of K = {classes} per-class values, "
            f"got a tensor of shape {tuple(alpha.shape)}"
        )
    if not _is_real(alpha):
        raise TypeError(f"alpha must be a float or a 1-D tensor, got {type(alpha).__name__}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite (negative disables it), got {alpha!r}")
    return None, float(alpha)


def _normalizer_args(normalizer):
    """(host_scale, normalizer tensor read on the device or None) for the op (csrc/problem.h)."""
    if isinstance(normalizer, torch.Tensor):
        return 1.0, normalizer
    if normalizer is not None:
        if not _is_real(normalizer) or normalizer == 0:
            raise ValueError(f"normalizer must be a nonzero number or a 0-dim tensor, got {normalizer!r}")
        return 1.0 / float(normalizer), None
    return 1.0, None


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
        dtype, or float32 under ``torch.autocast`` (see below). Gradients flow to ``inputs``
        only, in ``inputs``' dtype.
    """
    return _focal_loss(
        sigmoid_focal_loss, inputs, targets, alpha, gamma, reduction, weight, normalizer, label_smoothing, ignore_index
    )


def sigmoid_focal_loss_star(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float | torch.Tensor = 0.25,
    gamma: float = 4.0,
    reduction: str = "none",
    *,
    beta: float = 0.0,
    weight: torch.Tensor | None = None,
    normalizer: float | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -1,
) -> torch.Tensor:
    """FL*, the focal-loss variant of Lin et al. (2017, appendix A), loss and gradient fused.

    With ``x_t = x`` for a positive and ``-x`` for a negative, ``p*_t = sigmoid(gamma x_t + beta)``
    and ``FL* = -alpha_t log(p*_t) / gamma``, computed as a softplus of the logit. A soft target
    ``t`` in (0, 1) gives ``t FL*(positive) + (1 - t) FL*(negative)``.

    The positional order ``(inputs, targets, alpha, gamma, reduction)`` is that of
    :func:`sigmoid_focal_loss`, torchvision and ``fvcore.nn.sigmoid_focal_loss_star``. Compared
    with fvcore: fvcore has no ``beta`` (it is ours with ``beta=0``) and its defaults are
    ``alpha=-1, gamma=1``, and for soft targets it scales the logit by ``2t - 1`` instead of mixing the two
    hard cases; the results agree for targets in {0, 1}.

    Args:
        inputs: logits of shape ``(..., K)``; float32, float64, float16 or bfloat16.
        targets: floating of ``inputs``' shape with values in [0, 1], or integer of shape
            ``inputs.shape[:-1]`` (one label per row: ``c`` in ``[0, K)`` positive, ``K``
            background, ``ignore_index`` ignored), as in :func:`sigmoid_focal_loss`.
        alpha: weight of the positive term, negatives get ``1 - alpha``; a float (negative
            disables it) or a 1-D tensor of K per-class values. Default 0.25.
        gamma: the sharpness, ``> 0`` (the loss is divided by it). Default 4.0.
        reduction: ``"none"`` (``inputs``' shape), ``"sum"`` or ``"mean"`` (as in
            :func:`sigmoid_focal_loss`). Default ``"none"``.
        beta: the shift of the scaled logit; keyword-only. Default 0.0.
        weight, normalizer, label_smoothing, ignore_index: as in :func:`sigmoid_focal_loss`.

    Returns:
        The loss, 0-dim for ``"sum"``/``"mean"``, else ``inputs``' shape; ``inputs``' dtype, or
        float32 under ``torch.autocast`` (see below).
    """
    return _focal_loss(
        sigmoid_focal_loss_star,
        inputs,
        targets,
        alpha,
        gamma,
        reduction,
        weight,
        normalizer,
        label_smoothing,
        ignore_index,
        beta=beta,
    )


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
        dtype, or float32 under ``torch.autocast`` (see below). Gradients flow to ``inputs``
        only, in ``inputs``' dtype.
    """
    return _focal_loss(
        softmax_focal_loss, inputs, targets, alpha, gamma, reduction, weight, normalizer, label_smoothing, ignore_index
    )


for _loss in (sigmoid_focal_loss, sigmoid_focal_loss_star, softmax_focal_loss):
    _loss.__doc__ = _loss.__doc__.rstrip() + "\n" + _AUTOCAST_AND_RAISES
