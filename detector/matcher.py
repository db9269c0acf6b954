"""Anchor-to-object assignment, and the one place the label convention is written.

Every anchor gets one integer label:

    0 <= label < K   positive: the anchor should detect class `label`
    label == K       background (BACKGROUND is spelled `num_classes`)
    label == -1      ignored: contributes neither to the classification loss
                     nor to the positive count (IGNORE)

These labels go unchanged into the fused focal loss's integer-target form.
Rules (paper, section 4): IoU >= 0.5 with some object is positive, IoU < 0.4
with every object is background, anything in between is ignored, and each
object's best anchor(s) are made positive for that object even below 0.5, so no
object is left without a positive anchor.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

IGNORE = -1


class Matcher:
    def __init__(self, num_classes: int, fg_iou_threshold: float = 0.5, bg_iou_threshold: float = 0.4):
        if not bg_iou_threshold <= fg_iou_threshold:
            raise ValueError(
                f"bg_iou_threshold ({bg_iou_threshold}) must not exceed fg_iou_threshold ({fg_iou_threshold})"
            )
        self.num_classes = num_classes
        self.fg_iou_threshold = fg_iou_threshold
        self.bg_iou_threshold = bg_iou_threshold

    @property
    def background(self) -> int:
        return self.num_classes

    @torch.no_grad()
    def __call__(
        self, anchors: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Label each of the N anchors for one image.

        anchors: (N, 4) xyxy; gt_boxes: (G, 4) xyxy; gt_labels: (G,) int in [0, K).
        Returns labels (N,) int64 in the convention above and matched (N,) int64,
        the index of each anchor's object (0 where the anchor is not positive).
        """
        num_anchors = anchors.shape[0]
        if gt_boxes.numel() == 0:
            labels = torch.full((num_anchors,), self.background, dtype=torch.int64, device=anchors.device)
            return labels, torch.zeros_like(labels)

        iou = box_iou(gt_boxes, anchors)  # (G, N)
        best_iou, matched = iou.max(dim=0)

        # Each object's best anchors (ties included) join that object, even when
        # another object overlaps them more: it guarantees every object a positive.
        best_per_object = iou.max(dim=1, keepdim=True).values
        is_best = (iou == best_per_object) & (best_per_object > 0)
        forced = is_best.any(dim=0)
        forced_object = torch.where(is_best, iou, torch.full_like(iou, -1.0)).argmax(dim=0)
        matched = torch.where(forced, forced_object, matched)

        labels = gt_labels[matched].clone()
        labels[best_iou < self.fg_iou_threshold] = IGNORE
        labels[best_iou < self.bg_iou_threshold] = self.background
        labels[forced] = gt_labels[matched[forced]]
        positive = (labels >= 0) & (labels < self.background)
        return labels, torch.where(positive, matched, torch.zeros_like(matched))


def count_positives(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Number of positive anchors as a tensor on the labels' device (no host sync)."""
    return ((labels >= 0) & (labels < num_classes)).sum()
