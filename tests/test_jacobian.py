"""The full Jacobian, every entry, of the ops of one SR training step, on shapes small enough to build it.

``tests/test_gradcheck.py`` checks one random vector-Jacobian product per op (at up to 48 input elements). Here, for
y = f(x) with n inputs and m outputs, both m x n matrices are built and compared entry by entry on the numpy
(reference) backend in float64:

    row j from autograd:              y.backward(e_j)  ->  x.grad = J[j, :]
    column k from central differences: (f(x + h e_k) - f(x - h e_k)) / 2h = J[:, k] + O(h^2)
"""

from __future__ import annotations

import numpy as np
import pytest

import minisr
import minisr.functional as F
from minisr import Tensor

H = 1e-6


@pytest.fixture(autouse=True)
def numpy_backend():
    with minisr.use_backend("numpy"):
        yield


def jacobians(fn, inputs, i):
    """(autograd, finite differences) Jacobians of fn(*inputs) with respect to inputs[i], each (m, n)."""
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    with minisr.no_grad():
        y0 = np.asarray(fn(*[Tensor(a) for a in inputs]).numpy())
    m, n = y0.size, inputs[i].size
    auto = np.zeros((m, n))
    for j in range(m):
        tensors = [Tensor(a.copy(), requires_grad=k == i) for k, a in enumerate(inputs)]
        e = np.zeros(m)
        e[j] = 1.0
        fn(*tensors).backward(e.reshape(y0.shape))
        auto[j] = tensors[i].grad.ravel()
    numeric = np.zeros((m, n))
    for k in range(n):
        plus, minus = [a.copy() for a in inputs], [a.copy() for a in inputs]
        plus[i].flat[k] += H
        minus[i].flat[k] -= H
        with minisr.no_grad():
            yp = np.asarray(fn(*[Tensor(a) for a in plus]).numpy())
            ym = np.asarray(fn(*[Tensor(a) for a in minus]).numpy())
        numeric[:, k] = ((yp - ym) / (2 * H)).ravel()
    return auto, numeric


def check(fn, inputs, wrt):
    for i in wrt:
        auto, numeric = jacobians(fn, inputs, i)
        assert auto.shape == (np.size(fn(*[Tensor(np.asarray(a, np.float64)) for a in inputs]).numpy()),
                              np.size(inputs[i]))
        np.testing.assert_allclose(auto, numeric, rtol=1e-6, atol=1e-8, err_msg=f"Jacobian wrt input {i}")


@pytest.mark.parametrize("stride,padding,bias", [(1, 0, True), (2, 1, True), (1, 2, False)])
def test_conv2d_full_jacobian(stride, padding, bias):
    rng = np.random.default_rng(stride + 3 * padding)
    x = rng.standard_normal((2, 2, 5, 4))
    w = rng.standard_normal((3, 2, 3, 2))
    if bias:
        check(lambda x, w, b: F.conv2d(x, w, b, stride, padding), [x, w, rng.standard_normal(3)], (0, 1, 2))
    else:
        check(lambda x, w: F.conv2d(x, w, None, stride, padding), [x, w], (0, 1))


def test_relu_pixel_shuffle_and_losses_full_jacobian():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 3, 4))
    x = np.where(x >= 0, x + 1e-2, x - 1e-2)  # no element within h of the kink at 0
    check(F.relu, [x], (0,))
    check(lambda a: F.pixel_shuffle(a, 2), [rng.standard_normal((1, 8, 2, 3))], (0,))
    check(F.mse_loss, [rng.standard_normal((1, 1, 3, 4)), rng.standard_normal((1, 1, 3, 4))], (0, 1))
    check(F.smoothness_loss, [rng.standard_normal((2, 1, 3, 4))], (0,))


def test_a_wrong_entry_is_caught():
    """The comparison can fail: one Jacobian entry off by 1e-4 is found."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 1, 4, 4))
    auto, numeric = jacobians(lambda a: F.conv2d(a, Tensor(np.ones((1, 1, 2, 2)))), [x], 0)
    auto[3, 5] += 1e-4
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(auto, numeric, rtol=1e-6, atol=1e-8)
