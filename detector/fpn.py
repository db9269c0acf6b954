"""Feature pyramid P3-P7 on top of C3-C5 (paper, section 4).

P3-P5 come from torchvision's FeaturePyramidNetwork (1x1 lateral + top-down
sum + 3x3 output conv); P6 is a 3x3 stride-2 conv on C5 (not on P5) and P7 a
3x3 stride-2 conv on ReLU(P6).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

STRIDES = (8, 16, 32, 64, 128)


class P6P7FromC5(ExtraFPNBlock):
    def __init__(self, c5_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(c5_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, results: list[torch.Tensor], inputs: list[torch.Tensor], names: list[str]):
        p6 = self.p6(inputs[-1])
        p7 = self.p7(torch.relu(p6))
        return results + [p6, p7], names + ["p6", "p7"]


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out_channels: int):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), out_channels, extra_blocks=P6P7FromC5(in_channels[-1], out_channels)
        )
        self.strides = STRIDES
        self.out_channels = out_channels

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        named = {f"c{level}": x for level, x in zip((3, 4, 5), features)}
        return list(self.fpn(named).values())
