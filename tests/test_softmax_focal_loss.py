"""softmax_focal_loss: against the float64 reference and F.cross_entropy, gradients, autograd,
torch.compile, bad inputs, and hypothesis properties."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    DEVICES,
    EMULATED_CUDA,
    assert_close_to_reference,
    bad_label_error,
    make_logits,
    make_probabilities,
    reference_loss_and_grad,
    seeded_logits,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from operators import make_class_labels

from focal_loss_ext import softmax_focal_loss, softmax_focal_loss_reference

OP = torch.ops.focal_loss_ext.softmax_focal_loss
GAMMAS = [0.0, 0.5, 1.0, 2.0, 3.0]


def make_targets(form, shape, dtype, device):
    if form == "probabilities":
        return make_probabilities(shape, dtype, device)
    return make_class_labels(shape[:-1], shape[-1], device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("classes", [1, 7, 33, 1000, 4099])
@pytest.mark.parametrize("form", ["labels", "probabilities"])
def test_rows_of_any_length(device, classes, form):
    """Rows shorter than a vector, not a multiple of it, and much longer than a warp's pass."""
    x = make_logits((6, classes), torch.float64, device, requires_grad=True)
    t = make_targets(form, (6, classes), torch.float64, device)
    loss = softmax_focal_loss(x, t, gamma=2.0, reduction="sum")
    loss.backward()
    expected_loss, expected_grad = reference_loss_and_grad(
        softmax_focal_loss_reference, x, t, gamma=2.0, reduction="sum"
    )
    assert_close_to_reference(loss, expected_loss, torch.float64)
    assert_close_to_reference(x.grad, expected_grad, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gamma_zero_without_alpha_is_cross_entropy(device, smoothing, reduction):
    x = make_logits((4, 9, 11), torch.float64, device)
    labels = make_class_labels((4, 9), 11, device)
    probs = make_probabilities((4, 9, 11), torch.float64, device)
    for t, t_ce in ((labels, labels.reshape(-1)), (probs, probs.reshape(-1, 11))):
        ours = softmax_focal_loss(x, t, gamma=0.0, reduction=reduction, label_smoothing=smoothing)
        ce = F.cross_entropy(x.reshape(-1, 11), t_ce, reduction=reduction, label_smoothing=smoothing)
        torch.testing.assert_close(ours, ce.reshape(ours.shape))


@pytest.mark.parametrize("device", DEVICES)
def test_ignored_rows_and_empty_input(device):
    x = make_logits((5, 3), torch.float32, device, requires_grad=True)
    labels = torch.tensor([-100, 2, -100, 0, 1], device=device)
    loss = softmax_focal_loss(x, labels, reduction="none")
    loss.sum().backward()
    assert (loss[labels == -100] == 0).all() and (x.grad[labels == -100] == 0).all()
    all_ignored = torch.full((5,), -100, device=device)
    assert torch.isnan(softmax_focal_loss(x, all_ignored))  # the mean of nothing, as in F.cross_entropy
    empty = torch.zeros(0, 3, device=device)
    assert torch.isnan(softmax_focal_loss(empty, torch.zeros(0, dtype=torch.long, device=device)))
    assert softmax_focal_loss(empty, torch.zeros(0, 3, device=device), reduction="sum") == 0


X = torch.zeros(4, 3)
LABELS = torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(targets=torch.tensor([0, 1, 3, 2])),
            RuntimeError,
            bad_label_error(3) + ("" if EMULATED_CUDA else r"; expected a class in \[0, 3\) or ignore_index \(-100\)"),
        ),
        (dict(targets=torch.tensor([0, -1, 2, 2])), RuntimeError, bad_label_error(-1)),
        (dict(targets=torch.zeros(4, 2)), ValueError, r"floating targets must have the same shape as inputs"),
        (dict(targets=torch.zeros(3, dtype=torch.long)), ValueError, r"integer targets must have shape"),
        (
            dict(inputs=torch.zeros(4, 0), targets=torch.zeros(4, dtype=torch.long)),
            ValueError,
            r"inputs must have at least one class",
        ),
        (dict(inputs=torch.zeros(4, 3, dtype=torch.long)), TypeError, r"inputs must be a floating tensor"),
        (dict(alpha=torch.ones(4)), ValueError, r"alpha must have 3 elements \(one per class"),
        (dict(alpha=0.25), ValueError, r"alpha must be None or a 1-D tensor of C = 3 per-class weights"),
        (dict(alpha=torch.ones(3, 1)), ValueError, r"alpha must be None or a 1-D tensor"),
        (dict(gamma=-1.0), ValueError, r"gamma must be a number >= 0"),
        (dict(label_smoothing=1.0), ValueError, r"label_smoothing must be in \[0, 1\)"),
        (dict(reduction="avg"), ValueError, r"reduction must be one of 'none', 'mean', 'sum', got 'avg'"),
        (dict(weight=torch.ones(3)), ValueError, r"weight must have 4 elements \(one per row"),
        (dict(inputs=[[0.0]]), TypeError, r"inputs must be a torch.Tensor"),
        (
            dict(targets=torch.zeros(4, 3, requires_grad=True)),
            ValueError,
            r"targets requires grad, but softmax_focal_loss only differentiates inputs",
        ),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(inputs=X, targets=LABELS)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        softmax_focal_loss(args.pop("inputs"), args.pop("targets"), **args)


