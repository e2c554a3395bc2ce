"""Optimizers with torch.optim's update rules and interface, a step learning-rate schedule, and gradient
clipping, and an exponential moving average of the weights.

The update arithmetic is a backend kernel (``sgd_update`` / ``adam_update``), applied in place to each
parameter.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from .backends import backend_for, get_array_module
from .device import to_device
from .tensor import Tensor, bump_version, check_grad

__all__ = ["Optimizer", "SGD", "Adam", "StepLR", "EMA", "clip_grad_norm_", "clip_grad_value_"]


class Optimizer:
    """Holds ``param_groups`` (dicts of "params" and the hyper-parameters) and per-parameter ``state``."""

    defaults: dict = {}

    def __init__(self, params, **hyper):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for g in groups:
            group = dict(self.defaults, **hyper)
            group.update(g)
            group["params"] = list(group["params"])
            self.param_groups.append(group)
        self.state: dict[int, dict] = {}  # keyed by the parameter's position across groups

    def _params(self):
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield i, group, p
                i += 1

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for g in self.param_groups:
            g["lr"] = value

    def zero_grad(self) -> None:
        for _, _, p in self._params():
            p.grad = None

    def step(self) -> None:
        todo = [(i, group, p) for i, group, p in self._params() if p.grad is not None]
        for i, _, p in todo:  # all checked before any is updated (the kernels trust their arguments)
            check_grad(p, p.grad, f"{type(self).__name__}.step: parameter {i}'s .grad")
        for i, group, p in todo:
            self._update(p, group, self.state.setdefault(i, {}))
            bump_version(p.data)  # an in-place write: a backward that saved p now raises

    def _update(self, p, group, state):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Flat dict of arrays and numbers (np.savez friendly): hyper-parameters per group, state per
        parameter."""
        out = {}
        for gi, group in enumerate(self.param_groups):
            for k, v in group.items():
                if k != "params":
                    out[f"group{gi}.{k}"] = np.asarray(v)
        for i, st in self.state.items():
            for k, v in st.items():
                out[f"state{i}.{k}"] = np.array(v.get() if hasattr(v, "get") else v, copy=True)
        return out

    def load_state_dict(self, state: dict) -> None:
        for gi, group in enumerate(self.param_groups):
            for k in list(group):
                key = f"group{gi}.{k}"
                if k != "params" and key in state:
                    v = np.asarray(state[key])
                    group[k] = v.item() if v.ndim == 0 else tuple(v.tolist())
        params = {i: p for i, _, p in self._params()}
        self.state = {}
        for key, v in state.items():
            if not key.startswith("state"):
                continue
            head, name = key.split(".", 1)
            i = int(head[len("state"):])
            if i not in params:
                raise KeyError(f"optimizer state for parameter {i}, but the optimizer has {len(params)} "
                               "parameters")
            p = params[i]
            v = np.asarray(v)
            if v.ndim and v.shape != p.shape:
                raise ValueError(f"optimizer state {key} has shape {v.shape}, parameter {i} has {p.shape}")
            # buffers (momentum, moments) are arrays of the parameter's shape -- 0-d ones too, for a 0-d
            # parameter; counters (Adam's step) and float scalars for larger parameters are numbers
            if v.ndim == 0 and (p.ndim or v.dtype.kind != "f"):
                value = v.item()
            else:
                value = to_device(np.array(v, dtype=p.dtype, order="C").reshape(p.shape), p.device)
            self.state.setdefault(i, {})[name] = value


class SGD(Optimizer):
    """``SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)``: torch.optim.SGD's
    rule."""

    defaults = dict(lr=1e-2, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False)

    def __init__(self, params, lr=1e-2, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr {lr}, momentum {momentum} and weight_decay {weight_decay} "
                             "must be >= 0")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)

    def _update(self, p, group, state):
        first = "momentum_buffer" not in state
        if group["momentum"] and first:
            state["momentum_buffer"] = get_array_module(p.data).empty_like(p.data)
        backend_for(p.data).sgd_update(p.data, p.grad, state.get("momentum_buffer"), group["lr"],
                                       group["momentum"], group["dampening"], group["weight_decay"],
                                       group["nesterov"], first)


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)``, torch.optim.Adam's rule."""

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Adam: invalid lr {lr}, betas {betas} or eps {eps}")
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def _update(self, p, group, state):
        if "step" not in state:
            xp = get_array_module(p.data)
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
        state["step"] += 1
        b1, b2 = group["betas"]
        backend_for(p.data).adam_update(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                                        group["lr"], b1, b2, group["eps"], group["weight_decay"])


