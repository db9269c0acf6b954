"""``nn.Module`` wrapper of :func:`focal_loss_ext.sigmoid_focal_loss`."""

from __future__ import annotations

import torch
from torch import nn

from .functional import sigmoid_focal_loss

__all__ = ["SigmoidFocalLoss"]


class SigmoidFocalLoss(nn.Module):
    """Sigmoid focal loss as a module; the arguments are those of
    :func:`focal_loss_ext.sigmoid_focal_loss` (a per-class ``alpha`` tensor is kept as a buffer,
    so it follows the module across devices)."""

    def __init__(
        self,
        alpha: float | torch.Tensor = 0.25,
        gamma: float = 2.0,
        reduction: str = "none",
        label_smoothing: float = 0.0,
        ignore_index: int = -1,
    ):
        super().__init__()
        if isinstance(alpha, torch.Tensor):
            self.register_buffer("alpha", alpha.detach().clone())
        else:
            self.alpha = float(alpha)
        self.gamma = gamma
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index

    def forward(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        weight: torch.Tensor | None = None,
        normalizer: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return sigmoid_focal_loss(
            inputs,
            targets,
            self.alpha,
            self.gamma,
            self.reduction,
            weight=weight,
            normalizer=normalizer,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        alpha = "per-class" if isinstance(self.alpha, torch.Tensor) else self.alpha
        return f"alpha={alpha}, gamma={self.gamma}, reduction={self.reduction!r}"
