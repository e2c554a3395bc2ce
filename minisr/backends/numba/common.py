"""What the kernel files of the Numba backend share: the compile options of their parallel loops, the two checks
on the arrays they are given, and the call of an elementwise kernel."""

from __future__ import annotations

import numpy as np

from .workspace import _empty

# Parallel loops (``prange``), compiled once and cached on disk, releasing the GIL.
_jit = dict(parallel=True, cache=True, nogil=True)


def _c(a):
    return np.ascontiguousarray(a)


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
