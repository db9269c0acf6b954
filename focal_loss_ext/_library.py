"""Which compiled library ``focal_loss_ext._C`` is.

By default the one built next to this file. ``FOCAL_LOSS_EXT_LIBRARY=/path/to/_C.abi3.so`` loads
another build of the same sources instead (``make test`` uses it to run the suite against the
emulated-CUDA flavour in build/emulated/ without touching the in-place build).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def load_override() -> None:
    path = os.environ.get("FOCAL_LOSS_EXT_LIBRARY")
    if not path or "focal_loss_ext._C" in sys.modules:
        return
    if not os.path.isfile(path):
        raise ImportError(f"FOCAL_LOSS_EXT_LIBRARY={path!r}: no such file")
    import torch  # noqa: F401  (loads libc10 / libtorch, which the library links against)

    loader = importlib.machinery.ExtensionFileLoader("focal_loss_ext._C", path)
    spec = importlib.util.spec_from_file_location("focal_loss_ext._C", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["focal_loss_ext._C"] = module
    spec.loader.exec_module(module)


load_override()