def test_bad_input_through_the_raw_op():
    with pytest.raises(RuntimeError, match=r"gamma must be a finite number >= 0"):
        OP(X, LABELS, None, None, None, -1.0, 1.0, 0.0, -100, 1, False)
    with pytest.raises(RuntimeError, match=r"reduction must be 0 \(none\), 1 \(mean\) or 2 \(sum\)"):
        OP(X, LABELS, None, None, None, 2.0, 1.0, 0.0, -100, 3, False)


SETTINGS = settings(max_examples=40, deadline=None)
shapes = st.tuples(st.integers(0, 9), st.integers(1, 40))
gammas = st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0.0, 6.0))
scales = st.sampled_from([1e-3, 1.0, 30.0, 1e3])


@SETTINGS
@given(shapes, gammas, scales, st.integers(0, 2**31))
def test_property_loss_nonnegative_finite_and_close_to_float64(shape, gamma, scale, seed):
    x = seeded_logits(shape, seed, scale, torch.float32).requires_grad_()
    labels = torch.randint(0, shape[1], shape[:1], generator=torch.Generator().manual_seed(seed + 1))
    loss = softmax_focal_loss(x, labels, gamma=gamma, reduction="none")
    assert (loss >= 0).all() and torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()
    expected_loss, expected_grad = reference_loss_and_grad(
        softmax_focal_loss_reference, x, labels, gamma=gamma, reduction="none"
    )
    torch.testing.assert_close(loss.double(), expected_loss, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(x.grad.double(), expected_grad, atol=1e-5, rtol=1e-4)


@SETTINGS
@given(shapes, scales, st.integers(0, 2**31), st.sampled_from(["none", "sum", "mean"]), st.floats(0.0, 0.9))
def test_property_gamma_zero_is_cross_entropy(shape, scale, seed, reduction, smoothing):
    x = seeded_logits(shape, seed, scale)
    labels = torch.randint(-1, shape[1], shape[:1], generator=torch.Generator().manual_seed(seed + 1))
    ours = softmax_focal_loss(x, labels, gamma=0.0, reduction=reduction, label_smoothing=smoothing, ignore_index=-1)
    ce = F.cross_entropy(x, labels, reduction=reduction, label_smoothing=smoothing, ignore_index=-1)
    torch.testing.assert_close(ours, ce, equal_nan=True)


@SETTINGS
@given(shapes, gammas, st.integers(0, 2**31), st.floats(0.0, 0.5))
def test_property_labels_equal_one_hot_probabilities(shape, gamma, seed, smoothing):
    x = seeded_logits(shape, seed, 5.0).requires_grad_()
    labels = torch.randint(0, shape[1], shape[:1], generator=torch.Generator().manual_seed(seed + 1))
    onehot = F.one_hot(labels, shape[1]).double()
    kw = dict(gamma=gamma, reduction="sum", label_smoothing=smoothing)
    ours = softmax_focal_loss(x, labels, **kw)
    dense = softmax_focal_loss(x, onehot, **kw)
    torch.testing.assert_close(ours, dense)
    if shape[0]:
        torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(dense, x)[0])


def test_deterministic_for_any_thread_count():
    x = make_logits((3000, 50), torch.float32, "cpu")
    labels = make_class_labels((3000,), 50, "cpu")
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(softmax_focal_loss(x, labels, reduction="sum"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@pytest.mark.cuda
@SETTINGS
@given(shapes, gammas, st.integers(0, 2**31))
def test_property_cpu_equals_cuda(shape, gamma, seed):
    x = seeded_logits(shape, seed, 5.0, torch.float32)
    labels = torch.randint(0, shape[1], shape[:1], generator=torch.Generator().manual_seed(seed))
    cpu = softmax_focal_loss(x, labels, gamma=gamma, reduction="sum")
    gpu = softmax_focal_loss(x.cuda(), labels.cuda(), gamma=gamma, reduction="sum").cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-6)
