"""The workspace: where the Numba kernels' arrays come from.

Big outputs (activations, gradients) come from a cache of byte buffers that a training loop reuses step after
step (``_empty``; ``empty_cache()`` releases the idle ones); each worker thread has its own scratch arrays for
the pieces of one conv it works on (``_scratch``), small enough to stay in its cache.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

# ----------------------------------------------------------------------------------------- the output cache
# Activations and conv buffers are big (7-40 MB each for a batch of 16 in the benchmark) and a fresh allocation
# is slow to fill the first time: every page faults in (~5 ms per 60 MB here, more in a VM). So the kernels
# take their big outputs from a cache of byte buffers, which a training loop reuses step after step. A buffer
# is handed out again only when nothing refers to it any more -- every array made from it (views, reshapes,
# slices) holds a reference to it, so its reference count then shows only the cache's own -- and reuse can
# never overwrite live data. The cache holds at most as many bytes, busy and idle together, as were ever busy
# at once (at least _CACHE_FLOOR): beyond that, idle buffers are dropped, least recently used first, so it adds
# next to nothing to the peak memory. empty_cache() drops every idle buffer.
_MIN_CACHED = 1 << 20
_cache: list = []  # [buffer (uint8 array), last use]
_cache_lock = threading.Lock()
_CACHE_FLOOR = 64 << 20
_cache_state = {"tick": 0, "peak": _CACHE_FLOOR}


def _drop(entry) -> None:
    """Remove one cache entry by identity (list.remove would compare the arrays elementwise)."""
    for i, e in enumerate(_cache):
        if e is entry:
            del _cache[i]
            return


def _idle(entry) -> bool:
    return sys.getrefcount(entry[0]) == 2  # the list's reference and the call's argument


def _empty(shape, dtype):
    """np.empty(shape, dtype), from the cache when the array is big."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes < _MIN_CACHED:
        return np.empty(shape, dtype)
    refs = sys.getrefcount
    with _cache_lock:
        _cache_state["tick"] += 1
        # one pass over the cache (a training step calls this hundreds of times with ~100-200 buffers cached):
        # the first idle buffer of this size, the busy bytes, the other idle buffers
        hit, busy, idle = None, 0, []
        for e in _cache:
            if refs(e[0]) != 2:  # (2: the entry's reference and getrefcount's argument; see _idle)
                busy += e[0].nbytes
            elif hit is None and e[0].nbytes == nbytes:
                hit = e
            else:
                idle.append(e)
        if hit is None:
            hit = [np.empty(nbytes, np.uint8), 0]
            _cache.append(hit)
        hit[1] = _cache_state["tick"]
        out = hit[0].view(dtype).reshape(shape)
        busy += nbytes
        _cache_state["peak"] = max(_cache_state["peak"], busy)
        spare = busy + sum(e[0].nbytes for e in idle) - _cache_state["peak"]
        if spare > 0:
            for e in sorted(idle, key=lambda e: e[1]):  # least recently used first
                if spare <= 0:
                    break
                _drop(e)
                spare -= e[0].nbytes
        return out


def empty_cache() -> int:
    """Drop the idle workspace buffers; returns the bytes released."""
    with _cache_lock:
        idle = [e for e in _cache if _idle(e)]
        for e in idle:
            _drop(e)
        _cache_state["peak"] = _CACHE_FLOOR
        return sum(e[0].nbytes for e in idle)


# ------------------------------------------------------------------------------------- per-thread scratch arrays
_buffers: dict = {}  # (thread, name) -> the thread's scratch array, grown on demand


def _scratch(t, name, shape, dtype):
    """Thread t's scratch array of this shape, reusing (a prefix of) its last buffer of that name."""
    size = int(np.prod(shape))
    buf = _buffers.get((t, name))
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = _buffers[(t, name)] = np.empty(size, dtype)
    return buf[:size].reshape(shape)
