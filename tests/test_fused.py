"""Fused conv epilogues (issue 12): conv2d's bias add and conv2d_relu's ReLU in the conv's output pass, the bias
gradient in the weight gradient's pass, ReLU's mask where the gradients read g.

The fused kernels (conv_fused_forward / conv_fused_backward) against the NumPy reference (the plain kernels one
after the other) on every path of the Numba backend -- shifted GEMMs (forced onto small channel counts too),
im2col + BLAS, Winograd -- with and without bias, ReLU and each gradient; conv2d_relu against PyTorch and by
float64 finite differences on both CPU kernel sets; the fusion that nn.Sequential and the models do; and the
version checks (an in-place op on conv2d_relu's output is an error in the backward, one on plain conv2d's output
is not).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gradcheck import gradcheck

import minisr
import minisr.functional as F
from minisr import Tensor, nn
from minisr.backends import numpy_backend as ref

TOL = {np.float32: 2e-5, np.float64: 1e-12}

# (N, C, H, W), O, (kh, kw), (sh, sw), (ph, pw): odd sizes, 1-pixel images, C and O not multiples of the kernels'
# register blocks, stride 2 (im2col), 5x5 and 3x3 stride 1 (shifted GEMMs when C >= 8, or forced)
CASES = [
    ((2, 9, 7, 6), 5, (3, 3), (1, 1), (1, 1)),
    ((3, 16, 5, 9), 17, (3, 3), (1, 1), (1, 1)),
    ((1, 11, 1, 1), 3, (3, 3), (1, 1), (1, 1)),
    ((2, 8, 9, 8), 7, (5, 5), (1, 1), (0, 2)),
    ((2, 3, 10, 7), 5, (3, 3), (2, 2), (1, 1)),
    ((1, 1, 12, 10), 4, (9, 9), (1, 1), (4, 4)),
]


def _close(got, want, dt, what):
    assert got is not None and got.shape == want.shape and got.dtype == want.dtype, what
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dt] * scale, err_msg=what)


def _data(case, dt, seed=0):
    (N, C, H, W), O, (kh, kw), (sh, sw), (ph, pw) = case
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dt)
    w2 = rng.standard_normal((O, C * kh * kw)).astype(dt)
    b = rng.standard_normal(O).astype(dt)
    g = rng.standard_normal((N, O, Ho * Wo)).astype(dt)
    return x, w2, b, g, (kh, kw, sh, sw, ph, pw)


@pytest.fixture
def nb():
    return minisr.backends.get_backend("numba")


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("force_shifted", [False, True], ids=["auto", "shifted"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"k{c[2][0]}s{c[3][0]}")
def test_numba_fused_kernels_match_the_reference(case, force_shifted, dt, nb, monkeypatch):
    from minisr.backends.numba import conv_shifted

    if force_shifted:
        monkeypatch.setattr(conv_shifted, "_SHIFTED_MIN_CHANNELS", 1)
    x, w2, b, g, geo = _data(case, dt)
    for bias in (b, None):
        for relu in (True, False):
            what = f"bias={bias is not None} relu={relu}"
            want = ref.conv_fused_forward(x, w2, bias, relu, *geo)
            y = nb.conv_fused_forward(x, w2, bias, relu, *geo)
            _close(y, want, dt, "forward " + what)
            mask = want if relu else None
            for need in [(True, True, True), (True, False, False), (False, True, True), (False, False, True),
                         (False, True, False)]:
                wants = ref.conv_fused_backward(g, mask, x, w2, *geo, *need)
                gots = nb.conv_fused_backward(g, mask, x, w2, *geo, *need)
                for name, got, w in zip(("dx", "dw", "db"), gots, wants):
                    if w is None:
                        assert got is None, f"{name} not asked for ({what}, need {need})"
                    else:
                        _close(got, w, dt, f"{name} {what} need {need}")


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_shifted_path_runs_no_separate_pass(dt, nb, monkeypatch):
    """On the shifted GEMMs the epilogues are fused: bias_add, relu_forward, relu_backward and bias_grad are not
    called (each would be a pass of its own over the activation); with MINISR_FUSE=0 they are, and the results
    agree."""
    from minisr.backends.numba import conv as nconv

    x, w2, b, g, geo = _data(CASES[1], dt)
    calls = []
    for name in ("bias_add", "relu_forward", "relu_backward", "bias_grad"):
        real = getattr(nconv, name)
        monkeypatch.setattr(nconv, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    res = {}
    for fuse in ("1", "0"):
        monkeypatch.setenv("MINISR_FUSE", fuse)
        calls.clear()
        y = nb.conv_fused_forward(x, w2, b, True, *geo)
        grads = nb.conv_fused_backward(g, y, x, w2, *geo, True, True, True)
        res[fuse] = (y, *grads)
        assert (calls == []) == (fuse == "1"), f"MINISR_FUSE={fuse}: separate passes {calls}"
    np.testing.assert_array_equal(res["1"][0], res["0"][0])  # forward: the same additions, in the same order
    np.testing.assert_array_equal(res["1"][1], res["0"][1])  # dx and dw: the same kernels on the same gm
    np.testing.assert_array_equal(res["1"][2], res["0"][2])
    _close(res["1"][3], res["0"][3], dt, "db")  # (summed in another order)
    monkeypatch.setenv("MINISR_FUSE", "yes")
    with pytest.raises(ValueError, match="MINISR_FUSE='yes'"):
        nb.conv_fused_forward(x, w2, b, True, *geo)


def test_fused_relu_keeps_nan_as_relu_does(nb, monkeypatch):
    """A NaN passes ReLU's forward (as np.maximum and torch.relu) and is masked in its backward (NaN > 0 is
    false), fused or not."""
    from minisr.backends.numba import conv_shifted

    monkeypatch.setattr(conv_shifted, "_SHIFTED_MIN_CHANNELS", 1)
    x, w2, b, g, geo = _data(CASES[0], np.float32)
    x[0, 0, 2, 3] = np.nan
    for fuse in ("1", "0"):
        monkeypatch.setenv("MINISR_FUSE", fuse)
        y = nb.conv_fused_forward(x, w2, b, True, *geo)
        want = ref.conv_fused_forward(x, w2, b, True, *geo)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
        assert np.isnan(y).any()
        dx, dw, db = nb.conv_fused_backward(g, y, x, w2, *geo, True, False, True)
        np.testing.assert_array_equal(np.isnan(dx), np.isnan(ref.conv_fused_backward(g, y, x, w2, *geo, True,
                                                                                        False, False)[0]))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("shape,O,k,stride,padding", [((2, 9, 5, 4), 3, 3, 1, 1), ((1, 2, 6, 5), 3, 3, 2, 1),
                                                      ((1, 3, 1, 1), 2, 3, 1, 1), ((1, 8, 6, 7), 4, 5, 1, 2)])
def test_conv2d_relu_gradcheck(backend, shape, O, k, stride, padding):
    rng = np.random.default_rng(11)
    x, w, b = rng.standard_normal(shape), rng.standard_normal((O, shape[1], k, k)), rng.standard_normal(O)
    with minisr.use_backend(backend):
        pre = F.conv2d(Tensor(x), Tensor(w), Tensor(b), stride, padding).numpy()
        assert np.abs(pre).min() > 1e-4  # (no pre-activation at ReLU's kink, where differences are not gradients)
        assert (pre < 0).any() and (pre > 0).any()
        gradcheck(lambda x, w, b: F.conv2d_relu(x, w, b, stride, padding), x, w, b)
        gradcheck(lambda x, w: F.conv2d_relu(x, w, None, stride, padding), x, w)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("shape,O,k,stride,padding,bias", [((2, 9, 7, 6), 5, 3, 1, 1, True),
                                                           ((2, 16, 5, 9), 17, 3, 1, 1, False),
                                                           ((2, 3, 10, 7), 5, 3, 2, 1, True),
                                                           ((1, 1, 9, 11), 4, 9, 1, 0, True)])
def test_conv2d_relu_matches_torch(backend, dt, shape, O, k, stride, padding, bias):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(shape).astype(dt), rng.standard_normal((O, shape[1], k, k)).astype(dt),
              rng.standard_normal(O).astype(dt)]
    with minisr.use_backend(backend):
        m = [Tensor(a.copy(), requires_grad=True) for a in arrays]
        t = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
        y = F.conv2d_relu(m[0], m[1], m[2] if bias else None, stride, padding)
        ty = torch.relu(torch.nn.functional.conv2d(t[0], t[1], t[2] if bias else None, stride, padding))
        G = rng.standard_normal(y.shape).astype(dt)
        y.backward(G)
        ty.backward(torch.tensor(G))
    tol = 1e-4 if dt == np.float32 else 1e-9
    n = 3 if bias else 2
    pairs = [(y.numpy(), ty.detach().numpy())] + [(a.grad, b.grad.numpy()) for a, b in zip(m[:n], t[:n])]
    for got, want in pairs:
        assert got.dtype == dt
        assert np.abs(got - want).max() <= tol * max(np.abs(want).max(), 1e-30)


def _step(model, x, target):
    for p in model.parameters():
        p.grad = None
    y = model(x)
    F.mse_loss(y, target).backward()
    return [y.numpy()] + [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("name", ["vdsr", "srcnn", "edsr"])
def test_models_fused_and_unfused_agree(name, monkeypatch):
    """A model's output and every gradient with its Conv2d + ReLU pairs fused (the default) and run as the two
    modules (fusion switched off), on both CPU kernel sets."""
    from minisr import models

    model = {"vdsr": lambda: models.VDSR(depth=4, features=12),
             "srcnn": lambda: models.SRCNN(),
             "edsr": lambda: models.EDSR(scale=2, n_resblocks=2, n_feats=8)}[name]()
    rng = np.random.default_rng(2)
    c = 3 if name == "edsr" else 1
    x = Tensor(rng.random((2, c, 21, 19)).astype(np.float32))
    y0 = model(x)
    target = Tensor(rng.random(y0.shape).astype(np.float32))
    for backend in ("numpy", "numba"):
        with minisr.use_backend(backend):
            fused = _step(model, x, target)
            with monkeypatch.context() as m:
                m.setattr(nn, "fusable", lambda conv, relu: False)
                plain = _step(model, x, target)
        for a, b in zip(fused, plain):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(b).max())))


def test_sequential_fuses_conv_and_relu_only():
    """nn.Sequential runs Conv2d + ReLU as one conv2d_relu op; a ReLU subclass, a ReLU not after a Conv2d, and a
    trailing Conv2d run as themselves."""

    class MyReLU(nn.ReLU):
        def forward(self, x):
            return F.mul(super().forward(x), 2.0)

    x = Tensor(np.random.default_rng(0).standard_normal((1, 2, 6, 5)).astype(np.float32), requires_grad=True)
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(3, 3, 1))
    assert seq(x)._ctx is not None
    ops = _ops(seq(x))
    assert "conv2d_relu" in ops and ops.count("conv2d") == 1 and "relu" not in ops
    seq2 = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), MyReLU(), nn.ReLU())
    ops2 = _ops(seq2(x))
    assert "conv2d_relu" not in ops2 and ops2.count("relu") == 2
    conv, relu = seq2[0], seq2[1]
    np.testing.assert_allclose(nn.conv_relu(conv, relu, x).numpy(), relu(conv(x)).numpy())


def _ops(y):
    """The op names of y's graph."""
    seen, todo, names = set(), [y], []
    while todo:
        t = todo.pop()
        if id(t) in seen or t._ctx is None:
            continue
        seen.add(id(t))
        parents, _, op = t._ctx
        names.append(op)
        todo.extend(parents)
    return names


