"""Winograd F(4x4, 3x3) and F(2x2, 5x5) for 3 x 3 and 5 x 5 stride-1 convolutions -- forward, input gradient,
weight gradient -- on the kernels of :mod:`minisr.backends.winograd_kernel` (the channels in the SIMD lanes; the
math is in :mod:`minisr.backends.winograd_reference`, docs/backprop.md has why it is exact and where float32 loses
bits). Both take 6 x 6 patches of the input (m + r - 1 = 6 for an r x r filter and m x m output blocks):

    per group of images (their copies ~_GROUP_BYTES together):
        1. the group, zero-padded, as NHWC (channels padded to whole vectors)    xp   (an image per share)
        2. per chunk of ~_CHUNK_TILES tiles, in the worker's own scratch:       (a chunk per share)
               V[xi, k, c] = (B^T d_k B)[xi]              wino_in
               M[xi, k, :] = V[xi, k, :] @ U[xi]          wino_gemm, U[xi] = (G w G^T)[xi] (C x O), once per call
               out tile k  = A^T M[:, k, o] A + b[o]      wino_out, straight into the NCHW output (ReLU'd if asked)

The input gradient is the forward on the output gradient with the filter flipped and its channels swapped,
padding r - 1 - p (as for the direct convolution). The weight gradient: V as above, dM = A g_k A^T (wino_gout,
with the bias gradient; g's group copied as x's), dU[xi] += dM[xi]^T V[xi] (wino_gemm accumulating, per
thread), dw = G^T dU G. :mod:`.winograd` says when this runs.
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
# the NHWC copies of a pass: a batch whose copies take more than this is copied and run a group of images at a time
# (SRCNN's layer 2: 22 MB, whose copies took its step's peak memory from 0.8 to 1.3x PyTorch's); VDSR's and EDSR's
# batches (9-12 MB) stay one group, whose backward copies the output gradient once for both gradients
_GROUP_BYTES = 12 << 20


_M = {3: 4, 5: 2}  # the output block m x m of an r x r filter (m + r - 1 = 6)


def _matrix_g(r):
    """G (6 x r) of F(m x m, r x r), float64."""
    return _ref.matrices(_M[r], np.float64, r)[1]


@njit(nogil=True, cache=True)
def _packed_u(w, Gm, up):
    """up[xi, g, c, j] = (G w[o, c] G^T)[xi] for o = g * OW + j (up: (36, groups, Cp, OW), zero where c >= C or
    o >= O), in float64 and then rounded once; Gm the 6 x r G in float64."""
    O, C, r = w.shape[0], w.shape[1], w.shape[2]
    OW = up.shape[3]
    up[:] = 0
    q = np.empty((6, r))
    for o in range(O):
        g, j = o // OW, o % OW
        for c in range(C):
            for a in range(6):  # q = G w (6 x r)
                for b in range(r):
                    t = 0.0
                    for i in range(r):
                        t += Gm[a, i] * np.float64(w[o, c, i, b])
                    q[a, b] = t
            for a in range(6):  # (G w) G^T
                for e in range(6):
                    t = 0.0
                    for i in range(r):
                        t += q[a, i] * Gm[e, i]
                    up[6 * a + e, g, c, j] = t


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
    """[(t0, count)]: runs of at most size tiles, multiples of P (but the last), an even number of them when there
    are tiles enough for two (so that two threads get equal shares)."""
    n = _ceil(total, size)
    n = min(n + n % 2, _ceil(total, P))
    size = _ceil(_ceil(total, n), P) * P
    return [(t0, min(size, total - t0)) for t0 in range(0, total, size)]


def _groups(N, image_bytes):
    """[(n0, n1)]: the batch in groups of images whose padded NHWC copies take about _GROUP_BYTES together (at
    least one image each, equal groups), copied and run one after the other."""
    per = max(1, _GROUP_BYTES // max(image_bytes, 1))
    per = _ceil(N, _ceil(N, per))
    return [(n0, min(n0 + per, N)) for n0 in range(0, N, per)]


def _padded(x, mask, rows, cols, channels, ph, pw):
    """x (N, C, H, W) (where mask > 0, with a mask: ReLU's backward) as a zero-padded NHWC array (N, rows, cols,
    channels), x at (ph, pw), on the worker threads (an image each, or a single image's two halves). (np.empty,
    not the workspace cache: its many sizes made the cache drop and remake buffers every step, and the heap
    grew by ~35 MB in an SRCNN step.)"""
    N = x.shape[0]
    xp = np.empty((N, rows, cols, channels), x.dtype)
    if mask is not None:  # (as fast in a VDSR / EDSR step as a masked copy in Numba, measured)
        x = relu_backward(x, mask)

    def pad(t, bands):
        for n, r0, r1 in bands:
            _pad_nhwc(x, xp, n, r0, r1, ph, pw)

    cut = 1 if N >= 2 else 2
    _run([(n, rows * i // cut, rows * (i + 1) // cut) for n in range(N) for i in range(cut)], pad, blas=False)
    return xp


def _planes(th, name, count, dtype):
    """Thread th's scratch (36, ld) for 36 planes of count numbers each (V, M or dM of a chunk), ld >= count an odd
    number of 64-byte lines: the 36 numbers of a tile (one per plane) then fall in different sets of the L1 cache.
    (With ld = count, a multiple of 4 KB for 96 tiles of 64 or 32 channels, all 36 fell in one 8-way set and the
    transforms ran 3x slower: bench/RESULTS.md, "F(2x2, 5x5)".)"""
    it = np.dtype(dtype).itemsize
    lines = _ceil(count * it, 64)
    ld = (lines + 1 - lines % 2) * 64 // it
    return _scratch(th, name, (36, ld), dtype), ld


def _tiles(N, nth, ntw):
    """Each tile's image, tile row and tile column (t = (n * nth + tr) * ntw + tc)."""
    t = np.arange(N * nth * ntw)
    return t // (nth * ntw), (t // ntw) % nth, t % ntw


