"""Property-based tests (Hypothesis): the Numba kernels, Winograd F(4x4, 3x3) and the CuPy kernels (on the CUDA
emulator) against the NumPy reference, on drawn shapes, strides, paddings, dtypes and memory layouts (contiguous,
strided views, Fortran order), forward and backward; the engine refuses what it does not support with a clear
error. (No dilation: minisr's convolutions have none, and conv2d has no such argument.)

Deterministic and bounded for CI: ``derandomize=True`` (the examples are a function of the test), a fixed number of
examples per test, no deadline; a failure prints the example, which ``@example`` can then pin as a regression test.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_backends import _assert_close

import minisr.functional as F
from minisr import Tensor, backends
from minisr.backends import numpy_backend as ref
from minisr.backends import shifted_kernel

numba_be = backends.get_backend("numba")
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                               HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([np.float32, np.float64])
LAYOUTS = st.sampled_from(["C", "F", "strided", "reversed"])
# the pointwise and pooling kernels are compiled for each layout type Numba tells apart (C, F, any): here the
# strided views ("any"), what tests/test_backends.py does not try (it covers C order), to keep the first (uncached)
# run's compile time down
VIEWS = st.sampled_from(["strided", "reversed"])


def laid_out(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``a`` in another memory layout: C order, Fortran order, a strided view into a larger
    array, or a view with negative strides."""
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
        big[..., 1::2] = a
        return big[..., 1::2]
    if layout == "reversed":
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    return np.ascontiguousarray(a)


@st.composite
def conv_geometry(draw, max_k=5, winograd=False):
    """(N, C, O, H, W, kh, kw, sh, sw, ph, pw) of a valid convolution; C and O reach past 8 so that the numba
    backend's shifted-GEMM path (stride 1, >= 8 channels) is drawn as well as im2col."""
    N, C, O = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    if winograd:  # F(4x4, 3x3) or F(2x2, 5x5)
        kh = kw = draw(st.sampled_from([3, 5]))
        sh = sw = 1
        ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    else:
        kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        ph, pw = draw(st.integers(0, kh)), draw(st.integers(0, kw))
    H = draw(st.integers(max(1, kh - 2 * ph), 13))
    W = draw(st.integers(max(1, kw - 2 * pw), 13))
    return N, C, O, H, W, kh, kw, sh, sw, ph, pw


def _out(H, W, kh, kw, sh, sw, ph, pw):
    return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


def _conv_data(geo, dt, seed):
    N, C, O, H, W, kh, kw, sh, sw, ph, pw = geo
    Ho, Wo = _out(H, W, kh, kw, sh, sw, ph, pw)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dt)
    w2 = rng.standard_normal((O, C * kh * kw)).astype(dt)
    g = rng.standard_normal((N, O, Ho * Wo)).astype(dt)
    cols = rng.standard_normal((N, C * kh * kw, Ho * Wo)).astype(dt)
    return x, w2, g, cols


def _check_conv_kernels(be, geo, dt, layouts, seed, what, to=lambda a: a, back=np.asarray):
    N, C, O, H, W, kh, kw, sh, sw, ph, pw = geo
    x, w2, g, cols = _conv_data(geo, dt, seed)
    lx, lw, lg, lc = layouts
    X, W2, G, COLS = (to(laid_out(a, lay)) for a, lay in ((x, lx), (w2, lw), (g, lg), (cols, lc)))
    geom = (kh, kw, sh, sw, ph, pw)
    tag = f"{what} {geo} {np.dtype(dt).name} layouts {layouts}"
    _assert_close(back(be.conv_forward(X, W2, *geom)), ref.conv_forward(x, w2, *geom), dt, f"forward {tag}")
    _assert_close(back(be.conv_weight_grad(G, X, *geom)), ref.conv_weight_grad(g, x, *geom), dt, f"dw {tag}")
    _assert_close(back(be.conv_input_grad(W2, G, x.shape, *geom)), ref.conv_input_grad(w2, g, x.shape, *geom), dt,
                  f"dx {tag}")
    _assert_close(back(be.im2col(X, *geom)), ref.im2col(x, *geom), dt, f"im2col {tag}")
    _assert_close(back(be.col2im(COLS, x.shape, *geom)), ref.col2im(cols, x.shape, *geom), dt, f"col2im {tag}")
    # the inputs are left as they were
    np.testing.assert_array_equal(back(X), x)
    np.testing.assert_array_equal(back(G), g)