def test_inplace_write_to_conv2d_relu_output_is_caught():
    """conv2d_relu keeps y for ReLU's mask: an in-place op on y afterwards is an error in the backward (as for
    relu); plain conv2d keeps no output, so an in-place ReLU after it is fine (VDSR's layers before fusion)."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((1, 2, 5, 5)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), requires_grad=True)
    y = F.conv2d_relu(x, w, None, 1, 1)
    z = F.add(y, 1.0, inplace=True)
    with pytest.raises(RuntimeError, match="conv2d_relu backward"):
        F.sum(z).backward()
    y = F.relu(F.conv2d(x, w, None, 1, 1), inplace=True)
    F.sum(y).backward()
    assert x.grad is not None and w.grad is not None
    # the input of conv2d_relu written in place afterwards: caught as for conv2d
    h = F.relu(F.conv2d(x, w, None, 1, 1))
    y = F.conv2d_relu(h, Tensor(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), requires_grad=True), None, 1, 1)
    F.relu(h, inplace=True)
    with pytest.raises(RuntimeError, match="conv2d_relu backward"):
        F.sum(y).backward()


def test_conv2d_relu_on_the_gpu_matches_the_cpu(cuda):
    """The CuPy backend runs conv_fused_* as its plain kernels one after the other (on the CUDA emulator here)."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)]
    results = []
    for device in ("cpu", "cuda"):
        with minisr.use_backend("numpy"):
            t = [Tensor(a, requires_grad=True).to(device) for a in arrays]
            for a in t:
                a.requires_grad = True
            y = F.conv2d_relu(*t, 1, 1)
            F.mse_loss(y, Tensor(np.zeros(y.shape)).to(device)).backward()
            results.append([y.numpy()] + [Tensor(a.grad).numpy() for a in t])
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_fused_kernels_on_winograd(dt, nb, monkeypatch):
    """With MINISR_CONV=winograd the fused kernels run Winograd and the plain epilogue passes: the same results."""
    monkeypatch.setenv("MINISR_CONV", "winograd")
    x, w2, b, g, geo = _data(CASES[1], dt)
    y = nb.conv_fused_forward(x, w2, b, True, *geo)
    _close(y, ref.conv_fused_forward(x, w2, b, True, *geo), dt, "forward")
    for got, want in zip(nb.conv_fused_backward(g, y, x, w2, *geo, True, True, True),
                         ref.conv_fused_backward(g, y, x, w2, *geo, True, True, True)):
        _close(got, want, dt, "backward")
