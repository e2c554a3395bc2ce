"""Numba CPU kernels: the same signatures as :mod:`numpy_backend`, as parallel loops (``prange``) compiled
once and cached on disk (``cache=True``). The GEMMs are NumPy's BLAS, run image by image on worker threads
(see "GEMMs" below), and the big conv arrays come from a workspace cache (see "workspace"; ``empty_cache()``
releases it). Set ``NUMBA_DISABLE_JIT=1`` to step through a kernel as plain Python.

Layout and parallelism: every loop nest is parallel over its outermost independent axis (images x channels
for im2col/col2im, flat elements for elementwise kernels), so no two threads write the same element: col2im
gives each thread whole (n, c) planes of dx, so its += needs no atomics.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, prange

from . import numpy_backend as _reference
from .numpy_backend import out_size

# (OMP_WAIT_POLICY=PASSIVE for Numba's OpenMP threads is set when minisr is imported: see
# minisr.backends.prefer_passive_openmp.)

NAME = "numba"

_jit = dict(parallel=True, cache=True, nogil=True)


def _c(a):
    return np.ascontiguousarray(a)


def _inplace_ok(*arrays):
    """In-place kernels work on flat views; a non-contiguous array would be reshaped into a copy and the
    update lost, so such (rare) arrays go to the NumPy reference instead."""
    return all(a is None or a.flags.c_contiguous for a in arrays)


# -------------------------------------------------------------------------------------------------- workspace
# The conv arrays are big (im2col's columns: 60-90 MB for a batch of 16 in the benchmark) and a fresh
# allocation is slow to fill the first time: every page faults in (~5 ms per 60 MB here, more in a VM), which
# is a third of a GEMM. So the conv kernels take their outputs from a cache of byte buffers. A buffer is handed
# out again only when nothing refers to it any more -- every array made from it (views, reshapes, slices)
# holds a reference to it, so its reference count then shows only the cache's own -- and reuse can never
# overwrite live data. Idle buffers beyond the most ever in use at once (at least 256 MiB) are dropped, least
# recently used first; empty_cache() drops them all.
_MIN_CACHED = 1 << 20
_cache: list = []  # [buffer (uint8 array), last use]
_cache_lock = threading.Lock()
_cache_state = {"tick": 0, "peak": 256 << 20}


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
        spare = sum(e[0].nbytes for e in idle) - _cache_state["peak"]
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
        _cache_state["peak"] = 256 << 20
        return sum(e[0].nbytes for e in idle)


# ------------------------------------------------------------------------------------------------------ GEMMs
# The conv GEMMs are batches of independent products, one per image: conv_gemm out[n] = w2 @ cols[n], and so
# on. NumPy's matmul runs them one after the other, each split over OpenBLAS's threads, which synchronise many
# times inside every product (and stall badly when another process takes a core). Here each of T worker
# threads (T = numba.get_num_threads()) takes a contiguous share of the images and multiplies them with a
# single-threaded BLAS. OpenBLAS's thread count is process-wide in the builds NumPy ships (its
# ``openblas_set_num_threads_local`` sets it and returns the old value), so it is 1 only while the workers run
# and restored at once. Without that function (another BLAS), or for a single image, the products are
# NumPy's matmul, as in the reference.
def _find_blas_thread_setter():
    here = os.path.dirname(np.__file__)
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*"):
        for path in glob.glob(os.path.join(here, pattern)):
            try:
                fn = ctypes.CDLL(path).openblas_set_num_threads_local
            except (OSError, AttributeError):
                continue
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            return fn
    return None


_set_blas_threads = _find_blas_thread_setter()
_pool, _pool_pid, _pool_lock = None, None, threading.Lock()
_batch_lock = threading.Lock()


def _gemm_pool():
    """The worker threads (made on first use, and again in a forked child, which inherits no threads)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(numba.config.NUMBA_NUM_THREADS, thread_name_prefix="minisr-gemm")
            _pool_pid = os.getpid()
        return _pool


