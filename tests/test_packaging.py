"""The package as a stranger gets it: a source distribution that holds every file the build needs,
metadata that says what the library really needs, and a library built against another torch
refused at import with both versions and the command that rebuilds it.

(CI also installs the source distribution in a fresh virtual environment and runs it from outside
the checkout: .ci/run.)"""

import email
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from focal_loss_ext import _C, _library

REPO = Path(__file__).resolve().parents[1]


def import_with_library(library):
    """``import focal_loss_ext`` in a fresh interpreter, with FOCAL_LOSS_EXT_LIBRARY=library."""
    env = {**os.environ, "FOCAL_LOSS_EXT_LIBRARY": str(library)}
    code = "from focal_loss_ext import _C, sigmoid_focal_loss; print(_C.__file__)"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)


def library_copy(tmp_path, recorded_version):
    """The loaded library, linked into a folder of its own whose build record says recorded_version."""
    library = tmp_path / os.path.basename(_C.__file__)
    library.symlink_to(_C.__file__)
    (tmp_path / _library.BUILD_INFO).write_text(f'torch_version = "{recorded_version}"\n')
    return library


def test_the_library_records_the_torch_it_was_built_against():
    recorded = _library.recorded_torch_version(os.path.dirname(_C.__file__))
    assert recorded is not None, f"no {_library.BUILD_INFO} next to {_C.__file__}: rebuild it with this setup.py"
    assert recorded == torch.__version__


def test_another_torch_is_refused_with_both_versions_and_the_fix():
    with pytest.raises(ImportError, match=r"built against torch 2\.0\.0\+cu117, but torch 2\.14\.1 is installed") as e:
        _library.check_torch_version("/x/_C.abi3.so", "2.0.0+cu117", installed="2.14.1")
    assert _library.REBUILD in str(e.value) and "/x/_C.abi3.so" in str(e.value)
    # the local tag is part of the build: a CUDA 13.0 build does not load in a CPU-only torch
    with pytest.raises(ImportError, match=r"torch 2\.14\.1\+cu130, but torch 2\.14\.1\+cpu is installed"):
        _library.check_torch_version("/x/_C.abi3.so", "2.14.1+cu130", installed="2.14.1+cpu")
    _library.check_torch_version("/x/_C.abi3.so", "2.14.1+cu130", installed="2.14.1+cu130")
    _library.check_torch_version("/x/_C.abi3.so", None)  # built before builds were recorded


def test_import_refuses_a_library_recorded_for_another_torch(tmp_path):
    result = import_with_library(library_copy(tmp_path, "2.0.0+cu117"))
    assert result.returncode != 0
    assert "ImportError" in result.stderr, result.stderr
    assert f"built against torch 2.0.0+cu117, but torch {torch.__version__} is installed" in result.stderr
    assert _library.REBUILD in result.stderr


def test_import_loads_a_library_recorded_for_this_torch(tmp_path):
    library = library_copy(tmp_path, torch.__version__)
    result = import_with_library(library)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(library)


def test_a_package_without_its_library_says_how_to_build_it(monkeypatch):
    # Asked of the loader itself: an editable install (make install) answers a fresh
    # interpreter's `import focal_loss_ext` from the checkout whatever copy sits in its folder.
    monkeypatch.setattr(_library.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"compiled library \(_C\) is not in") as error:
        _library.library_in_package()
    assert "pip install --no-build-isolation ." in str(error.value)


def test_python_requirement_is_the_limited_api_the_library_is_built_for():
    from torch.utils.cpp_extension import min_supported_cpython  # what -DPy_LIMITED_API says

    version = int(min_supported_cpython, 16)
    oldest = f"{version >> 24}.{version >> 16 & 0xFF}"
    assert f'requires-python = ">={oldest}"' in (REPO / "pyproject.toml").read_text()


def source_files():
    """The files of a clean checkout (tracked, or new and not ignored)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [name for name in listed if (REPO / name).is_file()]


def test_source_distribution_holds_every_file_the_build_needs(tmp_path):
    files = source_files()
    checkout = tmp_path / "checkout"
    for name in files:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, checkout / name)
    env = {**os.environ, "FOCAL_LOSS_EXT_CUDA": "0"}
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (sdist,) = (tmp_path / "dist").glob("focal_loss_ext-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {name.split("/", 1)[1]: name for name in tar.getnames() if "/" in name}
        metadata = email.message_from_bytes(tar.extractfile(members["PKG-INFO"]).read())

    needed = {name for name in files if name.startswith("csrc/") or name.startswith("focal_loss_ext/")}
    needed |= {"LICENSE", "README.md", "setup.py", "pyproject.toml", "MANIFEST.in"}
    assert {"csrc/cpu/rows_portable.cpp", "csrc/cpu/rows_isa.h", "csrc/emu/cuda_emu.h"} <= needed
    assert sorted(needed - members.keys()) == []
    assert not [name for name in members if name.endswith((".so", ".o", ".pyc")) or _library.BUILD_INFO in name]

    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert "LICENSE" in metadata.get_all("License-File")
    # torch is pinned when the library is built (setup.py), not by the source distribution
    assert "requires-dist" in [field.lower() for field in metadata.get_all("Dynamic", [])]


def test_cuda_targets_check_names_what_a_kernel_file_lacks():
    from focal_loss_ext.env import cuda_targets_of, missing_cuda_targets, parse_cuobjdump

    assert cuda_targets_of("7.5;8.0;9.0;10.0;12.0+PTX") == [
        "sm_75",
        "sm_80",
        "sm_90",
        "sm_100",
        "sm_120",
        "compute_120",
    ]
    listing = """
ELF file    1: scale_grad_kernel.sm_90.cubin
ELF file    2: scale_grad_kernel.sm_120.cubin
ELF file    3: softmax_focal_loss_kernel.sm_90.cubin
PTX file    1: scale_grad_kernel.sm_120.ptx
PTX file    2: softmax_focal_loss_kernel.sm_120.ptx
"""
    in_library = parse_cuobjdump(listing)
    assert in_library == {
        "scale_grad_kernel": {"sm_90", "sm_120", "compute_120"},
        "softmax_focal_loss_kernel": {"sm_90", "compute_120"},
    }
    assert missing_cuda_targets("9.0;12.0+PTX", in_library) == ["sm_120 (softmax_focal_loss_kernel)"]
    assert missing_cuda_targets("9.0", in_library) == []
    assert missing_cuda_targets("9.0+PTX", in_library) == ["compute_90 (scale_grad_kernel, softmax_focal_loss_kernel)"]
    assert missing_cuda_targets("9.0", {}) == ["sm_90"]  # no CUDA code at all
