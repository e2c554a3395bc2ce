"""Classifier ops (linear, pooling, cross-entropy losses, batch norm, dropout) and their modules: float64
gradchecks on the numpy reference, bad input, BatchNorm buffers in state_dict and checkpoints, seeded dropout.
PyTorch parity is in test_classifier_parity.py."""

from __future__ import annotations

import numpy as np
import pytest
from test_gradcheck import gradcheck

import minisr
import minisr.functional as F
from minisr import Tensor, checkpoint, nn


@pytest.fixture(autouse=True)
def numpy_backend():
    with minisr.use_backend("numpy"):
        yield


# ----------------------------------------------------------------------------------------------- gradchecks
@pytest.mark.parametrize("xshape", [(3, 5), (2, 3, 5), (5,)])
def test_linear(xshape, rng):
    x, w, b = rng.standard_normal(xshape), rng.standard_normal((4, 5)), rng.standard_normal(4)
    gradcheck(F.linear, x, w, b)
    gradcheck(lambda x, w: F.linear(x, w), x, w)


POOL = [  # (N, C, H, W), kernel, stride, padding: default stride, overlapping windows, padding, non-square
    ((1, 1, 4, 6), 2, None, 0),
    ((2, 3, 7, 5), 3, 2, 1),
    ((1, 2, 6, 9), (3, 2), (1, 2), (1, 0)),
    ((2, 1, 5, 5), 3, 1, 1),
]


@pytest.mark.parametrize("shape,k,s,p", POOL)
def test_max_pool2d(shape, k, s, p, rng):
    gradcheck(lambda x: F.max_pool2d(x, k, s, p), rng.standard_normal(shape))  # distinct values: one arg-max


@pytest.mark.parametrize("inc", [True, False], ids=["count_pad", "no_pad"])
@pytest.mark.parametrize("shape,k,s,p", POOL)
def test_avg_pool2d(shape, k, s, p, inc, rng):
    gradcheck(lambda x: F.avg_pool2d(x, k, s, p, count_include_pad=inc), rng.standard_normal(shape))


@pytest.mark.parametrize("size", [1, (2, 3), (None, 1)])
def test_adaptive_avg_pool2d(size, rng):
    gradcheck(lambda x: F.adaptive_avg_pool2d(x, size), rng.standard_normal((2, 3, 4, 6)))


def test_adaptive_avg_pool2d_global_is_the_mean(rng):
    x = rng.standard_normal((2, 3, 5, 7))
    np.testing.assert_allclose(F.adaptive_avg_pool2d(Tensor(x), 1).numpy(), x.mean(axis=(2, 3), keepdims=True),
                               rtol=1e-12)


def test_max_pool2d_ties_go_to_the_first_index():
    x = Tensor(np.array([[[[1.0, 3.0, 3.0], [3.0, 0.0, 3.0]]]]), requires_grad=True)
    y = F.max_pool2d(x, (2, 3))
    y.backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(x.grad[0, 0], [[0, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize("N,C", [(4, 3), (1, 7)])
def test_cross_entropy(N, C, rng):
    t = rng.integers(0, C, N)
    gradcheck(lambda z: F.cross_entropy(z, t), 3 * rng.standard_normal((N, C)))


def test_cross_entropy_is_stable_and_correct():
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss = F.cross_entropy(Tensor(z), np.array([1, 2])).item()
    assert loss == pytest.approx((1000.0 + np.log(3)) / 2)


def test_binary_cross_entropy_with_logits(rng):
    x, t = 3 * rng.standard_normal((2, 3, 4)), rng.uniform(0, 1, (2, 3, 4))
    gradcheck(F.binary_cross_entropy_with_logits, x, t)
    big = F.binary_cross_entropy_with_logits(Tensor(np.array([800.0, -800.0])), np.array([0.0, 1.0])).item()
    assert big == pytest.approx(800.0)


@pytest.mark.parametrize("shape", [(4, 3, 2, 3), (5, 2), (2, 3, 1, 1)])
def test_batch_norm_training(shape, rng):
    C = shape[1]
    x, w, b = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(C), rng.standard_normal(C)
    gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, True), x, w, b)
    gradcheck(lambda x: F.batch_norm(x, None, None, None, None, True), x)


def test_batch_norm_eval(rng):
    x, w, b = rng.standard_normal((3, 4, 2, 5)), rng.standard_normal(4), rng.standard_normal(4)
    rm, rv = Tensor(rng.standard_normal(4)), Tensor(rng.uniform(0.5, 2, 4))
    gradcheck(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, False), x, w, b)


