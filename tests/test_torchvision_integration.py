"""fuse_focal_loss on torchvision's RetinaNet and FCOS: the stock losses and gradients, without a host sync.

The models are torchvision's own classes around a three-level toy backbone on 96 px images, so
that every test runs in a fraction of a second; the loss code under test does not depend on the
backbone.
"""

import contextlib
import copy
import functools
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import DEVICES
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from focal_loss_ext.integrations.torchvision import (
    FusedFCOSLoss,
    FusedRetinaNetClassificationLoss,
    fuse_focal_loss,
    is_fused,
    unfuse_focal_loss,
)

IMAGE = 96
KINDS = ["retinanet", "fcos"]
# Boxes per image of a batch: one image without boxes, one box, many, and mixes.
BATCHES = [[0], [1], [9], [0, 3], [2, 0, 1, 12]]


class ToyBackbone(nn.Module):
    """Feature maps at strides 8, 16 and 32, as an FPN's first three levels."""

    out_channels = 32

    def __init__(self):
        super().__init__()
        c = self.out_channels
        self.levels = nn.ModuleList([nn.Conv2d(3, c, 3, stride=8, padding=1)])
        self.levels.extend(nn.Conv2d(c, c, 3, stride=2, padding=1) for _ in range(2))

    def forward(self, x):
        features = OrderedDict()
        for i, level in enumerate(self.levels):
            x = torch.relu(level(x))
            features[str(i)] = x
        return features


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are tiny: a second OpenMP thread only waits, and on a busy machine it spins.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(kind, num_classes=5):
    common = dict(min_size=IMAGE, max_size=IMAGE, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    if kind == "retinanet":
        anchors = AnchorGenerator(((16, 20), (32, 40), (64, 80)), ((0.5, 1.0, 2.0),) * 3)
        model = RetinaNet(ToyBackbone(), num_classes, anchor_generator=anchors, **common)
    else:
        anchors = AnchorGenerator(((8,), (16,), (32,)), ((1.0,),) * 3)
        model = FCOS(ToyBackbone(), num_classes, anchor_generator=anchors, **common)
    return model.train()


def make_batch(boxes_per_image, num_classes=5, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for n in boxes_per_image:
        images.append(torch.rand(3, IMAGE, IMAGE, generator=g).to(device))
        corner = torch.rand(n, 2, generator=g) * (IMAGE - 40)
        size = 8 + torch.rand(n, 2, generator=g) * 32
        boxes = torch.cat([corner, corner + size], dim=1).to(device)
        targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (n,), generator=g).to(device)})
    return images, targets


