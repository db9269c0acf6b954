"""The CPU kernel's instruction-set builds (portable, AVX2, AVX-512): selection, agreement between
the builds, and the vector math's error bounds. (test_cpu_isa_cases.py runs the main case tables
under every build.)"""

import os
import subprocess
import sys

import pytest
import torch
from helpers import EMULATED_CUDA, cpu_isa, make_labels, make_logits, make_soft_targets

from focal_loss_ext import sigmoid_focal_loss, sigmoid_focal_loss_star, softmax_focal_loss

if EMULATED_CUDA:  # that flavour's CPU kernels are the CUDA kernels: no CPU builds to choose from
    pytest.skip("the emulated-CUDA build has no CPU instruction-set builds", allow_module_level=True)

ops = torch.ops.focal_loss_ext
SUPPORTED = list(ops._cpu_isas_supported())
DEFAULT_ISA = ops._cpu_isa()
ALL_ISAS = ["portable", "avx2", "avx512"]


@pytest.fixture(params=SUPPORTED)
def isa(request):
    """Each supported build in turn."""
    with cpu_isa(request.param):
        yield request.param


def run_python(code, **env):
    """Runs code in a fresh interpreter with the given environment changes (None: unset)."""
    full = {k: v for k, v in os.environ.items() if k not in env}
    full.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)


def test_default_is_the_widest_supported():
    assert SUPPORTED[0] == "portable" and set(SUPPORTED) <= set(ALL_ISAS)
    probe = run_python("import torch, focal_loss_ext; print(torch.ops.focal_loss_ext._cpu_isa())",
                       FOCAL_LOSS_EXT_CPU_ISA=None, ATEN_CPU_CAPABILITY=None)  # fmt: skip
    assert probe.stdout.strip() == SUPPORTED[-1], probe.stderr


@pytest.mark.parametrize("name", ALL_ISAS + ["AVX2", "sse9", ""])
def test_environment_variable_forces_or_rejects(name):
    code = (
        "import torch, focal_loss_ext; x = torch.randn(4, 3); focal_loss_ext.sigmoid_focal_loss(x, torch.zeros(4, 3));"
        "print(torch.ops.focal_loss_ext._cpu_isa())"
    )
    probe = run_python(code, FOCAL_LOSS_EXT_CPU_ISA=name)
    if name == "":  # unset in effect: the default
        assert probe.returncode == 0 and probe.stdout.strip() == SUPPORTED[-1], probe.stderr
    elif name.lower() in SUPPORTED:
        assert probe.returncode == 0 and probe.stdout.strip() == name.lower(), probe.stderr
    elif name.lower() in ALL_ISAS:
        assert probe.returncode != 0 and "lacks that instruction set" in probe.stderr
    else:
        assert probe.returncode != 0 and f"FOCAL_LOSS_EXT_CPU_ISA={name} is not an instruction set" in probe.stderr


def test_aten_cpu_capability_default_means_portable():
    probe = run_python(
        "import torch, focal_loss_ext; print(torch.ops.focal_loss_ext._cpu_isa())",
        FOCAL_LOSS_EXT_CPU_ISA=None,
        ATEN_CPU_CAPABILITY="default",
    )
    assert probe.stdout.strip() == "portable", probe.stderr


def test_env_report_names_the_path(isa):
    from focal_loss_ext.env import report

    assert f"vector code: {isa}" in report()


def test_set_cpu_isa_rejects_bad_names():
    before = ops._cpu_isa()
    with pytest.raises(RuntimeError, match="isa=sse9 is not an instruction set"):
        ops._set_cpu_isa("sse9")
    assert ops._cpu_isa() == before


def all_paths(fn):
    """fn() under every supported build, in SUPPORTED order."""
    results = []
    for name in SUPPORTED:
        with cpu_isa(name):
            results.append(fn())
    return results


def loss_and_grad(loss_fn, x, t, **kw):
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(x, t, **kw)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), x.grad


CASES = {
    "fl-labels": (sigmoid_focal_loss, "labels", dict(alpha=0.25, gamma=2.0)),
    "fl-soft-gamma-1.5": (sigmoid_focal_loss, "soft", dict(alpha=0.25, gamma=1.5, label_smoothing=0.1)),
    "fl-gamma-0": (sigmoid_focal_loss, "labels", dict(alpha=-1, gamma=0.0)),
    "fl-gamma-1": (sigmoid_focal_loss, "soft", dict(alpha=0.5, gamma=1.0)),
    "fl-star": (sigmoid_focal_loss_star, "labels", dict(alpha=0.25, gamma=2.0, beta=1.0)),
    "softmax": (softmax_focal_loss, "softmax-labels", dict(gamma=2.0, ignore_index=-1)),
    "softmax-soft": (softmax_focal_loss, "softmax-soft", dict(gamma=1.5, label_smoothing=0.1)),
}


