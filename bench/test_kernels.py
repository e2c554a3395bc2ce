"""pytest-benchmark: every kernel of the seam (minisr.backends.KERNELS) and the ops' forward + backward, minisr's
two CPU kernel sets beside their PyTorch equivalent.

    pytest bench/ --benchmark-only --benchmark-group-by=group       # timings, one table per kernel / op
    pytest bench/ --benchmark-disable --bench-tiny                  # each once, as a correctness test

Each test first calls its function once untimed (Numba compiles or loads its kernels then) and checks that
result against PyTorch's (PyTorch's own row against the NumPy reference): max |a - b| / max |b| <= 1e-4 in
float32. Kernels are called directly through the seam (``minisr.get_backend(name).<kernel>``); ops through
``minisr.functional`` under ``minisr.use_backend(name)`` with ``out.backward(G)`` (a fixed upstream gradient; the
losses backward from their scalar). Shapes: the VDSR middle layer for the conv kernels, EDSR feature maps for
the elementwise ones, EDSR's upsampler for pixel shuffle, an EDSR x2 target batch for the losses, EDSR-baseline
x2's parameter count for the optimizers; ``--bench-tiny`` shrinks them all.

The PyTorch column is the closest equivalent: unfold / fold for im2col / col2im, conv2d (without bias) and
aten.convolution_backward (one gradient at a time) for the conv kernels, the aten backward kernels for ReLU,
leaky ReLU and MSE, pixel_unshuffle for the shuffle's backward, one
``optimizer.step()`` of torch.optim.SGD / Adam on one flat parameter for the update kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import _common as C  # first: sets the thread counts before NumPy is imported
import numpy as np
import pytest

import minisr
import minisr.functional as F
from minisr.backends import KERNELS

torch = pytest.importorskip("torch")
TF = torch.nn.functional
C.init(C.THREADS)
TOL = 1e-4


@dataclass(frozen=True)
class Sizes:
    conv: C.ConvCase
    act: tuple  # elementwise kernels
    shuffle: tuple  # pixel shuffle input (N, C r r, H, W)
    r: int
    loss: tuple
    n_params: int  # optimizer updates: one flat parameter


VDSR = next(c for c in C.CONV_CASES if c.id == "conv-vdsr")
S = (Sizes(C.conv_case(VDSR, True), (2, 8, 12, 12), (2, 32, 6, 6), 2, (2, 3, 12, 12), 4096) if C.TINY else
     Sizes(VDSR, (16, 64, 48, 48), (16, 256, 48, 48), 2, (16, 3, 96, 96), 1_369_883))


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _np(v):
    if isinstance(v, torch.Tensor):
        return v.detach().numpy()
    if isinstance(v, (tuple, list)):
        return [_np(t) for t in v]
    return np.asarray(v)


def check(got, want, what):
    got, want = _np(got), _np(want)
    if not isinstance(want, list):
        got, want = [got], [want]
    for i, (a, b) in enumerate(zip(got, want)):
        if b is None:
            assert a is None, f"{what}: output {i} should be None"
            continue
        err = C.rel_err(a, b)
        assert err <= TOL, f"{what}: output {i} differs from the reference, relative error {err:.3g}"


# --------------------------------------------------------------------------------------------------- kernels
def conv_dims():
    c = S.conv
    N, Ci, H, W = c.shape
    Ho, Wo = H + 2 * c.pad - c.k + 1, W + 2 * c.pad - c.k + 1
    return c, N, Ci, H, W, Ci * c.k * c.k, (Ho, Wo)


def kernel_fn(kernel: str, impl: str):
    """A zero-argument callable running ``kernel`` once in ``impl`` on fresh fixed inputs; it returns the
    result (in-place kernels: the updated array)."""
    c, N, Ci, H, W, K, c_out = conv_dims()
    k, p, O, P = c.k, c.pad, c.out, c_out[0] * c_out[1]
    t = impl == "torch"
    be = None if t else minisr.get_backend(impl.split("-", 1)[1])

    def T(a):  # torch view of a copy
        return torch.from_numpy(a.copy())

    if kernel == "im2col":
        x = _rand(N, Ci, H, W)
        tx = T(x)
        return (lambda: TF.unfold(tx, k, padding=p)) if t else (lambda: be.im2col(x, k, k, 1, 1, p, p))
    if kernel == "col2im":
        cols = _rand(N, K, P)
        tc = T(cols)
        return ((lambda: TF.fold(tc, (H, W), k, padding=p)) if t else
                (lambda: be.col2im(cols, (N, Ci, H, W), k, k, 1, 1, p, p)))
    if kernel.startswith("conv_"):
        x, w2, g = _rand(N, Ci, H, W), _rand(O, K, seed=1), _rand(N, O, P, seed=3)
        geometry = (k, k, 1, 1, p, p)
        tx, tw, tg = T(x), T(w2).reshape(O, Ci, k, k), T(g).reshape(N, O, *c_out)

        def backward(mask):  # PyTorch's conv backward kernel, asked for one gradient
            return torch.ops.aten.convolution_backward(tg, tx, tw, None, [1, 1], [p, p], [1, 1], False, [0, 0], 1,
                                                       mask)

        if kernel == "conv_forward":
            return ((lambda: TF.conv2d(tx, tw, padding=p).reshape(N, O, P)) if t else
                    (lambda: be.conv_forward(x, w2, *geometry)))
        if kernel == "conv_weight_grad":
            return ((lambda: backward([False, True, False])[1].reshape(O, K)) if t else
                    (lambda: be.conv_weight_grad(g, x, *geometry)))
        if kernel == "conv_input_grad":
            return ((lambda: backward([True, False, False])[0]) if t else
                    (lambda: be.conv_input_grad(w2, g, (N, Ci, H, W), *geometry)))
        b, y = _rand(O, seed=4), np.maximum(_rand(N, O, P, seed=5), 0)  # (y: a ReLU output, for the mask)
        tb, ty = T(b), T(y).reshape(N, O, *c_out)
        if kernel == "conv_fused_forward":  # conv + bias + ReLU
            return ((lambda: torch.relu(TF.conv2d(tx, tw, tb, padding=p)).reshape(N, O, P)) if t else
                    (lambda: be.conv_fused_forward(x, w2, b, True, *geometry)))
        if kernel == "conv_fused_backward":  # ReLU's mask, then dx, dw, db
            def fused_backward():
                dx, dw, db = torch.ops.aten.convolution_backward(tg * (ty > 0), tx, tw, [O], [1, 1], [p, p], [1, 1],
                                                                 False, [0, 0], 1, [True, True, True])
                return dx, dw.reshape(O, K), db

            return fused_backward if t else (lambda: be.conv_fused_backward(g, y, x, w2, *geometry, True, True, True))
    if kernel.startswith("bias"):
        y, b = _rand(N, O, P), _rand(O, seed=1)
        ty, tb = T(y), T(b)
        if kernel == "bias_add":  # in place
            return (lambda: ty.add_(tb.view(1, -1, 1))) if t else (lambda: be.bias_add(y, b))
        return (lambda: ty.sum((0, 2))) if t else (lambda: be.bias_grad(y))
    if kernel.startswith(("prelu", "tanh", "sigmoid")):  # FSRCNN's and ESPCN's activations, on EDSR-sized maps
        x, g = _rand(*S.act), _rand(*S.act, seed=1)
        x.flat[::7] = 0.0
        a = np.abs(_rand(S.act[1], seed=2)) * 0.25
        y_tanh, y_sig = np.tanh(x), 1 / (1 + np.exp(-x))
        tx, tg, ta, tyt, tys = T(x), T(g), T(a), T(y_tanh), T(y_sig)
        fns = {
            "prelu_forward": (lambda: TF.prelu(tx, ta), lambda: be.prelu_forward(x, a)),
            "prelu_backward": (lambda: _torch_prelu_backward(tg, tx, ta), lambda: be.prelu_backward(g, x, a)),
            "tanh_forward": (lambda: torch.tanh(tx), lambda: be.tanh_forward(x)),
            "tanh_backward": (lambda: torch.ops.aten.tanh_backward(tg, tyt), lambda: be.tanh_backward(g, y_tanh)),
            "sigmoid_forward": (lambda: torch.sigmoid(tx), lambda: be.sigmoid_forward(x)),
            "sigmoid_backward": (lambda: torch.ops.aten.sigmoid_backward(tg, tys),
                                 lambda: be.sigmoid_backward(g, y_sig)),
        }
        return fns[kernel][0 if t else 1]
    if "relu" in kernel:
        x, g = _rand(*S.act), _rand(*S.act, seed=1)
        x.flat[::7] = 0.0
        slope = 0.2
        y = np.maximum(x, 0)
        tx, tg, ty = T(x), T(g), T(y)
        fns = {
            "relu_forward": (lambda: torch.relu(tx), lambda: be.relu_forward(x)),
            "relu_backward": (lambda: torch.ops.aten.threshold_backward(tg, ty, 0),
                              lambda: be.relu_backward(g, y)),
            "leaky_relu_forward": (lambda: TF.leaky_relu(tx, slope), lambda: be.leaky_relu_forward(x, slope)),
            "leaky_relu_backward": (lambda: torch.ops.aten.leaky_relu_backward(tg, tx, slope, False),
                                    lambda: be.leaky_relu_backward(g, x, slope)),
        }
        return fns[kernel][0 if t else 1]
    if kernel.startswith("pixel_shuffle"):
        r = S.r
        n, crr, h, w = S.shuffle
        if kernel == "pixel_shuffle_forward":
            x = _rand(*S.shuffle)
            tx = T(x)
            return (lambda: TF.pixel_shuffle(tx, r)) if t else (lambda: be.pixel_shuffle_forward(x, r))
        g = _rand(n, crr // (r * r), h * r, w * r)
        tg = T(g)
        return (lambda: TF.pixel_unshuffle(tg, r)) if t else (lambda: be.pixel_shuffle_backward(g, r))
    if kernel.startswith(("mse", "l1")):
        a, b = _rand(*S.loss), _rand(*S.loss, seed=1)
        b.flat[::11] = a.flat[::11]  # equal elements: sign(0) = 0 in both
        ta, tb = T(a), T(b)
        one, t_one = np.asarray(1.0, np.float32), torch.tensor(1.0)
        fns = {
            "mse_forward": (lambda: TF.mse_loss(ta, tb), lambda: be.mse_forward(a, b)),
            "mse_backward": (lambda: torch.ops.aten.mse_loss_backward(t_one, ta, tb, 1),  # 1: mean reduction
                             lambda: be.mse_backward(a, b, one)),
            "l1_forward": (lambda: TF.l1_loss(ta, tb), lambda: be.l1_forward(a, b)),
            "l1_backward": (lambda: torch.sign(ta - tb) * (t_one / a.size),  # what autograd computes for l1_loss
                            lambda: be.l1_backward(a, b, one)),
        }
        return fns[kernel][0 if t else 1]
    if kernel in ("sgd_update", "adam_update"):
        p0, g = _rand(S.n_params), _rand(S.n_params, seed=1)
        if t:
            tp = torch.from_numpy(p0.copy()).requires_grad_()
            tp.grad = T(g)
            opt = (torch.optim.SGD([tp], lr=0.01, momentum=0.9) if kernel == "sgd_update" else
                   torch.optim.Adam([tp], lr=1e-3))

            def torch_step():
                opt.step()
                return tp

            return torch_step
        p, state = p0.copy(), {"step": 0}
        if kernel == "sgd_update":
            buf = np.empty_like(p)

            def sgd():
                be.sgd_update(p, g, buf, 0.01, 0.9, 0.0, 0.0, False, state["step"] == 0)
                state["step"] += 1
                return p

            return sgd
        m, v = np.zeros_like(p), np.zeros_like(p)

        def adam():
            state["step"] += 1
            be.adam_update(p, g, m, v, state["step"], 1e-3, 0.9, 0.999, 1e-8, 0.0)
            return p

        return adam
    if kernel.startswith(("maxpool2d", "avgpool2d")):  # 3x3 windows, stride 2, padding 1 on EDSR feature maps
        x, geometry = _rand(*S.act), (3, 3, 2, 2, 1, 1)
        n, ch, h, w = S.act
        g = _rand(n, ch, (h - 1) // 2 + 1, (w - 1) // 2 + 1, seed=1)
        tx, tg = T(x), T(g)
        if kernel.startswith("maxpool2d"):
            idx = minisr.get_backend("numpy").maxpool2d_argmax(x, *geometry)
            t_idx = torch.from_numpy(idx)
            fns = {  # torch's indices are the same flat h*W + w positions
                "maxpool2d_argmax": (lambda: TF.max_pool2d(tx, 3, 2, 1, return_indices=True)[1],
                                     lambda: be.maxpool2d_argmax(x, *geometry)),
                "maxpool2d_backward": (lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                                           tg, tx, [3, 3], [2, 2], [1, 1], [1, 1], False, t_idx),
                                       lambda: be.maxpool2d_backward(g, idx, x.shape, *geometry)),
            }
        else:
            fns = {
                "avgpool2d_forward": (lambda: TF.avg_pool2d(tx, 3, 2, 1), lambda: be.avgpool2d_forward(x, *geometry,
                                                                                                       True)),
                "avgpool2d_backward": (lambda: torch.ops.aten.avg_pool2d_backward(tg, tx, [3, 3], [2, 2], [1, 1],
                                                                                  False, True, None),
                                       lambda: be.avgpool2d_backward(g, x.shape, *geometry, True)),
            }
        return fns[kernel][0 if t else 1]
    if kernel.startswith("batch_norm"):  # on EDSR-sized feature maps, the statistics of the batch itself
        x, g = _rand(*S.act), _rand(*S.act, seed=1)
        ch = x.shape[1]
        w, b = _rand(ch, seed=2), _rand(ch, seed=3)
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        invstd = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
        tx, tg, tw, tb, tm, tv, ti = T(x), T(g), T(w), T(b), T(mean), T(var), T(invstd)
        fns = {
            "batch_norm_stats": (lambda: torch.var_mean(tx, dim=(0, 2, 3), unbiased=False)[::-1],
                                 lambda: be.batch_norm_stats(x)),
            "batch_norm_forward": (lambda: TF.batch_norm(tx, tm, tv, tw, tb, False, 0.0, 1e-5),
                                   lambda: be.batch_norm_forward(x, mean, invstd, w, b)),
            "batch_norm_backward": (lambda: torch.ops.aten.native_batch_norm_backward(
                                        tg, tx, tw, None, None, tm, ti, True, 1e-5, [True, True, True]),
                                    lambda: be.batch_norm_backward(g, x, mean, invstd, w, True)),
        }
        return fns[kernel][0 if t else 1]
    raise KeyError(kernel)


def _torch_prelu_backward(g, x, a):
    """(dx, da) of PyTorch's prelu (its aten backward kernel leaves da unreduced; autograd sums it)."""
    x, a = x.detach().requires_grad_(), a.detach().requires_grad_()
    return torch.autograd.grad(TF.prelu(x, a), (x, a), g)