def losses_and_grads(model, images, targets):
    model.zero_grad(set_to_none=True)
    losses = model(images, targets)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def assert_close_relative(actual, expected, rtol):
    """Equal to rtol of the tensor's largest magnitude."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def assert_same_as_stock(model, images, targets, rtol=1e-5, autocast=contextlib.nullcontext):
    """Fused and stock losses agree to rtol; so does every gradient, judged against float64.

    A fused gradient agrees when its distance to the float64 gradient is at most rtol of that
    gradient's largest magnitude plus twice the stock path's own distance. The second term matters for
    gradients that are zero up to rounding (a conv bias before a GroupNorm), where the two
    float32 paths agree on nothing but noise, and under autocast, where both round to bfloat16.
    """
    exact_losses, exact_grads = losses_and_grads(
        unfuse_focal_loss(copy.deepcopy(model).double()), [i.double() for i in images], targets
    )
    with autocast():
        stock_losses, stock_grads = losses_and_grads(unfuse_focal_loss(model), images, targets)
        fused_losses, fused_grads = losses_and_grads(fuse_focal_loss(model), images, targets)
    assert fused_losses.keys() == stock_losses.keys()
    for key in stock_losses:
        assert_close_relative(fused_losses[key], stock_losses[key], rtol)
    assert fused_grads.keys() == stock_grads.keys()
    for name, exact in exact_grads.items():
        stock_error = (stock_grads[name].double() - exact).abs().max()
        allowed = rtol * exact.abs().max() + 2 * stock_error
        error = (fused_grads[name].double() - exact).abs().max()
        assert error <= allowed, f"{name}: gradient off by {error:.3g} > {allowed:.3g} allowed"
    return stock_losses, stock_grads


@pytest.mark.parametrize("boxes_per_image", BATCHES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_same_as_torchvision_in_float64(kind, boxes_per_image):
    """In float64 the fused and stock paths are the same function to ~1e-12 of the largest gradient."""
    model = make_model(kind).double()
    images, targets = make_batch(boxes_per_image)
    images = [i.double() for i in images]
    stock_losses, stock_grads = losses_and_grads(unfuse_focal_loss(model), images, targets)
    fused_losses, fused_grads = losses_and_grads(fuse_focal_loss(model), images, targets)
    for key in stock_losses:
        assert_close_relative(fused_losses[key], stock_losses[key], 1e-12)
    largest = max(g.abs().max() for g in stock_grads.values())
    for name in stock_grads:
        torch.testing.assert_close(fused_grads[name], stock_grads[name], rtol=0, atol=1e-12 * largest)


@pytest.mark.parametrize("boxes_per_image", BATCHES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_same_losses_and_gradients_as_torchvision(kind, boxes_per_image):
    model = make_model(kind)
    losses, grads = assert_same_as_stock(model, *make_batch(boxes_per_image))
    head_params = [name for name, _ in model.named_parameters() if name.startswith("head.classification_head")]
    assert head_params and all(name in grads for name in head_params)
    assert losses["classification"] > 0


@pytest.mark.parametrize("num_classes", [1, 91])
@pytest.mark.parametrize("kind", KINDS)
def test_any_number_of_classes(kind, num_classes):
    torch.manual_seed(1)
    assert_same_as_stock(make_model(kind, num_classes), *make_batch([3, 0, 5], num_classes))


def test_retinanet_ignores_between_thresholds_and_normalizes_per_image():
    model = make_model("retinanet")
    images, targets = make_batch([1, 12])
    # The matcher leaves anchors between its thresholds, which the loss must drop.
    transformed, transformed_targets = model.transform(images, targets)
    features = list(model.backbone(transformed.tensors).values())
    anchors = model.anchor_generator(transformed, features)
    matched = [
        model.proposal_matcher(torchvision.ops.box_iou(t["boxes"], a)) for t, a in zip(transformed_targets, anchors)
    ]
    assert all((m == -2).any() for m in matched)
    assert len({int((m >= 0).sum()) for m in matched}) == 2  # different foreground counts per image
    assert_same_as_stock(model, images, targets)


def test_alpha_and_gamma_are_the_heads(monkeypatch):
    model = make_model("retinanet")
    images, targets = make_batch([4, 2])
    fused, _ = losses_and_grads(fuse_focal_loss(model, alpha=0.5, gamma=1.5), images, targets)
    stock_loss = functools.partial(torchvision.ops.sigmoid_focal_loss, alpha=0.5, gamma=1.5)
    monkeypatch.setattr(torchvision.models.detection.retinanet, "sigmoid_focal_loss", stock_loss)
    stock, _ = losses_and_grads(unfuse_focal_loss(model), images, targets)
    assert_close_relative(fused["classification"], stock["classification"], 1e-5)
    default, _ = losses_and_grads(fuse_focal_loss(model), images, targets)
    assert not torch.allclose(default["classification"], fused["classification"])


@pytest.mark.parametrize("kind", KINDS)
def test_fused_model_trains(kind):
    """A few Adam steps on a fixed batch: the loss falls, along the stock model's trajectory."""
    images, targets = make_batch([3, 1])
    histories = []
    for fuse in (unfuse_focal_loss, fuse_focal_loss):
        torch.manual_seed(0)
        model = fuse(make_model(kind))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        history = []
        for _ in range(6):
            losses = model(images, targets)
            history.append(losses["classification"].item())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        histories.append(history)
    stock, fused = histories
    assert fused[-1] < 0.85 * fused[0], fused
    assert fused == pytest.approx(stock, rel=1e-4)


