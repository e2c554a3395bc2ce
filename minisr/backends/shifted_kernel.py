"""The hand-written CPU kernels of the stride-1 convolutions, in LLVM IR built with llvmlite (the compiler
library under Numba), compiled at first use for this machine's CPU. Four of them:

    shifted_gemm:  out[m, n] = sum_k sum_c A[k, m, c] * B[c, n + offs[k]]        n in the tiles at starts[t]
                   (c over all of B's rows, or per tap over a range of them)
    gemm_nt:       out[m, n] += sum_q A[m, q] * B[boffs[n] + q]                 q in the segments segs[s]
    bcast_gemm:    out[m, n] = sum_(k0 <= k < k1) sum_c A[k, c, m] * B[c, n + offs[k]]
                   n in the blocks of P positions at blocks[t] (each with its own taps k0 .. k1 - 1)
    bcast_dot:     out[m, n] += sum_q G[q, m] * B[boffs[n] + q]                  q in the segments segs[s]

With B a zero-padded image (channels x positions of its padded grid) and offs[k] the grid offset of the
filter's tap k, shifted_gemm is a convolution's forward (A = the weights, tap by tap), and with B the output
gradient and mirrored offsets its input gradient (A = the weights transposed). gemm_nt with A the output
gradient on the grid and B's rows the image's channels at each tap's offset is its weight gradient. (See
the Numba backend's "shifted GEMMs", minisr/backends/numba/conv_shifted.py.)

Why not a BLAS call per tap: each of the kh*kw GEMMs has a short inner dimension (C = 64) and reads and writes
the whole output block again, so they ran at ~50-65% of this machine's sgemm rate, where PyTorch's (oneDNN's)
direct convolutions run at ~95%. Why not Numba: LLVM does not keep a Numba loop's accumulator array in
registers (measured: 20 GFLOP/s). Here the accumulators are SSA values of vector type, so they stay in
registers for the whole sum. shifted_gemm:

    for each tile of TILE = NV * VW columns n (VW = numbers per SIMD register), n from starts[t]:
        for each block of MB rows m:
            acc[MB][NV] = 0                                   MB*NV registers (8 x 3 with AVX-512)
            for k in taps:  for c in 0..K-1:
                b[v]    = B[c, n + offs[k] + v*VW : ... + VW]           NV unaligned vector loads
                acc[i][v] += broadcast(A[k, m + i, c]) * b[v]          MB*NV fused multiply-adds
            out[m + i, n + v*VW : ... + VW] = acc[i][v]

A step reads MB + NV*VW numbers for MB*NV*VW multiply-adds, and the row blocks of a tile reuse the same B
columns from the L1 cache; ``pack`` lays A out in the order the kernel reads it. gemm_nt keeps MB x NB
vectors of partial sums over q (4 x 6 with AVX-512: MB + NB vector loads per MB*NB multiply-adds) and adds
each one's lanes into out at the end.

bcast_gemm is shifted_gemm with the roles of the operands' axes swapped: the rows m (output channels) in the
SIMD lanes, A's column of them loaded as vectors, and B broadcast one position at a time -- P positions x OV
vectors of accumulators. Its blocks are therefore any P positions (shifted_gemm's tiles are runs of NV*VW
columns, junk columns and all) with any range of taps. bcast_dot is gemm_nt the same way round (G's channels in
the lanes, B's rows broadcast): its segments of q are any positions, not whole vectors of them.

The tiles' starts (and gemm_nt's segments of q) are arguments so that a convolution computes only the grid
positions it needs: below an image's last output row, a 'valid' convolution's grid holds kh - 1 rows of junk
(SRCNN's 25x25 grid of 21x21 outputs: 16% of the work), and a run of rows spanning several images can skip
them in one call.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

_lock = threading.Lock()
_kernels: dict = {}
_state: dict = {}


def _machine():
    """(CPU name, its features, SIMD register bytes, register count), once."""
    if "cpu" not in _state:
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        features = llvm.get_host_cpu_features()
        _state["cpu"] = (llvm.get_host_cpu_name(), features.flatten())
        _state["simd"] = (64, 32) if features.get("avx512f", False) else (32, 16)
    return (*_state["cpu"], *_state["simd"])


_NV = 3  # SIMD registers of columns per tile of the shifted GEMM


def block_shape(dtype) -> tuple[int, int]:
    """(MB, TILE) of ``shifted_gemm``: the rows per block, that fit the registers left by the tile's (MB * NV
    accumulators + NV loads + 1 broadcast <= the register count; at most 8, which measured best), and the
    tile's columns (NV registers' worth)."""
    *_, vbytes, regs = _machine()
    return min(8, (regs - 1 - _NV) // _NV), _NV * vbytes // np.dtype(dtype).itemsize


class _Function:
    """An LLVM function being written: void name(real *A, real *B, real *out, int64 *offsets, int64 *starts,
    [real *...,] int64 ...), with the few helpers the kernels need. ``compile()`` returns it as a ctypes function (which
    releases the GIL while it runs)."""

    def __init__(self, name: str, dtype, n_ints: int, MB: int, NV: int, n_reals: int = 0):
        import llvmlite.ir as ir

        self.ir, self.name, self.n_ints, self.n_reals = ir, name, n_ints, n_reals
        self.it = np.dtype(dtype).itemsize
        self.VW = _machine()[2] // self.it  # numbers per SIMD register
        real = ir.FloatType() if self.it == 4 else ir.DoubleType()
        self.vec, self.i64 = ir.VectorType(real, self.VW), ir.IntType(64)
        self.module = ir.Module(name=name)
        ptr = real.as_pointer()
        self.fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [ptr, ptr, ptr] + [self.i64.as_pointer()] * 2
                                                           + [ptr] * n_reals + [self.i64] * n_ints), name)
        for a in self.fn.args[:5]:
            a.add_attribute("noalias")
        self.fma = ir.Function(self.module, ir.FunctionType(self.vec, [self.vec] * 3),
                               f"llvm.fmuladd.v{self.VW}f{8 * self.it}")
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        # MB x NV accumulators: stack slots here, which LLVM's mem2reg/SROA turns into registers
        self.acc = [[self.b.alloca(self.vec) for _ in range(NV)] for _ in range(MB)]

    def const(self, v):
        return self.ir.Constant(self.i64, v)

    def segments(self, segs, nseg, body):
        """for s < nseg: for t < segs[2 s + 1]: body(segs[2 s], t)"""
        b = self.b

        def segment(s):
            q0 = b.load(b.gep(segs, [b.mul(s, self.const(2))]))
            self.loop(b.load(b.gep(segs, [b.add(b.mul(s, self.const(2)), self.const(1))])), lambda t: body(q0, t))

        self.loop(nseg, segment)

    def clear(self):
        """Every accumulator = 0."""
        for row in self.acc:
            for a in row:
                self.b.store(self.zero(), a)

    def broadcast(self, base, index):
        """base[index] in every lane of a vector."""
        ir, b = self.ir, self.b
        i32 = ir.IntType(32)
        s = b.insert_element(ir.Constant(self.vec, ir.Undefined), b.load(b.gep(base, [index])), ir.Constant(i32, 0))
        return b.shuffle_vector(s, ir.Constant(self.vec, ir.Undefined), ir.Constant(ir.VectorType(i32, self.VW),
                                                                                    [0] * self.VW))

    def lane(self, v, i):
        """Lane i of vector v."""
        return self.b.extract_element(v, self.ir.Constant(self.ir.IntType(32), i))

    def zero(self):
        return self.ir.Constant(self.vec, [0.0] * self.VW)

    def vector(self, base, index):
        """The vector at base[index] (unaligned)."""
        return self.b.load(self.vector_ptr(base, index), align=self.it)

    def vector_ptr(self, base, index):
        return self.b.bitcast(self.b.gep(base, [index]), self.vec.as_pointer())

    def loop(self, n, body):
        """for (i = 0; i < n; i++) body(i)"""
        b = self.b
        before = b.block
        head, inside, after = (self.fn.append_basic_block() for _ in range(3))
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(self.i64)
        i.add_incoming(self.const(0), before)
        b.cbranch(b.icmp_signed("<", i, n), inside, after)
        b.position_at_end(inside)
        body(i)
        i.add_incoming(b.add(i, self.const(1)), b.block)
        b.branch(head)
        b.position_at_end(after)

    def compile(self):
        import llvmlite.binding as llvm

        self.b.ret_void()
        self.module.triple = llvm.get_process_triple()
        cpu, features, _, _ = _machine()
        # (a target machine per kernel: the execution engine below takes ownership of it)
        tm = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=3, jit=True)
        module = llvm.parse_assembly(str(self.module))
        module.verify()
        _optimise(llvm, module, tm)
        engine = llvm.create_mcjit_compiler(module, tm)
        engine.finalize_object()
        P, I = ctypes.c_void_p, ctypes.c_int64
        fn = ctypes.CFUNCTYPE(None, P, P, P, P, P, *[P] * self.n_reals, *[I] * self.n_ints)(
            engine.get_function_address(self.name))
        fn.engine = engine  # (keeps the machine code alive)
        return fn


def _optimise(llvm, module, tm) -> None:
    """LLVM's -O3 pipeline, without its vectorisers and unroller (the code is vector code already): through the
    new pass manager (llvmlite >= 0.44), or the legacy one of older llvmlite (untested here)."""
    if hasattr(llvm, "create_pass_builder"):
        options = llvm.create_pipeline_tuning_options()
        options.speed_level = 3
        options.loop_vectorization = options.slp_vectorization = options.loop_unrolling = False
        passes = llvm.create_pass_builder(tm, options)
        passes.getModulePassManager().run(module, passes)
    else:
        builder = llvm.create_pass_manager_builder()
        builder.opt_level = 3
        builder.loop_vectorize = builder.slp_vectorize = False
        manager = llvm.create_module_pass_manager()
        builder.populate(manager)
        manager.run(module)


def _build(MB: int, NV: int, dtype):
    """kern(A, B, out, taps, starts, nshift, K, ldb, ldo, ntiles, nmb): ``shifted_gemm`` for blocks of MB rows
    and tiles of NV vectors, tile t at column starts[t], A packed as ``pack`` does; tap k reads B from
    taps[2 k] (its offset, which may include whole rows: a first channel) over taps[2 k + 1] <= K channels."""
    f = _Function("kern", dtype, 6, MB, NV)
    b, acc, const, VW = f.b, f.acc, f.const, f.VW
    A, B, OUT, OFFS, STARTS, NSHIFT, K, LDB, LDO, NTILES, NMB = f.fn.args

    def tile(t):
        n = b.load(b.gep(STARTS, [t]))

        def row_block(mb):
            f.clear()
            a_block = b.mul(mb, b.mul(b.mul(NSHIFT, K), const(MB)))  # A packed (nmb, nshift, K, MB)

            def tap(k):
                nk = b.add(n, b.load(b.gep(OFFS, [b.mul(k, const(2))])))
                a_tap = b.add(a_block, b.mul(b.mul(k, K), const(MB)))

                def step(c):
                    col = b.add(b.mul(c, LDB), nk)
                    xs = [f.vector(B, b.add(col, const(v * VW))) for v in range(NV)]
                    a_at = b.add(a_tap, b.mul(c, const(MB)))
                    for i in range(MB):
                        s = f.broadcast(A, b.add(a_at, const(i)))
                        for v in range(NV):
                            b.store(b.call(f.fma, [s, xs[v], b.load(acc[i][v])]), acc[i][v])

                f.loop(b.load(b.gep(OFFS, [b.add(b.mul(k, const(2)), const(1))])), step)

            f.loop(NSHIFT, tap)
            for i in range(MB):
                row = b.add(b.mul(b.add(b.mul(mb, const(MB)), const(i)), LDO), n)
                for v in range(NV):
                    b.store(b.load(acc[i][v]), f.vector_ptr(OUT, b.add(row, const(v * VW))), align=f.it)

        f.loop(NMB, row_block)

    f.loop(NTILES, tile)
    return f.compile()


def _build_dot(MB: int, NB: int, dtype):
    """dot(A, B, out, boffs, segs, lda, ldo, nseg, nmb, nnb): ``gemm_nt`` for blocks of MB rows of A and NB rows
    of B (row n of B starts at B + boffs[n]): out[m, n] += sum_q A[m*lda + q] * B[boffs[n] + q] over the
    segments s < nseg of q, q = segs[2 s] + (0 .. segs[2 s + 1] * VW - 1)."""
    f = _Function("dot", dtype, 5, MB, NB)
    ir, b, acc, const, VW = f.ir, f.b, f.acc, f.const, f.VW
    A, B, OUT, BOFFS, SEGS, LDA, LDO, NSEG, NMB, NNB = f.fn.args
    i32 = ir.IntType(32)

    def lanes_sum(v):  # halve the vector until one lane is left
        width = VW
        while width > 1:
            width //= 2
            undef = ir.Constant(v.type, ir.Undefined)
            lo = b.shuffle_vector(v, undef, ir.Constant(ir.VectorType(i32, width), list(range(width))))
            hi = b.shuffle_vector(v, undef, ir.Constant(ir.VectorType(i32, width), list(range(width, 2 * width))))
            v = b.fadd(lo, hi)
        return b.extract_element(v, ir.Constant(i32, 0))

    def row_block(mb):
        a_rows = [b.mul(b.add(b.mul(mb, const(MB)), const(i)), LDA) for i in range(MB)]

        def col_block(nb):
            b_rows = [b.load(b.gep(BOFFS, [b.add(b.mul(nb, const(NB)), const(j))])) for j in range(NB)]
            f.clear()

            def step(q0, t):
                q = b.add(q0, b.mul(t, const(VW)))
                xs = [f.vector(A, b.add(r, q)) for r in a_rows]
                for j in range(NB):
                    y = f.vector(B, b.add(b_rows[j], q))
                    for i in range(MB):
                        b.store(b.call(f.fma, [xs[i], y, b.load(acc[i][j])]), acc[i][j])

            f.segments(SEGS, NSEG, step)
            for i in range(MB):
                row = b.mul(b.add(b.mul(mb, const(MB)), const(i)), LDO)
                for j in range(NB):
                    at = b.gep(OUT, [b.add(row, b.add(b.mul(nb, const(NB)), const(j)))])
                    b.store(b.fadd(b.load(at), lanes_sum(b.load(acc[i][j]))), at)

        f.loop(NNB, col_block)

    f.loop(NMB, row_block)
    return f.compile()


def _build_bcast(P: int, OV: int, dtype, relu: bool = False):
    """bcast(A, B, out, offs, blocks, bias, K, ldb, ldo, nblocks): ``bcast_gemm`` for blocks of P positions and OV
    vectors of output channels: block t is the positions q0 .. q0 + P - 1 summed over the taps k0 <= k < k1 and
    stored at out[o + m * ldo + p] (+ bias[m], then max(., 0) when relu), (q0, k0, k1, o) = blocks[4 t .. 4 t + 3];
    A packed (nshift, K, OV * VW). The sums are stored channel by channel -- P * OV * VW scalar stores per block
    against K * (k1 - k0) * P * OV vector multiply-adds (~1-3% of a block's instructions) -- so they can go
    straight into an NCHW tensor (o = the first output's index) or into shifted_gemm's (channels x positions)."""
    f = _Function("bcast", dtype, 4, P, OV, n_reals=1)  # acc[p][v]: position p, output channels v*VW .. v*VW + VW - 1
    b, acc, const, VW = f.b, f.acc, f.const, f.VW
    A, B, OUT, OFFS, BLOCKS, BIAS, K, LDB, LDO, NBLOCKS = f.fn.args
    OW = const(OV * VW)

    def block(t):
        q0, k0, k1, o0 = (b.load(b.gep(BLOCKS, [b.add(b.mul(t, const(4)), const(j))])) for j in range(4))
        f.clear()

        def tap(j):
            k = b.add(k0, j)
            qk = b.add(q0, b.load(b.gep(OFFS, [k])))
            a_tap = b.mul(b.mul(k, K), OW)

            def step(c):
                a_at = b.add(a_tap, b.mul(c, OW))
                ws = [f.vector(A, b.add(a_at, const(v * VW))) for v in range(OV)]
                at = b.add(b.mul(c, LDB), qk)
                for p in range(P):
                    s = f.broadcast(B, b.add(at, const(p)))
                    for v in range(OV):
                        b.store(b.call(f.fma, [s, ws[v], b.load(acc[p][v])]), acc[p][v])

            f.loop(K, step)

        f.loop(b.sub(k1, k0), tap)
        for v in range(OV):  # each lane (output channel) of the P vectors to its row, as scalars
            vs = [b.fadd(b.load(acc[p][v]), f.vector(BIAS, const(v * VW))) for p in range(P)]
            if relu:  # (v <= 0 -> 0; a NaN stays NaN, as relu_forward)
                vs = [b.select(b.fcmp_ordered("<=", x, f.zero()), f.zero(), x) for x in vs]
            for lane in range(VW):
                row = b.add(b.mul(const(v * VW + lane), LDO), o0)
                for p in range(P):
                    b.store(f.lane(vs[p], lane), b.gep(OUT, [b.add(row, const(p))]))

    f.loop(NBLOCKS, block)
    return f.compile()


def _build_bcast_dot(P: int, OV: int, dtype):
    """bdot(G, B, out, boffs, segs, ldg, ldo, nseg, npb): ``bcast_dot`` for blocks of P rows of B (row n at
    B + boffs[n]) and OV vectors of G's columns: out[o, n] += sum_q G[q, o] * B[boffs[n] + q] over the segments
    q0 <= q < q0 + count, (q0, count) = segs[2 s .. 2 s + 1]."""
    f = _Function("bdot", dtype, 4, P, OV)  # acc[p][v]: row p of the block, G's columns v*VW .. v*VW + VW - 1
    b, acc, const, VW = f.b, f.acc, f.const, f.VW
    G, B, OUT, BOFFS, SEGS, LDG, LDO, NSEG, NPB = f.fn.args

    def pair_block(pb):
        rows = [b.load(b.gep(BOFFS, [b.add(b.mul(pb, const(P)), const(p))])) for p in range(P)]
        f.clear()

        def step(q0, t):
            q = b.add(q0, t)
            gs = [f.vector(G, b.add(b.mul(q, LDG), const(v * VW))) for v in range(OV)]
            for p in range(P):
                x = f.broadcast(B, b.add(rows[p], q))
                for v in range(OV):
                    b.store(b.call(f.fma, [x, gs[v], b.load(acc[p][v])]), acc[p][v])

        f.segments(SEGS, NSEG, step)
        for v in range(OV):  # out[o, n] += each lane (column o of G) of the P sums, as scalars
            vs = [b.load(acc[p][v]) for p in range(P)]
            for lane in range(VW):
                row = b.add(b.mul(const(v * VW + lane), LDO), b.mul(pb, const(P)))
                for p in range(P):
                    at = b.gep(OUT, [b.add(row, const(p))])
                    b.store(b.fadd(b.load(at), f.lane(vs[p], lane)), at)

    f.loop(NPB, pair_block)
    return f.compile()


def available() -> bool:
    """Whether the kernel compiles here (once; a failure is reported as a warning and the convolutions
    fall back to im2col + BLAS)."""
    if "available" not in _state:
        try:
            kernel(1, 1, np.float32)
            _state["available"] = True
        except Exception as e:  # noqa: BLE001 -- any failure of llvmlite/LLVM here means "not on this machine"
            import warnings

            warnings.warn(f"minisr: the shifted-GEMM CPU kernel did not compile ({e!r}); convolutions use "
                          "im2col + BLAS instead", RuntimeWarning, stacklevel=2)
            _state["available"] = False
    return _state["available"]


def kernel(MB: int, NV: int, dtype):
    """The compiled shifted-GEMM kernel for MB rows x NV vectors and this dtype (float32 or float64), built
    once."""
    return _cached(_build, MB, NV, np.dtype(dtype))


def dot_kernel(MB: int, NB: int, dtype):
    """The compiled dot kernel for MB rows of A x NB rows of B, built once."""
    return _cached(_build_dot, MB, NB, np.dtype(dtype))


def bcast_kernel(P: int, OV: int, dtype, relu: bool = False):
    """The compiled broadcast kernel for P positions x OV vectors of output channels (with the ReLU), built once."""
    return _cached(_build_bcast, P, OV, np.dtype(dtype), bool(relu))


def bcast_dot_kernel(P: int, OV: int, dtype):
    """The compiled broadcast dot kernel for P rows of B x OV vectors of G's columns, built once."""
    return _cached(_build_bcast_dot, P, OV, np.dtype(dtype))


def _cached(build, *key):
    with _lock:
        if (build, *key) not in _kernels:
            # LLVM's global context is not thread-safe: build under Numba's compiler lock, so a kernel compiled
            # on a conv worker never runs beside a Numba compile in another thread
            from numba.core.compiler_lock import global_compiler_lock

            with global_compiler_lock:
                _kernels[(build, *key)] = build(*key)
        return _kernels[(build, *key)]


def pack(a_taps: np.ndarray, MB: int) -> list:
    """A (nshift, M, K) -> [(first row, rows per block, packed (M' / MB', nshift, K, MB'))]: the rows in
    blocks of MB, then the last M % MB rows as one block (their own kernel), each block's numbers in the
    order the kernel reads them."""
    nshift, M, K = a_taps.shape
    full = M // MB * MB
    blocks = []
    for m0, m1, mb in ((0, full, MB), (full, M, M - full)):
        if m1 > m0:
            part = a_taps[:, m0:m1].reshape(nshift, (m1 - m0) // mb, mb, K).transpose(1, 0, 3, 2)
            blocks.append((m0, mb, np.ascontiguousarray(part)))
    return blocks


def _check(ok: bool, what) -> None:
    """Raise when not ``ok``; ``what()`` describes the arguments (a function: formatting shapes on every call of
    a kernel that takes ~50 us costs more than the check itself)."""
    if not ok:
        raise ValueError(f"shifted kernel: {what()}: out of bounds or wrong layout")


def tile_starts(ntiles: int, dtype) -> np.ndarray:
    """The columns 0, TILE, 2 TILE, ... of ``ntiles`` tiles side by side: ``shifted_gemm``'s starts for a whole
    block of columns."""
    return np.arange(ntiles, dtype=np.int64) * block_shape(dtype)[1]


def tap_table(offs: np.ndarray, K: int, chans: np.ndarray | None = None, ldb: int = 0) -> np.ndarray:
    """The kernel's per-tap table, (nshift, 2) int64: tap k's offset into B (``offs[k]``, plus ``chans[k, 0]``
    whole rows of ``ldb`` numbers) and its channel count (``chans[k, 1]``; all K without ``chans``)."""
    table = np.empty((len(offs), 2), np.int64)
    table[:, 0] = offs
    table[:, 1] = K
    if chans is not None:
        table[:, 0] += chans[:, 0] * ldb
        table[:, 1] = chans[:, 1]
    return table


def shifted_gemm(blocks: list, B: np.ndarray, offs: np.ndarray, out: np.ndarray, starts: np.ndarray,
                 chans: np.ndarray | None = None) -> None:
    """out[m, n] = sum_k sum_c A[k, m, c] * B[c, n + offs[k]] for the columns n of the tiles that start at
    ``starts`` (int64; TILE columns each, TILE from ``block_shape(dtype)``; other columns of out are not
    written), A as packed by ``pack(A, block_shape(dtype)[0])``. B and out are C-contiguous 2-D arrays of A's
    dtype, and B holds every column read: B.shape[1] >= max(starts) + TILE + max(offs).

    With ``chans`` ((nshift, 2) int64), tap k sums over the channels c0 <= c < c0 + count only, (c0, count) =
    chans[k], with A[k, m, c - c0] as their weights: out[m, n] = sum_k sum_c A[k, m, c - c0_k] B[c, n + offs[k]]
    (a strided convolution's polyphase taps, which each see some of the phases: no multiply by 0)."""
    TILE = block_shape(B.dtype)[1]
    M = sum(packed.shape[0] * mb for _, mb, packed in blocks)
    end = int(starts.max()) + TILE if len(starts) else 0
    K = blocks[0][2].shape[2]
    _check(B.flags.c_contiguous and out.flags.c_contiguous and B.dtype == out.dtype == blocks[0][2].dtype
           and (K == B.shape[0] if chans is None else
                chans.shape == (len(offs), 2) and chans.min() >= 0 and int(chans[:, 1].max()) <= K
                and int((chans[:, 0] + chans[:, 1]).max()) <= B.shape[0])
           and out.shape[0] >= M and out.shape[1] >= end
           and offs.dtype == starts.dtype == np.int64 and starts.flags.c_contiguous and offs.min() >= 0
           and (len(starts) == 0 or starts.min() >= 0) and B.shape[1] >= end + int(offs.max()),
           lambda: f"B {B.shape} {B.dtype}, out {out.shape} {out.dtype}, {M} rows, tiles of {TILE} from "
                   f"{starts.min() if len(starts) else '-'} to {end}, offsets {offs.min()}..{offs.max()}"
                   + ("" if chans is None else f", channels {chans.tolist()}"))
    table = tap_table(offs, K, chans, B.shape[1])
    for m0, mb, packed in blocks:
        nshift, K = packed.shape[1], packed.shape[2]
        kernel(mb, _NV, B.dtype)(packed.ctypes.data, B.ctypes.data, out[m0:].ctypes.data, table.ctypes.data,
                                 starts.ctypes.data, nshift, K, B.shape[1], out.shape[1], len(starts),
                                 packed.shape[0])


def dot_shape(dtype) -> tuple[int, int, int]:
    """(MB, NB, VW) of ``gemm_nt``: rows of A and of B per block (MB*NB accumulators + MB loaded rows + 1 <=
    the register count), numbers per SIMD register."""
    *_, vbytes, regs = _machine()
    MB, NB = (4, 6) if regs >= 32 else (3, 4)
    return MB, NB, vbytes // np.dtype(dtype).itemsize


def gemm_nt(A: np.ndarray, B: np.ndarray, boffs: np.ndarray, out: np.ndarray, segs: np.ndarray | None = None) -> None:
    """out[m, n] += sum_q A[m, q] * B[boffs[n] + q], for A (M, Q) with unit column stride (any row stride), B a
    C-contiguous 1-D array, boffs int64 (N,) and out (M, N) C-contiguous: A @ B'^T for the rows of B' at those
    offsets of B. The sum runs over all q < Q (Q a multiple of VW, ``dot_shape``), or with ``segs`` (int64
    (S, 2)) over the segments q0 <= q < q0 + nv * VW of its rows (q0, nv) only."""
    (M, Q), N = A.shape, len(boffs)
    MB, NB, VW = dot_shape(A.dtype)
    if segs is None:
        segs = np.array([[0, Q // VW]], np.int64) if Q % VW == 0 else np.zeros((0, 2), np.int64)
    ends = segs[:, 0] + segs[:, 1] * VW
    _check(A.dtype == B.dtype == out.dtype and A.strides[1] == A.itemsize and B.ndim == 1
           and B.flags.c_contiguous and out.flags.c_contiguous and out.shape == (M, N) and boffs.dtype == np.int64
           and boffs.flags.c_contiguous and N > 0 and boffs.min() >= 0 and segs.dtype == np.int64
           and segs.flags.c_contiguous and len(segs) > 0 and segs.min() >= 0 and int(ends.max()) <= Q
           and int(boffs.max()) + int(ends.max()) <= B.size,
           lambda: f"A {A.shape} strides {A.strides}, B {B.shape}, offsets {boffs.min()}..{boffs.max()}, "
                   f"out {out.shape}, segments {segs.tolist()[:4]}...")
    lda = A.strides[0] // A.itemsize
    for m0, m1, mb in ((0, M // MB * MB, MB), (M // MB * MB, M, M % MB)):
        for n0, n1, nb in ((0, N // NB * NB, NB), (N // NB * NB, N, N % NB)):
            if m1 > m0 and n1 > n0:
                dot_kernel(mb, nb, A.dtype)(A[m0:].ctypes.data, B.ctypes.data, out[m0:, n0:].ctypes.data,
                                            boffs[n0:].ctypes.data, segs.ctypes.data, lda, N, len(segs),
                                            (m1 - m0) // mb, (n1 - n0) // nb)


def bcast_shape(O: int, dtype) -> tuple[int, int, int]:
    """(P, OV, VW) of ``bcast_gemm`` for O output channels: OV vectors of VW output channels per kernel call (at
    most 4: wider O is done in groups) and P positions per block, filling the registers (P * OV accumulators +
    OV weight vectors + 1 broadcast; at most 14)."""
    *_, vbytes, regs = _machine()
    VW = vbytes // np.dtype(dtype).itemsize
    OV = min(4 if regs >= 32 else 2, -(-O // VW))
    return min(14, (regs - 1 - OV) // OV), OV, VW


def bcast_pack(a_taps: np.ndarray, bias: np.ndarray | None = None) -> list:
    """A (nshift, K, O) -> [(first output channel, packed (nshift, K, OV * VW), its bias (OV * VW,))]: the output
    channels in groups of ``bcast_shape``'s OV vectors, zero-padded to whole vectors, in the order the kernel
    reads them; the bias (O,) likewise (0 without one)."""
    nshift, K, O = a_taps.shape
    _, OV, VW = bcast_shape(O, a_taps.dtype)
    groups = []
    for o0 in range(0, O, OV * VW):
        width = min(OV * VW, -(-(O - o0) // VW) * VW)
        n = min(width, O - o0)
        packed = np.zeros((nshift, K, width), a_taps.dtype)
        packed[:, :, :n] = a_taps[:, :, o0:o0 + n]
        b = np.zeros(width, a_taps.dtype)
        if bias is not None:
            b[:n] = bias[o0:o0 + n]
        groups.append((o0, packed, b))
    return groups


def bcast_gemm(groups: list, B: np.ndarray, offs: np.ndarray, out: np.ndarray, blocks: np.ndarray,
               P: int | None = None, relu: bool = False) -> None:
    """out[o, q] = sum_(k0 <= k < k1) sum_c A[k, c, o] * B[c, q + offs[k]] (+ b[o]; max(., 0) with relu) for the
    positions q0 <= q < q0 + P of each block (q0, k0, k1) of ``blocks`` (int64 (nblocks, 3); P at most
    ``bcast_shape``'s), A and b as packed by ``bcast_pack``: the output channels in the SIMD lanes and the positions
    broadcast, so a block is any P positions (one output row's, say: no junk columns) and any range of taps
    (skipping what would multiply 0). out (O', Q) is C-contiguous with O' >= the groups' padded width (its rows
    past O get 0-weight sums); B (K, ldb) C-contiguous holds every position read.

    With blocks of 4 columns (q0, k0, k1, o), block t's sums go to out.flat[o + m * ldo + p] instead, ldo =
    out.shape[-2] * out.shape[-1] for an out of 4 dimensions (N, O, H, W): straight into an NCHW tensor, o being
    the flat index of (n, 0, h, w0), so a block must lie within a row (the caller's duty: checked is only that every
    write is inside out)."""
    nshift, K, _ = groups[0][1].shape
    O = groups[-1][0] + groups[-1][1].shape[2]
    P_max = bcast_shape(groups[0][1].shape[2], B.dtype)[0]
    P = P_max if P is None else P
    table = blocks
    if blocks.ndim == 2 and blocks.shape[1] == 4:  # straight into an (N, O, H, W) out
        ldo = out.shape[2] * out.shape[3] if out.ndim == 4 else 0
        fits = (out.ndim == 4 and out.shape[1] == O
                and (len(blocks) == 0 or int(blocks[:, 3].max()) + (O - 1) * ldo + P <= out.size))
    else:  # into out (O', Q) at the blocks' own positions
        ldo = out.shape[1] if out.ndim == 2 else 0
        fits = (out.ndim == 2 and out.shape[0] >= O
                and (len(blocks) == 0 or int(blocks[:, 0].max()) + P <= out.shape[1]))
        if blocks.ndim == 2 and blocks.shape[1] == 3:
            table = np.concatenate([blocks, blocks[:, :1]], axis=1)
    _check(1 <= P <= P_max and B.flags.c_contiguous and out.flags.c_contiguous
           and B.dtype == out.dtype == groups[0][1].dtype and B.shape[0] == K and fits
           and offs.dtype == blocks.dtype == np.int64
           and offs.shape == (nshift,) and blocks.ndim == 2 and blocks.shape[1] in (3, 4)
           and blocks.flags.c_contiguous
           and (len(blocks) == 0 or (blocks.min() >= 0 and int(blocks[:, 2].max()) <= nshift
                                     and bool((blocks[:, 1] <= blocks[:, 2]).all())
                                     and int(blocks[:, 0].max()) + P + int(offs.max()) <= B.shape[1]))
           and offs.min() >= 0,
           lambda: f"B {B.shape} {B.dtype}, out {out.shape} {out.dtype}, {O} outputs, blocks of {P} positions "
                   f"from {blocks[:, 0].min() if len(blocks) else '-'} to "
                   f"{blocks[:, 0].max() + P if len(blocks) else '-'}, offsets {offs.min()}..{offs.max()}")
    VW = bcast_shape(1, B.dtype)[2]
    for o0, packed, bias in groups:
        bcast_kernel(P, packed.shape[2] // VW, B.dtype, relu)(
            packed.ctypes.data, B.ctypes.data, out.reshape(-1)[o0 * ldo:].ctypes.data, offs.ctypes.data,
            table.ctypes.data, bias.ctypes.data, K, B.shape[1], ldo, len(table))


def bcast_dot(G: np.ndarray, B: np.ndarray, boffs: np.ndarray, out: np.ndarray, segs: np.ndarray) -> None:
    """out[o, n] += sum_q G[q, o] * B[boffs[n] + q] over the segments q0 <= q < q0 + count of ``segs`` (int64
    (S, 2): any start and length), for G (Q, O') C-contiguous (positions x channels, O' >= O), B a C-contiguous
    1-D array and out (O, N) C-contiguous with O a multiple of the SIMD width: gemm_nt with G's channels in the
    lanes and B's rows broadcast, so the sum runs over any positions (a weight gradient's valid output
    columns: no junk)."""
    (O, N), Q = out.shape, G.shape[0]
    P_max, OV, VW = bcast_shape(O, G.dtype)
    ends = segs[:, 0] + segs[:, 1] if len(segs) else np.zeros(1, np.int64)
    _check(G.dtype == B.dtype == out.dtype and G.flags.c_contiguous and B.ndim == 1 and B.flags.c_contiguous
           and out.flags.c_contiguous and O % VW == 0 and G.shape[1] >= O and N > 0
           and boffs.dtype == segs.dtype == np.int64 and boffs.shape == (N,) and boffs.flags.c_contiguous
           and boffs.min() >= 0 and segs.ndim == 2 and segs.shape[1] == 2 and segs.flags.c_contiguous
           and (len(segs) == 0 or segs.min() >= 0) and int(ends.max()) <= Q
           and int(boffs.max()) + int(ends.max()) <= B.size,
           lambda: f"G {G.shape}, B {B.shape}, offsets {boffs.min()}..{boffs.max()}, out {out.shape}, "
                   f"segments {segs.tolist()[:4]}...")
    if len(segs) == 0:
        return
    for o0 in range(0, O, OV * VW):
        ov = min(OV, (O - o0) // VW)
        for n0, n1, p in ((0, N // P_max * P_max, P_max), (N // P_max * P_max, N, N % P_max)):
            if n1 > n0:
                bcast_dot_kernel(p, ov, G.dtype)(G[:, o0:].ctypes.data, B.ctypes.data, out[o0:, n0:].ctypes.data,
                                                 boffs[n0:].ctypes.data, segs.ctypes.data, G.shape[1], N,
                                                 len(segs), (n1 - n0) // p)
