"""What is benchmarked: RetinaNet-like inputs, the implementations, and the bytes each must move."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torchvision.ops import sigmoid_focal_loss as torchvision_sigmoid_focal_loss

from focal_loss_ext import sigmoid_focal_loss
from focal_loss_ext.reference import sigmoid_focal_loss_reference

NUM_CLASSES = 80  # COCO
ALPHA, GAMMA = 0.25, 2.0
# RetinaNet matches a few percent of its anchors to an object; the rest are background.
POSITIVE_FRACTION = 0.02
MODES = ("forward", "forward+backward")


@dataclass
class Inputs:
    """One anchor set, with the targets both ways: labels for ours, one-hot for torchvision."""

    logits: torch.Tensor  # (N, K) leaf tensor that requires grad
    labels: torch.Tensor  # (N,) int64: class in [0, K), or K for background
    onehot: torch.Tensor  # (N, K) in the logits' dtype: one_hot(labels) without the background
    num_pos: torch.Tensor  # 0-dim float32: max(number of positives, 1), the loss normalizer

    @property
    def nbytes(self) -> int:
        """Footprint of one set in forward+backward, the gradient included."""
        tensors = (self.logits, self.labels, self.onehot)
        return sum(t.numel() * t.element_size() for t in tensors) + self.logits_nbytes

    @property
    def logits_nbytes(self) -> int:
        return self.logits.numel() * self.logits.element_size()


def make_inputs(
    anchors: int, dtype: torch.dtype, device: torch.device, seed: int, classes: int = NUM_CLASSES
) -> Inputs:
    generator = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(anchors, classes, generator=generator, device=device).to(dtype)
    is_positive = torch.rand(anchors, generator=generator, device=device) < POSITIVE_FRACTION
    labels = torch.full((anchors,), classes, dtype=torch.int64, device=device)
    labels[is_positive] = torch.randint(0, classes, (int(is_positive.sum()),), generator=generator, device=device)
    onehot = torch.zeros(anchors, classes, dtype=dtype, device=device)
    onehot[is_positive, labels[is_positive]] = 1
    num_pos = is_positive.sum().clamp(min=1).to(torch.float32)
    return Inputs(logits.requires_grad_(), labels, onehot, num_pos)


LossFn = Callable[[Inputs], torch.Tensor]


@dataclass(frozen=True)
class Implementation:
    name: str
    targets: str  # "int" (labels) or "float" (one-hot)
    make_loss: Callable[[], LossFn]  # called once per case, so torch.compile starts afresh
    compiled: bool = False


def _ours_int() -> LossFn:
    return lambda x: sigmoid_focal_loss(x.logits, x.labels, ALPHA, GAMMA, reduction="sum", normalizer=x.num_pos)


def _ours_float() -> LossFn:
    return lambda x: sigmoid_focal_loss(x.logits, x.onehot, ALPHA, GAMMA, reduction="sum", normalizer=x.num_pos)


def _reference_int() -> LossFn:
    return lambda x: sigmoid_focal_loss_reference(
        x.logits, x.labels, ALPHA, GAMMA, reduction="sum", normalizer=x.num_pos
    )


def _torchvision_loss(logits: torch.Tensor, onehot: torch.Tensor, num_pos: torch.Tensor):
    """What torchvision's RetinaNet head computes for one image set, before its own sum."""
    return torchvision_sigmoid_focal_loss(logits, onehot, ALPHA, GAMMA, reduction="sum") / num_pos


def _torchvision_eager() -> LossFn:
    return lambda x: _torchvision_loss(x.logits, x.onehot, x.num_pos)


def _torchvision_compiled() -> LossFn:
    # Without a reset, each new shape or grad mode is another entry in dynamo's cache for the
    # same code object; past the recompile limit it silently falls back to eager. Static shapes
    # are torch.compile's best case, which is the fair comparison.
    torch._dynamo.reset()
    compiled = torch.compile(_torchvision_loss, dynamic=False)
    return lambda x: compiled(x.logits, x.onehot, x.num_pos)


OURS = ("ours-int", "ours-float")

IMPLEMENTATIONS = {
    impl.name: impl
    for impl in (
        Implementation("ours-int", "int", _ours_int),
        Implementation("ours-float", "float", _ours_float),
        Implementation("torchvision-eager", "float", _torchvision_eager),
        Implementation("torchvision-compile", "float", _torchvision_compiled, compiled=True),
        Implementation("reference-int", "int", _reference_int),
    )
}


def minimal_bytes(inputs: Inputs, targets: str, mode: str) -> int:
    """Bytes that any implementation must move at least, which bandwidth is measured against.

    The logits are read once and the targets once (an int64 label per anchor, or a one-hot row
    in the logits' dtype); forward+backward also writes the logits' gradient once. The scalar
    loss and normalizer are negligible. Intermediates kept between forward and backward are not
    counted: a fused kernel need not keep any.
    """
    targets_nbytes = (
        inputs.labels.numel() * inputs.labels.element_size()
        if targets == "int"
        else inputs.onehot.numel() * inputs.onehot.element_size()
    )
    gradient_nbytes = inputs.logits_nbytes if mode == "forward+backward" else 0
    return inputs.logits_nbytes + targets_nbytes + gradient_nbytes


def make_step(loss_fn: LossFn, inputs: Inputs, mode: str) -> Callable[[], torch.Tensor]:
    """One training-like call: forward under no_grad, or forward and `backward()` of the loss."""
    if mode == "forward":

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return loss_fn(inputs)

        return forward

    def forward_backward() -> torch.Tensor:
        inputs.logits.grad = None  # as optimizer.zero_grad(set_to_none=True) leaves it
        loss = loss_fn(inputs)
        loss.backward()
        return loss

    return forward_backward
