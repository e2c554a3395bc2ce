"""The one hand-written CPU kernel: a register-blocked GEMM with shifted operands, in LLVM IR built with
llvmlite (the compiler library under Numba), compiled at first use for this machine's CPU:

    out[m, n] (+)= sum_k sum_c A[k, m, c] * B[c, n + offs[k]]          m < M, n < ntiles * TILE

With B a zero-padded image (channels x positions of its padded grid) and offs[k] the grid offset of the
filter's tap k, this is a stride-1 convolution's forward (A = the weights, tap by tap); with B the output
gradient and mirrored offsets, its input gradient (A = the weights transposed); with one tap, B = the output
gradient (positions x O) and A = the shifted input, its weight gradient for that tap -- see numba_backend's
"shifted GEMMs".

Why not a BLAS call per tap: each of the kh*kw GEMMs has a short inner dimension (C = 64) and reads and writes
the whole output block again, so they ran at ~50-65% of this machine's sgemm rate, where PyTorch's (oneDNN's)
direct convolutions run at ~95%. Why not Numba: LLVM does not keep a Numba loop's accumulator array in
registers (measured: 20 GFLOP/s). Here the accumulators are SSA values of vector type, so they stay in
registers for the whole sum:

    for each tile of TILE = NV * VW columns n (VW = numbers per SIMD register):
        for each block of MB rows m:
            acc[MB][NV] = 0                                   MB*NV registers (8 x 3 with AVX-512)
            for k in taps:  for c in 0..K-1:
                b[v]    = B[c, n + offs[k] + v*VW : ... + VW]           NV unaligned vector loads
                acc[i][v] += broadcast(A[k, m + i, c]) * b[v]          MB*NV fused multiply-adds
            out[m + i, n + v*VW : ... + VW] (+)= acc[i][v]

A step reads MB + NV*VW numbers for MB*NV*VW multiply-adds, and the row blocks of a tile reuse the same B
columns from the L1 cache. A is read through four strides (row block, tap, c, row in block), so the kernel
takes both packed weights (``pack``) and a strided view of an image.
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


def block_shape(dtype, n_vectors: int = 3) -> tuple[int, int]:
    """(MB, TILE) for tiles of n_vectors SIMD registers of columns: the rows that fit the other registers
    (MB * NV accumulators + NV loads + 1 broadcast <= the register count; at most 8, which measured best),
    and the tile's columns."""
    *_, vbytes, regs = _machine()
    return min(8, (regs - 1 - n_vectors) // n_vectors), n_vectors * vbytes // np.dtype(dtype).itemsize


def _build(MB: int, NV: int, dtype):
    """Compile kern(A, B, out, offs, nshift, K, ldb, ldo, ntiles, nmb, sa_mb, sa_k, sa_c, sa_i, accumulate)
    for blocks of MB rows and tiles of NV vectors; returns it as a ctypes function (which releases the GIL)."""
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
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [ptr, ptr, ptr, i64.as_pointer()] + [i64] * 11), "kern")
    A, B, OUT, OFFS, NSHIFT, K, LDB, LDO, NTILES, NMB, SA_MB, SA_K, SA_C, SA_I, ACCUMULATE = fn.args
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
            a_block = b.mul(mb, SA_MB)

            def tap(k):
                nk = b.add(n, b.load(b.gep(OFFS, [k])))
                a_tap = b.add(a_block, b.mul(k, SA_K))

                def step(c):
                    col = b.add(b.mul(c, LDB), nk)
                    xs = [b.load(vector_at(B, b.add(col, const(v * VW))), align=it) for v in range(NV)]
                    a_at = b.add(a_tap, b.mul(c, SA_C))
                    for i in range(MB):
                        s = b.load(b.gep(A, [b.add(a_at, b.mul(const(i), SA_I))]))
                        s = b.insert_element(ir.Constant(vec, ir.Undefined), s, ir.Constant(ir.IntType(32), 0))
                        s = b.shuffle_vector(s, ir.Constant(vec, ir.Undefined), splat_mask)
                        for v in range(NV):
                            b.store(b.call(fma, [s, xs[v], b.load(acc[i][v])]), acc[i][v])

                loop(K, step)

            loop(NSHIFT, tap)
            keep = b.icmp_signed("!=", ACCUMULATE, const(0))
            for i in range(MB):
                row = b.add(b.mul(b.add(b.mul(mb, const(MB)), const(i)), LDO), n)
                for v in range(NV):
                    at = vector_at(OUT, b.add(row, const(v * VW)))
                    old = b.select(keep, b.load(at, align=it), ir.Constant(vec, [0.0] * VW))
                    b.store(b.fadd(old, b.load(acc[i][v])), at, align=it)

        loop(NMB, row_block)

    loop(NTILES, tile)
    b.ret_void()

    module = llvm.parse_assembly(str(mod))
    module.verify()
    options = llvm.create_pipeline_tuning_options(3)
    options.loop_vectorization = options.slp_vectorization = options.loop_unrolling = False  # it is vector code
    passes = llvm.create_pass_builder(tm, options)
    passes.getModulePassManager().run(module, passes)
    engine = llvm.create_mcjit_compiler(module, tm)
    engine.finalize_object()
    P, I = ctypes.c_void_p, ctypes.c_int64
    kern = ctypes.CFUNCTYPE(None, P, P, P, P, *[I] * 11)(engine.get_function_address("kern"))
    kern.engine = engine  # (keeps the machine code alive)
    return kern


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
    """The compiled kernel for MB rows x NV vectors and this dtype (float32 or float64), built once."""
    key = (MB, NV, np.dtype(dtype))
    with _lock:
        if key not in _kernels:
            _kernels[key] = _build(*key)
        return _kernels[key]


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
        kernel(mb, 3, B.dtype)(packed.ctypes.data, B.ctypes.data, out[m0:].ctypes.data, offs.ctypes.data, nshift,
                               K, B.shape[1], out.shape[1], ntiles, packed.shape[0], nshift * K * mb, K * mb, mb,
                               1, 0)


