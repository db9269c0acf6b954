"""torch.library.opcheck and torch.compile(fullgraph=True)."""

import pytest
import torch
from helpers import DEVICES, make_labels, make_logits, make_soft_targets
from torch import nn

from focal_loss_ext import sigmoid_focal_loss

OP = torch.ops.focal_loss_ext.sigmoid_focal_loss


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
