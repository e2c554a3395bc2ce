"""Every kernel of every importable backend against the numpy reference, float32 and float64, awkward shapes.

``CASES`` below builds the arguments of each name in ``minisr.backends.KERNELS``; a test fails when a kernel
is added to the seam without a case here. In-place kernels (bias_add, sgd_update, adam_update) are compared on
the arrays they modify.
"""

from __future__ import annotations

import inspect
import zlib

import numpy as np
import pytest

import minisr
import minisr.functional as F
from minisr import backends
from minisr.backends import KERNELS, get_backend
from minisr.backends import numpy_backend as ref

OTHERS = [name for name in backends.available_backends() if name != "numpy"]
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-12}  # relative to the largest magnitude of the reference result

# (N, C, H, W), (kh, kw), (sh, sw), (ph, pw): batch 1, one channel, 9x9 and 1x1 kernels, stride 2 and 3,
# padding 0 and k // 2, non-square images (also the benchmark's 3x3 "same" layer).
CONV = [
    ((1, 1, 9, 11), (9, 9), (1, 1), (0, 0)),
    ((2, 1, 10, 9), (9, 9), (3, 3), (4, 4)),
    ((2, 3, 7, 5), (1, 1), (2, 2), (0, 0)),
    ((1, 2, 10, 7), (3, 3), (2, 2), (1, 1)),
    ((2, 2, 11, 8), (3, 3), (3, 3), (0, 0)),
    ((1, 2, 8, 13), (3, 5), (2, 3), (1, 2)),
    ((3, 4, 12, 12), (3, 3), (1, 1), (1, 1)),
    ((2, 2, 6, 7), (3, 5), (1, 1), (4, 6)),  # stride 1, padding wider than the kernel: whole rows/columns of zeros
    ((1, 1, 1, 1), (3, 3), (1, 1), (1, 1)),  # a 1-pixel image
]
OUT_CH = 3


def _geometry(case):
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw) = case
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    return N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo


def _conv_args(kernel, case, rng, dt):
    N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo = _geometry(case)
    K, P = C * kh * kw, Ho * Wo
    r = lambda *s: rng.standard_normal(s).astype(dt)  # noqa: E731
    return {
        "im2col": lambda: (r(N, C, H, W), kh, kw, sh, sw, ph, pw),
        "col2im": lambda: (r(N, K, P), (N, C, H, W), kh, kw, sh, sw, ph, pw),
        "conv_forward": lambda: (r(N, C, H, W), r(OUT_CH, K), kh, kw, sh, sw, ph, pw),
        "conv_weight_grad": lambda: (r(N, OUT_CH, P), r(N, C, H, W), kh, kw, sh, sw, ph, pw),
        "conv_input_grad": lambda: (r(OUT_CH, K), r(N, OUT_CH, P), (N, C, H, W), kh, kw, sh, sw, ph, pw),
        "bias_add": lambda: (r(N, OUT_CH, Ho, Wo), r(OUT_CH)),
        "bias_grad": lambda: (r(N, OUT_CH, Ho, Wo),),
        "conv_fused_forward": lambda: (r(N, C, H, W), r(OUT_CH, K), r(OUT_CH), True, kh, kw, sh, sw, ph, pw),
        "conv_fused_backward": lambda: (r(N, OUT_CH, P), np.maximum(r(N, OUT_CH, P), 0), r(N, C, H, W), r(OUT_CH, K),
                                        kh, kw, sh, sw, ph, pw, True, True, True),
    }[kernel]()


def _partly_equal(a, b):
    """b with every 5th element set equal to a's, so a - b has exact zeros."""
    b.flat[::5] = a.flat[::5]
    return b


def _other_args(kernel, shape, rng, dt):
    r = lambda *s: rng.standard_normal(s).astype(dt)  # noqa: E731
    x = r(*shape)
    x.flat[::7] = 0  # exact zeros: the activations' kinks
    t = dt
    return {
        "relu_forward": lambda: (x,),
        "relu_backward": lambda: (r(*shape), np.maximum(x, 0)),
        "leaky_relu_forward": lambda: (x, 0.2),
        "leaky_relu_backward": lambda: (r(*shape), x, 0.01),
        "mse_forward": lambda: (r(*shape), x),
        "mse_backward": lambda: (r(*shape), x, np.asarray(0.7, dtype=t)),
        "l1_forward": lambda: (r(*shape), x),
        "l1_backward": lambda: (x, _partly_equal(x, r(*shape)), np.asarray(1.3, dtype=t)),  # sign(0) = 0
        "sgd_update": None,
        "adam_update": None,
        "tanh_forward": lambda: (x * t(3),),
        "tanh_backward": lambda: (r(*shape), np.tanh(x)),
        "sigmoid_forward": lambda: (x * t(40),),  # far into both tails: exp must not overflow
        "sigmoid_backward": lambda: (r(*shape), ref.sigmoid_forward(x)),
        "prelu_forward": lambda: (x, r(shape[1])),
        "prelu_backward": lambda: (r(*shape), x, r(shape[1])),
        "prelu_forward-1": lambda: (x, r(1)),
        "prelu_backward-1": lambda: (r(*shape), x, r(1)),
    }[kernel]()


SHUFFLE = [((1, 4, 3, 5), 2), ((2, 9, 2, 3), 3), ((1, 3, 4, 1), 1), ((2, 8, 5, 4), 2)]
ELEMENTWISE_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (4, 64, 9, 10)]  # the last one keeps several threads busy
SGD_SETTINGS = [  # lr, momentum, dampening, weight_decay, nesterov, first
    (0.1, 0.0, 0.0, 0.0, False, True),
    (0.1, 0.9, 0.0, 1e-3, False, True),
    (0.1, 0.9, 0.1, 1e-3, False, False),
    (0.05, 0.8, 0.0, 1e-2, True, False),
]
ADAM_SETTINGS = [  # step, lr, beta1, beta2, eps, weight_decay
    (1, 1e-3, 0.9, 0.999, 1e-8, 0.0),
    (7, 1e-2, 0.8, 0.99, 1e-6, 1e-2),
]


# Pooling (N, C, H, W), (kh, kw), (sh, sw), (ph, pw): default stride, overlapping windows, padding, non-square;
# integer-valued inputs so windows hold equal maxima (the arg-max is the first one in every backend).
POOL = [
    ((1, 1, 4, 6), (2, 2), (2, 2), (0, 0)),
    ((2, 3, 7, 5), (3, 3), (2, 2), (1, 1)),
    ((1, 2, 6, 9), (3, 2), (1, 2), (1, 0)),
    ((2, 2, 5, 5), (3, 3), (1, 1), (1, 1)),
    ((1, 64, 9, 10), (2, 2), (2, 2), (0, 0)),
]


