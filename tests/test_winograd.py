"""Winograd convolutions (issue 12): the NumPy reference (F(2x2, 3x3), F(4x4, 3x3), F(2x2, 5x5)) and the Numba
version (F(4x4, 3x3) and F(2x2, 5x5): forward, input and weight gradient with their fused bias, ReLU, ReLU mask
and bias gradient) against the direct convolution, on odd sizes (H, W not multiples of the tile, 1-pixel images,
channel counts that are not multiples of the kernels' vectors and register blocks, more output channels than one
kernel group), float32 and float64; a float64 gradcheck of conv2d with ``MINISR_CONV=winograd``; the dispatch switch."""

from __future__ import annotations

import numpy as np
import pytest
from test_gradcheck import gradcheck

import minisr
import minisr.functional as F
from minisr import Tensor
from minisr.backends import numpy_backend, shifted_kernel
from minisr.backends import winograd_reference as ref

pytestmark = pytest.mark.skipif(not shifted_kernel.available(), reason="the LLVM kernels do not compile here")

# (N, C, O, H, W, padding)
SHAPES = [
    (2, 3, 5, 7, 9, 1),  # odd H and W: partial tiles at both far edges
    (1, 2, 2, 1, 1, 1),  # a 1-pixel image: one tile, mostly padding
    (1, 4, 3, 5, 6, 0),  # no padding
    (2, 3, 2, 4, 3, 2),  # padding 2 (the input gradient then has padding 0)
    (3, 17, 9, 13, 11, 1),  # C, O not multiples of the register blocks (8 / 4 rows, 6 columns)
    (2, 9, 19, 2, 1, 1),  # 2 x 1 images
    (2, 1, 70, 6, 5, 1),  # one input channel; 70 outputs: two groups of the GEMM, a vector's tail
    (1, 66, 130, 5, 9, 2),  # three groups, channels past whole vectors
]
# 5 x 5 filters (F(2x2, 5x5)): (N, C, O, H, W, padding)
SHAPES5 = [
    (2, 3, 5, 7, 9, 2),  # odd H and W
    (1, 2, 2, 1, 1, 4),  # a 1-pixel image, padding 4 (the input gradient then has padding 0)
    (3, 17, 9, 13, 11, 0),  # no padding (SRCNN's layers), C and O off the register blocks
    (2, 9, 19, 5, 6, 1),  # the smallest image padding 1 allows
    (1, 66, 70, 8, 7, 3),  # two GEMM groups, channels past whole vectors
]
CASES = [(shape, 3) for shape in SHAPES] + [(shape, 5) for shape in SHAPES5]
# max |a - b| / max |b|: F(4x4)'s transform coefficients (up to 8) cost ~10x the bits of F(2x2) and of the direct
# sum in float32 (bench/RESULTS.md): 3e-5 for the Numba kernels (F(4x4)), 3e-6 for sums without a transform
TOL = {np.float32: 3e-6, np.float64: 1e-12}
TOL4 = {np.float32: 3e-5, np.float64: 1e-12}


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-300))


def _data(shape, dt, seed=0, k=3):
    N, C, O, H, W, p = shape
    rng = np.random.default_rng(seed)
    Ho, Wo = H + 2 * p - k + 1, W + 2 * p - k + 1
    return (rng.standard_normal((N, C, H, W)).astype(dt), rng.standard_normal((O, C, k, k)).astype(dt),
            rng.standard_normal((N, O, Ho, Wo)).astype(dt), p)


def _direct(x, w, g, p):
    """The reference backend's direct convolution (im2col + GEMM): out, dx, dw."""
    N, O, k = x.shape[0], w.shape[0], w.shape[2]
    w2, g3 = w.reshape(O, -1), g.reshape(N, O, -1)
    out = numpy_backend.conv_forward(x, w2, k, k, 1, 1, p, p).reshape(g.shape)
    dx = numpy_backend.conv_input_grad(w2, g3, x.shape, k, k, 1, 1, p, p)
    dw = numpy_backend.conv_weight_grad(g3, x, k, k, 1, 1, p, p).reshape(w.shape)
    return out, dx, dw


