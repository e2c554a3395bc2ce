"""Forward values and every gradient against PyTorch (skipped when torch is not importable), on both CPU
backends.

Error measure: max |minisr - torch| / max |torch| over each output or gradient; float64 <= 1e-9, float32 <=
1e-4. The upstream gradient of every non-scalar output is a fixed random array G (``y.backward(G)`` in both
libraries).
"""

from __future__ import annotations

import numpy as np
import pytest

import minisr
import minisr.functional as F
from minisr import Tensor

torch = pytest.importorskip("torch")
torch.set_num_threads(1)
TF = torch.nn.functional

TOL = {np.float32: 1e-4, np.float64: 1e-9}
DTYPES = [np.float32, np.float64]


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    with minisr.use_backend(request.param):
        yield request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dt(request):
    return request.param


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != torch's {b.shape}"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def compare(m_fn, t_fn, arrays, dt, rng, grad_of=None):
    """Run both on copies of arrays (all needing gradients unless grad_of lists indices), check everything."""
    grad_of = range(len(arrays)) if grad_of is None else grad_of
    arrays = [a.astype(dt) for a in arrays]
    m_in = [Tensor(a.copy(), requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    t_in = [torch.tensor(a.copy(), requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    m_out, t_out = m_fn(*m_in), t_fn(*t_in)
    assert m_out.dtype == dt
    G = rng.standard_normal(m_out.shape).astype(dt)
    m_out.backward(G)
    t_out.backward(torch.tensor(G))
    tol = TOL[dt]
    assert rel_err(m_out.numpy(), t_out.detach().numpy()) <= tol, "forward"
    for i in grad_of:
        assert m_in[i].grad.dtype == dt
        err = rel_err(m_in[i].grad, t_in[i].grad.numpy())
        assert err <= tol, f"gradient of input {i}: relative error {err:.3g}"


# (N, C, H, W), O, k, stride, padding
CONV = [
    ((1, 1, 9, 11), 4, 9, 1, 0),
    ((2, 3, 10, 7), 5, 3, 1, 1),
    ((2, 3, 10, 7), 5, 3, 2, 1),
    ((1, 2, 12, 9), 3, 5, 3, 2),
    ((2, 4, 6, 5), 6, 1, 2, 0),
    ((2, 8, 9, 8), 16, 3, (1, 2), (1, 0)),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape,O,k,stride,padding", CONV)
def test_conv2d(backend, dt, shape, O, k, stride, padding, bias, rng):
    arrays = [rng.standard_normal(shape), rng.standard_normal((O, shape[1], k, k))]
    if bias:
        arrays.append(rng.standard_normal(O))
    compare(lambda *a: F.conv2d(*a[:2], a[2] if bias else None, stride, padding),
            lambda *a: TF.conv2d(*a[:2], a[2] if bias else None, stride, padding), arrays, dt, rng)


def test_conv2d_without_input_grad(backend, dt, rng):
    arrays = [rng.standard_normal((3, 1, 13, 13)), rng.standard_normal((8, 1, 9, 9)), rng.standard_normal(8)]
    compare(lambda x, w, b: F.conv2d(x, w, b), lambda x, w, b: TF.conv2d(x, w, b), arrays, dt, rng,
            grad_of=(1, 2))


def test_relu(backend, dt, rng):
    x = rng.standard_normal((2, 3, 7, 5))
    x.flat[::9] = 0.0  # torch's relu gradient at 0 is 0, and so is minisr's
    compare(F.relu, torch.relu, [x], dt, rng)


@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_leaky_relu(backend, dt, slope, rng):
    x = rng.standard_normal((2, 3, 7, 5))
    x.flat[::9] = 0.0
    compare(lambda x: F.leaky_relu(x, slope), lambda x: TF.leaky_relu(x, slope), [x], dt, rng)


@pytest.mark.parametrize("shape,r", [((1, 4, 3, 5), 2), ((2, 18, 2, 3), 3), ((2, 12, 4, 4), 2)])
def test_pixel_shuffle(backend, dt, shape, r, rng):
    compare(lambda x: F.pixel_shuffle(x, r), lambda x: TF.pixel_shuffle(x, r), [rng.standard_normal(shape)],
            dt, rng)


@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (4, 3, 16, 16)])
def test_mse_loss(backend, dt, shape, rng):
    compare(F.mse_loss, TF.mse_loss, [rng.standard_normal(shape), rng.standard_normal(shape)], dt, rng)


@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (4, 3, 16, 16)])
def test_l1_loss(backend, dt, shape, rng):
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    b.flat[::11] = a.flat[::11]  # equal elements: sign(0) = 0 in both
    compare(F.l1_loss, TF.l1_loss, [a, b], dt, rng)


def test_smoothness_loss(backend, dt, rng):
    def t_smooth(x):
        return ((x[..., :, 1:] - x[..., :, :-1]) ** 2).sum() + ((x[..., 1:, :] - x[..., :-1, :]) ** 2).sum()

    compare(F.smoothness_loss, t_smooth, [rng.standard_normal((2, 3, 6, 5))], dt, rng)


@pytest.mark.parametrize("mode", ["constant", "replicate", "reflect"])
def test_pad(backend, dt, mode, rng):
    p = (2, 1, 0, 3)
    compare(lambda x: F.pad(x, p, mode), lambda x: TF.pad(x, p, mode), [rng.standard_normal((2, 3, 5, 4))],
            dt, rng)


def test_small_net(backend, dt, rng):
    """conv(9x9 valid) -> relu -> conv(3x3 same) -> pixel shuffle -> mse; every parameter's gradient."""
    arrays = [rng.standard_normal(s) for s in [(2, 1, 14, 13), (8, 1, 9, 9), (8,), (4, 8, 3, 3), (4,)]]
    target = rng.standard_normal((2, 1, 12, 10))

    def m_net(x, w1, b1, w2, b2):
        y = F.pixel_shuffle(F.conv2d(F.relu(F.conv2d(x, w1, b1)), w2, b2, 1, 1), 2)
        return F.mse_loss(y, Tensor(target.astype(dt)))

    def t_net(x, w1, b1, w2, b2):
        y = TF.pixel_shuffle(TF.conv2d(torch.relu(TF.conv2d(x, w1, b1)), w2, b2, 1, 1), 2)
        return TF.mse_loss(y, torch.tensor(target.astype(dt)))

    compare(m_net, t_net, arrays, dt, rng, grad_of=(1, 2, 3, 4))