def _pool_cases():
    out = []
    for pi, (shape, (kh, kw), (sh, sw), (ph, pw)) in enumerate(POOL):
        N, C, H, W = shape
        Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        geometry = (kh, kw, sh, sw, ph, pw)

        def argmax(rng, dt, shape=shape, geometry=geometry):
            return (np.round(rng.standard_normal(shape)).astype(dt),) + geometry

        def max_bwd(rng, dt, shape=shape, geometry=geometry, out_shape=(N, C, Ho, Wo)):
            idx = ref.maxpool2d_argmax(np.round(rng.standard_normal(shape)), *geometry)
            return (rng.standard_normal(out_shape).astype(dt), idx, shape) + geometry

        out.append(("maxpool2d_argmax", f"pool{pi}", argmax, ()))
        out.append(("maxpool2d_backward", f"pool{pi}", max_bwd, ()))
        for inc in (True, False):
            def avg_fwd(rng, dt, shape=shape, geometry=geometry, inc=inc):
                return (rng.standard_normal(shape).astype(dt),) + geometry + (inc,)

            def avg_bwd(rng, dt, shape=shape, geometry=geometry, inc=inc, out_shape=(N, C, Ho, Wo)):
                return (rng.standard_normal(out_shape).astype(dt), shape) + geometry + (inc,)

            out.append(("avgpool2d_forward", f"pool{pi}-{inc}", avg_fwd, ()))
            out.append(("avgpool2d_backward", f"pool{pi}-{inc}", avg_bwd, ()))
    return out


BN_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (4, 64, 9, 10), (6, 5)]  # (N, C) too: BatchNorm1d after a Linear


def _bn_args(kernel, shape, rng, dt):
    r = lambda *s: rng.standard_normal(s).astype(dt)  # noqa: E731
    C = shape[1]
    x = r(*shape) * dt(2) + dt(3)  # far from zero mean: the centring matters
    mean, invstd = r(C) + dt(3), rng.uniform(0.5, 2.0, C).astype(dt)
    return {
        "batch_norm_stats": lambda: (x,),
        "batch_norm_forward": lambda: (x, mean, invstd, r(C), r(C)),
        "batch_norm_backward-train": lambda: (r(*shape), x, mean, invstd, r(C), True),
        "batch_norm_backward-eval": lambda: (r(*shape), x, mean, invstd, r(C), False),
    }[kernel]()


def _cases():
    """(kernel, case id, args builder(rng, dtype), indices of arguments modified in place)."""
    out = []
    conv_kernels = ["im2col", "col2im", "conv_forward", "conv_weight_grad", "conv_input_grad",
                    "bias_add", "bias_grad"]
    conv_kernels += ["conv_fused_forward", "conv_fused_backward"]
    for k in conv_kernels:
        for ci, case in enumerate(CONV):
            out.append((k, f"conv{ci}", lambda rng, dt, k=k, case=case: _conv_args(k, case, rng, dt),
                        (0,) if k == "bias_add" else ()))
    for k in ("pixel_shuffle_forward", "pixel_shuffle_backward"):
        for si, (shape, r) in enumerate(SHUFFLE):
            def build(rng, dt, k=k, shape=shape, r=r):
                N, Crr, H, W = shape
                if k == "pixel_shuffle_forward":
                    return rng.standard_normal(shape).astype(dt), r
                return rng.standard_normal((N, Crr // (r * r), H * r, W * r)).astype(dt), r
            out.append((k, f"shuffle{si}", build, ()))
    for k in ("relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
              "mse_forward", "mse_backward", "l1_forward", "l1_backward"):
        for shape in ELEMENTWISE_SHAPES:
            out.append((k, "x".join(map(str, shape)),
                        lambda rng, dt, k=k, s=shape: _other_args(k, s, rng, dt), ()))
    for k in ("tanh_forward", "tanh_backward", "sigmoid_forward", "sigmoid_backward", "prelu_forward",
              "prelu_backward"):
        for shape in ELEMENTWISE_SHAPES:
            for v in (["", "-1"] if k.startswith("prelu") else [""]):  # C slopes, or one shared slope
                out.append((k, "x".join(map(str, shape)) + v,
                            lambda rng, dt, k=k, s=shape, v=v: _other_args(k + v, s, rng, dt), ()))
    for si, setting in enumerate(SGD_SETTINGS):
        def build(rng, dt, setting=setting):
            p, g = rng.standard_normal((4, 3, 3, 3)).astype(dt), rng.standard_normal((4, 3, 3, 3)).astype(dt)
            buf = rng.standard_normal(p.shape).astype(dt) if setting[1] else None
            return (p, g, buf) + setting
        out.append(("sgd_update", f"sgd{si}", build, (0, 2)))
    for ai, setting in enumerate(ADAM_SETTINGS):
        def build(rng, dt, setting=setting):
            p, g, m = (rng.standard_normal((5, 2, 3, 3)).astype(dt) for _ in range(3))
            v = rng.uniform(0.0, 2.0, p.shape).astype(dt)
            return (p, g, m, v) + setting
        out.append(("adam_update", f"adam{ai}", build, (0, 2, 3)))
    for k in ("batch_norm_stats", "batch_norm_forward", "batch_norm_backward-train", "batch_norm_backward-eval"):
        for shape in BN_SHAPES:
            out.append((k.split("-")[0], "x".join(map(str, shape)) + k[len(k.split("-")[0]):],
                        lambda rng, dt, k=k, s=shape: _bn_args(k, s, rng, dt), ()))
    out += _pool_cases()
    return out


CASES = _cases()


def _copy(args):
    return tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)


def _assert_close(got, want, dt, what):
    assert isinstance(got, np.ndarray), f"{what}: got {type(got).__name__}, not an ndarray"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != reference {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != reference {want.dtype}"
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dt] * scale, err_msg=what)


def test_every_kernel_has_a_case():
    assert {c[0] for c in CASES} == set(KERNELS)