class HostSyncDetector(TorchDispatchMode):
    """Fails on the ATen calls that make the host wait for the device on CUDA: reading a value
    (.item(), bool(), Python max on a tensor) or an output size that depends on values."""

    VALUE_DEPENDENT = {
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.nonzero.default,
        torch.ops.aten.masked_select.default,
    }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.VALUE_DEPENDENT:
            raise AssertionError(f"host sync: {func}")
        if func.overloadpacket in (torch.ops.aten.index, torch.ops.aten.index_put, torch.ops.aten.index_put_):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                raise AssertionError(f"host sync: {func} with a boolean mask")
        return func(*args, **kwargs)


def loss_inputs(model, images, targets):
    """What the model hands its head's compute_loss, recorded from one forward pass."""
    head = model.head.classification_head if isinstance(model, RetinaNet) else model.head
    recorded = {}

    def record(*args):
        recorded["args"] = args
        return type(head).compute_loss(head, *args)

    head.compute_loss = record
    try:
        model(images, targets)
    finally:
        del head.compute_loss
    return head, recorded["args"]


@pytest.mark.parametrize("kind", KINDS)
def test_no_host_sync_on_cpu(kind):
    model = make_model(kind)
    head, args = loss_inputs(model, *make_batch([0, 2, 7]))
    with pytest.raises(AssertionError, match="host sync"), HostSyncDetector():
        type(head).compute_loss(head, *args)  # the detector does see torchvision's syncs
    fuse_focal_loss(model)
    with HostSyncDetector():
        losses = head.compute_loss(*args)
        loss = losses if isinstance(losses, torch.Tensor) else sum(losses.values())
        loss.backward()


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_no_host_sync_on_cuda(kind):
    model = fuse_focal_loss(make_model(kind).cuda())
    head, args = loss_inputs(model, *make_batch([0, 2, 7], device="cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = head.compute_loss(*args)
        loss = losses if isinstance(losses, torch.Tensor) else sum(losses.values())
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_logits(kind, dtype, device):
    """The loss and the logits' gradient in half precision against torchvision's in float64."""
    model = make_model(kind).to(device)
    head, args = loss_inputs(model, *make_batch([0, 2, 7], device=device))
    outputs = args[1]
    logits = outputs["cls_logits"].detach()

    def classification(compute_loss, dtype):
        x = logits.to(dtype).requires_grad_()
        losses = compute_loss(*(args[:1] + ({**outputs, "cls_logits": x},) + args[2:]))
        loss = losses if isinstance(losses, torch.Tensor) else losses["classification"]
        loss.backward()
        return loss, x.grad

    expected_loss, expected_grad = classification(functools.partial(type(head).compute_loss, head), torch.float64)
    fuse_focal_loss(model)
    loss, grad = classification(head.compute_loss, dtype)
    assert loss.dtype == dtype and grad.dtype == dtype
    rtol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert_close_relative(loss.double(), expected_loss, rtol)
    assert_close_relative(grad.double(), expected_grad, rtol)


@pytest.mark.parametrize("kind", KINDS)
def test_autocast(kind):
    """Under bfloat16 autocast the losses have torchvision's dtypes and values, and the gradients
    are no further from float64 than torchvision's own."""
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    assert_same_as_stock(make_model(kind), *make_batch([0, 3, 5]), rtol=1e-2, autocast=autocast)


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_loss(kind):
    """torch.compile(fullgraph=True) traces the whole fused loss: same losses, same gradients of every head output."""
    model = make_model(kind)
    head, args = loss_inputs(model, *make_batch([0, 2, 7]))
    outputs = {k: v.detach() for k, v in args[1].items()}
    fuse_focal_loss(model)
    compiled = torch.compile(head.compute_loss, fullgraph=True, backend="aot_eager")
    results = []
    for compute_loss in (head.compute_loss, compiled):
        leaves = {k: v.clone().requires_grad_() for k, v in outputs.items()}
        losses = compute_loss(*(args[:1] + (leaves,) + args[2:]))
        losses = {"classification": losses} if isinstance(losses, torch.Tensor) else losses
        sum(losses.values()).backward()
        results.append(({k: v.detach() for k, v in losses.items()}, {k: v.grad for k, v in leaves.items()}))
    (eager_losses, eager_grads), (compiled_losses, compiled_grads) = results
    for key in eager_losses:
        assert_close_relative(compiled_losses[key], eager_losses[key], 1e-6)
    assert eager_grads["cls_logits"] is not None
    for key in eager_grads:
        if eager_grads[key] is None:  # RetinaNet's box regression is not this loss's input
            assert compiled_grads[key] is None
        else:
            assert_close_relative(compiled_grads[key], eager_grads[key], 1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_unfuse_restores_torchvision(kind):
    model = make_model(kind)
    head = model.head.classification_head if kind == "retinanet" else model.head
    state = model.state_dict()
    assert not is_fused(model)
    assert fuse_focal_loss(model) is model and is_fused(model)
    assert isinstance(head.compute_loss, (FusedRetinaNetClassificationLoss, FusedFCOSLoss))
    assert model.state_dict().keys() == state.keys()
    assert is_fused(copy.deepcopy(model))
    assert unfuse_focal_loss(model) is model and not is_fused(model)
    assert head.compute_loss.__func__ is type(head).compute_loss
    unfuse_focal_loss(model)  # a second undo is harmless


def test_errors():
    with pytest.raises(TypeError, match="RetinaNet or FCOS model, got torch.nn.modules.linear.Linear"):
        fuse_focal_loss(nn.Linear(2, 2))
    model = make_model("retinanet")

    class CustomHead(type(model.head.classification_head)):
        def compute_loss(self, targets, head_outputs, matched_idxs):
            return head_outputs["cls_logits"].sum()

    model.head.classification_head.__class__ = CustomHead
    with pytest.raises(TypeError, match="CustomHead overrides RetinaNetClassificationHead.compute_loss"):
        fuse_focal_loss(model)
    model.head.classification_head = nn.Identity()
    with pytest.raises(TypeError, match="this model's head is a Identity"):
        fuse_focal_loss(model)
    with pytest.raises(ValueError, match="gamma must be a number >= 0, got -1"):
        fuse_focal_loss(make_model("fcos"), gamma=-1)
    with pytest.raises(TypeError, match="alpha must be a float or a 1-D tensor"):
        fuse_focal_loss(make_model("fcos"), alpha="0.25")


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_same_as_torchvision_on_cuda(kind):
    torch.manual_seed(0)
    model = make_model(kind).cuda()
    assert_same_as_stock(model, *make_batch([2, 0, 1, 12], device="cuda"), rtol=1e-4)


def test_importable_without_torchvision():
    code = (
        "import sys; sys.modules['torchvision'] = None\n"  # makes `import torchvision` fail
        "import focal_loss_ext.integrations.torchvision as adapter\n"
        "try:\n    adapter.fuse_focal_loss(None)\nexcept ImportError:\n    print('needs torchvision')\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "needs torchvision"


@pytest.mark.slow
def test_benchmark_script_runs(tmp_path, monkeypatch):
    """benchmarks/torchvision_retinanet.py at a toy size: it writes its rows and table (no timing claims)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    from benchmarks import torchvision_retinanet

    options = "--device cpu --threads 1 --batches 1 --image-size 64 --train-size 64 --train-batches 1"
    torchvision_retinanet.main([*options.split(), "--loss-reps", "1", "--train-reps", "1", "--out", str(tmp_path)])
    (rows_file,) = tmp_path.glob("torchvision-retinanet-cpu-*.json")
    rows = json.loads(rows_file.read_text())
    assert {(r["measure"], r["impl"]) for r in rows} == {(m, i) for m in ("loss", "train") for i in ("stock", "fused")}
    assert all(r["median_ms"] > 0 and r["speedup_median"] > 0 for r in rows)
    assert "| loss | 1 |" in rows_file.with_suffix(".md").read_text()
