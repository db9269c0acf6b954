"""Edge cases that each once gave a wrong answer: no classes with a row weight, a loss scale read
in half precision, a float16 gradient rounded twice, and the softmax loss of a confident
correct class rounded to zero."""

from __future__ import annotations

import mpmath
import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, DTYPES, reference_loss_and_grad
from operators import OPERATORS, SIGMOID, SOFTMAX, STAR, same_dtype_reference

import focal_loss_ext as fl

SIGMOID_OPERATORS = [SIGMOID, STAR]


# ---- K = 0 with a row weight -------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", ["labels", "float"])
@pytest.mark.parametrize("operator", SIGMOID_OPERATORS, ids=str)
def test_no_classes_with_weight_works_like_torch(operator, form, dtype, device):
    """(..., 0) logits with one weight per row: empty "none", sum 0, mean NaN, an empty
    gradient -- what binary_cross_entropy_with_logits gives for the same shapes."""
    x = torch.zeros((3, 4, 0), dtype=dtype, device=device, requires_grad=True)
    weight = torch.rand(3, 4, device=device)
    t = torch.zeros(3, 4, dtype=torch.long, device=device) if form == "labels" else torch.zeros_like(x)
    for reduction in ("none", "sum", "mean"):
        for normalizer in (None, 2.0, torch.tensor(2.0, device=device)):
            loss = operator.fn(x, t, weight=weight, reduction=reduction, normalizer=normalizer)
            bce = F.binary_cross_entropy_with_logits(
                x, torch.zeros_like(x), weight=weight.unsqueeze(-1).to(dtype), reduction=reduction
            )
            assert loss.shape == bce.shape and loss.dtype == dtype
            torch.testing.assert_close(loss, bce, equal_nan=True)
            (grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss))
            assert grad.shape == x.shape


# ---- scale_grad_ reads grad_output in opmath ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(), (2, 3)], ids=["reduced", "none"])
def test_scale_grad_reads_grad_output_in_opmath(shape, dtype):
    """70000 has no float16 value (and 1 + 2^-11 + 2^-20 rounds to 1 in float16): the product
    must be formed in float32 and rounded once."""
    for go, grad_scale, value, expected in (
        (70000.0, 1.0, 0.5, 35000.0),
        (7000.0, 10.0, 0.5, 35000.0),
        (1 + 2**-11 + 2**-20, 1.0, 1.0, 1 + 2**-11 + 2**-20),
    ):
        grad = torch.full((2, 3), value, dtype=dtype)
        grad_output = torch.full(shape, go, dtype=torch.float64)
        torch.ops.focal_loss_ext.scale_grad_(grad, grad_output, torch.tensor(grad_scale))
        assert torch.equal(grad, torch.full((2, 3), expected, dtype=torch.float64).to(dtype))


# ---- the float16 gradient is rounded once ------------------------------------------------------


def confident_logits(operator, rows, classes, device):
    """Logits 2-14 on the right side of every target: gradients from moderate down to tiny
    (below float16's normal range once divided by the normalizer)."""
    magnitude = torch.rand(rows, classes, dtype=torch.float64) * 12 + 2
    if operator.per_row:
        labels = torch.randint(0, classes, (rows,))
        x = -magnitude
        x[torch.arange(rows), labels] = 0.0
        return x.half().to(device), labels.to(device)
    t = (torch.rand(rows, classes) < 0.3).double()
    return ((2 * t - 1) * magnitude).half().to(device), t.half().to(device)


