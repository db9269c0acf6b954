"""Forward values of the fused op against the float64 reference, on fresh random inputs."""

import pytest
import torch
import torchvision
from helpers import (
    DEVICES,
    DTYPES,
    EMULATED_CUDA,
    assert_close_to_reference,
    make_labels,
    make_logits,
    make_soft_targets,
    reference,
    torchvision_same_dtype,
)

from focal_loss_ext import SigmoidFocalLoss, sigmoid_focal_loss

SHAPES = [(0, 80), (1, 1), (7, 1), (33, 80), (5, 6, 19), (2, 3, 4, 8), (129, 3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_float_targets_match_torchvision(device, dtype, shape, reduction):
    x = make_logits(shape, dtype, device)
    t = make_soft_targets(shape, dtype, device)
    out = sigmoid_focal_loss(x, t, 0.25, 2.0, reduction)
    eager = torchvision_same_dtype(x, t, 0.25, 2.0, reduction)
    assert_close_to_reference(out, reference(x, t, alpha=0.25, gamma=2.0, reduction=reduction), dtype, eager)
    if dtype == torch.float64:  # and torchvision itself, where both are float64
        torch.testing.assert_close(out, torchvision.ops.sigmoid_focal_loss(x, t, 0.25, 2.0, reduction), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 80), (1, 1), (64, 80), (4, 9, 13)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_integer_labels_match_reference(device, dtype, shape, reduction):
    x = make_logits(shape, dtype, device)
    labels = make_labels(shape[:-1], shape[-1], device)
    out = sigmoid_focal_loss(x, labels, 0.25, 2.0, reduction)
    eager = torchvision_same_dtype(x, labels, 0.25, 2.0, reduction)
    assert_close_to_reference(out, reference(x, labels, alpha=0.25, gamma=2.0, reduction=reduction), dtype, eager)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0, 1.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.25, 1.0])
