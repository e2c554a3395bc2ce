"""Numba CPU kernels: the same signatures as :mod:`numpy_backend`, as parallel loops (``prange``) compiled
once and cached on disk (``cache=True``). Stride-1 convolutions with >= 8 channels run as "shifted GEMMs" on
the padded input, through the one hand-written kernel (:mod:`shifted_kernel`, LLVM IR through llvmlite); the
others as im2col + NumPy's BLAS, image by image (or band by band) on worker threads, each making its own
columns just before its GEMM (see "conv GEMMs" below). Big arrays come from a workspace cache (see
"workspace"; ``empty_cache()`` releases it). Set ``NUMBA_DISABLE_JIT=1`` to step through a kernel as plain
Python.

Layout and parallelism: every loop nest is parallel over its outermost independent axis (images x channels
for im2col/col2im, flat elements for elementwise kernels), so no two threads write the same element: col2im
gives each thread whole (n, c) planes of dx, so its += needs no atomics.
"""

from __future__ import annotations

import ctypes
import glob
import os
import queue
import sys
import threading

import numba
import numpy as np
from numba import njit, prange

from . import numpy_backend as _reference
from . import shifted_kernel
from . import winograd as _winograd
from .numpy_backend import out_size

# (OMP_WAIT_POLICY=PASSIVE for Numba's OpenMP threads is set when minisr is imported: see
# minisr.backends.prefer_passive_openmp.)

NAME = "numba"

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


# -------------------------------------------------------------------------------------------------- workspace
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
    with _cache_lock:
        _cache_state["tick"] += 1
        hit = next((e for e in _cache if e[0].nbytes == nbytes and _idle(e)), None)
        if hit is None:
            hit = [np.empty(nbytes, np.uint8), 0]
            _cache.append(hit)
        hit[1] = _cache_state["tick"]
        out = hit[0].view(dtype).reshape(shape)
        busy = sum(e[0].nbytes for e in _cache if not _idle(e))
        _cache_state["peak"] = max(_cache_state["peak"], busy)
        idle = sorted((e for e in _cache if _idle(e)), key=lambda e: e[1])
        spare = busy + sum(e[0].nbytes for e in idle) - _cache_state["peak"]
        for e in idle:
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


# ------------------------------------------------------------------------------------------------ im2col / col2im
# One channel plane at a time, for output rows [i0, i1): the batch kernels run these over (n, c) in parallel,
# the conv kernels below over the channels of one image (or one band of its rows) on a worker thread.
# (The bounds tests stay inside the inner loops on purpose: with w known to be >= 0 there, LLVM drops the
# negative-index handling and vectorises the loop; precomputing the valid range of j was measured 5x slower.)
@njit(nogil=True, cache=True)
def _im2col_plane(xc, kh, kw, sh, sw, ph, pw, i0, i1, Wo, cols):
    # cols[u*kw + v, (i - i0)*Wo + j] = xc[i*sh - ph + u, j*sw - pw + v], 0 outside the image
    H, W = xc.shape
    for u in range(kh):
        for v in range(kw):
            row = u * kw + v
            for i in range(i0, i1):
                h = i * sh - ph + u
                base = (i - i0) * Wo
                if h < 0 or h >= H:
                    for j in range(Wo):
                        cols[row, base + j] = 0
                    continue
                for j in range(Wo):
                    w = j * sw - pw + v
                    cols[row, base + j] = xc[h, w] if 0 <= w < W else 0


@njit(nogil=True, cache=True)
def _col2im_plane(cols, kh, kw, sh, sw, ph, pw, i0, i1, Wo, dxc):
    # dxc[h, w] += cols[u*kw + v, (i - i0)*Wo + j] for every i*sh - ph + u = h, j*sw - pw + v = w, i0 <= i < i1
    H, W = dxc.shape
    for u in range(kh):
        for v in range(kw):
            row = u * kw + v
            for i in range(i0, i1):
                h = i * sh - ph + u
                if h < 0 or h >= H:
                    continue
                base = (i - i0) * Wo
                for j in range(Wo):
                    w = j * sw - pw + v
                    if 0 <= w < W:
                        dxc[h, w] += cols[row, base + j]


@njit(**_jit)
def _im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, cols):
    N, C = x.shape[:2]
    kk = kh * kw
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        _im2col_plane(x[n, c], kh, kw, sh, sw, ph, pw, 0, Ho, Wo, cols[n, c * kk:(c + 1) * kk])


def im2col(x, kh, kw, sh, sw, ph, pw):
    _floats("im2col", x)
    N, C, H, W = x.shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    cols = _empty((N, C * kh * kw, Ho * Wo), x.dtype)
    _im2col(_c(x), kh, kw, sh, sw, ph, pw, Ho, Wo, cols)
    return cols


@njit(**_jit)
def _col2im(cols, kh, kw, sh, sw, ph, pw, Ho, Wo, dx):
    # One thread owns one (n, c) plane of dx, so the += never races.
    N, C = dx.shape[:2]
    kk = kh * kw
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        dx[n, c] = 0
        _col2im_plane(cols[n, c * kk:(c + 1) * kk], kh, kw, sh, sw, ph, pw, 0, Ho, Wo, dx[n, c])


