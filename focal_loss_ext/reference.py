"""The pure-PyTorch sigmoid focal loss: the specification the fused kernels are tested against.

It follows ``torchvision.ops.sigmoid_focal_loss`` term by term and adds the options of
:func:`focal_loss_ext.sigmoid_focal_loss` (integer labels, per-class alpha, per-row weight,
normalizer, label smoothing). It runs in whatever dtype it is given; the tests call it in
float64. Gradients come from autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sigmoid_focal_loss_reference", "one_hot_targets"]


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
    keep = None
    if targets.is_floating_point():
        t = targets.to(inputs.dtype)
    else:
        t, keep = one_hot_targets(targets, inputs.shape[-1], ignore_index, inputs.dtype)
    t = t * (1 - label_smoothing) + label_smoothing / 2

    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if isinstance(alpha, torch.Tensor):
        a = alpha.to(inputs.dtype)
        loss = (a * t + (1 - a) * (1 - t)) * loss
    elif alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if weight is not None:
        loss = loss * weight.to(inputs.dtype).unsqueeze(-1)
    if keep is not None:
        loss = torch.where(keep.unsqueeze(-1), loss, torch.zeros_like(loss))

    if reduction == "mean":
        if keep is not None:
            loss = loss.sum() / (keep.sum() * inputs.shape[-1])
        else:
            loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    elif reduction != "none":
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if normalizer is not None:
        loss = loss / normalizer
    return loss