@pytest.mark.parametrize("m, k", [(2, 3), (4, 3), (2, 5)])
@pytest.mark.parametrize("shape", SHAPES[:6])
def test_reference_matches_direct_conv(shape, m, k):
    N, C, O, H, W, p = shape
    if k == 5:  # the same sizes with a 5 x 5 filter (padding 2 more, so that there is an output)
        shape = (N, C, O, H, W, p + 2)
    x, w, g, p = _data(shape, np.float64, k=k)
    out, dx, dw = _direct(x, w, g, p)
    assert _rel(ref.conv_forward(x, w, p, p, m), out) < 1e-12
    assert _rel(ref.conv_input_grad(w, g, x.shape, p, p, m), dx) < 1e-12
    assert _rel(ref.conv_weight_grad(g, x, p, p, m), dw) < 1e-12


def test_reference_matrices_are_the_papers():
    # F(2x2, 3x3) of a 1-D signal: A^T [(G g) * (B^T d)] is the 2-output correlation of d with g
    BT, G, AT = ref.matrices(2, np.float64)
    d, g = np.array([1.0, 2.0, -3.0, 5.0]), np.array([0.5, -1.0, 2.0])
    assert np.allclose(AT @ ((G @ g) * (BT @ d)), [d[0:3] @ g, d[1:4] @ g])
    BT, G, AT = ref.matrices(4, np.float64)
    d = np.array([1.0, 2.0, -3.0, 5.0, 0.25, -7.0])
    assert np.allclose(AT @ ((G @ g) * (BT @ d)), [d[i:i + 3] @ g for i in range(4)])
    BT5, G, AT = ref.matrices(2, np.float64, 5)  # F(2, 5): F(4, 3)'s points, so its B^T
    assert np.array_equal(BT5, BT)
    g = np.array([0.5, -1.0, 2.0, 0.75, -3.0])
    assert np.allclose(AT @ ((G @ g) * (BT @ d)), [d[i:i + 5] @ g for i in range(2)])
    with pytest.raises(ValueError, match=r"\(m, r\) must be one of"):
        ref.matrices(3, np.float64)
    with pytest.raises(ValueError, match=r"F\(4x4, 5x5\)"):
        ref.matrices(4, np.float64, 5)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("shape, k", CASES)
def test_numba_winograd_matches_direct_conv(shape, k, dt):
    from minisr.backends.numba import winograd

    x, w, g, p = _data(shape, dt, k=k)
    out, dx, dw = _direct(x.astype(np.float64), w.astype(np.float64), g.astype(np.float64), p)
    N, O = x.shape[0], w.shape[0]
    w2, g3 = w.reshape(O, -1), g.reshape(N, O, -1)
    got = winograd.conv_forward(x, w2, k, p, p)
    assert got.dtype == dt and got.shape == (N, O, g.shape[2] * g.shape[3])
    assert _rel(got.reshape(g.shape), out) < TOL4[dt]
    b = np.linspace(-1, 1, O).astype(dt)
    got = winograd.conv_forward(x, w2, k, p, p, b, relu=True)  # the fused bias and ReLU
    assert _rel(got.reshape(g.shape), np.maximum(out + b[:, None, None], 0)) < TOL4[dt]
    got = winograd.conv_input_grad(w2, g3, x.shape, k, p, p)
    assert got.dtype == dt and _rel(got, dx) < TOL4[dt]
    y = np.maximum(g, 0) * (np.arange(g.size).reshape(g.shape) % 3 > 0)  # the layer's ReLU output, some zeros
    _, dx_masked, _ = _direct(x.astype(np.float64), w.astype(np.float64), (g * (y > 0)).astype(np.float64), p)
    got = winograd.conv_input_grad(w2, g3, x.shape, k, p, p, y.reshape(g3.shape))  # the fused ReLU mask
    assert _rel(got, dx_masked) < TOL4[dt]
    got, db = winograd.conv_weight_grad(g3, x, k, p, p)
    assert got.dtype == dt and got.shape == w2.shape and _rel(got.reshape(w.shape), dw) < TOL4[dt] and db is None
    _, _, dw_masked = _direct(x.astype(np.float64), w.astype(np.float64), (g * (y > 0)).astype(np.float64), p)
    got, db = winograd.conv_weight_grad(g3, x, k, p, p, y.reshape(g3.shape), need_db=True)  # fused mask and db
    assert _rel(got.reshape(w.shape), dw_masked) < TOL4[dt]
    assert db.dtype == dt and _rel(db, (g * (y > 0)).astype(np.float64).sum((0, 2, 3))) < TOL[dt]
    dx2, dw2, db2 = winograd.conv_backward(g3, x, w2, k, p, p, y.reshape(g3.shape), need_db=True)  # one padded g
    assert _rel(dx2, dx_masked) < TOL4[dt] and _rel(dw2.reshape(w.shape), dw_masked) < TOL4[dt]
    assert np.array_equal(db2, db)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("k, p", [(3, 1), (5, 0)])
