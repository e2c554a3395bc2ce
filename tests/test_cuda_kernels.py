"""Every GPU kernel against the NumPy reference, float32 and float64, on the "cuda" device: CuPy on a GPU, else the
CUDA emulator (tests/cuda_emu), so CI runs them all.

The cases are test_backends.CASES, the table every backend is checked with: a kernel added to the seam with its
case there (and its CUDA implementation in cupy_backend) is checked here too, with no change to this file. Each case
runs on the backend's grid ("full") and on a grid of 2 blocks ("2blocks"), where every thread of a grid-stride loop
handles many elements. The kernels' special cases (one-pixel images, reductions over several passes, one and many
blocks, determinism) follow.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from test_backends import CASES, DTYPES, _assert_close, _copy

from minisr.backends import get_backend
from minisr.backends import numpy_backend as ref


def _to_device(args):
    import cupy as cp

    return tuple(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


@pytest.mark.parametrize("grid", ["full", "2blocks"])
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kernel,case_id,build,inplace", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_cuda_kernel_matches_numpy(cuda, monkeypatch, grid, dt, kernel, case_id, build, inplace):
    be = get_backend("cupy")
    if grid == "2blocks":
        monkeypatch.setattr(be, "MAX_BLOCKS", 2)
    args = build(np.random.default_rng(zlib.crc32(f"{kernel}{case_id}".encode())), dt)
    ref_args, dev_args = _copy(args), _to_device(args)
    want = getattr(ref, kernel)(*ref_args)
    got = getattr(be, kernel)(*dev_args)
    what = f"cuda.{kernel} {case_id} {np.dtype(dt).name} ({cuda}, {grid} grid)"
    for i in inplace:
        if ref_args[i] is not None:
            _assert_close(_host(dev_args[i]), ref_args[i], dt, f"{what} (argument {i}, in place)")
    if isinstance(want, tuple):  # kernels with several outputs (prelu_backward: dx, dw)
        assert isinstance(got, tuple) and len(got) == len(want), f"{what}: {len(want)} outputs expected"
        for k, (g, w) in enumerate(zip(got, want)):
            _assert_close(_host(g), np.asarray(w), dt, f"{what} (output {k})")
    elif want is not None:
        _assert_close(_host(got), np.asarray(want), dt, what)


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", [((1, 2, 1, 1), 3, 1, 1), ((2, 1, 1, 1), 1, 1, 0), ((1, 3, 1, 1), 3, 2, 1),
                                  ((2, 3, 5, 1), 3, 2, 1), ((1, 1, 2, 9), 3, 2, 0)],
                         ids=lambda c: "x".join(map(str, c[0])) + f"k{c[1]}s{c[2]}p{c[3]}")
def test_cuda_conv_kernels_on_one_pixel_and_one_row_images(cuda, dt, case):
    (N, C, H, W), k, s, p = case
    rng = np.random.default_rng(11)
    be = get_backend("cupy")
    x, w2 = rng.standard_normal((N, C, H, W)).astype(dt), rng.standard_normal((4, C * k * k)).astype(dt)
    geo = (k, k, s, s, p, p)
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    g = rng.standard_normal((N, 4, Ho * Wo)).astype(dt)
    dx, dw2, dg = _to_device((x, w2, g))
    for name, got, want in [
        ("im2col", be.im2col(dx, *geo), ref.im2col(x, *geo)),
        ("conv_forward", be.conv_forward(dx, dw2, *geo), ref.conv_forward(x, w2, *geo)),
        ("conv_weight_grad", be.conv_weight_grad(dg, dx, *geo), ref.conv_weight_grad(g, x, *geo)),
        ("conv_input_grad", be.conv_input_grad(dw2, dg, x.shape, *geo), ref.conv_input_grad(w2, g, x.shape, *geo)),
        ("bias_grad", be.bias_grad(dg), ref.bias_grad(g)),
    ]:
        _assert_close(_host(got), want, dt, f"{name} {case}")


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("O,NP", [(1, (1, 1)), (1, (3, 700)), (37, (2, 333)), (5, (1, 1))])
def test_cuda_bias_grad_one_and_many_blocks(cuda, dt, O, NP):
    """One block per output channel, each summing N * P values (more than its 256 threads: they loop)."""
    N, P = NP
    g = np.random.default_rng(O).standard_normal((N, O, P)).astype(dt)
    (dg,) = _to_device((g,))
    _assert_close(_host(get_backend("cupy").bias_grad(dg)), ref.bias_grad(g), dt, f"bias_grad O={O} N,P={NP}")


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_cuda_loss_reductions_over_several_passes_are_deterministic(cuda, monkeypatch, dt, loss):
    """More elements than one pass of the (capped) grid: each thread sums several; the per-block partial sums are
    added in a fixed order, so the same inputs give the same bits every time."""
    be = get_backend("cupy")
    monkeypatch.setattr(be, "THREADS", 32)  # 1024 blocks x 32 threads < n: every thread loops
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 2, 97, 71)).astype(dt), rng.standard_normal((3, 2, 97, 71)).astype(dt)
    assert a.size > 1024 * 32
    da, db = _to_device((a, b))
    fwd = getattr(be, f"{loss}_forward")
    first = _host(fwd(da, db))
    _assert_close(first, np.asarray(getattr(ref, f"{loss}_forward")(a, b)), dt, f"{loss}_forward")
    assert _host(fwd(da, db)).tobytes() == first.tobytes()
    (g,) = _to_device((np.asarray(0.37, dt),))
    _assert_close(_host(getattr(be, f"{loss}_backward")(da, db, g)),
                  getattr(ref, f"{loss}_backward")(a, b, np.asarray(0.37, dt)), dt, f"{loss}_backward")
