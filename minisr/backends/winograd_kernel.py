"""The hand-written CPU kernels of Winograd F(4x4, 3x3) and F(2x2, 5x5) with the channels in the SIMD lanes (LLVM
IR built with llvmlite, like :mod:`minisr.backends.shifted_kernel`, whose function builder they use). Four of
them, one per step of a tile's way through the convolution (the math, as the paper's matrices, is in
:mod:`winograd_reference`; the driver is :mod:`minisr.backends.numba.winograd_lanes`). Both algorithms use the 6
points 0, +-1, +-2 and infinity, so a tile is a 6 x 6 patch either way and B^T is the same; only the output
transform A^T (4 x 6 or 2 x 6: the tile's m x m outputs) and the filter transform G (6 x 3 or 6 x 5) differ:

    wino_in:    V[xi, k, c] = (B^T d_k B)[xi]          d_k the 6 x 6 patch of tile k in a zero-padded NHWC copy of
                                                       the input (channels c: VW at a time, one vector each)
    wino_gemm:  M[xi, k, o] = sum_c V[xi, k, c] U[xi, c, o]        36 GEMMs, U = G w G^T
    wino_out:   out[n, o, m tr + i, m tc + j] = (A^T M[:, k, o] A)[i, j] + bias[o]   (ReLU'd when asked), stored
                                                       lane by lane straight into the NCHW output, inside its edges
    wino_gout:  dM[xi, k, o] = (A g_k A^T)[xi]         the output transform's adjoint, for the weight gradient
                                                       dU[xi] += dM[xi]^T V[xi] (wino_gemm again), dw = G^T dU G

Why channels in the lanes: a tile's 36 numbers per channel are then 36 vectors of VW channels, its transforms a
few dozen vector adds with no shuffles, and the loads and stores whole vectors; the tile row of a 41 x 41 image is
11 tiles long, too short to fill vectors of tiles (an F(2x2, 3x3) version with the tiles in the lanes spent as
long in its transforms as its GEMMs saved: bench/RESULTS.md). The GEMM is ``bcast_gemm``'s register scheme
(P tiles x OV vectors of output channels, one V number broadcast at a time) with vector stores into M.

F(4x4, 3x3): 36 multiplies per 16 outputs and channel pair, against 144 for the direct sum (4x fewer);
F(2x2, 5x5): 36 per 4 against 100 (2.8x fewer). The transform coefficients are 1, 2, 4, 5 and 8, so float32
loses ~10x more bits than the direct sum (measured in bench/RESULTS.md).
"""

from __future__ import annotations

import numpy as np

from .shifted_kernel import _cached, _Function, _machine


def _consts(f):
    """c(v): the vector with v in every lane; fma(x, y, z) = x * y + z."""
    return (lambda v: f.ir.Constant(f.vec, [float(v)] * f.VW)), (lambda x, y, z: f.b.call(f.fma, [x, y, z]))


def _bt(f, d):
    """B^T d for a column d of 6 vectors (B^T = [[4,0,-5,0,1,0], [0,-4,-4,1,1,0], [0,4,-4,-1,1,0],
    [0,-2,-1,2,1,0], [0,2,-1,-2,1,0], [0,4,0,-5,0,1]]), in 16 vector operations."""
    b, (c, fma) = f.b, _consts(f)
    d0, d1, d2, d3, d4, d5 = d
    s12, s34 = b.fadd(d1, d2), b.fadd(d3, d4)
    d12, d43 = b.fsub(d1, d2), b.fsub(d4, d3)
    d31, d42 = b.fsub(d3, d1), b.fsub(d4, d2)
    return [fma(c(4), d0, fma(c(-5), d2, d4)), fma(c(-4), s12, s34), fma(c(4), d12, d43),
            fma(c(2), d31, d42), fma(c(-2), d31, d42), fma(c(4), d1, fma(c(-5), d3, d5))]