# ------------------------------------------------------------------------------------------------------- numba
@FUZZ
@given(geo=conv_geometry(), dt=DTYPES, layouts=st.tuples(LAYOUTS, LAYOUTS, LAYOUTS, LAYOUTS),
       seed=st.integers(0, 2 ** 16))
def test_numba_conv_kernels_match_the_reference(geo, dt, layouts, seed):
    _check_conv_kernels(numba_be, geo, dt, layouts, seed, "numba")


# ---------------------------------------------------------------------------------------------------- winograd
@pytest.mark.skipif(not shifted_kernel.available(), reason="the LLVM kernels do not compile here")
@FUZZ
@given(geo=conv_geometry(winograd=True), dt=DTYPES, layouts=st.tuples(LAYOUTS, LAYOUTS, LAYOUTS),
       seed=st.integers(0, 2 ** 16))
def test_winograd_matches_the_reference(geo, dt, layouts, seed):
    from minisr.backends.numba import winograd

    N, C, O, H, W, kh, kw, sh, sw, ph, pw = geo
    x, w2, g, _ = _conv_data(geo, dt, seed)
    X, W2, G = (laid_out(a, lay) for a, lay in zip((x, w2, g), layouts))
    geom = (kh, kw, 1, 1, ph, pw)
    tag = f"winograd {geo} {np.dtype(dt).name} layouts {layouts}"
    assert winograd.possible(*geom, dt)
    _assert_close(winograd.conv_forward(X, W2, kh, ph, pw), ref.conv_forward(x, w2, *geom), dt, f"forward {tag}")
    _assert_close(winograd.conv_input_grad(W2, G, x.shape, kh, ph, pw), ref.conv_input_grad(w2, g, x.shape, *geom),
                  dt, f"dx {tag}")
    _assert_close(winograd.conv_weight_grad(G, X, kh, ph, pw)[0], ref.conv_weight_grad(g, x, *geom), dt,
                  f"dw {tag}")


# ------------------------------------------------------------------------------------- conv2d through autograd
@FUZZ
@given(geo=conv_geometry(), dt=DTYPES, layout=LAYOUTS, conv=st.sampled_from(["direct", "winograd"]),
       backend=st.sampled_from(["numba", "numpy"]), bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_conv2d_forward_and_backward_on_any_layout(geo, dt, layout, conv, backend, bias, seed, monkeypatch_module):
    """F.conv2d on a Tensor whose data is a view of any layout, forward and all three gradients, against the
    reference backend on contiguous copies; MINISR_CONV=winograd routes the 3x3 and 5x5 stride-1 layers through
    Winograd."""
    N, C, O, H, W, kh, kw, sh, sw, ph, pw = geo
    x, w2, g, _ = _conv_data(geo, dt, seed)
    w = w2.reshape(O, C, kh, kw)
    b = np.linspace(-1, 1, O).astype(dt)
    Ho, Wo = _out(H, W, kh, kw, sh, sw, ph, pw)
    g4 = g.reshape(N, O, Ho, Wo)

    def run(name, xs, ws, gs):
        with backends.use_backend(name):
            tx, tw = Tensor(xs, requires_grad=True), Tensor(ws, requires_grad=True)
            tb = Tensor(b, requires_grad=True) if bias else None
            y = F.conv2d(tx, tw, tb, stride=(sh, sw), padding=(ph, pw))
            y.backward(gs)
            return y.numpy(), tx.grad, tw.grad, (tb.grad if bias else None)

    monkeypatch_module.setenv("MINISR_CONV", conv)
    got = run(backend, laid_out(x, layout), laid_out(w, layout), laid_out(g4, layout))
    monkeypatch_module.setenv("MINISR_CONV", "direct")
    want = run("numpy", x, w, g4)
    for name, a, e in zip(("out", "dx", "dw", "db"), got, want):
        if e is not None:
            _assert_close(np.asarray(a), e, dt, f"{name} {backend} {conv} {geo} {np.dtype(dt).name} {layout}")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


# ------------------------------------------------------------------------------------------- the other kernels
@st.composite
def nchw(draw, max_side=9):
    return (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, max_side)),
            draw(st.integers(1, max_side)))


