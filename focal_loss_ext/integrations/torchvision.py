"""torchvision's RetinaNet and FCOS with the fused focal loss: one call for the whole batch.

    from focal_loss_ext.integrations.torchvision import fuse_focal_loss
    model = fuse_focal_loss(torchvision.models.detection.retinanet_resnet50_fpn(...))

Stock torchvision loops over the images of the batch; per image it builds a dense one-hot target
of the logits' size, copies the non-ignored anchors' logits and targets out with a boolean mask,
runs the unfused ``torchvision.ops.sigmoid_focal_loss`` and divides by ``max(1, num_foreground)``,
which reads a device tensor on the host. Here the targets are one integer label per anchor and
the per-image (RetinaNet) or per-batch (FCOS) normalization is a device-side weight or
normalizer, so the loss is one fused call with no host synchronization.

The replacement is an instance attribute ``compute_loss`` on the head that computes the loss;
``unfuse_focal_loss`` deletes it and the class's own method is back. ``state_dict`` is unchanged.
TorchScript does not script the replacement: unfuse before ``torch.jit.script``.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from ..functional import sigmoid_focal_loss

__all__ = ["fuse_focal_loss", "unfuse_focal_loss", "is_fused"]

# torchvision calls sigmoid_focal_loss with its defaults in both heads.
TORCHVISION_ALPHA = 0.25
TORCHVISION_GAMMA = 2.0


def _gather_per_anchor(per_box: list[Tensor], matched: Tensor, fill: float) -> Tensor:
    """``per_box[i][matched[i, a]]`` for every image i and anchor a, ``fill`` where matched < 0.

    One gather for the batch: the images' boxes are padded to the longest and a ``fill`` slot is
    appended, which the unmatched anchors (and images without boxes) read.
    """
    padded = nn.utils.rnn.pad_sequence(per_box, batch_first=True, padding_value=fill)
    padded = torch.cat([padded, padded.new_full((padded.shape[0], 1, *padded.shape[2:]), fill)], dim=1)
    index = torch.where(matched >= 0, matched, padded.shape[1] - 1)
    if padded.dim() == 3:
        index = index.unsqueeze(-1).expand(-1, -1, padded.shape[2])
    return padded.gather(1, index)


def _generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """``torchvision.ops.generalized_box_iou_loss(boxes1, boxes2, reduction="none")``, term by term.

    torchvision writes the intersection through a boolean index, a host synchronization on
    CUDA; ``torch.where`` gives the same values and the same (zero) gradient where boxes are apart.
    """
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    width = torch.min(x2, x2g) - torch.max(x1, x1g)
    height = torch.min(y2, y2g) - torch.max(y1, y1g)
    # torchvision stores the intersection in boxes1's dtype (it matters under autocast).
    intersection = torch.where((height > 0) & (width > 0), width * height, 0.0).to(x1.dtype)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intersection
    iou = intersection / (union + eps)
    enclosing = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - (enclosing - union) / (enclosing + eps))


def _loss_dtype(logits: Tensor) -> torch.dtype:
    # Under autocast torchvision's focal loss runs binary_cross_entropy_with_logits, which
    # autocast computes in float32, so its loss is float32; ours is the logits' dtype.
    if torch.is_autocast_enabled(logits.device.type):
        return torch.promote_types(logits.dtype, torch.float32)
    return logits.dtype


class FusedRetinaNetClassificationLoss:
    """``RetinaNetClassificationHead.compute_loss`` with one fused call.

    Per image: the focal loss summed over the anchors that are not between the matcher's
    thresholds (matched index -2), divided by max(1, that image's foreground anchors); then the
    mean over the batch. Matched anchors take their box's class, unmatched ones (-1) are
    background: negative for every class.
    """

    def __init__(self, alpha: float | Tensor, gamma: float, between_thresholds: int):
        self.alpha = alpha
        self.gamma = gamma
        self.between_thresholds = between_thresholds

    def __call__(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], matched_idxs: list[Tensor]):
        logits = head_outputs["cls_logits"]  # (N, anchors, K)
        num_classes = logits.shape[-1]
        with torch.no_grad():
            matched = torch.stack(matched_idxs)
            labels = _gather_per_anchor([t["labels"] for t in targets], matched, num_classes)
            labels = torch.where(matched == self.between_thresholds, self.between_thresholds, labels)
            num_foreground = (matched >= 0).sum(dim=1, keepdim=True)
            weight_dtype = torch.promote_types(logits.dtype, torch.float32)
            per_image = num_foreground.clamp(min=1).to(weight_dtype).reciprocal()
            weight = per_image.expand(labels.shape)
        loss = sigmoid_focal_loss(
            logits,
            labels,
            self.alpha,
            self.gamma,
            "sum",
            weight=weight,
            normalizer=len(targets),
            ignore_index=self.between_thresholds,
        )
        return loss.to(_loss_dtype(logits))


class FusedFCOSLoss:
    """``FCOSHead.compute_loss`` with the classification loss in one fused call.

    FCOS differs from RetinaNet: nothing is ignored (every unmatched point is background), and
    the three losses are sums over the whole batch divided once by max(1, foreground points in
    the batch). The box (GIoU) and centerness losses are torchvision's formulas over all points
    with the background masked out by ``torch.where`` instead of copied out with a boolean
    index, so that no count is read on the host either.
    """

    def __init__(self, alpha: float | Tensor, gamma: float, box_coder):
        self.alpha = alpha
        self.gamma = gamma
        self.box_coder = box_coder

    def __call__(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        logits = head_outputs["cls_logits"]  # (N, points, K)
        bbox_regression = head_outputs["bbox_regression"]  # (N, points, 4)
        pred_centerness = head_outputs["bbox_ctrness"].squeeze(dim=2)  # (N, points)
        anchors = torch.stack(anchors)
        with torch.no_grad():
            matched = torch.stack(matched_idxs)
            # torchvision's foreground is "the matched box's label is >= 0", kept as it is.
            gt_classes = _gather_per_anchor([t["labels"] for t in targets], matched, -1)
            foreground = gt_classes >= 0
            labels = torch.where(foreground, gt_classes, logits.shape[-1])
            gt_boxes = _gather_per_anchor([t["boxes"] for t in targets], matched, 0.0)
            normalizer = foreground.sum().clamp(min=1).to(torch.promote_types(logits.dtype, torch.float32))
            gt_centerness = self._centerness_targets(anchors, gt_boxes)
            # Background points have no box: their target is NaN or meaningless, masked out here
            # so that not even a zero gradient times NaN reaches the logits.
            gt_centerness = torch.where(foreground, gt_centerness, 0.0)
            # An identical pair of unit boxes: a finite GIoU for the background, masked below.
            unit_box = (torch.arange(4, device=gt_boxes.device) // 2).to(gt_boxes.dtype)
            gt_boxes = torch.where(foreground.unsqueeze(-1), gt_boxes, unit_box)

        loss_cls = sigmoid_focal_loss(logits, labels, self.alpha, self.gamma, "sum", normalizer=normalizer)

        pred_boxes = self.box_coder.decode(bbox_regression, anchors)
        pred_boxes = torch.where(foreground.unsqueeze(-1), pred_boxes, unit_box.to(pred_boxes.dtype))
        loss_box = _generalized_box_iou_loss(pred_boxes, gt_boxes)
        loss_box = torch.where(foreground, loss_box, 0.0).sum()
        loss_centerness = nn.functional.binary_cross_entropy_with_logits(
            pred_centerness, gt_centerness, reduction="none"
        )
        loss_centerness = torch.where(foreground, loss_centerness, 0.0).sum()
        return {
            "classification": loss_cls.to(_loss_dtype(logits)),
            "bbox_regression": (loss_box / normalizer).to(loss_box.dtype),
            "bbox_ctrness": (loss_centerness / normalizer).to(loss_centerness.dtype),
        }

    def _centerness_targets(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        # torchvision's formula; its distances[:, :, [0, 2]] would copy an index list to the device
        # and wait for it, min/max of a pair is the same.
        left, top, right, bottom = self.box_coder.encode(anchors, gt_boxes).unbind(dim=-1)
        return torch.sqrt(
            (torch.minimum(left, right) / torch.maximum(left, right))
            * (torch.minimum(top, bottom) / torch.maximum(top, bottom))
        )


def _loss_head(model: nn.Module):
    """(the head whose compute_loss computes the classification loss, its stock class, the fused loss class)."""
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.fcos import FCOSHead
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead

    if isinstance(model, RetinaNet):
        return model.head.classification_head, RetinaNetClassificationHead, FusedRetinaNetClassificationLoss
    if isinstance(model, FCOS):
        return model.head, FCOSHead, FusedFCOSLoss
    raise TypeError(
        "fuse_focal_loss expects a torchvision.models.detection.RetinaNet or FCOS model, "
        f"got {type(model).__module__}.{type(model).__qualname__}"
    )


def fuse_focal_loss(model: nn.Module, alpha: float = TORCHVISION_ALPHA, gamma: float = TORCHVISION_GAMMA) -> nn.Module:
    """Make a torchvision RetinaNet or FCOS compute its classification loss with the fused operator.

    The model's results are unchanged (to float rounding): the same loss, the same gradients,
    computed in one fused call per batch without a dense one-hot target, masking copies or host
    synchronization. Works in place and returns the model, so ``model = fuse_focal_loss(model)``
    and ``fuse_focal_loss(model)`` both do. Fusing again replaces the earlier ``alpha``/``gamma``.

    Args:
        model: a ``torchvision.models.detection.RetinaNet`` or ``FCOS`` (or a subclass) whose
            head's ``compute_loss`` is torchvision's own.
        alpha: the focal loss's positive weight (negatives get ``1 - alpha``; negative disables
            it), or a 1-D tensor of per-class values. Default 0.25, what torchvision uses.
        gamma: the focusing exponent. Default 2.0, what torchvision uses.

    Returns:
        ``model``. ``unfuse_focal_loss(model)`` restores torchvision's loss.
    """
    head, stock_class, fused_class = _loss_head(model)
    if not isinstance(head, stock_class):
        raise TypeError(
            f"fuse_focal_loss replaces the loss of torchvision's {stock_class.__name__}, but this model's head "
            f"is a {type(head).__qualname__}"
        )
    if type(head).compute_loss is not stock_class.compute_loss:
        raise TypeError(
            f"{type(head).__qualname__} overrides {stock_class.__name__}.compute_loss; fuse_focal_loss would "
            "replace that override, so it refuses"
        )
    if not isinstance(gamma, numbers.Real) or not gamma >= 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if not isinstance(alpha, (numbers.Real, Tensor)):
        raise TypeError(f"alpha must be a float or a 1-D tensor of per-class values, got {type(alpha).__name__}")
    if fused_class is FusedRetinaNetClassificationLoss:
        head.compute_loss = fused_class(alpha, float(gamma), head.BETWEEN_THRESHOLDS)
    else:
        head.compute_loss = fused_class(alpha, float(gamma), head.box_coder)
    return model


def unfuse_focal_loss(model: nn.Module) -> nn.Module:
    """Undo :func:`fuse_focal_loss`: the model computes torchvision's loss again. Returns ``model``."""
    head, _, _ = _loss_head(model)
    if is_fused(model):
        del head.compute_loss
    return model


def is_fused(model: nn.Module) -> bool:
    """Whether :func:`fuse_focal_loss` has been applied to ``model`` (and not undone)."""
    head, _, fused_class = _loss_head(model)
    return isinstance(vars(head).get("compute_loss"), fused_class)
