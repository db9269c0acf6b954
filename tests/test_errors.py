"""Every bad input gets an error that names the argument and what was expected."""

import pytest
import torch
from helpers import DEVICES, HAS_CUDA, bad_label_error

from focal_loss_ext import sigmoid_focal_loss

X = torch.zeros(4, 3)
LABELS = torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(targets=torch.zeros(4, 2)), ValueError, r"floating targets must have the same shape as inputs"),
        (dict(targets=torch.zeros(3, dtype=torch.long)), ValueError, r"integer targets must have shape"),
        (dict(targets=torch.zeros(4, 3, dtype=torch.bool)), TypeError, r"targets must be floating .* or integer"),
        (dict(targets=torch.zeros(4, 3, dtype=torch.complex64)), TypeError, r"targets must be floating"),
        (dict(targets=torch.tensor([0, 1, 3, 7])), RuntimeError, bad_label_error(7)),
        (dict(targets=torch.tensor([0, -2, 1, 1])), RuntimeError, bad_label_error(-2)),
        (dict(inputs=torch.zeros(4, 3, dtype=torch.long)), TypeError, r"inputs must be a floating tensor"),
        (
            dict(inputs=torch.tensor(1.0), targets=torch.tensor(1.0)),
            ValueError,
            r"inputs must have shape \(\.\.\., K\)",
        ),
        (dict(inputs=[[0.0]]), TypeError, r"inputs must be a torch.Tensor"),
        (dict(targets=[0, 1, 2, 0]), TypeError, r"targets must be a torch.Tensor"),
        (dict(alpha=torch.ones(4)), ValueError, r"alpha must have 3 elements \(one per class"),
        (dict(alpha=torch.ones(3, 1)), ValueError, r"alpha must be a float or a 1-D tensor"),
        (dict(alpha=torch.ones(3, dtype=torch.long)), TypeError, r"alpha must be a floating tensor"),
        (dict(alpha="0.25"), TypeError, r"alpha must be a float or a 1-D tensor"),
        (dict(gamma=-0.5), ValueError, r"gamma must be a number >= 0"),
        (dict(gamma=float("nan")), ValueError, r"gamma must be a number >= 0"),
        (dict(label_smoothing=1.0), ValueError, r"label_smoothing must be in \[0, 1\)"),
        (dict(label_smoothing=-0.1), ValueError, r"label_smoothing must be in \[0, 1\)"),
        (dict(reduction="avg"), ValueError, r"reduction must be one of 'none', 'mean', 'sum', got 'avg'"),
        (dict(weight=torch.ones(5)), ValueError, r"weight must have 4 elements \(one per row"),
        (dict(weight=torch.ones(4, dtype=torch.long)), TypeError, r"weight must be a floating tensor"),
        (dict(normalizer=0), ValueError, r"normalizer must be a nonzero number or a 0-dim tensor"),
        (dict(normalizer=torch.ones(2)), ValueError, r"normalizer must be a number or a 0-dim tensor"),
        (dict(normalizer=torch.tensor(True)), TypeError, r"normalizer must be a real number"),
        (dict(targets=torch.zeros(4, 3, requires_grad=True)), ValueError, r"targets requires grad"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(inputs=X, targets=LABELS)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        sigmoid_focal_loss(args.pop("inputs"), args.pop("targets"), **args)


def test_bad_input_through_the_raw_op():
    """The C++ checks stand on their own for callers of torch.ops.focal_loss_ext directly."""
    op = torch.ops.focal_loss_ext.sigmoid_focal_loss
    with pytest.raises(RuntimeError, match=r"gamma must be a finite number >= 0"):
        op(X, LABELS, None, None, None, 0.25, -1.0, 1.0, 0.0, -1, 2, False)
    for code in (3, 7, 8, -1):  # 4 is the opmath-loss flag: 5 is "mean" with the loss in opmath
        with pytest.raises(RuntimeError, match=r"reduction must be 0 \(none\), 1 \(mean\) or 2 \(sum\), plus 4"):
            op(X, LABELS, None, None, None, 0.25, 2.0, 1.0, 0.0, -1, code, False)
    with pytest.raises(RuntimeError, match=r"label_smoothing must be in \[0, 1\)"):
        op(X, LABELS, None, None, None, 0.25, 2.0, 1.0, 1.5, -1, 2, False)
    grad = torch.zeros(4, 3)
    with pytest.raises(RuntimeError, match=r"grad_output must be a 0-dim tensor \(reduced loss\) or have"):
        torch.ops.focal_loss_ext.scale_grad_(grad, torch.ones(2), torch.tensor(1.0))
    with pytest.raises(RuntimeError, match=r"grad_scale must be a single Float value"):
        torch.ops.focal_loss_ext.scale_grad_(grad, torch.tensor(1.0), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; none is present")
@pytest.mark.parametrize("device", DEVICES)
def test_mixed_devices(device):
    x = torch.zeros(4, 3, device="cuda")
    with pytest.raises(ValueError, match=r"targets must be on the same device as inputs"):
        sigmoid_focal_loss(x, LABELS)
    with pytest.raises(ValueError, match=r"alpha must be on the same device as inputs"):
        sigmoid_focal_loss(x, LABELS.cuda(), torch.ones(3))
    with pytest.raises(ValueError, match=r"weight must be on the same device as inputs"):
        sigmoid_focal_loss(x, LABELS.cuda(), weight=torch.ones(4))
    with pytest.raises(ValueError, match=r"normalizer must be on the same device as inputs"):
        sigmoid_focal_loss(x, LABELS.cuda(), normalizer=torch.tensor(2.0))


def test_mixed_devices_meta():
    """Device mismatches are caught on every machine, with the meta device standing in for a GPU."""
    x = torch.zeros(4, 3, device="meta")
    with pytest.raises(ValueError, match=r"targets must have|same device|device"):
        sigmoid_focal_loss(x, LABELS)
