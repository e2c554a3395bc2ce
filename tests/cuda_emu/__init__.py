"""CUDA on the CPU, for tests: minisr's unchanged ``kernels/*.cu`` and ``minisr/backends/cupy_backend.py`` run
without a GPU.

* ``cuda_emu.h`` + ``runtime.cpp``: the CUDA C++ builtins for g++ and a grid runtime (blocks on a few OS threads,
  the threads of a block as fibers with ``__syncthreads()`` a real barrier between them);
* ``build.py``: compiles a source with g++ (cached per content hash), parses the kernels' C signatures and checks
  every launch's arguments against them;
* ``fakecupy.py``: the CuPy calls minisr makes, on NumPy buffers with guard bytes.

``with emulated(): ...`` makes ``import cupy`` give the stand-in and ``minisr``'s "cuda" device run on it. The
``cuda`` fixture (tests/conftest.py) uses it unless CuPy sees a real GPU; ``MINISR_CUDA_EMULATE=1`` forces the
emulator, ``MINISR_CUDA_EMULATE=0`` forbids it (GPU tests then skip without a GPU).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys

BACKEND = "minisr.backends.cupy_backend"
_state: dict = {}


def real_gpu() -> bool:
    """Whether the real CuPy is installed and sees a GPU (checked once, without the stand-in installed)."""
    if "real" not in _state:
        from minisr.device import import_cupy

        try:
            cp = import_cupy()
            _state["real"] = not getattr(cp, "EMULATED", False)
        except (RuntimeError, ImportError):
            _state["real"] = False
    return _state["real"]


def unavailable() -> str:
    """Why the emulator cannot run here ('' when it can): it needs Linux and a C++ compiler (g++, or $CXX)."""
    if not sys.platform.startswith("linux"):
        return f"the CUDA emulator runs on Linux only (this is {sys.platform})"
    if not shutil.which(os.environ.get("CXX", "g++")):
        return "the CUDA emulator needs g++ (or $CXX) to build the kernels"
    return ""


def mode() -> str:
    """'device' (CuPy and a GPU), 'emulator', or 'none' (no GPU, and MINISR_CUDA_EMULATE=0 or no emulator here)."""
    env = os.environ.get("MINISR_CUDA_EMULATE", "").strip()
    if env == "1":
        return "emulator"
    if real_gpu():
        return "device"
    return "none" if env == "0" or unavailable() else "emulator"


@contextlib.contextmanager
def emulated():
    """``import cupy`` gives the stand-in and minisr's cupy backend runs on it, inside the block only."""
    from minisr import backends

    from . import fakecupy

    saved = {k: sys.modules.get(k) for k in ("cupy", BACKEND)}
    saved_loaded = backends._loaded.get("cupy")
    sys.modules["cupy"] = fakecupy
    if "backend" in _state:
        sys.modules[BACKEND] = _state["backend"]
    else:
        sys.modules.pop(BACKEND, None)
        _state["backend"] = importlib.import_module(BACKEND)
    backends._loaded["cupy"] = _state["backend"]
    try:
        yield _state["backend"]
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        if saved_loaded is None:
            backends._loaded.pop("cupy", None)
        else:
            backends._loaded["cupy"] = saved_loaded