@pytest.mark.parametrize("name", ["numpy"] + OTHERS)
def test_backend_defines_every_kernel_with_the_reference_signature(name):
    be = get_backend(name)
    for k in KERNELS:
        assert callable(getattr(be, k, None)), f"backend {name} lacks kernel {k}"
        assert (list(inspect.signature(getattr(be, k)).parameters)
                == list(inspect.signature(getattr(ref, k)).parameters)), f"{name}.{k}: signature differs"


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kernel,case_id,build,inplace", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_kernel_matches_numpy(backend, dt, kernel, case_id, build, inplace):
    be = get_backend(backend)
    args = build(np.random.default_rng(zlib.crc32(f"{kernel}{case_id}".encode())), dt)
    ref_args, be_args = _copy(args), _copy(args)
    want = getattr(ref, kernel)(*ref_args)
    got = getattr(be, kernel)(*be_args)
    what = f"{backend}.{kernel} {case_id} {np.dtype(dt).name}"
    if inplace:
        for i in inplace:
            if ref_args[i] is not None:
                _assert_close(be_args[i], ref_args[i], dt, f"{what} (argument {i}, in place)")
    if isinstance(want, tuple):  # kernels with several outputs (prelu_backward: dx, dw)
        assert isinstance(got, tuple) and len(got) == len(want), f"{what}: {len(want)} outputs expected"
        for i, (a, b) in enumerate(zip(got, want)):
            _assert_close(a, b, dt, f"{what} (output {i})")
    elif want is not None:
        _assert_close(np.asarray(got) if np.isscalar(got) else got, np.asarray(want), dt, what)


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
@pytest.mark.parametrize("N", [1, 2, 3, 7])
@pytest.mark.parametrize("band_bytes", [1 << 22, 1])
def test_numba_conv_gemms_over_threads_and_bands(N, band_bytes, monkeypatch):
    """The numba conv GEMMs split the images (and, for few or big images, bands of output rows) over worker
    threads with single-threaded BLAS; every split gives the reference's result, and NumPy's BLAS thread count
    is given back."""
    from minisr.backends.numba import conv_im2col, threads

    nbe = get_backend("numba")
    monkeypatch.setattr(conv_im2col, "_BAND_BYTES", band_bytes)  # 1: one output row per band
    if threads._set_blas_threads is not None:
        blas_threads = threads._set_blas_threads(1)  # (read the current count)
        threads._set_blas_threads(blas_threads)
    rng = np.random.default_rng(N)
    geometry = (3, 3, 1, 2, 1, 0)  # kh, kw, sh, sw, ph, pw
    x, w2 = rng.standard_normal((N, 4, 9, 8)), rng.standard_normal((5, 36))
    g = rng.standard_normal((N, 5, 9 * 3))
    bands = conv_im2col._bands(N, 9, 36 * 3 * 8)
    assert sorted((n, i) for n, i0, i1 in bands for i in range(i0, i1)) == [(n, i) for n in range(N) for i in range(9)]
    np.testing.assert_allclose(nbe.conv_forward(x, w2, *geometry), ref.conv_forward(x, w2, *geometry), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(nbe.conv_weight_grad(g, x, *geometry), ref.conv_weight_grad(g, x, *geometry),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nbe.conv_input_grad(w2, g, x.shape, *geometry),
                               ref.conv_input_grad(w2, g, x.shape, *geometry), rtol=1e-12, atol=1e-12)
    if threads._set_blas_threads is not None:
        assert threads._set_blas_threads(blas_threads) == blas_threads


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
def test_numba_one_thread_bounds_blas_threads():
    """With one Numba thread (NUMBA_NUM_THREADS=1), conv work that calls BLAS runs with one BLAS thread -- not
    BLAS's default of every core, whose threads wait for cores that other processes hold -- and BLAS's count is
    given back after; work that calls no BLAS leaves it alone."""
    from minisr.backends.numba import threads

    if threads._set_blas_threads is None:
        pytest.skip("NumPy's BLAS is not OpenBLAS: its thread count cannot be set")
    seen = []

    def work(t, share):
        n = threads._set_blas_threads(1)  # (read the current count)
        threads._set_blas_threads(n)
        seen.append(n)

    numba_threads, blas_threads = threads.numba.get_num_threads(), threads._set_blas_threads(3)
    try:
        threads.numba.set_num_threads(1)
        threads._run([(0, 0, 4), (1, 0, 4)], work)
        assert seen == [1]
        assert threads._set_blas_threads(3) == 3  # given back
        threads._run([(0, 0, 4), (1, 0, 4)], work, blas=False)
        assert seen == [1, 3]
    finally:
        threads.numba.set_num_threads(numba_threads)
        threads._set_blas_threads(blas_threads)


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("case", [c for c in CONV if c[2] == (1, 1)] + [((2, 8, 7, 9), (3, 3), (1, 1), (1, 1))],
                         ids=lambda c: f"{c[0]}k{c[1]}p{c[3]}")
def test_numba_shifted_gemm_convs(case, dt, monkeypatch):
    """Stride-1 convs with enough channels run as shifted GEMMs straight on the padded input (no im2col);
    forced onto every stride-1 geometry here, they must give the reference's output and both gradients."""
    from minisr.backends.numba import conv_shifted

    nbe = get_backend("numba")
    monkeypatch.setattr(conv_shifted, "_SHIFTED_MIN_CHANNELS", 1)
    N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo = _geometry(case)
    rng = np.random.default_rng(7)
    x, w2 = rng.standard_normal((N, C, H, W)).astype(dt), rng.standard_normal((5, C * kh * kw)).astype(dt)
    g = rng.standard_normal((N, 5, Ho * Wo)).astype(dt)
    geometry = (kh, kw, sh, sw, ph, pw)
    assert conv_shifted._shifted(x, C, sh, sw)
    for got, want in [(nbe.conv_forward(x, w2, *geometry), ref.conv_forward(x, w2, *geometry)),
                      (nbe.conv_weight_grad(g, x, *geometry), ref.conv_weight_grad(g, x, *geometry)),
                      (nbe.conv_input_grad(w2, g, x.shape, *geometry), ref.conv_input_grad(w2, g, x.shape, *geometry))]:
        assert got.shape == want.shape and got.dtype == want.dtype
        _assert_close(got, want, dt, "shifted conv")


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape,pad", [((2, 8, 9, 7), (1, 1)), ((3, 16, 12, 12), (1, 1)), ((1, 8, 6, 11), (0, 0)),
                                       ((2, 9, 10, 13), (2, 1)), ((1, 8, 3, 3), (0, 0)), ((2, 11, 5, 4), (1, 2))],
                         ids=str)