def test_dropout_gradient_is_the_mask(rng):
    def fn(x):
        minisr.manual_seed(3)
        return F.dropout(x, 0.3, True)
    gradcheck(fn, rng.standard_normal((3, 4, 5)))


# --------------------------------------------------------------------------------------------------- dropout
def test_dropout_seeded_scaled_and_eval_identity():
    x = Tensor(np.ones((200, 100), dtype=np.float32))
    minisr.manual_seed(7)
    a = F.dropout(x, 0.25, True).numpy()
    minisr.manual_seed(7)
    b = F.dropout(x, 0.25, True).numpy()
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.02  # 20000 draws: the standard deviation is 0.003
    assert F.dropout(x, 0.25, False) is x
    assert not F.dropout(x, 1.0, True).numpy().any()
    m = nn.Dropout(0.5)
    assert m.eval()(x) is x
    assert m.train()(x).numpy().min() == 0.0


# ------------------------------------------------------------------------------------------------- modules
def test_linear_and_flatten_modules(rng):
    minisr.manual_seed(0)
    lin = nn.Linear(12, 5)
    assert lin.weight.shape == (5, 12) and lin.bias.shape == (5,)
    bound = 1 / np.sqrt(12)
    assert np.abs(lin.weight.numpy()).max() <= bound and np.abs(lin.bias.numpy()).max() <= bound
    x = Tensor(rng.standard_normal((2, 3, 2, 2)).astype(np.float32))
    flat = nn.Flatten()(x)
    assert flat.shape == (2, 12)
    assert nn.Flatten(0, 1)(x).shape == (6, 2, 2)
    np.testing.assert_allclose(lin(flat).numpy(), flat.numpy() @ lin.weight.numpy().T + lin.bias.numpy(),
                               rtol=1e-5)
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]


def small_classifier():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 3 * 3, 3))


def test_batchnorm_state_dict_and_checkpoint_round_trip(tmp_path, rng):
    minisr.manual_seed(0)
    model = small_classifier()
    opt = minisr.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        x = Tensor(rng.standard_normal((5, 1, 6, 6)).astype(np.float32))
        loss = F.cross_entropy(model(x), rng.integers(0, 3, 5))
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = model.state_dict()
    assert {"1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(state)
    assert state["1.num_batches_tracked"] == 3
    assert not np.allclose(state["1.running_mean"], 0)
    path = checkpoint.save(tmp_path / "c.npz", state, {"model": "toy"})
    minisr.manual_seed(1)
    other = small_classifier()
    other.load_state_dict(checkpoint.load(path)["model"])
    model.eval()
    other.eval()
    x = Tensor(rng.standard_normal((2, 1, 6, 6)).astype(np.float32))
    np.testing.assert_array_equal(model(x).numpy(), other(x).numpy())
    np.testing.assert_array_equal(other[1].running_var.numpy(), state["1.running_var"])


def test_batchnorm_momentum_none_is_the_cumulative_average(rng):
    bn = nn.BatchNorm2d(2, momentum=None, dtype=np.float64)
    xs = [rng.standard_normal((3, 2, 2, 2)) + i for i in range(4)]
    for x in xs:
        bn(Tensor(x))
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([x.mean(axis=(0, 2, 3)) for x in xs], axis=0),
                               rtol=1e-12)


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("targets,err,match", [
    (np.array([0, 3]), ValueError, r"target 3 is out of range for 3 classes"),
    (np.array([-1, 0]), ValueError, r"target -1 is out of range"),
    (np.array([0.0, 1.0]), TypeError, r"dtype float64 .*integer class indices"),
    (np.array([0, 1, 2]), ValueError, r"targets shape \(3,\) does not match logits \(N, C\) = \(2, 3\)"),
    (Tensor(np.array([0.0, 1.0])), TypeError, r"not a float minisr.Tensor"),
])
def test_cross_entropy_bad_targets(targets, err, match):
    with pytest.raises(err, match=match):
        F.cross_entropy(Tensor(np.zeros((2, 3))), targets)