class StepLR:
    """Multiply the learning rate by ``gamma`` every ``step_size`` calls of ``step()`` (one per epoch)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.optimizer, self.step_size, self.gamma = optimizer, int(step_size), float(gamma)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_epoch = 0

    def step(self) -> None:
        self.last_epoch += 1
        factor = self.gamma ** (self.last_epoch // self.step_size)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * factor

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])
        self.base_lrs = [float(v) for v in np.asarray(state["base_lrs"]).ravel()]


class EMA:
    """An exponential moving average of a model's parameters, updated after each optimizer step:

        avg <- avg + (1 - decay) * (param - avg)        (= decay * avg + (1 - decay) * param)

    torch.optim.swa_utils.AveragedModel with ``get_ema_multi_avg_fn(decay)`` (its first update copies the weights,
    as this constructor does), BasicSR's ``ema_decay``. The average starts from the weights at construction, so it
    is meant for decays whose horizon, 1 / (1 - decay) steps, is short beside the run (0.999: ~1,000 steps).
    Buffers (BatchNorm's running statistics, already averages) are not averaged: ``applied`` leaves them as they are.
    """

    def __init__(self, model, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay {decay} is not in [0, 1)")
        self.decay = float(decay)
        self.params = dict(model.named_parameters())
        self.avg = {name: p.data.copy() for name, p in self.params.items()}

    def update(self) -> None:
        """Move every average towards its parameter's current value."""
        for name, p in self.params.items():
            avg = self.avg[name]
            avg += avg.dtype.type(1.0 - self.decay) * (p.data - avg)

    @contextmanager
    def applied(self):
        """Inside the ``with``, the model's parameters hold the averages (to validate or save them); after it,
        their own values again, also on an error."""
        kept = {name: p.data.copy() for name, p in self.params.items()}
        try:
            self._write(self.avg)
            yield
        finally:
            self._write(kept)

    def _write(self, values: dict) -> None:
        for name, p in self.params.items():
            p.data[...] = values[name]
            bump_version(p.data)  # an in-place write, as the optimizer's

    def state_dict(self) -> dict:
        """Name -> NumPy copy of each average (the model's parameter names; np.savez friendly)."""
        return {name: np.array(to_device(a, "cpu"), copy=True) for name, a in self.avg.items()}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.avg) - set(state))
        unexpected = sorted(set(state) - set(self.avg))
        if missing or unexpected:
            raise KeyError(f"EMA.load_state_dict: missing averages {missing}, unexpected {unexpected}")
        for name, p in self.params.items():
            v = np.asarray(state[name])
            if v.shape != p.shape:
                raise ValueError(f"EMA.load_state_dict: {name} has shape {v.shape}, the parameter {p.shape}")
            self.avg[name] = to_device(np.array(v, dtype=p.dtype, order="C"), p.device)


def clip_grad_norm_(params, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``; returns the norm before.

    As torch.nn.utils.clip_grad_norm_: total = sqrt(sum of all squared gradient elements), and when
    max_norm / (total + 1e-6) < 1 every gradient is multiplied by that factor."""
    if isinstance(params, Tensor):
        params = [params]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g *= g.dtype.type(coef)
    return total


def clip_grad_value_(params, clip_value: float) -> None:
    """Clip every gradient element into [-clip_value, clip_value].

    (VDSR's adjustable clipping passes theta / lr.)"""
    if isinstance(params, Tensor):
        params = [params]
    for p in params:
        if p.grad is not None:
            get_array_module(p.grad).clip(p.grad, -clip_value, clip_value, out=p.grad)
