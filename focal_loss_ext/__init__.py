"""focal_loss_ext: the focal-loss family as fused, numerically stable CPU/CUDA operators.

    from focal_loss_ext import sigmoid_focal_loss
    loss = sigmoid_focal_loss(logits, labels, reduction="sum", normalizer=num_pos)

also ``softmax_focal_loss`` (multi-class) and ``sigmoid_focal_loss_star`` (FL*).
"""

from . import _library  # noqa: F401  (first: it may load another build as ._C)
from .functional import sigmoid_focal_loss, sigmoid_focal_loss_star, softmax_focal_loss
from .modules import SigmoidFocalLoss
from .reference import sigmoid_focal_loss_reference, sigmoid_focal_loss_star_reference, softmax_focal_loss_reference

__all__ = [
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "softmax_focal_loss",
    "SigmoidFocalLoss",
    "sigmoid_focal_loss_reference",
    "sigmoid_focal_loss_star_reference",
    "softmax_focal_loss_reference",
]
__version__ = "0.1.0"
