"""The pure-PyTorch focal losses: the specification the fused kernels are tested against.

The sigmoid loss follows ``torchvision.ops.sigmoid_focal_loss`` term by term, FL* follows
fvcore's ``sigmoid_focal_loss_star`` (plus beta), and the softmax loss is written on top of a
log-softmax that keeps relative precision where ``F.log_softmax`` rounds to 0; each adds the
options of its fused counterpart in :mod:`focal_loss_ext.functional`. They run in whatever dtype
they are given; the tests call them in float64. Gradients come from autograd.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = [
    "sigmoid_focal_loss_reference",
    "sigmoid_focal_loss_star_reference",
    "softmax_focal_loss_reference",
    "one_hot_targets",
    "quality_focal_loss_reference",
    "varifocal_loss_reference",
    "gaussian_focal_loss_reference",
    "asymmetric_loss_reference",
]


def one_hot_targets(labels: torch.Tensor, num_classes: int, ignore_index: int = -1, dtype=torch.float32):
    """Labels (class c in [0, K), K = background, ``ignore_index`` = ignored) as float targets.

    Returns ``(targets, keep)``: one-hot targets of shape ``labels.shape + (K,)`` (all zeros for
    background and ignored rows) and the boolean mask of rows that are not ignored.
    """
    keep = labels != ignore_index
    safe = torch.where(keep, labels, torch.full_like(labels, num_classes))
    targets = F.one_hot(safe.long(), num_classes + 1)[..., :num_classes].to(dtype)
    return targets, keep


def sigmoid_focal_loss_reference(
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
    """Same arguments and meaning as :func:`focal_loss_ext.sigmoid_focal_loss`."""
    t, keep = _sigmoid_targets(inputs, targets, label_smoothing, ignore_index)
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    return _weight_and_reduce(loss, t, keep, alpha, weight, reduction, normalizer)


def sigmoid_focal_loss_star_reference(
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
    """Same arguments and meaning as :func:`focal_loss_ext.sigmoid_focal_loss_star`."""
    t, keep = _sigmoid_targets(inputs, targets, label_smoothing, ignore_index)
    positive = -F.logsigmoid(gamma * inputs + beta) / gamma
    negative = -F.logsigmoid(-(gamma * inputs) + beta) / gamma
    loss = t * positive + (1 - t) * negative
    return _weight_and_reduce(loss, t, keep, alpha, weight, reduction, normalizer)


def softmax_focal_loss_reference(
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
    """Same arguments and meaning as :func:`focal_loss_ext.softmax_focal_loss`."""
    classes = inputs.shape[-1]
    keep = None
    if targets.is_floating_point():
        q = targets.to(inputs.dtype)
    else:
        keep = targets != ignore_index
        q = F.one_hot(torch.where(keep, targets, 0).long(), classes).to(inputs.dtype)
    q = q * (1 - label_smoothing) + label_smoothing / classes
    if alpha is not None:
        q = q * alpha.to(inputs.dtype)
    log_p = _log_softmax(inputs)
    # 1 - p, kept off 0 so that (1 - p)^gamma has a finite derivative for gamma < 1 (where p = 1,
    # e.g. a single class, the term and its gradient are 0 either way)
    one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)
    loss = -(q * one_minus_p**gamma * log_p).sum(-1)
    if weight is not None:
        loss = loss * weight.to(inputs.dtype)
    if keep is not None:
        loss = torch.where(keep, loss, torch.zeros_like(loss))
    return _reduce(loss, reduction, keep.sum() if keep is not None else loss.numel(), normalizer)


def _log_softmax(z):
    """log p_c = (z_c - m) - log1p(R), m the row's max and R the sum of exp(z_j - m) over j other
    than the max's index: F.log_softmax's value, but with relative precision when one class
    dominates, where log(1 + R) would round to 0 (as in csrc/focal_loss_math.h)."""
    m, index = z.max(dim=-1, keepdim=True)
    shifted = z - m
    rest = shifted.exp().scatter(-1, index, 0.0).sum(-1, keepdim=True)
    return shifted - torch.log1p(rest)


def _sigmoid_targets(inputs, targets, label_smoothing, ignore_index):
    keep = None
    if targets.is_floating_point():
        t = targets.to(inputs.dtype)
    else:
        t, keep = one_hot_targets(targets, inputs.shape[-1], ignore_index, inputs.dtype)
    return t * (1 - label_smoothing) + label_smoothing / 2, keep


def _reduce(loss, reduction, count, normalizer):
    if reduction == "mean":
        loss = loss.sum() / count
    elif reduction == "sum":
        loss = loss.sum()
    elif reduction != "none":
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if normalizer is not None:
        loss = loss / normalizer
    return loss


def _weight_and_reduce(loss, t, keep, alpha, weight, reduction, normalizer):
    """alpha_t, the per-row weight, the ignored rows and the reduction of a sigmoid-type loss."""
    if isinstance(alpha, torch.Tensor):
        a = alpha.to(loss.dtype)
        loss = (a * t + (1 - a) * (1 - t)) * loss
    elif alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if weight is not None:
        loss = loss * weight.to(loss.dtype).unsqueeze(-1)
    if keep is not None:
        loss = torch.where(keep.unsqueeze(-1), loss, torch.zeros_like(loss))
    count = keep.sum() * loss.shape[-1] if keep is not None else loss.numel()
    return _reduce(loss, reduction, count, normalizer)


# ---------------------------------------------------------------------------------------------
# The soft-target descendants of the sigmoid focal loss: quality focal loss (GFL), varifocal loss
# (VarifocalNet), the Gaussian focal loss of heatmap detectors (CornerNet, CenterNet) and the
# asymmetric loss (ASL). Each is element-wise in the logit x, a soft target q in [0, 1] and the
# element's kind; everything is computed from x, with
#   s_pos = softplus(-x) = -log p,   s_neg = softplus(x) = -log(1 - p),   p = sigmoid(x),
# and every power of p or 1 - p taken as exp(-e * s), so that loss and autograd gradient are finite
# and exact for every finite x (no probability is clamped or passed to a log).


def quality_focal_loss_reference(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor | None = None,
    beta: float = 2.0,
    reduction: str = "none",
    *,
    weight: torch.Tensor | None = None,
    normalizer: float | torch.Tensor | None = None,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Quality focal loss (Li et al., 2020, GFL): ``BCE(x, q) |p - q|^beta`` per element.

    ``targets``: soft targets q of ``inputs``' shape, or integer labels of shape
    ``inputs.shape[:-1]`` (class c in [0, K), K = background, ``ignore_index`` skipped) with
    optional ``scores`` of the labels' shape, the quality (e.g. IoU) of each row's labelled class:
    q = score there and 0 elsewhere (1 there without scores). The modulating factor is
    differentiated, with its derivative at p == q taken as 0 (autograd's value for beta >= 1).
    ``reduction`` "mean" averages over the elements of non-ignored rows.
    """
    _check_family(inputs, targets, scores, weight, beta=beta)
    t, keep = _sigmoid_targets(inputs, targets, 0.0, ignore_index)
    q = _with_scores(t, scores)
    s_pos, s_neg = _softplus_pair(inputs)
    loss = (q * s_pos + (1 - q) * s_neg) * _abs_diff_pow(inputs, q, beta)
    return _weight_and_reduce(loss, t, keep, -1.0, weight, reduction, normalizer)


