"""Every code path of the kernels, for every operator: class counts whose rows start at every
alignment (1, 7, 81, 91: the softmax kernel's pack loads in 16-, 8-, 4- and 2-byte pieces, the
sigmoid kernel's packs across row ends) and 80, offset storage (the inputs loaded in narrower
pieces), strided inputs, each dtype, each gamma form (0, 1, 2 and general pow, one per class
count), each target form and reduction, with every option on, forward and backward.

150 rows make the persistent grid loop several times over on a one-multiprocessor device, so
the (row, class) carry is exercised past the first tile. Run against the emulated-CUDA build
(``make test``), these run the CUDA kernels on the CPU, and reach every instantiation of them
(make coverage-emulated checks that)."""

import pytest
import torch
from helpers import (
    DEVICES,
    DTYPES,
    assert_close_to_reference,
    make_labels,
    make_logits,
    make_probabilities,
    make_soft_targets,
    reference_loss_and_grad,
)
from operators import OPERATORS

from focal_loss_ext import (
    sigmoid_focal_loss,
    sigmoid_focal_loss_reference,
    sigmoid_focal_loss_star,
    sigmoid_focal_loss_star_reference,
    softmax_focal_loss,
    softmax_focal_loss_reference,
)
from focal_loss_ext._ops import OPMATH_LOSS

ROWS = 150
DTYPE_IDS = [str(d).replace("torch.", "") for d in DTYPES]
CLASSES = [1, 7, 80, 81, 91]
# One gamma per class count, so that each closed form (0, 1, 2) and the general pow() run.
GAMMA = {1: 0.0, 7: 1.0, 80: 2.0, 81: 2.5, 91: 2.0}
OPS = {
    "sigmoid": (sigmoid_focal_loss, sigmoid_focal_loss_reference, ["float", "labels"]),
    "star": (sigmoid_focal_loss_star, sigmoid_focal_loss_star_reference, ["float", "labels"]),
    "softmax": (softmax_focal_loss, softmax_focal_loss_reference, ["labels", "smoothed labels", "probabilities"]),
}


