"""Builds focal_loss_ext._C: the CPU kernel always, the CUDA kernel when nvcc and a CUDA build
of PyTorch are present (a GPU is not needed to build it).

Build settings, read from the environment:
  FOCAL_LOSS_EXT_CUDA     auto (default): build the CUDA kernel when possible; 1: require it; 0: skip it
  FOCAL_LOSS_EXT_DEBUG    1: -O0 -g (and -G for device code); default 0
  FOCAL_LOSS_EXT_EMULATE_CUDA
                          1: the emulated-device flavour, for testing the CUDA kernels without a GPU:
                          csrc/cuda/*.cu compiled as host C++ against csrc/emu and registered as the
                          operators' CPU kernels (instead of csrc/cpu); needs FOCAL_LOSS_EXT_CUDA unset or 0
  FOCAL_LOSS_EXT_SANITIZE 1 (emulated flavour): -fsanitize=address,undefined; load with libasan preloaded
  FOCAL_LOSS_EXT_COVERAGE 1 (emulated flavour): -O0 --coverage, for gcov
  TORCH_CUDA_ARCH_LIST    CUDA targets, e.g. "9.0" or "8.0;9.0". Default: the visible GPUs'
                          architectures (torch's default), or default_cuda_archs() below when no
                          GPU is visible
  MAX_JOBS                parallel compile jobs (ninja)
  NVCC_THREADS            threads per nvcc call, which compile a file's CUDA targets side by side
                          (so the last file to finish does not leave the other cores idle); default 2

PyTorch must be installed first and visible to the build: pip install --no-build-isolation .
"""

import os
import platform
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import setuptools
from setuptools import find_packages, setup

# pip does not install build requirements with --no-build-isolation (which this build needs), so
# say what pyproject.toml's license field needs before an older setuptools fails to parse it.
if int(setuptools.__version__.split(".")[0]) < 77:
    sys.exit(f"focal_loss_ext needs setuptools>=77 to build, found {setuptools.__version__}: pip install -U setuptools")

# torch looks for CUDA via `which nvcc` before /usr/local/cuda; where nvcc is a link on the
# PATH (e.g. /usr/local/bin/nvcc) that finds a folder without CUDA's libraries. Prefer the
# toolkit folder when the user has not named one.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # build isolation, or torch not installed
    sys.exit(
        "focal_loss_ext needs PyTorch at build time, and pip's build isolation hides it.\n"
        "Install torch first, then build against it:\n"
        "    pip install torch\n"
        "    pip install --no-build-isolation ."
    )