def _over_images(N, work):
    """Run work(t, n0, n1) on shares [n0, n1) of range(N), one per thread t; False when not worth it."""
    T = min(numba.get_num_threads(), N)
    if _set_blas_threads is None or T < 2:
        return False
    bounds = [N * t // T for t in range(T + 1)]

    def share(t):
        _set_blas_threads(1)  # (in case a future OpenBLAS makes the setting really thread-local)
        work(t, bounds[t], bounds[t + 1])

    with _batch_lock:  # one batch at a time: the BLAS thread count is shared
        before = _set_blas_threads(1)
        try:
            for f in [_gemm_pool().submit(share, t) for t in range(T)]:
                f.result()
        finally:
            _set_blas_threads(before)
    return True


def conv_gemm(w2, cols):
    out = _empty((cols.shape[0], w2.shape[0], cols.shape[2]), cols.dtype)

    def work(t, n0, n1):
        np.matmul(w2, cols[n0:n1], out=out[n0:n1])

    if not _over_images(cols.shape[0], work):
        np.matmul(w2, cols, out=out)
    return out


def conv_gemm_weight_grad(g, cols):
    parts = [None] * g.shape[0]

    def work(t, n0, n1):
        parts[t] = np.matmul(g[n0:n1], cols[n0:n1].transpose(0, 2, 1)).sum(axis=0)

    if not _over_images(g.shape[0], work):
        return _reference.conv_gemm_weight_grad(g, cols)
    parts = [p for p in parts if p is not None]
    dw = parts[0]
    for p in parts[1:]:
        dw += p
    return dw


def conv_gemm_input_grad(w2, g):
    out = _empty((g.shape[0], w2.shape[1], g.shape[2]), g.dtype)

    def work(t, n0, n1):
        np.matmul(w2.T, g[n0:n1], out=out[n0:n1])

    if not _over_images(g.shape[0], work):
        np.matmul(w2.T, g, out=out)
    return out


# -------------------------------------------------------------------------------------------- im2col / col2im
# (The bounds tests stay inside the inner loops on purpose: with w known to be >= 0 there, LLVM drops the
# negative-index handling and vectorises the loop; precomputing the valid range of j was measured 5x slower.)
@njit(**_jit)
def _im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, cols):
    # cols[n, (c*kh + u)*kw + v, i*Wo + j] = x[n, c, i*sh - ph + u, j*sw - pw + v], 0 outside the image
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for u in range(kh):
            for v in range(kw):
                row = (c * kh + u) * kw + v
                for i in range(Ho):
                    h = i * sh - ph + u
                    base = i * Wo
                    if h < 0 or h >= H:
                        for j in range(Wo):
                            cols[n, row, base + j] = 0
                        continue
                    for j in range(Wo):
                        w = j * sw - pw + v
                        cols[n, row, base + j] = x[n, c, h, w] if 0 <= w < W else 0


def im2col(x, kh, kw, sh, sw, ph, pw):
    N, C, H, W = x.shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    cols = _empty((N, C * kh * kw, Ho * Wo), x.dtype)
    _im2col(_c(x), kh, kw, sh, sw, ph, pw, Ho, Wo, cols)
    return cols


@njit(**_jit)
def _col2im(cols, kh, kw, sh, sw, ph, pw, Ho, Wo, dx):
    # dx[n, c, h, w] = sum of cols[n, (c*kh + u)*kw + v, i*Wo + j] over i*sh - ph + u = h, j*sw - pw + v = w.
    # One thread owns one (n, c) plane of dx, so the += never races.
    N, C, H, W = dx.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0
        for u in range(kh):
            for v in range(kw):
                row = (c * kh + u) * kw + v
                for i in range(Ho):
                    h = i * sh - ph + u
                    if h < 0 or h >= H:
                        continue
                    for j in range(Wo):
                        w = j * sw - pw + v
                        if 0 <= w < W:
                            dx[n, c, h, w] += cols[n, row, i * Wo + j]


def col2im(cols, x_shape, kh, kw, sh, sw, ph, pw):
    N, C, H, W = x_shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    dx = _empty((N, C, H, W), cols.dtype)
    _col2im(_c(cols).reshape(N, C * kh * kw, Ho * Wo), kh, kw, sh, sw, ph, pw, Ho, Wo, dx)
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


@njit(**_jit)
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


def _elementwise(kernel, out_like, *args):
    out = np.empty(out_like.shape, dtype=out_like.dtype)
    kernel(*args, out.reshape(-1))
    return out


def relu_forward(x):
    return _elementwise(_relu_fwd, x, _c(x).reshape(-1))


def relu_backward(g, y):
    return _elementwise(_relu_bwd, g, _c(g).reshape(-1), _c(y).reshape(-1))


def leaky_relu_forward(x, slope):
    return _elementwise(_leaky_fwd, x, _c(x).reshape(-1), x.dtype.type(slope))


def leaky_relu_backward(g, x, slope):
    return _elementwise(_leaky_bwd, g, _c(g).reshape(-1), _c(x).reshape(-1), g.dtype.type(slope))


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
    y = np.empty((N, Crr // (r * r), H * r, W * r), dtype=x.dtype)
    _shuffle(_c(x), r, y, True)
    return y


def pixel_shuffle_backward(g, r):
    N, C, Hr, Wr = g.shape
    dx = np.empty((N, C * r * r, Hr // r, Wr // r), dtype=g.dtype)
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
