"""From per-level logits and deltas to at most `detections_per_image` boxes (paper, section 4).

Per level: keep scores above `score_threshold`, then the `topk_per_level` best
(anchor, class) pairs, decode their boxes. Over all levels: clip to the image,
class-wise NMS at `nms_threshold` (torchvision.ops.batched_nms), keep the best
`detections_per_image`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from detector.box_coder import BoxCoder


class PostProcessor:
    def __init__(
        self,
        box_coder: BoxCoder,
        score_threshold: float = 0.05,
        topk_per_level: int = 1000,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
    ):
        self.box_coder = box_coder
        self.score_threshold = score_threshold
        self.topk_per_level = topk_per_level
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image

    @torch.no_grad()
    def __call__(
        self,
        logits: list[Tensor],
        deltas: list[Tensor],
        anchors: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """logits[level]: (B, N_l, K); deltas[level]: (B, N_l, 4); anchors[level]: (N_l, 4).

        Returns per image {"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,) int64}.
        """
        results = []
        for image, size in enumerate(image_sizes):
            per_level = [
                self._select(lv_logits[image], lv_deltas[image], lv_anchors)
                for lv_logits, lv_deltas, lv_anchors in zip(logits, deltas, anchors)
            ]
            boxes, scores, labels = (torch.cat(parts) for parts in zip(*per_level))
            boxes = clip_boxes_to_image(boxes, size)
            keep = batched_nms(boxes, scores, labels, self.nms_threshold)[: self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results

    def _select(self, logits: Tensor, deltas: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        num_classes = logits.shape[-1]
        scores = torch.sigmoid(logits.float()).flatten()
        candidates = torch.nonzero(scores > self.score_threshold).squeeze(1)
        scores = scores[candidates]
        scores, order = scores.topk(min(self.topk_per_level, scores.numel()))
        candidates = candidates[order]
        anchor_index = candidates // num_classes
        boxes = self.box_coder.decode(anchors[anchor_index], deltas[anchor_index])
        return boxes, scores, candidates % num_classes