def default_cuda_archs(nvcc: str) -> str:
    """The targets when no GPU is visible: machine code for each major architecture that both
    this nvcc and this torch support, plus PTX of the newest for the GPUs that come after it.

    A cubin runs on every GPU of its major version with the same or a higher minor one (sm_80
    code on 8.6 and 8.9, sm_120 on 12.1), so the lowest minor of each major serves them all.
    A major that torch has no kernels for is left out: torch itself would not run there.
    """
    listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    nvcc_archs = {divmod(int(n), 10) for n in re.findall(r"compute_(\d+)", listed)}
    torch_majors = {int(n) // 10 for n in re.findall(r"sm_(\d+)", " ".join(torch.cuda.get_arch_list()))}
    lowest = {}
    for major, minor in sorted(nvcc_archs):
        if major in torch_majors:
            lowest.setdefault(major, minor)
    if not lowest:
        sys.exit(
            f"no CUDA architecture that both {nvcc} and torch {torch.__version__} support: set TORCH_CUDA_ARCH_LIST"
        )
    return ";".join(f"{major}.{minor}" for major, minor in sorted(lowest.items())) + "+PTX"


def visible_gpu_archs() -> str:
    """torch's default with GPUs visible, spelled out so that the library can name its targets:
    each visible GPU's architecture (capped at the newest torch supports), PTX of the newest."""
    newest = max(divmod(int(n), 10) for n in re.findall(r"sm_(\d+)", " ".join(torch.cuda.get_arch_list())))
    archs = {min(torch.cuda.get_device_capability(i), newest) for i in range(torch.cuda.device_count())}
    return ";".join(f"{major}.{minor}" for major, minor in sorted(archs)) + "+PTX"


WITH_CUDA = os.environ.get("FOCAL_LOSS_EXT_CUDA", "auto").lower()
DEBUG = os.environ.get("FOCAL_LOSS_EXT_DEBUG", "0") == "1"
EMULATE = os.environ.get("FOCAL_LOSS_EXT_EMULATE_CUDA", "0") == "1"
SANITIZE = os.environ.get("FOCAL_LOSS_EXT_SANITIZE", "0") == "1"
COVERAGE = os.environ.get("FOCAL_LOSS_EXT_COVERAGE", "0") == "1"
NVCC_THREADS = os.environ.get("NVCC_THREADS", "2")
if WITH_CUDA not in ("auto", "0", "1"):
    sys.exit(f"FOCAL_LOSS_EXT_CUDA must be auto, 0 or 1, got {WITH_CUDA!r}")
if EMULATE and WITH_CUDA == "1":
    sys.exit("FOCAL_LOSS_EXT_EMULATE_CUDA=1 builds the CUDA kernels for the CPU; set FOCAL_LOSS_EXT_CUDA=0 with it")
if (SANITIZE or COVERAGE) and not EMULATE:
    sys.exit("FOCAL_LOSS_EXT_SANITIZE and FOCAL_LOSS_EXT_COVERAGE apply to the emulated flavour only")
if EMULATE:
    WITH_CUDA = "0"
cuda_possible = (
    torch.version.cuda is not None and CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
)
if WITH_CUDA == "1" and not cuda_possible:
    sys.exit(
        f"FOCAL_LOSS_EXT_CUDA=1 but cannot build CUDA code: torch.version.cuda={torch.version.cuda}, "
        f"CUDA_HOME={CUDA_HOME}"
    )
build_cuda = WITH_CUDA == "1" or (WITH_CUDA == "auto" and cuda_possible)
if build_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    os.environ["TORCH_CUDA_ARCH_LIST"] = (
        visible_gpu_archs() if torch.cuda.is_available() else default_cuda_archs(os.path.join(CUDA_HOME, "bin", "nvcc"))
    )
arch_list = os.environ["TORCH_CUDA_ARCH_LIST"] if build_cuda else ""

# torch compiles a py_limited_api extension against the stable ABI of its oldest supported
# CPython (-DPy_LIMITED_API=0x030A0000: 3.10); the wheel's tag says the same, as does
# requires-python in pyproject.toml (tests/test_packaging.py checks that the three agree).
LIMITED_API = f"cp3{int(cpp_extension.min_supported_cpython, 16) >> 16 & 0xFF}"
# The library loads only in the torch it was compiled against (C++ ABI, no stable operator ABI):
# the package depends on that release, and focal_loss_ext/_library.py checks the exact build
# (local tag included, e.g. +cu130) recorded in BUILD_INFO next to the library at import.
TORCH_REQUIREMENT = f"torch=={torch.__version__.split('+')[0]}"
BUILD_INFO = "_build_info.py"

flavour = "emulated CUDA device (csrc/cuda on the CPU), " if EMULATE else ""
print(
    f"focal_loss_ext build: {flavour}torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME={CUDA_HOME}, "
    f"cuda kernel={'yes' if build_cuda else 'no'} (FOCAL_LOSS_EXT_CUDA={WITH_CUDA}), "
    f"TORCH_CUDA_ARCH_LIST={arch_list or '-'}, debug={DEBUG}, MAX_JOBS={os.environ.get('MAX_JOBS', '-')}, "
    f"NVCC_THREADS={NVCC_THREADS}"
)

sources = [
    "csrc/focal_loss.cpp",
    "csrc/autocast.cpp",
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
nvcc_flags = (["-O0", "-g", "-G"] if DEBUG else ["-O3", "-lineinfo"]) + [
    "--expt-relaxed-constexpr",
    f"--threads={NVCC_THREADS}",
]
# FOCAL_LOSS_EXT_X86_ISAS: csrc/cpu/rows.cpp dispatches over the x86 builds of ISA_SOURCES.
define_macros = [("FOCAL_LOSS_EXT_X86_ISAS", None)] if X86 and not EMULATE else []
include_dirs = []
if EMULATE:
    # Each .cu becomes a C++ source that includes the emulator first. They are generated (one
    # per file in csrc/cuda), so a new kernel file needs no edit here.
    generated = os.path.join("build", "emu-src")
    os.makedirs(generated, exist_ok=True)
    sources = [s for s in sources if not s.startswith("csrc/cpu/")] + ["csrc/emu/cuda_emu.cpp", "csrc/emu/selftest.cpp"]
    ISA_SOURCES.clear()  # the CPU row loops are replaced by the CUDA kernels
    for cu in sorted(os.listdir(os.path.join("csrc", "cuda"))):
        if not cu.endswith(".cu"):
            continue
        wrapper = os.path.join(generated, cu[:-3] + ".cpp")
        text = f'// Generated by setup.py.\n#include "cuda_emu.h"\n#include "../../csrc/cuda/{cu}"\n'
        if not os.path.exists(wrapper) or open(wrapper).read() != text:
            with open(wrapper, "w") as f:
                f.write(text)
        sources.append(wrapper)
    # csrc/emu/include first: <cuda_runtime.h> and <c10/cuda/*.h> resolve to the emulator.
    include_dirs = [os.path.abspath("csrc/emu/include"), os.path.abspath("csrc/emu")]
    define_macros += [("FOCAL_LOSS_EXT_EMULATED_CUDA", "1")]
    # CUDA has no strict-aliasing rule for the kernels' 16-byte packs; #pragma unroll is nvcc's.
    cxx_flags += ["-fno-strict-aliasing", "-Wno-unknown-pragmas"]
    if SANITIZE:
        sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        cxx_flags = ["-O1", "-g"] + sanitizers + cxx_flags[1:]
    if COVERAGE:
        cxx_flags = ["-O0", "-g", "--coverage"] + cxx_flags[1:]
link_flags = ["-fopenmp"]
if SANITIZE:
    link_flags += ["-fsanitize=address,undefined"]
if COVERAGE:
    link_flags += ["--coverage"]
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
    plus their own, and are linked in as extra objects. The calls run side by side (MAX_JOBS at
    a time), each in a folder of its own, as torch's ninja build writes one build.ninja per folder.
    """

    def compile_isa_source(self, ext, source, flags):
        return self.compiler.compile(
            [source],
            output_dir=os.path.join(self.build_temp, "isa", os.path.splitext(os.path.basename(source))[0]),
            macros=ext.define_macros,
            include_dirs=ext.include_dirs,
            debug=self.debug,
            extra_postargs={**ext.extra_compile_args, "cxx": ext.extra_compile_args["cxx"] + flags},
            depends=ext.depends,
        )

    def build_extension(self, ext):
        library = self.get_ext_fullpath(ext.name)
        before = os.path.getmtime(library) if os.path.exists(library) else None
        if ext.name == "focal_loss_ext._C":
            # one at a time without ninja: distutils' compiler is not made for threads
            jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1) if self.use_ninja else 1
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                compiled = pool.map(lambda item: self.compile_isa_source(ext, *item), ISA_SOURCES.items())
                objects = [obj for objs in compiled for obj in objs]
            ext.extra_objects = [obj for obj in ext.extra_objects if obj not in objects] + objects
        super().build_extension(ext)
        if ext.name == "focal_loss_ext._C" and (before is None or os.path.getmtime(library) != before):
            with open(os.path.join(os.path.dirname(library), BUILD_INFO), "w") as f:
                f.write("# Generated by setup.py: the torch that the library in this folder was compiled against.\n")
                f.write(f'torch_version = "{torch.__version__}"\n')

    def copy_extensions_to_source(self):
        """--inplace (and editable installs): the build record goes along with the library."""
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
            built = os.path.join(os.path.dirname(regular_file), BUILD_INFO)
            if os.path.exists(built):
                self.copy_file(built, os.path.join(os.path.dirname(inplace_file), BUILD_INFO), level=self.verbose)


setup(
    packages=find_packages(include=["focal_loss_ext", "focal_loss_ext.*"]),
    ext_modules=[
        extension(
            "focal_loss_ext._C",
            sources,
            define_macros=define_macros,
            include_dirs=include_dirs,
            extra_compile_args=extra_compile_args,
            extra_link_args=link_flags,
            py_limited_api=True,
        )
    ],
    cmdclass={"build_ext": BuildExtensionPerFileFlags},
    options={"bdist_wheel": {"py_limited_api": LIMITED_API}},
    install_requires=[TORCH_REQUIREMENT],
)
