"""Activations, forward and backward, as flat parallel loops: ReLU, leaky ReLU, PReLU, tanh, sigmoid."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import numpy_backend as _reference
from .common import _c, _elementwise, _inplace_ok, _jit
from .workspace import _empty


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


@njit(fastmath={"reassoc"}, **_jit)  # (reassociation lets LLVM vectorise the slope's sum)
def _prelu_bwd(g, x, w, dx, dw_parts):
    # one thread per (n, c) row: dx elementwise, and that row's slope-gradient sum into dw_parts[n, c]; selects,
    # not branches, and 1-D views: a vectorised loop (with a branch: scalar; measured on 2 threads, 16 x 64 x 96 x 96
    # 6.8 -> 3.9 ms, 16 x 64 x 24 x 24 0.70 -> 0.21)
    N, S, P = x.shape
    for ns in prange(N * S):
        n, c = ns // S, ns % S
        a = w[c]
        xr, gr, dr = x[n, c], g[n, c], dx[n, c]
        acc = 0.0
        for p in range(P):
            v, gv = xr[p], gr[p]
            neg = v <= 0
            dr[p] = gv * a if neg else gv
            acc += gv * v if neg else 0.0
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
def _tanh_fwd(x, y):  # float64 (gradchecks): libm's tanh, one call per element
    for k in prange(x.size):
        y[k] = np.tanh(x[k])


# float32 tanh as a rational function, tanh(x) ~ x P(x^2) / Q(x^2) with P of degree 6 and Q of degree 3 in x^2, on x
# clamped to [-7.9053, 7.9053] (beyond, tanh rounds to +-1 in float32) -- the approximation Eigen's vectorised float
# tanh uses. No libm call: LLVM vectorises the loop (a libm tanhf per element cost 29 ns; ESPCN x3's two tanh took
# more time than its convolutions). Error against float64 tanh, measured on 2 * 10^7 points of [-12, 12] and on
# 10^-30..1: at most 3.9e-7 (6.6 ulp near |y| = 1), |y| <= 1; NaN stays NaN.
_TANH_P = tuple(np.float32(v) for v in (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
                                        5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
                                        -2.76076847742355e-16))
_TANH_Q = tuple(np.float32(v) for v in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
                                        1.19825839466702e-06))
_TANH_CLAMP, _TANH_TINY = np.float32(7.90531110763549805), np.float32(4e-4)


@njit(**_jit)
def _tanh_fwd_f32(x, y):
    p0, p1, p2, p3, p4, p5, p6 = _TANH_P
    q0, q1, q2, q3 = _TANH_Q
    for k in prange(x.size):
        v = x[k]
        c = v if v < _TANH_CLAMP else _TANH_CLAMP
        c = c if c > -_TANH_CLAMP else -_TANH_CLAMP
        c2 = c * c
        p = c * (p0 + c2 * (p1 + c2 * (p2 + c2 * (p3 + c2 * (p4 + c2 * (p5 + c2 * p6))))))
        q = q0 + c2 * (q1 + c2 * (q2 + c2 * q3))
        r = p / q
        r = v if abs(v) < _TANH_TINY else r  # (tanh(x) = x to float32 precision)
        y[k] = r if v == v else v  # NaN in, NaN out (the clamp would have made it 1)


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
    return _elementwise(_tanh_fwd_f32 if x.dtype == np.float32 else _tanh_fwd, x, _c(x).reshape(-1))


def tanh_backward(g, y):
    return _elementwise(_tanh_bwd, g, _c(g).reshape(-1), _c(y).reshape(-1))


def sigmoid_forward(x):
    return _elementwise(_sigmoid_fwd, x, _c(x).reshape(-1))


def sigmoid_backward(g, y):
    return _elementwise(_sigmoid_bwd, g, _c(g).reshape(-1), _c(y).reshape(-1))