def test_numba_polyphase_strided_convs(shape, pad, dt, monkeypatch):
    """3x3 stride-2 convs with 8-128 channels run as shifted GEMMs over the input's four polyphase images (no
    im2col: that path is made to fail here); on odd and even sizes and paddings, the output, the bias and ReLU
    fused into it, and both gradients are the reference's."""
    from minisr.backends.numba import conv, conv_polyphase

    def no_columns(*args, **kwargs):
        raise AssertionError("a polyphase conv went to im2col")

    for name in ("_conv_forward_cols", "_conv_weight_grad_cols", "_conv_input_grad_cols"):
        monkeypatch.setattr(conv, name, no_columns)
    nbe = get_backend("numba")
    (N, C, H, W), (ph, pw), O = shape, pad, 5
    geometry = (3, 3, 2, 2, ph, pw)
    rng = np.random.default_rng(11)
    x, w2 = rng.standard_normal((N, C, H, W)).astype(dt), rng.standard_normal((O, C * 9)).astype(dt)
    b = rng.standard_normal(O).astype(dt)
    want = ref.conv_forward(x, w2, *geometry)
    g = rng.standard_normal(want.shape).astype(dt)
    assert conv_polyphase._polyphase(x, C, 3, 3, 2, 2) and not conv_polyphase._polyphase(x, C, 3, 3, 1, 1)
    fused = np.maximum(want + b[None, :, None], 0)
    for got, want_, what in [(nbe.conv_forward(x, w2, *geometry), want, "forward"),
                             (nbe.conv_fused_forward(x, w2, b, True, *geometry), fused, "fused forward"),
                             (nbe.conv_weight_grad(g, x, *geometry), ref.conv_weight_grad(g, x, *geometry), "dw"),
                             (nbe.conv_input_grad(w2, g, x.shape, *geometry),
                              ref.conv_input_grad(w2, g, x.shape, *geometry), "dx")]:
        assert got.shape == want_.shape and got.dtype == want_.dtype, what
        _assert_close(got, want_, dt, f"polyphase conv {what}")


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("C,k,p", [(1, 9, 0), (1, 5, 2), (3, 3, 1), (1, 3, 1)])
def test_numba_first_layer_weight_grad_on_shifted_kernel(dt, C, k, p):
    """A first layer (C = 1 or 3) computes its weight gradient (with ReLU's mask and the bias gradient fused) on
    the shifted kernels when C * kh * kw >= 25 and its forward on im2col; VDSR's 1 -> 64 3x3 (9 taps) stays on
    im2col for both. Either way the result is the reference's."""
    from minisr.backends.numba import conv_shifted

    nbe = get_backend("numba")
    rng = np.random.default_rng(11)
    x, w2 = rng.standard_normal((3, C, 13, 11)).astype(dt), rng.standard_normal((7, C * k * k)).astype(dt)
    b = rng.standard_normal(7).astype(dt)
    geometry = (k, k, 1, 1, p, p)
    assert not conv_shifted._shifted(x, C, 1, 1, k, k)
    assert conv_shifted._shifted(x, C, 1, 1, k, k, weight_grad=True) == (C * k * k >= 25)
    y = nbe.conv_fused_forward(x, w2, b, True, *geometry)
    _assert_close(y, ref.conv_fused_forward(x, w2, b, True, *geometry), dt, "forward")
    g = rng.standard_normal(y.shape).astype(dt)
    _assert_close(nbe.conv_weight_grad(g, x, *geometry), ref.conv_weight_grad(g, x, *geometry), dt, "weight gradient")
    got = nbe.conv_fused_backward(g, y, x, w2, *geometry, False, True, True)
    want = ref.conv_fused_backward(g, y, x, w2, *geometry, False, True, True)
    assert got[0] is None
    for a, r, what in zip(got[1:], want[1:], ("fused dw", "fused db")):
        _assert_close(a, r, dt, what)


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("run_cols", [40, 4096])
@pytest.mark.parametrize("k,p", [(3, 1), (5, 0), (3, 2), (1, 1), (5, 3)])
@pytest.mark.parametrize("skip_min", [0, 10**9])
def test_numba_shifted_convs_row_blocks_and_runs(dt, run_cols, k, p, skip_min, monkeypatch):
    """O = 16 output channels and C = 11 input channels (blocks of the kernel's rows and remainder blocks; a
    weight gradient through the kernel's GEMM, as O is a multiple of a tile), on runs of a few grid rows (run_cols=40:
    pieces of an image's rows, or runs that span images, some holding junk rows only) or of whole images (4096); 3x3
    'same', 5x5 'valid' (grid rows below the outputs skipped) and 3x3 with padding 2 (padding rows skipped by the
    input gradient)."""
    from minisr.backends.numba import conv_shifted, threads

    nbe = get_backend("numba")
    monkeypatch.setenv("MINISR_CONV", "direct")  # (the shifted kernels, not Winograd)
    monkeypatch.setattr(conv_shifted, "_RUN_COLS", run_cols)
    monkeypatch.setattr(conv_shifted, "_SKIP_MIN_COLS", skip_min)  # skipping the unneeded rows, or not
    if run_cols == 40:  # our kernels call no BLAS: they use every thread even when BLAS's count can't be set
        monkeypatch.setattr(threads, "_set_blas_threads", None)
        assert threads._threads(blas=False) == threads.numba.get_num_threads()
    rng = np.random.default_rng(3)
    geometry = (k, k, 1, 1, p, p)
    H, W = 9, 8
    Ho, Wo = H + 2 * p - k + 1, W + 2 * p - k + 1
    x, w2 = rng.standard_normal((3, 11, H, W)).astype(dt), rng.standard_normal((16, 11 * k * k)).astype(dt)
    g = rng.standard_normal((3, 16, Ho * Wo)).astype(dt)
    assert conv_shifted._shifted(x, 11, 1, 1)
    _assert_close(nbe.conv_forward(x, w2, *geometry), ref.conv_forward(x, w2, *geometry), dt, "forward")
    _assert_close(nbe.conv_weight_grad(g, x, *geometry), ref.conv_weight_grad(g, x, *geometry), dt, "weight gradient")
    _assert_close(nbe.conv_input_grad(w2, g, x.shape, *geometry), ref.conv_input_grad(w2, g, x.shape, *geometry), dt,
                  "input gradient")
    # the fused kernels (bias and ReLU in the forward's output pass, ReLU's mask applied as g is copied)
    b = rng.standard_normal(16).astype(dt)
    y = nbe.conv_fused_forward(x, w2, b, True, *geometry)
    _assert_close(y, ref.conv_fused_forward(x, w2, b, True, *geometry), dt, "fused forward")
    got = nbe.conv_fused_backward(g, y, x, w2, *geometry, True, True, True)
    want = ref.conv_fused_backward(g, y, x, w2, *geometry, True, True, True)
    for a, r, what in zip(got, want, ("fused dx", "fused dw", "fused db")):
        _assert_close(a, r, dt, what)


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("C,O", [(16, 32), (35, 48)])
@pytest.mark.parametrize("H,W,k,p", [(9, 8, 5, 0), (7, 11, 3, 1), (1, 1, 3, 1), (6, 3, 3, 2), (13, 25, 5, 0),
                                     (5, 30, 1, 0)], ids=str)
