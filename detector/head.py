"""Classification and box-regression subnets, shared across pyramid levels.

Each subnet is `num_convs` x (3x3 conv [+ norm] + ReLU) and a final 3x3 conv
(paper, section 4). Conv weights start from N(0, 0.01) with zero bias, and the
final classification bias is -log((1 - pi) / pi) so that every anchor starts
out predicting foreground with probability pi; without it the ~10^4 background
anchors swamp the loss in the first iterations.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "gn":
        return nn.GroupNorm(32 if channels % 32 == 0 else 8, channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"head_norm must be 'gn', 'bn' or 'none', got {kind!r}")


def _tower(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), _norm(norm, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def flatten_level_outputs(x: torch.Tensor, values_per_anchor: int) -> torch.Tensor:
    """(B, A * V, H, W) -> (B, H * W * A, V), the anchor order of `AnchorGenerator`."""
    batch, _, height, width = x.shape
    x = x.view(batch, -1, values_per_anchor, height, width)
    return x.permute(0, 3, 4, 1, 2).reshape(batch, -1, values_per_anchor)


class RetinaNetHead(nn.Module):
    def __init__(
        self,
        channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        norm: str = "gn",
        prior_prob: float = 0.01,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = _tower(channels, num_convs, norm)
        self.box_tower = _tower(channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.box_deltas = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: logits (B, H*W*A, K) and box deltas (B, H*W*A, 4)."""
        logits, deltas = [], []
        for x in features:
            logits.append(flatten_level_outputs(self.cls_logits(self.cls_tower(x)), self.num_classes))
            deltas.append(flatten_level_outputs(self.box_deltas(self.box_tower(x)), 4))
        return logits, deltas
