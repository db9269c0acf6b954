"""The pure-PyTorch focal losses: the specification the fused kernels are tested against.

The sigmoid loss follows ``torchvision.ops.sigmoid_focal_loss`` term by term, FL* follows
fvcore's ``sigmoid_focal_loss_star`` (plus beta), and the softmax loss is written on top of a
log-softmax that keeps relative precision where ``F.log_softmax`` rounds to 0; each adds the
options of its fused counterpart in :mod:`focal_loss_ext.functional`. They run in whatever dtype
they are given; the tests call them in float64. Gradients come from autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "sigmoid_focal_loss_reference",
    "sigmoid_focal_loss_star_reference",
    "softmax_focal_loss_reference",
    "one_hot_targets",
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
