"""One table of cases, run for all three operators: forward and gradient against the float64
reference, gradcheck, opcheck, torch.compile, empty input, registration, and the positional
order of the public functions. Test ids read operator-form-reduction-options-dtype-device."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pytest
import torch
import torchvision
from helpers import DEVICES, DTYPES, assert_close_to_reference, make_logits, reference_loss_and_grad
from operators import OPERATORS, SIGMOID, SOFTMAX, STAR, Operator, fvcore_star, same_dtype_reference, sample_inputs

import focal_loss_ext
from focal_loss_ext import _C

REDUCTIONS = ("none", "sum", "mean")
SOFTMAX_GAMMAS = (0.0, 0.5, 1.0, 2.0, 3.0)


@dataclass(frozen=True)
class Case:
    operator: Operator
    form: str
    reduction: str
    options: dict = field(default_factory=dict)  # keyword options; "per-class" / "per-row" become tensors
    dtype: torch.dtype = torch.float32

    @property
    def id(self) -> str:
        options = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.operator}-{self.form.replace(' ', '_')}-{self.reduction}-{options}-{str(self.dtype)[6:]}"

    def kwargs(self, shape, device, dtype=torch.float32) -> dict:
        """The options with tensors made: per-class alpha, per-row weight."""
        kw = dict(self.options, reduction=self.reduction)
        if kw.get("alpha") == "per-class":
            kw["alpha"] = torch.rand(shape[-1], dtype=dtype, device=device) + 0.1
        if kw.get("weight") == "per-row":
            kw["weight"] = torch.rand(shape[:-1], dtype=dtype, device=device)
        if self.operator is SOFTMAX and self.form == "smoothed labels":
            kw["label_smoothing"] = 0.1
        return kw


def params(cases):
    return [pytest.param(case, id=case.id) for case in cases]


def reference_cases():
    for dtype in DTYPES:
        for reduction in REDUCTIONS:
            for form in SIGMOID.forms:
                for gamma in (0.5, 2.0):
                    options = dict(alpha=0.25, gamma=gamma, weight="per-row", label_smoothing=0.05)
                    yield Case(SIGMOID, form, reduction, options, dtype)
                for gamma, beta in ((4.0, 0.0), (2.0, 1.0), (0.5, -2.0)):
                    options = dict(alpha=0.25, gamma=gamma, beta=beta, weight="per-row", label_smoothing=0.05)
                    yield Case(STAR, form, reduction, options, dtype)
            for form in SOFTMAX.forms:
                for gamma in SOFTMAX_GAMMAS:
                    yield Case(SOFTMAX, form, reduction, dict(alpha="per-class", gamma=gamma, weight="per-row"), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", params(reference_cases()))
def test_loss_and_grad_match_reference(case, device):
    shape = (37, 80)
    x, t = sample_inputs(case.operator, shape, case.dtype, device, case.form)
    kw = case.kwargs(shape, device)
    loss = case.operator.fn(x, t, **kw)
    g = torch.randn(loss.shape, dtype=case.dtype, device=device)
    loss.backward(g)
    expected_loss, expected_grad = reference_loss_and_grad(case.operator.reference, x, t, g, **kw)
    eager_x = x.detach().clone().requires_grad_()
    eager_loss = same_dtype_reference(case.operator, eager_x, t, **kw)
    eager_loss.backward(g)
    assert_close_to_reference(loss, expected_loss, case.dtype, eager_loss)
    assert_close_to_reference(x.grad, expected_grad, case.dtype, eager_x.grad)


def gradcheck_cases():
    for reduction in REDUCTIONS:
        for form in SIGMOID.forms:
            for gamma in (0.0, 0.5, 1.0, 2.0, 3.0):
                yield Case(SIGMOID, form, reduction, dict(gamma=gamma, label_smoothing=0.1))
            yield Case(STAR, form, reduction, dict(gamma=3.0, beta=0.7, label_smoothing=0.1))
        for form in SOFTMAX.forms:
            for gamma in SOFTMAX_GAMMAS:
                yield Case(SOFTMAX, form, reduction, dict(gamma=gamma))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", params(gradcheck_cases()))
def test_gradcheck(case, device):
    x, t = sample_inputs(case.operator, (5, 4), torch.float64, device, case.form)
    x = x.detach().div_(2).requires_grad_()  # logits of scale 2
    kw = case.kwargs((5, 4), device, torch.float64)
    kw.update(
        alpha=torch.tensor([0.1, 0.5, 0.9, 0.3], dtype=torch.float64, device=device),
        weight=torch.rand(5, dtype=torch.float64, device=device),
        normalizer=1.5,
    )
    assert torch.autograd.gradcheck(lambda x: case.operator.fn(x, t, **kw), (x,))


# Samples for torch.library.opcheck, each run for every operator: (name, form, raw-op options).
OPCHECK_SAMPLES = [
    ("labels-sum", "labels", dict(gamma=2.0, reduction="sum")),
    (
        "labels-all-options-mean",
        "labels",
        dict(
            alpha="per-class",
            weight="per-row",
            normalizer=3.0,
            gamma=0.5,
            beta=1.0,
            label_smoothing=0.1,
            reduction="mean",
        ),
    ),  # fmt: skip
    (
        "soft-host-scale-none",
        "soft",
        dict(normalizer=3.0, gamma=1.0, host_scale=0.5, scalar_alpha=-1.0, reduction="none"),
    ),
    ("soft-without-grad", "soft", dict(gamma=2.0, beta=-1.0, reduction="sum", compute_grad=False)),
    ("float64-3d-labels-none", "labels", dict(gamma=3.0, reduction="none", dtype=torch.float64, shape=(4, 3, 5))),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", [pytest.param(s, id=s[0]) for s in OPCHECK_SAMPLES])
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_opcheck(operator, sample, device):
    _, form, options = sample
    options = dict(options)
    shape, dtype = options.pop("shape", (9, 7)), options.pop("dtype", torch.float32)
    if form == "soft":
        form = "probabilities" if operator.per_row else "float"
    x, t = sample_inputs(operator, shape, dtype, device, form, requires_grad=options.get("compute_grad", True))
    if options.get("alpha") == "per-class":
        options["alpha"] = torch.rand(shape[-1], device=device)
    if options.get("weight") == "per-row":
        options["weight"] = torch.rand(shape[:-1], device=device)
    if "normalizer" in options:
        options["normalizer"] = torch.tensor(options["normalizer"], device=device)
    args = operator.raw_args(x, t, **options)
    utils = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if not args[-1]:
        # With compute_grad the eager backward scales the op's grad_input output in place and
        # hands it to autograd (the zero-copy design in _ops.py), so opcheck's comparison of
        # that output after backward against AOTDispatcher's copy cannot hold. The traced
        # gradient itself is checked against eager in the torch.compile tests.
        utils.append("test_aot_dispatch_dynamic")
    torch.library.opcheck(operator.op, args, test_utils=utils)


COMPILE_OPTIONS = {
    SIGMOID: dict(alpha=0.25, gamma=0.7, label_smoothing=0.1),
    STAR: dict(alpha=0.25, gamma=3.0, beta=0.5),
    SOFTMAX: dict(alpha="per-class", gamma=1.5, label_smoothing=0.05),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_compile_fullgraph(operator, reduction, device):
    """A layer feeding the loss compiles without a graph break; loss and gradient equal eager's."""
    torch._dynamo.reset()
    classes = 10
    layer = torch.nn.Linear(6, classes).to(device)
    kw = Case(operator, "labels", reduction, COMPILE_OPTIONS[operator]).kwargs((32, classes), device)

    def f(inp, t):
        return operator.fn(layer(inp), t, **kw)

    inp = torch.randn(32, 6, device=device)
    t = operator.targets("labels", (32, classes), torch.float32, device)
    eager = f(inp, t)
    g = torch.randn(eager.shape, device=device)
    (eager_grad,) = torch.autograd.grad(eager, layer.weight, g)
    out = torch.compile(f, fullgraph=True)(inp, t)
    (grad,) = torch.autograd.grad(out, layer.weight, g)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad, eager_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["labels", "soft"])