def ulps_apart(a, b):
    """Distance in float16 units in the last place (same-sign values)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("autocast", [False, True], ids=["float16-loss", "autocast"])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_float16_gradient_is_the_float64_gradient_rounded_once(operator, reduction, gamma, autocast, device):
    """With a GradScaler-like grad_output (65536 on autocast's float32 loss; 32768 on a float16
    loss, which cannot hold 65536) and a large normalizer, each gradient element is the float64
    one rounded once to float16 (a float32 computation may land one unit off near a rounding
    boundary); the old store-then-scale path was off by many units."""
    if operator is STAR and gamma == 0:
        gamma = 1.0  # FL* needs gamma > 0
    x, t = confident_logits(operator, 64, 20, device)
    x.requires_grad_()
    divisor = 3000.0  # "mean" divides by the rows (softmax) or elements already
    normalizer = divisor / (x.shape[0] if operator.per_row else x.numel()) if reduction == "mean" else divisor
    kw = dict(gamma=gamma, reduction=reduction, normalizer=torch.tensor(normalizer, device=device))
    with torch.autocast(device, dtype=torch.float16, enabled=autocast):
        loss = operator.fn(x, t, **kw)
    scale = 65536.0 if autocast else 32768.0
    grad_output = torch.full(loss.shape, scale, dtype=loss.dtype, device=device)
    loss.backward(grad_output)
    _, expected = reference_loss_and_grad(operator.reference, x, t, grad_output, **kw)
    expected16 = expected.half()
    assert expected.abs().min() < 6.1e-5 < expected.abs().max()  # subnormal float16 values included
    apart = ulps_apart(x.grad.cpu(), expected16)
    assert apart.max() <= 1 and (apart == 0).float().mean() > 0.98
    # the same float64 gradient, stored before the scale is known and then scaled: far off
    unscaled = (expected / scale * 3000).half()
    twice = (unscaled.float() * (scale / 3000)).half()
    assert ulps_apart(twice, expected16).max() > 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_float16_gradient_twice_through_a_retained_graph(operator, device):
    x, t = confident_logits(operator, 16, 6, device)
    x.requires_grad_()
    loss = operator.fn(x, t, reduction="sum", normalizer=100.0)
    (first,) = torch.autograd.grad(loss, x, torch.tensor(512.0, device=device), retain_graph=True)
    (second,) = torch.autograd.grad(loss, x, torch.tensor(512.0, device=device))
    assert torch.equal(first, second)
    eager_x = x.detach().clone().requires_grad_()
    same_dtype_reference(operator, eager_x.float(), t, reduction="sum", normalizer=100.0).backward(
        torch.tensor(512.0, device=device)
    )
    torch.testing.assert_close(first.float(), eager_x.grad.float(), atol=1e-3, rtol=2e-3)


# ---- softmax focal loss of a confident correct class -------------------------------------------


def mp_softmax_focal(row, label, gamma):
    """Loss and gradient of one row, to 40 digits: log p_y = -log1p(S), S the sum of
    exp(z_j - z_y) over j != y, and 1 - p_y = S / (1 + S), so nothing cancels."""
    mpmath.mp.dps = 40
    z = [mpmath.mpf(float(v)) for v in row]
    rest = mpmath.fsum(mpmath.exp(z[j] - z[label]) for j in range(len(z)) if j != label)
    log_p = -mpmath.log1p(rest)
    p = mpmath.exp(log_p)
    one_minus_p = rest / (1 + rest)
    loss = -(one_minus_p**gamma) * log_p
    if gamma == 0:
        u = mpmath.mpf(-1)
    else:
        u = gamma * p * one_minus_p ** (gamma - 1) * log_p - one_minus_p**gamma
    probs = [mpmath.exp(zj - z[label]) / (1 + rest) for zj in z]
    grad = [u * ((1 if j == label else 0) - probs[j]) for j in range(len(z))]
    grad[label] = u * one_minus_p
    return float(loss), [float(g) for g in grad]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_softmax_tiny_losses_keep_relative_precision(gamma, dtype, device):
    """Over logit scales 1-100 every row loss and gradient element agrees with a 40-digit
    value to a relative 1e-12 (float64) or 2e-5 (float32), down to the dtype's smallest normal
    numbers -- also for a confident correct class, whose loss is about the other classes'
    exp(z_j - z_y)."""
    rtol = 1e-12 if dtype == torch.float64 else 2e-5
    atol = torch.finfo(dtype).tiny * 16
    for scale in (1.0, 3.0, 10.0, 30.0, 100.0):
        z = (torch.randn(12, 5, dtype=torch.float64) * scale).to(dtype).double()
        labels = z.argmax(-1)
        labels[:4] = torch.randint(0, 5, (4,))  # some rows not confident
        x = z.to(device=device, dtype=dtype, copy=True).requires_grad_()
        loss = SOFTMAX.fn(x, labels.to(device), gamma=gamma, reduction="none")
        loss.sum().backward()
        for row in range(12):
            expected_loss, expected_grad = mp_softmax_focal(z[row], int(labels[row]), gamma)
            expected = torch.tensor([expected_loss, *expected_grad], dtype=torch.float64)
            actual = torch.cat([loss[row : row + 1].detach(), x.grad[row]]).cpu().double()
            assert ((actual - expected).abs() <= rtol * expected.abs() + atol).all(), (scale, row, actual, expected)


def test_softmax_beats_cross_entropy_on_a_confident_class():
    """N = 1, C = 2, logits (28.5, 0): the loss is log1p(e^-28.5) = 4.2e-13, which float32
    represents; F.cross_entropy rounds 1 + 4.2e-13 to 1 and returns 0."""
    x = torch.tensor([[28.5, 0.0]])
    labels = torch.tensor([0])
    expected = float(mpmath.log1p(mpmath.exp(-28.5)))
    assert F.cross_entropy(x, labels).item() == 0.0
    loss = fl.softmax_focal_loss(x, labels, gamma=0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    reference = fl.softmax_focal_loss_reference(x, labels, gamma=0.0)
    assert reference.item() == pytest.approx(expected, rel=1e-6)
