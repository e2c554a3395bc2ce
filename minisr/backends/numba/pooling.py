"""Max and average pooling, forward and backward."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..numpy_backend import out_size
from .common import _c, _jit


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