@pytest.mark.parametrize("operator", OPERATORS, ids=str)
def test_empty_input(operator, form, device):
    """Sum of nothing is 0, mean of nothing NaN (like torch.mean), "none" keeps the shape."""
    if form == "soft":
        form = "probabilities" if operator.per_row else "float"
    x, t = sample_inputs(operator, (0, 5), torch.float32, device, form)
    assert operator.fn(x, t, reduction="sum").item() == 0
    assert torch.isnan(operator.fn(x, t, reduction="mean"))
    assert operator.fn(x, t, reduction="none").shape == ((0,) if operator.per_row else (0, 5))


@pytest.mark.parametrize("operator", [*OPERATORS, "scale_grad_"], ids=str)
def test_registration(operator):
    """Every operator has a CPU kernel, a CUDA kernel exactly when it was built, a fake (Meta)
    kernel for torch.compile, and the losses an autograd formula and autocast kernels."""
    assert focal_loss_ext.__version__
    name = f"focal_loss_ext::{operator}"
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has(name, "CPU")
    assert has(name, "CUDA") == bool(_C.with_cuda)
    assert has(name, "Meta")
    assert has(name, "Autograd") == (operator != "scale_grad_")
    assert has(name, "AutocastCPU") == has(name, "AutocastCUDA") == (operator != "scale_grad_")
    if operator == "scale_grad_":
        return
    x, t = sample_inputs(operator, (4, 3), torch.float32, "meta", "labels")
    loss, grad_input, grad_scale = operator.op(*operator.raw_args(x, t, reduction="none"))
    assert loss.shape == ((4,) if operator.per_row else (4, 3)) and grad_input.shape == (4, 3)
    assert grad_scale.shape == () and grad_scale.dtype == torch.float32
    x = torch.randn(4, 3, requires_grad=True)
    assert operator.fn(x, operator.targets("labels", (4, 3), torch.float32, "cpu")).requires_grad


def test_positional_arguments_mean_what_torchvision_and_fvcore_users_expect():
    """(inputs, targets, alpha, gamma, reduction) for all three, as in torchvision.ops and fvcore;
    everything after reduction is keyword-only, so no call can silently swap alpha and gamma."""
    for operator in OPERATORS:
        parameters = list(inspect.signature(operator.fn).parameters.values())
        assert [p.name for p in parameters[:5]] == ["inputs", "targets", "alpha", "gamma", "reduction"]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[5:])
    x = make_logits((20, 6), torch.float64, "cpu")
    soft = sample_inputs(SIGMOID, (20, 6), torch.float64, "cpu", "float")[1]
    torch.testing.assert_close(
        SIGMOID.fn(x, soft, 0.4, 1.5, "sum"), torchvision.ops.sigmoid_focal_loss(x, soft, 0.4, 1.5, "sum")
    )
    hard = (soft > 0.5).double()
    torch.testing.assert_close(STAR.fn(x, hard, 0.4, 3.0, "sum"), fvcore_star(x, hard, 0.4, 3.0, "sum"))
    labels = SOFTMAX.targets("labels", (20, 6), torch.float64, "cpu")
    alpha = torch.rand(6, dtype=torch.float64)
    torch.testing.assert_close(
        SOFTMAX.fn(x, labels, alpha, 1.5, "sum"), SOFTMAX.reference(x, labels, alpha=alpha, gamma=1.5, reduction="sum")
    )
