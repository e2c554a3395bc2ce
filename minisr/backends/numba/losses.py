"""The losses, MSE and L1: forward as a parallel reduction, backward as one elementwise pass."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import _c, _elementwise, _jit


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
