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

Junk-free blocks (``bcast_gemm``, the kernel's transpose): where the output channels fill whole SIMD vectors,
a pass can put them in the lanes and broadcast the input, so a block is any P positions -- the valid columns of
one row -- and any range of taps. The forward of a 'valid' conv then skips the kw - 1 junk columns of each
row, and the input gradient the taps that would read g's zero border rows, each block's sums stored straight
into the NCHW output (+ bias, ReLU: no copy out); the weight gradient sums over the valid columns only
(``bcast_dot``, g copied positions x channels). ``_bcast_p`` decides, per pass, from the work: SRCNN's 64 -> 32
5x5 layer runs all three passes on them, VDSR's and EDSR's 64-channel 3x3 layers their forwards and input
gradients.

Fused epilogues (conv_fused_forward / conv_fused_backward, :mod:`.conv`): the bias add and the ReLU happen as
the forward copies its valid outputs out of a run (``_extract_rows_epilogue``), the bias gradient is summed from
the run's g on the grid that the weight gradient builds anyway, and ReLU's mask is applied as g is copied onto
the grid (``_window_masked``), by the weight gradient and by the input gradient.
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
_SHIFTED_MIN_TAPS_DW = 25  # ... except in the weight gradient when C * kh * kw reaches this (see _shifted)
_RUN_COLS = 4096
_SKIP_MIN_COLS = 1024  # runs inside one image when an image's needed rows hold this many positions
_BCAST = True  # passes whose channels fill whole vectors may run on bcast_gemm (see _bcast_p) ...
_BCAST_MAX_WORK = 1.02  # ... when that computes at most this many times the shifted kernel's positions
_BCAST_K_MIN = 8  # ... and sum over at least this many channels (weight gradient: rows of the input)
_BCAST_DOT_MAX_WORK = 0.85  # the weight gradient on bcast_dot: only where it saves >= 15% (measured)


def _shifted(x, C, sh, sw, kh=1, kw=1, weight_grad=False):
    """Whether a stride-1 conv (pass) runs as shifted GEMMs: with >= 8 input channels; the weight gradient also
    with fewer when C * kh * kw >= 25 -- a first layer on 1 or 3 channels (measured, 2 threads: SRCNN's
    1 -> 64 9x9 weight and bias gradient 18.4 -> 13.5 ms, ESPCN's and FSRCNN's 5x5 3.8 -> 2.8 and 5.4 -> 2.5,
    EDSR's 3 -> 64 3x3 5.0 -> 4.5; VDSR's 1 -> 64 3x3, 9 taps, 3.6 -> 4.5: too short). Their forwards stay on
    im2col + BLAS (SRCNN's 10.9 -> 12.0, VDSR's 1.8 -> 4.1 ms on the shifted kernel)."""
    if not (sh == 1 and sw == 1 and x.dtype in (np.float32, np.float64)):
        return False
    wide = C >= _SHIFTED_MIN_CHANNELS or (weight_grad and C * kh * kw >= _SHIFTED_MIN_TAPS_DW)
    return wide and shifted_kernel.available()


@njit(nogil=True, cache=True)
def _segments(N, H, W, top, left, Hp, Wp, q0, length):
    # The grid rows that positions q0 .. q0 + length - 1 cross, as segments (one per row piece) of 7 numbers:
    # [k, seg, lo, hi, n, h, src]: out[:, k:k + seg] is grid row h + top of image n from column src - lo + left
    # on; its part [lo, hi) lies inside the image, starting at the image's column src (the rest is 0).
    segs = np.empty((length // Wp + 2, 7), np.int64)
    L, k, i = Hp * Wp, 0, 0
    while k < length:
        q = q0 + k
        n, rem = q // L, q % L
        h, s = rem // Wp - top, rem % Wp
        seg = min(Wp - s, length - k)  # to the end of this grid row
        lo, hi = 0, 0
        if 0 <= n < N and 0 <= h < H:
            lo = min(max(0, left - s), seg)
            hi = max(lo, min(seg, W + left - s))
        segs[i, 0], segs[i, 1], segs[i, 2], segs[i, 3] = k, seg, lo, hi
        segs[i, 4], segs[i, 5], segs[i, 6] = n, h, s + lo - left
        i += 1
        k += seg
    return segs[:i]


@njit(nogil=True, cache=True)
def _window(x, top, left, Hp, Wp, q0, out):
    # out[c, k] = grid[c, q0 + k] for the grid position q = n*L + r*Wp + s (L = Hp*Wp) holding
    # x[n, c, r - top, s - left] inside the image and 0 elsewhere (padding, junk, before the first image or
    # past the last). Channel by channel, each channel's grid rows in order: two streams (x's channel plane and
    # out's row), where a grid row at a time across all channels kept 2 C streams open (~3x slower).
    N, C, H, W = x.shape
    segs = _segments(N, H, W, top, left, Hp, Wp, q0, out.shape[1])
    for c in range(C):
        for i in range(segs.shape[0]):
            k, seg, lo, hi, n, h, src = segs[i]
            out[c, k:k + lo] = 0
            if hi > lo:
                out[c, k + lo:k + hi] = x[n, c, h, src:src + hi - lo]
            out[c, k + hi:k + seg] = 0


@njit(nogil=True, cache=True)
def _window_masked(x, y, Hp, Wp, q0, out):
    # _window(x, 0, 0, Hp, Wp, q0, out) keeping x only where y > 0 (0 elsewhere, as relu_backward): the output
    # gradient of a conv followed by a ReLU, masked as it is copied onto the grid
    N, C, H, W = x.shape
    segs = _segments(N, H, W, 0, 0, Hp, Wp, q0, out.shape[1])
    for c in range(C):
        for i in range(segs.shape[0]):
            k, seg, lo, hi, n, h, src = segs[i]
            if hi > 0:  # (1-D views, a loop from 0: LLVM vectorises it; with 4-D indexing +10 ms per VDSR layer)
                s, keep, dst = x[n, c, h, src:src + hi], y[n, c, h, src:src + hi], out[c, k:k + hi]
                for j in range(hi):
                    dst[j] = s[j] if keep[j] > 0 else 0
            out[c, k + hi:k + seg] = 0


@njit(nogil=True, cache=True, fastmath={"reassoc"})  # (reassociation lets LLVM vectorise the sums)
def _add_row_sums(a, out):
    # out[o] += sum_k a[o, k], summed in float64 (as bias_grad)
    for o in range(a.shape[0]):
        acc = 0.0
        for k in range(a.shape[1]):
            acc += a[o, k]
        out[o] += acc


@njit(nogil=True, cache=True)
def _extract_rows_epilogue(part, r0, r1, Hp, Wp, b, relu, out):
    # _extract_rows(part, r0, r1, Hp, Wp, 0, 0, out) with b[c] added and, when relu, max(., 0) (a NaN passes, as
    # in relu_forward): the bias add and the ReLU in the forward's output pass
    N, C, H, W = out.shape
    for c in range(C):
        bc = b[c]
        for r in range(r0, r1):
            n, h = r // Hp, r % Hp
            if h < H:
                base = (r - r0) * Wp
                if relu:
                    for w in range(W):
                        v = part[c, base + w] + bc
                        out[n, c, h, w] = 0 if v <= 0 else v
                else:
                    for w in range(W):
                        out[n, c, h, w] = part[c, base + w] + bc


@njit(nogil=True, cache=True)
def _extract_rows(part, r0, r1, Hp, Wp, top, left, out):
    # out[n, c, h, w] = part[c, (r - r0)*Wp + w + left] for the grid rows r = n*Hp + h + top in [r0, r1);
    # channel by channel (two streams, as _window)
    N, C, H, W = out.shape
    for c in range(C):
        for r in range(r0, r1):
            n, h = r // Hp, r % Hp - top
            if 0 <= h < H:
                base = (r - r0) * Wp + left
                for w in range(W):
                    out[n, c, h, w] = part[c, base + w]


@njit(nogil=True, cache=True)
def _row_blocks(r0, r1, Hp, Wp, lo, hi, left, W, P, kh, kw, Ho, C):
    """bcast_gemm's blocks (q, k0, k1, o) for the grid rows r = n*Hp + i in [r0, r1) with lo <= i < hi: P <= W
    positions from column left + j, j = 0, P, 2P, ... (the last block ending at column left + W: blocks may
    overlap), q counted from the run's first position, o the index of (n, 0, i - lo, j) in the (N, C, hi - lo, W)
    tensor the sums go to. With Ho > 0 (an input gradient), a block sums only over the taps (u, v) whose output
    row i - u lies in [0, Ho): the rows of g's zero border are skipped, not multiplied."""
    nb = -(-W // P)
    H = hi - lo
    out = np.empty(((r1 - r0) * nb, 4), np.int64)
    m = 0
    for r in range(r0, r1):
        n, i = r // Hp, r % Hp
        if lo <= i < hi:
            k0, k1 = 0, kh * kw
            if Ho > 0:
                k0, k1 = max(0, i - Ho + 1) * kw, (min(kh - 1, i) + 1) * kw
            for t in range(nb):
                j = min(t * P, W - P)
                out[m, 0], out[m, 1], out[m, 2] = (r - r0) * Wp + left + j, k0, k1
                out[m, 3] = (n * C * H + i - lo) * W + j
                m += 1
    return out[:m]


@njit(nogil=True, cache=True)
def _window_t(g, y, masked, Hp, Wp, r0, r1, out, db, bias):
    # The valid positions of grid rows [r0, r1) of g (N, C, H, W: the output grid's rows r = n*Hp + h, h < H),
    # positions x channels: out[(r - r0)*Wp + w, c] = g[n, c, h, w] (times [y > 0] when masked); the junk
    # positions are not written (bcast_dot never reads them). With bias, db[c] += the numbers written.
    N, C, H, W = g.shape
    for r in range(r0, r1):
        n, h = r // Hp, r % Hp
        if n < N and h < H:
            base = (r - r0) * Wp
            for c in range(C):
                acc = 0.0
                for w in range(W):
                    v = g[n, c, h, w]
                    if masked and y[n, c, h, w] <= 0:
                        v = 0
                    out[base + w, c] = v
                    acc += v
                if bias:
                    db[c] += acc


@njit(nogil=True, cache=True)
def _row_segments(r0, r1, Hp, Wp, Ho, Wo):
    # bcast_dot's segments (q, Wo): the valid outputs of each output row in grid rows [r0, r1), q counted from
    # the run's first position
    out = np.empty((r1 - r0, 2), np.int64)
    m = 0
    for r in range(r0, r1):
        if r % Hp < Ho:
            out[m, 0], out[m, 1] = (r - r0) * Wp, Wo
            m += 1
    return out[:m]


def _bcast_p(lanes, K, W, Wp, dtype, taps_kept=1.0, max_work=None):
    """The positions per block when a pass runs on ``bcast_gemm`` (its ``lanes`` channels in the SIMD lanes,
    summing over K channels), else 0: when the lanes fill whole vectors, K >= 8, and blocks along the W valid
    columns of each row, times the fraction ``taps_kept`` of the multiplies not skipped, compute at most
    _BCAST_MAX_WORK (1.02) x the Wp positions per row of the shifted kernel's grid, whose junk columns it
    computes and drops. P <= the register budget's, from half of it up, by the cost model positions x (1 + 1/P):
    SRCNN's 21 columns in 3 blocks of 7 (not 2 overlapping blocks of 14: 28 positions), a 512-wide row in
    blocks of 6 (516 positions) rather than 4 (512, but 1.04x slower than the grid, 6: 0.91x).

    Measured per pass against the shifted kernel (2 threads, medians of 9-21, trainings paused): SRCNN's 64 -> 32
    5x5 (batch 128) forward 0.84, input gradient 0.81; VDSR's 3x3 (42 of 43 columns) 0.98 / 0.95, EDSR's 0.91 /
    0.92 and its 64 -> 256 upsampler 0.91 / 0.92 -- the sums stored straight into the output also save the
    grid's copy out. Whole steps, both paths alternating in one process (forward and input gradient; weight
    gradients by the stricter rule of _conv_weight_grad_shifted): SRCNN -10%, VDSR -5%, EDSR -7%. With K = 1
    (SRCNN's 32 -> 1 input gradient: 1.07x) the per-block stores outweigh the short sums."""
    P_max, _, VW = shifted_kernel.bcast_shape(lanes, dtype)
    if not _BCAST or lanes % VW or K < _BCAST_K_MIN or P_max < 2:  # (K: see _BCAST_K_MIN)
        return 0
    hi = min(P_max, W)  # (a block lies within a row)
    # cost ~ positions x (1 + 1/P) (the OV weight loads per step, shared by P positions); ties: fewer positions
    P = min(range(hi, max(1, hi // 2) - 1, -1), key=lambda p: (-(-W // p) * (p + 1), -(-W // p) * p))
    return P if -(-W // P) * P * taps_kept <= (_BCAST_MAX_WORK if max_work is None else max_work) * Wp else 0


def _taps_kept(H, Ho, kh, ph):
    """The fraction of an input gradient's (row) taps whose output row exists: image rows near the border
    take fewer than kh (the rest would multiply g's zero border)."""
    Hp = H + 2 * ph
    return sum(min(kh - 1, i) - max(0, i - Ho + 1) + 1 for i in range(ph, Hp - ph)) / (H * kh)


class _Grid:
    """The padded position grid of one shifted conv: image n's padded pixel (r, s) is position
    q = n*L + r*Wp + s, L = Hp*Wp, and so is the output (i, j) whose windows start there."""

    def __init__(self, x_shape, kh, kw, ph, pw):
        self.N, self.C, H, W = x_shape
        self.Hp, self.Wp = H + 2 * ph, W + 2 * pw
        self.Ho, self.Wo = self.Hp - kh + 1, self.Wp - kw + 1
        self.slack = (kh - 1) * self.Wp + kw - 1  # the last shift reads this far past a run
        self.offsets = [u * self.Wp + v for u in range(kh) for v in range(kw)]  # of shift (u, v), row-major

    def row_runs(self, lo=0, hi=None):
        """[(r0, r1)]: runs of grid rows (row r = n*Hp + i) of (nearly) equal length, at most _RUN_COLS
        positions, a multiple of the thread count of them (at least two per thread when there are enough rows),
        so that the threads' shares are equal.

        Only rows i in [lo, hi) of each image are needed (the forward's and the weight gradient's output rows
        [0, Ho), the input gradient's image rows [ph, ph + H)); the others' results are thrown away. When an
        image's needed rows hold at least _SKIP_MIN_COLS positions, runs stay inside one image and skip the
        others (VDSR's 41x41 layers: 2 rows of 43 per pass, measured 4-9% faster); on smaller images a run per
        image costs more in per-run work than the skipped rows save (SRCNN's 21x21 and 17x17 outputs: measured
        up to 3.5x slower), so runs span images, rows and all, and the kernels skip the unneeded rows inside
        them (``_segments_needed``)."""
        hi = self.Hp if hi is None else hi
        T, max_rows = threads._threads(blas=False), max(1, _RUN_COLS // self.Wp)
        if hi - lo == self.Hp or (hi - lo) * self.Wp < _SKIP_MIN_COLS:  # runs across images, every row
            total = self.N * self.Hp
            runs = max(-(-total // max_rows), 2 * T)
            runs = min(total, -(-runs // T) * T)
            return [(total * k // runs, total * (k + 1) // runs) for k in range(runs)]
        rows = hi - lo
        k = max(-(-rows // max_rows), -(-2 * T // self.N))  # runs per image
        while (self.N * k) % T and k < rows:
            k += 1
        k = min(k, rows)
        return [(n * self.Hp + lo + rows * j // k, n * self.Hp + lo + rows * (j + 1) // k)
                for n in range(self.N) for j in range(k)]


@njit(nogil=True, cache=True)
def _segments_needed(r0, r1, Hp, Wp, lo, hi, step):
    """[(start, count)]: the positions of grid rows i in [lo, hi) of each image within the run of rows
    [r0, r1), counted from the run's first position, as segments of ``count`` blocks of ``step`` positions
    (rounded up; a segment that would overlap the one before is merged into it). The others are junk that no
    output needs: below a 'valid' convolution's last output row (kh - 1 rows of each image), or the padding
    rows of an input gradient."""
    out = np.empty((r1 - r0 + 1, 2), np.int64)
    m, n = 0, r0 // Hp
    while n * Hp < r1:
        a, b = max(r0, n * Hp + lo), min(r1, n * Hp + hi)
        if b > a:
            s, e = (a - r0) * Wp, (b - r0) * Wp
            if m > 0 and s <= out[m - 1, 0] + out[m - 1, 1] * step:
                out[m - 1, 1] = max(out[m - 1, 1], -(-(e - out[m - 1, 0]) // step))
            else:
                out[m, 0], out[m, 1] = s, -(-(e - s) // step)
                m += 1
        n += 1
    return out[:m]


@njit(nogil=True, cache=True)
def _tile_starts(segs, TILE):
    """The starts of the tiles of TILE positions that cover ``segs`` (``_segments_needed(..., TILE)``) and the
    end of the last one."""
    starts = np.empty(segs[:, 1].sum(), np.int64)
    k = 0
    for i in range(segs.shape[0]):
        for j in range(segs[i, 1]):
            starts[k] = segs[i, 0] + j * TILE
            k += 1
    return starts, (segs[-1, 0] + segs[-1, 1] * TILE if segs.shape[0] else 0)


def _conv_forward_shifted(x, w2, kh, kw, ph, pw, b=None, relu=False):
    """conv_forward; with b (O,) and/or relu, + b[o] and max(., 0) as the outputs are copied out (fused)."""
    G = _Grid(x.shape, kh, kw, ph, pw)
    O, C = w2.shape[0], G.C
    offsets = np.array(G.offsets, np.int64)
    out = _empty((G.N, O, G.Ho * G.Wo), x.dtype)
    out4 = out.reshape(G.N, O, G.Ho, G.Wo)
    epilogue = b is not None or relu
    bias = np.zeros(O, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)

    P = _bcast_p(O, C, G.Wo, G.Wp, x.dtype)
    if P:  # output channels in the lanes, blocks along each output row stored straight into out (+ b, ReLU)
        groups = shifted_kernel.bcast_pack(np.ascontiguousarray(w2.reshape(O, C, kh * kw).transpose(2, 1, 0)), bias)

        def work(t, share):
            for r0, r1 in share:
                blocks = _row_blocks(r0, r1, G.Hp, G.Wp, 0, G.Ho, 0, G.Wo, P, kh, kw, 0, O)
                if len(blocks) == 0:
                    continue  # (a run of junk rows only)
                y = _scratch(t, "y", (C, int(blocks[-1, 0]) + P + G.slack), x.dtype)
                _window(x, ph, pw, G.Hp, G.Wp, r0 * G.Wp, y)
                shifted_kernel.bcast_gemm(groups, y, offsets, out4, blocks, P, relu)

        _run(G.row_runs(0, G.Ho), work, blas=False)
        return out

    MB, TILE = shifted_kernel.block_shape(x.dtype)
    taps = shifted_kernel.pack(w2.reshape(O, C, kh * kw).transpose(2, 0, 1), MB)  # w[:, :, u, v] per shift

    def work(t, share):
        for r0, r1 in share:  # the run's padded input, its output rows, then the valid outputs into out
            q0 = r0 * G.Wp
            starts, end = _tile_starts(_segments_needed(r0, r1, G.Hp, G.Wp, 0, G.Ho, TILE), TILE)
            if end == 0:
                continue  # (a run of junk rows only)
            y = _scratch(t, "y", (C, end + G.slack), x.dtype)
            _window(x, ph, pw, G.Hp, G.Wp, q0, y)
            part = _scratch(t, "out", (O, end), x.dtype)
            shifted_kernel.shifted_gemm(taps, y, offsets, part, starts)  # part[:, q] = sum_k w_k @ y[:, q + off_k]
            if epilogue:
                _extract_rows_epilogue(part, r0, r1, G.Hp, G.Wp, bias, relu, out4)
            else:
                _extract_rows(part, r0, r1, G.Hp, G.Wp, 0, 0, out4)

    _run(G.row_runs(0, G.Ho), work, blas=False)  # (our kernels: no BLAS calls)
    return out


def _conv_weight_grad_shifted(g, x, kh, kw, ph, pw, y=None, bias=False):
    """(dw2, db): the weight gradient, and with bias the bias gradient summed from the same copies of g (else
    None); with y (N, O, Ho*Wo), g masked by y > 0 as it is copied (ReLU's backward, fused)."""
    # dw[o, c, u, v] = sum_q g[o, q] * y[c, q + offset(u, v)] over the grid positions q of every run: per run
    # ONE dot-product GEMM, g on the grid (O x positions) against the C * kh * kw rows of y starting at
    # c * (row length) + offset(u, v) -- which come out in w's own (O, C, kh, kw) order.
    G = _Grid(x.shape, kh, kw, ph, pw)
    O, C = g.shape[1], G.C
    VW = shifted_kernel.dot_shape(x.dtype)[2]
    g4 = _c(g).reshape(G.N, O, G.Ho, G.Wo)
    y4 = None if y is None else _c(y).reshape(G.N, O, G.Ho, G.Wo)
    offsets = np.array(G.offsets, np.int64)
    parts, db_parts = {}, {}
    # g's channels in the lanes, sums over the valid columns only -- where the junk columns are >= 15% of the
    # grid: SRCNN's 64 -> 32 5x5 'valid' (21 of 25) 0.95x gemm_nt's time, but VDSR's and EDSR's 3x3 'same' (41 of
    # 43, 48 of 50) 1.06-1.07x, EDSR's 64 -> 256 1.28x, SRResNet's 24-wide rows 1.48x (g's copy positions x
    # channels and the per-row segments cost more than the few junk columns)
    if _bcast_p(O, C, G.Wo, G.Wp, x.dtype, max_work=_BCAST_DOT_MAX_WORK):

        def work_bcast(t, share):
            acc = parts[t] = np.zeros((O, C * kh * kw), x.dtype)
            db = db_parts[t] = np.zeros(O, np.float64)
            for r0, r1 in share:
                segs = _row_segments(r0, r1, G.Hp, G.Wp, G.Ho, G.Wo)
                if len(segs) == 0:
                    continue  # (a run of junk rows only)
                span = (r1 - r0) * G.Wp
                y = _scratch(t, "y", (C, span + G.slack), x.dtype)
                _window(x, ph, pw, G.Hp, G.Wp, r0 * G.Wp, y)
                gt = _scratch(t, "g_t", (span, O), x.dtype)
                _window_t(g4, g4 if y4 is None else y4, y4 is not None, G.Hp, G.Wp, r0, r1, gt, db, bias)
                rows = (np.arange(C)[:, None] * y.shape[1] + offsets).reshape(-1)
                shifted_kernel.bcast_dot(gt, y.reshape(-1), rows, acc, segs)

        _run(G.row_runs(0, G.Ho), work_bcast, blas=False)
        return _sum_parts(parts), (_sum_parts(db_parts).astype(x.dtype) if bias else None)

    def work(t, share):
        acc = parts[t] = np.zeros((O, C * kh * kw), x.dtype)
        db = db_parts[t] = np.zeros(O, np.float64) if bias else None
        for r0, r1 in share:
            q0, cnt = r0 * G.Wp, (r1 - r0) * G.Wp
            segs = _segments_needed(r0, r1, G.Hp, G.Wp, 0, G.Ho, VW)  # the output rows, in whole vectors
            if len(segs) == 0:
                continue  # (a run of junk rows only)
            span = max(cnt, int(segs[-1, 0] + segs[-1, 1] * VW))  # (g is 0 past the run)
            y = _scratch(t, "y", (C, span + G.slack), x.dtype)
            _window(x, ph, pw, G.Hp, G.Wp, q0, y)
            gr = _scratch(t, "g", (O, span), x.dtype)
            if y4 is None:
                _window(g4, 0, 0, G.Hp, G.Wp, q0, gr)  # g on the grid, 0 at junk positions
            else:
                _window_masked(g4, y4, G.Hp, G.Wp, q0, gr)  # the same, times [y > 0]
            gr[:, cnt:] = 0
            if bias:
                _add_row_sums(gr, db)
            rows = (np.arange(C)[:, None] * y.shape[1] + offsets).reshape(-1)
            shifted_kernel.gemm_nt(gr, y.reshape(-1), rows, acc, segs)

    _run(G.row_runs(0, G.Ho), work, blas=False)  # (our kernels: no BLAS calls)
    return _sum_parts(parts), (_sum_parts(db_parts).astype(x.dtype) if bias else None)


def _conv_input_grad_shifted(w2, g, x_shape, kh, kw, ph, pw, y=None):
    """conv_input_grad; with y (N, O, Ho*Wo), g masked by y > 0 as it is copied (ReLU's backward, fused)."""
    # The forward's adjoint, as a gather: position q of the padded input's gradient collects
    #     dy[:, q] = sum_k w_k^T @ g[:, q - offset_k]
    # so each run of grid rows reads g from `slack` positions before its start (0 before the first image).
    G = _Grid(x_shape, kh, kw, ph, pw)
    O, C = w2.shape[0], G.C
    offsets = np.array([G.slack - off for off in G.offsets], np.int64)
    g4 = _c(g).reshape(G.N, O, G.Ho, G.Wo)
    y4 = None if y is None else _c(y).reshape(G.N, O, G.Ho, G.Wo)
    dx = _empty(x_shape, g.dtype)
    P = _bcast_p(C, O, x_shape[3], G.Wp, g.dtype, _taps_kept(x_shape[2], G.Ho, kh, ph))
    if P:  # input channels in the lanes, blocks along each image row into dx, the zero rows of g's border skipped
        groups = shifted_kernel.bcast_pack(np.ascontiguousarray(w2.reshape(O, C, kh * kw).transpose(2, 0, 1)))

        def work(t, share):
            for r0, r1 in share:
                blocks = _row_blocks(r0, r1, G.Hp, G.Wp, ph, G.Hp - ph, pw, x_shape[3], P, kh, kw, G.Ho, C)
                if len(blocks) == 0:
                    continue  # (a run of padding rows only)
                gr = _scratch(t, "g", (O, G.slack + int(blocks[-1, 0]) + P), g.dtype)
                if y4 is None:
                    _window(g4, 0, 0, G.Hp, G.Wp, r0 * G.Wp - G.slack, gr)
                else:
                    _window_masked(g4, y4, G.Hp, G.Wp, r0 * G.Wp - G.slack, gr)
                shifted_kernel.bcast_gemm(groups, gr, offsets, dx, blocks, P)

        _run(G.row_runs(ph, G.Hp - ph), work, blas=False)
        return dx

    MB, TILE = shifted_kernel.block_shape(g.dtype)
    taps = shifted_kernel.pack(w2.reshape(O, C, kh * kw).transpose(2, 1, 0), MB)  # w[:, :, u, v]^T per shift

    def work(t, share):
        for r0, r1 in share:
            q0 = r0 * G.Wp
            starts, end = _tile_starts(_segments_needed(r0, r1, G.Hp, G.Wp, ph, G.Hp - ph, TILE), TILE)
            if end == 0:
                continue  # (a run of padding rows only)
            gr = _scratch(t, "g", (O, G.slack + end), g.dtype)
            if y4 is None:
                _window(g4, 0, 0, G.Hp, G.Wp, q0 - G.slack, gr)  # g on the grid, 0 at junk positions
            else:
                _window_masked(g4, y4, G.Hp, G.Wp, q0 - G.slack, gr)  # the same, times [y > 0]
            dy = _scratch(t, "dy", (C, end), g.dtype)
            shifted_kernel.shifted_gemm(taps, gr, offsets, dy, starts)
            _extract_rows(dy, r0, r1, G.Hp, G.Wp, ph, pw, dx)

    _run(G.row_runs(ph, G.Hp - ph), work, blas=False)  # (our kernels: no BLAS calls)
    return dx
