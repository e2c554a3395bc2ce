"""The benchmark's cases in JAX (``jax.jit`` on XLA's CPU backend): the third column of bench/compare.py, shown
when JAX is importable (it is optional: ``pip install jax``; not in any extra).

The same work as the minisr and PyTorch columns: the sgemms as ``jnp.matmul``; a conv layer's forward, and its
forward + backward as one jitted ``jax.vjp`` with the fixed upstream gradient; a training step as one jitted
function of forward, loss (MSE or L1), gradient and Adam (PyTorch's defaults: betas 0.9 / 0.999, eps 1e-8), on
the same models -- parameters named and shaped as minisr's state_dict, so ``forward(case)`` also runs minisr's
weights (compare.py checks that it computes what minisr does). Every call waits for its result
(``block_until_ready``), as the other columns' calls do.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np


def available() -> bool:
    return importlib.util.find_spec("jax") is not None


def limit_threads(threads: int) -> None:
    """XLA's CPU thread pools are sized by the CPUs this process may run on: bind it to ``threads`` of them
    (before jax is imported). Nothing to do when that is all of them."""
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if 0 < threads < len(cpus):
            os.sched_setaffinity(0, set(cpus[:threads]))


def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)  # (float64 cases; float32 arrays stay float32)
    return jax


def _conv(x, w, b, pad):
    import jax

    y = jax.lax.conv_general_dilated(x, w, (1, 1), [(pad, pad), (pad, pad)],
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y if b is None else y + b[None, :, None, None]


def _pixel_shuffle(x, r):
    N, C, H, W = x.shape
    c = C // (r * r)
    return x.reshape(N, c, r, r, H, W).transpose(0, 1, 4, 2, 5, 3).reshape(N, c, H * r, W * r)


# --------------------------------------------------------------------------------------------------- sgemm
def sgemm(spec, dtype):
    """fn() running the sgemm case (batch, m, k, n) as jnp.matmul."""
    jax = _jax()
    import jax.numpy as jnp

    batch, m, k, n = spec
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((m, k)).astype(dtype))
    b = jnp.asarray(rng.standard_normal((k, n) if batch is None else (batch, k, n)).astype(dtype))
    mm = jax.jit(jnp.matmul)
    return lambda: mm(a, b).block_until_ready()


# ------------------------------------------------------------------------------------------------- conv2d
def conv(case, x, w, b, G):
    """(fwd, fwd_bwd) of one conv layer, as C.minisr_conv: fwd() -> out; fwd_bwd() -> (out, dx or None, dw, db)."""
    jax = _jax()

    jx, jw, jb, jg = (jax.numpy.asarray(a) for a in (x, w, b, G))
    fwd = jax.jit(lambda x, w, b: _conv(x, w, b, case.pad))

    @jax.jit
    def fwd_bwd(x, w, b, g):
        if case.input_grad:
            out, vjp = jax.vjp(lambda x, w, b: _conv(x, w, b, case.pad), x, w, b)
            return (out, *vjp(g))
        out, vjp = jax.vjp(lambda w, b: _conv(x, w, b, case.pad), w, b)
        return (out, None, *vjp(g))

    return (lambda: fwd(jx, jw, jb).block_until_ready(),
            lambda: jax.block_until_ready(fwd_bwd(jx, jw, jb, jg)))


# ------------------------------------------------------------------------------------------------- models
def _edsr_mean(channels):
    from minisr.models.edsr import DIV2K_RGB_MEAN

    return np.asarray(DIV2K_RGB_MEAN if channels == 3 else (0.5,) * channels)


def param_shapes(case) -> dict:
    """{name: shape} of the trained parameters, as in minisr's state_dict (minisr/models/{srcnn,vdsr,edsr}.py)."""
    cfg, shapes = dict(case.cfg), {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    if case.model == "srcnn":
        (f1, f2, f3), (n1, n2) = cfg.get("kernels", (9, 5, 5)), cfg.get("features", (64, 32))
        c = cfg.get("in_channels", 1)
        conv("conv1", c, n1, f1), conv("conv2", n1, n2, f2), conv("conv3", n2, c, f3)
    elif case.model == "vdsr":
        depth, n, c = cfg.get("depth", 20), cfg.get("features", 64), cfg.get("in_channels", 1)
        for i in range(depth):
            conv(f"body.{2 * i}", c if i == 0 else n, c if i == depth - 1 else n, 3)
    elif case.model == "edsr":
        scale, blocks = cfg.get("scale", 2), cfg.get("n_resblocks", 16)
        n, c = cfg.get("n_feats", 64), cfg.get("n_colors", 3)
        conv("head", c, n, 3)
        for i in range(blocks):
            conv(f"body.{i}.conv1", n, n, 3), conv(f"body.{i}.conv2", n, n, 3)
        conv(f"body.{blocks}", n, n, 3)
        ups = [(4, 2)] * {2: 1, 4: 2, 8: 3}[scale] if scale in (2, 4, 8) else [(9, 3)]
        for j, (m, _) in enumerate(ups):
            conv(f"tail.0.{2 * j}", n, m * n, 3)
        conv("tail.1", n, c, 3)
    else:
        raise KeyError(f"no JAX twin for model {case.model!r}")
    return shapes


def init_params(case, dtype, seed=0) -> dict:
    """Random parameters of the right shapes (the times do not depend on the weights)."""
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * (np.sqrt(2.0 / np.prod(s[1:])) if len(s) > 1 else 0.0)).astype(dtype)
            for k, s in param_shapes(case).items()}