@pytest.mark.parametrize("impl", C.IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel(benchmark, kernel, impl):
    benchmark.group = f"kernel: {kernel}"
    fn = kernel_fn(kernel, impl)
    got = _np(fn())  # untimed first call (compiles Numba's kernel); in-place kernels: one step from fresh state
    if impl == "torch":
        check(got, kernel_fn(kernel, "minisr-numpy")(), f"torch {kernel} against minisr's numpy reference")
    else:
        check(got, kernel_fn(kernel, "torch")(), f"{impl} {kernel} against torch")
    benchmark(fn)


# ------------------------------------------------------------------------------------------------------- ops
def op_fn(op: str, impl: str):
    """Forward + backward of one op: a callable returning (output, input gradient(s)...)."""
    if op == "conv2d":
        arrays = C.conv_arrays(S.conv)
        return (C.torch_conv if impl == "torch" else C.minisr_conv)(S.conv, *arrays)[1]
    if op == "pixel_shuffle":
        x = _rand(*S.shuffle)
        fm, ft, rest = (lambda a: F.pixel_shuffle(a, S.r)), (lambda a: TF.pixel_shuffle(a, S.r)), []
    elif op in ("relu", "leaky_relu"):
        x = _rand(*S.act)
        fm, ft = (F.relu, torch.relu) if op == "relu" else (lambda a: F.leaky_relu(a, 0.2),
                                                             lambda a: TF.leaky_relu(a, 0.2))
        rest = []
    else:
        x, rest = _rand(*S.loss), [_rand(*S.loss, seed=1)]
        fm, ft = (F.mse_loss, TF.mse_loss) if op == "mse_loss" else (F.l1_loss, TF.l1_loss)
    scalar = op.endswith("loss")
    if impl == "torch":
        tx, trest = torch.from_numpy(x.copy()).requires_grad_(), [torch.from_numpy(a.copy()) for a in rest]
        tG = None if scalar else torch.from_numpy(_rand(*ft(tx, *trest).shape, seed=9))

        def torch_fwd_bwd():
            tx.grad = None
            out = ft(tx, *trest)
            out.backward(tG)
            return out, tx.grad

        return torch_fwd_bwd
    mx, mrest = minisr.Tensor(x, requires_grad=True), [minisr.Tensor(a) for a in rest]
    with minisr.no_grad():
        G = None if scalar else _rand(*fm(mx, *mrest).shape, seed=9)

    def minisr_fwd_bwd():
        mx.grad = None
        out = fm(mx, *mrest)
        out.backward(G)
        return out.data, mx.grad

    return minisr_fwd_bwd


OPS = ["conv2d", "relu", "leaky_relu", "pixel_shuffle", "mse_loss", "l1_loss"]


@pytest.mark.parametrize("impl", C.IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_op_forward_backward(benchmark, op, impl):
    benchmark.group = f"op fwd+bwd: {op}"
    if impl == "torch":
        fn = op_fn(op, impl)
        with minisr.use_backend("numpy"):
            check(fn(), op_fn(op, "minisr-numpy")(), f"torch {op} against minisr's numpy reference")
        benchmark(fn)
        return
    with minisr.use_backend(impl.split("-", 1)[1]):
        fn = op_fn(op, impl)
        check(fn(), op_fn(op, "torch")(), f"{impl} {op} against torch")
        benchmark(fn)