def forward(x, w, bias=None, relu=False, ph=1, pw=1, mask=None, xp=None, out=None):
    """out (N, O, Ho, Wo) = conv2d(x, w (O, C, r, r), padding (ph, pw)) (+ bias, then ReLU when asked); with a
    mask (x's shape), x is taken as 0 where mask <= 0 (the ReLU backward of the layer that made mask). xp: the
    whole batch already padded (``_padded``, at least as many rows and columns as needed), as ``backward``
    shares it; out: where to write (C-contiguous), else a new array."""
    dt = x.dtype
    N, C, H, W = x.shape
    O, r = w.shape[0], w.shape[2]
    m = _M[r]
    P, OV, VW = wk.shape(O, dt)
    OW = OV * VW
    G = _ceil(O, OW)
    Op, Cp = G * OW, _ceil(C, VW) * VW
    Ho, Wo = H + 2 * ph - r + 1, W + 2 * pw - r + 1
    nth, ntw = _ceil(Ho, m), _ceil(Wo, m)
    Hp, Wp = m * nth + r - 1, m * ntw + r - 1
    up = np.empty((36, G, Cp, OW), dt)
    _packed_u(w, _matrix_g(r), up)
    bp = np.zeros(Op, dt)
    if bias is not None:
        bp[:O] = bias
    if out is None:
        out = _empty((N, O, Ho, Wo), dt)
    assert out.shape == (N, O, Ho, Wo) and out.dtype == dt and out.flags.c_contiguous
    kin, kout, kgemm = wk.in_kernel(dt), wk.out_kernel(dt, relu, m), wk.gemm_kernel(P, OV, dt)
    it = x.itemsize
    Tp = _chunk_size(P, Cp, Op)

    def group(n0, n1, xp=None):  # images n0 .. n1 - 1
        if xp is None:
            xp = _padded(x[n0:n1], None if mask is None else mask[n0:n1], Hp, Wp, Cp, ph, pw)
        Hx, Wx = xp.shape[1:3]
        n, tr, tc = _tiles(n1 - n0, nth, ntw)
        in_offs = ((n * Hx + m * tr) * Wx + m * tc) * Cp
        tiles = np.stack([(((n + n0) * O) * Ho + m * tr) * Wo + m * tc, np.minimum(m, Ho - m * tr),
                          np.minimum(m, Wo - m * tc)], axis=1)

        def work(th, share):
            V, ldv = _planes(th, "wino_V", Tp * Cp, dt)
            M, ldm = _planes(th, "wino_M", Tp * Op, dt)
            for t0, cnt in share:
                if cnt % P:
                    V[:, cnt * Cp:] = 0  # (the last block's rows past the chunk: finite numbers, never read back)
                kin(xp.ctypes.data, 0, V.ctypes.data, in_offs[t0:].ctypes.data, 0, cnt, Cp // VW, Wx * Cp, Cp, ldv)
                for g in range(G):
                    kgemm(up.ctypes.data + g * Cp * OW * it, V.ctypes.data, M.ctypes.data + g * OW * it, 0, 0, Cp,
                          36, _ceil(cnt, P), G * Cp * OW, ldv, ldm, OW, Cp, 1, Op)
                kout(M.ctypes.data, bp.ctypes.data, out.ctypes.data, tiles[t0:].ctypes.data, 0, cnt, O, ldm, Op,
                     Ho * Wo, Wo)

        _run(_chunks(len(n), P, Tp), work, blas=False)

    if xp is not None:
        group(0, N, xp)
    else:
        for n0, n1 in _groups(N, Hp * Wp * Cp * it):
            group(n0, n1)
    return out


def input_grad(w, g, x_shape, ph, pw, y=None, gp=None, out=None):
    """dx (N, C, H, W) of out = conv2d(x, w (O, C, r, r), padding (ph, pw)), g = dE/d(out) (N, O, Ho, Wo): the
    forward on g with w flipped and transposed, padding r - 1 - p. With y (out after a ReLU), g where y > 0; gp:
    g already padded (as ``backward`` shares it); out: where to write dx."""
    r = w.shape[2]
    wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    dx = forward(g, wf, None, False, r - 1 - ph, r - 1 - pw, y, gp, out)
    assert dx.shape == tuple(x_shape)
    return dx


@njit(nogil=True, cache=True)
def _dw_from_du(du, k, dw):
    """dw[o, c, a, b] = (G^T dU[:, o, c] G)[a, b] = sum_(x, y) k[r a + b, 6 x + y] dU[6 x + y, o, c], with
    k[r a + b, 6 x + y] = G[x, a] G[y, b], summed in float64 (a loop over (o, c) that LLVM vectorises; NumPy's
    matmul here called OpenBLAS, whose spinning threads then slowed the next kernels of a training step)."""
    O, C, r = dw.shape[0], dw.shape[1], dw.shape[2]
    acc = np.empty(C)
    for o in range(O):
        for ab in range(r * r):
            acc[:] = 0.0
            for xy in range(36):
                kk = k[ab, xy]
                for c in range(C):
                    acc[c] += kk * du[xy, o, c]
            for c in range(C):
                dw[o, c, ab // r, ab % r] = acc[c]


def weight_grad(g, x, ph, pw, y=None, need_db=False, gp=None, at=(0, 0)):
    """(dw (O, C, r, r), db (O,) or None) of out = conv2d(x, w, padding (ph, pw)) (+ b), g = dE/d(out) (r from
    the shapes); with y (out after a ReLU), g where y > 0. dU[xi] = sum over tiles of dM[xi]^T V[xi], dM = A g_tile
    A^T (wino_gout, which also sums db), V as in the forward, then dw = G^T dU G; group by group of images, as
    the forward (x's and g's copies). gp: the whole batch's g already padded (``_padded``: the masked g at row
    and column ``at``, 0 past its edges up to whole tiles), as ``backward`` shares it."""
    dt = x.dtype
    N, C, H, W = x.shape
    O = g.shape[1]
    VW = wk.shape(O, dt)[2]
    Op, Cp = _ceil(O, VW) * VW, _ceil(C, VW) * VW
    Ho, Wo = g.shape[2], g.shape[3]
    r = H + 2 * ph - Ho + 1
    m = _M[r]
    nth, ntw = _ceil(Ho, m), _ceil(Wo, m)
    Hp, Wp, Hg, Wg = m * nth + r - 1, m * ntw + r - 1, m * nth, m * ntw
    kin, kgout = wk.in_kernel(dt), wk.gout_kernel(dt, m)
    dots = wk.dot_groups(Cp, dt)
    it = x.itemsize
    Tp = _chunk_size(1, Cp, Op)
    parts, dbs = {}, {}  # per thread, summed over the groups

    def group(n0, n1, gp=None, at=(0, 0)):  # images n0 .. n1 - 1
        xp = _padded(x[n0:n1], None, Hp, Wp, Cp, ph, pw)
        if gp is None:
            gp = _padded(g[n0:n1], None if y is None else y[n0:n1], Hg, Wg, Op, 0, 0)
        Hq, Wq = gp.shape[1:3]
        n, tr, tc = _tiles(n1 - n0, nth, ntw)
        in_offs = ((n * Hp + m * tr) * Wp + m * tc) * Cp
        g_offs = ((n * Hq + m * tr + at[0]) * Wq + m * tc + at[1]) * Op

        def work(th, share):
            if th not in parts:
                parts[th], dbs[th] = np.zeros((36, Op, Cp), dt), np.zeros(Op, dt)
            du, db = parts[th], dbs[th]
            V, ldv = _planes(th, "wino_V", Tp * Cp, dt)
            dM, ldm = _planes(th, "wino_M", Tp * Op, dt)
            for t0, cnt in share:
                kin(xp.ctypes.data, 0, V.ctypes.data, in_offs[t0:].ctypes.data, 0, cnt, Cp // VW, Wp * Cp, Cp, ldv)
                kgout(gp.ctypes.data, db.ctypes.data, dM.ctypes.data, g_offs[t0:].ctypes.data, 0, cnt, Op // VW,
                      Wq * Op, Op, ldm)
                for c0, _, P, kern in dots:  # du[xi, o, c0 ..] += sum_k dM[xi, k, o] V[xi, k, c0 ..]
                    kern(V.ctypes.data + c0 * it, dM.ctypes.data, du.ctypes.data + c0 * it, 0, 0, cnt, 36, Op // P,
                         ldv, ldm, Op * Cp, Cp, 1, Op, Cp)

        _run(_chunks(len(n), 1, Tp), work, blas=False)

    if gp is not None:
        group(0, N, gp, at)
    else:
        for n0, n1 in _groups(N, (Hp * Wp * Cp + Hg * Wg * Op) * it):
            group(n0, n1)
    Gm = _matrix_g(r)
    dw = np.empty((O, C, r, r), dt)
    _dw_from_du(_sum_parts(parts), np.einsum("xa,yb->abxy", Gm, Gm).reshape(r * r, 36), dw)
    return dw, (_sum_parts(dbs)[:O] if need_db else None)


def backward(g, x, w, y, ph, pw, need_db):
    """(dx, dw, db or None) of out = conv2d(x, w, padding (ph, pw)) (+ b), g = dE/d(out), y = out after a ReLU
    or None, group by group of images (one group for most batches): the group's masked g is made and padded once,
    for both gradients (the input gradient's padding r - 1 - p, with rows and columns enough for the weight
    gradient's whole tiles)."""
    N, C, H, W = x.shape
    O, Ho, Wo = g.shape[1:]
    r = w.shape[2]
    m = _M[r]
    VW = wk.shape(O, g.dtype)[2]
    Op = _ceil(O, VW) * VW
    ah, aw = r - 1 - ph, r - 1 - pw
    rows = max(m * _ceil(H, m) + r - 1, ah + m * _ceil(Ho, m))
    cols = max(m * _ceil(W, m) + r - 1, aw + m * _ceil(Wo, m))
    groups = _groups(N, rows * cols * Op * g.itemsize)
    dx = _empty(x.shape, x.dtype) if len(groups) > 1 else None
    dw = db = None
    for n0, n1 in groups:
        gp = _padded(g[n0:n1], None if y is None else y[n0:n1], rows, cols, Op, ah, aw)
        dw_g, db_g = weight_grad(g[n0:n1], x[n0:n1], ph, pw, None, need_db, gp, (ah, aw))  # (g: only its shape)
        dx_g = input_grad(w, g[n0:n1], (n1 - n0, C, H, W), ph, pw, gp=gp, out=None if dx is None else dx[n0:n1])
        if dx is None:
            return dx_g, dw_g, db_g
        dw = dw_g if dw is None else dw + dw_g
        db = db_g if db is None else db + db_g
    return dx, dw, db
