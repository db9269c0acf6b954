"""The operators under torch.autocast (CPU here; CUDA where a GPU is present): the loss comes
back in float32 for every reduction, computed from the half-precision logits as given, and the
gradient keeps the logits' dtype; outside autocast nothing changes."""

from __future__ import annotations

import pytest
import torch
from helpers import DEVICES, TOLERANCE, assert_close_to_reference, make_logits, reference_loss_and_grad
from operators import OPERATORS, SIGMOID, SOFTMAX, same_dtype_reference, sample_inputs
from torch.utils._python_dispatch import TorchDispatchMode

import focal_loss_ext
from focal_loss_ext._ops import OPMATH_LOSS

HALF_DTYPES = [torch.float16, torch.bfloat16]
REDUCTIONS = ("none", "sum", "mean")


def form_of(operator, soft):
    if not soft:
        return "labels"
    return "probabilities" if operator.per_row else "float"


def options(operator, shape, device):
    """Per-class alpha and per-row weight in float32, as a model would hand them over."""
    return dict(
        alpha=torch.rand(shape[-1], device=device) + 0.1,
        weight=torch.rand(shape[:-1], device=device),
        gamma=1.5,
        normalizer=torch.tensor(7.0, device=device),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft"])
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_loss_is_float32_and_matches_float64(operator, soft, reduction, dtype, device):
    shape = (37, 80)
    x, t = sample_inputs(operator, shape, dtype, device, form_of(operator, soft))
    kw = dict(options(operator, shape, device), reduction=reduction)
    with torch.autocast(device, dtype=dtype):
        loss = operator.fn(x, t if not soft else t.float(), **kw)
    assert loss.dtype == torch.float32
    g = torch.randn(loss.shape, device=device)
    loss.backward(g)
    assert x.grad.dtype == dtype
    # The kernel reads targets in the logits' dtype, so the reference does too.
    expected_loss, expected_grad = reference_loss_and_grad(operator.reference, x, t, g, **kw)
    torch.testing.assert_close(loss.cpu().double(), expected_loss, **TOLERANCE[torch.float32])
    eager_x = x.detach().clone().requires_grad_()
    same_dtype_reference(operator, eager_x, t, **kw).backward(g.to(dtype))
    assert_close_to_reference(x.grad, expected_grad, dtype, eager_x.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_none_loss_is_the_unrounded_loss_of_the_plain_call(operator, dtype, device):
    """Outside autocast the per-element loss is the same float32 value rounded once."""
    x, t = sample_inputs(operator, (16, 80), dtype, device, "labels", requires_grad=False)
    plain = operator.fn(x, t, reduction="none")
    with torch.autocast(device, dtype=dtype):
        opmath = operator.fn(x, t, reduction="none")
    assert plain.dtype == dtype and opmath.dtype == torch.float32
    assert torch.equal(opmath.to(dtype), plain)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_sum_above_float16_range_is_finite(operator, device):
    """A float16 sum above 65504 (softmax: 81,000; sigmoid: 1.9e6) is returned in float32 under autocast."""
    rows, classes = 4000, 80
    x = torch.full((rows, classes), 8.0, dtype=torch.float16, device=device, requires_grad=True)
    # Every element a confident mistake: about 6 (sigmoid, alpha 0.75 for negatives) per element.
    if operator.per_row:
        x = x.detach().clone()
        x[:, 0] = -8.0
        x.requires_grad_()
        t = torch.zeros(rows, dtype=torch.long, device=device)
    else:
        t = torch.full((rows,), classes, dtype=torch.long, device=device)
    kw = dict(gamma=1.0, reduction="sum")
    with torch.autocast(device, dtype=torch.float16):
        loss = operator.fn(x, t, **kw)
    expected, expected_grad = reference_loss_and_grad(operator.reference, x, t, **kw)
    assert loss.dtype == torch.float32 and expected.item() > 65504
    torch.testing.assert_close(loss.cpu().double(), expected, **TOLERANCE[torch.float32])
    loss.backward()
    assert x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad.cpu().double(), expected_grad, atol=0, rtol=1e-3)
    assert torch.isinf(operator.fn(x.detach(), t, **kw))  # outside autocast: float16, as before


# Large enough that the float16 gradient of the loss would overflow without its float32 loss
# (65536 x a sum in the thousands), small enough that the linear layer's float16 weight
# gradient (a sum over 256 rows) stays finite, so that no step is skipped.
SCALE = 2.0**12


def train_step(operator, dtype, device, use_autocast, reduction, steps=2):
    """SGD steps of a linear classifier with the loss; under autocast with a GradScaler."""
    torch.manual_seed(1)
    classes = 20
    model = torch.nn.Linear(32, classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler(device, init_scale=SCALE, enabled=use_autocast)
    inp = torch.randn(256, 32, device=device) * 2
    t = operator.targets("labels", (256, classes), torch.float32, device)
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast(device, dtype=dtype, enabled=use_autocast):
            logits = model(inp)
            loss = operator.fn(logits, t, reduction=reduction, normalizer=torch.tensor(64.0, device=device))
        assert loss.dtype == torch.float32
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert scaler.get_scale() == SCALE or not use_autocast  # no step skipped for inf/NaN
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["sum", "mean", "none-summed"])
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_grad_scaler_step_equals_float32_step(operator, reduction, dtype, device):
    if reduction == "none-summed":

        class Summed:
            def __init__(self, op):
                self.op = op

            def __getattr__(self, name):
                return getattr(self.op, name)

            def fn(self, *args, reduction, **kw):
                return self.op.fn(*args, reduction="none", **kw).sum()

        operator, reduction = Summed(operator), "none"
    start = train_step(operator, dtype, device, False, reduction, steps=0)
    fp32 = train_step(operator, dtype, device, False, reduction)
    amp = train_step(operator, dtype, device, True, reduction)
    for p0, p32, p16 in zip(start, fp32, amp):
        assert torch.isfinite(p16).all()
        # the update agrees to half precision's resolution of the logits and their gradient
        step = (p32 - p0).abs().max().item()
        assert step > 0
        torch.testing.assert_close(p16 - p0, p32 - p0, atol=0.03 * step, rtol=0.03)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF_DTYPES], ids=str)
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_outside_autocast_nothing_changes(operator, dtype, device):
    """Without autocast (or with it disabled) the loss keeps the logits' dtype; float32 and
    float64 logits give the same bits inside autocast as outside."""
    x, t = sample_inputs(operator, (9, 12), dtype, device, "labels")
    for reduction in REDUCTIONS:
        plain = operator.fn(x, t, reduction=reduction)
        with torch.autocast(device, enabled=False):
            disabled = operator.fn(x, t, reduction=reduction)
        assert plain.dtype == disabled.dtype == dtype
        assert torch.equal(plain, disabled)
        if dtype in (torch.float32, torch.float64):
            with torch.autocast(device, dtype=torch.bfloat16):
                inside = operator.fn(x, t, reduction=reduction)
            assert inside.dtype == dtype and torch.equal(inside, plain)


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_logits_reach_the_kernel_uncast(operator):
    """No float32 copy of the logits: the operator gets the float16 tensor itself, with the
    request for a float32 loss on its reduction code."""
    x, t = sample_inputs(operator, (8, 5), torch.float16, "cpu", "labels")
    with torch.autocast("cpu", dtype=torch.float16), RecordOps() as record:
        operator.fn(x, t, reduction="sum")
    (call,) = [(f, a) for f, a in record.calls if f.name().startswith("focal_loss_ext::")]
    func, args = call
    assert args[0].dtype == torch.float16 and args[0].data_ptr() == x.data_ptr()
    reduction_index = [a.name for a in func._schema.arguments].index("reduction")
    assert args[reduction_index] == 2 + OPMATH_LOSS
    assert not any(f is torch.ops.aten._to_copy.default and a[0] is x for f, a in record.calls)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_compile_fullgraph_under_autocast(operator, reduction, dtype, device):
    torch._dynamo.reset()
    classes = 10
    layer = torch.nn.Linear(6, classes).to(device)
    t = operator.targets("labels", (32, classes), torch.float32, device)
    inp = torch.randn(32, 6, device=device)

    def f(inp):
        with torch.autocast(device, dtype=dtype):
            return operator.fn(layer(inp), t, reduction=reduction)

    eager = f(inp)
    g = torch.randn(eager.shape, device=device)
    (eager_grad,) = torch.autograd.grad(eager, layer.weight, g)
    out = torch.compile(f, fullgraph=True)(inp)
    (grad,) = torch.autograd.grad(out, layer.weight, g)
    assert out.dtype == eager.dtype == torch.float32
    torch.testing.assert_close(out, eager)
    # the layer's half-precision matmuls may round differently once compiled
    torch.testing.assert_close(grad, eager_grad, atol=1e-3 * eager_grad.abs().max().item(), rtol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_opcheck_with_loss_in_opmath(operator, reduction, dtype, device):
    x, t = sample_inputs(operator, (9, 7), dtype, device, "labels")
    args = operator.raw_args(x, t, reduction=reduction, opmath_loss=True, compute_grad=False)
    loss = operator.op(*args)[0]
    assert loss.dtype == torch.float32
    utils = ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
    torch.library.opcheck(operator.op, args, test_utils=utils)


@pytest.mark.parametrize("device", DEVICES)
def test_module_and_wrappers_under_autocast(device):
    x = make_logits((12, 6), torch.bfloat16, device, requires_grad=True)
    labels = SIGMOID.targets("labels", (12, 6), torch.float32, device)
    classes = SOFTMAX.targets("labels", (12, 6), torch.float32, device)
    module = focal_loss_ext.SigmoidFocalLoss(alpha=torch.rand(6), reduction="sum").to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        assert module(x, labels).dtype == torch.float32
        assert focal_loss_ext.softmax_focal_loss(x, classes).dtype == torch.float32
        assert focal_loss_ext.sigmoid_focal_loss_star(x, labels, reduction="none").dtype == torch.float32
        none = SOFTMAX.fn(x, classes, reduction="none")
    assert none.shape == (12,) and none.dtype == torch.float32
