"""Extreme logits and gamma in (0, 1): finite and right, where naive formulas give inf or NaN."""

import math

import pytest
import torch
from helpers import DEVICES

from focal_loss_ext import sigmoid_focal_loss


def analytic(x, t, alpha, gamma):
    """Loss and gradient of one element in float64 from the textbook formulas, evaluated with
    Python's exact-where-it-matters functions; q^(gamma - 1) only where q > 0."""
    s_pos = 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))
    s_neg = 1 - s_pos if x < 0 else math.exp(-x) / (1 + math.exp(-x))
    softplus = lambda v: max(v, 0) + math.log1p(math.exp(-abs(v)))  # noqa: E731
    ce = t * softplus(-x) + (1 - t) * softplus(x)
    q = t * s_neg + (1 - t) * s_pos
    a_t = alpha * t + (1 - alpha) * (1 - t)
    loss = a_t * ce * q**gamma
    dq = (1 - 2 * t) * s_pos * s_neg
    dqg = gamma * q ** (gamma - 1) * dq if q > 0 and gamma > 0 else 0.0
    grad = a_t * (((1 - t) * s_pos - t * s_neg) * q**gamma + ce * dqg)  # s_pos - t without cancellation
    return loss, grad


EXTREMES = [-1e4, -3000.0, -88.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 88.0, 3000.0, 1e4]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 0.999, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_finite_and_right(device, gamma, dtype):
    xs = torch.tensor(EXTREMES, dtype=dtype)
    for target in (0.0, 1.0, 0.3):
        x = xs.clone().to(device).unsqueeze(-1).requires_grad_()
        t = torch.full_like(x, target)
        loss = sigmoid_focal_loss(x, t, 0.25, gamma)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
        for i, v in enumerate(EXTREMES):
            want_loss, want_grad = analytic(float(xs[i]), target, 0.25, gamma)
            rtol = 1e-5 if dtype == torch.float32 else 1e-12
            assert math.isclose(loss[i].item(), want_loss, rel_tol=rtol, abs_tol=1e-30), (v, target)
            assert math.isclose(x.grad[i].item(), want_grad, rel_tol=rtol, abs_tol=1e-30), (v, target)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_extremes(device, dtype):
    big = torch.finfo(dtype).max
    x = torch.tensor([-big, -1e4, -50.0, 0.0, 50.0, 1e4, big], dtype=dtype, device=device).unsqueeze(-1)
    x = x.to(dtype).requires_grad_()
    for labels in (torch.zeros(7, dtype=torch.long), torch.ones(7, dtype=torch.long)):
        loss = sigmoid_focal_loss(x, labels.to(device), 0.25, 0.5)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
        x.grad = None


@pytest.mark.parametrize("device", DEVICES)
def test_nan_logits_give_nan(device):
    x = torch.tensor([[0.0, math.nan, 1.0]], device=device, requires_grad=True)
    loss = sigmoid_focal_loss(x, torch.tensor([1], device=device))
    assert torch.isnan(loss[0, 1]) and torch.isfinite(loss[0, [0, 2]]).all()
    loss.sum().backward()
    assert torch.isnan(x.grad[0, 1]) and torch.isfinite(x.grad[0, [0, 2]]).all()
    assert torch.isnan(sigmoid_focal_loss(x, torch.tensor([3], device=device), reduction="sum"))
