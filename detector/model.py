"""RetinaNet: backbone -> FPN P3-P7 -> shared heads, trained with an injected focal loss.

In training `forward(images, targets)` returns a dict of losses; in eval it
returns detections. The stages are also callable one by one (`predict`,
`assign`, `losses`) so `detector.timing` can time them separately.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.anchors import AnchorGenerator
from detector.backbone import build_backbone
from detector.box_coder import BoxCoder
from detector.config import ModelConfig
from detector.fpn import FPN
from detector.head import RetinaNetHead
from detector.losses import FocalLoss, box_regression_loss, build_focal_loss, ohem_cross_entropy, positive_normalizer
from detector.matcher import Matcher, count_positives
from detector.postprocess import PostProcessor

# Photographic mean/std; the small backbone learns its own scale anyway.
_PIXEL_MEAN = (0.485, 0.456, 0.406)
_PIXEL_STD = (0.229, 0.224, 0.225)


class RetinaNet(nn.Module):
    def __init__(self, config: ModelConfig, focal_loss: FocalLoss):
        super().__init__()
        self.config = config
        self.focal_loss = focal_loss
        self.backbone = build_backbone(config.backbone, config.backbone_width, config.backbone_weights)
        self.fpn = FPN(self.backbone.out_channels, config.fpn_channels)
        self.anchor_generator = AnchorGenerator(
            self.fpn.strides, config.anchor_size_multiple, config.anchor_scales, config.anchor_aspect_ratios
        )
        self.head = RetinaNetHead(
            config.fpn_channels,
            self.anchor_generator.num_anchors_per_position,
            config.num_classes,
            config.head_convs,
            config.head_norm,
            config.prior_prob,
        )
        self.matcher = Matcher(config.num_classes, config.fg_iou_threshold, config.bg_iou_threshold)
        self.box_coder = BoxCoder()
        self.postprocess = PostProcessor(
            self.box_coder,
            config.score_threshold,
            config.topk_per_level,
            config.nms_threshold,
            config.detections_per_image,
        )
        self.register_buffer("pixel_mean", torch.tensor(_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def predict(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per level: logits (B, N_l, K), deltas (B, N_l, 4), anchors (N_l, 4)."""
        features = self.fpn(self.backbone((images - self.pixel_mean) / self.pixel_std))
        logits, deltas = self.head(features)
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in features])
        return logits, deltas, anchors

    @torch.no_grad()
    def assign(self, anchors: Tensor, targets: list[dict]) -> tuple[Tensor, Tensor]:
        """Labels (B, N) in the matcher's convention and each anchor's object box (B, N, 4)."""
        all_labels, all_boxes = [], []
        for target in targets:
            gt_boxes = target["boxes"].to(anchors.device)
            labels, matched = self.matcher(anchors, gt_boxes, target["labels"].to(anchors.device))
            boxes = gt_boxes[matched] if gt_boxes.numel() else torch.zeros_like(anchors)
            all_labels.append(labels)
            all_boxes.append(boxes)
        return torch.stack(all_labels), torch.stack(all_boxes)

    def losses(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, labels: Tensor, matched_boxes: Tensor
    ) -> dict[str, Tensor]:
        """Inputs concatenated over levels; the positive count never leaves the device."""
        num_positive = count_positives(labels, self.config.num_classes)
        normalizer = positive_normalizer(num_positive)
        positive = (labels >= 0) & (labels < self.config.num_classes)
        if self.config.ohem_keep > 0:
            loss_cls = ohem_cross_entropy(
                logits,
                labels,
                anchors,
                normalizer,
                self.config.ohem_keep,
                self.config.ohem_negatives_per_positive,
                self.config.ohem_nms_threshold,
            )
        else:
            loss_cls = self.focal_loss(logits, labels, normalizer)
        return {
            "loss_cls": loss_cls,
            "loss_box": box_regression_loss(
                self.config.box_loss,
                deltas,
                anchors,
                matched_boxes,
                positive,
                normalizer,
                self.box_coder,
                self.config.smooth_l1_beta,
            ),
            "num_positive": num_positive.detach(),
        }

    def forward(self, images: Tensor, targets: list[dict] | None = None, image_sizes=None):
        """image_sizes: (height, width) of each image before padding; default the padded size."""
        logits, deltas, anchors = self.predict(images)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            all_anchors = torch.cat(anchors)
            labels, matched_boxes = self.assign(all_anchors, targets)
            return self.losses(torch.cat(logits, 1), torch.cat(deltas, 1), all_anchors, labels, matched_boxes)
        image_sizes = image_sizes or [tuple(images.shape[-2:])] * images.shape[0]
        return self.postprocess(logits, deltas, anchors, image_sizes)


def build_model(config: ModelConfig, loss: str = "fused") -> RetinaNet:
    return RetinaNet(config, build_focal_loss(loss, config.focal_alpha, config.focal_gamma))
