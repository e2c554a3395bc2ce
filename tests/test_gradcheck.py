"""Central-difference gradient checks of every op on the numpy (reference) backend, in float64.

For an op y = f(x1, x2, ...) and a fixed random projection R of y's shape, E(x) = sum(f(x) * R) is a scalar
whose gradient is the vector-Jacobian product J^T R, which is exactly what ``y.backward(R)`` accumulates into
every input's ``.grad``. Each (probed) input element is perturbed by +-h and

    (E(x + h e_k) - E(x - h e_k)) / 2h

is compared with the autograd value. This checks one random vector-Jacobian product J^T R (not the full Jacobian):
a wrong entry in a probed column changes J^T R with probability 1 for a random R, where a row sum (R = 1) could hide
it; inputs larger than MAX_PROBES are probed at a random subset. tests/test_jacobian.py compares the full Jacobian,
entry by entry, on small shapes.
"""

from __future__ import annotations

import numpy as np
import pytest

import minisr
import minisr.functional as F
from minisr import Tensor

H = 1e-6
RTOL = 1e-6
MAX_PROBES = 48  # per input; larger inputs are checked at a random subset of elements


@pytest.fixture(autouse=True)
def numpy_backend():
    with minisr.use_backend("numpy"):
        yield


def gradcheck(fn, *inputs, seed=0, wrt=None):
    """Compare autograd with central differences for E = sum(fn(*inputs) * R). inputs: float64 arrays.

    ``wrt``: indices of the inputs to differentiate (default all). Returns the number of probed elements.
    """
    rng = np.random.default_rng(seed)
    wrt = range(len(inputs)) if wrt is None else wrt
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    tensors = [Tensor(a.copy(), requires_grad=i in wrt) for i, a in enumerate(inputs)]
    out = fn(*tensors)
    assert out.dtype == np.float64, f"float64 in, {out.dtype} out"
    R = rng.standard_normal(out.shape)
    out.backward(R)

    def energy(arrays):
        with minisr.no_grad():
            y = fn(*[Tensor(a) for a in arrays])
        return float((np.asarray(y.numpy(), dtype=np.float64) * R).sum())

    probed = 0
    for i in wrt:
        grad = tensors[i].grad
        assert grad is not None, f"input {i} got no gradient"
        assert grad.shape == inputs[i].shape
        flat = np.arange(inputs[i].size)
        if flat.size > MAX_PROBES:
            flat = rng.choice(flat, MAX_PROBES, replace=False)
        numeric, analytic = [], []
        for k in flat:
            idx = np.unravel_index(k, inputs[i].shape)
            plus = [a.copy() for a in inputs]
            minus = [a.copy() for a in inputs]
            plus[i][idx] += H
            minus[i][idx] -= H
            numeric.append((energy(plus) - energy(minus)) / (2 * H))
            analytic.append(grad[idx])
        numeric, analytic = np.array(numeric), np.array(analytic)
        atol = RTOL * max(1.0, np.abs(analytic).max())
        np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=atol, err_msg=f"gradient of input {i}")
        probed += len(flat)
    return probed


