"""focal_loss_ext: the sigmoid focal loss as one fused, numerically stable CPU/CUDA operator.

    from focal_loss_ext import sigmoid_focal_loss
    loss = sigmoid_focal_loss(logits, labels, reduction="sum", normalizer=num_pos)
"""

from .functional import sigmoid_focal_loss
from .modules import SigmoidFocalLoss
from .reference import sigmoid_focal_loss_reference

__all__ = ["sigmoid_focal_loss", "SigmoidFocalLoss", "sigmoid_focal_loss_reference"]
__version__ = "0.1.0"