def logits(shape, dtype, device, layout):
    """Logits of the given shape as a leaf tensor laid out as asked."""
    rows, k = shape
    if layout == "offset":  # one element into its storage: no 16-byte alignment for any dtype
        flat = make_logits((rows * k + 1,), dtype, device)
        x = flat[1:].view(rows, k)
        assert x.storage_offset() == 1
    elif layout == "strided":
        x = make_logits((rows, 2 * k), dtype, device)[:, ::2]
        assert not x.is_contiguous() or k == 1
    else:
        x = make_logits(shape, dtype, device)
    if dtype in (torch.float32, torch.float64):  # a few extreme logits in every row band
        x.view(-1)[:: max(1, x.numel() // 17)] = 1e4
        x.view(-1)[1 :: max(1, x.numel() // 13)] = -1e4
    return x.requires_grad_()


def targets(op, form, shape, dtype, device):
    rows, k = shape
    if form == "float":
        return make_soft_targets(shape, dtype, device)
    if form == "probabilities":
        return make_probabilities(shape, dtype, device)
    if op == "softmax":
        labels = torch.randint(0, k, (rows,))
        labels[torch.rand(rows) < 0.15] = -100
        return labels.to(device)
    return make_labels((rows,), k, device, ignore_index=-100)


def options(op, form, k, reduction, device):
    kw = dict(
        gamma=GAMMA[k],
        reduction=reduction,
        weight=torch.rand(ROWS, device=device) + 0.5,
        normalizer=torch.tensor(3.5, device=device),
    )
    if op == "sigmoid":
        kw.update(alpha=torch.rand(k, device=device), label_smoothing=0.1, ignore_index=-100)
    elif op == "star":
        kw.update(alpha=0.25, gamma=max(GAMMA[k], 0.5), beta=1.0, label_smoothing=0.1, ignore_index=-100)
    else:
        smoothing = 0.1 if form == "smoothed labels" else 0.0  # without it, labels take the one-term path
        kw.update(alpha=torch.rand(k, device=device) + 0.1, label_smoothing=smoothing, ignore_index=-100)
    return kw


def same_dtype_reference(reference_fn, x, t, **kw):
    """The reference in the inputs' own dtype: the yardstick for half precision."""
    kw = {k: (v.to(x.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()}
    return reference_fn(x, t.to(x.dtype) if t.is_floating_point() else t, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "offset", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k", CLASSES)
@pytest.mark.parametrize("op", list(OPS))
def test_loss_and_grad_every_path(device, layout, dtype, k, op):
    fn, reference_fn, forms = OPS[op]
    shape = (ROWS, k)
    for form in forms:
        t = targets(op, form, shape, dtype, device)
        for reduction in ["none", "sum", "mean"]:
            x = logits(shape, dtype, device, layout)
            kw = options(op, form, k, reduction, device)
            loss = fn(x, t, **kw)
            g = torch.randn(loss.shape, dtype=dtype, device=device)
            loss.backward(g)
            expected_loss, expected_grad = reference_loss_and_grad(reference_fn, x, t, g, **kw)
            eager = None
            if dtype in (torch.float16, torch.bfloat16):
                eager_x = x.detach().clone().requires_grad_()
                eager = same_dtype_reference(reference_fn, eager_x, t, **kw)
                eager.backward(g)
            assert_close_to_reference(loss, expected_loss, dtype, eager)
            assert_close_to_reference(x.grad, expected_grad, dtype, None if eager is None else eager_x.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("op", list(OPS))
def test_empty_input(device, reduction, op):
    fn, reference_fn, _ = OPS[op]
    x = make_logits((0, 7), torch.float32, device, requires_grad=True)
    t = torch.zeros(0, dtype=torch.long, device=device)
    loss = fn(x, t, reduction=reduction)
    loss.sum().backward()
    torch.testing.assert_close(loss, reference_fn(x.detach(), t, reduction=reduction), equal_nan=True)
    assert x.grad.shape == (0, 7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("numel", [0, 1, 7, 4099])
@pytest.mark.parametrize("offset", [0, 1])
def test_scale_grad_every_path(device, dtype, numel, offset):
    """scale_grad_ on its own: aligned buffers take 16-byte packs plus an element tail, an offset
    buffer the element loop; a product of exactly 1 leaves the buffer untouched."""
    storage = torch.randn(numel + offset, dtype=dtype, device=device)
    grad = storage[offset:]
    before = grad.clone()
    grad_scale = torch.tensor(0.75, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
    go = torch.tensor(3.0, dtype=dtype, device=device)
    torch.ops.focal_loss_ext.scale_grad_(grad, go, grad_scale)
    expected = (before.double() * 2.25).to(dtype)
    torch.testing.assert_close(grad, expected, atol=0, rtol=0)
    torch.ops.focal_loss_ext.scale_grad_(grad, torch.tensor(1.0, dtype=dtype, device=device), grad_scale / 0.75)
    torch.testing.assert_close(grad, expected, atol=0, rtol=0)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("op", OPERATORS, ids=str)
def test_loss_in_opmath(op, dtype, reduction):
    """The kernels write the loss in the loss tensor's dtype: float32 for half inputs when
    the operator is asked for it (OPMATH_LOSS on the reduction code, as the autocast kernels do).
    It holds the half-dtype loss before its rounding, and the gradient is unchanged."""
    shape = (ROWS, 7)  # 1050 elements: whole packs and a short last one
    x = make_logits(shape, dtype, "cpu")
    t = op.targets(op.forms[-1], shape, dtype, "cpu")
    args = op.raw_args(x, t, weight=torch.rand(ROWS) + 0.5, reduction=reduction, label_smoothing=0.1)
    loss, grad, grad_scale = op.op(*args)
    *head, code, compute_grad = args
    opmath_loss, opmath_grad, opmath_grad_scale = op.op(*head, code + OPMATH_LOSS, compute_grad)
    assert loss.dtype == dtype and opmath_loss.dtype == torch.float32
    assert torch.equal(opmath_loss.to(dtype), loss)
    assert not torch.equal(opmath_loss, loss.float())  # float32 holds more than the rounded loss
    assert torch.equal(opmath_grad, grad) and torch.equal(opmath_grad_scale, grad_scale)
