"""conv_transpose2d, prelu, tanh and sigmoid (issue 16): float64 gradchecks on the numpy reference, PyTorch parity
on both CPU kernel sets, the conv / conv-transpose duality, the modules' initialisation and the errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_gradcheck import away_from_zero, gradcheck

import minisr
import minisr.functional as F
from minisr import Tensor, nn

# (N, Ci, H, W), Co, (kh, kw), stride, padding, output_padding: strides 1, 2, 3 and (2, 3), padding up to k - 1,
# output_padding up to stride - 1, non-square images and kernels, one channel in or out (FSRCNN's 9x9 x3 layer)
DECONV = [
    ((1, 1, 5, 7), 1, (3, 3), 1, 0, 0),
    ((2, 3, 4, 5), 2, (3, 3), 2, 1, 1),
    ((2, 4, 5, 3), 3, (4, 3), 3, (2, 1), (2, 0)),
    ((1, 2, 3, 6), 4, (5, 2), (2, 3), (1, 0), (0, 2)),
    ((2, 5, 4, 4), 1, (9, 9), 3, 4, 2),
    ((1, 9, 5, 6), 10, (3, 3), 1, 1, 0),  # >= 8 channels, stride 1: numba's shifted-GEMM path
]


def _deconv_arrays(rng, shape, Co, k, bias=True):
    arrays = [rng.standard_normal(shape), rng.standard_normal((shape[1], Co) + k)]
    return arrays + [rng.standard_normal(Co)] if bias else arrays


# ---------------------------------------------------------------------------------------------------- gradcheck
@pytest.fixture
def numpy_backend():
    with minisr.use_backend("numpy"):
        yield


@pytest.mark.parametrize("shape,Co,k,stride,padding,output_padding", DECONV)
def test_conv_transpose2d_gradcheck(numpy_backend, shape, Co, k, stride, padding, output_padding):
    arrays = _deconv_arrays(np.random.default_rng(1), shape, Co, k)
    assert gradcheck(lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding, output_padding), *arrays) > 0


@pytest.mark.parametrize("slopes", [1, 3])
def test_prelu_gradcheck(numpy_backend, slopes):
    rng = np.random.default_rng(2)
    x = away_from_zero(rng, (2, 3, 4, 5))
    assert gradcheck(F.prelu, x, rng.uniform(-0.5, 0.5, slopes)) > 0


@pytest.mark.parametrize("op", [F.tanh, F.sigmoid])
def test_tanh_sigmoid_gradcheck(numpy_backend, op):
    assert gradcheck(op, 2 * np.random.default_rng(3).standard_normal((2, 3, 4, 5))) > 0


def test_conv_transpose2d_is_the_adjoint_of_conv2d(numpy_backend):
    """<conv2d(y, w), x> = <y, conv_transpose2d(x, w)> for every x, y: the forward of one is the input gradient
    of the other (same weight array, read as OIHW by conv2d and as (C_in, C_out, kh, kw) by the transpose)."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 2, 4, 5))
    stride, padding, output_padding = (2, 3), (1, 2), (1, 2)
    x = rng.standard_normal((2, 3, 6, 4))
    t = F.conv_transpose2d(Tensor(x), Tensor(w), None, stride, padding, output_padding)
    y = rng.standard_normal(t.shape)
    c = F.conv2d(Tensor(y), Tensor(w), None, stride, padding)
    assert c.shape == x.shape
    np.testing.assert_allclose((c.numpy() * x).sum(), (y * t.numpy()).sum(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_matches_numpy(cuda, dtype):
    """conv_transpose2d -> prelu (C and 1 slopes) -> tanh -> sigmoid on the CUDA kernels: output and every
    gradient equal the NumPy reference's."""
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(s).astype(dtype) for s in [(2, 5, 4, 3), (5, 3, 9, 9), (3,), (3,), (1,)]]
    results = []
    for device in ("cpu", "cuda"):
        with minisr.use_backend("numpy"):
            ts = [Tensor(a).to(device) for a in arrays]
            for t in ts:
                t.requires_grad = True
            x, w, b, a3, a1 = ts
            y = F.prelu(F.prelu(F.conv_transpose2d(x, w, b, 3, 4, 2), a3), a1)
            y = F.sigmoid(F.tanh(y))
            F.mse_loss(y, Tensor(np.zeros(y.shape, dtype)).to(device)).backward()
            results.append([y.numpy()] + [Tensor(t.grad).numpy() for t in ts])
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------ torch parity
torch = pytest.importorskip("torch")
torch.set_num_threads(1)
TF = torch.nn.functional
from test_torch_parity import compare  # noqa: E402  (after importorskip)


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    with minisr.use_backend(request.param):
        yield request.param


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dt(request):
    return request.param


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape,Co,k,stride,padding,output_padding", DECONV)
def test_conv_transpose2d_matches_torch(backend, dt, shape, Co, k, stride, padding, output_padding, bias, rng):
    arrays = _deconv_arrays(rng, shape, Co, k, bias)
    compare(lambda *a: F.conv_transpose2d(a[0], a[1], a[2] if bias else None, stride, padding, output_padding),
            lambda *a: TF.conv_transpose2d(a[0], a[1], a[2] if bias else None, stride, padding, output_padding),
            arrays, dt, rng)


def test_conv_transpose2d_without_input_grad(backend, dt, rng):
    arrays = _deconv_arrays(rng, (2, 6, 5, 4), 1, (9, 9))
    compare(lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 4, 1),
            lambda x, w, b: TF.conv_transpose2d(x, w, b, 2, 4, 1), arrays, dt, rng, grad_of=(1, 2))


