"""The emulated CUDA device itself (csrc/emu): that it enforces CUDA's rules, poisons shared
memory, honours the block order and multiprocessor count it is given, and that the kernels'
results do not depend on the block order. Runs against the emulated build only (make test)."""

import subprocess
import sys

import pytest
import torch
from helpers import EMULATED_CUDA, make_labels, make_logits

from focal_loss_ext import sigmoid_focal_loss, softmax_focal_loss

emulated_only = pytest.mark.skipif(not EMULATED_CUDA, reason="needs the emulated-CUDA build (make test-emulated)")


def selftest(case):
    return torch.ops.focal_loss_ext_emu.selftest(case)


def test_env_reports_the_flavour():
    out = subprocess.run([sys.executable, "-m", "focal_loss_ext.env"], capture_output=True, text=True, check=True)
    assert ("emulated" in out.stdout) == EMULATED_CUDA


@emulated_only
def test_kernel_that_keeps_the_rules():
    out = selftest("rules").view(64, 6)
    lane = torch.arange(64) % 32
    torch.testing.assert_close(out[:32, 0], torch.full((32,), float(sum(range(32, 64)))))
    torch.testing.assert_close(out[32:, 0], torch.full((32,), float(sum(range(32)))))
    assert (out[:, 1] == float(sum(1 << i for i in range(0, 32, 3)))).all()
    assert (out[:, 2] == 3).all()  # __all_sync and __any_sync both true
    torch.testing.assert_close(out[:, 3], torch.where(lane == 0, 0, lane - 1).float())
    torch.testing.assert_close(out[:, 4], torch.where(lane < 8, 3.0, torch.where(lane < 16, 11.0, -1.0)))
    assert (out[:, 5] == 1).all()


@emulated_only
def test_unwritten_shared_memory_is_nan():
    out = selftest("poison")
    assert torch.isnan(out[:64]).all()


@emulated_only
@pytest.mark.parametrize(
    "case, match",
    [
        ("barrier", r"__syncthreads at csrc/emu/selftest.cpp:\d+ .* is not reached by threads 32-63"),
        ("divergent_shuffle", r"__shfl_down_sync \(mask 0xffffffff\).*lane 16 named in the mask never arrives"),
        ("mask", r"__shfl_sync \(mask 0xffff\).* is called by lane 16, which its mask leaves out"),
        ("outside_mask", r"reads lane 20, which is not in the mask"),
        ("assert", r"block \(\d,0,0\), thread 5: device-side assert triggered: `t != 5`"),
    ],
)
def test_broken_kernels_fail_naming_the_kernel(case, match):
    with pytest.raises(RuntimeError, match=match) as info:
        selftest(case)
    assert "kernel void focal_loss_ext::emu_selftest::{anonymous}::rules_kernel(int, float*)" in str(info.value)


@emulated_only
@pytest.mark.parametrize(
    "order, expected",
    [("forward", list(range(16))), ("reverse", list(range(15, -1, -1))), ("random:3", None)],
)
def test_block_order(monkeypatch, order, expected):
    monkeypatch.setenv("FOCAL_LOSS_EXT_EMU_BLOCK_ORDER", order)
    ran_at = selftest("order").long().tolist()
    assert sorted(ran_at) == list(range(16))
    if expected is not None:
        assert ran_at == expected
    else:
        assert ran_at not in (list(range(16)), list(range(15, -1, -1)))
        assert selftest("order").long().tolist() == ran_at  # the seed fixes the order


@emulated_only
def test_bad_settings_are_errors(monkeypatch):
    monkeypatch.setenv("FOCAL_LOSS_EXT_EMU_BLOCK_ORDER", "sideways")
    with pytest.raises(RuntimeError, match="FOCAL_LOSS_EXT_EMU_BLOCK_ORDER must be forward, reverse, random"):
        selftest("order")
    monkeypatch.setenv("FOCAL_LOSS_EXT_EMU_BLOCK_ORDER", "forward")
    monkeypatch.setenv("FOCAL_LOSS_EXT_EMU_SMS", "0")
    with pytest.raises(RuntimeError, match="FOCAL_LOSS_EXT_EMU_SMS must be a positive integer"):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, 3))


@emulated_only
@pytest.mark.parametrize("sms", ["1", "132"])
@pytest.mark.parametrize("op", ["sigmoid", "softmax"])
def test_results_do_not_depend_on_block_order(monkeypatch, sms, op):
    """Block partials are summed in a fixed order: the same bits whatever order blocks ran in."""
    monkeypatch.setenv("FOCAL_LOSS_EXT_EMU_SMS", sms)
    x = make_logits((3000, 80), torch.float32, "cpu")
    if op == "sigmoid":
        labels = make_labels((3000,), 80, "cpu")
        run = lambda: sigmoid_focal_loss(x, labels, reduction="mean")  # noqa: E731
    else:
        labels = torch.randint(0, 80, (3000,))
        run = lambda: softmax_focal_loss(x, labels, reduction="mean")  # noqa: E731
    results = []
    for order in ["forward", "reverse", "random:1", "random:2"]:
        monkeypatch.setenv("FOCAL_LOSS_EXT_EMU_BLOCK_ORDER", order)
        results.append(run())
    for r in results[1:]:
        assert torch.equal(r, results[0])