def away_from_zero(rng, shape, margin=1e-2):
    """Random values with |x| >= margin, so +-h never crosses a kink at 0 (relu, leaky_relu, l1)."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + margin, x - margin)


# ----------------------------------------------------------------------------------------------------- conv2d
# (N, C, H, W), O, (kh, kw), stride, padding: batch 1, one channel, 9x9 and 1x1 kernels, stride 2 and 3,
# padding 0 and k // 2, non-square images, rows/columns left over by the stride.
CONV_CASES = [
    ((1, 1, 9, 11), 2, (9, 9), 1, 0),
    ((1, 1, 9, 11), 2, (9, 9), 1, 4),
    ((2, 1, 10, 9), 2, (9, 9), 3, 4),
    ((2, 3, 7, 5), 4, (1, 1), 1, 0),
    ((2, 3, 7, 5), 2, (1, 1), 2, 0),
    ((1, 2, 10, 7), 3, (3, 3), 2, 1),
    ((2, 2, 11, 8), 3, (3, 3), 3, 0),
    ((1, 2, 8, 13), 2, (3, 5), (2, 3), (1, 2)),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape,O,k,stride,padding", CONV_CASES)
def test_conv2d(shape, O, k, stride, padding, bias, rng):
    x = rng.standard_normal(shape)
    w = rng.standard_normal((O, shape[1]) + k)
    if bias:
        b = rng.standard_normal(O)
        gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride, padding), x, w, b)
    else:
        gradcheck(lambda x, w: F.conv2d(x, w, None, stride, padding), x, w)


def test_conv2d_weight_only(rng):
    """The input needs no gradient (an image into the first layer): only the weight and bias get one."""
    x, w, b = rng.standard_normal((2, 1, 7, 6)), rng.standard_normal((3, 1, 3, 3)), rng.standard_normal(3)
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, 1, 1), x, w, b, wrt=(1, 2))


# ------------------------------------------------------------------------------------------------ activations
@pytest.mark.parametrize("shape", [(1, 1, 5, 3), (2, 3, 4, 4), (7,)])
def test_relu(shape, rng):
    gradcheck(F.relu, away_from_zero(rng, shape))


@pytest.mark.parametrize("slope", [0.01, 0.2])
@pytest.mark.parametrize("shape", [(1, 1, 5, 3), (2, 3, 4, 4)])
def test_leaky_relu(shape, slope, rng):
    gradcheck(lambda x: F.leaky_relu(x, slope), away_from_zero(rng, shape))


@pytest.mark.parametrize("shape,r", [((1, 4, 3, 5), 2), ((2, 9, 2, 3), 3), ((1, 8, 3, 2), 2),
                                     ((1, 3, 2, 2), 1)])
def test_pixel_shuffle(shape, r, rng):
    gradcheck(lambda x: F.pixel_shuffle(x, r), rng.standard_normal(shape))


# ----------------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (2, 3, 4, 4)])
def test_mse_loss(shape, rng):
    gradcheck(F.mse_loss, rng.standard_normal(shape), rng.standard_normal(shape))


@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (2, 3, 4, 4)])
def test_l1_loss(shape, rng):
    target = rng.standard_normal(shape)
    pred = target + away_from_zero(rng, shape)  # |pred - target| >= 1e-2: no kink within +-h
    gradcheck(F.l1_loss, pred, target)


@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (2, 3, 4, 3), (1, 2, 1, 6)])
def test_smoothness_loss(shape, rng):
    gradcheck(F.smoothness_loss, rng.standard_normal(shape))


def test_smoothness_loss_value():
    x = np.array([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])
    # horizontal: 1 + 4 + 0 + 0; vertical: 4 + 1 + 1
    assert F.smoothness_loss(Tensor(x)).item() == pytest.approx(11.0)


# -------------------------------------------------------------------------------------------------------- pad
@pytest.mark.parametrize("mode", ["constant", "replicate", "reflect"])
@pytest.mark.parametrize("shape,p", [((1, 2, 4, 5), (1, 2, 0, 3)), ((2, 1, 3, 3), (2, 0, 1, 1)),
                                     ((4, 6), (3, 1))])
def test_pad(shape, p, mode, rng):
    gradcheck(lambda x: F.pad(x, p, mode=mode, value=0.5), rng.standard_normal(shape))


# ---------------------------------------------------------------------------------------------------- getitem
@pytest.mark.parametrize("index", [
    (slice(None), slice(None), slice(2, -1), slice(1, 4)),   # the valid centre
    (0, slice(None), slice(None, None, 2)),                  # integer + strided slice
    (Ellipsis, 1),
    (1, 0, 2, 3),                                            # one element: a 0-d result
    ([0, 0, 1],),                                            # repeated integer-array index: gradients add up
])
def test_getitem(index, rng):
    gradcheck(lambda x: x[index], rng.standard_normal((2, 3, 5, 6)))


def test_getitem_scalar_shape():
    x = Tensor(np.arange(24.0).reshape(2, 3, 4))
    assert x[1, 2, 3].shape == ()
    assert x[1, 2, 3].item() == 23.0


# ------------------------------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("op", ["sum", "mean"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (1, False), ((2, 3), True), (-1, False)])
def test_reductions(op, axis, keepdims, rng):
    gradcheck(lambda x: getattr(x, op)(axis=axis, keepdims=keepdims), rng.standard_normal((2, 3, 4, 5)))


def test_reshape(rng):
    gradcheck(lambda x: x.reshape(3, -1) * x.reshape(3, -1), rng.standard_normal((2, 3, 2)))


# ------------------------------------------------------------------------------------------------ elementwise
@pytest.mark.parametrize("expr", [
    lambda a, b: a + b,
    lambda a, b: a - b,
    lambda a, b: a * b,
    lambda a, b: a * a + b,          # one input used twice: gradients add up
    lambda a, b: 2.5 * a - b * 0.5 + 1.0,
    lambda a, b: 3.0 - a + b,
    lambda a, b: -a + b / 4.0,
], ids=["add", "sub", "mul", "reuse", "scalars", "rsub", "neg_div"])
def test_arithmetic(expr, rng):
    gradcheck(expr, rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4)))


@pytest.mark.parametrize("p", [2, 3, 0.5, -1.0])
def test_pow(p, rng):
    x = rng.uniform(0.5, 2.0, (3, 4))  # positive: fractional and negative powers are smooth there
    gradcheck(lambda x: x ** p, x)


def test_astype_roundtrip(rng):
    gradcheck(lambda x: x.astype(np.float64) * 2.0, rng.standard_normal((3, 2)))


# ------------------------------------------------------------------------------------------------------ a net
@pytest.mark.parametrize("stride", [1, 2])
def test_two_layer_net(stride, rng):
    """conv -> relu -> conv -> pixel shuffle -> mse + smoothness: gradients of the input and all weights."""
    x = rng.standard_normal((2, 1, 7, 6))
    w1, b1 = rng.standard_normal((3, 1, 3, 3)), rng.standard_normal(3) * 0.1
    w2, b2 = rng.standard_normal((4, 3, 3, 3)) * 0.5, rng.standard_normal(4) * 0.1
    with minisr.no_grad():
        h = F.conv2d(Tensor(x), Tensor(w1), Tensor(b1), stride, 1)
        y = F.pixel_shuffle(F.conv2d(F.relu(h), Tensor(w2), Tensor(b2), 1, 1), 2)
    target = rng.standard_normal(y.shape)
    # with this seed no pre-activation lies within 1e-4 of relu's kink
    assert np.abs(h.numpy()).min() > 1e-4

    def net(x, w1, b1, w2, b2):
        y = F.conv2d(F.relu(F.conv2d(x, w1, b1, stride, 1)), w2, b2, 1, 1)
        y = F.pixel_shuffle(y, 2)
        return F.mse_loss(y, Tensor(target)) + F.smoothness_loss(y) * 0.01

    gradcheck(net, x, w1, b1, w2, b2)
