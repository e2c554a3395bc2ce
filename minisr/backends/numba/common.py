"""What the kernel files of the Numba backend share: the compile options of their parallel loops, the three checks
on the arrays they are given, and the call of an elementwise kernel."""

from __future__ import annotations

import numpy as np

from .workspace import _empty

# Parallel loops (``prange``), compiled once and cached on disk, releasing the GIL.
_jit = dict(parallel=True, cache=True, nogil=True)


def _c(a):
    return np.ascontiguousarray(a)


def _floats(op, *arrays):
    """The compiled conv kernels take float32 or float64 arrays, all of one dtype: anything else is refused here
    (found by tests/test_fuzz_kernels.py: float16 failed inside Numba's typing, mixed dtypes were silently cast or
    stopped by the shifted kernel's bounds check with a misleading message)."""
    dts = [a.dtype for a in arrays]
    if dts[0] not in (np.float32, np.float64) or any(d != dts[0] for d in dts):
        raise TypeError(f"numba {op}: needs float32 or float64 arrays of one dtype, got {', '.join(map(str, dts))}")


def _inplace_ok(*arrays):
    """In-place kernels work on flat views; a non-contiguous array would be reshaped into a copy and the
    update lost, so such (rare) arrays go to the NumPy reference instead."""
    return all(a is None or a.flags.c_contiguous for a in arrays)


def _elementwise(kernel, out_like, *args, out=None):
    """kernel(*args, out flat): an elementwise kernel's output, from the workspace unless ``out`` is given."""
    if out is None:
        out = _empty(out_like.shape, out_like.dtype)
    kernel(*args, out.reshape(-1))
    return out
