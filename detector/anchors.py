"""Anchor boxes for the pyramid levels P3-P7.

Each level of stride s carries A = len(scales) x len(aspect_ratios) anchors per
position (9 with the paper's values), centred on the cell centre
((x + 0.5) s, (y + 0.5) s), of area (multiple * s * scale)^2 and
height / width = aspect ratio. Anchors are ordered (y, x, anchor) within a level
and levels are concatenated from P3 to P7; the head flattens its outputs in the
same order (see `head.flatten_level_outputs`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class AnchorGenerator(nn.Module):
    def __init__(
        self,
        strides: tuple[int, ...] = (8, 16, 32, 64, 128),
        size_multiple: float = 4.0,
        scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    ):
        super().__init__()
        self.strides = tuple(strides)
        self.num_anchors_per_position = len(scales) * len(aspect_ratios)
        cells = [self._cell_anchors(size_multiple * s, scales, aspect_ratios) for s in self.strides]
        for level, cell in enumerate(cells):
            self.register_buffer(f"cell_anchors_{level}", cell, persistent=False)
        self._cache: dict[tuple, list[torch.Tensor]] = {}

    @staticmethod
    def _cell_anchors(base_size: float, scales, aspect_ratios) -> torch.Tensor:
        """(A, 4) xyxy boxes centred on the origin; scale-major, then aspect ratio."""
        boxes = []
        for scale in scales:
            area = (base_size * scale) ** 2
            for ratio in aspect_ratios:
                width = math.sqrt(area / ratio)
                height = width * ratio
                boxes.append([-width / 2, -height / 2, width / 2, height / 2])
        return torch.tensor(boxes, dtype=torch.float32)

    def forward(self, feature_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """One (H * W * A, 4) tensor of xyxy anchors per level."""
        key = tuple(tuple(s) for s in feature_sizes)
        device = self.cell_anchors_0.device
        cached = self._cache.get(key)
        if cached is not None and cached[0].device == device:
            return cached
        anchors = []
        for level, ((height, width), stride) in enumerate(zip(feature_sizes, self.strides)):
            cell = getattr(self, f"cell_anchors_{level}")
            ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
            xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
            y, x = torch.meshgrid(ys, xs, indexing="ij")
            centres = torch.stack([x, y, x, y], dim=-1).reshape(-1, 1, 4)
            anchors.append((centres + cell[None]).reshape(-1, 4))
        self._cache = {key: anchors}
        return anchors