@pytest.mark.parametrize("shape,slopes", [((2, 3, 7, 5), 3), ((2, 3, 7, 5), 1), ((1, 12, 4, 9), 12), ((3, 2), 2)])
def test_prelu_matches_torch(backend, dt, shape, slopes, rng):
    x = rng.standard_normal(shape)
    x.flat[::9] = 0.0  # the kink: both take the negative side's gradient there (slope for x, x = 0 for a)
    compare(F.prelu, TF.prelu, [x, rng.uniform(-0.5, 0.5, slopes)], dt, rng)


@pytest.mark.parametrize("m_op,t_op", [(F.tanh, torch.tanh), (F.sigmoid, torch.sigmoid)], ids=["tanh", "sigmoid"])
def test_tanh_sigmoid_match_torch(backend, dt, m_op, t_op, rng):
    x = 4 * rng.standard_normal((2, 3, 7, 5))
    x.flat[::13] = 60.0 * np.sign(x.flat[::13])  # saturated: sigmoid must not overflow
    compare(m_op, t_op, [x], dt, rng)


def test_modules_match_torch_shapes_and_init_bounds():
    """nn.ConvTranspose2d / nn.PReLU / nn.Tanh / nn.Sigmoid: torch's parameter shapes, default init ranges and
    outputs for the same parameters."""
    minisr.manual_seed(0)
    wide = nn.ConvTranspose2d(6, 64, 3)
    bound = 1 / np.sqrt(64 * 9)  # torch's fan_in for this layout: weight.size(1) * kh * kw = C_out k^2
    for p in (wide.weight.numpy(), wide.bias.numpy()):  # U(-bound, bound): 64+ draws come near the bound
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.8 * bound
    m = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
    t = torch.nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
    assert m.weight.shape == tuple(t.weight.shape) and m.bias.shape == tuple(t.bias.shape)
    t.weight.data, t.bias.data = torch.tensor(m.weight.numpy()), torch.tensor(m.bias.numpy())
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(m(Tensor(x)).numpy(), t(torch.tensor(x)).detach().numpy(), atol=1e-5)
    for mm, tm in [(nn.PReLU(6), torch.nn.PReLU(6)), (nn.PReLU(), torch.nn.PReLU()), (nn.Tanh(), torch.nn.Tanh()),
                   (nn.Sigmoid(), torch.nn.Sigmoid())]:
        assert [p.shape for p in mm.parameters()] == [tuple(p.shape) for p in tm.parameters()]
        for p, q in zip(mm.parameters(), tm.parameters()):
            np.testing.assert_array_equal(p.numpy(), q.detach().numpy())  # PReLU: 0.25
        np.testing.assert_allclose(mm(Tensor(x)).numpy(), tm(torch.tensor(x)).detach().numpy(), atol=1e-6)
    g = nn.ConvTranspose2d(56, 1, 9, stride=3, padding=4, output_padding=2, init="gaussian", std=1e-3)
    assert abs(g.weight.numpy().std() - 1e-3) < 1e-4 and not g.bias.numpy().any()