def col2im(cols, x_shape, kh, kw, sh, sw, ph, pw):
    _floats("col2im", cols)
    N, C, H, W = x_shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    dx = _empty((N, C, H, W), cols.dtype)
    _col2im(_c(cols).reshape(N, C * kh * kw, Ho * Wo), kh, kw, sh, sw, ph, pw, Ho, Wo, dx)
    return dx


@njit(nogil=True, cache=True)
def _im2col_image(x, kh, kw, sh, sw, ph, pw, i0, i1, Wo, cols):
    kk = kh * kw
    for c in range(x.shape[0]):
        _im2col_plane(x[c], kh, kw, sh, sw, ph, pw, i0, i1, Wo, cols[c * kk:(c + 1) * kk])


@njit(nogil=True, cache=True)
def _col2im_image(cols, kh, kw, sh, sw, ph, pw, i0, i1, Wo, dx):
    kk = kh * kw
    for c in range(dx.shape[0]):
        _col2im_plane(cols[c * kk:(c + 1) * kk], kh, kw, sh, sw, ph, pw, i0, i1, Wo, dx[c])


# ------------------------------------------------------------------------------------------------ conv GEMMs
# The reference makes the columns of the whole batch (60-90 MB for a batch of 16 in the benchmark), then runs
# the GEMMs: every column is written to memory and read back. Here each of T worker threads
# (T = numba.get_num_threads()) takes a contiguous share of "bands" -- one image, or a band of output rows of
# one image when the batch is smaller than T or the image is large -- and for each band makes its columns in a
# buffer of its own (a few MB, still in cache when the GEMM reads it) and multiplies them with a
# single-threaded BLAS. No batch-sized column array exists, forward or backward.
#
# OpenBLAS's thread count is process-wide in the builds NumPy ships (its ``openblas_set_num_threads_local``
# sets it and returns the old value), so it is 1 only while the workers run and restored at once. Without that
# function (another BLAS), or with one thread, the bands run one after the other on the calling thread and
# each GEMM uses the BLAS's own threads.
def _openblas_libs():
    """The OpenBLAS libraries shipped inside NumPy's wheel (Linux, macOS), loaded with ctypes."""
    here = os.path.dirname(np.__file__)
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*"):
        for path in glob.glob(os.path.join(here, pattern)):
            try:
                yield ctypes.CDLL(path)
            except OSError:
                continue


def _find_blas_thread_setter():
    for lib in _openblas_libs():
        fn = getattr(lib, "openblas_set_num_threads_local", None)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            return fn
    return None


_set_blas_threads = _find_blas_thread_setter()
_pool, _pool_pid, _pool_lock = None, None, threading.Lock()
_batch_lock = threading.Lock()
_BAND_BYTES = 4 << 20  # the most one band's columns take (a band is at least one output row)
_buffers: dict = {}  # (thread, name) -> the thread's scratch array, grown on demand


class _Workers:
    """One worker thread per share index t, each bound to its own CPU (as OpenMP's proc_bind does): a thread
    that the scheduler wakes on a busy CPU would otherwise share it for milliseconds (measured: one call in
    three of a 6 ms conv took twice as long)."""

    def __init__(self, n):
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.queues = [queue.SimpleQueue() for _ in range(n)]
        for t, q in enumerate(self.queues):
            cpu = {cpus[t % len(cpus)]} if cpus else None
            threading.Thread(target=self._loop, args=(q, cpu), name=f"minisr-conv-{t}", daemon=True).start()

    @staticmethod
    def _loop(q, cpu):
        if cpu is not None:
            try:
                os.sched_setaffinity(0, cpu)  # (this thread only)
            except OSError:
                pass
        while True:
            fn, call = q.get()
            with call.cond:
                if call.cancelled:  # (the caller was interrupted before this share started: skip it)
                    fn = None
                    continue
                call.running += 1
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 -- handed to the caller
                call.errors.append(e)
            finally:
                fn = None  # (its closure refers to the call's arrays: keep none of them alive while waiting)
                with call.cond:
                    call.running -= 1
                    call.finished += 1
                    call.cond.notify_all()

    def run(self, fns):
        """Run fns[t] on worker t, all at once; returns when all are done (re-raising the first error).

        If the wait is interrupted (Ctrl-C, or any exception), the shares not yet started are cancelled and the
        running ones waited for before the exception goes on: the caller's batch lock is then released only
        when no worker still writes its scratch buffers or the call's output."""
        call = _Call()
        try:
            for q, fn in zip(self.queues, fns):
                q.put((fn, call))
            with call.cond:
                while call.finished < len(fns):
                    call.cond.wait()
        except BaseException:
            call.cancel_and_wait()
            raise
        if call.errors:
            raise call.errors[0]


class _Call:
    """One run() of the workers: how many of its shares are running and finished, and whether it was cancelled."""

    def __init__(self):
        self.cond = threading.Condition()
        self.running = self.finished = 0
        self.cancelled = False
        self.errors = []

    def cancel_and_wait(self):
        while True:
            try:
                with self.cond:
                    self.cancelled = True
                    while self.running:
                        self.cond.wait()
                return
            except BaseException:  # noqa: BLE001 -- (a second Ctrl-C: the running shares are still waited for)
                continue