def case_inputs(form, dtype):
    x = make_logits((333, 83), dtype, "cpu", scale=6.0)  # 83 classes: a masked tail at every width
    x[0, :11] = torch.tensor([-1e4, -3000.0, -104.0, -88.0, -20.0, 0.0, 20.0, 88.0, 104.0, 3000.0, 1e4]).to(dtype)
    if form == "labels":
        return x, make_labels((333,), 83, "cpu")
    if form == "softmax-labels":
        return x, make_labels((333,), 83, "cpu", p_background=0.0)
    if form == "softmax-soft":
        return x, torch.softmax(torch.randn(333, 83, dtype=torch.float64), -1).to(dtype)
    return x, make_soft_targets((333, 83), dtype, "cpu")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_paths_agree(case, dtype):
    """Every build gives the same numbers to within rounding. AVX2 and AVX-512 give bit-identical
    per-element sigmoid losses and gradients in float32 (same operations, same roundings); the
    reduced losses, and the softmax loss, whose every element depends on a row sum, differ by
    summation order (8 or 16 lanes)."""
    loss_fn, form, kw = CASES[case]
    x, t = case_inputs(form, dtype)
    none = all_paths(lambda: loss_and_grad(loss_fn, x, t, reduction="none", **kw))
    summed = all_paths(lambda: loss_fn(x, t, reduction="sum", **kw))
    tol = {torch.float64: 1e-12, torch.float32: 2e-6}.get(dtype, 2 * torch.finfo(dtype).eps)
    for (loss, grad), total in zip(none[1:], summed[1:]):
        torch.testing.assert_close(loss, none[0][0], rtol=tol, atol=tol)
        torch.testing.assert_close(grad, none[0][1], rtol=tol, atol=tol)
        torch.testing.assert_close(total, summed[0], rtol=tol * 10, atol=0)
    if "avx2" in SUPPORTED and "avx512" in SUPPORTED and dtype == torch.float32 and loss_fn is not softmax_focal_loss:
        (l2, g2), (l5, g5) = none[SUPPORTED.index("avx2")], none[SUPPORTED.index("avx512")]
        assert torch.equal(l2, l5) and torch.equal(g2, g5)


def float32_grid(lo_bits, hi_bits, step):
    """Every step-th float32 bit pattern in [lo_bits, hi_bits], both signs' patterns as given."""
    bits = torch.arange(lo_bits, hi_bits + 1, step, dtype=torch.int64)
    return bits.to(torch.int32).view(torch.float32)


def ulp_error(actual, exact64):
    """|actual - exact| in units of the last place of the float32 nearest to exact (subnormal
    spacing below the normal range)."""
    nearest = exact64.float()
    spacing = (torch.nextafter(nearest.abs(), torch.tensor(float("inf"))) - nearest.abs()).double()
    spacing = spacing.clamp(min=2.0**-149)
    return ((actual.double() - exact64).abs() / spacing).nan_to_num(nan=0.0)


def test_vector_exp_within_2_ulp_over_the_whole_float_range(isa):
    x = torch.cat(
        [
            float32_grid(0, 0x7F800000, 997),  # +0 .. +inf, every exponent
            -float32_grid(0, 0x7F800000, 997),  # -0 .. -inf
            torch.tensor([float("nan"), 88.72283, 88.7229, 89.0, -87.33655, -103.2789, -103.97, -104.0, -105.0]),
            torch.linspace(-104, 89, 200_001),
        ]
    )
    got = ops._cpu_vec_math(x, "exp")
    exact = torch.exp(x.double())
    overflow = exact > torch.finfo(torch.float32).max
    assert torch.equal(torch.isnan(got), torch.isnan(x))
    assert torch.isinf(got[overflow]).all()
    err = ulp_error(got[~overflow], exact[~overflow])
    assert err.max().item() <= 2.0, f"max error {err.max().item():.2f} ulp at x = {x[~overflow][err.argmax()].item()}"


def test_vector_log1p_unit_within_2_5_ulp_on_its_domain(isa):
    """The degree-9 polynomial: 1.8 ulp with FMA (AVX2, AVX-512), 2.15 without (portable)."""
    x = torch.cat([float32_grid(0, 0x3F800000, 251), torch.linspace(0, 1, 100_001)])  # every float in [0, 1] / 251
    got = ops._cpu_vec_math(x, "log1p_unit")
    err = ulp_error(got, torch.log1p(x.double()))
    assert err.max().item() <= 2.5, f"max error {err.max().item():.2f} ulp at x = {x[err.argmax()].item()}"


def test_vec_math_op_checks_its_arguments(isa):
    with pytest.raises(RuntimeError, match="x: expected a float32 CPU tensor"):
        ops._cpu_vec_math(torch.zeros(3, dtype=torch.float64), "exp")
    with pytest.raises(RuntimeError, match='fn: expected "exp" or "log1p_unit"'):
        ops._cpu_vec_math(torch.zeros(3), "log")