def test_numba_winograd_chunks_across_images(dt, k, p, monkeypatch):
    """Many chunks, cut inside tile rows and across images, on two threads (and one)."""
    from minisr.backends.numba import threads as nb_threads
    from minisr.backends.numba import winograd, winograd_lanes

    x, w, g, p = _data((5, 8, 10, 9, 13, p), dt, seed=1, k=k)
    out, dx, dw = _direct(x.astype(np.float64), w.astype(np.float64), g.astype(np.float64), p)
    N, O = x.shape[0], w.shape[0]
    monkeypatch.setattr(winograd_lanes, "_CHUNK_TILES", 1)  # one block of the GEMM per chunk
    monkeypatch.setattr(winograd_lanes, "_GROUP_BYTES", 2 * 16 * 16 * 16 * np.dtype(dt).itemsize)  # 2 images a group
    assert winograd_lanes._groups(5, 16 * 16 * 16 * np.dtype(dt).itemsize) == [(0, 2), (2, 4), (4, 5)]
    assert len(winograd_lanes._chunks(5 * 3 * 4, 6, winograd_lanes._chunk_size(6, 16, 16))) == 10
    assert winograd_lanes._chunk_size(1, 16, 16) == 4  # (the weight gradient's: any number of tiles)
    for threads in (1, 2):
        monkeypatch.setattr(nb_threads, "_threads", lambda blas=True, threads=threads: threads)
        assert _rel(winograd.conv_forward(x, w.reshape(O, -1), k, p, p).reshape(g.shape), out) < TOL4[dt]
        dx_got = winograd.conv_input_grad(w.reshape(O, -1), g.reshape(N, O, -1), x.shape, k, p, p)
        assert _rel(dx_got, dx) < TOL4[dt]
        assert _rel(winograd.conv_weight_grad(g.reshape(N, O, -1), x, k, p, p)[0].reshape(w.shape), dw) < TOL4[dt]
        dx2, dw2, _ = winograd.conv_backward(g.reshape(N, O, -1), x, w.reshape(O, -1), k, p, p)  # (group by group)
        assert _rel(dx2, dx) < TOL4[dt] and _rel(dw2.reshape(w.shape), dw) < TOL4[dt]


def test_groups_cover_the_batch():
    """The batch in equal groups of images (the last one smaller) of about _GROUP_BYTES of copies, at least one
    image each."""
    from minisr.backends.numba import winograd_lanes

    for N, image_bytes in [(128, 173_056), (16, 541_696), (1, 68 << 20), (7, 1), (5, 3 << 20)]:
        groups = winograd_lanes._groups(N, image_bytes)
        assert [n for a, b in groups for n in range(a, b)] == list(range(N))
        sizes = [b - a for a, b in groups]
        assert all(s == sizes[0] for s in sizes[:-1]) and 0 < sizes[-1] <= sizes[0]
        assert sizes[0] == 1 or sizes[0] * image_bytes <= 2 * winograd_lanes._GROUP_BYTES
    assert winograd_lanes._groups(128, 173_056) == [(0, 64), (64, 128)]  # SRCNN's layer 2: two groups of 11 MB


