"""``python -m focal_loss_ext.env``: what this installation was built with and can run.

``--check-cuda-targets`` also fails unless every CUDA target the library was built for (machine
code and PTX, read with cuobjdump) is in it."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys

import torch


def cuobjdump() -> str | None:
    """CUDA's cuobjdump: on the PATH, in the CUDA toolkit, or the copy triton ships."""
    candidates = [
        shutil.which("cuobjdump"),
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"),
    ]
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((tool for tool in candidates if tool and os.path.isfile(tool)), None)


def cuda_targets_in_library(path: str) -> dict[str, set[str]] | None:
    """The CUDA code embedded in the library per kernel file, read with cuobjdump (None where
    there is none): machine code as sm_XY, PTX as compute_XY."""
    tool = cuobjdump()
    if tool is None:
        return None
    listing = "".join(
        subprocess.run([tool, option, path], capture_output=True, text=True).stdout
        for option in ("--list-elf", "--list-ptx")
    )
    return parse_cuobjdump(listing)


def parse_cuobjdump(listing: str) -> dict[str, set[str]]:
    """``ELF file 1: forward.sm_90.cubin`` / ``PTX file 1: forward.sm_120.ptx`` lines, by file."""
    targets: dict[str, set[str]] = {}
    for name, number, kind in re.findall(r"file\s+\d+: (\S+)\.sm_(\d+[a-z]?)\.(cubin|ptx)", listing):
        targets.setdefault(name, set()).add(f"{'sm' if kind == 'cubin' else 'compute'}_{number}")
    return targets


def by_architecture(targets) -> list[str]:
    return sorted(targets, key=lambda t: (int(re.sub(r"\D", "", t)), t.startswith("compute")))


def cuda_targets_of(arch_list: str) -> list[str]:
    """What TORCH_CUDA_ARCH_LIST asks for, e.g. "8.0;9.0+PTX" -> sm_80, sm_90, compute_90."""
    targets = []
    for arch in filter(None, re.split(r"[;\s]+", arch_list)):
        number = arch.removesuffix("+PTX").replace(".", "")
        targets.append(f"sm_{number}")
        if arch.endswith("+PTX"):
            targets.append(f"compute_{number}")
    return targets


def cpu_model() -> str:
    """The CPU's model name, and its family/model where a hypervisor shortens the name."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in info.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    name = fields.get("model name", platform.machine())
    if "family" in name.lower() or "cpu family" not in fields:
        return name
    return f"{name} (family {fields['cpu family']}, model {fields.get('model', '?')})"


def report() -> str:
    from . import _C, __version__

    ops = torch.ops.focal_loss_ext
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("focal_loss_ext::sigmoid_focal_loss", "CUDA")
    # The emulated flavour's CPU kernels are the CUDA kernels, run on the emulated device; it
    # builds no CPU row loops, so it has no _cpu_isa operator to ask.
    if getattr(_C, "emulated_cuda", 0):
        cpu_kernel = "the CUDA kernels on an emulated device (csrc/emu, FOCAL_LOSS_EXT_EMULATE_CUDA=1 build)"
    else:
        forced = os.environ.get("FOCAL_LOSS_EXT_CPU_ISA")
        cpu_kernel = (
            f"registered, vector code: {ops._cpu_isa()} (supported: {', '.join(ops._cpu_isas_supported())}; "
            + (f"forced by FOCAL_LOSS_EXT_CPU_ISA={forced})" if forced else "set FOCAL_LOSS_EXT_CPU_ISA to force one)")
        )
    lines = [
        f"focal_loss_ext      {__version__} ({_C.__file__})",
        f"python              {platform.python_version()} on {platform.machine()}",
        f"torch               {torch.__version__} (built with CUDA {torch.version.cuda})",
        f"CPU                 {cpu_model()}",
        f"CPU threads         {torch.get_num_threads()} (torch.get_num_threads)",
        f"CPU kernel          {cpu_kernel}",
        f"CUDA kernel built   {'yes' if _C.with_cuda else 'no'}; registered: {'yes' if has_cuda_kernel else 'no'}",
    ]
    if _C.with_cuda:
        in_library = cuda_targets_in_library(_C.__file__)
        if in_library is None:
            listed = "unknown (no cuobjdump)"
        else:
            listed = ", ".join(by_architecture(set().union(*in_library.values()))) or "none"
        lines.append(f"CUDA targets        TORCH_CUDA_ARCH_LIST={_C.cuda_archs}; in the library: {listed}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(
                f"GPU {i}               {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                f"{p.total_memory / 2**30:.0f} GiB"
            )
    else:
        lines.append("GPU                 none visible")
    return "\n".join(lines)


def missing_cuda_targets(arch_list: str, in_library: dict[str, set[str]]) -> list[str]:
    """The targets of arch_list that a kernel file of the library lacks, each with the files."""
    if not in_library:
        return cuda_targets_of(arch_list)
    missing = []
    for target in cuda_targets_of(arch_list):
        lacking = sorted(name for name, targets in in_library.items() if target not in targets)
        if lacking:
            missing.append(f"{target} ({', '.join(lacking)})")
    return missing


def check_cuda_targets() -> str | None:
    """Why the library lacks a CUDA target it was built for, or None when every one is in it."""
    from . import _C

    if not _C.with_cuda:
        return "the library was built without the CUDA kernels"
    in_library = cuda_targets_in_library(_C.__file__)
    if in_library is None:
        return "cannot read the library's CUDA targets: no cuobjdump (CUDA toolkit, or pip install triton)"
    missing = missing_cuda_targets(_C.cuda_archs, in_library)
    if missing:
        return f"TORCH_CUDA_ARCH_LIST={_C.cuda_archs}, but the library lacks {'; '.join(missing)}"
    return None


if __name__ == "__main__":
    print(report())
    if "--check-cuda-targets" in sys.argv[1:]:
        problem = check_cuda_targets()
        if problem:
            sys.exit(f"CUDA targets check failed: {problem}")
        print("CUDA targets check: every target of TORCH_CUDA_ARCH_LIST is in the library")