def test_cross_entropy_needs_2d_logits():
    with pytest.raises(ValueError, match=r"logits must be 2-D \(N, C\), got shape \(2, 3, 4\)"):
        F.cross_entropy(Tensor(np.zeros((2, 3, 4))), np.array([0, 1]))


def test_batchnorm_batch_of_one_in_training():
    bn = nn.BatchNorm2d(3)
    x = Tensor(np.ones((1, 3, 1, 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\(1, 3, 1, 1\)"):
        bn(x)
    bn.eval()
    assert bn(x).shape == (1, 3, 1, 1)  # eval mode uses the running statistics: fine
    assert bn.train()(Tensor(np.ones((1, 3, 2, 1), dtype=np.float32))).shape == (1, 3, 2, 1)  # N*H*W = 2


@pytest.mark.parametrize("call,match", [
    (lambda: F.linear(Tensor(np.zeros((2, 4))), Tensor(np.zeros((3, 5)))), r"input \(2, 4\) has 4 features.*\(3, 5\)"),
    (lambda: F.max_pool2d(Tensor(np.zeros((1, 1, 2, 2))), 3), r"larger than the padded input"),
    (lambda: F.max_pool2d(Tensor(np.zeros((1, 1, 5, 5))), 2, 1, 2), r"at most half the kernel size"),
    (lambda: F.max_pool2d(Tensor(np.zeros((2, 5, 5))), 2), r"4-D \(N, C, H, W\), got shape \(2, 5, 5\)"),
    (lambda: F.adaptive_avg_pool2d(Tensor(np.zeros((1, 1, 5, 5))), 2), r"must divide the input size \(5, 5\)"),
    (lambda: F.dropout(Tensor(np.zeros(3)), 1.5), r"between 0 and 1"),
    (lambda: nn.BatchNorm2d(3)(Tensor(np.zeros((2, 4, 2, 2), dtype=np.float32))), r"has 4 channels"),
    (lambda: F.batch_norm(Tensor(np.zeros((2, 3))), None, None), r"needed when training=False"),
])
def test_bad_input_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ----------------------------------------------------------------- GPU (a real device, or the CUDA emulator)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classifier_step_on_gpu_matches_numpy(cuda, dtype):
    """Every classifier op (the pool.cu kernels included) forward and backward on the GPU, against the CPU."""
    rng = np.random.default_rng(4)
    x, t = rng.standard_normal((4, 2, 9, 8)).astype(dtype), rng.integers(0, 3, 4)
    results = []
    for device in ("cpu", "cuda"):
        minisr.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, dtype=dtype), nn.BatchNorm2d(4, dtype=dtype), nn.ReLU(),
                              nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2, 1, 1, count_include_pad=False),
                              nn.Dropout(0.3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3, dtype=dtype))
        model.to(device)
        xt = Tensor(x).to(device)
        xt.requires_grad = True
        minisr.manual_seed(1)
        logits = model(xt)
        loss = F.cross_entropy(logits, t) + F.binary_cross_entropy_with_logits(logits, np.full((4, 3), 0.3, dtype))
        loss.backward()
        results.append([loss.numpy(), Tensor(xt.grad).numpy(), model[1].running_var.numpy()]
                       + [Tensor(p.grad).numpy() for p in model.parameters()])
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for a, g in zip(*results):
        np.testing.assert_allclose(g, a, rtol=tol, atol=tol)
