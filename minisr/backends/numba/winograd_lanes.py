"""Winograd F(4x4, 3x3) for 3 x 3 stride-1 convolutions -- forward, input gradient, weight gradient -- on the kernels
of :mod:`minisr.backends.winograd_kernel` (the channels in the SIMD lanes; the math is in
:mod:`minisr.backends.winograd_reference`, docs/backprop.md has why it is exact and where float32 loses bits).

    1. the input, zero-padded, as NHWC (channels padded to whole vectors)    xp       (an image per share)
    2. per chunk of ~_CHUNK_TILES tiles, in the worker's own scratch:       (a chunk per share)
           V[xi, k, c] = (B^T d_k B)[xi]                  wino_in
           M[xi, k, :] = V[xi, k, :] @ U[xi]              wino_gemm, U[xi] = (G w G^T)[xi] (C x O), once per call
           out tile k  = A^T M[:, k, o] A + b[o]          wino_out, straight into the NCHW output (ReLU'd if asked)

The input gradient is the forward on the output gradient with the filter flipped and its channels swapped,
padding 2 - p (as for the direct convolution). The weight gradient: V as above, dM = A g_k A^T (wino_gout, with
the bias gradient), dU[xi] += dM[xi]^T V[xi] (wino_gemm accumulating, per thread), dw = G^T dU G. ``backward``
makes the masked output gradient and its padded copy once for both gradients. :mod:`.winograd` says when this
runs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import winograd_kernel as wk
from .. import winograd_reference as _ref
from .activations import relu_backward
from .threads import _run, _sum_parts
from .workspace import _empty, _scratch

_CHUNK_TILES = 96  # tiles per chunk: V and M ~0.9 MB each at 64 channels (measured best of 48 / 96 / 192)


@njit(nogil=True, cache=True)
def _packed_u(w, up):
    """up[xi, g, c, j] = (G w[o, c] G^T)[xi] for o = g * OW + j (up: (36, groups, Cp, OW), zero where c >= C or
    o >= O), in float64 and then rounded once. G = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6],
    [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]]."""
    O, C = w.shape[0], w.shape[1]
    OW = up.shape[3]
    up[:] = 0
    q = np.empty((6, 3))
    for o in range(O):
        g, j = o // OW, o % OW
        for c in range(C):
            for b in range(3):  # q = G w (6 x 3)
                a0, a1, a2 = np.float64(w[o, c, 0, b]), np.float64(w[o, c, 1, b]), np.float64(w[o, c, 2, b])
                q[0, b] = a0 / 4
                q[1, b] = -(a0 + a1 + a2) / 6
                q[2, b] = -(a0 - a1 + a2) / 6
                q[3, b] = a0 / 24 + a1 / 12 + a2 / 6
                q[4, b] = a0 / 24 - a1 / 12 + a2 / 6
                q[5, b] = a2
            for a in range(6):  # (G w) G^T
                a0, a1, a2 = q[a, 0], q[a, 1], q[a, 2]
                up[6 * a + 0, g, c, j] = a0 / 4
                up[6 * a + 1, g, c, j] = -(a0 + a1 + a2) / 6
                up[6 * a + 2, g, c, j] = -(a0 - a1 + a2) / 6
                up[6 * a + 3, g, c, j] = a0 / 24 + a1 / 12 + a2 / 6
                up[6 * a + 4, g, c, j] = a0 / 24 - a1 / 12 + a2 / 6
                up[6 * a + 5, g, c, j] = a2


def _pad_nhwc(x, xp, n, r0, r1, ph, pw):
    """Rows r0 .. r1 - 1 of xp[n]: xp[n, ph + h, pw + w, c] = x[n, c, h, w], 0 in the padding. (NumPy's strided
    copy, which releases the GIL: measured 0.8 ms for a VDSR batch on one thread against 1.5 for a Numba loop.)"""
    _, C, H, W = x.shape
    h0, h1 = max(r0, ph), min(r1, ph + H)  # the rows of x
    xp[n, r0:h0] = 0
    xp[n, max(h1, r0):r1] = 0
    if h1 > h0:
        rows = xp[n, h0:h1]
        rows[:, :pw] = 0
        rows[:, pw + W:] = 0
        rows[:, pw:pw + W, C:] = 0
        rows[:, pw:pw + W, :C] = x[n, :, h0 - ph:h1 - ph].transpose(1, 2, 0)


def _ceil(a, b):
    return -(-a // b)


def _chunk_size(P, Cp, Op):
    """Tiles per chunk: ~_CHUNK_TILES at 64 channels, fewer for wider layers (V and M stay ~0.9 MB), a multiple
    of P."""
    return _ceil(max(P, _CHUNK_TILES * 64 // max(Cp, Op)), P) * P


def _chunks(total, P, size):
    """[(t0, count)]: runs of at most size tiles, multiples of P (but the last), two or more when there are
    tiles enough for two threads."""
    n = max(_ceil(total, size), min(2, _ceil(total, P)))
    size = _ceil(_ceil(total, n), P) * P
    return [(t0, min(size, total - t0)) for t0 in range(0, total, size)]


def _padded(x, mask, rows, cols, channels, ph, pw):
    """x (N, C, H, W) (where mask > 0, with a mask: ReLU's backward) as a zero-padded NHWC array (N, rows, cols,
    channels), x at (ph, pw), on the worker threads (an image each, or a single image's two halves)."""
    N = x.shape[0]
    xp = _empty((N, rows, cols, channels), x.dtype)
    if mask is not None:  # (as fast in a VDSR / EDSR step as a masked copy in Numba, measured)
        x = relu_backward(x, mask)

    def pad(t, bands):
        for n, r0, r1 in bands:
            _pad_nhwc(x, xp, n, r0, r1, ph, pw)

    cut = 1 if N >= 2 else 2
    _run([(n, rows * i // cut, rows * (i + 1) // cut) for n in range(N) for i in range(cut)], pad, blas=False)
    return xp


def _tiles(N, nth, ntw):
    """Each tile's image, tile row and tile column (t = (n * nth + tr) * ntw + tc)."""
    t = np.arange(N * nth * ntw)
    return t // (nth * ntw), (t // ntw) % nth, t % ntw


def forward(x, w, bias=None, relu=False, ph=1, pw=1, mask=None, xp=None):
    """out (N, O, Ho, Wo) = conv2d(x, w (O, C, 3, 3), padding (ph, pw)) (+ bias, then ReLU when asked); with a
    mask (x's shape), x is taken as 0 where mask <= 0 (the ReLU backward of the layer that made mask). xp: x
    already padded (``_padded``, at least as many rows and columns as needed), as ``backward`` shares it."""
    dt = x.dtype
    N, C, H, W = x.shape
    O = w.shape[0]
    P, OV, VW = wk.shape(O, dt)
    OW = OV * VW
    G = _ceil(O, OW)
    Op, Cp = G * OW, _ceil(C, VW) * VW
    Ho, Wo = H + 2 * ph - 2, W + 2 * pw - 2
    nth, ntw = _ceil(Ho, 4), _ceil(Wo, 4)
    if xp is None:
        xp = _padded(x, mask, 4 * nth + 2, 4 * ntw + 2, Cp, ph, pw)
    Hp, Wp = xp.shape[1:3]
    up = np.empty((36, G, Cp, OW), dt)
    _packed_u(w, up)
    bp = np.zeros(Op, dt)
    if bias is not None:
        bp[:O] = bias
    n, tr, tc = _tiles(N, nth, ntw)
    in_offs = ((n * Hp + 4 * tr) * Wp + 4 * tc) * Cp
    tiles = np.stack([((n * O) * Ho + 4 * tr) * Wo + 4 * tc, np.minimum(4, Ho - 4 * tr), np.minimum(4, Wo - 4 * tc)],
                     axis=1)
    out = _empty((N, O, Ho, Wo), dt)
    kin, kout, kgemm = wk.in_kernel(dt), wk.out_kernel(dt, relu), wk.gemm_kernel(P, OV, dt)
    it = x.itemsize
    Tp = _chunk_size(P, Cp, Op)

    def work(th, share):
        V = _scratch(th, "wf4_V", (36, Tp, Cp), dt)
        M = _scratch(th, "wf4_M", (36, Tp, Op), dt)
        for t0, cnt in share:
            if cnt % P:
                V[:, cnt:] = 0  # (the last block's rows past the chunk: finite numbers, never read back)
            kin(xp.ctypes.data, 0, V.ctypes.data, in_offs[t0:].ctypes.data, 0, cnt, Cp // VW, Wp * Cp, Cp, Tp * Cp)
            for g in range(G):
                kgemm(up.ctypes.data + g * Cp * OW * it, V.ctypes.data, M.ctypes.data + g * OW * it, 0, 0, Cp, 36,
                      _ceil(cnt, P), G * Cp * OW, Tp * Cp, Tp * Op, OW, Cp, 1, Op)
            kout(M.ctypes.data, bp.ctypes.data, out.ctypes.data, tiles[t0:].ctypes.data, 0, cnt, O, Tp * Op, Op,
                 Ho * Wo, Wo)

    _run(_chunks(N * nth * ntw, P, Tp), work, blas=False)
    return out


def input_grad(w, g, x_shape, ph, pw, y=None, gp=None):
    """dx (N, C, H, W) of out = conv2d(x, w (O, C, 3, 3), padding (ph, pw)), g = dE/d(out) (N, O, Ho, Wo): the
    forward on g with w flipped and transposed, padding 2 - p. With y (out after a ReLU), g where y > 0; gp: g
    already padded (as ``backward`` shares it)."""
    wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    dx = forward(g, wf, None, False, 2 - ph, 2 - pw, y, gp)
    assert dx.shape == tuple(x_shape)
    return dx


@njit(nogil=True, cache=True)
def _dw_from_du(du, k, dw):
    """dw[o, c, a, b] = (G^T dU[:, o, c] G)[a, b] = sum_(x, y) k[3 a + b, 6 x + y] dU[6 x + y, o, c], with
    k[3 a + b, 6 x + y] = G[x, a] G[y, b], summed in float64 (a loop over (o, c) that LLVM vectorises; NumPy's
    matmul here called OpenBLAS, whose spinning threads then slowed the next kernels of a training step)."""
    O, C = dw.shape[0], dw.shape[1]
    acc = np.empty(C)
    for o in range(O):
        for ab in range(9):
            acc[:] = 0.0
            for xy in range(36):
                kk = k[ab, xy]
                for c in range(C):
                    acc[c] += kk * du[xy, o, c]
            for c in range(C):
                dw[o, c, ab // 3, ab % 3] = acc[c]


def weight_grad(g, x, ph, pw, y=None, need_db=False, gp=None, at=(0, 0)):
    """(dw (O, C, 3, 3), db (O,) or None) of out = conv2d(x, w, padding (ph, pw)) (+ b), g = dE/d(out); with y (out
    after a ReLU), g where y > 0. dU[xi] = sum over tiles of dM[xi]^T V[xi], dM = A g_tile A^T (wino_gout, which
    also sums db), V as in the forward, then dw = G^T dU G. gp: g already padded (``_padded``: the masked g at
    row and column ``at``, 0 past its edges up to whole tiles), as ``backward`` shares it."""
    dt = x.dtype
    N, C, H, W = x.shape
    O = g.shape[1]
    VW = wk.shape(O, dt)[2]
    Op, Cp = _ceil(O, VW) * VW, _ceil(C, VW) * VW
    Ho, Wo = g.shape[2], g.shape[3]
    nth, ntw = _ceil(Ho, 4), _ceil(Wo, 4)
    Hp, Wp = 4 * nth + 2, 4 * ntw + 2
    xp = _padded(x, None, Hp, Wp, Cp, ph, pw)
    if gp is None:
        gp = _padded(g, y, 4 * nth, 4 * ntw, Op, 0, 0)
    Hg, Wg = gp.shape[1:3]
    n, tr, tc = _tiles(N, nth, ntw)
    in_offs = ((n * Hp + 4 * tr) * Wp + 4 * tc) * Cp
    g_offs = ((n * Hg + 4 * tr + at[0]) * Wg + 4 * tc + at[1]) * Op
    kin, kgout = wk.in_kernel(dt), wk.gout_kernel(dt)
    groups = wk.dot_groups(Cp, dt)
    it = x.itemsize
    Tp = _chunk_size(1, Cp, Op)
    parts, dbs = {}, {}

    def work(th, share):
        du = parts[th] = np.zeros((36, Op, Cp), dt)
        db = dbs[th] = np.zeros(Op, dt)
        V = _scratch(th, "wf4_V", (36, Tp, Cp), dt)
        dM = _scratch(th, "wf4_M", (36, Tp, Op), dt)
        for t0, cnt in share:
            kin(xp.ctypes.data, 0, V.ctypes.data, in_offs[t0:].ctypes.data, 0, cnt, Cp // VW, Wp * Cp, Cp, Tp * Cp)
            kgout(gp.ctypes.data, db.ctypes.data, dM.ctypes.data, g_offs[t0:].ctypes.data, 0, cnt, Op // VW,
                  Wg * Op, Op, Tp * Op)
            for c0, _, P, kern in groups:  # du[xi, o, c0 ..] += sum_k dM[xi, k, o] V[xi, k, c0 ..]
                kern(V.ctypes.data + c0 * it, dM.ctypes.data, du.ctypes.data + c0 * it, 0, 0, cnt, 36, Op // P,
                     Tp * Cp, Tp * Op, Op * Cp, Cp, 1, Op, Cp)

    _run(_chunks(N * nth * ntw, 1, Tp), work, blas=False)
    Gm = _ref.matrices(4, np.float64)[1]
    dw = np.empty((O, C, 3, 3), dt)
    _dw_from_du(_sum_parts(parts), np.einsum("xa,yb->abxy", Gm, Gm).reshape(9, 36), dw)
    return dw, (_sum_parts(dbs)[:O] if need_db else None)


def backward(g, x, w, y, ph, pw, need_db):
    """(dx, dw, db or None) of out = conv2d(x, w, padding (ph, pw)) (+ b), g = dE/d(out), y = out after a ReLU
    or None: the masked g is made and padded once, for both gradients (the input gradient's padding 2 - p,
    with rows and columns enough for the weight gradient's whole tiles)."""
    N, C, H, W = x.shape
    O, Ho, Wo = g.shape[1:]
    VW = wk.shape(O, g.dtype)[2]
    gm = g if y is None else relu_backward(g, y)
    ah, aw = 2 - ph, 2 - pw
    rows = max(4 * _ceil(H, 4) + 2, ah + 4 * _ceil(Ho, 4))
    cols = max(4 * _ceil(W, 4) + 2, aw + 4 * _ceil(Wo, 4))
    gp = _padded(gm, None, rows, cols, _ceil(O, VW) * VW, ah, aw)
    dx = input_grad(w, gm, x.shape, ph, pw, gp=gp)
    dw, db = weight_grad(gm, x, ph, pw, None, need_db, gp, (ah, aw))
    return dx, dw, db

