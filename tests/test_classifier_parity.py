"""Classifier ops against PyTorch on both CPU backends, float32 and float64 (see test_torch_parity.py for the
error measure), and BatchNorm2d's running statistics over several train steps, then eval, against torch.nn."""

from __future__ import annotations

import numpy as np
import pytest
from test_torch_parity import DTYPES, TOL, compare, rel_err

import minisr
import minisr.functional as F
from minisr import Tensor, nn

torch = pytest.importorskip("torch")
TF = torch.nn.functional


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    with minisr.use_backend(request.param):
        yield request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dt(request):
    return request.param


@pytest.mark.parametrize("xshape", [(3, 7), (2, 3, 7)])
def test_linear(backend, dt, xshape, rng):
    arrays = [rng.standard_normal(xshape), rng.standard_normal((5, 7)), rng.standard_normal(5)]
    compare(F.linear, TF.linear, arrays, dt, rng)


POOL = [  # (N, C, H, W), kernel, stride, padding
    ((2, 3, 7, 9), 2, None, 0),
    ((1, 2, 9, 7), 3, 2, 1),
    ((2, 2, 8, 11), (3, 2), (1, 2), (1, 1)),
    ((1, 3, 5, 5), 3, 1, 1),
]


@pytest.mark.parametrize("shape,k,s,p", POOL)
def test_max_pool2d_with_ties(backend, dt, shape, k, s, p, rng):
    x = np.round(rng.standard_normal(shape), 0)  # values -2..2: most windows hold equal maxima
    compare(lambda x: F.max_pool2d(x, k, s, p), lambda x: TF.max_pool2d(x, k, s, p), [x], dt, rng)


@pytest.mark.parametrize("inc", [True, False], ids=["count_pad", "no_pad"])
@pytest.mark.parametrize("shape,k,s,p", POOL)
def test_avg_pool2d(backend, dt, shape, k, s, p, inc, rng):
    compare(lambda x: F.avg_pool2d(x, k, s, p, count_include_pad=inc),
            lambda x: TF.avg_pool2d(x, k, s, p, count_include_pad=inc), [rng.standard_normal(shape)], dt, rng)


@pytest.mark.parametrize("size", [1, (3, 2)])
def test_adaptive_avg_pool2d(backend, dt, size, rng):
    compare(lambda x: F.adaptive_avg_pool2d(x, size), lambda x: TF.adaptive_avg_pool2d(x, size),
            [rng.standard_normal((2, 3, 9, 8))], dt, rng)


@pytest.mark.parametrize("N,C", [(7, 5), (1, 10)])
def test_cross_entropy(backend, dt, N, C, rng):
    z = 5 * rng.standard_normal((N, C))
    z[0, 0] = 300.0  # exp would overflow without the max shift
    t = rng.integers(0, C, N)
    compare(lambda z: F.cross_entropy(z, t), lambda z: TF.cross_entropy(z, torch.tensor(t)), [z], dt, rng)


def test_binary_cross_entropy_with_logits(backend, dt, rng):
    x, t = 4 * rng.standard_normal((3, 2, 5)), rng.uniform(0, 1, (3, 2, 5))
    x.flat[0], x.flat[1] = 200.0, -200.0
    compare(F.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits, [x, t], dt, rng)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_function(backend, dt, training, rng):
    C = 3
    x = rng.standard_normal((4, C, 5, 3)) * 3 + 2
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    m_rm, m_rv = Tensor(rm.astype(dt)), Tensor(rv.astype(dt))
    t_rm, t_rv = torch.tensor(rm.astype(dt)), torch.tensor(rv.astype(dt))
    compare(lambda x, w, b: F.batch_norm(x, m_rm, m_rv, w, b, training, 0.3, 1e-3),
            lambda x, w, b: TF.batch_norm(x, t_rm, t_rv, w, b, training, 0.3, 1e-3),
            [x, rng.standard_normal(C), rng.standard_normal(C)], dt, rng)
    assert rel_err(m_rm.numpy(), t_rm.numpy()) <= TOL[dt]
    assert rel_err(m_rv.numpy(), t_rv.numpy()) <= TOL[dt]


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm2d_running_stats_over_steps(backend, momentum, rng):
    """Train mode for several steps (batch statistics, running ones updated, unbiased variance), gradients on
    every step, then eval mode; state_dict loaded into torch gives torch's eval output."""
    m = nn.BatchNorm2d(4, momentum=momentum, dtype=np.float64)
    t = torch.nn.BatchNorm2d(4, momentum=momentum, dtype=torch.float64)
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    m.weight.data[...] = w
    m.bias.data[...] = b
    with torch.no_grad():
        t.weight.copy_(torch.tensor(w))
        t.bias.copy_(torch.tensor(b))
    for step in range(4):
        x = rng.standard_normal((3, 4, 5, 2)) * (step + 1) + step
        mx, tx = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        G = rng.standard_normal(x.shape)
        my, ty = m(mx), t(tx)
        my.backward(G)
        ty.backward(torch.tensor(G))
        assert rel_err(my.numpy(), ty.detach().numpy()) <= 1e-9
        assert rel_err(mx.grad, tx.grad.numpy()) <= 1e-9
        for name in ("running_mean", "running_var"):
            assert rel_err(getattr(m, name).numpy(), getattr(t, name).numpy()) <= 1e-12, name
    assert rel_err(m.weight.grad, t.weight.grad.numpy()) <= 1e-9
    assert rel_err(m.bias.grad, t.bias.grad.numpy()) <= 1e-9
    assert float(m.num_batches_tracked.numpy()) == t.num_batches_tracked.item() == 4
    m.eval()
    t.eval()
    x = rng.standard_normal((2, 4, 3, 3))
    assert rel_err(m(Tensor(x)).numpy(), t(torch.tensor(x)).detach().numpy()) <= 1e-12
    t2 = torch.nn.BatchNorm2d(4, dtype=torch.float64).eval()
    t2.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})
    assert rel_err(m(Tensor(x)).numpy(), t2(torch.tensor(x)).detach().numpy()) <= 1e-12


def test_module_defaults_as_torch():
    minisr.manual_seed(0)
    lin = nn.Linear(50, 20)
    tl = torch.nn.Linear(50, 20)
    bound = 1 / np.sqrt(50)
    for mine, theirs in ((lin.weight, tl.weight), (lin.bias, tl.bias)):
        assert np.abs(mine.numpy()).max() <= bound and np.abs(theirs.detach().numpy()).max() <= bound
        assert abs(np.std(mine.numpy()) - bound / np.sqrt(3)) < 0.2 * bound  # U(-a, a) has std a / sqrt 3
    bn, tb = nn.BatchNorm2d(5), torch.nn.BatchNorm2d(5)
    assert set(bn.state_dict()) == set(tb.state_dict())
    for k, v in tb.state_dict().items():
        np.testing.assert_array_equal(bn.state_dict()[k], v.numpy())
    assert (bn.eps, bn.momentum) == (tb.eps, tb.momentum)
