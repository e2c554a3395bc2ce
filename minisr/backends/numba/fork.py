"""The Numba backend in a fork()ed child.

GNU OpenMP (Numba's default threading layer where TBB is not installed) cannot run in a child forked after its
threads started: Numba then terminates the child ("fork() called from a process already using GNU OpenMP").
A threading layer is fixed for the life of a process, so a child forked after the parent ran parallel kernels
on that layer (multiprocessing's default on Linux: data loaders, evaluation pools) runs this backend's kernels
as the NumPy reference instead, with one warning. For parallel kernels in such children use a fork-safe layer,
NUMBA_THREADING_LAYER=workqueue (or tbb, with the tbb package), or the "spawn"/"forkserver" start method.
The child also gets fresh locks (one held by another thread at the fork would never be released there).
"""

from __future__ import annotations

import os
import threading

import numba

from .. import numpy_backend as _reference
from . import threads, workspace

_FORK_MESSAGE = ("minisr: this process was forked after Numba's GNU OpenMP threads had started, which cannot run "
                 "in a forked child; the numba backend runs the NumPy reference kernels here. For parallel kernels "
                 "in forked processes set NUMBA_THREADING_LAYER=workqueue (or install tbb), or use the 'spawn' or "
                 "'forkserver' start method")


def _gnu_openmp_started() -> bool:
    try:
        from numba.np.ufunc import parallel

        if not parallel._is_initialized or numba.threading_layer() != "omp":
            return False
        from numba.np.ufunc import omppool

        return getattr(omppool, "openmp_vendor", "GNU") == "GNU"
    except Exception:  # noqa: BLE001 -- (another Numba layout: assume nothing is wrong)
        return False


def _reference_kernel(fn, warned=[]):  # noqa: B006 -- one warning per process
    def kernel(*args, **kwargs):
        if not warned:
            warned.append(True)
            import warnings

            warnings.warn(_FORK_MESSAGE, RuntimeWarning, stacklevel=3)
        return fn(*args, **kwargs)

    kernel.__name__ = kernel.__qualname__ = fn.__name__
    return kernel


def _after_fork_in_child(kernels: dict) -> None:
    workspace._cache_lock = threading.Lock()
    threads._pool_lock, threads._batch_lock = threading.Lock(), threading.Lock()
    if _gnu_openmp_started():
        from .. import KERNELS

        for name in KERNELS:
            if hasattr(_reference, name):
                kernels[name] = _reference_kernel(getattr(_reference, name))


def register(kernels: dict) -> None:
    """After a fork, in the child: fresh locks, and (see above) the reference's kernels put into ``kernels``
    (the backend package's namespace, where minisr.functional finds them)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: _after_fork_in_child(kernels))
