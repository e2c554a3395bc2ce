"""The kernel seam: one set of kernel signatures, one implementation per backend.

Every op in :mod:`minisr.functional` is written once, against a *backend handle* ``be`` returned by
:func:`backend_for`, and calls only the kernels listed in ``KERNELS``. A backend is a module that defines all
of them:

* ``numpy``  -- :mod:`minisr.backends.numpy_backend`, the readable reference (what a student reads);
* ``numba``  -- :mod:`minisr.backends.numba`, the same signatures as parallel Numba loops (CPU
  default);
* ``cupy``   -- the GPU kernels (CUDA C in the top-level ``kernels/``), chosen automatically for CuPy arrays.

The CPU set is chosen with ``MINISR_BACKEND=numpy|numba`` or :func:`set_backend`. To debug a Numba kernel
line by line, run with ``NUMBA_DISABLE_JIT=1``: the same loops then run as plain Python.

Adding a backend
----------------
1. Write ``minisr/backends/<name>_backend.py`` defining every name in ``KERNELS`` with the numpy reference's
   signature (copy the docstrings' contracts; shapes and dtypes must match exactly).
2. Register it in ``_MODULES`` below.
3. Run ``pytest tests/test_backends.py``: it checks every kernel of every importable backend against the
   numpy reference.
"""

from __future__ import annotations

import importlib
import os

import numpy as np

#: The kernels every backend implements (see numpy_backend for the contracts).
KERNELS = (
    "im2col", "col2im", "conv_forward", "conv_weight_grad", "conv_input_grad",
    "bias_add", "bias_grad",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "pixel_shuffle_forward", "pixel_shuffle_backward",
    "mse_forward", "mse_backward", "l1_forward", "l1_backward",
    "sgd_update", "adam_update",
    "maxpool2d_argmax", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
    "prelu_forward", "prelu_backward", "tanh_forward", "tanh_backward", "sigmoid_forward", "sigmoid_backward",
    "conv_fused_forward", "conv_fused_backward",
    "batch_norm_stats", "batch_norm_forward", "batch_norm_backward",
)

_MODULES = {
    "numpy": "minisr.backends.numpy_backend",
    "numba": "minisr.backends.numba",
    "cupy": "minisr.backends.cupy_backend",
}
CPU_BACKENDS = ("numpy", "numba")

_cpu_name = None
_loaded: dict = {}


def prefer_passive_openmp() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless it is set or Numba is told to use a non-OpenMP threading layer.

    Numba's default OpenMP layer lets its worker threads spin-wait after every parallel loop, and those
    spinning threads slow the BLAS GEMM that follows (im2col -> GEMM -> bias_add alternate all the time;
    measured ~30% on a conv2d forward + backward with 2 cores); passive waiting puts them to sleep at once.
    An OpenMP runtime reads this when it is loaded: when Numba first starts its threads -- or, if PyTorch is
    imported, at that import, since Numba then runs on PyTorch's libgomp. So it is done when minisr is
    imported: import minisr before torch, or set OMP_WAIT_POLICY yourself (which also overrides it).
    """
    if os.environ.get("NUMBA_THREADING_LAYER", "default").lower() in ("default", "omp"):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


prefer_passive_openmp()


def available_backends() -> list[str]:
    """Names of the backends that import on this machine (cupy only with cupy and a GPU)."""
    names = []
    for name in _MODULES:
        try:
            get_backend(name)
        except (ImportError, RuntimeError):
            continue
        names.append(name)
    return names


def get_backend(name: str | None = None):
    """The backend module called ``name`` (default: the current CPU backend)."""
    if name is None:
        name = cpu_backend_name()
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_MODULES)}")
    if name not in _loaded:
        _loaded[name] = importlib.import_module(_MODULES[name])
    return _loaded[name]


def cpu_backend_name() -> str:
    global _cpu_name
    if _cpu_name is None:
        env = os.environ.get("MINISR_BACKEND", "numba").strip().lower() or "numba"
        if env not in CPU_BACKENDS:
            raise ValueError(f"MINISR_BACKEND={env!r}: choose one of {list(CPU_BACKENDS)}")
        _cpu_name = env
    return _cpu_name


def set_backend(name: str) -> None:
    """Choose the CPU kernel set, ``"numpy"`` (reference) or ``"numba"`` (fast, default)."""
    global _cpu_name
    if name not in CPU_BACKENDS:
        raise ValueError(f"set_backend({name!r}): the CPU backends are {list(CPU_BACKENDS)}; "
                         "GPU kernels are chosen by moving tensors with .to('cuda')")
    get_backend(name)
    _cpu_name = name


class use_backend:
    """Context manager: ``with use_backend("numpy"): ...`` runs CPU ops on that kernel set, then restores."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.prev = cpu_backend_name()
        set_backend(self.name)
        return get_backend(self.name)

    def __exit__(self, *exc):
        set_backend(self.prev)


def is_cupy_array(a) -> bool:
    return type(a).__module__.startswith("cupy")


def get_array_module(a):
    """``numpy`` or ``cupy``, whichever owns ``a`` (as Chainer's helper of the same name)."""
    if is_cupy_array(a):
        import cupy

        return cupy
    return np


def backend_for(*arrays):
    """The backend whose kernels run on these arrays: cupy for GPU arrays, the current CPU set otherwise."""
    if any(is_cupy_array(a) for a in arrays):
        return get_backend("cupy")
    return get_backend()
