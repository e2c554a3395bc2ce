"""Optimizers, the step schedule and gradient clipping against torch.optim (skipped without torch), float64,
both CPU backends; and the optimizer state_dict round trip (continues exactly as if never interrupted)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import minisr
import minisr.functional as F
from minisr import Tensor, nn, optim

STEPS = 20


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    with minisr.use_backend(request.param):
        yield request.param


def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def small_model(seed=0):
    minisr.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, dtype=np.float64), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, dtype=np.float64), nn.PixelShuffle(2))


DATA_RNG = np.random.default_rng(42)
X = Tensor(DATA_RNG.standard_normal((2, 1, 6, 5)))
Y = Tensor(DATA_RNG.standard_normal((2, 1, 12, 10)))


def compute_grads(model):
    """One training step's gradients on a fixed batch: the gradients both optimizers receive."""
    model.zero_grad()
    loss = F.mse_loss(model(X), Y)
    loss.backward()
    return loss.item()


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.02, momentum=0.5, nesterov=True, weight_decay=1e-3),
]
ADAM_CONFIGS = [
    dict(lr=1e-2),
    dict(lr=5e-3, weight_decay=1e-2),
    dict(lr=2e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3),
]


def _run_against_torch(make_minisr, make_torch, backend):
    torch = _torch()
    model = small_model()
    params = model.parameters()
    t_params = [torch.tensor(p.numpy().copy(), requires_grad=True) for p in params]
    opt, t_opt = make_minisr(params), make_torch(torch, t_params)
    losses = []
    for step in range(STEPS):
        losses.append(compute_grads(model))
        for p, tp in zip(params, t_params):  # the same gradients into both
            tp.grad = torch.tensor(p.grad.copy())
        opt.step()
        t_opt.step()
        for i, (p, tp) in enumerate(zip(params, t_params)):
            np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-10, atol=1e-12,
                                       err_msg=f"parameter {i} after step {step + 1} ({backend})")
    assert losses[-1] < losses[0], "the optimizer should reduce the loss"


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_torch(backend, config):
    _run_against_torch(lambda ps: optim.SGD(ps, **config),
                       lambda torch, ps: torch.optim.SGD(ps, **config), backend)


@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_adam_matches_torch(backend, config):
    _run_against_torch(lambda ps: optim.Adam(ps, **config),
                       lambda torch, ps: torch.optim.Adam(ps, **config), backend)


@pytest.mark.parametrize("step_size,gamma", [(3, 0.5), (1, 0.9), (7, 0.1)])
def test_steplr_matches_torch(step_size, gamma):
    torch = _torch()
    model = small_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = optim.StepLR(opt, step_size, gamma)
    t_sched = torch.optim.lr_scheduler.StepLR(t_opt, step_size, gamma)
    for epoch in range(20):
        assert sched.get_last_lr() == pytest.approx(t_sched.get_last_lr(), rel=1e-12), f"epoch {epoch}"
        assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12)
        t_opt.step()
        sched.step()
        t_sched.step()


def _grads_pair(torch, rng):
    shapes = [(4, 3, 3, 3), (4,), (2, 4, 5, 5)]
    ps = [Tensor(np.zeros(s), requires_grad=True) for s in shapes]
    tps = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    for p, tp in zip(ps, tps):
        g = rng.standard_normal(p.shape)
        p.grad, tp.grad = g.copy(), torch.tensor(g.copy())
    return ps, tps


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3])
def test_clip_grad_norm_matches_torch(max_norm, rng):
    torch = _torch()
    ps, tps = _grads_pair(torch, rng)
    total = optim.clip_grad_norm_(ps, max_norm)
    t_total = torch.nn.utils.clip_grad_norm_(tps, max_norm)
    assert total == pytest.approx(float(t_total), rel=1e-12)
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("clip", [0.1, 1.0])
def test_clip_grad_value_matches_torch(clip, rng):
    torch = _torch()
    ps, tps = _grads_pair(torch, rng)
    optim.clip_grad_value_(ps, clip)
    torch.nn.utils.clip_grad_value_(tps, clip)
    for p, tp in zip(ps, tps):
        np.testing.assert_array_equal(p.grad, tp.grad.numpy())


