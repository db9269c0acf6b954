"""``python -m focal_loss_ext.env``: what this installation was built with and can run."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

import torch


def cuda_archs_in_library(path: str) -> str:
    """The SASS architectures actually embedded in the library, read with cuobjdump if present."""
    tool = shutil.which("cuobjdump")
    if tool is None:
        try:
            import triton  # ships cuobjdump with its NVIDIA backend

            candidate = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
            tool = candidate if os.path.exists(candidate) else None
        except ImportError:
            pass
    if tool is None:
        return "unknown (no cuobjdump)"
    out = subprocess.run([tool, "--list-elf", path], capture_output=True, text=True).stdout
    archs = sorted({part.split(".")[0] for line in out.split() for part in line.split(".") if part.startswith("sm_")})
    return ", ".join(archs) or "none"


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
        in_library = cuda_archs_in_library(_C.__file__)
        lines.append(f"CUDA targets        TORCH_CUDA_ARCH_LIST={_C.cuda_archs}; in the library: {in_library}")
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


if __name__ == "__main__":
    print(report())