def _at(f, m):
    """A^T m for a column m of 6 vectors (A^T = [[1,1,1,1,1,0], [0,1,-1,2,-2,0], [0,1,1,4,4,0],
    [0,1,-1,8,-8,1]]): 4 vectors."""
    b, (c, fma) = f.b, _consts(f)
    m0, m1, m2, m3, m4, m5 = m
    s12, d12 = b.fadd(m1, m2), b.fsub(m1, m2)
    s34, d34 = b.fadd(m3, m4), b.fsub(m3, m4)
    return [b.fadd(b.fadd(m0, s12), s34), fma(c(2), d34, d12), fma(c(4), s34, s12), fma(c(8), d34, b.fadd(d12, m5))]


def _a(f, g):
    """A g for a column g of 4 vectors (A = (A^T)^T: rows [1,0,0,0], [1,1,1,1], [1,-1,1,-1], [1,2,4,8], [1,-2,4,-8],
    [0,0,0,1]): 6 vectors."""
    b, (c, fma) = f.b, _consts(f)
    g0, g1, g2, g3 = g
    s02, s13 = b.fadd(g0, g2), b.fadd(g1, g3)
    t02, t13 = fma(c(4), g2, g0), fma(c(8), g3, b.fmul(c(2), g1))
    return [g0, b.fadd(s02, s13), b.fsub(s02, s13), b.fadd(t02, t13), b.fsub(t02, t13), g3]


def _at2(f, m):
    """A^T m for F(2, 5) (A^T = [[1,1,1,1,1,0], [0,1,-1,2,-2,1]]): 2 vectors."""
    b, (c, fma) = f.b, _consts(f)
    m0, m1, m2, m3, m4, m5 = m
    return [b.fadd(b.fadd(m0, b.fadd(m1, m2)), b.fadd(m3, m4)),
            fma(c(2), b.fsub(m3, m4), b.fadd(b.fsub(m1, m2), m5))]


def _a2(f, g):
    """A g for F(2, 5) and a column g of 2 vectors (rows [1,0], [1,1], [1,-1], [1,2], [1,-2], [0,1]): 6 vectors."""
    b, (c, fma) = f.b, _consts(f)
    g0, g1 = g
    return [g0, b.fadd(g0, g1), b.fsub(g0, g1), fma(c(2), g1, g0), fma(c(-2), g1, g0), g1]


#: the output transform A^T and its adjoint A, by the tile's output size m (F(4x4, 3x3) and F(2x2, 5x5))
_OUTPUT = {4: _at, 2: _at2}
_ADJOINT = {4: _a, 2: _a2}


def _build_patch(name, dtype, n, transform, with_sum):
    """name(X, SUM, OUT, OFFS, -, ntiles, CV, ROW, CP, LDO): for tile k < ntiles with its n x n patch's top-left at
    X[OFFS[k]] (NHWC, CP channels, rows ROW numbers apart) and each of the CV vectors of channels:
    OUT[xi * LDO + k * CP + channels] = (T d T^T)[xi], T the 6 x n ``transform``; with_sum: SUM[channels] += the
    patch's sum. wino_in is (n, T) = (6, B^T), wino_gout (m, A) with the sum (the bias gradient)."""
    f = _Function(name, dtype, 5, 1, 1)
    b, const, VW = f.b, f.const, f.VW
    X, SUM, OUT, OFFS, _, NT, CV, ROW, CP, LDO = f.fn.args

    def tile(k):
        off, vk = b.load(b.gep(OFFS, [k])), b.mul(k, CP)

        def channels(cv):
            o = b.mul(cv, const(VW))
            at = b.add(off, o)
            q, total = [], None  # q[s][r'] = (T d)[r', s], column by column
            for s in range(n):
                col = [f.vector(X, b.add(at, b.add(b.mul(const(r), ROW), b.mul(const(s), CP)))) for r in range(n)]
                q.append(transform(f, col))
                if with_sum:
                    for v in col:
                        total = v if total is None else b.fadd(total, v)
            vo = b.add(vk, o)
            for r in range(6):
                v = transform(f, [q[s][r] for s in range(n)])  # row r' of T d T^T
                for s in range(6):
                    b.store(v[s], f.vector_ptr(OUT, b.add(b.mul(const(r * 6 + s), LDO), vo)), align=f.it)
            if with_sum:
                at_sum = f.vector_ptr(SUM, o)
                b.store(b.fadd(b.load(at_sum, align=f.it), total), at_sum, align=f.it)

        f.loop(CV, channels)

    f.loop(NT, tile)
    return f.compile()


