"""Winograd F(2x2, 3x3) convolutions for the Numba backend: 3 x 3, stride 1, padding <= 2 (the math, as the
paper's matrices, is in :mod:`winograd_reference`; docs/backprop.md has why it is exact and where float32
loses bits).

The output is cut into 2 x 2 blocks ("tiles"), numbered t = (n * nth + tile row) * ntw + tile column over
the whole batch. The tiles are processed in chunks of ~_CHUNK_TILES (a multiple of the GEMM kernel's column
tile), each chunk by one worker thread, start to end in its own scratch (~1 MB: stays in the cache):

    forward:          V[c, p, t] = (B^T d_t B)[p]      input transform   (Numba, 16 positions p)
                      M[:, p] = U[p] @ V[:, p]          16 GEMMs (O x C) @ (C x chunk), shifted_kernel
                      out tile t = A^T M[o, :, t] A     output transform  (Numba), written into out
    input gradient:   the forward on g, with w flipped and in/out channels swapped, padding 2 - p
    weight gradient:  V as in the forward, dM[o, p, t] = (A g_t A^T)[p], dU[p] += dM[:, p] @ V[:, p]^T
                      (shifted_kernel's dot kernel, per thread), then dw = G^T (sum of dU) G

(V and M keep a channel's 16 positions next to each other: with the positions outermost, their rows were a
multiple of 4 KiB apart and the transforms' 16 streams fought over the same cache sets.)

with U[p] = (G w G^T)[p] (O x C), computed once per call. 16 multiplies per 4 outputs where the direct sum
does 36: 2.25x fewer, for the transforms' extra passes over the data.

When it is used (``use``): ``MINISR_CONV=direct`` never, ``winograd`` for every conv it can do (3 x 3,
stride 1, padding <= 2, float32/64), ``auto`` (the default) only for the kernels marked in ``AUTO``, on layers
with at least AUTO_MIN_CHANNELS input and output channels. None is marked: measured on this project's 2-core
machine (bench/RESULTS.md, "Winograd F(2x2, 3x3)"), the forward and the input gradient took 0.92-0.97x the
direct kernels' CPU time, the weight gradient 1.3-1.5x, and a VDSR-20 / EDSR-baseline training step with the
first two on Winograd 0.99x -- no gain worth its float32 differences. The transforms (Numba) take as long as
the GEMMs they save.
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit

from .. import shifted_kernel
from .. import winograd_reference as _ref
from . import threads
from .threads import _run, _sum_parts
from .workspace import _empty, _scratch

M_OUT = 2  # F(2x2, 3x3)
P = (M_OUT + 2) ** 2  # 16 positions
AUTO_MIN_CHANNELS = 16
AUTO = {"forward": False, "input_grad": False, "weight_grad": False}  # which kernels auto runs as Winograd
_CHUNK_TILES = 192  # tiles per chunk (rounded to the GEMM kernel's tile): V and M ~0.8 MB each at C = O = 64
_MODES = ("auto", "direct", "winograd")


def mode() -> str:
    """``MINISR_CONV`` (read at every call, so tests and users can switch): auto, direct or winograd."""
    m = os.environ.get("MINISR_CONV", "auto").strip().lower() or "auto"
    if m not in _MODES:
        raise ValueError(f"MINISR_CONV={m!r}: choose one of {list(_MODES)}")
    return m


def possible(kh, kw, sh, sw, ph, pw, dtype) -> bool:
    """Whether F(2x2, 3x3) applies: 3 x 3, stride 1, padding 0..2, float32/float64, and the kernel compiles."""
    return (kh == kw == 3 and sh == sw == 1 and 0 <= ph <= 2 and 0 <= pw <= 2
            and np.dtype(dtype) in (np.float32, np.float64) and shifted_kernel.available())


def use(C, O, kh, kw, sh, sw, ph, pw, dtype, kernel="forward") -> bool:
    """Whether ``kernel`` (forward, input_grad or weight_grad) of conv2d with C input and O output channels
    runs as Winograd (see the module docstring)."""
    m = mode()
    if m == "direct" or not possible(kh, kw, sh, sw, ph, pw, dtype):
        return False
    return m == "winograd" or (AUTO[kernel] and min(C, O) >= AUTO_MIN_CHANNELS)


# ------------------------------------------------------------------------------------------------ transforms
@njit(nogil=True, cache=True)
def _segments(nth, ntw, t0, cnt):
    # [(k, n, tile row, first tile column, count)]: the chunk's tiles t0 .. t0 + cnt - 1 cut where a tile row ends
    out = []
    k = 0
    while k < cnt:
        t = t0 + k
        n, tr, tc = t // (nth * ntw), (t // ntw) % nth, t % ntw
        seg = min(ntw - tc, cnt - k)
        out.append((k, n, tr, tc, seg))
        k += seg
    return out


# The output and gradient transforms work on a chunk's tiles in two steps: the arithmetic in one loop over all
# the chunk's tiles with unit-stride reads and writes, which LLVM can vectorise (a loop over one tile row's ~20
# tiles is too short for it), and a copy between a buffer D with one column per tile (D[2 i + j, k] = the
# block's number (i, j)) and the image, a tile row at a time (strided).
@njit(nogil=True, cache=True)
def _input_transform(x, ph, pw, nth, ntw, t0, cnt, V, rows):
    # V[c, p, k] = (B^T d B)[p] for tile t0 + k, d the 4 x 4 patch of the padded input at (2 tr - ph, 2 tc - pw);
    # columns cnt.. of V are set to 0. rows: scratch (8, >= ntw + 1): a tile row's 4 input rows, zero-padded,
    # even columns in rows[a] and odd ones in rows[4 + a]. (Measured: as fast as a patch buffer over the whole
    # chunk, see the output transform, whose strided copy costs as much as it saves here.)
    N, C, H, W = x.shape
    z = x.dtype.type(0)
    for k0, n, tr, tc0, seg in _segments(nth, ntw, t0, cnt):
        for c in range(C):
            for a in range(4):
                h = 2 * tr - ph + a
                w0 = 2 * tc0 - pw
                if 0 <= h < H and w0 >= 0 and w0 + 2 * seg + 1 < W:  # (no padding in this row)
                    for m in range(seg + 1):
                        rows[a, m] = x[n, c, h, w0 + 2 * m]
                        rows[4 + a, m] = x[n, c, h, w0 + 2 * m + 1]
                    continue
                for m in range(seg + 1):  # padded columns 2 (tc0 + m) and 2 (tc0 + m) + 1
                    w = w0 + 2 * m
                    inside = 0 <= h < H
                    rows[a, m] = x[n, c, h, w] if (inside and 0 <= w < W) else z
                    rows[4 + a, m] = x[n, c, h, w + 1] if (inside and 0 <= w + 1 < W) else z
            for j in range(seg):
                k = k0 + j
                # the patch's row a: rows[a, j], rows[4 + a, j], rows[a, j + 1], rows[4 + a, j + 1]
                # rows: q = B^T d  (B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]), then columns: v = q B
                q00, q01 = rows[0, j] - rows[2, j], rows[4, j] - rows[6, j]
                q02, q03 = rows[0, j + 1] - rows[2, j + 1], rows[4, j + 1] - rows[6, j + 1]
                q10, q11 = rows[1, j] + rows[2, j], rows[5, j] + rows[6, j]
                q12, q13 = rows[1, j + 1] + rows[2, j + 1], rows[5, j + 1] + rows[6, j + 1]
                q20, q21 = rows[2, j] - rows[1, j], rows[6, j] - rows[5, j]
                q22, q23 = rows[2, j + 1] - rows[1, j + 1], rows[6, j + 1] - rows[5, j + 1]
                q30, q31 = rows[1, j] - rows[3, j], rows[5, j] - rows[7, j]
                q32, q33 = rows[1, j + 1] - rows[3, j + 1], rows[5, j + 1] - rows[7, j + 1]
                V[c, 0, k] = q00 - q02
                V[c, 1, k] = q01 + q02
                V[c, 2, k] = q02 - q01
                V[c, 3, k] = q01 - q03
                V[c, 4, k] = q10 - q12
                V[c, 5, k] = q11 + q12
                V[c, 6, k] = q12 - q11
                V[c, 7, k] = q11 - q13
                V[c, 8, k] = q20 - q22
                V[c, 9, k] = q21 + q22
                V[c, 10, k] = q22 - q21
                V[c, 11, k] = q21 - q23
                V[c, 12, k] = q30 - q32
                V[c, 13, k] = q31 + q32
                V[c, 14, k] = q32 - q31
                V[c, 15, k] = q31 - q33
    for c in range(C):
        for p in range(16):
            for k in range(cnt, V.shape[2]):
                V[c, p, k] = z


@njit(nogil=True, cache=True)
def _output_transform(M, nth, ntw, t0, cnt, out, D):
    # out[n, o, 2 tr + i, 2 tc + j] = (A^T M[o, :, k] A)[i, j] for tile t0 + k, inside out's Ho x Wo.
    # D: scratch (>= 4, >= cnt), the blocks' numbers (i, j) in row 2 i + j.
    N, O, Ho, Wo = out.shape
    d0, d1, d2, d3 = D[0], D[1], D[2], D[3]
    for o in range(O):
        # (1-D views: LLVM vectorises this loop across tiles, measured 4.0 -> 2.95 ms per VDSR layer on one
        # thread; with M[o, p, k] it stayed scalar)
        m0, m1, m2, m3, m4, m5, m6, m7 = M[o, 0], M[o, 1], M[o, 2], M[o, 3], M[o, 4], M[o, 5], M[o, 6], M[o, 7]
        m8, m9, m10, m11 = M[o, 8], M[o, 9], M[o, 10], M[o, 11]
        m12, m13, m14, m15 = M[o, 12], M[o, 13], M[o, 14], M[o, 15]
        for k in range(cnt):
            # rows: r = A^T m  (A^T = [[1,1,1,0],[0,1,-1,-1]]), then columns: r A
            r00 = m0[k] + m4[k] + m8[k]
            r01 = m1[k] + m5[k] + m9[k]
            r02 = m2[k] + m6[k] + m10[k]
            r03 = m3[k] + m7[k] + m11[k]
            r10 = m4[k] - m8[k] - m12[k]
            r11 = m5[k] - m9[k] - m13[k]
            r12 = m6[k] - m10[k] - m14[k]
            r13 = m7[k] - m11[k] - m15[k]
            d0[k] = r00 + r01 + r02
            d1[k] = r01 - r02 - r03
            d2[k] = r10 + r11 + r12
            d3[k] = r11 - r12 - r13
        for k0, n, tr, tc0, seg in _segments(nth, ntw, t0, cnt):
            i0, s0 = 2 * tr, 2 * tc0
            for i in range(min(2, Ho - i0)):
                for j in range(2):
                    for m in range(seg - (1 if (j == 1 and s0 + 2 * seg > Wo) else 0)):
                        out[n, o, i0 + i, s0 + 2 * m + j] = D[2 * i + j, k0 + m]


@njit(nogil=True, cache=True)
def _grad_transform(g, nth, ntw, t0, cnt, dM, D):
    # dM[o, p, k] = (A g_t A^T)[p] for tile t0 + k, g_t its 2 x 2 block of g (0 outside Ho x Wo);
    # columns cnt.. of dM are set to 0. D: scratch (>= 4, >= cnt), the blocks' numbers (i, j) in row 2 i + j.
    N, O, Ho, Wo = g.shape
    z = g.dtype.type(0)
    for o in range(O):
        for k0, n, tr, tc0, seg in _segments(nth, ntw, t0, cnt):
            i0, s0 = 2 * tr, 2 * tc0
            for i in range(2):
                for j in range(2):
                    for m in range(seg):
                        h, w = i0 + i, s0 + 2 * m + j
                        D[2 * i + j, k0 + m] = g[n, o, h, w] if (h < Ho and w < Wo) else z
        for k in range(cnt):
            g00, g01, g10, g11 = D[0, k], D[1, k], D[2, k], D[3, k]
            # rows: q = A g  (A = [[1,0],[1,1],[1,-1],[0,-1]]), then columns: q A^T
            q10, q11 = g00 + g10, g01 + g11
            q20, q21 = g00 - g10, g01 - g11
            dM[o, 0, k] = g00
            dM[o, 1, k] = g00 + g01
            dM[o, 2, k] = g00 - g01
            dM[o, 3, k] = -g01
            dM[o, 4, k] = q10
            dM[o, 5, k] = q10 + q11
            dM[o, 6, k] = q10 - q11
            dM[o, 7, k] = -q11
            dM[o, 8, k] = q20
            dM[o, 9, k] = q20 + q21
            dM[o, 10, k] = q20 - q21
            dM[o, 11, k] = -q21
            dM[o, 12, k] = -g10
            dM[o, 13, k] = -g10 - g11
            dM[o, 14, k] = g11 - g10
            dM[o, 15, k] = g11
        for p in range(16):
            for k in range(cnt, dM.shape[2]):
                dM[o, p, k] = z


# ----------------------------------------------------------------------------------------------- the convs
def _ceil(a, b):
    return -(-a // b)


def _chunks(total, TILE):
    """[(t0, count)]: runs of tiles, each a multiple of TILE long (but the last), at least two per thread
    when there are enough tiles."""
    T = threads._threads(blas=False)
    size = max(TILE, _ceil(_CHUNK_TILES, TILE) * TILE)
    n = max(_ceil(total, size), min(2 * T, _ceil(total, TILE)))
    size = _ceil(_ceil(total, n), TILE) * TILE
    return [(t0, min(size, total - t0)) for t0 in range(0, total, size)]


def _gemm_calls(U, dtype):
    """The compiled shifted-GEMM calls of M[:, p] = U[p] @ V[:, p] for the 16 positions p: [(kernel, packed
    A's address, first row, blocks)], with U (P, O, C). (The kernel is called directly, not through
    shifted_kernel.shifted_gemm: its checks would cost more than a chunk's GEMM of ~5 us.)"""
    MB = shifted_kernel.block_shape(dtype)[0]
    calls, keep = [], []
    for p in range(P):
        for m0, mb, packed in shifted_kernel.pack(U[p:p + 1], MB):
            keep.append(packed)
            calls.append((p, shifted_kernel.kernel(mb, shifted_kernel._NV, dtype), packed.ctypes.data, m0,
                          packed.shape[0]))
    return calls, keep


def _forward(x, w, ph, pw):
    """out (N, O, Ho, Wo) = conv2d(x, w (O, C, 3, 3), padding (ph, pw)), F(2x2, 3x3)."""
    N, C, H, W = x.shape
    O = w.shape[0]
    BT, G, AT = _ref.matrices(M_OUT, x.dtype)
    Ho, Wo = H + 2 * ph - 2, W + 2 * pw - 2
    nth, ntw = -(-Ho // M_OUT), -(-Wo // M_OUT)
    TILE, it = shifted_kernel.block_shape(x.dtype)[1], x.itemsize
    U = np.ascontiguousarray((G @ w @ G.T).reshape(O, C, P).transpose(2, 0, 1))  # U[p] (O, C)
    calls, keep = _gemm_calls(U, x.dtype)
    zero = shifted_kernel.tap_table(np.zeros(1, np.int64), C)  # one tap at offset 0 over all C channels
    out = _empty((N, O, Ho, Wo), x.dtype)
    starts = shifted_kernel.tile_starts(-(-N * nth * ntw // TILE), x.dtype)  # (a chunk's are the first ones)

    def work(t, share):
        for t0, cnt in share:
            Tp = -(-cnt // TILE) * TILE
            V = _scratch(t, "wg_V", (C, P, Tp), x.dtype)  # position p of channel c: a row of Tp tiles
            _input_transform(x, ph, pw, nth, ntw, t0, cnt, V, _scratch(t, "wg_D", (16, max(Tp, ntw + 1)), x.dtype))
            Mk = _scratch(t, "wg_M", (O, P, Tp), x.dtype)
            vb, mk, ld = V.ctypes.data, Mk.ctypes.data, P * Tp
            for p, kern, a, m0, nmb in calls:  # Mk[:, p] = U[p] @ V[:, p] (row stride ld)
                kern(a, vb + p * Tp * it, mk + (m0 * ld + p * Tp) * it, zero.ctypes.data, starts.ctypes.data, 1, C, ld,
                     ld, Tp // TILE, nmb)
            _output_transform(Mk, nth, ntw, t0, cnt, out, _scratch(t, "wg_D", (16, max(Tp, ntw + 1)), x.dtype))

    _run(_chunks(N * nth * ntw, TILE), work, blas=False)
    del keep
    return out


def conv_forward(x, w2, ph, pw):
    """conv.conv_forward for a 3 x 3 stride-1 layer: x (N, C, H, W), w2 (O, 9 C) -> (N, O, Ho*Wo)."""
    x = np.ascontiguousarray(x)
    O, C = w2.shape[0], x.shape[1]
    out = _forward(x, np.ascontiguousarray(w2).reshape(O, C, 3, 3), ph, pw)
    return out.reshape(out.shape[0], O, -1)


def conv_input_grad(w2, g, x_shape, ph, pw):
    """conv.conv_input_grad for a 3 x 3 stride-1 layer: the forward on g with the filter flipped and
    transposed, padding 2 - p."""
    N, C, H, W = x_shape
    O = w2.shape[0]
    wf = np.ascontiguousarray(w2.reshape(O, C, 3, 3)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    g4 = np.ascontiguousarray(g).reshape(N, O, H + 2 * ph - 2, W + 2 * pw - 2)
    return _forward(g4, wf, 2 - ph, 2 - pw)


def conv_weight_grad(g, x, ph, pw):
    """conv.conv_weight_grad for a 3 x 3 stride-1 layer: g (N, O, Ho*Wo), x (N, C, H, W) -> (O, 9 C)."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    O = g.shape[1]
    BT, G, AT = _ref.matrices(M_OUT, x.dtype)
    Ho, Wo = H + 2 * ph - 2, W + 2 * pw - 2
    nth, ntw = -(-Ho // M_OUT), -(-Wo // M_OUT)
    TILE = shifted_kernel.block_shape(x.dtype)[1]
    g4 = np.ascontiguousarray(g).reshape(N, O, Ho, Wo)
    parts = {}

    MB, NB, VW = shifted_kernel.dot_shape(x.dtype)
    # dU[p] += dM[:, p] @ V[:, p]^T: the dot kernel over the row blocks of O and of C (and their remainders)
    blocks = [(m0, m1, mb, n0, n1, nb_, shifted_kernel.dot_kernel(mb, nb_, x.dtype))
              for m0, m1, mb in ((0, O // MB * MB, MB), (O // MB * MB, O, O % MB))
              for n0, n1, nb_ in ((0, C // NB * NB, NB), (C // NB * NB, C, C % NB)) if m1 > m0 and n1 > n0]
    it = x.itemsize

    def work(t, share):
        acc = parts[t] = np.zeros((P, O, C), x.dtype)
        for t0, cnt in share:
            Tp = -(-cnt // TILE) * TILE
            V = _scratch(t, "wg_V", (C, P, Tp), x.dtype)
            rows = _scratch(t, "wg_D", (16, max(Tp, ntw + 1)), x.dtype)
            _input_transform(x, ph, pw, nth, ntw, t0, cnt, V, rows)
            dM = _scratch(t, "wg_M", (O, P, Tp), x.dtype)
            _grad_transform(g4, nth, ntw, t0, cnt, dM, rows)
            ld = P * Tp
            segs = np.array([[0, Tp // VW]], np.int64)  # all of q
            for p in range(P):
                boffs = np.arange(p * Tp, C * ld, ld, dtype=np.int64)  # row c of V[:, p]
                for m0, m1, mb, n0, n1, nb_, kern in blocks:
                    kern(dM.ctypes.data + (m0 * ld + p * Tp) * it, V.ctypes.data, acc[p, m0:, n0:].ctypes.data,
                         boffs[n0:].ctypes.data, segs.ctypes.data, ld, C, 1, (m1 - m0) // mb, (n1 - n0) // nb_)

    _run(_chunks(N * nth * ntw, TILE), work, blas=False)
    dU = _sum_parts(parts).transpose(1, 2, 0).reshape(O, C, 4, 4)
    return (G.T @ dU @ G).reshape(O, C * 9)