def test_clip_accepts_one_tensor():
    p = Tensor(np.zeros(3), requires_grad=True)
    p.grad = np.array([3.0, 4.0, 0.0])
    assert optim.clip_grad_norm_(p, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(p.grad, [0.6, 0.8, 0.0], rtol=1e-5)


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: optim.Adam(ps, lr=1e-2, betas=(0.8, 0.95), weight_decay=1e-3),
], ids=["sgd", "adam"])
def test_state_dict_round_trip_continues_identically(backend, make, tmp_path):
    """20 steps in one go; or 10, save model + optimizer + schedule (np.savez), rebuild, load, 10 more."""
    ref = small_model()
    ref_opt = make(ref.parameters())
    ref_sched = optim.StepLR(ref_opt, 4, 0.5)
    for _ in range(STEPS):
        compute_grads(ref)
        ref_opt.step()
        ref_sched.step()

    model = small_model()
    opt = make(model.parameters())
    sched = optim.StepLR(opt, 4, 0.5)
    for _ in range(STEPS // 2):
        compute_grads(model)
        opt.step()
        sched.step()
    np.savez(tmp_path / "model.npz", **model.state_dict())
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    np.savez(tmp_path / "sched.npz", **sched.state_dict())

    model2 = small_model(seed=123)  # different initial weights: everything must come from the files
    opt2 = make(model2.parameters())
    sched2 = optim.StepLR(opt2, 1, 1.0)
    model2.load_state_dict(dict(np.load(tmp_path / "model.npz")))
    opt2.load_state_dict(dict(np.load(tmp_path / "opt.npz")))
    sched2.load_state_dict(dict(np.load(tmp_path / "sched.npz")))
    sched2.step_size, sched2.gamma = 4, 0.5  # (StepLR's settings are constructor arguments, as in PyTorch)
    assert opt2.lr == opt.lr
    for _ in range(STEPS - STEPS // 2):
        compute_grads(model2)
        opt2.step()
        sched2.step()
    assert opt2.lr == ref_opt.lr
    for (name, a), b in zip(ref.state_dict().items(), model2.state_dict().values()):
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-15, err_msg=name)


def test_optimizer_state_dict_checks_shapes():
    model = small_model()
    opt = optim.Adam(model.parameters())
    compute_grads(model)
    opt.step()
    state = opt.state_dict()
    other = optim.Adam(nn.Conv2d(1, 2, 5, dtype=np.float64).parameters())
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(state)


def test_zero_grad_and_skipping_params_without_grad():
    model = small_model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.numpy().copy() for p in model.parameters()]
    opt.step()  # no gradients yet: nothing moves
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)
    compute_grads(model)
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_bad_hyper_parameters():
    ps = small_model().parameters()
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(ps, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(ps, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)


# --------------------------------------------------------------------------------------- weight moving average
def _torch_twin(torch, model):
    """torch's copy of small_model(), with its weights."""
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
                             torch.nn.PixelShuffle(2)).double()
    with torch.no_grad():
        for tp, p in zip(tm.parameters(), model.parameters()):
            tp.copy_(torch.tensor(p.numpy()))
    return tm


@pytest.mark.parametrize("decay", [0.5, 0.9])
def test_ema_matches_torch_averaged_model(backend, decay):
    """EMA(model, decay) and torch's AveragedModel(get_ema_multi_avg_fn(decay)) over the same SGD steps."""
    torch = _torch()
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = small_model()
    tm = _torch_twin(torch, model)
    t_avg = AveragedModel(tm, multi_avg_fn=get_ema_multi_avg_fn(decay))
    t_avg.update_parameters(tm)  # torch's first update copies the weights, as EMA's constructor
    ema = optim.EMA(model, decay)
    opt, t_opt = optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(tm.parameters(), lr=0.1)
    for step in range(8):
        compute_grads(model)
        for p, tp in zip(model.parameters(), tm.parameters()):
            tp.grad = torch.tensor(p.grad.copy())
        opt.step()
        t_opt.step()
        ema.update()
        t_avg.update_parameters(tm)
        for (name, a), ta in zip(ema.state_dict().items(), t_avg.module.parameters()):
            np.testing.assert_allclose(a, ta.detach().numpy(), rtol=1e-12, atol=1e-14,
                                       err_msg=f"{name} after step {step + 1}")
    # the average lags the weights: it is not simply a copy of them
    assert any(not np.allclose(a, p.numpy()) for a, p in zip(ema.state_dict().values(), model.parameters()))


def test_ema_applied_swaps_in_the_average_and_back():
    model = small_model()
    ema = optim.EMA(model, 0.5)
    own = [p.numpy().copy() for p in model.parameters()]
    for p in model.parameters():  # new weights: the average is now halfway
        p.data += 1.0
    ema.update()
    x = Tensor(np.ones((1, 1, 4, 4)))
    for fail in (False, True):
        with pytest.raises(RuntimeError, match="inside") if fail else contextlib.nullcontext():
            with ema.applied():
                for p, w in zip(model.parameters(), own):
                    np.testing.assert_allclose(p.numpy(), w + 0.5, rtol=1e-15)
                if fail:
                    raise RuntimeError("an error inside")
        for p, w in zip(model.parameters(), own):  # the model's own weights again, after an error too
            np.testing.assert_array_equal(p.numpy(), w + 1.0)
    # the swap is an in-place write the version counter sees: a graph built before it cannot backpropagate
    y = model(x).sum()
    with ema.applied():
        pass
    with pytest.raises(RuntimeError, match="modified by an inplace operation|in-place|version"):
        y.backward()


def test_ema_state_dict_round_trip_and_errors():
    model = small_model()
    ema = optim.EMA(model, 0.9)
    for p in model.parameters():
        p.data *= 2.0
    ema.update()
    other = optim.EMA(small_model(seed=1), 0.9)
    other.load_state_dict(ema.state_dict())
    for (k, a), b in zip(ema.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    state = ema.state_dict()
    name = next(iter(state))
    with pytest.raises(ValueError, match=f"{name}.*shape"):
        other.load_state_dict({**state, name: np.zeros(3)})
    with pytest.raises(KeyError, match="missing averages"):
        other.load_state_dict({k: v for k, v in state.items() if k != name})
    for decay in (-0.1, 1.0):
        with pytest.raises(ValueError, match="decay"):
            optim.EMA(model, decay)