def _build_in(dtype):
    """win(X, -, V, OFFS, -, ntiles, CV, ROW, CP, LDV): V[xi * LDV + k * CP + channels] = (B^T d B)[xi] for tile k's
    6 x 6 patch d at X[OFFS[k]]."""
    return _build_patch("wino_in", dtype, 6, _bt, False)


def _build_gout(dtype, m):
    """wgout(G, DB, DM, OFFS, -, ntiles, OVN, ROW, OP, LDM): DM[xi * LDM + k * OP + channels] = (A g A^T)[xi] for tile
    k's m x m block g of the output gradient at G[OFFS[k]] (the adjoint of the output transform), and DB[channels]
    += the block's sum (the bias gradient)."""
    return _build_patch("wino_gout", dtype, m, _ADJOINT[m], True)


def _build_out(dtype, relu: bool, m):
    """wout(M, BIAS, OUT, TILES, -, ntiles, O, LDM, OP, LDO, WO): for tile k < ntiles, (o0, rows, cols) =
    TILES[3 k .. 3 k + 2] (o0 the flat index of out[n, 0, m tr, m tc]) and each output channel o < O:
    out[o0 + o * LDO + i * WO + j] = (A^T M[:, k, o] A)[i, j] + BIAS[o] (max(., 0) with relu) for i < rows,
    j < cols, M[xi, k, o] at M[xi * LDM + k * OP + o]. (Whole vectors of channels, then a last one's lanes < O.)"""
    f = _Function("wino_out", dtype, 6, 1, 1)
    b, const, VW, at_ = f.b, f.const, f.VW, _OUTPUT[m]
    M, BIAS, OUT, TILES, _, NT, O, LDM, OP, LDO, WO = f.fn.args

    def tile(k):
        o0, rows, cols = (b.load(b.gep(TILES, [b.add(b.mul(k, const(3)), const(j))])) for j in range(3))
        mk = b.mul(k, OP)

        def channels(ov, tail=None):
            o = b.mul(ov, const(VW))
            at = b.add(mk, o)
            q = [at_(f, [f.vector(M, b.add(b.mul(const(r * 6 + s), LDM), at)) for r in range(6)])
                 for s in range(6)]  # q[s][i] = (A^T M)[i, s]
            bias = f.vector(BIAS, o)
            first = b.add(o0, b.mul(o, LDO))
            for i in range(m):
                with b.if_then(b.icmp_signed("<", const(i), rows)):
                    y = at_(f, [q[s][i] for s in range(6)])  # row i of A^T M A
                    for j in range(m):
                        with b.if_then(b.icmp_signed("<", const(j), cols)):
                            v = b.fadd(y[j], bias)
                            if relu:  # (v <= 0 -> 0; a NaN stays NaN, as relu_forward)
                                v = b.select(b.fcmp_ordered("<=", v, f.zero()), f.zero(), v)
                            row = b.add(first, b.add(b.mul(const(i), WO), const(j)))
                            for lane in range(VW):
                                at = b.gep(OUT, [b.add(row, b.mul(const(lane), LDO))])
                                if tail is None:
                                    b.store(f.lane(v, lane), at)
                                else:
                                    with b.if_then(b.icmp_signed("<", const(lane), tail)):
                                        b.store(f.lane(v, lane), at)

        whole = b.sdiv(O, const(VW))
        f.loop(whole, channels)
        tail = b.sub(O, b.mul(whole, const(VW)))
        with b.if_then(b.icmp_signed(">", tail, const(0))):
            channels(whole, tail)

    f.loop(NT, tile)
    return f.compile()


