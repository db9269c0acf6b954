"""Which compiled library ``focal_loss_ext._C`` is, and whether it can load in this torch.

By default the one built next to this file. ``FOCAL_LOSS_EXT_LIBRARY=/path/to/_C.abi3.so`` loads
another build of the same sources instead (``make test`` uses it to run the suite against the
emulated-CUDA flavour in build/emulated/ without touching the in-place build).

A C++ extension loads only in the torch it was compiled against. setup.py writes that torch's
version next to the library (``_build_info.py``); a different torch is refused here, before the
library is loaded, with both versions and the command that rebuilds it (as torchvision does),
instead of an undefined-symbol error or a crash.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import sys

import torch  # first: it loads libc10 / libtorch, which the library links against

BUILD_INFO = "_build_info.py"
REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."


def recorded_torch_version(folder: str) -> str | None:
    """The torch version that setup.py recorded for the library in ``folder``, if it did."""
    try:
        with open(os.path.join(folder, BUILD_INFO)) as f:
            match = re.search(r'^torch_version = "([^"]+)"$', f.read(), re.MULTILINE)
    except FileNotFoundError:
        return None
    return match.group(1) if match else None


def check_torch_version(library: str, built_with: str | None, installed: str = torch.__version__) -> None:
    """Raises ImportError if ``library`` was built against another torch than the installed one."""
    if built_with is None or built_with == installed:
        return
    raise ImportError(
        f"focal_loss_ext's compiled library {library} was built against torch {built_with}, "
        f"but torch {installed} is installed, and a C++ extension loads only in the torch it was "
        f"compiled against. Rebuild it against the installed torch, from the focal_loss_ext source "
        f"folder:\n    {REBUILD}\n(or install torch {built_with} again)."
    )


def library_in_package() -> str:
    spec = importlib.util.find_spec("focal_loss_ext._C")
    if spec is None:
        raise ImportError(
            f"focal_loss_ext's compiled library (_C) is not in {os.path.dirname(__file__)}: build it with "
            "`pip install --no-build-isolation .` (or `python setup.py build_ext --inplace` in a checkout)"
        )
    return spec.origin


def load() -> None:
    """Checks the library that ``focal_loss_ext._C`` will be, and loads it if it is an override."""
    if "focal_loss_ext._C" in sys.modules:
        return
    override = os.environ.get("FOCAL_LOSS_EXT_LIBRARY")
    if override and not os.path.isfile(override):
        raise ImportError(f"FOCAL_LOSS_EXT_LIBRARY={override!r}: no such file")
    path = override or library_in_package()
    check_torch_version(path, recorded_torch_version(os.path.dirname(path)))
    if override:  # else the import system loads the package's own, as usual
        loader = importlib.machinery.ExtensionFileLoader("focal_loss_ext._C", path)
        spec = importlib.util.spec_from_file_location("focal_loss_ext._C", path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules["focal_loss_ext._C"] = module
        spec.loader.exec_module(module)
        sys.modules["focal_loss_ext"]._C = module  # as the import system would


load()
