"""The hand-written CPU kernels of the stride-1 convolutions, in LLVM IR built with llvmlite (the compiler
library under Numba), compiled at first use for this machine's CPU. Two of them:

    shifted_gemm:  out[m, n] = sum_k sum_c A[k, m, c] * B[c, n + offs[k]]        n < ntiles * TILE
    gemm_nt:       out[m, n] += sum_q A[m, q] * B[boffs[n] + q]                 q < Q

With B a zero-padded image (channels x positions of its padded grid) and offs[k] the grid offset of the
filter's tap k, shifted_gemm is a convolution's forward (A = the weights, tap by tap), and with B the output
gradient and mirrored offsets its input gradient (A = the weights transposed). gemm_nt with A the output
gradient on the grid and B's rows the image's channels at each tap's offset is its weight gradient. (See
numba_backend's "shifted GEMMs".)

Why not a BLAS call per tap: each of the kh*kw GEMMs has a short inner dimension (C = 64) and reads and writes
the whole output block again, so they ran at ~50-65% of this machine's sgemm rate, where PyTorch's (oneDNN's)
direct convolutions run at ~95%. Why not Numba: LLVM does not keep a Numba loop's accumulator array in
registers (measured: 20 GFLOP/s). Here the accumulators are SSA values of vector type, so they stay in
registers for the whole sum. shifted_gemm:

    for each tile of TILE = NV * VW columns n (VW = numbers per SIMD register):
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


def _build(MB: int, NV: int, dtype):
    """Compile kern(A, B, out, offs, nshift, K, ldb, ldo, ntiles, nmb) for blocks of MB rows and tiles of NV
    vectors, A packed as ``pack`` does; returns it as a ctypes function (which releases the GIL)."""
    import llvmlite.binding as llvm
    import llvmlite.ir as ir

    cpu, features, vbytes, _ = _machine()
    # (a target machine per kernel: the execution engine below takes ownership of it)
    tm = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=3, jit=True)
    it = np.dtype(dtype).itemsize
    VW = vbytes // it
    real = ir.FloatType() if it == 4 else ir.DoubleType()
    vec, i64 = ir.VectorType(real, VW), ir.IntType(64)
    mod = ir.Module(name="shifted_kernel")
    mod.triple = llvm.get_process_triple()
    ptr = real.as_pointer()
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [ptr, ptr, ptr, i64.as_pointer()] + [i64] * 6), "kern")
    A, B, OUT, OFFS, NSHIFT, K, LDB, LDO, NTILES, NMB = fn.args
    for a in (A, B, OUT, OFFS):
        a.add_attribute("noalias")
    fma = ir.Function(mod, ir.FunctionType(vec, [vec] * 3), f"llvm.fmuladd.v{VW}f{8 * it}")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    const = lambda v: ir.Constant(i64, v)  # noqa: E731
    # The accumulators are stack slots here; LLVM's mem2reg/SROA turns them into registers.
    acc = [[b.alloca(vec) for _ in range(NV)] for _ in range(MB)]
    splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), VW), [0] * VW)

    def loop(n, body):  # for (i = 0; i < n; i++) body(i)
        before = b.block
        head, inside, after = (fn.append_basic_block() for _ in range(3))
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(i64)
        i.add_incoming(const(0), before)
        b.cbranch(b.icmp_signed("<", i, n), inside, after)
        b.position_at_end(inside)
        body(i)
        i.add_incoming(b.add(i, const(1)), b.block)
        b.branch(head)
        b.position_at_end(after)

    def vector_at(base, index):
        return b.bitcast(b.gep(base, [index]), vec.as_pointer())

    def tile(t):
        n = b.mul(t, const(VW * NV))

        def row_block(mb):
            for row in acc:
                for a in row:
                    b.store(ir.Constant(vec, [0.0] * VW), a)
            a_block = b.mul(mb, b.mul(b.mul(NSHIFT, K), const(MB)))  # A packed (nmb, nshift, K, MB)

            def tap(k):
                nk = b.add(n, b.load(b.gep(OFFS, [k])))
                a_tap = b.add(a_block, b.mul(b.mul(k, K), const(MB)))

                def step(c):
                    col = b.add(b.mul(c, LDB), nk)
                    xs = [b.load(vector_at(B, b.add(col, const(v * VW))), align=it) for v in range(NV)]
                    a_at = b.add(a_tap, b.mul(c, const(MB)))
                    for i in range(MB):
                        s = b.load(b.gep(A, [b.add(a_at, const(i))]))
                        s = b.insert_element(ir.Constant(vec, ir.Undefined), s, ir.Constant(ir.IntType(32), 0))
                        s = b.shuffle_vector(s, ir.Constant(vec, ir.Undefined), splat_mask)
                        for v in range(NV):
                            b.store(b.call(fma, [s, xs[v], b.load(acc[i][v])]), acc[i][v])

                loop(K, step)

            loop(NSHIFT, tap)
            for i in range(MB):
                row = b.add(b.mul(b.add(b.mul(mb, const(MB)), const(i)), LDO), n)
                for v in range(NV):
                    b.store(b.load(acc[i][v]), vector_at(OUT, b.add(row, const(v * VW))), align=it)

        loop(NMB, row_block)

    loop(NTILES, tile)
    b.ret_void()

    return _compile(mod, tm, "kern", 10)


def _compile(mod, tm, name: str, nargs: int):
    """Optimise and compile the IR module for tm; its function `name` (4 pointers, then int64s) as a ctypes
    function."""
    import llvmlite.binding as llvm

    module = llvm.parse_assembly(str(mod))
    module.verify()
    options = llvm.create_pipeline_tuning_options(3)
    options.loop_vectorization = options.slp_vectorization = options.loop_unrolling = False  # it is vector code
    passes = llvm.create_pass_builder(tm, options)
    passes.getModulePassManager().run(module, passes)
    engine = llvm.create_mcjit_compiler(module, tm)
    engine.finalize_object()
    P, I = ctypes.c_void_p, ctypes.c_int64
    fn = ctypes.CFUNCTYPE(None, P, P, P, P, *[I] * (nargs - 4))(engine.get_function_address(name))
    fn.engine = engine  # (keeps the machine code alive)
    return fn


def _build_dot(MB: int, NB: int, dtype):
    """Compile dot(A, B, out, boffs, lda, ldo, nq, nmb, nnb): for every block of MB rows of A and NB rows of
    B (row n of B starts at B + boffs[n]),
        out[m, n] += sum_q A[m*lda + q] * B[boffs[n] + q]          q < nq * VW
    with MB*NB vector accumulators, summed across their lanes at the end."""
    import llvmlite.binding as llvm
    import llvmlite.ir as ir

    cpu, features, vbytes, _ = _machine()
    tm = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=3, jit=True)
    it = np.dtype(dtype).itemsize
    VW = vbytes // it
    real = ir.FloatType() if it == 4 else ir.DoubleType()
    vec, i64, i32 = ir.VectorType(real, VW), ir.IntType(64), ir.IntType(32)
    mod = ir.Module(name="dot_kernel")
    mod.triple = llvm.get_process_triple()
    ptr = real.as_pointer()
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [ptr, ptr, ptr, i64.as_pointer()] + [i64] * 5), "dot")
    A, B, OUT, BOFFS, LDA, LDO, NQ, NMB, NNB = fn.args
    for a in (A, B, OUT, BOFFS):
        a.add_attribute("noalias")
    fma = ir.Function(mod, ir.FunctionType(vec, [vec] * 3), f"llvm.fmuladd.v{VW}f{8 * it}")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    const = lambda v: ir.Constant(i64, v)  # noqa: E731
    acc = [[b.alloca(vec) for _ in range(NB)] for _ in range(MB)]

    def loop(n, body):  # for (i = 0; i < n; i++) body(i)
        before = b.block
        head, inside, after = (fn.append_basic_block() for _ in range(3))
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(i64)
        i.add_incoming(const(0), before)
        b.cbranch(b.icmp_signed("<", i, n), inside, after)
        b.position_at_end(inside)
        body(i)
        i.add_incoming(b.add(i, const(1)), b.block)
        b.branch(head)
        b.position_at_end(after)

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
            for row in acc:
                for a in row:
                    b.store(ir.Constant(vec, [0.0] * VW), a)

            def step(t):
                q = b.mul(t, const(VW))
                xs = [b.load(b.bitcast(b.gep(A, [b.add(r, q)]), vec.as_pointer()), align=it) for r in a_rows]
                for j in range(NB):
                    y = b.load(b.bitcast(b.gep(B, [b.add(b_rows[j], q)]), vec.as_pointer()), align=it)
                    for i in range(MB):
                        b.store(b.call(fma, [xs[i], y, b.load(acc[i][j])]), acc[i][j])

            loop(NQ, step)
            for i in range(MB):
                row = b.mul(b.add(b.mul(mb, const(MB)), const(i)), LDO)
                for j in range(NB):
                    at = b.gep(OUT, [b.add(row, b.add(b.mul(nb, const(NB)), const(j)))])
                    b.store(b.fadd(b.load(at), lanes_sum(b.load(acc[i][j]))), at)

        loop(NNB, col_block)

    loop(NMB, row_block)
    b.ret_void()
    return _compile(mod, tm, "dot", 9)


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


def _cached(build, *key):
    with _lock:
        if (build, *key) not in _kernels:
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


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"shifted kernel: {what}: out of bounds or wrong layout")


def shifted_gemm(blocks: list, B: np.ndarray, offs: np.ndarray, out: np.ndarray, ntiles: int) -> None:
    """out[m, n] = sum_k sum_c A[k, m, c] * B[c, n + offs[k]] for n < ntiles * TILE (TILE from
    ``block_shape(dtype)``), A as packed by ``pack(A, block_shape(dtype)[0])``. B and out are C-contiguous
    2-D arrays of A's dtype, and B holds every column read: B.shape[1] >= ntiles * TILE + max(offs)."""
    MB, TILE = block_shape(B.dtype)
    M = sum(packed.shape[0] * mb for _, mb, packed in blocks)
    _check(B.flags.c_contiguous and out.flags.c_contiguous and B.dtype == out.dtype == blocks[0][2].dtype
           and blocks[0][2].shape[2] == B.shape[0] and out.shape[0] >= M and out.shape[1] >= ntiles * TILE
           and offs.dtype == np.int64 and offs.min() >= 0 and B.shape[1] >= ntiles * TILE + int(offs.max()),
           f"B {B.shape} {B.dtype}, out {out.shape} {out.dtype}, {M} rows, {ntiles} tiles of {TILE}, offsets "
           f"{offs.min()}..{offs.max()}")
    for m0, mb, packed in blocks:
        nshift, K = packed.shape[1], packed.shape[2]
        kernel(mb, _NV, B.dtype)(packed.ctypes.data, B.ctypes.data, out[m0:].ctypes.data, offs.ctypes.data, nshift,
                                 K, B.shape[1], out.shape[1], ntiles, packed.shape[0])