_ZERO = np.zeros(1, np.int64)


def gemm_vectors(N: int, dtype) -> int:
    """The vectors per tile (4, 2 or 1) for ``gemm`` with N columns, 0 when no tile width divides N."""
    VW = _machine()[2] // np.dtype(dtype).itemsize
    return next((nv for nv in (4, 2, 1) if N % (nv * VW) == 0), 0)


def gemm(A: np.ndarray, B: np.ndarray, out: np.ndarray, accumulate: bool) -> None:
    """out (+)= A @ B, for A (M, K) with unit column stride (any row stride: a view of a wider array),
    B (K, N) and out (M, N) C-contiguous, N a multiple of a tile (``gemm_vectors(N, dtype) > 0``)."""
    (M, K), N = A.shape, B.shape[1]
    NV = gemm_vectors(N, B.dtype)
    _check(NV > 0 and A.dtype == B.dtype == out.dtype and A.strides[1] == A.itemsize and B.shape[0] == K
           and B.flags.c_contiguous and out.flags.c_contiguous and out.shape == (M, N),
           f"A {A.shape} strides {A.strides}, B {B.shape}, out {out.shape}")
    MB, TILE = block_shape(B.dtype, NV)
    lda = A.strides[0] // A.itemsize
    for m0, m1, mb in ((0, M // MB * MB, MB), (M // MB * MB, M, M % MB)):
        if m1 > m0:
            kernel(mb, NV, B.dtype)(A[m0:].ctypes.data, B.ctypes.data, out[m0:].ctypes.data, _ZERO.ctypes.data, 1,
                                    K, N, N, N // TILE, (m1 - m0) // mb, mb * lda, 0, 1, lda, int(accumulate))