def test_planes_spread_over_the_cache_sets():
    """V's and M's 36 planes are an odd number of 64-byte lines apart (never a multiple of 4 KB, which put a
    tile's 36 numbers in one L1 set), at least as long as asked."""
    from minisr.backends.numba import winograd_lanes

    for count, dt in [(96 * 64, np.float32), (96 * 32, np.float64), (5, np.float32), (48 * 16, np.float32)]:
        planes, ld = winograd_lanes._planes(0, "test", count, dt)
        step = ld * np.dtype(dt).itemsize
        assert planes.shape == (36, ld) and ld >= count and step % 64 == 0 and (step // 64) % 2 == 1


@pytest.mark.parametrize("shape, O, padding, k", [((2, 3, 5, 4), 4, 1, 3), ((1, 2, 1, 1), 3, 1, 3),
                                                  ((1, 3, 4, 5), 2, 0, 3), ((1, 2, 3, 3), 2, 2, 3),
                                                  ((2, 3, 6, 5), 4, 0, 5), ((1, 2, 1, 2), 3, 4, 5),
                                                  ((1, 3, 4, 3), 2, 2, 5)])
def test_conv2d_gradcheck_winograd(shape, O, padding, k, monkeypatch):
    monkeypatch.setenv("MINISR_CONV", "winograd")
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal(shape), rng.standard_normal((O, shape[1], k, k)), rng.standard_normal(O)
    with minisr.use_backend("numba"):
        from minisr.backends.numba import winograd

        assert winograd.use(shape[1], O, k, k, 1, 1, padding, padding, np.float64)
        gradcheck(lambda x, w, b: F.conv2d(x, w, b, 1, padding), x, w, b)


def test_conv_switch(monkeypatch):
    from minisr.backends.numba import winograd

    monkeypatch.setenv("MINISR_CONV", "direct")
    assert not winograd.use(64, 64, 3, 3, 1, 1, 1, 1, np.float32)
    monkeypatch.setenv("MINISR_CONV", "auto")
    for kernel, on in winograd.AUTO.items():
        assert winograd.use(64, 64, 3, 3, 1, 1, 1, 1, np.float32, kernel) == on
        assert not winograd.use(8, 64, 3, 3, 1, 1, 1, 1, np.float32, kernel)  # too few channels
    monkeypatch.setitem(winograd.AUTO, "forward", True)
    assert winograd.use(64, 64, 3, 3, 1, 1, 1, 1, np.float32, "forward")
    monkeypatch.setenv("MINISR_CONV", "winograd")
    assert winograd.use(1, 1, 3, 3, 1, 1, 1, 1, np.float32)
    assert winograd.use(1, 1, 5, 5, 1, 1, 4, 4, np.float32)  # F(2x2, 5x5)
    assert not winograd.use(64, 64, 7, 7, 1, 1, 3, 3, np.float32)  # only 3 x 3 and 5 x 5
    assert not winograd.use(64, 64, 3, 5, 1, 1, 1, 2, np.float32)  # square filters
    assert not winograd.use(64, 64, 3, 3, 2, 2, 1, 1, np.float32)  # only stride 1
    assert not winograd.use(64, 64, 3, 3, 1, 1, 3, 3, np.float32)  # padding < the filter size
    assert not winograd.use(64, 64, 5, 5, 1, 1, 5, 5, np.float32)
    monkeypatch.setenv("MINISR_CONV", "fastest")
    with pytest.raises(ValueError, match="MINISR_CONV='fastest'"):
        winograd.use(64, 64, 3, 3, 1, 1, 1, 1, np.float32)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_conv2d_winograd_and_direct_agree_end_to_end(dt, monkeypatch):
    """conv2d -> relu -> conv2d through the numba backend, both ways: the same output and gradients."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 16, 11, 10)).astype(dt)
    w1, w2 = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(dt), (rng.standard_normal((5, 16, 3, 3)) / 12).astype(dt)
    res = {}
    for mode in ("direct", "winograd"):
        monkeypatch.setenv("MINISR_CONV", mode)
        with minisr.use_backend("numba"):
            tx, t1, t2 = Tensor(x, requires_grad=True), Tensor(w1, requires_grad=True), Tensor(w2, requires_grad=True)
            y = F.conv2d(F.relu(F.conv2d(tx, t1, None, 1, 1)), t2, None, 1, 1)
            y.backward(np.ones(y.shape, dt))
            res[mode] = [y.data, tx.grad, t1.grad, t2.grad]
    for a, b in zip(res["winograd"], res["direct"]):
        assert _rel(a, b.astype(np.float64)) < 10 * TOL[dt]


def test_winograd_avx2_build(monkeypatch):
    """The kernels built for an AVX2 machine (16 registers of 32 bytes: vectors of 8 floats, two per GEMM
    group, the weight gradient's blocks of 4) are right too: this machine runs that code as well."""
    from minisr.backends import winograd_kernel as wk

    shifted_kernel._machine()  # (initialises LLVM's native target)
    monkeypatch.setattr(shifted_kernel, "_state", {"cpu": ("haswell", ""), "simd": (32, 16)})
    monkeypatch.setattr(shifted_kernel, "_kernels", {})
    assert wk.shape(64, np.float32) == (6, 2, 8) and wk.shape(64, np.float64) == (6, 2, 4)
    for dt in (np.float32, np.float64):
        for shape, k in ((SHAPES[4], 3), (SHAPES[7], 3), (SHAPES5[4], 5)):
            test_numba_winograd_matches_direct_conv(shape, k, dt)
    assert {key[1:3] for key in shifted_kernel._kernels if key[0] is wk._build_gemm} >= {(6, 2), (4, 2)}
