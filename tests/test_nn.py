"""Modules: registration and naming, state_dict, train/eval, Conv2d initialisers; and autograd behaviour as
PyTorch's (no_grad, float64 end to end, backward twice, gradient accumulation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minisr
import minisr.functional as F
from minisr import Tensor, nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                  nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.LeakyReLU(0.2)))
        self.head = nn.Conv2d(4, 4, 3, padding="same")
        self.shuffle = nn.PixelShuffle(2)
        self.register_buffer("mean", Tensor(np.full((1, 1, 1, 1), 0.5, np.float32)))

    def forward(self, x):
        return self.shuffle(self.head(self.body(x - self.mean.numpy().item())))


# ----------------------------------------------------------------------------------------------- registration
def test_parameter_names_as_pytorch():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "body.0.weight", "body.0.bias", "body.2.0.weight", "head.weight", "head.bias"]
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3))
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert net.num_parameters() == 4 * 9 + 4 + 16 + 4 * 4 * 9 + 4
    assert [n for n, _ in net.named_buffers()] == ["mean"]
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and list(seq)[2] is seq[2]


def test_parameter_names_match_torch():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    tnet = tnn.Sequential(tnn.Conv2d(1, 4, 3), tnn.ReLU(),
                          tnn.Sequential(tnn.Conv2d(4, 4, 1, bias=False), tnn.LeakyReLU()))
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(),
                        nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.LeakyReLU()))
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in tnet.named_parameters()]
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: tuple(v.shape)
                                                                 for k, v in tnet.state_dict().items()}


def test_reassigning_an_attribute_replaces_the_registration():
    m = nn.Module()
    m.conv = nn.Conv2d(1, 1, 3)
    assert len(m.parameters()) == 2
    m.conv = None
    assert m.parameters() == []
    m.w = nn.Parameter(np.zeros(3, np.float32))
    m.w = Tensor(np.zeros(3, np.float32))  # a plain tensor is not a parameter
    assert m.parameters() == []


def test_module_needs_super_init():
    class Bad(nn.Module):
        def __init__(self):
            self.conv = nn.Conv2d(1, 1, 3)

    with pytest.raises(RuntimeError, match="super"):
        Bad()


# ------------------------------------------------------------------------------------------------- state_dict
def test_state_dict_round_trip(tmp_path):
    minisr.manual_seed(1)
    a = Net()
    minisr.manual_seed(2)
    b = Net()
    x = Tensor(np.random.default_rng(0).standard_normal((2, 1, 6, 7)).astype(np.float32))
    assert not np.allclose(a(x).numpy(), b(x).numpy())
    state = a.state_dict()
    assert list(state) == [n for n, _ in a.named_parameters()] + ["mean"]
    state["head.bias"][:] = 7.0  # a copy: the model is untouched
    assert not np.any(a.head.bias.numpy() == 7.0)
    np.savez(tmp_path / "w.npz", **a.state_dict())
    b.load_state_dict(dict(np.load(tmp_path / "w.npz")))
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert q.numpy() is not p.numpy() and q.dtype == p.dtype and q.numpy().flags.c_contiguous, n


def test_load_state_dict_errors():
    net = Net()
    state = net.state_dict()
    bad = dict(state, **{"head.weight": np.zeros((4, 4, 5, 5), np.float32)})
    with pytest.raises(ValueError, match=r"head\.weight.*\(4, 4, 5, 5\).*\(4, 4, 3, 3\)"):
        net.load_state_dict(bad)
    missing = {k: v for k, v in state.items() if k != "body.0.bias"}
    with pytest.raises(KeyError, match=r"body\.0\.bias"):
        net.load_state_dict(missing)
    with pytest.raises(KeyError, match="extra"):
        net.load_state_dict(dict(state, extra=np.zeros(1)))
    net.load_state_dict(missing, strict=False)


def test_load_state_dict_takes_transposed_arrays():
    """A non-contiguous array (e.g. from another layout) loads as a contiguous parameter that trains."""
    conv = nn.Conv2d(2, 3, 3, bias=False)
    w = np.ascontiguousarray(np.random.default_rng(0).standard_normal((3, 3, 2, 3)).transpose(3, 2, 1, 0))
    conv.load_state_dict({"weight": np.asfortranarray(w)})
    assert conv.weight.numpy().flags.c_contiguous and conv.weight.dtype == np.float32
    opt = minisr.optim.SGD(conv.parameters(), lr=1.0)
    conv.weight.grad = np.ones(conv.weight.shape, np.float32)
    opt.step()
    np.testing.assert_allclose(conv.weight.numpy(), w - 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------------------------------ modes
def test_train_eval_flags_are_recursive():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.body.train(False)
    assert net.training and not net.body[2][1].training


def test_to_and_dtype():
    net = Net()
    assert net.to("cpu") is net
    net.double()
    assert all(p.dtype == np.float64 for p in net.parameters()) and net.mean.dtype == np.float64
    net.float()
    assert all(p.dtype == np.float32 for p in net.parameters())
    with pytest.raises(ValueError, match="device"):
        net.to("tpu")


def test_modules_match_functional():
    x = Tensor(np.random.default_rng(0).standard_normal((1, 8, 3, 3)).astype(np.float32))
    np.testing.assert_array_equal(nn.ReLU()(x).numpy(), F.relu(x).numpy())
    np.testing.assert_array_equal(nn.LeakyReLU(0.3)(x).numpy(), F.leaky_relu(x, 0.3).numpy())
    np.testing.assert_array_equal(nn.PixelShuffle(2)(x).numpy(), F.pixel_shuffle(x, 2).numpy())
    assert nn.Identity()(x) is x
    assert "kernel_size=(3, 3)" in repr(Net()) and "(shuffle): PixelShuffle(upscale_factor=2)" in repr(Net())


# ------------------------------------------------------------------------------------------------------- init
def test_default_init_bounds():
    minisr.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3)
    bound = 1 / math.sqrt(64 * 9)
    w, b = conv.weight.numpy(), conv.bias.numpy()
    assert w.dtype == np.float32 and w.shape == (64, 64, 3, 3) and b.shape == (64,)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)  # U(-a, a) has std a / sqrt(3)
    assert abs(w.mean()) < 0.02 * bound
    assert np.abs(b).max() <= bound and b.std() > 0.3 * bound


def test_default_init_matches_torch_statistics():
    torch = pytest.importorskip("torch")
    t = torch.nn.Conv2d(16, 32, 5)
    bound = 1 / math.sqrt(16 * 25)
    assert float(t.weight.detach().abs().max()) <= bound and float(t.bias.detach().abs().max()) <= bound
    minisr.manual_seed(0)
    m = nn.Conv2d(16, 32, 5)
    assert m.weight.numpy().std() == pytest.approx(float(t.weight.detach().std()), rel=0.05)


def test_gaussian_and_he_init():
    minisr.manual_seed(0)
    g = nn.Conv2d(32, 64, 5, init="gaussian", std=1e-3)
    assert g.weight.numpy().std() == pytest.approx(1e-3, rel=0.02)
    assert abs(g.weight.numpy().mean()) < 5e-5
    np.testing.assert_array_equal(g.bias.numpy(), 0)
    h = nn.Conv2d(64, 64, 3, init="he", dtype=np.float64)
    assert h.weight.dtype == np.float64
    assert h.weight.numpy().std() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)
    np.testing.assert_array_equal(h.bias.numpy(), 0)


def test_manual_seed_reproduces_weights():
    minisr.manual_seed(5)
    a = Net().state_dict()
    minisr.manual_seed(5)
    b = Net().state_dict()
    minisr.manual_seed(6)
    c = Net().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["head.weight"], c["head.weight"])


# --------------------------------------------------------------------------------------------------- autograd
def test_no_grad_records_no_graph():
    conv = nn.Conv2d(1, 2, 3)
    x = Tensor(np.ones((1, 1, 5, 5), np.float32), requires_grad=True)
    with minisr.no_grad():
        assert not minisr.is_grad_enabled()
        y = F.relu(conv(x)).sum()
        with minisr.enable_grad():
            z = conv(x)
        assert not minisr.is_grad_enabled()
    assert minisr.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf and y.op == "leaf"
    assert z.requires_grad and z.op == "conv2d"
    with pytest.raises(RuntimeError, match="requires_grad"):
        y.backward()
    with pytest.raises(ZeroDivisionError), minisr.no_grad():
        raise ZeroDivisionError
    assert minisr.is_grad_enabled()  # restored after an exception


def test_detach_cuts_the_graph():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = (x * 2.0).detach()
    assert not y.requires_grad and y.is_leaf
    np.testing.assert_array_equal(y.numpy(), 2.0)


def test_float64_end_to_end():
    minisr.manual_seed(0)
    net = Net().double()
    x = Tensor(np.random.default_rng(0).standard_normal((2, 1, 5, 6)))
    y = net(x)
    loss = F.mse_loss(y, np.zeros(y.shape)) + F.l1_loss(y, np.zeros(y.shape)) + F.smoothness_loss(y) * 1e-3
    assert y.dtype == np.float64 and loss.dtype == np.float64 and loss.shape == ()
    loss.backward()
    assert all(p.grad.dtype == np.float64 for p in net.parameters())
    opt = minisr.optim.Adam(net.parameters(), lr=1e-3)
    opt.step()
    assert all(p.dtype == np.float64 for p in net.parameters())


def test_backward_twice_raises():
    net = Net()
    loss = F.mse_loss(net(Tensor(np.ones((1, 1, 4, 4), np.float32))), np.zeros((1, 1, 8, 8), np.float32))
    loss.backward()
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_gradients_accumulate_across_backward_calls(backend):
    """As PyTorch: .grad adds up until zero_grad()."""
    with minisr.use_backend(backend):
        minisr.manual_seed(0)
        net = Net()
        x = np.random.default_rng(0).standard_normal((2, 1, 5, 6)).astype(np.float32)
        x = Tensor(x, requires_grad=True)

        def step():
            F.mse_loss(net(x), np.zeros((2, 1, 10, 12), np.float32)).backward()

        step()
        once = [p.grad.copy() for p in net.parameters()] + [x.grad.copy()]
        step()
        twice = [p.grad for p in net.parameters()] + [x.grad]
        for a, b in zip(once, twice):
            np.testing.assert_allclose(b, 2 * a, rtol=1e-6, atol=1e-7)
        net.zero_grad()
        assert all(p.grad is None for p in net.parameters())


def test_shared_parameter_gets_the_sum():
    """A parameter used twice in one graph (weight tying) receives both gradients."""
    w = Tensor(np.array([2.0, 3.0]), requires_grad=True)
    x = Tensor(np.array([5.0, 7.0]))
    (w * x + w * w).sum().backward()
    np.testing.assert_allclose(w.grad, x.numpy() + 2 * w.numpy())
    # a diamond: y feeds two branches
    v = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    y = v * 3.0
    (y * y + y).sum().backward()
    np.testing.assert_allclose(v.grad, 3 * (2 * 3 * v.numpy() + 1))


def test_deep_graph_needs_no_recursion():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])


def test_scalar_results_are_arrays():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    for y in (x.sum(), x.mean(), F.mse_loss(x, np.zeros((2, 3))), x[1, 2], x.sum() * 2.0):
        assert isinstance(y.data, np.ndarray) and y.shape == ()
    assert x.mean().item() == 2.5
