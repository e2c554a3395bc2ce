"""In-place ReLU and add (``relu(x, inplace=True)``, ``add(a, b, inplace=True)``, ``nn.ReLU(inplace=True)``):
the same values and gradients as the out-of-place ops, one array less, and a clear error where an in-place
write would corrupt a gradient."""

from __future__ import annotations

import numpy as np
import pytest
from test_gradcheck import away_from_zero, gradcheck

import minisr
import minisr.functional as F
from minisr import Tensor, models, nn


@pytest.fixture(params=minisr.backends.CPU_BACKENDS)
def backend(request):
    with minisr.use_backend(request.param):
        yield request.param


def conv_relu_conv_add(x, w1, w2, inplace):
    """A residual block, EDSR's: x + conv(relu(conv(x)))."""
    r = F.conv2d(F.relu(F.conv2d(x, w1, padding=1), inplace=inplace), w2, padding=1)
    return F.add(r, x, inplace=inplace)


@pytest.mark.parametrize("inplace", [False, True])
def test_residual_block_gradients_match_finite_differences(inplace, backend):
    rng = np.random.default_rng(0)
    x, w1, w2 = away_from_zero(rng, (2, 3, 6, 5)), rng.standard_normal((3, 3, 3, 3)), rng.standard_normal((3, 3, 3, 3))
    assert gradcheck(lambda *t: conv_relu_conv_add(*t, inplace=inplace), x, w1, w2) > 0


def test_inplace_ops_share_memory_and_give_the_same_gradients(backend):
    rng = np.random.default_rng(1)
    x0, w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in [(2, 8, 9, 9), (8, 8, 3, 3), (8, 8, 3, 3)])
    results = []
    for inplace in (False, True):
        x, a, b = Tensor(x0.copy(), requires_grad=True), Tensor(w1, requires_grad=True), Tensor(w2, requires_grad=True)
        c = F.conv2d(x, a, padding=1)
        r = F.relu(c, inplace=inplace)
        assert np.shares_memory(r.data, c.data) == inplace
        d = F.conv2d(r, b, padding=1)
        y = F.add(d, x, inplace=inplace)
        assert np.shares_memory(y.data, d.data) == inplace
        (y * y).mean().backward()
        results.append((y.data.copy(), x.grad, a.grad, b.grad))
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_inplace_on_a_leaf_that_requires_grad_is_refused():
    w = Tensor(np.ones((2, 2), np.float32), requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        F.relu(w, inplace=True)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        F.add(w, 1.0, inplace=True)
    with minisr.no_grad():  # updates of parameters are in-place on purpose
        F.add(w, 1.0, inplace=True)
    assert float(w.data[0, 0]) == 2.0


def test_overwriting_a_tensor_an_op_saved_raises_at_backward():
    rng = np.random.default_rng(2)
    x = Tensor(rng.standard_normal((1, 2, 5, 5)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), requires_grad=True)
    h = F.conv2d(x, w, padding=1)
    y = F.conv2d(h, w, padding=1)  # saves h for its weight gradient
    F.relu(h, inplace=True)  # ... which is then overwritten
    with pytest.raises(RuntimeError, match="conv2d backward: a tensor it needs was modified by an in-place op"):
        y.sum().backward()
    a, b = Tensor(np.ones(3, np.float32), requires_grad=True), Tensor(np.full(3, 2, np.float32), requires_grad=True)
    p = a * 1.0
    q = p * b  # saves p
    F.add(p, 1.0, inplace=True)
    with pytest.raises(RuntimeError, match="mul backward"):
        q.sum().backward()


def test_models_use_inplace_relu_and_keep_their_outputs(backend):
    """The shipped architectures run their ReLUs (and EDSR its residual sums) in place; forward and backward
    give the same result as with out-of-place ops."""
    rng = np.random.default_rng(3)
    for name, cfg, shape in [("vdsr", dict(depth=4, features=8), (2, 1, 12, 12)),
                             ("edsr", dict(scale=2, n_resblocks=2, n_feats=8), (2, 3, 8, 8)),
                             ("srcnn", dict(kernels=(9, 1, 5), features=(8, 4)), (2, 1, 20, 20))]:
        model = models.build(name, **cfg)
        assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
        x = rng.random(shape).astype(np.float32)
        out = model(Tensor(x))
        out.mean().backward()
        grads = {k: p.grad.copy() for k, p in model.named_parameters()}
        model.zero_grad()
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        out2 = model(Tensor(x))
        out2.mean().backward()
        np.testing.assert_allclose(out.data, out2.data, rtol=1e-6, atol=1e-6)
        for k, p in model.named_parameters():
            np.testing.assert_allclose(grads[k], p.grad, rtol=1e-4, atol=1e-6, err_msg=f"{name} {k}")
