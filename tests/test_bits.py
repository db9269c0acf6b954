"""The same values give the same bits: the loss and the gradient do not depend on where the logits
sit in their storage, on the device's multiprocessor count or block order (the emulated device
runs this file under several), or on other threads calling the operators at the same time.

Every kernel sums in fixed tiles counted from the problem's first element, so a tensor one
element into its storage (which the CUDA kernels load with narrower accesses) must match its
aligned copy exactly, not just closely."""

import threading

import pytest
import torch
from helpers import DTYPES, EMULATED_CUDA, make_labels, make_logits, make_probabilities, make_soft_targets

from focal_loss_ext import sigmoid_focal_loss, sigmoid_focal_loss_star, softmax_focal_loss

DTYPE_IDS = [str(d).replace("torch.", "") for d in DTYPES]
CLASSES = [1, 7, 80, 81, 91, 1203]
OPS = {
    "sigmoid": (sigmoid_focal_loss, dict(alpha=0.25, gamma=2.0)),
    "star": (sigmoid_focal_loss_star, dict(alpha=0.25, gamma=1.0, beta=1.0)),
    "softmax": (softmax_focal_loss, dict(gamma=2.0)),
}


def rows_for(op, k):
    """Rows for two tiles, the last one short (4096 float32 elements of a sigmoid loss, 32
    softmax rows), few enough that the emulated device runs the file in seconds."""
    return 40 if op == "softmax" else -(-5000 // k)


def at_offset(t, offset):
    """A copy of t that starts `offset` elements into its storage."""
    storage = torch.empty(t.numel() + offset, dtype=t.dtype)
    out = storage[offset:].view(t.shape)
    out.copy_(t)
    assert out.storage_offset() == offset
    return out


def make_targets(op, form, rows, k, dtype):
    if form == "labels":
        return torch.randint(0, k, (rows,)) if op == "softmax" else make_labels((rows,), k, "cpu")
    return (make_probabilities if op == "softmax" else make_soft_targets)((rows, k), dtype, "cpu")


def loss_and_grad(op, x, t, reduction):
    fn, kw = OPS[op]
    x = x.detach().requires_grad_()
    loss = fn(x, t, reduction=reduction, **kw)
    loss.sum().backward()
    return loss.detach(), x.grad


def assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)), (a - b).abs().max()


@pytest.mark.parametrize("form", ["labels", "float"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k", CLASSES)
@pytest.mark.parametrize("op", list(OPS))
def test_offset_storage_gives_the_same_bits(op, k, dtype, form):
    rows = rows_for(op, k)
    x = at_offset(make_logits((rows, k), dtype, "cpu"), 1)
    t = at_offset(make_targets(op, form, rows, k, dtype), 1)
    for reduction in ["sum", "mean"]:
        loss, grad = loss_and_grad(op, x, t, reduction)
        assert loss.isfinite()
        copy_loss, copy_grad = loss_and_grad(op, x.clone(), t.clone(), reduction)
        assert_same_bits(loss, copy_loss)
        assert_same_bits(grad, copy_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_concurrent_calls_give_the_single_threaded_bits(monkeypatch, dtype):
    """8 threads call the operators at once, on problems of different sizes (so different grids),
    and each result is the one a single thread gets. On the emulated device the calls run on a
    device not used before in the process (a new multiprocessor count), so the threads also meet
    on the first use of its per-device launch caches."""
    cases = []
    for i in range(8):
        op = list(OPS)[i % 3]
        k = CLASSES[i % len(CLASSES)]
        rows = 3 + 41 * i
        labels = torch.randint(0, k, (rows,)) if op == "softmax" else make_labels((rows,), k, "cpu")
        cases.append((op, make_logits((rows, k), dtype, "cpu"), labels, ["sum", "mean", "none"][i % 3]))
    expected = [loss_and_grad(*case) for case in cases]

    if EMULATED_CUDA:
        monkeypatch.setenv("FOCAL_LOSS_EXT_EMU_SMS", "5")
    results = [None] * len(cases)
    start = threading.Barrier(len(cases))

    def run(i):
        start.wait()
        results[i] = [loss_and_grad(*cases[i]) for _ in range(3)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for want, got in zip(expected, results):
        assert got is not None  # the thread finished without raising
        for loss, grad in got:
            assert_same_bits(loss, want[0])
            assert_same_bits(grad, want[1])