@st.composite
def pool_geometry(draw):
    N, C, H, W = draw(nchw())
    kh, kw = draw(st.integers(1, min(H, 4))), draw(st.integers(1, min(W, 4)))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    return (N, C, H, W), (kh, kw, sh, sw, ph, pw)


def _same(be, name, args, dt, what):
    ref_args = tuple(a.copy(order="C") if isinstance(a, np.ndarray) else a for a in args)
    want = getattr(ref, name)(*ref_args)
    got = getattr(be, name)(*args)
    if isinstance(want, tuple):
        for k, (a, e) in enumerate(zip(got, want)):
            _assert_close(np.asarray(a), np.asarray(e), dt, f"{what} output {k}")
    else:
        _assert_close(np.asarray(got), np.asarray(want), dt, what)


@FUZZ
@given(shape=nchw(), dt=DTYPES, layout=VIEWS, seed=st.integers(0, 2 ** 16), r=st.integers(1, 3),
       slope=st.floats(0.0, 1.0))
def test_numba_pointwise_and_shuffle_kernels(shape, dt, layout, seed, r, slope):
    rng = np.random.default_rng(seed)
    N, C, H, W = shape
    x = rng.standard_normal(shape).astype(dt)
    x.flat[::5] = 0  # the kinks
    a, g = laid_out(x, layout), laid_out(rng.standard_normal(shape).astype(dt), layout)
    t = laid_out(rng.standard_normal(shape).astype(dt), layout)
    wc = rng.standard_normal(C).astype(dt)
    tag = f"{shape} {np.dtype(dt).name} {layout}"
    for name, args in [("relu_backward", (g, np.maximum(a, 0))), ("leaky_relu_forward", (a, slope)),
                       ("leaky_relu_backward", (g, a, slope)), ("prelu_forward", (a, wc)),
                       ("prelu_backward", (g, a, wc)), ("tanh_forward", (a,)), ("tanh_backward", (g, np.tanh(a))),
                       ("sigmoid_forward", (a * dt(30),)), ("sigmoid_backward", (g, ref.sigmoid_forward(x))),
                       ("mse_forward", (a, t)), ("mse_backward", (a, t, np.asarray(0.7, dt))),
                       ("l1_forward", (a, t)), ("l1_backward", (a, t, np.asarray(1.3, dt))), ("bias_grad", (g,))]:
        _same(numba_be, name, args, dt, f"{name} {tag}")
    xs = rng.standard_normal((N, C * r * r, H, W)).astype(dt)
    _same(numba_be, "pixel_shuffle_forward", (laid_out(xs, layout), r), dt, f"shuffle {tag} r {r}")
    ys = rng.standard_normal((N, C, H * r, W * r)).astype(dt)
    _same(numba_be, "pixel_shuffle_backward", (laid_out(ys, layout), r), dt, f"unshuffle {tag} r {r}")
    y = np.ascontiguousarray(laid_out(x, layout))  # bias_add and relu_forward write in place: contiguous outputs
    yr = y.copy()
    numba_be.bias_add(y, wc)
    ref.bias_add(yr, wc)
    _assert_close(y, yr, dt, f"bias_add {tag}")
    _same(numba_be, "relu_forward", (a,), dt, f"relu {tag}")


@FUZZ
@given(geo=pool_geometry(), dt=DTYPES, layout=VIEWS, seed=st.integers(0, 2 ** 16), inc=st.booleans())
def test_numba_pool_kernels(geo, dt, layout, seed, inc):
    shape, geom = geo
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal(shape) * 2).astype(dt)  # ties: the first maximum wins everywhere
    X = laid_out(x, layout)
    idx = ref.maxpool2d_argmax(x, *geom)
    np.testing.assert_array_equal(numba_be.maxpool2d_argmax(X, *geom), idx, err_msg=f"argmax {geo} {layout}")
    g = laid_out(rng.standard_normal(idx.shape).astype(dt), layout)
    _same(numba_be, "maxpool2d_backward", (g, idx, shape) + geom, dt, f"maxpool backward {geo} {layout}")
    _same(numba_be, "avgpool2d_forward", (X,) + geom + (inc,), dt, f"avgpool {geo} {layout} {inc}")
    _same(numba_be, "avgpool2d_backward", (g, shape) + geom + (inc,), dt, f"avgpool backward {geo} {layout} {inc}")