def dot_shape(dtype) -> tuple[int, int, int]:
    """(MB, NB, VW) of ``gemm_nt``: rows of A and of B per block (MB*NB accumulators + MB loaded rows + 1 <=
    the register count), numbers per SIMD register."""
    *_, vbytes, regs = _machine()
    MB, NB = (4, 6) if regs >= 32 else (3, 4)
    return MB, NB, vbytes // np.dtype(dtype).itemsize


def gemm_nt(A: np.ndarray, B: np.ndarray, boffs: np.ndarray, out: np.ndarray) -> None:
    """out[m, n] += sum_q A[m, q] * B[boffs[n] + q], for A (M, Q) with unit column stride (any row stride) and
    Q a multiple of VW (``dot_shape``), B a C-contiguous 1-D array, boffs int64 (N,) and out (M, N)
    C-contiguous: A @ B'^T for the rows of B' at those offsets of B."""
    (M, Q), N = A.shape, len(boffs)
    MB, NB, VW = dot_shape(A.dtype)
    _check(Q % VW == 0 and A.dtype == B.dtype == out.dtype and A.strides[1] == A.itemsize and B.ndim == 1
           and B.flags.c_contiguous and out.flags.c_contiguous and out.shape == (M, N) and boffs.dtype == np.int64
           and boffs.flags.c_contiguous and N > 0 and boffs.min() >= 0 and int(boffs.max()) + Q <= B.size,
           f"A {A.shape} strides {A.strides}, B {B.shape}, offsets {boffs.min()}..{boffs.max()}, out {out.shape}")
    lda = A.strides[0] // A.itemsize
    for m0, m1, mb in ((0, M // MB * MB, MB), (M // MB * MB, M, M % MB)):
        for n0, n1, nb in ((0, N // NB * NB, NB), (N // NB * NB, N, N % NB)):
            if m1 > m0 and n1 > n0:
                dot_kernel(mb, nb, A.dtype)(A[m0:].ctypes.data, B.ctypes.data, out[m0:, n0:].ctypes.data,
                                            boffs[n0:].ctypes.data, lda, N, Q // VW, (m1 - m0) // mb, (n1 - n0) // nb)