def test_numba_bcast_convs(dt, C, O, H, W, k, p, monkeypatch):
    """Passes whose channels fill whole vectors run on bcast_gemm (output channels in the lanes, blocks along
    each row; the input gradient skips the taps that would read g's zero border) and the weight gradient on
    bcast_dot (g's channels in the lanes, sums over the valid columns only), here forced onto every
    geometry: rows narrower than a block, 1-pixel images, padding wider than the kernel's reach, blocks that
    overlap at a row's end, several lane groups. Output, fused bias + ReLU, and both gradients are the
    reference's; the bcast path is checked to have run."""
    from minisr.backends import shifted_kernel as sk
    from minisr.backends.numba import conv_shifted

    nbe = get_backend("numba")
    monkeypatch.setenv("MINISR_CONV", "direct")  # (3x3 layers of >= 16 channels would run as Winograd)
    monkeypatch.setattr(conv_shifted, "_BCAST_MAX_WORK", 100.0)  # (every geometry, whatever the work)
    monkeypatch.setattr(conv_shifted, "_BCAST_DOT_MAX_WORK", 100.0)
    monkeypatch.setattr(conv_shifted, "_RUN_COLS", 64)  # (runs of a few rows: blocks at runs' edges)
    calls, dots = [], []
    real, real_dot = sk.bcast_gemm, sk.bcast_dot
    monkeypatch.setattr(sk, "bcast_gemm", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    monkeypatch.setattr(sk, "bcast_dot", lambda *a, **kw: (dots.append(1), real_dot(*a, **kw))[1])
    rng = np.random.default_rng(13)
    N, geometry = 3, (k, k, 1, 1, p, p)
    x, w2 = rng.standard_normal((N, C, H, W)).astype(dt), rng.standard_normal((O, C * k * k)).astype(dt)
    b = rng.standard_normal(O).astype(dt)
    want = ref.conv_forward(x, w2, *geometry)
    g = rng.standard_normal(want.shape).astype(dt)
    _assert_close(nbe.conv_forward(x, w2, *geometry), want, dt, "forward")
    biased = ref.conv_fused_forward(x, w2, b, False, *geometry)
    _assert_close(nbe.conv_fused_forward(x, w2, b, False, *geometry), biased, dt, "forward + bias")
    y = nbe.conv_fused_forward(x, w2, b, True, *geometry)
    _assert_close(y, ref.conv_fused_forward(x, w2, b, True, *geometry), dt, "fused forward")
    assert calls, "the forward did not run on bcast_gemm"
    calls.clear()
    _assert_close(nbe.conv_input_grad(w2, g, x.shape, *geometry), ref.conv_input_grad(w2, g, x.shape, *geometry), dt,
                  "input gradient")
    got = nbe.conv_fused_backward(g, y, x, w2, *geometry, True, True, True)
    for a, r, what in zip(got, ref.conv_fused_backward(g, y, x, w2, *geometry, True, True, True),
                          ("fused dx", "fused dw", "fused db")):
        _assert_close(a, r, dt, what)
    VW = sk.bcast_shape(1, dt)[2]
    assert bool(calls) == (C % VW == 0), "the input gradient's path"  # (35 input channels: no whole vectors)
    assert dots, "the weight gradient did not run on bcast_dot"


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
def test_bcast_choice_follows_the_work():
    """bcast_gemm is chosen where it computes at most 1.02x the shifted grid's positions, with blocks of the
    length the cost model picks: SRCNN's 64 -> 32 5x5 'valid' forward (21 of 25 columns: blocks of 7) and its input
    gradient (84% of the taps), VDSR's and EDSR's 3x3 'same' layers (blocks of 6), a 512-wide row in blocks of 6;
    not channels that fill no whole vector, not a 1-channel sum, not a row 3 positions wider than the grid."""
    from minisr.backends import shifted_kernel as sk
    from minisr.backends.numba.conv_shifted import _bcast_p, _taps_kept

    if not sk.available() or sk.bcast_shape(1, np.float32)[2] != 16:
        pytest.skip("the figures below are for AVX-512 (16 float32 lanes)")
    f = np.float32
    assert _taps_kept(25, 21, 5, 0) == pytest.approx(0.84) and _taps_kept(41, 41, 3, 1) == pytest.approx(1 - 2 / 123)
    assert _bcast_p(32, 64, 21, 25, f) == 7
    assert _bcast_p(64, 32, 25, 25, f, _taps_kept(25, 21, 5, 0)) == 5
    assert _bcast_p(64, 64, 41, 43, f) == 6 and _bcast_p(64, 64, 48, 50, f) == 6 and _bcast_p(64, 64, 512, 514, f) == 6
    assert _bcast_p(56, 64, 21, 25, f) == 0 and _bcast_p(32, 1, 21, 21, f, _taps_kept(21, 17, 5, 0)) == 0
    assert _bcast_p(64, 64, 40, 37, f) == 0  # (rule check: 42 positions in blocks of 6 against 37)
    # the weight gradient's stricter rule: SRCNN's 21 of 25 columns, not a 3x3 'same' layer's 41 of 43
    assert _bcast_p(32, 64, 21, 25, f, max_work=0.85) == 7 and _bcast_p(64, 64, 41, 43, f, max_work=0.85) == 0


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
@pytest.mark.parametrize("N,H,k,p,run_cols", [(128, 25, 5, 0, 4096), (3, 9, 5, 0, 40), (1, 300, 3, 1, 4096),
                                              (16, 41, 3, 1, 4096), (5, 7, 3, 2, 40), (2, 1, 3, 1, 4096)])
@pytest.mark.parametrize("skip_min", [0, 10**9])
def test_shifted_row_runs_cover_exactly_the_needed_rows(N, H, k, p, run_cols, skip_min, monkeypatch):
    """row_runs(lo, hi) covers each image's grid rows [lo, hi) exactly once and, when it skips rows (skip_min 0),
    never a row outside them, one image per run; otherwise (skip_min huge) every grid row, in runs across
    images. Runs hold at most _RUN_COLS positions (or one row); their count is a multiple of the thread count
    whenever the rows allow it."""
    from minisr.backends.numba import conv_shifted, threads

    monkeypatch.setattr(conv_shifted, "_RUN_COLS", run_cols)
    monkeypatch.setattr(conv_shifted, "_SKIP_MIN_COLS", skip_min)
    G = conv_shifted._Grid((N, 8, H, H), k, k, p, p)
    T = threads._threads(blas=False)
    for lo, hi in [(0, G.Ho), (p, p + H), (0, G.Hp)]:
        runs = G.row_runs(lo, hi)
        covered = [r for r0, r1 in runs for r in range(r0, r1)]
        skip = skip_min == 0 and hi - lo < G.Hp
        assert covered == [n * G.Hp + i for n in range(N) for i in (range(lo, hi) if skip else range(G.Hp))]
        assert all(r1 > r0 and ((r1 - r0) * G.Wp <= run_cols or r1 - r0 == 1) for r0, r1 in runs)
        if skip:
            assert all(r0 // G.Hp == (r1 - 1) // G.Hp for r0, r1 in runs)
        rows = N * (hi - lo if skip else G.Hp)
        if rows >= 2 * T:
            assert len(runs) % T == 0 or len(runs) == rows, (len(runs), T)


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
@pytest.mark.parametrize("N,H,k,p,run_cols", [(128, 25, 5, 0, 4096), (3, 9, 5, 0, 40), (1, 300, 3, 1, 4096),
                                              (16, 41, 3, 1, 4096), (5, 7, 3, 2, 40), (2, 1, 3, 1, 4096),
                                              (4, 3, 3, 0, 40)])
@pytest.mark.parametrize("step", [1, 16, 48])
def test_shifted_segments_cover_exactly_the_needed_rows(N, H, k, p, run_cols, step, monkeypatch):
    """In runs across images (every grid row), the segments of _segments_needed(lo, hi) cover each image's rows
    [lo, hi) and (up to the rounding to whole steps, which never overlaps, and gaps shorter than a step, merged)
    no other row; _tile_starts lists their tiles."""
    from minisr.backends.numba import conv_shifted

    monkeypatch.setattr(conv_shifted, "_RUN_COLS", run_cols)
    monkeypatch.setattr(conv_shifted, "_SKIP_MIN_COLS", 10**9)
    G = conv_shifted._Grid((N, 8, H, H), k, k, p, p)
    for lo, hi in [(0, G.Ho), (p, p + H), (0, G.Hp)]:
        runs = G.row_runs(lo, hi)
        assert [r for r0, r1 in runs for r in range(r0, r1)] == list(range(N * G.Hp))
        needed = {(n * G.Hp + i) * G.Wp + j for n in range(N) for i in range(lo, hi) for j in range(G.Wp)}
        covered = []
        for r0, r1 in runs:
            segs = conv_shifted._segments_needed(r0, r1, G.Hp, G.Wp, lo, hi, step)
            assert (segs[:, 1] > 0).all() and (np.diff(segs[:, 0]) > 0).all()
            ends = segs[:, 0] + segs[:, 1] * step
            assert (segs[1:, 0] >= ends[:-1]).all()  # no position twice
            got = {r0 * G.Wp + q for a, e in zip(segs[:, 0], ends) for q in range(a, e)}
            in_run = {q for q in needed if r0 * G.Wp <= q < r1 * G.Wp}
            assert in_run <= got  # every needed position of the run
            rel = {q - r0 * G.Wp for q in in_run}
            for q in {q - r0 * G.Wp for q in got - in_run}:  # the rounding at a segment's end, or a short gap
                assert any(e - step < q < e for e in ends) or any(q + d in rel for d in range(1, step)), q
            covered += sorted(in_run)
            starts, end = conv_shifted._tile_starts(segs, step)
            assert starts.tolist() == [a + j * step for a, c in segs for j in range(c)]
            assert end == (ends[-1] if len(segs) else 0)
        assert covered == sorted(needed)


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
@pytest.mark.parametrize("dt", DTYPES)
def test_shifted_kernel_definition_and_bounds(dt):
    """The hand-written kernels compute their definitions -- shifted_gemm: out[m, n] = sum_k sum_c A[k, m, c]
    B[c, n + offs[k]]; gemm_nt: out[m, n] += sum_q A[m, q] B[boffs[n] + q], A a strided view -- with full and
    remainder blocks, and refuse buffers they would read or write past."""
    from minisr.backends import shifted_kernel as sk

    rng = np.random.default_rng(5)
    MB, TILE = sk.block_shape(dt)
    M, K, ntiles, offs = 2 * MB + 3, 7, 3, np.array([0, 1, 5, 9], np.int64)
    A = rng.standard_normal((len(offs), M, K)).astype(dt)
    B = rng.standard_normal((K, ntiles * TILE + 9 + 5)).astype(dt)
    for starts in (sk.tile_starts(ntiles, dt), np.array([2 * TILE + 5, 3, 3 + TILE], np.int64)):  # any order
        out = np.full((M, ntiles * TILE + 5), np.nan, dt)
        sk.shifted_gemm(sk.pack(A, MB), B, offs, out, starts)
        n = (starts[:, None] + np.arange(TILE)).ravel()  # the tiles' columns: written; the others: not
        _assert_close(out[:, n], sum(A[k] @ B[:, n + o] for k, o in enumerate(offs)), dt, "shifted_gemm")
        assert np.isnan(np.delete(out, n, axis=1)).all()
    with pytest.raises(ValueError, match="out of bounds"):
        sk.shifted_gemm(sk.pack(A, MB), B[:, :-6].copy(), offs, out, starts)
    with pytest.raises(ValueError, match="out of bounds"):
        sk.shifted_gemm(sk.pack(A, MB), B, offs, out[:, :-1].copy(), starts)
    # per-tap channel ranges: tap k sums B's rows c0_k .. c0_k + count_k - 1 with A[k, :, :count_k]
    chans = np.array([[0, 7], [2, 3], [4, 3], [6, 1]], np.int64)
    starts = np.array([TILE + 4, 0], np.int64)
    out = np.full((M, ntiles * TILE + 5), np.nan, dt)
    sk.shifted_gemm(sk.pack(A, MB), B, offs, out, starts, chans)
    n = (starts[:, None] + np.arange(TILE)).ravel()
    want = sum(A[k, :, :cnt] @ B[c0:c0 + cnt, n + o] for k, (o, (c0, cnt)) in enumerate(zip(offs, chans)))
    _assert_close(out[:, n], want, dt, "shifted_gemm with channel ranges")
    for bad in ([[0, 7], [2, 3], [5, 3], [6, 1]], [[0, 8], [0, 1], [0, 1], [0, 1]]):  # past B's rows, past K
        with pytest.raises(ValueError, match="out of bounds"):
            sk.shifted_gemm(sk.pack(A, MB), B, offs, out, starts, np.array(bad, np.int64))

    MB, NB, VW = sk.dot_shape(dt)
    for M, N in [(2 * MB + 1, 3 * NB + 2), (1, 1), (MB, NB)]:
        Q = 6 * VW
        A = rng.standard_normal((M, Q + 7)).astype(dt)[:, 3:3 + Q]
        B = rng.standard_normal(400).astype(dt)
        boffs = rng.integers(0, B.size - Q + 1, N).astype(np.int64)
        out = rng.standard_normal((M, N)).astype(dt)
        want = out + A @ np.stack([B[o:o + Q] for o in boffs]).T
        sk.gemm_nt(A, B, boffs, out)
        _assert_close(out, want, dt, f"gemm_nt {M}x{N}")
        segs = np.array([[VW + 3, 1], [2 * VW + 5, 2]], np.int64)  # q in [VW + 3, 2 VW + 3) and [2 VW + 5, 4 VW + 5)
        q = np.r_[VW + 3:2 * VW + 3, 2 * VW + 5:4 * VW + 5]
        want = out + A[:, q] @ np.stack([B[o + q] for o in boffs]).T
        sk.gemm_nt(A, B, boffs, out, segs)
        _assert_close(out, want, dt, f"gemm_nt {M}x{N}, segments")
    with pytest.raises(ValueError, match="out of bounds"):
        sk.gemm_nt(A, B, boffs + (B.size - Q + 1 - boffs.max()), out)
    with pytest.raises(ValueError, match="out of bounds"):
        sk.gemm_nt(A, B, boffs, out, np.array([[Q - VW + 1, 1]], np.int64))  # past A's row

    # bcast_gemm: out[o, q] = sum_(k0 <= k < k1) sum_c A[k, c, o] B[c, q + offs[k]] over P positions per block,
    # output channels in groups of vectors (several groups and a padded last one), any tap range per block
    P_max, OV, VW = sk.bcast_shape(10**6, dt)
    O, K, offs = 2 * OV * VW + 5, 9, np.array([0, 1, 5, 9, 12], np.int64)
    A = rng.standard_normal((len(offs), K, O)).astype(dt)
    B = rng.standard_normal((K, 80)).astype(dt)
    groups = sk.bcast_pack(A)
    Opad = groups[-1][0] + groups[-1][1].shape[2]
    assert len(groups) == 3 and Opad % VW == 0 and O <= Opad < O + VW
    for P in (P_max, 3):
        blocks = np.array([[0, 0, 5], [2 * P + 1, 1, 4], [P, 3, 3], [40, 2, 5]], np.int64)  # ([P, 3, 3]: no tap)
        out = np.full((Opad, 60), np.nan, dt)
        sk.bcast_gemm(groups, B, offs, out, blocks, P)
        written = np.zeros(60, bool)
        for q0, k0, k1 in blocks:
            q = np.arange(q0, q0 + P)
            want = sum((A[k].T @ B[:, q + offs[k]] for k in range(k0, k1)), np.zeros((O, P), dt))
            _assert_close(out[:O, q], want, dt, f"bcast_gemm P={P} block {q0, k0, k1}")
            written[q] = True
        assert np.isnan(out[:, ~written]).all()  # (the positions of no block: not written)
    with pytest.raises(ValueError, match="out of bounds"):
        sk.bcast_gemm(groups, B, offs, out, np.array([[60 - P + 1, 0, 5]], np.int64), P)  # past out
    with pytest.raises(ValueError, match="out of bounds"):
        sk.bcast_gemm(groups, B[:, :45].copy(), offs, out, np.array([[31, 0, 5]], np.int64), P)  # past B
    with pytest.raises(ValueError, match="out of bounds"):
        sk.bcast_gemm(groups, B, offs, out, np.array([[0, 0, 6]], np.int64), P)  # past the taps
    with pytest.raises(ValueError, match="out of bounds"):
        sk.bcast_gemm(groups, B, offs, out, blocks, P_max + 1)  # more positions than registers
    # ... with 4-column blocks (q0, k0, k1, o): straight into an NCHW tensor at flat index o + m * H*W + p, with the
    # bias and the ReLU (whole vectors of channels: the first 2 groups' channels)
    O2 = 2 * OV * VW
    A2 = A[:, :, :O2].copy()
    bias = rng.standard_normal(O2).astype(dt)
    for relu in (False, True):
        out4 = np.full((2, O2, 3, 9), np.nan, dt)
        P = 4
        blocks4 = np.array([[2, 0, 5, 1 * O2 * 27 + 2 * 9 + 5], [30, 1, 3, 0 * O2 * 27 + 0 * 9 + 0]], np.int64)
        sk.bcast_gemm(sk.bcast_pack(A2, bias), B, offs, out4, blocks4, P, relu)
        for (q0, k0, k1, _), (n, h, w) in zip(blocks4, [(1, 2, 5), (0, 0, 0)]):
            q = np.arange(q0, q0 + P)
            want = sum(A2[k].T @ B[:, q + offs[k]] for k in range(k0, k1)) + bias[:, None]
            _assert_close(out4[n, :, h, w:w + P], np.maximum(want, 0) if relu else want, dt, f"direct, relu={relu}")
        assert np.isnan(out4).sum() == out4.size - 2 * O2 * P  # (nothing else written)
    with pytest.raises(ValueError, match="out of bounds"):
        sk.bcast_gemm(sk.bcast_pack(A2), B, offs, out4, np.array([[0, 0, 5, O2 * 27 + 26]], np.int64), P)  # past out

    # bcast_dot: out[o, n] += sum_q G[q, o] B[boffs[n] + q] over segments of any start and length (several lane
    # groups; full blocks of B's rows and a remainder block)
    for O, N in [(2 * OV * VW + VW, 2 * P_max + 3), (VW, 1)]:
        G = rng.standard_normal((50, O + 3)).astype(dt)
        B = rng.standard_normal(300).astype(dt)
        boffs = rng.integers(0, 200, N).astype(np.int64)
        segs = np.array([[3, 17], [40, 1], [21, 0], [25, 10]], np.int64)
        q = np.r_[3:20, 40:41, 25:35]
        out = rng.standard_normal((O, N)).astype(dt)
        want = out + G[q, :O].T @ np.stack([B[o + q] for o in boffs]).T
        sk.bcast_dot(G, B, boffs, out, segs)
        _assert_close(out, want, dt, f"bcast_dot {O}x{N}")
    with pytest.raises(ValueError, match="out of bounds"):
        sk.bcast_dot(G, B, boffs, out, np.array([[45, 6]], np.int64))  # past G's rows
    with pytest.raises(ValueError, match="out of bounds"):
        sk.bcast_dot(G, B, boffs + 300 - 35 - int(boffs.max()) + 1, out, segs)  # past B
    with pytest.raises(ValueError, match="out of bounds"):
        sk.bcast_dot(G, B, boffs, np.zeros((VW + 1, 1), dt), segs)  # rows not a whole vector


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
def test_shifted_kernel_avx2_build(monkeypatch):
    """The kernel built for an AVX2 machine (16 registers of 32 bytes: other block shapes) is right too: this
    AVX-512 (or AVX2) machine runs that code as well."""
    from minisr.backends import shifted_kernel as sk

    sk._machine()  # (initialises LLVM's native target)
    monkeypatch.setattr(sk, "_state", {"cpu": ("haswell", ""), "simd": (32, 16)})
    monkeypatch.setattr(sk, "_kernels", {})
    assert sk.block_shape(np.float32) == (4, 24) and sk.dot_shape(np.float32) == (3, 4, 8)
    test_shifted_kernel_definition_and_bounds(np.float32)
    test_shifted_kernel_definition_and_bounds(np.float64)
    assert all(key[1] <= 4 for key in sk._kernels  # the AVX2 shapes were used
               if key[0] not in (sk._build_bcast, sk._build_bcast_dot))
    assert sk.bcast_shape(64, np.float32) == (6, 2, 8)  # (64 outputs: 2 groups of 2 vectors of 8)


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
def test_shifted_kernel_that_does_not_compile_falls_back_to_im2col(monkeypatch):
    """Where LLVM cannot build the kernel (an llvmlite without the API it uses, say), convs warn once and run as
    im2col + BLAS, with the same results."""
    from minisr.backends import shifted_kernel as sk
    from minisr.backends.numba import conv_shifted

    nbe = get_backend("numba")

    def broken(*args):
        raise RuntimeError("no LLVM here")

    monkeypatch.setattr(sk, "_state", {})
    monkeypatch.setattr(sk, "_kernels", {})
    monkeypatch.setattr(sk, "_build", broken)
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 5)).astype(np.float32)
    w2 = np.random.default_rng(1).standard_normal((4, 8 * 9)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="did not compile"):
        assert not conv_shifted._shifted(x, 8, 1, 1)
    assert not conv_shifted._shifted(x, 8, 1, 1)  # (decided once)
    _assert_close(nbe.conv_forward(x, w2, 3, 3, 1, 1, 1, 1), ref.conv_forward(x, w2, 3, 3, 1, 1, 1, 1), np.float32,
                  "im2col fallback")


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
def test_numba_workers_run_each_share_on_its_own_cpu():
    """The conv worker threads: share t on worker t, each bound to its own CPU (when there are enough), a
    worker's exception re-raised in the caller, and the workers still usable after it."""
    import os
    import threading

    from minisr.backends.numba import threads as nb_threads

    workers = nb_threads._Workers(2)
    seen = {}

    def record(t):
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        seen[t] = (threading.current_thread().name, cpus)

    workers.run([lambda: record(0), lambda: record(1)])
    assert [seen[t][0] for t in (0, 1)] == ["minisr-conv-0", "minisr-conv-1"]
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2:
        assert len(seen[0][1]) == len(seen[1][1]) == 1 and seen[0][1] != seen[1][1]
    with pytest.raises(ZeroDivisionError):
        workers.run([lambda: 1 / 0, lambda: None])
    workers.run([lambda: record(2), lambda: record(3)])
    assert 2 in seen and 3 in seen


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
def test_numba_workers_never_wait_for_shares_no_worker_runs(monkeypatch):
    """More shares than workers (a caller forcing two shares in a process with NUMBA_NUM_THREADS=1, as the tests
    that monkeypatch _threads do): _run starts the workers it needs, and run() refuses at once instead of waiting
    for ever. Each call runs in a thread joined with a timeout, so that a regression fails rather than hangs."""
    import os
    import threading

    from minisr.backends.numba import threads as nb_threads

    def finishes(fn):
        result = {}

        def target():
            try:
                result["value"] = fn()
            except BaseException as e:  # noqa: BLE001 -- checked below
                result["error"] = e

        th = threading.Thread(target=target, daemon=True)
        th.start()
        th.join(20)
        assert not th.is_alive(), "the call still waits for a share that no worker runs"
        return result

    got = finishes(lambda: nb_threads._Workers(1).run([lambda: None, lambda: None]))
    assert isinstance(got.get("error"), ValueError) and "2 shares for 1 workers" in str(got["error"])
    monkeypatch.setattr(nb_threads, "_pool", nb_threads._Workers(1))  # the pool of a NUMBA_NUM_THREADS=1 process
    monkeypatch.setattr(nb_threads, "_pool_pid", os.getpid())
    monkeypatch.setattr(nb_threads, "_threads", lambda blas=True: 3)
    seen = []
    got = finishes(lambda: nb_threads._run([(n, 0, 1) for n in range(6)], lambda t, share: seen.append((t, share)),
                                           blas=False))
    assert "error" not in got and sorted(t for t, _ in seen) == [0, 1, 2]
    assert sorted(b for _, share in seen for b in share) == [(n, 0, 1) for n in range(6)]
    assert len(nb_threads._pool.queues) == 3


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
def test_numba_conv_keeps_no_reference_to_its_output():
    """Once the caller drops a conv's output, its workspace buffer is idle again (reused by the next call): no
    worker thread may keep the call's closure -- and so the output -- alive while it waits."""
    from minisr.backends.numba import workspace

    nbe = get_backend("numba")
    x = np.random.default_rng(0).standard_normal((4, 16, 48, 48)).astype(np.float32)
    w2 = np.random.default_rng(1).standard_normal((64, 16 * 9)).astype(np.float32)
    nbe.empty_cache()
    out = nbe.conv_forward(x, w2, 3, 3, 1, 1, 1, 1)
    buffers = [e for e in workspace._cache if e[0].nbytes == out.nbytes]
    assert buffers and not any(workspace._idle(e) for e in buffers)
    del out
    assert all(workspace._idle(e) for e in buffers)


