"""Per-element loss and d loss / d logit of the soft-target losses, in closed form, as a kernel computes them.

These are the gradient formulas of the sigmoid loss family (quality focal, varifocal, Gaussian
focal, asymmetric loss), written without autograd on plain tensors so that the tests can hold
them against autograd of ``focal_loss_ext.reference`` in float64 and the kernels can be held
against them element by element. Every loss is ``A(p) softplus(-x) + B(p) softplus(x)`` (ASL's
clipped negative aside), and with the weights differentiated

    dL/dx = dA/dx softplus(-x) + dB/dx softplus(x) - A (1 - p) + B p,    dA/dx = p (1 - p) A'(p).

A rule takes the logit ``x``, the soft target ``q``, the element's kind ``positive`` (a bool tensor:
the labelled class of a row, or ``q > 0`` / ``y == 1`` for floating targets) and the loss's
scalars, and returns ``(loss, grad)``. Like the kernels, it computes ``p = sigmoid(x)``,
``1 - p = sigmoid(-x)`` and both softplus values once per element and raises them to powers with
``pow``; no probability is passed to a log.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Parts(NamedTuple):
    p: torch.Tensor  # sigmoid(x)
    not_p: torch.Tensor  # 1 - p = sigmoid(-x)
    s_pos: torch.Tensor  # softplus(-x) = -log p
    s_neg: torch.Tensor  # softplus(x) = -log(1 - p)


def sigmoid_parts(x: torch.Tensor) -> Parts:
    tail = torch.log1p(torch.exp(-x.abs()))
    return Parts(torch.sigmoid(x), torch.sigmoid(-x), (-x).clamp(min=0) + tail, x.clamp(min=0) + tail)


def _safe_ratio(num, den):
    """num / den, 0 where den == 0."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, 1), 0)


def modulated_bce(parts: Parts, q, exponent: float, differentiate: bool = True):
    """``BCE(x, q) |d|^e`` with ``d = p - q``, the QFL term (and VFL's negatives, times alpha).

    ``d/dx = |d|^e d + e |d|^e (p (1 - p) / d) BCE``; the second term is dropped for a detached
    weight, and is 0 at d == 0 (autograd's value for e >= 1). For q = 0 or 1 the ratio
    ``p (1 - p) / d`` is ``1 - p`` or ``-p``, so no power with a negative exponent is formed.
    """
    p, not_p, s_pos, s_neg = parts
    d = torch.where(q == 1, -not_p, p - q)  # dBCE/dx, exact where q is 0 or 1
    bce = q * s_pos + (1 - q) * s_neg
    mod = d.abs() ** exponent
    grad = mod * d
    if differentiate and exponent != 0:
        grad = grad + exponent * mod * _safe_ratio(p * not_p, d) * bce
    return bce * mod, grad


def focal_positive(parts: Parts, gamma: float):
    """``(1 - p)^gamma (-log p)``: d/dx = ``-(1 - p)^gamma (gamma p s_pos + (1 - p))``."""
    p, not_p, s_pos, _ = parts
    weight = not_p**gamma
    return weight * s_pos, -weight * (gamma * p * s_pos + not_p)


def focal_negative(parts: Parts, gamma: float):
    """``p^gamma (-log(1 - p))``: d/dx = ``p^gamma (gamma (1 - p) s_neg + p)``."""
    p, not_p, _, s_neg = parts
    weight = p**gamma
    return weight * s_neg, weight * (gamma * not_p * s_neg + p)


def quality_focal(x, q, positive, beta: float = 2.0):
    return modulated_bce(sigmoid_parts(x), q, beta)


def varifocal(x, q, positive, alpha: float = 0.75, gamma: float = 2.0, iou_weighted=True, detach_weight=False):
    """Positive: ``w BCE`` with w = q (or 1), d/dx = ``w (p - q)``; negative: ``alpha`` x the QFL term."""
    parts = sigmoid_parts(x)
    w = q if iou_weighted else torch.ones_like(q)
    pos_loss, pos_grad = modulated_bce(parts, q, 0.0)
    neg_loss, neg_grad = modulated_bce(parts, q, gamma, differentiate=not detach_weight)
    return torch.where(positive, w * pos_loss, alpha * neg_loss), torch.where(positive, w * pos_grad, alpha * neg_grad)


def gaussian_focal(x, y, positive, alpha: float = 2.0, gamma: float = 4.0):
    """Peak (y == 1): the focal positive; elsewhere ``(1 - y)^gamma`` x the focal negative."""
    parts = sigmoid_parts(x)
    pos_loss, pos_grad = focal_positive(parts, alpha)
    neg_loss, neg_grad = focal_negative(parts, alpha)
    w = (1 - y) ** gamma
    return torch.where(positive, pos_loss, w * neg_loss), torch.where(positive, pos_grad, w * neg_grad)


def asymmetric(x, q, positive, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05):
    """``q positive + (1 - q) negative``; the negative with ``p_m = max(p - clip, 0)``:

    ``p_m^g (-log(1 - p_m))``, d/dx = ``p (1 - p) (g p_m^g (-log(1 - p_m)) / p_m + p_m^g / (1 - p_m))``
    where p > clip, else 0, with ``1 - p_m = sigmoid(-x) + clip``. Without clip it is the focal
    negative.
    """
    parts = sigmoid_parts(x)
    pos_loss, pos_grad = focal_positive(parts, gamma_pos)
    if clip > 0:
        p_m = (parts.p - clip).clamp(min=0)
        not_p_m = parts.not_p + clip
        neg_log = -torch.log(not_p_m)
        weight = p_m**gamma_neg
        neg_loss = torch.where(p_m > 0, weight * neg_log, 0)
        neg_grad = parts.p * parts.not_p * (gamma_neg * _safe_ratio(weight * neg_log, p_m) + weight / not_p_m)
        neg_grad = torch.where(p_m > 0, neg_grad, 0)
    else:
        neg_loss, neg_grad = focal_negative(parts, gamma_neg)
    return q * pos_loss + (1 - q) * neg_loss, q * pos_grad + (1 - q) * neg_grad


RULES = {
    "quality_focal_loss": quality_focal,
    "varifocal_loss": varifocal,
    "gaussian_focal_loss": gaussian_focal,
    "asymmetric_loss": asymmetric,
}
