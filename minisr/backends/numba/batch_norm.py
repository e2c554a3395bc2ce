"""Batch normalisation on x viewed as (N, C, P): each channel's statistics, the normalisation, and its backward --
two passes over the data each way (the NumPy reference makes ~6 forward and ~8 backward passes, with temporaries).
Sums over a channel are float64 (one loop per channel, in parallel over channels)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import numpy_backend as _reference
from .common import _c, _jit
from .workspace import _empty


@njit(fastmath={"reassoc"}, **_jit)  # (reassociation lets LLVM vectorise the sums)
def _stats(x, mean, var):
    N, C, P = x.shape
    for c in prange(C):
        s = 0.0
        for n in range(N):
            for p in range(P):
                s += x[n, c, p]
        m = s / (N * P)
        q = 0.0
        for n in range(N):
            for p in range(P):
                d = x[n, c, p] - m
                q += d * d
        mean[c], var[c] = m, q / (N * P)


@njit(**_jit)
def _forward(x, mean, invstd, weight, bias, y):
    N, C, P = x.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        m, k, b = mean[c], invstd[c] * weight[c], bias[c]
        for p in range(P):
            y[n, c, p] = (x[n, c, p] - m) * k + b


@njit(fastmath={"reassoc"}, **_jit)
def _sums(g, x, mean, invstd, db, dw):
    # db[c] = sum g, dw[c] = sum g xhat = invstd[c] sum g (x - mean[c])
    N, C, P = x.shape
    for c in prange(C):
        m, a, b = mean[c], 0.0, 0.0
        for n in range(N):
            for p in range(P):
                gv = g[n, c, p]
                a += gv
                b += gv * (x[n, c, p] - m)
        db[c], dw[c] = a, b * invstd[c]


@njit(**_jit)
def _input_grad(g, x, mean, invstd, weight, db, dw, training, dx):
    N, C, P = x.shape
    n_all = N * P
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        k = weight[c] * invstd[c]
        if training:  # dx = k / n (n g - db - xhat dw), xhat = (x - mean) invstd
            m, s, a, b, kn = mean[c], invstd[c], db[c], dw[c], k / n_all
            for p in range(P):
                dx[n, c, p] = kn * (n_all * g[n, c, p] - a - (x[n, c, p] - m) * s * b)
        else:
            for p in range(P):
                dx[n, c, p] = k * g[n, c, p]


def _per_channel(x):
    return _reference._per_channel(_c(x))


def batch_norm_stats(x):
    x3 = _per_channel(x)
    mean, var = np.empty(x3.shape[1], np.float64), np.empty(x3.shape[1], np.float64)
    _stats(x3, mean, var)
    return mean.astype(x.dtype), var.astype(x.dtype)


def batch_norm_forward(x, mean, invstd, weight, bias):
    x3 = _per_channel(x)
    y = _empty(x3.shape, x.dtype)
    _forward(x3, _c(mean), _c(invstd), _c(weight), _c(bias), y)
    return y.reshape(x.shape)


def batch_norm_backward(g, x, mean, invstd, weight, training):
    x3, g3 = _per_channel(x), _per_channel(g)
    C = x3.shape[1]
    db, dw = np.empty(C, np.float64), np.empty(C, np.float64)
    mean, invstd = _c(mean), _c(invstd)
    _sums(g3, x3, mean, invstd, db, dw)
    dx = _empty(g3.shape, g.dtype)
    _input_grad(g3, x3, mean, invstd, _c(weight), db, dw, bool(training), dx)
    return dx.reshape(x.shape), dw.astype(g.dtype), db.astype(g.dtype)
