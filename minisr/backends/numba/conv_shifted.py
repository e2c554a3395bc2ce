"""Convolution as shifted GEMMs (stride 1, enough channels): no columns at all, every tap a GEMM on a shifted
view of the zero-padded input, summed in registers by the one hand-written kernel (:mod:`..shifted_kernel`).

Number the positions of the zero-padded inputs (Hp x Wp each, one after the other) q = n*L + r*Wp + s,
L = Hp*Wp, and put output (i, j) of image n at q = n*L + i*Wp + j too: its window (u, v) then starts at
q + u*Wp + v. So

    out[:, q] = sum_(u, v) w[:, :, u, v] @ y[:, q + u*Wp + v]         (O x C) @ (C x positions)

over a whole run of positions -- rows of several images at once -- with y the run's padded input read at an
offset per tap. Positions with j >= Wo or i >= Ho are junk (windows that wrap into the next row or image): the
valid outputs are cut out afterwards, and the gradients are 0 there. The sum over taps is one call of
shifted_kernel.shifted_gemm (register-blocked: each output tile is summed over all taps and channels in
registers); the input gradient is the same kernel with w transposed and mirrored offsets; the weight gradient one
dot-product GEMM of g against the shifted rows of y (shifted_kernel.gemm_nt). Each worker thread builds a run's
padded input (and gradient) in its own scratch (~1 MB, in cache for the kernels) -- nothing grid-sized is ever
allocated. Runs hold at most _RUN_COLS positions.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import shifted_kernel
from . import threads
from .common import _c
from .threads import _run, _sum_parts
from .workspace import _empty, _scratch

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
        total, T = self.N * self.Hp, threads._threads(blas=False)
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