def test_every_gamma_and_alpha(device, gamma, alpha):
    x = make_logits((40, 12), torch.float32, device)
    t = make_soft_targets((40, 12), torch.float32, device)
    out = sigmoid_focal_loss(x, t, alpha, gamma)
    assert_close_to_reference(out, reference(x, t, alpha=alpha, gamma=gamma), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("target_form", ["float", "labels"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_all_options_together(device, dtype, target_form, reduction):
    rows, k = (6, 7), 11
    x = make_logits(rows + (k,), dtype, device)
    targets = (
        make_soft_targets(rows + (k,), dtype, device)
        if target_form == "float"
        else make_labels(rows, k, device, ignore_index=-100)
    )
    kw = dict(
        alpha=torch.rand(k, dtype=dtype, device=device),
        gamma=1.7,
        reduction=reduction,
        weight=torch.rand(rows, dtype=dtype, device=device),
        normalizer=torch.tensor(3.5, device=device),
        label_smoothing=0.1,
        ignore_index=-100,
    )
    assert_close_to_reference(sigmoid_focal_loss(x, targets, **kw), reference(x, targets, **kw), dtype)
    kw["normalizer"] = 3.5  # a float normalizer is the same divisor, folded on the host
    assert_close_to_reference(sigmoid_focal_loss(x, targets, **kw), reference(x, targets, **kw), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(device, dtype):
    base = make_logits((20, 2 * 16), dtype, device)
    x = base[:, ::2]  # strided view
    t = make_soft_targets((16, 20), dtype, device).t()  # transposed
    assert not x.is_contiguous() and not t.is_contiguous()
    out = sigmoid_focal_loss(x, t, reduction="none")
    torch.testing.assert_close(
        out, sigmoid_focal_loss(x.contiguous(), t.contiguous(), reduction="none"), atol=0, rtol=0
    )
    labels = make_labels((40,), 16, device)[::2]
    torch.testing.assert_close(
        sigmoid_focal_loss(x, labels, reduction="sum"),
        sigmoid_focal_loss(x.contiguous(), labels.contiguous(), reduction="sum"),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_every_integer_label_dtype(device, label_dtype):
    x = make_logits((30, 9), torch.float32, device)
    labels = make_labels((30,), 9, device, p_ignore=0.0)
    want = sigmoid_focal_loss(x, labels, reduction="sum")
    torch.testing.assert_close(sigmoid_focal_loss(x, labels.to(label_dtype), reduction="sum"), want)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_reductions(device):
    x = torch.empty(0, 5, device=device)
    assert sigmoid_focal_loss(x, torch.empty(0, 5, device=device), reduction="sum").item() == 0
    assert torch.isnan(sigmoid_focal_loss(x, torch.empty(0, 5, device=device), reduction="mean"))
    assert sigmoid_focal_loss(x, torch.empty(0, dtype=torch.long, device=device)).shape == (0, 5)
    assert (
        sigmoid_focal_loss(
            torch.empty(3, 0, device=device), torch.zeros(3, dtype=torch.long, device=device), reduction="sum"
        ).item()
        == 0
    )


@pytest.mark.parametrize("device", DEVICES)
def test_all_rows_ignored(device):
    x = make_logits((4, 3), torch.float32, device, requires_grad=True)
    labels = torch.full((4,), -1, device=device)
    assert sigmoid_focal_loss(x, labels, reduction="sum").item() == 0
    mean = sigmoid_focal_loss(x, labels, reduction="mean")
    assert torch.isnan(mean)  # a mean over nothing, like torch.mean of an empty tensor
    mean.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # ignored rows get zero gradient


@pytest.mark.parametrize("device", DEVICES)
def test_module_wrapper(device):
    x = make_logits((10, 4), torch.float32, device)
    labels = make_labels((10,), 4, device)
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4])
    module = SigmoidFocalLoss(alpha=alpha, gamma=1.0, reduction="sum").to(device)
    assert module.alpha.device.type == torch.device(device).type
    torch.testing.assert_close(
        module(x, labels, normalizer=2.0), sigmoid_focal_loss(x, labels, alpha.to(device), 1.0, "sum", normalizer=2.0)
    )
    assert "per-class" in repr(module)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    x = make_logits((3000, 80), torch.float32, device, requires_grad=True)
    labels = make_labels((3000,), 80, device)
    results = []
    for _ in range(3):
        x.grad = None
        loss = sigmoid_focal_loss(x, labels, reduction="sum", normalizer=torch.tensor(17.0, device=device))
        loss.backward()
        results.append((loss.detach().clone(), x.grad.clone()))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def test_cpu_result_does_not_depend_on_thread_count():
    x = make_logits((5000, 80), torch.float32, "cpu")
    labels = make_labels((5000,), 80, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sigmoid_focal_loss(x, labels, reduction="sum")
        torch.set_num_threads(2)
        two = sigmoid_focal_loss(x, labels, reduction="sum")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.skipif(EMULATED_CUDA, reason="compares the C++ CPU kernel's two loops; the emulated build has neither")
def test_portable_cpu_kernel_matches_avx2(tmp_path):
    """ATEN_CPU_CAPABILITY=default selects the portable loop; both must give the same numbers."""
    import subprocess
    import sys

    script = (
        "import torch, focal_loss_ext as f; torch.manual_seed(1); x = torch.randn(300, 37) * 5;"
        "t = torch.randint(0, 38, (300,)); xs = x.clone().requires_grad_();"
        "l = f.sigmoid_focal_loss(xs, t, 0.25, 1.3, 'sum'); l.backward();"
        f"torch.save((l.detach(), xs.grad), r'{tmp_path}/' + __import__('os').environ['OUT'])"
    )
    import os

    for capability, name in (("default", "a.pt"), (None, "b.pt")):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        env["OUT"] = name
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        # run outside the checkout so that the installed package, not the source folder, is imported
        subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path)
    (la, ga), (lb, gb) = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    # Sleef's and libm's exp/log1p differ in the last bits
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=0)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target_form", ["float", "labels"])
def test_cpu_and_cuda_agree(dtype, target_form):
    shape = (513, 80)
    x = make_logits(shape, dtype, "cpu")
    t = make_soft_targets(shape, dtype, "cpu") if target_form == "float" else make_labels(shape[:-1], 80, "cpu")
    kw = dict(alpha=0.25, gamma=2.0, reduction="none", label_smoothing=0.05)
    cpu = sigmoid_focal_loss(x, t, **kw)
    gpu = sigmoid_focal_loss(x.cuda(), t.cuda(), **kw).cpu()
    tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 4 * torch.finfo(dtype).eps)
    torch.testing.assert_close(gpu, cpu, atol=tol, rtol=tol)
