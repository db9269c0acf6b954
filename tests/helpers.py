"""Input makers and comparisons shared by the operator tests."""

import contextlib

import pytest
import torch
import torchvision

from focal_loss_ext import _C, sigmoid_focal_loss_reference
from focal_loss_ext.reference import one_hot_targets

HAS_CUDA = torch.cuda.is_available()
# The emulated-CUDA build (FOCAL_LOSS_EXT_EMULATE_CUDA=1, run by `make test`): the CPU kernels
# are the CUDA kernels, so a bad label is a device-side assert rather than the CPU's message.
EMULATED_CUDA = bool(getattr(_C, "emulated_cuda", 0))


def bad_label_error(label):
    """The error a label outside [0, K] (sigmoid) or [0, K) (softmax) raises."""
    return r"device-side assert triggered" if EMULATED_CUDA else rf"targets: label {label} is out of range"


# Every correctness test runs on each device present; CUDA ones skip cleanly without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Absolute / relative tolerance against a float64 reference, for outputs computed in float32 or
# float64 arithmetic. Half precision is judged against PyTorch eager in the same dtype instead
# (assert_close_to_reference below).
TOLERANCE = {
    torch.float64: dict(atol=1e-12, rtol=1e-10),
    torch.float32: dict(atol=1e-6, rtol=2e-5),
}


def make_logits(shape, dtype, device, scale=4.0, requires_grad=False):
    x = (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad)


def seeded_logits(shape, seed, scale, dtype=torch.float64):
    """Logits from their own generator, for hypothesis tests that draw the seed."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def make_labels(rows_shape, classes, device, ignore_index=-1, p_ignore=0.1, p_background=0.5):
    labels = torch.randint(0, classes, rows_shape)
    u = torch.rand(rows_shape)
    labels[u < p_background] = classes
    labels[u < p_ignore] = ignore_index
    return labels.to(device)


def make_soft_targets(shape, dtype, device):
    t = torch.rand(shape, dtype=torch.float64)
    hard = torch.rand(shape) < 0.5
    t[hard] = (t[hard] > 0.8).double()  # a mix of hard 0/1 and soft values
    return t.to(device=device, dtype=dtype)


def reference(x, targets, **kw):
    """The float64 reference on the CPU, for any input dtype/device."""
    t = targets.cpu()
    if t.is_floating_point():
        t = t.double()
    extra = {
        k: (v.cpu().double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()
    }
    return sigmoid_focal_loss_reference(x.detach().cpu().double(), t, **extra)


def torchvision_same_dtype(x, targets, alpha, gamma, reduction, ignore_index=-1):
    """PyTorch eager in the inputs' dtype (torchvision's formula), the yardstick for half precision."""
    if targets.is_floating_point():
        return torchvision.ops.sigmoid_focal_loss(x, targets.to(x.dtype), alpha, gamma, reduction)
    t, keep = one_hot_targets(targets, x.shape[-1], ignore_index, x.dtype)
    loss = torchvision.ops.sigmoid_focal_loss(x, t, alpha, gamma, "none") * keep.unsqueeze(-1)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / (keep.sum() * x.shape[-1])
    return loss


def error(actual, expected):
    return (actual.detach().cpu().double() - expected.detach().cpu().double()).abs().max().item()


def assert_close_to_reference(actual, expected, dtype, eager=None):
    """float32/64: a fixed tolerance. float16/bfloat16: the error against float64 is at most
    twice that of PyTorch eager in the same dtype (plus one unit in the last place of the
    output, for outputs that eager happens to round exactly)."""
    assert actual.dtype == dtype
    actual64 = actual.detach().cpu().double()
    expected = expected.detach().cpu().double()
    if actual.numel() == 0:
        assert expected.numel() == 0
        return
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(actual64), nan), "NaN in different places"
    if nan.all():
        return
    actual64, expected = actual64[~nan], expected[~nan]
    if eager is not None:
        eager = eager.detach().cpu().double()[~nan]
    if dtype in TOLERANCE:
        torch.testing.assert_close(actual64, expected, **TOLERANCE[dtype], equal_nan=True)
        return
    eps = torch.finfo(dtype).eps
    ulp = eps * expected.abs().max().item()
    ours = error(actual64, expected)
    theirs = error(eager, expected) if eager is not None else ulp
    assert ours <= 2 * theirs + ulp, f"half-precision error {ours:.3g} > 2 x eager's {theirs:.3g} + {ulp:.3g}"


def float64_cpu(x, targets, kw):
    """Inputs, targets and keyword tensors as the float64 references on the CPU take them."""
    t = targets.cpu()
    if t.is_floating_point():
        t = t.double()
    kw = {k: (v.cpu().double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()}
    return x.detach().cpu().double(), t, kw


def reference_loss_and_grad(reference_fn, x, targets, grad_output=None, **kw):
    """Loss and d loss / d x of a float64 reference (autograd), on the CPU."""
    x64, t, kw = float64_cpu(x, targets, kw)
    x64.requires_grad_()
    loss = reference_fn(x64, t, **kw)
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output.cpu().double())
    return loss.detach(), x64.grad


def make_probabilities(shape, dtype, device):
    """Class probabilities over the last dimension, some rows one-hot."""
    p = torch.softmax(torch.randn(shape, dtype=torch.float64) * 2, dim=-1)
    hard = torch.rand(shape[:-1]) < 0.3
    p[hard] = torch.nn.functional.one_hot(p[hard].argmax(-1), shape[-1]).double()
    return p.to(device=device, dtype=dtype)


@contextlib.contextmanager
def cpu_isa(name):
    """Runs the CPU kernel's `name` build (portable, avx2, avx512) inside the block."""
    previous = torch.ops.focal_loss_ext._set_cpu_isa(name)
    try:
        yield name
    finally:
        torch.ops.focal_loss_ext._set_cpu_isa(previous)
