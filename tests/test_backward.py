"""Gradients: gradcheck, against the float64 reference, and the autograd corner cases that the
fused backward (gradient precomputed in the forward, scaled in place) must get right."""

import math

import pytest
import torch
from helpers import (
    DEVICES,
    DTYPES,
    TOLERANCE,
    assert_close_to_reference,
    make_labels,
    make_logits,
    make_soft_targets,
    torchvision_same_dtype,
)

from focal_loss_ext import sigmoid_focal_loss, sigmoid_focal_loss_reference


def reference_grad(x, targets, grad_output=None, **kw):
    """d loss / d x of the float64 reference, by autograd."""
    x64 = x.detach().cpu().double().requires_grad_()
    t = targets.cpu().double() if targets.is_floating_point() else targets.cpu()
    kw = {k: (v.cpu().double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()}
    loss = sigmoid_focal_loss_reference(x64, t, **kw)
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output.cpu().double())
    return x64.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target_form", ["float", "labels"])
def test_grad_with_random_grad_output(device, dtype, target_form):
    shape = (37, 80)
    x = make_logits(shape, dtype, device, requires_grad=True)
    t = make_soft_targets(shape, dtype, device) if target_form == "float" else make_labels(shape[:-1], 80, device)
    grad_output = torch.randn(shape, dtype=dtype, device=device)
    sigmoid_focal_loss(x, t, reduction="none").backward(grad_output)
    eager_x = x.detach().clone().requires_grad_()
    torchvision_same_dtype(eager_x, t, 0.25, 2.0, "none").backward(grad_output)
    assert_close_to_reference(x.grad, reference_grad(x, t, grad_output, reduction="none"), dtype, eager_x.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("grad_output", [1.0, 0.0, 0.37, 1024.0, math.nan])
def test_grad_of_reduced_loss(device, dtype, reduction, grad_output):
    x = make_logits((64, 80), dtype, device, requires_grad=True)
    labels = make_labels((64,), 80, device)
    normalizer = torch.tensor(9.0, device=device)
    loss = sigmoid_focal_loss(x, labels, reduction=reduction, normalizer=normalizer)
    g = torch.tensor(grad_output, dtype=dtype, device=device)
    loss.backward(g)
    expected = reference_grad(x, labels, g, reduction=reduction, normalizer=9.0)
    if math.isnan(grad_output):
        assert torch.isnan(x.grad).all()
        return
    eager_x = x.detach().clone().requires_grad_()
    (torchvision_same_dtype(eager_x, labels, 0.25, 2.0, reduction) / 9.0).backward(g)
    assert_close_to_reference(x.grad, expected, dtype, eager_x.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backward_twice_with_retain_graph(device, dtype):
    x = make_logits((50, 80), dtype, device, requires_grad=True)
    labels = make_labels((50,), 80, device)
    loss = sigmoid_focal_loss(x, labels, reduction="sum", normalizer=torch.tensor(4.0, device=device))
    loss.backward(torch.tensor(2.0, dtype=dtype, device=device), retain_graph=True)
    first = x.grad.clone()
    loss.backward(retain_graph=True)  # grad_output 1
    loss.backward(torch.tensor(3.0, dtype=dtype, device=device))
    expected = reference_grad(x, labels, reduction="sum", normalizer=4.0) * 6
    # half: a few units of float16's subnormal spacing absolute, for the gradients below its range
    tol = TOLERANCE.get(dtype, dict(atol=2e-7, rtol=2 * torch.finfo(dtype).eps))
    torch.testing.assert_close(x.grad.double().cpu(), expected, atol=tol["atol"] * 6, rtol=tol["rtol"] * 6)
    torch.testing.assert_close(x.grad.double(), first.double() * 3, atol=1e-6, rtol=4 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_accumulate_into_leaf(device):
    x = make_logits((20, 80), torch.float32, device, requires_grad=True)
    view = x.view(4, 5, 80)  # the gradient reaches the leaf through a view
    labels = make_labels((4, 5), 80, device)
    sigmoid_focal_loss(view, labels, reduction="sum").backward()
    sigmoid_focal_loss(view, labels, reduction="sum").backward(torch.tensor(0.5, device=device))
    sigmoid_focal_loss(x, labels.view(20), reduction="none").sum().backward()
    expected = reference_grad(x, labels.view(20), reduction="sum") * 2.5
    torch.testing.assert_close(x.grad.double().cpu(), expected, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_grad_through_a_model_and_two_losses(device):
    """The op's gradient feeds further backward functions; two calls share one input."""
    torch.manual_seed(3)
    layer = torch.nn.Linear(8, 6).to(device).double()
    inp = torch.randn(30, 8, dtype=torch.float64, device=device)
    labels = make_labels((30,), 6, device)
    logits = layer(inp)
    loss = sigmoid_focal_loss(logits, labels, reduction="sum") + 0.5 * sigmoid_focal_loss(
        logits, labels, gamma=0.0, reduction="mean"
    )
    loss.backward()
    ref_layer = torch.nn.Linear(8, 6).double()
    ref_layer.load_state_dict({k: v.cpu() for k, v in layer.state_dict().items()})
    ref_logits = ref_layer(inp.cpu())
    (
        sigmoid_focal_loss_reference(ref_logits, labels.cpu(), reduction="sum")
        + 0.5 * sigmoid_focal_loss_reference(ref_logits, labels.cpu(), gamma=0.0, reduction="mean")
    ).backward()
    torch.testing.assert_close(layer.weight.grad.cpu(), ref_layer.weight.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_and_detached_inputs(device):
    x = make_logits((10, 5), torch.float32, device, requires_grad=True)
    labels = make_labels((10,), 5, device)
    with torch.no_grad():
        loss = sigmoid_focal_loss(x, labels, reduction="sum")
    assert not loss.requires_grad
    assert not sigmoid_focal_loss(x.detach(), labels).requires_grad


def test_float16_gradient_does_not_underflow():
    """float16 keeps the normalizer and 1/numel out of the stored gradient (apex's reason): with a
    large grad_output (a loss scale) the result must match float32's, not flush to zero."""
    x32 = torch.randn(4096, 80) * 3
    t = (torch.rand(4096, 80) < 0.01).float()
    g = 2.0**15  # a GradScaler-style loss scale (2**16 itself is inf in float16)
    x16 = x32.half().requires_grad_()
    sigmoid_focal_loss(x16, t.half(), reduction="mean", normalizer=10.0).backward(torch.tensor(g).half())
    x32 = x16.detach().float().requires_grad_()
    sigmoid_focal_loss(x32, t, reduction="mean", normalizer=10.0).backward(torch.tensor(g))
    representable = x32.grad.abs() > 2 * torch.finfo(torch.float16).tiny
    assert representable.sum() > 1000
    assert (x16.grad[representable] != 0).all()
    torch.testing.assert_close(x16.grad.float()[representable], x32.grad[representable], rtol=2e-3, atol=0)