def _build_gemm(P: int, OV: int, dtype, accumulate: bool):
    """wgemm(A, B, OUT, -, -, K, NXI, NB, LDA, LDB, LDO, SA, SBP, SBK, SOP): for xi < NXI and blocks of P rows p,

        OUT[xi LDO + p SOP + o] (+)= sum_(k < K) B[xi LDB + p SBP + k SBK] * A[xi LDA + k SA + o]    o < OV * VW

    (B broadcast, A's row of OV vectors loaded, P x OV accumulators; += with accumulate). The forward's 36 GEMMs
    M[xi] = V[xi] @ U[xi] are (A, B, OUT) = (U, V, M), the weight gradient's dU[xi] += dM[xi]^T V[xi] are
    (V, dM, dU) with k over the tiles."""
    f = _Function("wino_gemm", dtype, 10, P, OV)
    b, acc, const, VW = f.b, f.acc, f.const, f.VW
    A, B, OUT, _, _, K, NXI, NB, LDA, LDB, LDO, SA, SBP, SBK, SOP = f.fn.args

    def position(xi):
        a0, b0, o0 = b.mul(xi, LDA), b.mul(xi, LDB), b.mul(xi, LDO)

        def block(t):
            p0 = b.mul(t, const(P))
            bp = b.add(b0, b.mul(p0, SBP))
            f.clear()

            def step(k):
                ak = b.add(a0, b.mul(k, SA))
                ws = [f.vector(A, b.add(ak, const(v * VW))) for v in range(OV)]
                bk = b.add(bp, b.mul(k, SBK))
                for p in range(P):
                    s = f.broadcast(B, b.add(bk, b.mul(const(p), SBP)))
                    for v in range(OV):
                        b.store(b.call(f.fma, [s, ws[v], b.load(acc[p][v])]), acc[p][v])

            f.loop(K, step)
            op = b.add(o0, b.mul(p0, SOP))
            for p in range(P):
                for v in range(OV):
                    at = f.vector_ptr(OUT, b.add(op, b.add(b.mul(const(p), SOP), const(v * VW))))
                    total = b.load(acc[p][v])
                    if accumulate:
                        total = b.fadd(b.load(at, align=f.it), total)
                    b.store(total, at, align=f.it)

        f.loop(NB, block)

    f.loop(NXI, position)
    return f.compile()


def shape(O: int, dtype) -> tuple[int, int, int]:
    """(P, OV, VW) of ``wino_gemm`` for O output channels: OV vectors of VW channels per group (at most 4) and P
    tiles per block, filling the registers (P * OV accumulators + OV weight vectors + 1 broadcast)."""
    *_, vbytes, regs = _machine()
    VW = vbytes // np.dtype(dtype).itemsize
    OV = min(4 if regs >= 32 else 2, -(-O // VW))
    return min(14, (regs - 1 - OV) // OV), OV, VW


def dot_groups(Cp: int, dtype) -> list:
    """[(first channel, vectors, P, kernel)]: the weight gradient's accumulating GEMMs over groups of at most 4 (2
    with 16 registers) vectors of Cp input channels (a whole number of vectors), P output channels per block (a
    power of 2 <= VW that fits the registers, so that P divides the padded output channels)."""
    *_, vbytes, regs = _machine()
    VW = vbytes // np.dtype(dtype).itemsize
    groups, c0 = [], 0
    while c0 < Cp:
        ov = min(4 if regs >= 32 else 2, (Cp - c0) // VW)
        P = 8
        while P > 1 and (P * ov + ov + 1 > regs or VW % P):
            P //= 2
        groups.append((c0, ov, P, gemm_kernel(P, ov, dtype, accumulate=True)))
        c0 += ov * VW
    return groups


def in_kernel(dtype):
    return _cached(_build_in, np.dtype(dtype))


def out_kernel(dtype, relu: bool = False, m: int = 4):
    return _cached(_build_out, np.dtype(dtype), bool(relu), int(m))


def gout_kernel(dtype, m: int = 4):
    return _cached(_build_gout, np.dtype(dtype), int(m))


def gemm_kernel(P: int, OV: int, dtype, accumulate: bool = False):
    return _cached(_build_gemm, P, OV, np.dtype(dtype), bool(accumulate))