@pytest.mark.skipif("numba" not in OTHERS, reason="numba backend not importable")
def test_numba_workspace_reuses_only_idle_buffers():
    """A cached buffer is handed out again only when no array made from it is alive."""
    from minisr.backends.numba import workspace as nbe

    nbe.empty_cache()
    shape = (nbe._MIN_CACHED // 4 + 64,)  # just over the caching threshold, float32
    a = nbe._empty(shape, np.float32)
    a[:] = 1.0
    view = a[5:].reshape(-1)[::2]  # a derived view keeps the buffer busy after `a` is gone
    del a
    b = nbe._empty(shape, np.float32)
    assert not np.shares_memory(b, view)
    b[:] = 2.0
    np.testing.assert_array_equal(view, 1.0)  # untouched
    del view
    c = nbe._empty(shape, np.float32)  # the first buffer is idle now: reused
    assert len(nbe._cache) == 2 and not np.shares_memory(c, b)
    d = nbe._empty((shape[0] // 2,), np.float64)  # same bytes, another dtype: a third buffer (b, c alive)
    assert d.dtype == np.float64 and len(nbe._cache) == 3
    del b, c, d
    assert nbe.empty_cache() == 3 * shape[0] * 4 and nbe._cache == []
    small = nbe._empty((10,), np.float32)  # small arrays are plain np.empty
    assert small.flags.owndata and nbe._cache == []


@pytest.mark.parametrize("backend", OTHERS)
def test_nan_and_inf_pass_through_activations_like_the_reference(backend):
    """A diverging net must stay visibly diverged: NaN/inf are not silently turned into 0 by an activation."""
    be = get_backend(backend)
    x = np.array([np.nan, np.inf, -np.inf, -1.0, 0.0, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(be.relu_forward(x), ref.relu_forward(x))
    np.testing.assert_array_equal(be.leaky_relu_forward(x, 0.1), ref.leaky_relu_forward(x, 0.1))


@pytest.mark.parametrize("backend", ["numpy"] + OTHERS)
@pytest.mark.parametrize("case", CONV, ids=[f"conv{i}" for i in range(len(CONV))])
def test_col2im_is_the_adjoint_of_im2col(backend, case):
    """<im2col(x), c> = <x, col2im(c)> for every x and c."""
    be = get_backend(backend)
    N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo = _geometry(case)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W))
    c = rng.standard_normal((N, C * kh * kw, Ho * Wo))
    lhs = float((be.im2col(x, kh, kw, sh, sw, ph, pw) * c).sum())
    rhs = float((x * be.col2im(c, x.shape, kh, kw, sh, sw, ph, pw)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("backend", OTHERS)
def test_inplace_kernels_on_non_contiguous_arrays(backend):
    """An update of a non-contiguous parameter (e.g. loaded from a transposed array) must not be lost."""
    be = get_backend(backend)
    rng = np.random.default_rng(2)
    p0 = np.asfortranarray(rng.standard_normal((3, 4)))
    g = rng.standard_normal((3, 4))
    for fn, extra in ((be.sgd_update, (None, 0.1, 0.0, 0.0, 0.0, False, True)),
                      (be.adam_update, (np.zeros((3, 4)), np.zeros((3, 4)), 1, 0.1, 0.9, 0.999, 1e-8, 0.0))):
        p, q = p0.copy(order="F"), p0.copy()
        ref_extra = _copy(extra)
        fn(p, g, *extra)
        getattr(ref, fn.__name__)(q, g, *ref_extra)
        np.testing.assert_allclose(p, q, rtol=1e-12)
        assert not np.allclose(p, p0)
    y = np.asfortranarray(rng.standard_normal((2, 3, 4, 5)))
    want = y + np.arange(3.0).reshape(1, 3, 1, 1)
    be.bias_add(y, np.arange(3.0))
    np.testing.assert_allclose(y, want)


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_ops_match_numpy_end_to_end(backend, dt):
    """A small net, forward and backward through the ops, on the reference and on this backend."""
    rng = np.random.default_rng(3)
    shapes = [(2, 1, 11, 9), (8, 1, 5, 5), (8,), (4, 8, 3, 3), (4,)]
    arrays = [rng.standard_normal(s).astype(dt) for s in shapes]
    target = rng.standard_normal((2, 1, 14, 10)).astype(dt)
    results = {}
    for name in ("numpy", backend):
        with minisr.use_backend(name):
            ts = [minisr.Tensor(a.copy(), requires_grad=True) for a in arrays]
            x, w1, b1, w2, b2 = ts
            y = F.pixel_shuffle(F.conv2d(F.leaky_relu(F.conv2d(x, w1, b1, 1, 0), 0.1), w2, b2, 1, 1), 2)
            loss = F.mse_loss(y, target) + F.l1_loss(y, target)
            loss.backward()
            results[name] = [loss.numpy()] + [t.grad for t in ts]
    for i, (a, b) in enumerate(zip(results["numpy"], results[backend])):
        _assert_close(np.asarray(b), np.asarray(a), dt, f"end to end, output {i}")


def test_backend_selection(monkeypatch):
    assert set(backends.CPU_BACKENDS) <= set(backends.available_backends())
    before = backends.cpu_backend_name()
    with minisr.use_backend("numpy") as be:
        assert be.NAME == "numpy" and backends.get_backend().NAME == "numpy"
        with minisr.use_backend("numba"):
            assert backends.backend_for(np.zeros(1)).NAME == "numba"
        assert backends.get_backend().NAME == "numpy"
    assert backends.cpu_backend_name() == before
    with pytest.raises(ValueError, match="numpy"):
        minisr.set_backend("fortran")
    monkeypatch.setattr(backends, "_cpu_name", None)
    monkeypatch.setenv("MINISR_BACKEND", "numpy")
    assert backends.cpu_backend_name() == "numpy"
    monkeypatch.setattr(backends, "_cpu_name", None)
    monkeypatch.setenv("MINISR_BACKEND", "cuda")
    with pytest.raises(ValueError, match="MINISR_BACKEND"):
        backends.cpu_backend_name()
    monkeypatch.setattr(backends, "_cpu_name", before)
