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


_OVERLAPS: dict[tuple[bytes, float], bool] = {}


def _any_overlap_above(boxes: Tensor, threshold: float) -> bool:
    """Whether NMS at `threshold` could drop any of `boxes`; cached, since the anchors repeat every step.

    RetinaNet's anchors never overlap above 0.7 (scales 2^(1/3) apart, aspect ratios 2 apart),
    and NMS over them costs more than the rest of a CPU training step.
    """
    key = (boxes.detach().cpu().numpy().tobytes(), threshold)
    if key not in _OVERLAPS:
        if len(_OVERLAPS) > 8:
            _OVERLAPS.clear()
        iou = torchvision.ops.box_iou(boxes.float(), boxes.float()).fill_diagonal_(0)
        _OVERLAPS[key] = bool((iou > threshold).any())
    return _OVERLAPS[key]


@torch.no_grad()
def ohem_selection(
    anchor_loss: Tensor,
    labels: Tensor,
    boxes: Tensor,
    num_classes: int,
    num_keep: int,
    negatives_per_positive: float = 0.0,
    nms_threshold: float = 0.7,
) -> Tensor:
    """Online hard example mining (Shrivastava et al., 2016) as RetinaNet's paper tests it.

    Per image: the non-ignored anchors, scored by `anchor_loss` (B, N), go through NMS
    over `boxes` (N, 4) at `nms_threshold`, and the `num_keep` highest-loss survivors are
    kept. With `negatives_per_positive` = r > 0 (SSD's variant, r = 3 for 1:3) the
    hardest positives, at most num_keep / (1 + r), are kept with at most r negatives for
    each of them, the hardest first, and never more than num_keep in all. Labels follow
    `detector.matcher` (num_classes = background, -1 = ignored). Returns (B, N) bool.
    """
    selected = torch.zeros_like(labels, dtype=torch.bool)
    suppresses = _any_overlap_above(boxes, nms_threshold)
    for image, (scores, image_labels) in enumerate(zip(anchor_loss, labels)):
        candidates = torch.nonzero(image_labels >= 0).squeeze(1)
        if suppresses:
            order = torchvision.ops.nms(boxes[candidates].float(), scores[candidates].float(), nms_threshold)
        else:  # NMS would keep every box: only its ordering, highest loss first, remains
            order = torch.argsort(scores[candidates], descending=True, stable=True)
        survivors = candidates[order]
        if negatives_per_positive > 0:
            is_positive = image_labels[survivors] < num_classes
            positives = survivors[is_positive][: int(num_keep / (1 + negatives_per_positive))]
            num_negatives = min(int(negatives_per_positive * len(positives)), num_keep - len(positives))
            survivors = torch.cat([positives, survivors[~is_positive][:num_negatives]])
        selected[image, survivors[:num_keep]] = True
    return selected


def ohem_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    anchors: Tensor,
    normalizer: Tensor,
    num_keep: int,
    negatives_per_positive: float = 0.0,
    nms_threshold: float = 0.7,
) -> Tensor:
    """Plain (unweighted) sigmoid cross entropy over the anchors OHEM selects, / normalizer.

    The ranking score is each anchor's cross entropy summed over its K classes; the NMS
    boxes are the anchors; the normalizer is the positive count, as for the focal loss,
    so only the choice of anchors differs from the cross-entropy rows.
    """
    from focal_loss_ext import sigmoid_focal_loss

    logits = logits.float()
    with torch.no_grad():
        anchor_loss = sigmoid_focal_loss(logits.detach(), labels, alpha=-1.0, gamma=0.0).sum(-1)
    selected = ohem_selection(
        anchor_loss, labels, anchors, logits.shape[-1], num_keep, negatives_per_positive, nms_threshold
    )
    return sigmoid_focal_loss(
        logits, labels, alpha=-1.0, gamma=0.0, reduction="sum", weight=selected.float(), normalizer=normalizer
    )
