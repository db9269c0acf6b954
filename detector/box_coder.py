"""Box regression targets relative to anchors, as in R-CNN and the RetinaNet paper.

encode: (dx, dy, dw, dh) = ((x - xa) / wa, (y - ya) / ha, log(w / wa), log(h / ha)),
each divided by its weight; decode inverts it. The widths predicted at decode
are clamped so exp() cannot overflow on an untrained or diverging model.
"""

from __future__ import annotations

import math

import torch

_MAX_LOG_SCALE = math.log(1000.0 / 16)  # detectron2's bound: a box at most ~60x its anchor


class BoxCoder:
    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)):
        self.weights = weights

    def encode(self, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """anchors, boxes: (..., 4) xyxy -> (..., 4) deltas."""
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = _width_height_centre(anchors)
        bw, bh, bx, by = _width_height_centre(boxes)
        return torch.stack(
            [
                wx * (bx - ax) / aw,
                wy * (by - ay) / ah,
                ww * torch.log(bw / aw),
                wh * torch.log(bh / ah),
            ],
            dim=-1,
        )

    def decode(self, anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """anchors: (..., 4) xyxy, deltas: (..., 4) -> (..., 4) xyxy boxes."""
        wx, wy, ww, wh = self.weights
        deltas = deltas.float()
        aw, ah, ax, ay = _width_height_centre(anchors)
        cx = deltas[..., 0] / wx * aw + ax
        cy = deltas[..., 1] / wy * ah + ay
        w = torch.exp((deltas[..., 2] / ww).clamp(max=_MAX_LOG_SCALE)) * aw
        h = torch.exp((deltas[..., 3] / wh).clamp(max=_MAX_LOG_SCALE)) * ah
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _width_height_centre(boxes: torch.Tensor):
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return width, height, boxes[..., 0] + width / 2, boxes[..., 1] + height / 2