def forward(case):
    """f(params, x): the model's output, for params named as minisr's state_dict."""
    cfg = dict(case.cfg)
    relu = _jax().nn.relu
    if case.model == "srcnn":
        pad = (lambda k: k // 2) if cfg.get("padding", "valid") == "same" else (lambda k: 0)
        ks = cfg.get("kernels", (9, 5, 5))

        def f(p, x):
            for i, k in enumerate(ks, 1):
                x = _conv(x, p[f"conv{i}.weight"], p[f"conv{i}.bias"], pad(k))
                x = relu(x) if i < 3 else x
            return x
    elif case.model == "vdsr":
        depth, residual = cfg.get("depth", 20), cfg.get("residual", True)

        def f(p, x):
            h = x
            for i in range(depth):
                h = _conv(h, p[f"body.{2 * i}.weight"], p[f"body.{2 * i}.bias"], 1)
                h = relu(h) if i < depth - 1 else h
            return h + x if residual else h
    else:
        blocks, res_scale = cfg.get("n_resblocks", 16), cfg.get("res_scale", 1.0)
        scale = cfg.get("scale", 2)
        ups = [2] * {2: 1, 4: 2, 8: 3}[scale] if scale in (2, 4, 8) else [3]
        mean = _edsr_mean(cfg.get("n_colors", 3))

        def f(p, x):
            m = mean.astype(x.dtype)[None, :, None, None]
            h = _conv(x - m, p["head.weight"], p["head.bias"], 1)
            r = h
            for i in range(blocks):
                t = _conv(relu(_conv(r, p[f"body.{i}.conv1.weight"], p[f"body.{i}.conv1.bias"], 1)),
                          p[f"body.{i}.conv2.weight"], p[f"body.{i}.conv2.bias"], 1)
                r = (t * res_scale if res_scale != 1 else t) + r
            h = _conv(r, p[f"body.{blocks}.weight"], p[f"body.{blocks}.bias"], 1) + h
            for j, s in enumerate(ups):
                h = _pixel_shuffle(_conv(h, p[f"tail.0.{2 * j}.weight"], p[f"tail.0.{2 * j}.bias"], 1), s)
            return _conv(h, p["tail.1.weight"], p["tail.1.bias"], 1) + m
    return f


def step(case, x, y, params=None):
    """C.minisr_step's twin: a jitted training step (forward, loss, gradient, Adam) or inference; the call
    returns the loss (a float) or the output array."""
    jax = _jax()
    import jax.numpy as jnp

    f = forward(case)
    params = {k: jnp.asarray(v) for k, v in (params or init_params(case, x.dtype)).items()}
    jx, jy = jnp.asarray(x), jnp.asarray(y)
    if case.mode == "infer":
        fwd = jax.jit(f)
        return lambda: np.asarray(fwd(params, jx).block_until_ready())

    def loss_fn(p, x, y):
        d = f(p, x) - y
        return jnp.mean(d * d) if case.loss == "mse" else jnp.mean(jnp.abs(d))

    b1, b2, eps, lr = 0.9, 0.999, 1e-8, case.lr

    @jax.jit
    def train(p, m, v, t, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        p = jax.tree_util.tree_map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), p, m, v)
        return p, m, v, t, loss

    state = dict(p=params, m=jax.tree_util.tree_map(jnp.zeros_like, params),
                 v=jax.tree_util.tree_map(jnp.zeros_like, params), t=jnp.asarray(0, x.dtype))

    def run():
        state["p"], state["m"], state["v"], state["t"], loss = train(state["p"], state["m"], state["v"],
                                                                      state["t"], jx, jy)
        return float(loss)

    return run
