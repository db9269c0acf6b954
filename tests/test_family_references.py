"""The float64 references of quality focal, varifocal, Gaussian focal and asymmetric loss.

Three kinds of evidence: agreement with the implementations users run today (benchmarks/
baselines.py: mmdet, RT-DETR, Ultralytics, mmdet3d, timm), equal where the maths is the same and
shown to differ where their clamps or float16 overflow change it; the closed-form gradients of
tests/family_math.py (what the kernels compute) against autograd of the references; and
properties (hypothesis) with the argument checks.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
from family_math import RULES
from helpers import seeded_logits
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import baselines
from focal_loss_ext.reference import (
    asymmetric_loss_reference,
    gaussian_focal_loss_reference,
    one_hot_targets,
    quality_focal_loss_reference,
    sigmoid_focal_loss_reference,
    varifocal_loss_reference,
)

F64 = dict(rtol=1e-12, atol=1e-12)
EXTREMES = torch.tensor([1e4, -1e4, 745.0, -745.0, 720.0, -720.0, 40.0, -40.0, 0.0], dtype=torch.float64)
REFERENCES = {
    "quality_focal_loss": quality_focal_loss_reference,
    "varifocal_loss": varifocal_loss_reference,
    "gaussian_focal_loss": gaussian_focal_loss_reference,
    "asymmetric_loss": asymmetric_loss_reference,
}
SETTINGS = settings(max_examples=60, deadline=None)


def logits(shape, scale=4.0, extremes=True):
    """float64 logits that require grad; the first row holds EXTREMES (repeated to fill it)."""
    x = torch.randn(shape, dtype=torch.float64) * scale
    if extremes:
        x[0] = EXTREMES.repeat(shape[-1] // len(EXTREMES) + 1)[: shape[-1]]
    return x.requires_grad_()


def labels_and_scores(rows, classes, ignore=False):
    labels = torch.randint(0, classes + 1, (rows,))
    if ignore:
        labels[torch.rand(rows) < 0.2] = -1
    return labels, torch.rand(rows, dtype=torch.float64)


def soft_targets(shape, positives=0.3):
    """0 on most elements, a soft positive in (0, 1] on the rest, some exactly 1."""
    q = torch.rand(shape, dtype=torch.float64) * (torch.rand(shape) < positives)
    q[torch.rand(shape) < 0.05] = 1.0
    return q


def grad(loss, x):
    return torch.autograd.grad(loss.sum(), x)[0]


# (a) agreement with the implementations in use ------------------------------------------------


@pytest.mark.parametrize("beta", [2.0, 1.5])
@pytest.mark.parametrize("classes", [1, 7, 80, 81, 91])
def test_quality_focal_equals_mmdet(beta, classes):
    x = logits((24, classes))
    labels, scores = labels_and_scores(24, classes)
    theirs = baselines.mmdet_quality_focal_loss(x, labels, scores, beta)
    ours = quality_focal_loss_reference(x, labels, scores, beta).sum(-1)
    torch.testing.assert_close(ours, theirs, **F64)
    torch.testing.assert_close(grad(ours, x), grad(theirs, x), **F64)
    dense = one_hot_targets(labels, classes, dtype=torch.float64)[0] * scores[:, None]
    ours_dense = quality_focal_loss_reference(x, dense, beta=beta)
    torch.testing.assert_close(ours_dense, baselines.mmdet_quality_focal_loss_dense(x, dense, beta), **F64)


@pytest.mark.parametrize("iou_weighted", [True, False])
@pytest.mark.parametrize("alpha, gamma", [(0.75, 2.0), (0.5, 1.5)])
def test_varifocal_equals_mmdet(iou_weighted, alpha, gamma):
    x = logits((30, 80))
    q = soft_targets((30, 80))
    ours = varifocal_loss_reference(x, q, alpha=alpha, gamma=gamma, iou_weighted=iou_weighted)
    theirs = baselines.mmdet_varifocal_loss(x, q, alpha, gamma, iou_weighted)
    torch.testing.assert_close(ours, theirs, **F64)
    torch.testing.assert_close(grad(ours, x), grad(theirs, x), **F64)
    # labels + scores give the same numbers as mmdet's dense one-hot x scores (scores > 0)
    labels, scores = labels_and_scores(30, 80)
    scores = scores.clamp(min=0.01)
    dense = one_hot_targets(labels, 80, dtype=torch.float64)[0] * scores[:, None]
    ours = varifocal_loss_reference(x, labels, scores, alpha, gamma, iou_weighted=iou_weighted)
    torch.testing.assert_close(ours, baselines.mmdet_varifocal_loss(x, dense, alpha, gamma, iou_weighted), **F64)


def test_detached_varifocal_equals_rtdetr():
    batch, queries, classes = 2, 300, 80
    x = logits((batch, queries, classes))
    labels = torch.full((batch, queries), classes)
    matched = torch.rand(batch, queries) < 0.1
    labels[matched] = torch.randint(0, classes, (int(matched.sum()),))
    ious = torch.rand(batch, queries, dtype=torch.float64) * matched
    ious[matched.nonzero()[0].unbind()] = 0.0  # a matched query whose box misses: weight 0 in both
    num_boxes = torch.tensor(float(matched.sum()), dtype=torch.float64)
    theirs = baselines.rtdetr_varifocal_loss(x, labels, ious, num_boxes)
    ours = varifocal_loss_reference(x, labels, ious, reduction="sum", detach_weight=True, normalizer=num_boxes)
    torch.testing.assert_close(ours, theirs, **F64)
    torch.testing.assert_close(grad(ours, x), grad(theirs, x), **F64)


def test_varifocal_equals_ultralytics():
    x = logits((2, 50, 80))
    labels, scores = labels_and_scores(100, 80)
    labels, scores = labels.view(2, 50), scores.view(2, 50)
    onehot = one_hot_targets(labels, 80, dtype=torch.float64)[0]
    theirs = baselines.ultralytics_varifocal_loss(x, onehot * scores[..., None], onehot)
    ours = varifocal_loss_reference(x, labels, scores, reduction="sum", normalizer=50)
    torch.testing.assert_close(ours, theirs, **F64)
    torch.testing.assert_close(grad(ours, x), grad(theirs, x), **F64)


def gaussian_heatmap(shape, peaks=0.05):
    y = torch.rand(shape, dtype=torch.float64) ** 4
    y[torch.rand(shape) < peaks] = 1.0
    return y


@pytest.mark.parametrize("alpha, gamma", [(2.0, 4.0), (1.5, 3.0)])
def test_gaussian_focal_equals_mmdet_away_from_eps(alpha, gamma):
    # mmdet adds eps = 1e-12 inside both logs; with |x| <= 6 that moves the loss by at most
    # eps / min(p, 1 - p) < 5e-10, so this is the tolerance.
    x = (torch.rand(2, 3, 16, 16, dtype=torch.float64) * 12 - 6).requires_grad_()
    y = gaussian_heatmap(x.shape)
    ours = gaussian_focal_loss_reference(x, y, alpha, gamma)
    theirs = baselines.mmdet_gaussian_focal_loss(x.sigmoid(), y, alpha, gamma)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-10)
    torch.testing.assert_close(grad(ours, x), grad(theirs, x), rtol=0, atol=5e-10)


@pytest.mark.parametrize("gamma_pos, gamma_neg, clip", [(1.0, 4.0, 0.05), (0.0, 4.0, 0.05), (0.0, 2.5, 0.0), (0, 0, 0)])
def test_asymmetric_equals_timm_away_from_eps(gamma_pos, gamma_neg, clip):
    # timm clamps both probabilities at 1e-8: away from it (|x| <= 15) the two are one formula
    x = (torch.rand(40, 20, dtype=torch.float64) * 30 - 15).requires_grad_()
    y = (torch.rand(40, 20) < 0.2).double()
    ours = asymmetric_loss_reference(x, y, gamma_pos, gamma_neg, clip, "sum")
    theirs = baselines.timm_asymmetric_loss(x, y, gamma_neg, gamma_pos, clip)
    torch.testing.assert_close(ours, theirs, **F64)
    torch.testing.assert_close(grad(ours, x), grad(theirs, x), **F64)


def true_loss_and_grad(name, x, q, **params):
    """The closed form (family_math), in float64, for the elements of x and q."""
    loss, g = RULES[name](
        x.detach().double(), q.double(), q.double() == 1 if name == "gaussian_focal_loss" else q > 0, **params
    )
    return loss, g


def test_centerpoint_clip_zeroes_the_gradient_of_saturated_pixels():
    # a missed peak (y = 1, x << 0) and a background pixel that fires (y = 0, x >> 0), at and past
    # mmdet3d's clip_sigmoid bounds (p in [1e-4, 1 - 1e-4], |x| > 9.2)
    x = torch.tensor([-12.0, -30.0, 12.0, 30.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    theirs = baselines.mmdet_gaussian_focal_loss(baselines.clip_sigmoid(x), y)
    assert (grad(theirs, x) == 0).all() and (theirs < 9.22).all()  # capped at -log(1e-4), no gradient
    ours = gaussian_focal_loss_reference(x, y)
    loss, g = true_loss_and_grad("gaussian_focal_loss", x, y, alpha=2.0, gamma=4.0)
    torch.testing.assert_close(ours, loss, **F64)
    torch.testing.assert_close(grad(ours, x), g, **F64)
    assert (g.abs() > 0.99).all() and torch.allclose(ours, x.detach().abs(), rtol=1e-4)


def test_float16_gaussian_focal_overflows_in_mmdet_not_here():
    # in float16 sigmoid(9) rounds to 1 and sigmoid(-20) to 0, and mmdet's eps (1e-12) to 0: log(0)
    x64 = torch.tensor([9.0, 20.0, -20.0, -9.0, 0.5], dtype=torch.float64)
    y64 = torch.tensor([0.0, 0.5, 1.0, 1.0, 0.3], dtype=torch.float64)
    x = x64.half().requires_grad_()
    theirs = baselines.mmdet_gaussian_focal_loss(x.sigmoid(), y64.half())
    assert torch.isinf(theirs[:3]).all()
    ours = gaussian_focal_loss_reference(x, y64.half())
    loss, g = true_loss_and_grad("gaussian_focal_loss", x64, y64, alpha=2.0, gamma=4.0)
    torch.testing.assert_close(ours.double(), loss, rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(grad(ours, x).double(), g, rtol=2e-3, atol=1e-5)


def test_timm_asymmetric_eps_clamp_and_float16_overflow():
    # float64: timm's log(clamp(p, 1e-8)) caps a confident mistake at 18.4 with no gradient
    x = torch.tensor([-30.0, 30.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0.0], dtype=torch.float64)
    theirs = baselines.timm_asymmetric_loss(x, y, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    assert grad(theirs, x).abs().max() == 0 and theirs < 37
    ours = asymmetric_loss_reference(x, y, 0.0, 0.0, 0.0)
    torch.testing.assert_close(ours, torch.tensor([30.0, 30.0], dtype=torch.float64), **F64)
    torch.testing.assert_close(grad(ours, x), torch.tensor([-1.0, 1.0], dtype=torch.float64), **F64)
    # float16, no clip: 1 - sigmoid(10) is 0 and the clamp's 1e-8 is 0 too: an infinite loss
    x = torch.tensor([10.0, -10.0, 3.0], dtype=torch.float16, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float16)
    assert torch.isinf(baselines.timm_asymmetric_loss(x, y, gamma_neg=4.0, gamma_pos=0.0, clip=0.0))
    ours = asymmetric_loss_reference(x, y, 0.0, 4.0, 0.0)
    loss, g = true_loss_and_grad("asymmetric_loss", x, y, gamma_pos=0.0, gamma_neg=4.0, clip=0.0)
    torch.testing.assert_close(ours.double(), loss, rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(grad(ours, x).double(), g, rtol=2e-3, atol=1e-5)


def test_mmdet_quality_and_varifocal_are_stable_too():
    # both work on logits (BCE with logits), so at |x| = 1e4 theirs and ours still agree
    x = EXTREMES.repeat(2, 1).requires_grad_()
    q = torch.zeros_like(x)
    q[1] = 1.0
    for ours, theirs in (
        (quality_focal_loss_reference(x, q), baselines.mmdet_quality_focal_loss_dense(x, q)),
        (varifocal_loss_reference(x, q), baselines.mmdet_varifocal_loss(x, q)),
    ):
        assert torch.isfinite(theirs).all()
        torch.testing.assert_close(ours, theirs, **F64)
        torch.testing.assert_close(grad(ours, x), grad(theirs, x), **F64)


# (b) the closed-form gradients (family_math) against autograd -----------------------------------

PARAMS = {
    "quality_focal_loss": [dict(beta=2.0), dict(beta=0.5), dict(beta=0.0), dict(beta=3.3)],
    "varifocal_loss": [
        dict(alpha=0.75, gamma=2.0),
        dict(alpha=0.5, gamma=0.4, iou_weighted=False),
        dict(alpha=0.75, gamma=2.0, detach_weight=True),
        dict(alpha=0.3, gamma=0.0),
    ],
    "gaussian_focal_loss": [dict(alpha=2.0, gamma=4.0), dict(alpha=0.5, gamma=1.5), dict(alpha=0.0, gamma=0.0)],
    "asymmetric_loss": [
        dict(gamma_pos=0.0, gamma_neg=4.0, clip=0.05),
        dict(gamma_pos=1.0, gamma_neg=0.5, clip=0.2),
        dict(gamma_pos=0.3, gamma_neg=2.0, clip=0.0),
        dict(gamma_pos=0.0, gamma_neg=0.0, clip=0.05),
    ],
}
CASES = [(name, params) for name, table in PARAMS.items() for params in table]


def check_closed_form(name, params, x, q):
    ours = REFERENCES[name](x, q, **params)
    loss, g = true_loss_and_grad(name, x, q, **params)
    torch.testing.assert_close(ours, loss, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(grad(ours, x), g, rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("name, params", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_closed_form_gradient_equals_autograd(name, params):
    x = logits((64, 18))
    q = gaussian_heatmap(x.shape) if name == "gaussian_focal_loss" else soft_targets(x.shape)
    check_closed_form(name, params, x, q)


@SETTINGS
@given(
    st.sampled_from(sorted(PARAMS)),
    st.floats(0.0, 5.0),
    st.floats(0.0, 5.0),
    st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    st.integers(0, 2**31),
)
def test_closed_form_gradient_equals_autograd_random(name, e1, e2, scale, seed):
    params = {
        "quality_focal_loss": dict(beta=e1),
        "varifocal_loss": dict(alpha=e2 / 5, gamma=e1),
        "gaussian_focal_loss": dict(alpha=e1, gamma=e2),
        "asymmetric_loss": dict(gamma_pos=e1, gamma_neg=e2, clip=(seed % 3) * 0.05),
    }[name]
    x = seeded_logits((6, 9), seed, scale).requires_grad_()
    torch.manual_seed(seed)
    q = gaussian_heatmap(x.shape) if name == "gaussian_focal_loss" else soft_targets(x.shape)
    check_closed_form(name, params, x, q)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 3.0])
def test_quality_focal_gradient_at_p_equal_q_is_zero(beta):
    x = logits((8, 5), extremes=False)
    q = torch.sigmoid(x).detach()
    g = grad(quality_focal_loss_reference(x, q, beta=beta), x)
    assert (g == 0).all()
    assert (true_loss_and_grad("quality_focal_loss", x, q, beta=beta)[1] == 0).all()
    naive = baselines.mmdet_quality_focal_loss_dense(x, q, beta)  # autograd of |q - p|^beta
    if beta >= 1:
        assert (grad(naive, x) == 0).all()
    else:
        assert torch.isnan(grad(naive, x)).all()  # 0 * inf


# (c) properties ---------------------------------------------------------------------------------

exponents = st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0.0, 6.0))
scales = st.sampled_from([1e-3, 1.0, 30.0, 1e4])


def random_call(name, x, seed, e1, e2, labels):
    """One call of the reference `name` with drawn parameters and a drawn target form."""
    g = torch.Generator().manual_seed(seed)
    rows, classes = x.shape
    if labels and name != "gaussian_focal_loss":
        targets = torch.randint(-1, classes + 1, (rows,), generator=g)
        scores = torch.rand(rows, generator=g, dtype=x.dtype)
    else:
        targets = torch.rand(x.shape, generator=g, dtype=x.dtype) * (torch.rand(x.shape, generator=g) < 0.3)
        targets[torch.rand(x.shape, generator=g) < 0.1] = 1.0
        scores = None
    if name == "quality_focal_loss":
        return quality_focal_loss_reference(x, targets, scores, e1)
    if name == "varifocal_loss":
        return varifocal_loss_reference(x, targets, scores, 0.75, e1, detach_weight=bool(seed % 2))
    if name == "gaussian_focal_loss":
        return gaussian_focal_loss_reference(x, targets, e1, e2)
    return asymmetric_loss_reference(x, targets, e1, e2, (seed % 3) * 0.05)


@SETTINGS
@given(st.sampled_from(sorted(REFERENCES)), exponents, exponents, scales, st.integers(0, 2**31), st.booleans())
def test_loss_and_gradient_finite_and_loss_nonnegative(name, e1, e2, scale, seed, labels):
    x = seeded_logits((7, 11), seed, scale).requires_grad_()
    loss = random_call(name, x, seed, e1, e2, labels)
    assert torch.isfinite(loss).all() and (loss >= 0).all()
    assert torch.isfinite(grad(loss, x)).all()


@SETTINGS
@given(scales, st.integers(0, 2**31), st.sampled_from(["none", "sum", "mean"]))
def test_zero_exponents_are_bce(scale, seed, reduction):
    x = seeded_logits((5, 9), seed, scale)
    q = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    bce = F.binary_cross_entropy_with_logits(x, q, reduction=reduction)
    torch.testing.assert_close(quality_focal_loss_reference(x, q, beta=0.0, reduction=reduction), bce)
    torch.testing.assert_close(asymmetric_loss_reference(x, q, 0.0, 0.0, 0.0, reduction), bce)


@SETTINGS
@given(exponents, st.floats(0.0, 1.0), scales, st.integers(0, 2**31))
def test_varifocal_negatives_are_focal_negatives_times_alpha(gamma, alpha, scale, seed):
    x = seeded_logits((5, 9), seed, scale)
    zeros = torch.zeros_like(x)
    fl = sigmoid_focal_loss_reference(x, zeros, alpha=-1.0, gamma=gamma)
    torch.testing.assert_close(varifocal_loss_reference(x, zeros, alpha=alpha, gamma=gamma), alpha * fl)


@SETTINGS
@given(exponents, exponents, scales, st.integers(0, 2**31))
def test_gaussian_focal_with_hard_targets_is_focal_loss(alpha, gamma, scale, seed):
    x = seeded_logits((5, 9), seed, scale)
    y = (torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < 0.3).double()
    # the peaks: FL's positive term with alpha_t = 1; elsewhere (1 - 0)^gamma = 1: FL's negative
    fl = sigmoid_focal_loss_reference(x, y, alpha=-1.0, gamma=alpha)
    torch.testing.assert_close(gaussian_focal_loss_reference(x, y, alpha, gamma), fl)


@SETTINGS
@given(st.sampled_from(["quality_focal_loss", "varifocal_loss", "asymmetric_loss"]), exponents, scales,
       st.integers(0, 2**31), st.sampled_from(["none", "sum", "mean"]))  # fmt: skip
def test_labels_equal_dense_targets(name, exponent, scale, seed, reduction):
    """Integer labels (+ scores) equal the dense one-hot (x scores) form on the non-ignored rows."""
    x = seeded_logits((9, 6), seed, scale).requires_grad_()
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, 7, (9,), generator=g)
    scores = torch.rand(9, generator=g, dtype=torch.float64).clamp(min=0.01) if name != "asymmetric_loss" else None
    dense, keep = one_hot_targets(labels, 6, dtype=torch.float64)
    if scores is not None:
        dense = dense * scores[:, None]
    fn = REFERENCES[name]
    params = {"quality_focal_loss": dict(beta=exponent), "varifocal_loss": dict(gamma=exponent)}.get(
        name, dict(gamma_neg=exponent)
    )
    extra = () if scores is None else (scores,)
    ours = fn(x, labels, *extra, reduction=reduction, **params)
    expected = fn(x[keep], dense[keep], reduction=reduction, **params)
    if reduction == "none":
        expected = torch.zeros_like(ours).index_put((keep,), expected)
    torch.testing.assert_close(ours, expected)
    gx = grad(ours, x)
    assert torch.isfinite(gx).all() and (gx[~keep] == 0).all()


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_weight_normalizer_and_mean_over_kept_rows(name):
    x = logits((4, 6, 5), extremes=False)
    fn = REFERENCES[name]
    if name == "gaussian_focal_loss":
        targets, extra, keep = gaussian_heatmap(x.shape), (), torch.ones(4, 6, dtype=torch.bool)
    else:
        targets = torch.randint(0, 6, (4, 6))
        targets[0, :3] = -1
        keep = targets != -1
        extra = (torch.rand(4, 6, dtype=torch.float64),) if name != "asymmetric_loss" else ()
    w = torch.rand(4, 6, dtype=torch.float64)
    elements = fn(x, targets, *extra)
    weighted = elements * w[..., None]
    for normalizer in (3.0, torch.tensor(3.0, dtype=torch.float64)):
        total = fn(x, targets, *extra, reduction="sum", weight=w, normalizer=normalizer)
        torch.testing.assert_close(total, weighted.sum() / 3)
    torch.testing.assert_close(fn(x, targets, *extra, reduction="mean"), elements.sum() / (keep.sum() * 5))
    assert (elements[~keep] == 0).all()


def test_empty_inputs():
    x = torch.zeros(0, 80, dtype=torch.float64, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.int64)
    for fn, args in (
        (quality_focal_loss_reference, (labels, torch.zeros(0, dtype=torch.float64))),
        (varifocal_loss_reference, (labels,)),
        (asymmetric_loss_reference, (labels,)),
        (gaussian_focal_loss_reference, (torch.zeros(0, 80, dtype=torch.float64),)),
    ):
        assert fn(x, *args).shape == (0, 80) and fn(x, *args, reduction="sum") == 0


X = torch.zeros(3, 4)
LABELS = torch.tensor([0, 4, -1])
BAD_INPUTS = [
    (quality_focal_loss_reference, (X, LABELS), dict(beta=-1.0), ValueError, "beta must be a finite number >= 0"),
    (varifocal_loss_reference, (X, LABELS), dict(gamma=-0.5), ValueError, "gamma must be a finite number >= 0"),
    (varifocal_loss_reference, (X, LABELS), dict(alpha=float("nan")), ValueError, "alpha must be a finite number"),
    (gaussian_focal_loss_reference, (X, X), dict(gamma=-2.0), ValueError, "gamma must be"),
    (asymmetric_loss_reference, (X, LABELS), dict(gamma_neg=-4.0), ValueError, "gamma_neg must be"),
    (asymmetric_loss_reference, (X, LABELS), dict(clip=1.0), ValueError, r"clip must be in \[0, 1\)"),
    (asymmetric_loss_reference, (X, LABELS), dict(clip=-0.1), ValueError, "clip must be a finite number >= 0"),
    (asymmetric_loss_reference, (X, LABELS), dict(clip="0.05"), TypeError, "clip must be a number, got str"),
    (quality_focal_loss_reference, (X, LABELS, torch.tensor([0.5, 1.5, 0.0])), {}, ValueError, r"scores must lie in"),
    (varifocal_loss_reference, (X, LABELS, torch.tensor([-0.1, 0, 0])), {}, ValueError, r"scores must lie in"),
    (quality_focal_loss_reference, (X, X, torch.ones(3)), {}, ValueError, "scores requires integer targets"),
    (quality_focal_loss_reference, (X, LABELS, torch.ones(4)), {}, ValueError, r"scores must have the labels' shape"),
    (varifocal_loss_reference, (X, LABELS, torch.ones(3, dtype=torch.int64)), {}, TypeError, "scores must be a float"),
    (quality_focal_loss_reference, (X, torch.zeros(3, 5)), {}, ValueError, "floating targets must have inputs' shape"),
    (varifocal_loss_reference, (X, torch.zeros(4, dtype=torch.int64)), {}, ValueError, r"integer targets must have"),
    (gaussian_focal_loss_reference, (X, LABELS), {}, TypeError, "targets must be a floating heatmap"),
    (asymmetric_loss_reference, (X, X.bool()), {}, TypeError, "targets must be a floating tensor"),
    (asymmetric_loss_reference, (X.long(), LABELS), {}, TypeError, "inputs must be a floating tensor"),
    (quality_focal_loss_reference, (X, LABELS), dict(weight=torch.ones(4)), ValueError, "weight must be a tensor"),
    (gaussian_focal_loss_reference, (X, X), dict(reduction="avg"), ValueError, "reduction must be"),
]


@pytest.mark.parametrize("fn, args, kwargs, error, match", BAD_INPUTS)
def test_bad_input_names_the_argument(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_benchmark_baselines_compute_the_reference_loss(name):
    """The forms benchmarks/family.py times compute the loss of our reference on its inputs, so a
    fused row added to a case is compared with the same quantity."""
    from benchmarks import family

    case = family.CASES[name]
    x = case.make_inputs(case.shapes["quick"][0], torch.device("cpu"), torch.Generator().manual_seed(0))
    if name == "gaussian_focal_loss":
        expected = gaussian_focal_loss_reference(
            x["logits"], x["heatmap"], reduction="sum", normalizer=x["heatmap"].eq(1).sum().clamp(min=1)
        )
    elif name == "asymmetric_loss":
        expected = asymmetric_loss_reference(
            x["logits"], x["targets"], family.ASL_GAMMA_POS, family.ASL_GAMMA_NEG, family.ASL_CLIP, "sum"
        )
    else:
        params = (family.QFL_BETA,) if name == "quality_focal_loss" else (family.VFL_ALPHA, family.VFL_GAMMA)
        normalizer = x["scores"].sum().clamp(min=1)
        expected = REFERENCES[name](x["logits"], x["labels"], x["scores"], *params, "sum", normalizer=normalizer)
    eager = [impl for impl in case.impls if not impl.compiled]
    assert eager
    for impl in eager:
        torch.testing.assert_close(impl.loss(x), expected, rtol=1e-5, atol=1e-5)


# The public signatures the fused functions will share (positional order, defaults, keyword-only).
SIGNATURES = {
    "quality_focal_loss": "(inputs, targets, scores=None, beta=2.0, reduction='none', *, weight=None, "
    "normalizer=None, ignore_index=-1)",
    "varifocal_loss": "(inputs, targets, scores=None, alpha=0.75, gamma=2.0, reduction='none', *, "
    "iou_weighted=True, detach_weight=False, weight=None, normalizer=None, ignore_index=-1)",
    "gaussian_focal_loss": "(inputs, targets, alpha=2.0, gamma=4.0, reduction='none', *, weight=None, normalizer=None)",
    "asymmetric_loss": "(inputs, targets, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, reduction='none', *, "
    "weight=None, normalizer=None, ignore_index=-1)",
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature(name):
    signature = inspect.signature(REFERENCES[name])
    bare = signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )
    assert str(bare) == SIGNATURES[name]