def varifocal_loss_reference(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor | None = None,
    alpha: float = 0.75,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    iou_weighted: bool = True,
    detach_weight: bool = False,
    weight: torch.Tensor | None = None,
    normalizer: float | torch.Tensor | None = None,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Varifocal loss (Zhang et al., 2021, VarifocalNet): ``BCE(x, q) w`` per element.

    ``w = q`` on a positive (``1`` if not ``iou_weighted``) and ``w = alpha |p - q|^gamma`` on a
    negative. A positive is an element with q > 0 (floating targets) or the labelled class of a
    row (integer labels; q = its score, 1 without ``scores``), so a labelled class with score 0
    weighs 0 when ``iou_weighted``. ``detach_weight=True`` takes no gradient through w (the
    RT-DETR / D-FINE form). Targets, ``scores``, ``ignore_index`` and the reductions as in
    :func:`quality_focal_loss_reference`.
    """
    _check_family(inputs, targets, scores, weight, alpha=alpha, gamma=gamma)
    t, keep = _sigmoid_targets(inputs, targets, 0.0, ignore_index)
    q = _with_scores(t, scores)
    s_pos, s_neg = _softplus_pair(inputs)
    w = torch.where(t > 0, q if iou_weighted else torch.ones_like(q), alpha * _abs_diff_pow(inputs, q, gamma))
    if detach_weight:
        w = w.detach()
    loss = (q * s_pos + (1 - q) * s_neg) * w
    return _weight_and_reduce(loss, t, keep, -1.0, weight, reduction, normalizer)


def gaussian_focal_loss_reference(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 2.0,
    gamma: float = 4.0,
    reduction: str = "none",
    *,
    weight: torch.Tensor | None = None,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Gaussian (penalty-reduced) focal loss of heatmap detectors (CornerNet, CenterNet).

    ``targets`` is the heatmap y, floating, of ``inputs``' shape (any shape, e.g. (B, C, H, W)):
    ``(1 - p)^alpha (-log p)`` where y == 1 and ``(1 - y)^gamma p^alpha (-log(1 - p))`` elsewhere.
    ``weight`` is per row (shape ``inputs.shape[:-1]``), "mean" averages over all elements; for
    CenterNet's normalisation pass ``reduction="sum"`` and the number of peaks as ``normalizer``.
    """
    _check_family(inputs, targets, None, weight, heatmap=True, alpha=alpha, gamma=gamma)
    y = targets.to(inputs.dtype)
    s_pos, s_neg = _softplus_pair(inputs)
    positive = torch.exp(-alpha * s_neg) * s_pos
    negative = (1 - y) ** gamma * torch.exp(-alpha * s_pos) * s_neg
    loss = torch.where(y == 1, positive, negative)
    return _weight_and_reduce(loss, y, None, -1.0, weight, reduction, normalizer)


def asymmetric_loss_reference(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    reduction: str = "none",
    *,
    weight: torch.Tensor | None = None,
    normalizer: float | torch.Tensor | None = None,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al., 2021, ASL) for multi-label classification.

    Positive ``(1 - p)^gamma_pos (-log p)``; negative ``p_m^gamma_neg (-log(1 - p_m))`` with the
    shifted probability ``p_m = max(p - clip, 0)``, ``1 - p_m = sigmoid(-x) + clip`` (no
    cancellation). A soft target q mixes the two, ``q positive + (1 - q) negative`` (timm instead
    interpolates the exponent; the two agree for targets in {0, 1}). Integer labels,
    ``ignore_index`` and the reductions as in :func:`quality_focal_loss_reference`.
    """
    _check_family(inputs, targets, None, weight, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
    if clip >= 1:
        raise ValueError(f"clip must be in [0, 1), got {clip!r}")
    t, keep = _sigmoid_targets(inputs, targets, 0.0, ignore_index)
    s_pos, s_neg = _softplus_pair(inputs)
    positive = torch.exp(-gamma_pos * s_neg) * s_pos
    if clip > 0:
        p_m = (1 - clip) - torch.sigmoid(-inputs)  # p - clip, its gradient exact where p -> 1
        shifted = p_m > 0  # elsewhere the negative term is 0
        p_m = torch.where(shifted, p_m, 1.0)
        log_not_p_m = torch.log(torch.where(shifted, torch.sigmoid(-inputs) + clip, 1.0))  # log(1 - p_m)
        negative = torch.where(shifted, -(p_m**gamma_neg) * log_not_p_m, 0.0)
    else:
        negative = torch.exp(-gamma_neg * s_pos) * s_neg
    loss = t * positive + (1 - t) * negative
    return _weight_and_reduce(loss, t, keep, -1.0, weight, reduction, normalizer)


def _softplus_pair(x):
    """(softplus(-x), softplus(x)) = (-log p, -log(1 - p)), exact with exact gradients for every x."""
    return -F.logsigmoid(x), -F.logsigmoid(-x)


def _with_scores(t, scores):
    """Soft targets from one-hot labels and each row's score (the labelled class's quality)."""
    return t if scores is None else t * scores.to(t.dtype).unsqueeze(-1)


def _abs_diff_pow(x, q, exponent):
    """``|sigmoid(x) - q|^exponent``, its autograd gradient finite and exact for every finite x.

    Where q is 0 or 1 the power is ``p^e = exp(-e softplus(-x))`` or ``(1 - p)^e =
    exp(-e softplus(x))``, exact even where p or 1 - p underflows. For a soft q it is taken of
    ``d = p - q``, and at d == 0 its derivative is 0 (for exponent < 1 the one-sided derivatives
    there are infinite).
    """
    if exponent == 0:
        return torch.ones_like(x)
    s_pos, s_neg = _softplus_pair(x)
    d = torch.sigmoid(x) - q
    soft = (q > 0) & (q < 1)
    at_zero = soft & (d == 0)
    log_abs_d = torch.log(torch.where(soft & ~at_zero, d.abs(), 1.0))
    log_abs_d = torch.where(q == 0, -s_pos, torch.where(q == 1, -s_neg, log_abs_d))
    return torch.where(at_zero, 0.0, torch.exp(exponent * log_abs_d))


def _check_family(inputs, targets, scores, weight, heatmap=False, **nonnegative):
    """The argument checks of the four losses above, each error naming its argument."""
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating tensor, got {getattr(inputs, 'dtype', type(inputs).__name__)}")
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(
            "targets must be a floating tensor of inputs' shape or integer labels of shape inputs.shape[:-1], "
            f"got {getattr(targets, 'dtype', type(targets).__name__)}"
        )
    shape, rows_shape = tuple(inputs.shape), tuple(inputs.shape[:-1])
    if targets.is_floating_point():
        if tuple(targets.shape) != shape:
            raise ValueError(f"floating targets must have inputs' shape {shape}, got {tuple(targets.shape)}")
    elif heatmap:
        raise TypeError(f"targets must be a floating heatmap of inputs' shape, got dtype {targets.dtype}")
    elif inputs.dim() == 0 or tuple(targets.shape) != rows_shape:
        raise ValueError(
            f"integer targets must have shape inputs.shape[:-1] = {rows_shape}, got {tuple(targets.shape)}"
        )
    if scores is not None:
        if targets.is_floating_point():
            raise ValueError("scores requires integer targets (labels); floating targets already are the soft target")
        if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
            raise TypeError(f"scores must be a floating tensor, got {getattr(scores, 'dtype', type(scores).__name__)}")
        if tuple(scores.shape) != tuple(targets.shape):
            raise ValueError(f"scores must have the labels' shape {tuple(targets.shape)}, got {tuple(scores.shape)}")
        if not ((scores >= 0) & (scores <= 1)).all():
            raise ValueError("scores must lie in [0, 1]")
    if weight is not None and (not isinstance(weight, torch.Tensor) or tuple(weight.shape) != rows_shape):
        raise ValueError(f"weight must be a tensor of shape inputs.shape[:-1] = {rows_shape} (one per row)")
    for arg, value in nonnegative.items():
        if not isinstance(value, numbers.Real):
            raise TypeError(f"{arg} must be a number, got {type(value).__name__}")
        if not 0 <= value < math.inf:
            raise ValueError(f"{arg} must be a finite number >= 0, got {value!r}")
