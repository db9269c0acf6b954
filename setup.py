"""Builds focal_loss_ext._C: the CPU kernel always, the CUDA kernel when nvcc and a CUDA build
of PyTorch are present (a GPU is not needed to build it).

Build settings, read from the environment:
  FOCAL_LOSS_EXT_CUDA     auto (default): build the CUDA kernel when possible; 1: require it; 0: skip it
  FOCAL_LOSS_EXT_DEBUG    1: -O0 -g (and -G for device code); default 0
  TORCH_CUDA_ARCH_LIST    CUDA targets, e.g. "9.0" or "8.0;9.0". Default: the visible GPUs'
                          architectures, or DEFAULT_ARCHS below when no GPU is visible
  MAX_JOBS                parallel compile jobs (ninja)

PyTorch must be installed first and visible to the build: pip install --no-build-isolation .
"""

import os
import platform
import sys

from setuptools import find_packages, setup

# torch looks for CUDA via `which nvcc` before /usr/local/cuda; where nvcc is a link on the
# PATH (e.g. /usr/local/bin/nvcc) that finds a folder without CUDA's libraries. Prefer the
# toolkit folder when the user has not named one.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # build isolation, or torch not installed
    sys.exit(
        "focal_loss_ext needs PyTorch at build time, and pip's build isolation hides it.\n"
        "Install torch first, then build against it:\n"
        "    pip install torch\n"
        "    pip install --no-build-isolation ."
    )

# Used when no GPU is visible: Turing to Hopper as machine code, plus PTX for newer GPUs.
DEFAULT_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"

WITH_CUDA = os.environ.get("FOCAL_LOSS_EXT_CUDA", "auto").lower()
DEBUG = os.environ.get("FOCAL_LOSS_EXT_DEBUG", "0") == "1"
if WITH_CUDA not in ("auto", "0", "1"):
    sys.exit(f"FOCAL_LOSS_EXT_CUDA must be auto, 0 or 1, got {WITH_CUDA!r}")
cuda_possible = (
    torch.version.cuda is not None and CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
)
if WITH_CUDA == "1" and not cuda_possible:
    sys.exit(
        f"FOCAL_LOSS_EXT_CUDA=1 but cannot build CUDA code: torch.version.cuda={torch.version.cuda}, "
        f"CUDA_HOME={CUDA_HOME}"
    )
build_cuda = WITH_CUDA == "1" or (WITH_CUDA == "auto" and cuda_possible)
if build_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs") if build_cuda else ""

print(
    f"focal_loss_ext build: torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME={CUDA_HOME}, "
    f"cuda kernel={'yes' if build_cuda else 'no'} (FOCAL_LOSS_EXT_CUDA={WITH_CUDA}), "
    f"TORCH_CUDA_ARCH_LIST={arch_list or '-'}, debug={DEBUG}, MAX_JOBS={os.environ.get('MAX_JOBS', '-')}"
)

sources = [
    "csrc/focal_loss.cpp",
    "csrc/problem.cpp",
    "csrc/cpu/rows.cpp",
    "csrc/cpu/sigmoid_focal_loss_kernel.cpp",
    "csrc/cpu/softmax_focal_loss_kernel.cpp",
]
# The CPU row loops, one build per instruction set, each with its own flags (the same source,
# csrc/cpu/rows_isa.h, behind three file names so that their objects do not collide).
# CPU_CAPABILITY selects at::vec's implementation and the namespace the build's symbols live in;
# csrc/cpu/rows.cpp picks one build at run time from the CPU's features. -ffp-contract=off: the
# compiler may not fuse a multiply and an add on its own (GCC does by default, differently per
# build), so the AVX2 and AVX-512 builds round every operation alike and give bit-identical
# per-element results; the FMAs the code asks for (at::vec::fmadd) stay.
ISA_SOURCES = {"csrc/cpu/rows_portable.cpp": ["-ffp-contract=off", "-DCPU_CAPABILITY=DEFAULT"]}
X86 = platform.machine().lower() in ("x86_64", "amd64")
if X86:
    ISA_SOURCES["csrc/cpu/rows_avx2.cpp"] = [
        "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2",
    ]  # fmt: skip
    ISA_SOURCES["csrc/cpu/rows_avx512.cpp"] = [
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-ffp-contract=off",
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
    ]  # fmt: skip
opt = ["-O0", "-g"] if DEBUG else ["-O3"]
# -fopenmp: at::parallel_for's OpenMP backend is an inline `#pragma omp parallel` in ATen's
# headers, compiled into *this* library; without the flag the pragma is ignored and the CPU
# kernel runs on one thread whatever torch.set_num_threads says.
cxx_flags = opt + ["-fopenmp", "-fdiagnostics-color=always"]  # the C++ standard is the one torch asks for
nvcc_flags = (["-O0", "-g", "-G"] if DEBUG else ["-O3", "-lineinfo"]) + ["--expt-relaxed-constexpr"]
define_macros = [("FOCAL_LOSS_EXT_X86_ISAS", None)] if X86 else []
if build_cuda:
    sources += [
        "csrc/cuda/sigmoid_focal_loss_kernel.cu",
        "csrc/cuda/softmax_focal_loss_kernel.cu",
        "csrc/cuda/scale_grad_kernel.cu",
    ]
    define_macros += [("FOCAL_LOSS_EXT_WITH_CUDA", None), ("FOCAL_LOSS_EXT_CUDA_ARCHS", f'"{arch_list}"')]
    extension = CUDAExtension
    extra_compile_args = {"cxx": cxx_flags, "nvcc": nvcc_flags}
else:
    extension = CppExtension
    extra_compile_args = {"cxx": cxx_flags}


class BuildExtensionPerFileFlags(BuildExtension):
    """BuildExtension, plus ISA_SOURCES compiled each with its own extra flags.

    setuptools (and torch's ninja build) give one set of flags to all of an extension's sources.
    The ISA sources are instead compiled here, one compile call per flag set through the same
    (ninja) compiler that BuildExtension sets up, so they get every flag the other sources get
    plus their own, and are linked in as extra objects.
    """

    def build_extension(self, ext):
        if ext.name == "focal_loss_ext._C":
            objects = []
            for source, flags in ISA_SOURCES.items():
                objects += self.compiler.compile(
                    [source],
                    output_dir=self.build_temp,
                    macros=ext.define_macros,
                    include_dirs=ext.include_dirs,
                    debug=self.debug,
                    extra_postargs={**ext.extra_compile_args, "cxx": ext.extra_compile_args["cxx"] + flags},
                    depends=ext.depends,
                )
            ext.extra_objects = [obj for obj in ext.extra_objects if obj not in objects] + objects
        super().build_extension(ext)


setup(
    packages=find_packages(include=["focal_loss_ext", "focal_loss_ext.*"]),
    ext_modules=[
        extension(
            "focal_loss_ext._C",
            sources,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ],
    cmdclass={"build_ext": BuildExtensionPerFileFlags},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