# ------------------------------------------------------------------------------------------------------ errors
def _raises(exc, *fragments):
    return pytest.raises(exc, match=".*".join(re.escape(str(f)) for f in fragments))


def T(*shape):
    return Tensor(np.ones(shape, np.float32))


def test_conv_transpose2d_errors_name_the_shapes():
    with _raises(ValueError, (1, 3, 5, 5), (4, 3, 3, 3), "(C_in, C_out, kh, kw)"):  # an OIHW weight by mistake
        F.conv_transpose2d(T(1, 3, 5, 5), T(4, 3, 3, 3))
    with _raises(ValueError, "output_padding (2, 2)", "stride (2, 2)", (1, 3, 5, 5), (3, 4, 3, 3)):
        F.conv_transpose2d(T(1, 3, 5, 5), T(3, 4, 3, 3), stride=2, output_padding=2)
    with _raises(ValueError, "output_padding (1, 1)", "stride (1, 1)"):
        F.conv_transpose2d(T(1, 3, 5, 5), T(3, 4, 3, 3), output_padding=1)
    with _raises(ValueError, "bias shape (3,)", "(4,)"):
        F.conv_transpose2d(T(1, 3, 5, 5), T(3, 4, 3, 3), T(3))
    with _raises(ValueError, "4-D", (3, 4, 3)):
        F.conv_transpose2d(T(1, 3, 5, 5), T(3, 4, 3))
    with _raises(ValueError, "leaves no output", (1, 3, 1, 1)):
        F.conv_transpose2d(T(1, 3, 1, 1), T(3, 4, 3, 3), padding=2)


def test_prelu_errors_name_the_shapes():
    with _raises(ValueError, "(2,)", "2 slopes", (1, 3, 4, 4), "1 or 3"):
        F.prelu(T(1, 3, 4, 4), T(2))
    with _raises(ValueError, "1-D", (3, 1)):
        F.prelu(T(1, 3, 4, 4), T(3, 1))


@pytest.mark.parametrize("op", ["prelu", "conv_transpose2d", "tanh", "sigmoid"])
def test_backward_refuses_saved_data_overwritten_in_place(op):
    """The saved input (prelu, conv_transpose2d) or output (tanh, sigmoid) changed by an in-place op afterwards:
    an error, not a wrong gradient."""
    x = Tensor(np.random.default_rng(0).standard_normal((1, 2, 3, 3)), requires_grad=True)
    h = F.mul(x, 1.0)
    if op == "prelu":
        y = F.prelu(h, Tensor(np.full(2, 0.25)))
        F.relu(h, inplace=True)
    elif op == "conv_transpose2d":
        y = F.conv_transpose2d(h, Tensor(np.ones((2, 1, 3, 3))))
        F.relu(h, inplace=True)
    else:
        y = F.relu(getattr(F, op)(h), inplace=True)  # the graph goes on from the in-place op's result
    with pytest.raises(RuntimeError, match=f"{op} backward.*modified by an in-place op"):
        F.sum(y).backward()


def test_numba_float32_tanh_is_within_4e7_of_tanh_everywhere():
    """The Numba backend's float32 tanh is a rational approximation (no libm call, so it vectorises): against float64
    tanh on a dense grid of [-12, 12], on 10^-30..1 of both signs and on the special values, within 4e-7, odd, never
    above 1 in magnitude, NaN kept; float64 stays libm's."""
    from minisr.backends.numba import activations

    grid = np.linspace(-12, 12, 2_000_001, dtype=np.float32)
    mags = (10.0 ** np.arange(-30, 1, 0.01)).astype(np.float32)
    x = np.concatenate([grid, mags, -mags, np.float32([0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38])])
    y = activations.tanh_forward(x)
    assert y.dtype == np.float32
    assert np.abs(y.astype(np.float64) - np.tanh(x.astype(np.float64))).max() < 4e-7
    assert np.abs(y).max() <= 1 and np.array_equal(activations.tanh_forward(-x), -y)
    assert np.isnan(activations.tanh_forward(np.float32([np.nan]))).all()
    assert np.array_equal(activations.tanh_forward(np.float64([0.5, -3.0])), np.tanh([0.5, -3.0]))  # float64: libm