# ----------------------------------------------------------------------------------- CuPy on the CUDA emulator
@FEW
@given(geo=conv_geometry(max_k=3), dt=DTYPES, layouts=st.tuples(LAYOUTS, LAYOUTS, LAYOUTS, LAYOUTS),
       seed=st.integers(0, 2 ** 16))
def test_cupy_conv_kernels_match_the_reference(cuda, geo, dt, layouts, seed):
    import cupy as cp

    N, C, O, H, W, kh, kw, sh, sw, ph, pw = geo
    assume(N * C * O * H * W <= 4000)  # emulated launches run on the CPU, one fiber per thread
    _check_conv_kernels(backends.get_backend("cupy"), geo, dt, layouts, seed, f"cupy ({cuda})", to=cp.asarray,
                        back=lambda a: a.get() if hasattr(a, "get") else np.asarray(a))


# ---------------------------------------------------------------------------------------- unsupported inputs
@FUZZ
@given(data=st.data())
def test_conv2d_refuses_what_it_cannot_do(data):
    """Bad geometry, mismatched channels or dtypes, non-float data: a ValueError / TypeError naming the problem,
    before any kernel runs (so never a crash in compiled code)."""
    kind = data.draw(st.sampled_from(["kernel too big", "stride", "padding", "channels", "dtype", "ndim", "empty"]))
    N, C, H, W = data.draw(nchw(max_side=6))
    k = data.draw(st.integers(1, min(H, W, 4)))
    x = np.ones((N, C, H, W), np.float32)
    w = np.ones((2, C, k, k), np.float32)
    kw = {}
    expect = ValueError
    if kind == "kernel too big":
        w = np.ones((2, C, H + 1, W + 1), np.float32)
        words = "larger than the padded input"
    elif kind == "stride":
        kw["stride"] = data.draw(st.sampled_from([0, -1, (1, 0), (1, 2, 3)]))
        words = "stride"
    elif kind == "padding":
        kw["padding"] = data.draw(st.sampled_from([-1, (0, -2)]))
        words = "padding"
    elif kind == "channels":
        w = np.ones((2, C + 1, 1, 1), np.float32)
        words = "channels"
    elif kind == "dtype":
        w = w.astype(np.float64)
        expect, words = TypeError, "dtype"
    elif kind == "ndim":
        x = x[0]
        words = "4-D"
    else:
        w = np.ones((0, C, 1, 1), np.float32)
        words = "empty"
    with pytest.raises(expect, match=words):
        F.conv2d(Tensor(x), Tensor(w), **kw)


_DTYPE_CASES = {"float16": (np.float16, np.float16), "int32": (np.int32, np.int32),
                "complex64": (np.complex64, np.complex64), "f32-f64": (np.float32, np.float64),
                "f64-f32": (np.float64, np.float32)}


@pytest.mark.parametrize("kernel,dtypes", [
    pytest.param(k, d, id=f"{k}-{name}") for k in ("conv_forward", "conv_weight_grad", "conv_input_grad", "im2col",
                                                   "col2im")
    for name, d in _DTYPE_CASES.items() if not (k in ("im2col", "col2im") and d[0] != d[1])])  # one array: no mix
@pytest.mark.parametrize("C", [2, 9], ids=["im2col-path", "shifted-path"])
def test_numba_conv_kernels_refuse_unsupported_dtypes(kernel, dtypes, C):
    """Regression (found by this file's fuzzing): called directly, below the Tensor that refuses these already,
    float16 failed inside Numba's typing with NotImplementedError, and mixed float32/float64 arrays were silently
    cast (im2col path) or stopped by the shifted kernel's bounds check with a message about the layout. Now: one
    TypeError naming the kernel and the dtypes."""
    a, b = dtypes
    x, w2, g = np.ones((1, C, 6, 6), a), np.ones((9, C * 9), b), np.ones((1, 9, 36), b)
    args = {"conv_forward": (x, w2), "conv_weight_grad": (g, x), "conv_input_grad": (w2.astype(a), g, x.shape),
            "im2col": (x.astype(b),), "col2im": (np.ones((1, C * 9, 36), b), x.shape)}[kernel]
    with pytest.raises(TypeError, match=f"numba {kernel}: needs float32 or float64"):
        getattr(numba_be, kernel)(*args, 3, 3, 1, 1, 1, 1)
