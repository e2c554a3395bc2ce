"""Stride-2 3x3 convolutions as stride-1 shifted GEMMs over the input's four polyphase images (SRGAN's
discriminator halves its size four times this way).

Split the zero-padded input xp into the phases P_pq[i, j] = xp[2i + p, 2j + q] (p, q in {0, 1}): output (i, j)
of a stride-2 3x3 conv reads xp[2i + u, 2j + v], and with u = 2a + p, v = 2b + q that is P_pq[i + a, j + b]. So

    out[:, i, j] = sum_(a, b) sum_(p, q: 2a + p < 3, 2b + q < 3) w[:, :, 2a + p, 2b + q] @ P_pq[:, i + a, j + b]

-- a stride-1 2x2 'valid' conv over the Ho + 1 x Wo + 1 phase images, whose tap (a, b) sees only the phases
with 2a + p < 3 and 2b + q < 3: tap (0, 0) all four, (0, 1) and (1, 0) two, (1, 1) one -- 9 C multiplies per
output and channel, none wasted (a dense 2x2 conv over 4 C channels would do 16 C, with zeros). With the phases
stacked as channels in the order 01, 00, 10, 11, each tap's phases are consecutive channels, and the shifted
kernel takes a channel range per tap (``shifted_kernel.shifted_gemm(..., chans)``). The input gradient is one
shifted GEMM per phase (phase pq's taps, w transposed, mirrored offsets, as in :mod:`.conv_shifted`), scattered
back to the input's pixels; the weight gradient one dot-product GEMM of g against the phase images' rows at the
9 (phase, tap) offsets, which come out in w's (O, C, 3, 3) order. The phases are never materialised: each run's
grid is filled from x with stride-2 reads (``_window_phases``), as :mod:`.conv_shifted` fills its padded grid.

Measured against columns + BLAS: bench/RESULTS.md, "Strided convolutions as polyphase shifted GEMMs".
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import shifted_kernel
from .common import _c
from .conv_shifted import (
    _SHIFTED_MIN_CHANNELS,
    _extract_rows_epilogue,
    _Grid,
    _segments,
    _segments_needed,
    _tile_starts,
    _window,
)
from .threads import _run, _sum_parts
from .workspace import _empty, _scratch

PHASES = ((0, 1), (0, 0), (1, 0), (1, 1))  # (p, q) of the stacked phases, in channel order
TAPS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (a, b) of the 2x2 conv over the phases, row-major (its grid offsets)
# tap (a, b) -> its phases (those with 2a + p < 3 and 2b + q < 3), as (first, count) in PHASES
TAP_PHASES = tuple((min(f for f, (p, q) in enumerate(PHASES) if 2 * a + p < 3 and 2 * b + q < 3),
                    sum(2 * a + p < 3 and 2 * b + q < 3 for p, q in PHASES)) for a, b in TAPS)
_P = np.array([p for p, _ in PHASES], np.int64)
_Q = np.array([q for _, q in PHASES], np.int64)


_POLYPHASE_MAX_CHANNELS = 128  # above this columns + BLAS were as fast or faster (the phases' 4 C rows per tile
# outgrow the caches: 512 -> 512 at 12x12, batch 16, 2 threads: 72 -> 89 ms for the three passes)


def _polyphase(x, C, kh, kw, sh, sw) -> bool:
    """Whether a conv (pass) runs here: 3x3, stride 2, 8 to 128 input channels, float32/64, the kernel
    available."""
    return ((kh, kw, sh, sw) == (3, 3, 2, 2) and _SHIFTED_MIN_CHANNELS <= C <= _POLYPHASE_MAX_CHANNELS
            and x.dtype in (np.float32, np.float64) and shifted_kernel.available())


def _geometry(x_shape, ph, pw):
    """(Ho, Wo, the phases' grid: N images of 4 C channels, Ho + 1 x Wo + 1, under a 2x2 'valid' conv)."""
    N, C, H, W = x_shape
    Ho, Wo = (H + 2 * ph - 3) // 2 + 1, (W + 2 * pw - 3) // 2 + 1
    return Ho, Wo, _Grid((N, 4 * C, Ho + 1, Wo + 1), 2, 2, 0, 0)


@njit(nogil=True, cache=True)
def _window_phases(x, ph, pw, Hq, Wq, q0, P, Q, out):
    # out[f*C + c, k] = phase f of channel c at the phases' grid position q = q0 + k = n*Hq*Wq + i*Wq + j:
    # xp[n, c, 2i + P[f], 2j + Q[f]] of the input zero-padded by (ph, pw), 0 outside it and outside the images
    N, C, H, W = x.shape
    segs = _segments(N, Hq, Wq, 0, 0, Hq, Wq, q0, out.shape[1])
    for f in range(P.shape[0]):
        p, q = P[f], Q[f]
        ja, jb = -((q - pw) // 2), -((q - pw - W) // 2)  # the phase's columns inside the image: [ja, jb)
        for c in range(C):
            row = out[f * C + c]
            for s in range(segs.shape[0]):
                k, seg, lo, hi, n, i, src = segs[s]
                dst = row[k:k + seg]
                r = 2 * i + p - ph
                if hi == lo or r < 0 or r >= H:
                    dst[:] = 0
                    continue
                j0 = min(max(ja - src, 0), seg)
                j1 = max(j0, min(jb - src, seg))
                dst[:j0] = 0
                xr, base = x[n, c, r], 2 * (src + j0) + q - pw
                d = dst[j0:j1]
                for j in range(j1 - j0):
                    d[j] = xr[base + 2 * j]
                dst[j1:] = 0


@njit(nogil=True, cache=True)
def _extract_phases(dy, r0, r1, Hq, Wq, ph, pw, P, Q, dx):
    # dx[n, c, 2i + P[f] - ph, 2j + Q[f] - pw] = dy[f*C + c, (r - r0)*Wq + j] for the grid rows r = n*Hq + i in
    # [r0, r1): every pixel of x is one phase's (i, j) (the adjoint of _window_phases, which reads each once)
    N, C, H, W = dx.shape
    for f in range(P.shape[0]):
        p, q = P[f], Q[f]
        ja, jb = max(0, -((q - pw) // 2)), min(Wq, -((q - pw - W) // 2))
        for c in range(C):
            for r in range(r0, r1):
                n, i = r // Hq, r % Hq
                h = 2 * i + p - ph
                if 0 <= h < H and jb > ja:
                    src, xr = dy[f * C + c, (r - r0) * Wq:(r - r0 + 1) * Wq], dx[n, c, h]
                    base = 2 * ja + q - pw
                    for j in range(jb - ja):
                        xr[base + 2 * j] = src[ja + j]


def _tap_weights(w4, C):
    """(A (4 taps, O, 4C), chans (4, 2)): tap (a, b)'s weights for its phases' channels, first, and its channel
    range in the stacked phases."""
    O = w4.shape[0]
    A = np.zeros((len(TAPS), O, 4 * C), w4.dtype)
    for k, (a, b) in enumerate(TAPS):
        f0, nf = TAP_PHASES[k]
        for i in range(nf):
            p, q = PHASES[f0 + i]
            A[k, :, i * C:(i + 1) * C] = w4[:, :, 2 * a + p, 2 * b + q]
    chans = np.array([(f0 * C, nf * C) for f0, nf in TAP_PHASES], np.int64)
    return A, chans


def _conv_forward_polyphase(x, w2, ph, pw, b=None, relu=False):
    """conv_forward of a 3x3 stride-2 conv; with b and/or relu, + b[o] and max(., 0) fused into the copy out."""
    N, C = x.shape[:2]
    O = w2.shape[0]
    Ho, Wo, G = _geometry(x.shape, ph, pw)
    MB, TILE = shifted_kernel.block_shape(x.dtype)
    A, chans = _tap_weights(w2.reshape(O, C, 3, 3), C)
    taps = shifted_kernel.pack(A, MB)
    offsets = np.array(G.offsets, np.int64)
    out = _empty((N, O, Ho * Wo), x.dtype)
    out4 = out.reshape(N, O, Ho, Wo)
    bias = np.zeros(O, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)

    def work(t, share):
        for r0, r1 in share:
            starts, end = _tile_starts(_segments_needed(r0, r1, G.Hp, G.Wp, 0, G.Ho, TILE), TILE)
            if end == 0:
                continue  # (a run of junk rows only)
            y = _scratch(t, "y", (4 * C, end + G.slack), x.dtype)
            _window_phases(x, ph, pw, G.Hp, G.Wp, r0 * G.Wp, _P, _Q, y)
            part = _scratch(t, "out", (O, end), x.dtype)
            shifted_kernel.shifted_gemm(taps, y, offsets, part, starts, chans)
            _extract_rows_epilogue(part, r0, r1, G.Hp, G.Wp, bias, relu, out4)

    _run(G.row_runs(0, G.Ho), work, blas=False)
    return out


def _conv_weight_grad_polyphase(g, x, ph, pw):
    """dw2 (O, C*9) of a 3x3 stride-2 conv: per run one dot-product GEMM of g on the phases' grid against the rows
    of the phase images at each (c, u, v)'s phase and tap offset."""
    N, C = x.shape[:2]
    O = g.shape[1]
    Ho, Wo, G = _geometry(x.shape, ph, pw)
    VW = shifted_kernel.dot_shape(x.dtype)[2]
    g4 = _c(g).reshape(N, O, Ho, Wo)
    index = {pq: f for f, pq in enumerate(PHASES)}
    # w's column (c, u, v) reads phase (u % 2, v % 2) of channel c at tap (u // 2, v // 2)
    chan = np.array([index[u % 2, v % 2] * C + c for c in range(C) for u in range(3) for v in range(3)], np.int64)
    off = np.array([(u // 2) * G.Wp + v // 2 for c in range(C) for u in range(3) for v in range(3)], np.int64)
    parts = {}

    def work(t, share):
        acc = parts[t] = np.zeros((O, C * 9), x.dtype)
        for r0, r1 in share:
            q0, cnt = r0 * G.Wp, (r1 - r0) * G.Wp
            segs = _segments_needed(r0, r1, G.Hp, G.Wp, 0, G.Ho, VW)
            if len(segs) == 0:
                continue
            span = max(cnt, int(segs[-1, 0] + segs[-1, 1] * VW))
            y = _scratch(t, "y", (4 * C, span + G.slack), x.dtype)
            _window_phases(x, ph, pw, G.Hp, G.Wp, q0, _P, _Q, y)
            gr = _scratch(t, "g", (O, span), x.dtype)
            _window(g4, 0, 0, G.Hp, G.Wp, q0, gr)  # g on the phases' grid, 0 at junk positions
            gr[:, cnt:] = 0
            shifted_kernel.gemm_nt(gr, y.reshape(-1), chan * y.shape[1] + off, acc, segs)

    _run(G.row_runs(0, G.Ho), work, blas=False)
    return _sum_parts(parts)


def _conv_input_grad_polyphase(w2, g, x_shape, ph, pw):
    """conv_input_grad of a 3x3 stride-2 conv: each phase's gradient gathers g through its own taps,
    dP_pq[:, q] = sum_(a, b) w[:, :, 2a + p, 2b + q]^T @ g[:, q - offset(a, b)], then goes back to its pixels."""
    N, C = x_shape[:2]
    O = w2.shape[0]
    Ho, Wo, G = _geometry(x_shape, ph, pw)
    MB, TILE = shifted_kernel.block_shape(g.dtype)
    w4 = w2.reshape(O, C, 3, 3)
    calls = []  # per phase: (its rows of dy, packed w^T of its taps, their offsets into g's window)
    for f, (p, q) in enumerate(PHASES):
        mine = [(a, b) for a, b in TAPS if 2 * a + p < 3 and 2 * b + q < 3]
        A = np.stack([w4[:, :, 2 * a + p, 2 * b + q].T for a, b in mine])  # (taps, C, O)
        offs = np.array([G.slack - (a * G.Wp + b) for a, b in mine], np.int64)
        calls.append((f * C, shifted_kernel.pack(np.ascontiguousarray(A), MB), offs))
    g4 = _c(g).reshape(N, O, Ho, Wo)
    dx = _empty(x_shape, g.dtype)

    def work(t, share):
        for r0, r1 in share:
            q0 = r0 * G.Wp
            starts, end = _tile_starts(_segments_needed(r0, r1, G.Hp, G.Wp, 0, G.Hp, TILE), TILE)
            gr = _scratch(t, "g", (O, G.slack + end), g.dtype)
            _window(g4, 0, 0, G.Hp, G.Wp, q0 - G.slack, gr)  # g on the grid, 0 at junk positions
            dy = _scratch(t, "dy", (4 * C, end), g.dtype)
            for row0, packed, offs in calls:
                shifted_kernel.shifted_gemm(packed, gr, offs, dy[row0:row0 + C], starts)
            _extract_phases(dy, r0, r1, G.Hp, G.Wp, ph, pw, _P, _Q, dx)

    _run(G.row_runs(), work, blas=False)
    return dx
