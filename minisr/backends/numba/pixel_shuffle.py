"""Pixel shuffle (depth to space) and its backward (space to depth): one gather, parallel over images and
channels."""

from __future__ import annotations

from numba import njit, prange

from .common import _c, _jit
from .workspace import _empty


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
