"""sigmoid_focal_loss_star (FL*): against the float64 reference and fvcore's definition,
gradients, autograd, torch.compile, bad inputs, and hypothesis properties."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    DEVICES,
    bad_label_error,
    make_logits,
    seeded_logits,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from operators import fvcore_star

from focal_loss_ext import sigmoid_focal_loss_star, sigmoid_focal_loss_star_reference

OP = torch.ops.focal_loss_ext.sigmoid_focal_loss_star


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_matches_fvcore_for_hard_targets_and_zero_beta(device, alpha, reduction):
    x = make_logits((50, 20), torch.float64, device)
    t = (torch.rand(50, 20, device=device) < 0.2).double()
    for gamma in (1.0, 4.0):
        torch.testing.assert_close(
            sigmoid_focal_loss_star(x, t, alpha, gamma, reduction), fvcore_star(x, t, alpha, gamma, reduction)
        )


def test_soft_targets_differ_from_fvcore_as_documented():
    """fvcore scales the logit by 2t - 1; FL* here mixes the two hard cases."""
    x, t = torch.tensor([[1.5]], dtype=torch.float64), torch.tensor([[0.5]], dtype=torch.float64)
    ours = sigmoid_focal_loss_star(x, t, -1.0, 2.0)
    mix = 0.5 * (-F.logsigmoid(2 * x) - F.logsigmoid(-2 * x)) / 2
    torch.testing.assert_close(ours, mix)
    assert not torch.allclose(ours, fvcore_star(x, t, -1.0, 2.0))


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_logits_finite(device):
    x = torch.tensor([[-1e4, -100.0, 0.0, 100.0, 1e4]], device=device).requires_grad_()
    for target in (0.0, 1.0, 0.3):
        loss = sigmoid_focal_loss_star(x, torch.full_like(x, target), gamma=4.0, beta=1.0, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


X = torch.zeros(4, 3)
LABELS = torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(gamma=0.0), ValueError, r"gamma must be a finite number > 0"),
        (dict(gamma=float("inf")), ValueError, r"gamma must be a finite number > 0"),
        (dict(beta=float("nan")), ValueError, r"beta must be a finite number"),
        (dict(targets=torch.tensor([0, 1, 4, 0])), RuntimeError, bad_label_error(4)),
        (dict(targets=torch.zeros(4, 2)), ValueError, r"floating targets must have the same shape as inputs"),
        (dict(alpha=torch.ones(4)), ValueError, r"alpha must have 3 elements \(one per class"),
        (dict(reduction="avg"), ValueError, r"reduction must be one of 'none', 'mean', 'sum', got 'avg'"),
        (dict(label_smoothing=1.0), ValueError, r"label_smoothing must be in \[0, 1\)"),
        (
            dict(weight=torch.ones(2, requires_grad=True)),
            ValueError,
            r"weight requires grad, but "
            r"sigmoid_focal_loss_star only differentiates",
        ),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(inputs=X, targets=LABELS)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        sigmoid_focal_loss_star(args.pop("inputs"), args.pop("targets"), **args)


def test_bad_input_through_the_raw_op():
    with pytest.raises(RuntimeError, match=r"gamma must be a finite number > 0 \(FL\* divides by it\)"):
        OP(X, LABELS, None, None, None, 0.25, 0.0, 0.0, 1.0, 0.0, -1, 2, False)
    with pytest.raises(RuntimeError, match=r"beta must be a finite number"):
        OP(X, LABELS, None, None, None, 0.25, 2.0, float("inf"), 1.0, 0.0, -1, 2, False)


SETTINGS = settings(max_examples=40, deadline=None)
shapes = st.tuples(st.integers(0, 9), st.integers(1, 23))
gammas = st.floats(0.05, 8.0)
betas = st.floats(-5.0, 5.0)
scales = st.sampled_from([1e-3, 1.0, 30.0, 1e4])


@SETTINGS
@given(shapes, gammas, betas, scales, st.integers(0, 2**31))
def test_property_nonnegative_finite_and_close_to_float64(shape, gamma, beta, scale, seed):
    x = seeded_logits(shape, seed, scale, torch.float32).requires_grad_()
    t = (torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) < 0.3).float()
    loss = sigmoid_focal_loss_star(x, t, gamma=gamma, beta=beta)
    assert (loss >= 0).all() and torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()
    expected = sigmoid_focal_loss_star_reference(x.detach().double(), t.double(), gamma=gamma, beta=beta)
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-4)


@SETTINGS
@given(shapes, gammas, betas, st.integers(0, 2**31), st.sampled_from(["none", "sum", "mean"]))
def test_property_labels_equal_one_hot(shape, gamma, beta, seed, reduction):
    rows, k = shape
    x = seeded_logits(shape, seed, 5.0)
    labels = torch.randint(0, k + 1, (rows,), generator=torch.Generator().manual_seed(seed + 1))
    onehot = F.one_hot(labels, k + 1)[:, :k].double()
    torch.testing.assert_close(
        sigmoid_focal_loss_star(x, labels, gamma=gamma, beta=beta, reduction=reduction),
        sigmoid_focal_loss_star(x, onehot, gamma=gamma, beta=beta, reduction=reduction),
        equal_nan=True,
    )


@pytest.mark.cuda
@SETTINGS
@given(shapes, gammas, betas, st.integers(0, 2**31))
def test_property_cpu_equals_cuda(shape, gamma, beta, seed):
    x = seeded_logits(shape, seed, 5.0, torch.float32)
    labels = torch.randint(0, shape[1] + 1, (shape[0],), generator=torch.Generator().manual_seed(seed))
    cpu = sigmoid_focal_loss_star(x, labels, gamma=gamma, beta=beta, reduction="sum")
    gpu = sigmoid_focal_loss_star(x.cuda(), labels.cuda(), gamma=gamma, beta=beta, reduction="sum").cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-6)
