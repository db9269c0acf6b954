"""torch.library.opcheck and torch.compile(fullgraph=True)."""

import pytest
import torch
from helpers import DEVICES, make_labels, make_logits, make_soft_targets
from torch import nn

import focal_loss_ext
from focal_loss_ext import sigmoid_focal_loss

OP = torch.ops.focal_loss_ext.sigmoid_focal_loss


def op_samples(device):
    x = make_logits((9, 7), torch.float32, device, requires_grad=True)
    labels = make_labels((9,), 7, device)
    soft = make_soft_targets((9, 7), torch.float32, device)
    alpha = torch.rand(7, device=device)
    weight = torch.rand(9, device=device)
    norm = torch.tensor(3.0, device=device)
    yield (x, labels, None, None, None, 0.25, 2.0, 1.0, 0.0, -1, 2, True)
    yield (x, labels, alpha, weight, norm, 0.25, 0.5, 1.0, 0.1, -1, 1, True)
    yield (x, soft, None, None, norm, -1.0, 1.0, 0.5, 0.0, -1, 0, True)
    yield (x.detach(), soft, None, None, None, 0.25, 2.0, 1.0, 0.0, -1, 2, False)
    yield (
        make_logits((4, 3, 5), torch.float64, device, requires_grad=True),
        make_labels((4, 3), 5, device),
        None,
        None,
        None,
        0.25,
        3.0,
        1.0,
        0.0,
        -1,
        0,
        True,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for args in op_samples(device):
        utils = ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
        if args[-1]:
            # With compute_grad the eager backward scales the op's grad_input output in place and
            # hands it to autograd (the zero-copy design in _ops.py), so opcheck's comparison of
            # that output after backward against AOTDispatcher's copy cannot hold. The traced
            # gradient itself is checked against eager in the torch.compile tests below.
            utils.remove("test_aot_dispatch_dynamic")
        torch.library.opcheck(OP, args, test_utils=utils)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_scale_grad(device):
    for grad_output in (
        torch.tensor(1.0, device=device),
        torch.tensor(0.5, device=device),
        torch.randn(6, 4, device=device),
    ):
        torch.library.opcheck(
            torch.ops.focal_loss_ext.scale_grad_,
            (torch.randn(6, 4, device=device), grad_output, torch.tensor(2.0, device=device)),
        )


class TinyHead(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4 * classes, 3, padding=1)
        self.classes = classes

    def forward(self, images, labels, num_pos):
        logits = self.conv(images).permute(0, 2, 3, 1).reshape(images.shape[0], -1, self.classes)
        return sigmoid_focal_loss(logits, labels, reduction="sum", normalizer=num_pos)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_model(device):
    torch._dynamo.reset()
    model = TinyHead().to(device)
    images = torch.randn(2, 3, 6, 6, device=device)
    labels = make_labels((2, 6 * 6 * 4), 10, device)
    num_pos = (labels.ge(0) & labels.lt(10)).sum().clamp(min=1).float()
    eager = model(images, labels, num_pos)
    eager.backward()
    eager_grad = model.conv.weight.grad.clone()
    model.conv.weight.grad = None
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    out = compiled(images, labels, num_pos)
    out.backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(model.conv.weight.grad, eager_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_compile_with_options_and_grad_output(device, reduction):
    torch._dynamo.reset()

    def f(x, t, alpha, weight):
        return sigmoid_focal_loss(x, t, alpha, 0.7, reduction, weight=weight, label_smoothing=0.1)

    x = make_logits((12, 5), torch.float32, device, requires_grad=True)
    t = make_soft_targets((12, 5), torch.float32, device)
    alpha, weight = torch.rand(5, device=device), torch.rand(12, device=device)
    g = torch.randn((12, 5) if reduction == "none" else (), device=device)
    (gx_eager,) = torch.autograd.grad(f(x, t, alpha, weight), x, g)
    out = torch.compile(f, fullgraph=True)(x, t, alpha, weight)
    (gx,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(gx, gx_eager)


def test_cuda_kernel_registered_when_built():
    from focal_loss_ext import _C

    has = torch._C._dispatch_has_kernel_for_dispatch_key("focal_loss_ext::sigmoid_focal_loss", "CUDA")
    assert has == bool(_C.with_cuda)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("focal_loss_ext::sigmoid_focal_loss", "CPU")
    assert focal_loss_ext.__version__
