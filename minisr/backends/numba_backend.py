"""Numba CPU kernels: the same signatures as :mod:`numpy_backend`, as parallel loops (``prange``) compiled once and
cached on disk (``cache=True``). GEMMs go to the same BLAS as NumPy. Set ``NUMBA_DISABLE_JIT=1`` to step through a
kernel as plain Python.

Layout and parallelism: every loop nest is parallel over its outermost independent axis (images x channels for
im2col/col2im, flat elements for elementwise kernels), so no two threads write the same element: col2im is a gather
(each input pixel sums the column entries that copied it), not a scatter, and needs no atomics.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numpy_backend import conv_gemm, conv_gemm_input_grad, conv_gemm_weight_grad, out_size  # BLAS GEMMs, shared

NAME = "numba"
__all__ = ["conv_gemm", "conv_gemm_weight_grad", "conv_gemm_input_grad"]

_jit = dict(parallel=True, cache=True, nogil=True)


def _c(a):
    return np.ascontiguousarray(a)


# --------------------------------------------------------------------------------------------------- im2col / col2im
@njit(**_jit)
def _im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, cols):
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
    cols = np.empty((N, C * kh * kw, Ho * Wo), dtype=x.dtype)
    _im2col(_c(x), kh, kw, sh, sw, ph, pw, Ho, Wo, cols)
    return cols


@njit(**_jit)
def _col2im(cols, kh, kw, sh, sw, ph, pw, Ho, Wo, dx):
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
    dx = np.empty((N, C, H, W), dtype=cols.dtype)
    _col2im(_c(cols).reshape(N, C * kh * kw, Ho * Wo), kh, kw, sh, sw, ph, pw, Ho, Wo, dx)
    return dx


# ---------------------------------------------------------------------------------------------------------- bias
@njit(**_jit)
def _bias_add(y, b):
    N, O, P = y.shape
    for no in prange(N * O):
        n, o = no // O, no % O
        bo = b[o]
        for p in range(P):
            y[n, o, p] += bo


def bias_add(y, b):
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


# ---------------------------------------------------------------------------------------------------- activations
@njit(**_jit)
def _relu_fwd(x, y):
    for k in prange(x.size):
        y[k] = x[k] if x[k] > 0 else 0


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


# --------------------------------------------------------------------------------------------------- pixel shuffle
@njit(**_jit)
def _shuffle(x, r, y, forward):
    # y[n, c, h*r + i, w*r + j] = x[n, c*r*r + i*r + j, h, w]   (forward);   x = that, read the other way (backward)
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


# ---------------------------------------------------------------------------------------------------------- losses
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
    return _elementwise(_diff_scaled, a, _c(a).reshape(-1), _c(b).reshape(-1), a.dtype.type(2.0 * float(g) / a.size))


def l1_forward(a, b):
    return np.asarray(_abs_diff_sum(_c(a).reshape(-1), _c(b).reshape(-1)) / a.size, dtype=a.dtype)


def l1_backward(a, b, g):
    return _elementwise(_sign_diff_scaled, a, _c(a).reshape(-1), _c(b).reshape(-1), a.dtype.type(float(g) / a.size))


# ------------------------------------------------------------------------------------------------------ optimizers
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
    t = p.dtype.type
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    _adam(p.reshape(-1), _c(g).reshape(-1), m.reshape(-1), v.reshape(-1), t(lr / bc1), t(beta1), t(beta2), t(eps),
          t(bc2 ** 0.5), t(weight_decay))