def _workers():
    """The conv worker threads (made on first use, and again in a forked child, which inherits no threads)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = _Workers(numba.config.NUMBA_NUM_THREADS)
            _pool_pid = os.getpid()
        return _pool


def _threads(blas: bool = True) -> int:
    """Worker threads for a conv: Numba's thread count; for work that calls BLAS, 1 when NumPy's BLAS thread
    count cannot be set (not OpenBLAS): its own threads would then fight ours."""
    return numba.get_num_threads() if (_set_blas_threads is not None or not blas) else 1


def _sum_parts(parts: dict):
    """The sum of the worker threads' partial results {thread: array} (the weight gradients' sum over images)."""
    total = parts.pop(0)
    for p in parts.values():
        total += p
    return total


def _scratch(t, name, shape, dtype):
    """Thread t's scratch array of this shape, reusing (a prefix of) its last buffer of that name."""
    size = int(np.prod(shape))
    buf = _buffers.get((t, name))
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = _buffers[(t, name)] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _bands(N, Ho, row_bytes, whole_images=False):
    """[(n, i0, i1)]: output rows [i0, i1) of image n, at most _BAND_BYTES of columns each, and enough bands
    to keep every thread busy (unless whole_images: then one thread owns all the bands of an image)."""
    T = _threads()
    rows = max(1, min(Ho, _BAND_BYTES // max(row_bytes, 1)))
    if N < T and not whole_images:
        rows = min(rows, -(-Ho // -(-T // N)))
    return [(n, i0, min(i0 + rows, Ho)) for n in range(N) for i0 in range(0, Ho, rows)]


def _run(bands, work, whole_images=False, blas=True):
    """work(t, bands share) on T threads (with single-threaded BLAS when the work calls BLAS); shares are
    contiguous (whole images when whole_images)."""
    T = min(_threads(blas), len(bands))
    if whole_images:
        T = min(T, bands[-1][0] + 1)
    if T < 2:
        with _batch_lock:  # (the scratch buffers of thread 0)
            work(0, bands)
        return
    if whole_images:  # split by image
        N = bands[-1][0] + 1
        cut = [N * t // T for t in range(T + 1)]
        shares = [[b for b in bands if cut[t] <= b[0] < cut[t + 1]] for t in range(T)]
    else:
        cut = [len(bands) * t // T for t in range(T + 1)]
        shares = [bands[cut[t]:cut[t + 1]] for t in range(T)]

    def share(t):
        if blas:
            _set_blas_threads(1)  # (in case a future OpenBLAS makes the setting really thread-local)
        work(t, shares[t])

    with _batch_lock:  # one batch at a time: the BLAS thread count is shared
        before = _set_blas_threads(1) if blas else None
        try:
            _workers().run([lambda t=t: share(t) for t in range(T)])
        finally:
            if blas:
                _set_blas_threads(before)


# Shifted GEMMs (stride 1, enough channels): no columns at all. Number the positions of the zero-padded inputs
# (Hp x Wp each, one after the other) q = n*L + r*Wp + s, L = Hp*Wp, and put output (i, j) of image n at
# q = n*L + i*Wp + j too: its window (u, v) then starts at q + u*Wp + v. So
#     out[:, q] = sum_(u, v) w[:, :, u, v] @ y[:, q + u*Wp + v]         (O x C) @ (C x positions)
# over a whole run of positions -- rows of several images at once -- with y the run's padded input read at
# an offset per tap. Positions with j >= Wo or i >= Ho are junk (windows that wrap into the next row or
# image): the valid outputs are cut out afterwards, and the gradients are 0 there. The sum over taps is one
# call of shifted_kernel.shifted_gemm (register-blocked: each output tile is summed over all taps and channels
# in registers); the input gradient is the same kernel with w transposed and mirrored offsets; the weight
# gradient one dot-product GEMM of g against the shifted rows of y (shifted_kernel.gemm_nt). Each worker
# thread builds a run's padded input (and gradient) in its own scratch (~1 MB, in cache for the kernels) --
# nothing grid-sized is ever allocated. Runs hold at most _RUN_COLS positions.
_SHIFTED_MIN_CHANNELS = 8  # below this the sums over channels are too short to pay
_RUN_COLS = 4096


def _shifted(x, C, sh, sw):
    return (sh == 1 and sw == 1 and C >= _SHIFTED_MIN_CHANNELS and x.dtype in (np.float32, np.float64)
            and shifted_kernel.available())


@njit(nogil=True, cache=True)
def _window(x, top, left, Hp, Wp, q0, out):
    # out[c, k] = grid[c, q0 + k] for the grid position q = n*L + r*Wp + s (L = Hp*Wp) holding
    # x[n, c, r - top, s - left] inside the image and 0 elsewhere (padding, junk, before the first image or
    # past the last): a grid row at a time, its image part copied as one slice per channel
    N, C, H, W = x.shape
    L, length = Hp * Wp, out.shape[1]
    k = 0
    while k < length:
        q = q0 + k
        n, rem = q // L, q % L
        h, s = rem // Wp - top, rem % Wp
        seg = min(Wp - s, length - k)  # to the end of this grid row
        lo, hi = 0, 0  # the part [lo, hi) of the segment inside the image
        if 0 <= n < N and 0 <= h < H:
            lo = min(max(0, left - s), seg)
            hi = max(lo, min(seg, W + left - s))
        for c in range(C):
            out[c, k:k + lo] = 0
            if hi > lo:
                out[c, k + lo:k + hi] = x[n, c, h, s + lo - left:s + hi - left]
            out[c, k + hi:k + seg] = 0
        k += seg


@njit(nogil=True, cache=True)
def _extract_rows(part, r0, r1, Hp, Wp, top, left, out):
    # out[n, c, h, w] = part[c, (r - r0)*Wp + w + left] for the grid rows r = n*Hp + h + top in [r0, r1)
    N, C, H, W = out.shape
    for r in range(r0, r1):
        n, h = r // Hp, r % Hp - top
        if 0 <= h < H:
            base = (r - r0) * Wp + left
            for c in range(C):
                for w in range(W):
                    out[n, c, h, w] = part[c, base + w]


class _Grid:
    """The padded position grid of one shifted conv: image n's padded pixel (r, s) is position
    q = n*L + r*Wp + s, L = Hp*Wp, and so is the output (i, j) whose windows start there."""

    def __init__(self, x_shape, kh, kw, ph, pw):
        self.N, self.C, H, W = x_shape
        self.Hp, self.Wp = H + 2 * ph, W + 2 * pw
        self.Ho, self.Wo = self.Hp - kh + 1, self.Wp - kw + 1
        self.slack = (kh - 1) * self.Wp + kw - 1  # the last shift reads this far past a run
        self.offsets = [u * self.Wp + v for u in range(kh) for v in range(kw)]  # of shift (u, v), row-major

    def row_runs(self):
        """[(r0, r1)]: runs of grid rows (row r = n*Hp + i) of (nearly) equal length, at most _RUN_COLS
        positions, a multiple of the thread count of them (at least two per thread when there are enough rows),
        so that the threads' shares are equal."""
        total, T = self.N * self.Hp, _threads(blas=False)
        runs = max(-(-total // max(1, _RUN_COLS // self.Wp)), 2 * T)
        runs = min(total, -(-runs // T) * T)
        return [(total * k // runs, total * (k + 1) // runs) for k in range(runs)]


def _conv_forward_shifted(x, w2, kh, kw, ph, pw):
    G = _Grid(x.shape, kh, kw, ph, pw)
    O, C = w2.shape[0], G.C
    MB, TILE = shifted_kernel.block_shape(x.dtype)
    taps = shifted_kernel.pack(w2.reshape(O, C, kh * kw).transpose(2, 0, 1), MB)  # w[:, :, u, v] per shift
    offsets = np.array(G.offsets, np.int64)
    out = _empty((G.N, O, G.Ho * G.Wo), x.dtype)
    out4 = out.reshape(G.N, O, G.Ho, G.Wo)

    def work(t, share):
        for r0, r1 in share:  # the run's padded input, its outputs, then the valid ones into out
            q0, tiles = r0 * G.Wp, -(-(r1 - r0) * G.Wp // TILE)
            y = _scratch(t, "y", (C, tiles * TILE + G.slack), x.dtype)
            _window(x, ph, pw, G.Hp, G.Wp, q0, y)
            part = _scratch(t, "out", (O, tiles * TILE), x.dtype)
            shifted_kernel.shifted_gemm(taps, y, offsets, part, tiles)  # part[:, q] = sum_k w_k @ y[:, q + offset_k]
            _extract_rows(part, r0, r1, G.Hp, G.Wp, 0, 0, out4)

    _run(G.row_runs(), work, blas=False)  # (our kernels: no BLAS calls)
    return out


def _conv_weight_grad_shifted(g, x, kh, kw, ph, pw):
    # dw[o, c, u, v] = sum_q g[o, q] * y[c, q + offset(u, v)] over the grid positions q of every run: per run
    # ONE dot-product GEMM, g on the grid (O x positions) against the C * kh * kw rows of y starting at
    # c * (row length) + offset(u, v) -- which come out in w's own (O, C, kh, kw) order.
    G = _Grid(x.shape, kh, kw, ph, pw)
    O, C = g.shape[1], G.C
    VW = shifted_kernel.dot_shape(x.dtype)[2]
    g4 = _c(g).reshape(G.N, O, G.Ho, G.Wo)
    offsets = np.array(G.offsets, np.int64)
    parts = {}

    def work(t, share):
        acc = parts[t] = np.zeros((O, C * kh * kw), x.dtype)
        for r0, r1 in share:
            q0, cnt = r0 * G.Wp, (r1 - r0) * G.Wp
            span = -(-cnt // VW) * VW  # whole vectors: g is 0 past the run
            y = _scratch(t, "y", (C, span + G.slack), x.dtype)
            _window(x, ph, pw, G.Hp, G.Wp, q0, y)
            gr = _scratch(t, "g", (O, span), x.dtype)
            _window(g4, 0, 0, G.Hp, G.Wp, q0, gr)  # g on the grid, 0 at junk positions
            gr[:, cnt:] = 0
            rows = (np.arange(C)[:, None] * y.shape[1] + offsets).reshape(-1)
            shifted_kernel.gemm_nt(gr, y.reshape(-1), rows, acc)

    _run(G.row_runs(), work, blas=False)  # (our kernels: no BLAS calls)
    return _sum_parts(parts)


def _conv_input_grad_shifted(w2, g, x_shape, kh, kw, ph, pw):
    # The forward's adjoint, as a gather: position q of the padded input's gradient collects
    #     dy[:, q] = sum_k w_k^T @ g[:, q - offset_k]
    # so each run of grid rows reads g from `slack` positions before its start (0 before the first image).
    G = _Grid(x_shape, kh, kw, ph, pw)
    O, C = w2.shape[0], G.C
    MB, TILE = shifted_kernel.block_shape(g.dtype)
    taps = shifted_kernel.pack(w2.reshape(O, C, kh * kw).transpose(2, 1, 0), MB)  # w[:, :, u, v]^T per shift
    offsets = np.array([G.slack - off for off in G.offsets], np.int64)
    g4 = _c(g).reshape(G.N, O, G.Ho, G.Wo)
    dx = _empty(x_shape, g.dtype)

    def work(t, share):
        for r0, r1 in share:
            q0, tiles = r0 * G.Wp, -(-(r1 - r0) * G.Wp // TILE)
            gr = _scratch(t, "g", (O, G.slack + tiles * TILE), g.dtype)
            _window(g4, 0, 0, G.Hp, G.Wp, q0 - G.slack, gr)  # g on the grid, 0 at junk positions
            dy = _scratch(t, "dy", (C, tiles * TILE), g.dtype)
            shifted_kernel.shifted_gemm(taps, gr, offsets, dy, tiles)
            _extract_rows(dy, r0, r1, G.Hp, G.Wp, ph, pw, dx)

    _run(G.row_runs(), work, blas=False)  # (our kernels: no BLAS calls)
    return dx


def conv_forward(x, w2, kh, kw, sh, sw, ph, pw):
    _floats("conv_forward", x, w2)
    x, w2 = _c(x), _c(w2)
    N, C, H, W = x.shape
    if _winograd.use(C, w2.shape[0], kh, kw, sh, sw, ph, pw, x.dtype):  # 3x3 stride 1: F(2x2, 3x3)
        return _winograd.conv_forward(x, w2, ph, pw)
    if _shifted(x, C, sh, sw):
        return _conv_forward_shifted(x, w2, kh, kw, ph, pw)
    (O, K), Ho, Wo = w2.shape, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    out = _empty((N, O, Ho * Wo), x.dtype)

    def work(t, share):
        for n, i0, i1 in share:
            cols = _scratch(t, "cols", (K, (i1 - i0) * Wo), x.dtype)
            _im2col_image(x[n], kh, kw, sh, sw, ph, pw, i0, i1, Wo, cols)
            np.matmul(w2, cols, out=out[n, :, i0 * Wo:i1 * Wo])  # (a strided view: BLAS writes it directly)

    _run(_bands(N, Ho, K * Wo * x.itemsize), work)
    return out


def conv_weight_grad(g, x, kh, kw, sh, sw, ph, pw):
    _floats("conv_weight_grad", g, x)
    g, x = _c(g), _c(x)
    N, C, H, W = x.shape
    if _winograd.use(C, g.shape[1], kh, kw, sh, sw, ph, pw, x.dtype, "weight_grad"):
        return _winograd.conv_weight_grad(g, x, ph, pw)
    if _shifted(x, C, sh, sw):
        return _conv_weight_grad_shifted(g, x, kh, kw, ph, pw)
    O, K, Ho, Wo = g.shape[1], C * kh * kw, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    parts = {}

    def work(t, share):
        acc = parts[t] = np.zeros((O, K), g.dtype)
        for n, i0, i1 in share:
            cols = _scratch(t, "cols", (K, (i1 - i0) * Wo), x.dtype)
            _im2col_image(x[n], kh, kw, sh, sw, ph, pw, i0, i1, Wo, cols)
            acc += np.matmul(g[n, :, i0 * Wo:i1 * Wo], cols.T, out=_scratch(t, "dw", (O, K), g.dtype))

    _run(_bands(N, Ho, K * Wo * x.itemsize), work)
    return _sum_parts(parts)


def conv_input_grad(w2, g, x_shape, kh, kw, sh, sw, ph, pw):
    _floats("conv_input_grad", w2, g)
    w2, g = _c(w2), _c(g)
    N, C, H, W = x_shape
    if _winograd.use(C, w2.shape[0], kh, kw, sh, sw, ph, pw, g.dtype, "input_grad"):
        return _winograd.conv_input_grad(w2, g, x_shape, ph, pw)
    if _shifted(g, C, sh, sw):
        return _conv_input_grad_shifted(w2, g, x_shape, kh, kw, ph, pw)
    K, Ho, Wo = w2.shape[1], out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    dx = _empty((N, C, H, W), g.dtype)
    w2t = w2.T

    def work(t, share):
        for n, i0, i1 in share:
            if i0 == 0:
                dx[n] = 0
            dcols = np.matmul(w2t, g[n, :, i0 * Wo:i1 * Wo], out=_scratch(t, "cols", (K, (i1 - i0) * Wo), g.dtype))
            _col2im_image(dcols, kh, kw, sh, sw, ph, pw, i0, i1, Wo, dx[n])

    # The bands of one image add into overlapping rows of dx[n]: one thread does them all, in order.
    _run(_bands(N, Ho, K * Wo * g.itemsize, whole_images=True), work, whole_images=True)
    return dx


# ------------------------------------------------------------------------------------------------------- bias
@njit(**_jit)
def _bias_add(y, b):
    N, O, P = y.shape
    for no in prange(N * O):
        n, o = no // O, no % O
        bo = b[o]
        for p in range(P):
            y[n, o, p] += bo


def bias_add(y, b):
    if not _inplace_ok(y):
        return _reference.bias_add(y, b)
    _bias_add(y.reshape(y.shape[0], y.shape[1], -1), _c(b))
    return y


@njit(fastmath={"reassoc"}, **_jit)  # (reassociation lets LLVM vectorise the sum: ~5x faster)
def _bias_grad(g, db):
    N, O, P = g.shape
    for o in prange(O):
        acc = 0.0
        for n in range(N):
            for p in range(P):
                acc += g[n, o, p]
        db[o] = acc


def bias_grad(g):
    g = _c(g)
    db = np.empty(g.shape[1], dtype=g.dtype)
    _bias_grad(g.reshape(g.shape[0], g.shape[1], -1), db)
    return db


# ------------------------------------------------------------------------------------------------ activations
@njit(**_jit)
def _relu_fwd(x, y):
    for k in prange(x.size):
        y[k] = 0 if x[k] <= 0 else x[k]  # (a NaN passes through, as with np.maximum and torch.relu)


@njit(**_jit)
def _relu_bwd(g, y, dx):
    for k in prange(g.size):
        dx[k] = g[k] if y[k] > 0 else 0


@njit(**_jit)
def _leaky_fwd(x, slope, y):
    for k in prange(x.size):
        y[k] = x[k] if x[k] > 0 else x[k] * slope


@njit(**_jit)
def _leaky_bwd(g, x, slope, dx):
    for k in prange(g.size):
        dx[k] = g[k] if x[k] > 0 else g[k] * slope


def _elementwise(kernel, out_like, *args, out=None):
    if out is None:
        out = _empty(out_like.shape, out_like.dtype)
    kernel(*args, out.reshape(-1))
    return out


def relu_forward(x, out=None):
    if out is not None and not _inplace_ok(x, out):
        return _reference.relu_forward(x, out)
    return _elementwise(_relu_fwd, x, _c(x).reshape(-1), out=out)


def relu_backward(g, y):
    return _elementwise(_relu_bwd, g, _c(g).reshape(-1), _c(y).reshape(-1))


def leaky_relu_forward(x, slope):
    return _elementwise(_leaky_fwd, x, _c(x).reshape(-1), x.dtype.type(slope))


def leaky_relu_backward(g, x, slope):
    return _elementwise(_leaky_bwd, g, _c(g).reshape(-1), _c(x).reshape(-1), g.dtype.type(slope))


# PReLU on x viewed as (N, S, P), S the number of slopes (C, or 1 for one shared slope).
@njit(**_jit)
def _prelu_fwd(x, w, y):
    N, S, P = x.shape
    for ns in prange(N * S):
        n, c = ns // S, ns % S
        a = w[c]
        for p in range(P):
            v = x[n, c, p]
            y[n, c, p] = v if v > 0 else v * a


@njit(**_jit)
def _prelu_bwd(g, x, w, dx, dw_parts):
    # one thread per (n, c) row: dx elementwise, and that row's slope-gradient sum into dw_parts[n, c]
    N, S, P = x.shape
    for ns in prange(N * S):
        n, c = ns // S, ns % S
        a = w[c]
        acc = 0.0
        for p in range(P):
            v, gv = x[n, c, p], g[n, c, p]
            if v > 0:
                dx[n, c, p] = gv
            else:
                dx[n, c, p] = gv * a
                acc += gv * v
        dw_parts[n, c] = acc


def _per_slope(x, w):
    return _c(x).reshape(x.shape[0] if x.ndim >= 2 else 1, w.size, -1)


def prelu_forward(x, w):
    x3 = _per_slope(x, w)
    y = _empty(x3.shape, x.dtype)
    _prelu_fwd(x3, _c(w), y)
    return y.reshape(x.shape)


def prelu_backward(g, x, w):
    x3, g3 = _per_slope(x, w), _per_slope(g, w)
    dx = _empty(x3.shape, g.dtype)
    parts = np.empty(x3.shape[:2], dtype=g.dtype)
    _prelu_bwd(g3, x3, _c(w), dx, parts)
    return dx.reshape(x.shape), parts.sum(axis=0).astype(w.dtype)


@njit(**_jit)
def _tanh_fwd(x, y):
    for k in prange(x.size):
        y[k] = np.tanh(x[k])


@njit(**_jit)
def _tanh_bwd(g, y, dx):
    for k in prange(g.size):
        dx[k] = g[k] * (1 - y[k] * y[k])


@njit(**_jit)
def _sigmoid_fwd(x, y):
    for k in prange(x.size):
        v = x[k]
        if v >= 0:
            y[k] = 1 / (1 + np.exp(-v))
        else:  # exp(v) cannot overflow here
            e = np.exp(v)
            y[k] = e / (1 + e)


@njit(**_jit)
def _sigmoid_bwd(g, y, dx):
    for k in prange(g.size):
        dx[k] = g[k] * y[k] * (1 - y[k])


def tanh_forward(x):
    return _elementwise(_tanh_fwd, x, _c(x).reshape(-1))


def tanh_backward(g, y):
    return _elementwise(_tanh_bwd, g, _c(g).reshape(-1), _c(y).reshape(-1))


def sigmoid_forward(x):
    return _elementwise(_sigmoid_fwd, x, _c(x).reshape(-1))


def sigmoid_backward(g, y):
    return _elementwise(_sigmoid_bwd, g, _c(g).reshape(-1), _c(y).reshape(-1))


# ---------------------------------------------------------------------------------------------- pixel shuffle
@njit(**_jit)
def _shuffle(x, r, y, forward):
    # forward:  y[n, c, h*r + i, w*r + j] = x[n, c*r*r + i*r + j, h, w]
    # backward: x[n, c*r*r + i*r + j, h, w] = y[n, c, h*r + i, w*r + j]   (x is then the gradient written)
    N, C, Hr, Wr = y.shape
    H, W = Hr // r, Wr // r
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(r):
            for j in range(r):
                ch = c * r * r + i * r + j
                for h in range(H):
                    for w in range(W):
                        if forward:
                            y[n, c, h * r + i, w * r + j] = x[n, ch, h, w]
                        else:
                            x[n, ch, h, w] = y[n, c, h * r + i, w * r + j]


def pixel_shuffle_forward(x, r):
    N, Crr, H, W = x.shape
    y = _empty((N, Crr // (r * r), H * r, W * r), x.dtype)
    _shuffle(_c(x), r, y, True)
    return y


def pixel_shuffle_backward(g, r):
    N, C, Hr, Wr = g.shape
    dx = _empty((N, C * r * r, Hr // r, Wr // r), g.dtype)
    _shuffle(dx, r, _c(g), False)
    return dx


# ----------------------------------------------------------------------------------------------------- losses
@njit(**_jit)
def _sq_diff_sum(a, b):
    acc = 0.0
    for k in prange(a.size):
        d = a[k] - b[k]
        acc += d * d
    return acc


@njit(**_jit)
def _abs_diff_sum(a, b):
    acc = 0.0
    for k in prange(a.size):
        acc += abs(a[k] - b[k])
    return acc


@njit(**_jit)
def _diff_scaled(a, b, scale, out):
    for k in prange(a.size):
        out[k] = (a[k] - b[k]) * scale


@njit(**_jit)
def _sign_diff_scaled(a, b, scale, out):
    for k in prange(a.size):
        d = a[k] - b[k]
        out[k] = scale if d > 0 else (-scale if d < 0 else 0)


def mse_forward(a, b):
    return np.asarray(_sq_diff_sum(_c(a).reshape(-1), _c(b).reshape(-1)) / a.size, dtype=a.dtype)


def mse_backward(a, b, g):
    scale = a.dtype.type(2.0 * float(g) / a.size)
    return _elementwise(_diff_scaled, a, _c(a).reshape(-1), _c(b).reshape(-1), scale)


def l1_forward(a, b):
    return np.asarray(_abs_diff_sum(_c(a).reshape(-1), _c(b).reshape(-1)) / a.size, dtype=a.dtype)


def l1_backward(a, b, g):
    scale = a.dtype.type(float(g) / a.size)
    return _elementwise(_sign_diff_scaled, a, _c(a).reshape(-1), _c(b).reshape(-1), scale)


# ------------------------------------------------------------------------------------------------- optimizers
@njit(**_jit)
def _sgd(p, g, buf, lr, momentum, dampening, wd, nesterov, first, use_buf):
    for k in prange(p.size):
        d = g[k] + wd * p[k]
        if use_buf:
            if first:
                buf[k] = d
            else:
                buf[k] = momentum * buf[k] + (1 - dampening) * d
            d = d + momentum * buf[k] if nesterov else buf[k]
        p[k] -= lr * d


def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    if not _inplace_ok(p, buf):
        return _reference.sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)
    t = p.dtype.type
    use_buf = bool(momentum)
    flat_buf = buf.reshape(-1) if use_buf else np.empty(1, dtype=p.dtype)
    _sgd(p.reshape(-1), _c(g).reshape(-1), flat_buf, t(lr), t(momentum), t(dampening), t(weight_decay),
         bool(nesterov), bool(first), use_buf)


@njit(**_jit)
def _adam(p, g, m, v, step_size, b1, b2, eps, sqrt_bc2, wd):
    for k in prange(p.size):
        d = g[k] + wd * p[k]
        m[k] = b1 * m[k] + (1 - b1) * d
        v[k] = b2 * v[k] + (1 - b2) * d * d
        p[k] -= step_size * m[k] / (np.sqrt(v[k]) / sqrt_bc2 + eps)


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    if not _inplace_ok(p, m, v):
        return _reference.adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay)
    t = p.dtype.type
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    _adam(p.reshape(-1), _c(g).reshape(-1), m.reshape(-1), v.reshape(-1), t(lr / bc1), t(beta1), t(beta2),
          t(eps), t(bc2 ** 0.5), t(weight_decay))


# ---------------------------------------------------------------------------------------------------- pooling
# One thread per (n, c) plane (parallel over N*C): a plane's backward scatter (max) or gather (avg) then never
# races with another thread.
@njit(**_jit)
def _maxpool_argmax(x, kh, kw, sh, sw, ph, pw, Ho, Wo, idx):
    N, C, H, W = x.shape
    for p in prange(N * C):
        n, c = p // C, p % C
        for i in range(Ho):
            h0 = i * sh - ph
            for j in range(Wo):
                w0 = j * sw - pw
                best, where = -np.inf, -1
                for u in range(kh):
                    h = h0 + u
                    if h < 0 or h >= H:
                        continue
                    for v in range(kw):
                        w = w0 + v
                        if w < 0 or w >= W:
                            continue
                        val = x[n, c, h, w]
                        if where < 0 or val > best:  # strictly greater: the first maximum stays
                            best, where = val, h * W + w
                idx[n, c, i, j] = where


def maxpool2d_argmax(x, kh, kw, sh, sw, ph, pw):
    N, C, H, W = x.shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    idx = np.empty((N, C, Ho, Wo), dtype=np.int64)
    _maxpool_argmax(_c(x), kh, kw, sh, sw, ph, pw, Ho, Wo, idx)
    return idx


@njit(**_jit)
def _maxpool_bwd(g, idx, dx):
    P, Q = g.shape
    for p in prange(P):
        for q in range(Q):
            dx[p, idx[p, q]] += g[p, q]


def maxpool2d_backward(g, idx, x_shape, kh, kw, sh, sw, ph, pw):
    N, C, H, W = x_shape
    dx = np.zeros((N * C, H * W), dtype=g.dtype)
    _maxpool_bwd(_c(g).reshape(N * C, -1), _c(idx).reshape(N * C, -1), dx)
    return dx.reshape(x_shape)


@njit(nogil=True, cache=True)
def _avg_div(i, j, H, W, kh, kw, sh, sw, ph, pw, count_include_pad):
    if count_include_pad:
        return kh * kw
    h0, w0 = i * sh - ph, j * sw - pw
    return (min(h0 + kh, H) - max(h0, 0)) * (min(w0 + kw, W) - max(w0, 0))


@njit(**_jit)
def _avgpool_fwd(x, kh, kw, sh, sw, ph, pw, inc, y):
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for p in prange(N * C):
        n, c = p // C, p % C
        for i in range(Ho):
            h0 = i * sh - ph
            for j in range(Wo):
                w0 = j * sw - pw
                s = 0.0
                for h in range(max(h0, 0), min(h0 + kh, H)):
                    for w in range(max(w0, 0), min(w0 + kw, W)):
                        s += x[n, c, h, w]
                y[n, c, i, j] = s / _avg_div(i, j, H, W, kh, kw, sh, sw, ph, pw, inc)


@njit(**_jit)
def _avgpool_bwd(g, kh, kw, sh, sw, ph, pw, inc, dx):
    N, C, H, W = dx.shape
    Ho, Wo = g.shape[2], g.shape[3]
    for p in prange(N * C):
        n, c = p // C, p % C
        for h in range(H):
            # windows i with i*sh - ph <= h < i*sh - ph + kh
            i0 = max(0, (h + ph - kh) // sh + 1)
            i1 = min(Ho - 1, (h + ph) // sh)
            for w in range(W):
                j0 = max(0, (w + pw - kw) // sw + 1)
                j1 = min(Wo - 1, (w + pw) // sw)
                s = 0.0
                for i in range(i0, i1 + 1):
                    for j in range(j0, j1 + 1):
                        s += g[n, c, i, j] / _avg_div(i, j, H, W, kh, kw, sh, sw, ph, pw, inc)
                dx[n, c, h, w] = s


def avgpool2d_forward(x, kh, kw, sh, sw, ph, pw, count_include_pad):
    N, C, H, W = x.shape
    y = np.empty((N, C, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)), dtype=x.dtype)
    _avgpool_fwd(_c(x), kh, kw, sh, sw, ph, pw, bool(count_include_pad), y)
    return y


def avgpool2d_backward(g, x_shape, kh, kw, sh, sw, ph, pw, count_include_pad):
    dx = np.empty(x_shape, dtype=g.dtype)
    _avgpool_bwd(_c(g), kh, kw, sh, sw, ph, pw, bool(count_include_pad), dx)
    return dx
# ----------------------------------------------------------------------------------------------------- fork()
# GNU OpenMP (Numba's default threading layer where TBB is not installed) cannot run in a child forked after its
# threads started: Numba then terminates the child ("fork() called from a process already using GNU OpenMP").
# A threading layer is fixed for the life of a process, so a child forked after the parent ran parallel kernels
# on that layer (multiprocessing's default on Linux: data loaders, evaluation pools) runs this backend's kernels
# as the NumPy reference instead, with one warning. For parallel kernels in such children use a fork-safe layer,
# NUMBA_THREADING_LAYER=workqueue (or tbb, with the tbb package), or the "spawn"/"forkserver" start method.
# The child also gets fresh locks (one held by another thread at the fork would never be released there).
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


def _after_fork_in_child() -> None:
    global _cache_lock, _pool_lock, _batch_lock
    _cache_lock, _pool_lock, _batch_lock = threading.Lock(), threading.Lock(), threading.Lock()
    if _gnu_openmp_started():
        from . import KERNELS

        g = globals()
        for name in KERNELS:
            if hasattr(_reference, name):
                g[name] = _reference_kernel(getattr(_reference, name))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
