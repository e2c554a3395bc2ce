"""Convolution as columns + BLAS: im2col / col2im (also kernels of their own), and the conv path for the layers
the shifted GEMMs do not take (strided, few channels, or no LLVM kernel).

The reference makes the columns of the whole batch (60-90 MB for a batch of 16 in the benchmark), then runs the
GEMMs: every column is written to memory and read back. Here each of T worker threads (T =
numba.get_num_threads()) takes a contiguous share of "bands" -- one image, or a band of output rows of one image
when the batch is smaller than T or the image is large -- and for each band makes its columns in a buffer of its
own (a few MB, still in cache when the GEMM reads it) and multiplies them with a single-threaded BLAS. No
batch-sized column array exists, forward or backward.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..numpy_backend import out_size
from . import threads
from .common import _c, _floats, _jit
from .threads import _run, _sum_parts
from .workspace import _empty, _scratch

_BAND_BYTES = 4 << 20  # the most one band's columns take (a band is at least one output row)


# One channel plane at a time, for output rows [i0, i1): the batch kernels run these over (n, c) in parallel,
# the conv kernels below over the channels of one image (or one band of its rows) on a worker thread.
# (A row's valid part, j in [j0, j1), is read from a 1-D view of the input row with a loop from 0, which LLVM
# vectorises: measured 2-2.5x faster than a loop testing every element's bounds for stride 1 (a contiguous run;
# the same loop with the stride a variable: 3x slower), 0.77-1.0x for stride 2.)
@njit(nogil=True, cache=True)
def _im2col_plane(xc, kh, kw, sh, sw, ph, pw, i0, i1, Wo, cols):
    # cols[u*kw + v, (i - i0)*Wo + j] = xc[i*sh - ph + u, j*sw - pw + v], 0 outside the image
    H, W = xc.shape
    if sh == 1 and sw == 1:  # a row's valid part is one contiguous run of x: a copy loop from 0 (2-2.5x faster)
        for u in range(kh):
            for v in range(kw):
                row = u * kw + v
                j0 = min(max(0, pw - v), Wo)  # the first j inside the image (j - pw + v >= 0)
                j1 = max(j0, min(Wo, W + pw - v))  # the first j past it
                for i in range(i0, i1):
                    h = i - ph + u
                    base = (i - i0) * Wo
                    dst = cols[row, base:base + Wo]
                    if h < 0 or h >= H:
                        dst[:] = 0
                        continue
                    dst[:j0] = 0
                    src, d = xc[h, j0 - pw + v:j1 - pw + v], dst[j0:j1]
                    for j in range(j1 - j0):
                        d[j] = src[j]
                    dst[j1:] = 0
        return
    for u in range(kh):  # strided: the same, the run's elements sw apart
        for v in range(kw):
            row = u * kw + v
            j0 = min(max(0, -(-(pw - v) // sw)), Wo)  # the first j inside the image (j*sw - pw + v >= 0)
            j1 = max(j0, min(Wo, -(-(W + pw - v) // sw)))  # the first j past it (j*sw - pw + v >= W)
            for i in range(i0, i1):
                h = i * sh - ph + u
                base = (i - i0) * Wo
                dst = cols[row, base:base + Wo]
                if h < 0 or h >= H:
                    dst[:] = 0
                    continue
                dst[:j0] = 0
                if j1 > j0:  # (1-D views and a loop from 0: LLVM vectorises it, strided loads included)
                    src, d = xc[h, j0 * sw - pw + v:], dst[j0:j1]
                    for j in range(j1 - j0):
                        d[j] = src[j * sw]
                dst[j1:] = 0


@njit(nogil=True, cache=True)
def _col2im_plane(cols, kh, kw, sh, sw, ph, pw, i0, i1, Wo, dxc):
    # dxc[h, w] += cols[u*kw + v, (i - i0)*Wo + j] for every i*sh - ph + u = h, j*sw - pw + v = w, i0 <= i < i1
    H, W = dxc.shape
    for u in range(kh):
        for v in range(kw):
            row = u * kw + v
            j0 = min(max(0, -(-(pw - v) // sw)), Wo)  # the js that land inside the image, as in _im2col_plane
            j1 = max(j0, min(Wo, -(-(W + pw - v) // sw)))
            for i in range(i0, i1):
                h = i * sh - ph + u
                if h < 0 or h >= H or j1 == j0:
                    continue
                base = (i - i0) * Wo
                src, d = cols[row, base + j0:base + j1], dxc[h, j0 * sw - pw + v:]  # (1-D views, a loop from 0)
                for j in range(j1 - j0):
                    d[j * sw] += src[j]


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


def _bands(N, Ho, row_bytes, whole_images=False):
    """[(n, i0, i1)]: output rows [i0, i1) of image n, at most _BAND_BYTES of columns each, and enough bands
    to keep every thread busy (unless whole_images: then one thread owns all the bands of an image)."""
    T = threads._threads()
    rows = max(1, min(Ho, _BAND_BYTES // max(row_bytes, 1)))
    if N < T and not whole_images:
        rows = min(rows, -(-Ho // -(-T // N)))
    return [(n, i0, min(i0 + rows, Ho)) for n in range(N) for i0 in range(0, Ho, rows)]



@njit(nogil=True, cache=True)
def _bias_relu_band(out, b, relu):
    # in place on one band's outputs (O x positions, a strided view): + b[o], then max(., 0) when relu (a NaN
    # passes, as in relu_forward)
    for o in range(out.shape[0]):
        bo = b[o]
        for p in range(out.shape[1]):
            v = out[o, p] + bo
            out[o, p] = 0 if relu and v <= 0 else v


def _conv_forward_cols(x, w2, kh, kw, sh, sw, ph, pw, b=None, relu=False):
    """conv_forward by bands: each band's columns, then one GEMM w2 @ cols into its output rows; with b (O,)
    and/or relu, + b[o] and max(., 0) on the band's outputs while they are in cache (fused)."""
    N, C, H, W = x.shape
    (O, K), Ho, Wo = w2.shape, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    out = _empty((N, O, Ho * Wo), x.dtype)
    epilogue = b is not None or relu
    bias = np.zeros(O, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)

    def work(t, share):
        for n, i0, i1 in share:
            cols = _scratch(t, "cols", (K, (i1 - i0) * Wo), x.dtype)
            _im2col_image(x[n], kh, kw, sh, sw, ph, pw, i0, i1, Wo, cols)
            np.matmul(w2, cols, out=out[n, :, i0 * Wo:i1 * Wo])  # (a strided view: BLAS writes it directly)
            if epilogue:
                _bias_relu_band(out[n, :, i0 * Wo:i1 * Wo], bias, relu)

    _run(_bands(N, Ho, K * Wo * x.itemsize), work)
    return out


def _conv_weight_grad_cols(g, x, kh, kw, sh, sw, ph, pw):
    """conv_weight_grad by bands: dw = sum over bands of g_band @ cols^T (per thread, then summed)."""
    N, C, H, W = x.shape
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


def _conv_input_grad_cols(w2, g, x_shape, kh, kw, sh, sw, ph, pw):
    """conv_input_grad by bands: dcols = w2^T @ g_band, added into dx by col2im."""
    N, C, H, W = x_shape
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
