"""The soft-target losses as their users compute them today, restated in plain PyTorch.

Each function follows the formula of the named source term by term, clamps and epsilons included,
so that the tests can show where our references agree with it and where its clamps change the
result, and the family benchmark can time it. None of these projects is a dependency.

    mmdet        mmdet/models/losses/gfocal_loss.py, varifocal_loss.py, gaussian_focal_loss.py
    RT-DETR      rtdetr_pytorch/src/zoo/rtdetr/rtdetr_criterion.py, loss_labels_vfl (D-FINE: the same)
    Ultralytics  ultralytics/utils/loss.py, VarifocalLoss
    mmdet3d      mmdet3d/models/utils/clip_sigmoid.py + mmdet's Gaussian focal loss (CenterPoint head)
    timm         timm/loss/asymmetric_loss.py, AsymmetricLossMultiLabel
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mmdet_quality_focal_loss(pred, label, score, beta=2.0):
    """mmdet's QFL on (label, score) targets: rows of (N, K) logits, label K (or < 0) background.

    Every element first gets the negative term ``BCE(x, 0) p^beta``; the labelled class of each
    positive row is then overwritten with ``BCE(x, score) |score - p|^beta``. Returns the loss of
    each row, summed over classes.
    """
    p = pred.sigmoid()
    loss = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none") * p.pow(beta)
    rows = ((label >= 0) & (label < pred.shape[1])).nonzero().squeeze(1)
    cls = label[rows].long()
    positive = F.binary_cross_entropy_with_logits(pred[rows, cls], score[rows], reduction="none")
    loss[rows, cls] = positive * (score[rows] - p[rows, cls]).abs().pow(beta)
    return loss.sum(dim=1)


def mmdet_quality_focal_loss_dense(pred, target, beta=2.0):
    """mmdet's QFL on a dense soft target (its tensor-target form), element-wise."""
    p = pred.sigmoid()
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * (target - p).abs().pow(beta)


def mmdet_varifocal_loss(pred, target, alpha=0.75, gamma=2.0, iou_weighted=True):
    """mmdet's VFL on a dense soft target: weight q (or 1) where q > 0, ``alpha |p - q|^gamma`` elsewhere."""
    p = pred.sigmoid()
    positive = (target > 0).to(pred.dtype)
    on_positive = target * positive if iou_weighted else positive
    focal_weight = on_positive + alpha * (p - target).abs().pow(gamma) * (1 - positive)
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight


def rtdetr_varifocal_loss(logits, labels, ious, num_boxes, alpha=0.75, gamma=2.0):
    """RT-DETR's / D-FINE's VFL of a decoder layer: (B, Q, K) logits, labels (B, Q) with K = no object.

    The weight ``alpha p^gamma`` on negatives and the IoU on the labelled class is detached (p is
    taken from detached logits); BCE's mean over classes, summed, times Q, over the box count.
    """
    classes = logits.shape[-1]
    onehot = F.one_hot(labels, classes + 1)[..., :classes]
    target_score = ious.unsqueeze(-1) * onehot
    p = logits.detach().sigmoid()
    weight = alpha * p.pow(gamma) * (1 - onehot) + target_score
    loss = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
    return loss.mean(1).sum() * logits.shape[1] / num_boxes


def ultralytics_varifocal_loss(pred_score, gt_score, label, alpha=0.75, gamma=2.0):
    """Ultralytics' VarifocalLoss: like mmdet's, the positive mask given as ``label``; summed over rows.

    Ultralytics casts to float32 for the BCE (autocast off); here "at least float32", so that a
    float64 call stays float64.
    """
    weight = alpha * pred_score.sigmoid().pow(gamma) * (1 - label) + gt_score * label
    dtype = torch.promote_types(pred_score.dtype, torch.float32)
    loss = F.binary_cross_entropy_with_logits(pred_score.to(dtype), gt_score.to(dtype), reduction="none") * weight
    return loss.mean(1).sum()


def mmdet_gaussian_focal_loss(pred, gaussian_target, alpha=2.0, gamma=4.0, eps=1e-12):
    """mmdet's Gaussian focal loss, on probabilities ``pred``, element-wise."""
    positive = gaussian_target.eq(1)
    negative_weight = (1 - gaussian_target).pow(gamma)
    pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * positive
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * negative_weight
    return pos_loss + neg_loss


def clip_sigmoid(x, eps=1e-4):
    """mmdet3d's (and CenterNet's) sigmoid, clamped to [eps, 1 - eps] against log(0)."""
    return x.sigmoid().clamp(min=eps, max=1 - eps)


def centerpoint_heatmap_loss(logits, heatmap):
    """CenterPoint's heatmap loss: the Gaussian focal loss of the clipped sigmoid over the peak count."""
    num_pos = heatmap.eq(1).sum().clamp(min=1)
    return mmdet_gaussian_focal_loss(clip_sigmoid(logits), heatmap).sum() / num_pos


def timm_asymmetric_loss(x, y, gamma_neg=4.0, gamma_pos=1.0, clip=0.05, eps=1e-8):
    """timm's AsymmetricLossMultiLabel: multi-hot ``y``; the summed loss.

    The negative probability is shifted, ``min(1 - p + clip, 1)``, both logs take probabilities
    clamped at ``eps``, and the focusing weight ``(1 - p_t)^gamma_t`` interpolates the exponent
    with y.
    """
    p = torch.sigmoid(x)
    not_p = 1 - p
    if clip is not None and clip > 0:
        not_p = (not_p + clip).clamp(max=1)
    loss = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(not_p.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        p_t = p * y + not_p * (1 - y)
        loss = loss * torch.pow(1 - p_t, gamma_pos * y + gamma_neg * (1 - y))
    return -loss.sum()
