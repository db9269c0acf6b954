"""The detector's losses. The focal loss is injected so one model trains with either
focal_loss_ext's fused op or torchvision's reference, and a test compares them.

A focal loss here is any callable (logits (B, N, K), labels (B, N) int64 in the
`matcher` convention, normalizer 0-dim tensor) -> 0-dim loss, summed over the
non-ignored anchors and divided by the normalizer. Neither implementation reads
a value back to the host, so a training step never waits on the device.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import Tensor

from detector.box_coder import BoxCoder

FocalLoss = Callable[[Tensor, Tensor, Tensor], Tensor]


def fused_focal_loss(alpha: float = 0.25, gamma: float = 2.0) -> FocalLoss:
    """focal_loss_ext.sigmoid_focal_loss fed the integer labels directly."""
    try:
        from focal_loss_ext import sigmoid_focal_loss
    except ImportError as error:
        raise ImportError(
            "--loss fused needs the focal_loss_ext extension; build it (pip install -e .) "
            "or train with --loss torchvision"
        ) from error

    def loss(logits: Tensor, labels: Tensor, normalizer: Tensor) -> Tensor:
        return sigmoid_focal_loss(
            logits.float(), labels, alpha=alpha, gamma=gamma, reduction="sum", normalizer=normalizer
        )

    return loss


def torchvision_focal_loss(alpha: float = 0.25, gamma: float = 2.0) -> FocalLoss:
    """torchvision.ops.sigmoid_focal_loss on one-hot targets, ignored anchors masked out.

    The mask multiplies rather than indexes: boolean indexing would need the
    number of kept anchors on the host.
    """

    def loss(logits: Tensor, labels: Tensor, normalizer: Tensor) -> Tensor:
        num_classes = logits.shape[-1]
        # Background (K) becomes the all-zero row once the extra column is dropped.
        one_hot = F.one_hot(labels.clamp(min=0), num_classes + 1)[..., :num_classes].to(torch.float32)
        per_element = torchvision.ops.sigmoid_focal_loss(
            logits.float(), one_hot, alpha=alpha, gamma=gamma, reduction="none"
        )
        keep = (labels >= 0).unsqueeze(-1).to(per_element.dtype)
        return (per_element * keep).sum() / normalizer

    return loss


def build_focal_loss(name: str, alpha: float = 0.25, gamma: float = 2.0) -> FocalLoss:
    if name == "fused":
        return fused_focal_loss(alpha, gamma)
    if name == "torchvision":
        return torchvision_focal_loss(alpha, gamma)
    raise ValueError(f"loss must be 'fused' or 'torchvision', got {name!r}")


def positive_normalizer(num_positive: Tensor) -> Tensor:
    """The positive count to divide by: averaged over processes under DDP, at least 1.

    DDP averages gradients over processes, so dividing each process's sum by the
    mean count gives every positive anchor of the global batch the same weight.
    """
    count = num_positive.to(torch.float32)
    if dist.is_available() and dist.is_initialized():
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1.0)


def box_regression_loss(
    kind: str,
    deltas: Tensor,
    anchors: Tensor,
    matched_boxes: Tensor,
    positive: Tensor,
    normalizer: Tensor,
    box_coder: BoxCoder,
    beta: float = 0.1,
) -> Tensor:
    """Sum over positive anchors of the box loss, divided by the normalizer.

    deltas: (B, N, 4) predicted; anchors: (N, 4); matched_boxes: (B, N, 4) xyxy of
    each anchor's object (anything where the anchor is not positive); positive: (B, N) bool.
    """
    deltas = deltas.float()
    anchors = anchors.expand_as(deltas)
    # Non-positive anchors may hold a dummy box; their own anchor keeps every term finite.
    safe_boxes = torch.where(positive.unsqueeze(-1), matched_boxes, anchors)
    if kind == "giou":
        predicted = box_coder.decode(anchors, deltas)
        per_anchor = torchvision.ops.generalized_box_iou_loss(predicted, safe_boxes, reduction="none")
    else:
        targets = box_coder.encode(anchors, safe_boxes)
        if kind == "smooth_l1":
            per_anchor = F.smooth_l1_loss(deltas, targets, beta=beta, reduction="none").sum(-1)
        elif kind == "l1":
            per_anchor = (deltas - targets).abs().sum(-1)
        else:
            raise ValueError(f"box_loss must be 'smooth_l1', 'l1' or 'giou', got {kind!r}")
    return (per_anchor * positive.to(per_anchor.dtype)).sum() / normalizer
