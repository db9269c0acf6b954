"""Property tests (hypothesis) against float64 identities."""

import pytest
import torch
import torch.nn.functional as F
from helpers import seeded_logits
from hypothesis import given, settings
from hypothesis import strategies as st

from focal_loss_ext import sigmoid_focal_loss
from focal_loss_ext.reference import one_hot_targets

SETTINGS = settings(max_examples=40, deadline=None)

shapes = st.tuples(st.integers(0, 9), st.integers(1, 23))
gammas = st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0.0, 6.0))
alphas = st.one_of(st.just(-1.0), st.floats(0.0, 1.0))
scales = st.sampled_from([1e-3, 1.0, 30.0, 1e4])


@SETTINGS
@given(shapes, gammas, alphas, scales, st.integers(0, 2**31))
def test_loss_nonnegative_and_finite(shape, gamma, alpha, scale, seed):
    x = seeded_logits(shape, seed, scale, torch.float32).requires_grad_()
    t = (torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) < 0.3).float()
    loss = sigmoid_focal_loss(x, t, alpha, gamma)
    assert (loss >= 0).all() and torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()


@SETTINGS
@given(shapes, scales, st.integers(0, 2**31), st.sampled_from(["none", "sum", "mean"]))
def test_gamma_zero_without_alpha_is_bce(shape, scale, seed, reduction):
    x = seeded_logits(shape, seed, scale)
    t = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    torch.testing.assert_close(
        sigmoid_focal_loss(x, t, -1.0, 0.0, reduction),
        F.binary_cross_entropy_with_logits(x, t, reduction=reduction),
        equal_nan=True,
    )


@SETTINGS
@given(shapes, gammas, alphas, st.integers(0, 2**31), st.sampled_from(["none", "sum", "mean"]), st.floats(0.0, 0.5))
def test_labels_equal_one_hot(shape, gamma, alpha, seed, reduction, smoothing):
    rows, k = shape
    x = seeded_logits(shape, seed, 5.0).requires_grad_()
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(-1, k + 1, (rows,), generator=g)
    onehot, keep = one_hot_targets(labels, k, -1, torch.float64)
    kw = dict(alpha=alpha, gamma=gamma, label_smoothing=smoothing)
    ours = sigmoid_focal_loss(x, labels, reduction=reduction, **kw)
    dense = sigmoid_focal_loss(x[keep], onehot[keep], reduction=reduction, **kw)
    torch.testing.assert_close(
        ours, dense if reduction != "none" else ours.new_zeros(ours.shape).index_put_((keep,), dense), equal_nan=True
    )
    if rows and reduction == "sum":
        (gx,) = torch.autograd.grad(ours, x)
        (gd,) = torch.autograd.grad(dense, x)
        assert torch.allclose(gx, gd) and (gx[~keep] == 0).all()


@pytest.mark.cuda
@SETTINGS
@given(shapes, gammas, alphas, st.integers(0, 2**31))
def test_cpu_equals_cuda(shape, gamma, alpha, seed):
    x = seeded_logits(shape, seed, 5.0, torch.float32)
    labels = torch.randint(0, shape[1] + 1, (shape[0],), generator=torch.Generator().manual_seed(seed))
    cpu = sigmoid_focal_loss(x, labels, alpha, gamma, "sum")
    gpu = sigmoid_focal_loss(x.cuda(), labels.cuda(), alpha, gamma, "sum").cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-6)
