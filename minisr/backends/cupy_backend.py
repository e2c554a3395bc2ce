"""CuPy GPU kernels: the same signatures as :mod:`numpy_backend`, running the CUDA C in the top-level ``kernels/``
(one file per kernel family, compiled on first use with ``cupy.RawModule``). GEMMs go through cuBLAS
(``cupy.matmul``). TF32 tensor-core math is off by default, for parity with the CPU path; set ``CUPY_TF32=1``
before starting Python to switch it on.

This module imports CuPy, so it is imported only when a tensor is moved to ``"cuda"``.
"""

from __future__ import annotations

import functools
import types
from pathlib import Path

import numpy as np

from ..device import import_cupy
from . import numpy_backend
from .numpy_backend import out_size

cp = import_cupy()

NAME = "cupy"
THREADS = 256
MAX_BLOCKS = 65535 * 16  # grid-stride loops cover the rest

def kernel_dir() -> Path:
    """Where the .cu sources are: inside the installed package (wheel), else the repository's ``kernels/``."""
    here = Path(__file__).resolve().parent.parent
    for d in (here / "kernels", here.parent / "kernels"):
        if (d / "common.cuh").is_file():
            return d
    raise FileNotFoundError(f"minisr's CUDA sources (kernels/*.cu) not found under {here} or {here.parent}")


@functools.cache
def _module(family: str):
    d = kernel_dir()
    return cp.RawModule(code=(d / f"{family}.cu").read_text(), options=("-std=c++14", f"-I{d}"))


def _fn(family: str, name: str, dtype):
    suffix = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]
    return _module(family).get_function(f"{name}_{suffix}")


def _launch(family, name, dtype, n, args, shared=0, blocks=None):
    blocks = blocks or max(1, min((int(n) + THREADS - 1) // THREADS, MAX_BLOCKS))
    _fn(family, name, dtype)((blocks,), (THREADS,), args, shared_mem=shared)


def _c(a):
    return cp.ascontiguousarray(a)


i32, i64 = np.int32, np.int64


# --------------------------------------------------------------------------------------------------- im2col / col2im
def im2col(x, kh, kw, sh, sw, ph, pw):
    x = _c(x)
    N, C, H, W = x.shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    cols = cp.empty((N, C * kh * kw, Ho * Wo), dtype=x.dtype)
    dims = tuple(i32(v) for v in (N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo))
    _launch("im2col", "im2col", x.dtype, cols.size, (x, cols) + dims)
    return cols


def col2im(cols, x_shape, kh, kw, sh, sw, ph, pw):
    cols = _c(cols)
    N, C, H, W = x_shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    dx = cp.empty((N, C, H, W), dtype=cols.dtype)
    dims = tuple(i32(v) for v in (N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo))
    _launch("im2col", "col2im", cols.dtype, dx.size, (cols, dx) + dims)
    return dx


# ------------------------------------------------------------------------------------------------------ conv GEMMs
# The reference's compositions, with the CUDA im2col/col2im above and cuBLAS GEMMs (cupy.matmul).
def conv_forward(x, w2, kh, kw, sh, sw, ph, pw):
    return cp.matmul(w2, im2col(x, kh, kw, sh, sw, ph, pw))


def conv_weight_grad(g, x, kh, kw, sh, sw, ph, pw):
    """sum_n g[n] @ cols[n]^T as one cuBLAS GEMM over the batch-and-position axis."""
    return cp.tensordot(g, im2col(x, kh, kw, sh, sw, ph, pw), axes=([0, 2], [0, 2]))


def conv_input_grad(w2, g, x_shape, kh, kw, sh, sw, ph, pw):
    return col2im(cp.matmul(w2.T, g), x_shape, kh, kw, sh, sw, ph, pw)


# ---------------------------------------------------------------------------------------------------------- bias
def bias_add(y, b):
    N, O = y.shape[:2]
    P = y.size // (N * O)
    _launch("bias", "bias_add", y.dtype, y.size, (y, _c(b), i64(N), i64(O), i64(P)))
    return y


def bias_grad(g):
    g = _c(g)
    N, O = g.shape[:2]
    P = g.size // (N * O)
    db = cp.empty(O, dtype=g.dtype)
    _launch("bias", "bias_grad", g.dtype, 0, (g, db, i64(N), i64(O), i64(P)), shared=THREADS * g.itemsize, blocks=O)
    return db


# ---------------------------------------------------------------------------------------------------- activations
def _unary(name, x, *extra, like=None, out=None):
    x = _c(x)
    if out is None:
        out = cp.empty_like(like if like is not None else x)
    _launch("activations", name, x.dtype, x.size, (x,) + extra + (out, i64(x.size)))
    return out


def relu_forward(x, out=None):
    if out is not None and not out.flags.c_contiguous:
        out[...] = _unary("relu_forward", x)
        return out
    return _unary("relu_forward", x, out=out)


def relu_backward(g, y):
    return _unary("relu_backward", g, _c(y))


# ------------------------------------------------------------------------------------------ conv with its epilogue
def _on_these_kernels(f):
    """The NumPy reference's function ``f`` run on this module's kernels: its code with the names it calls
    (conv_forward, bias_add, relu_forward, ...) looked up here, so the composition is written once."""
    g = types.FunctionType(f.__code__, globals(), f.__name__, f.__defaults__)
    g.__doc__ = f"{f.__doc__}\n\n(CuPy: the reference's composition of the plain kernels; not fused on the GPU yet.)"
    return g


conv_fused_forward = _on_these_kernels(numpy_backend.conv_fused_forward)
conv_fused_backward = _on_these_kernels(numpy_backend.conv_fused_backward)


def leaky_relu_forward(x, slope):
    return _unary("leaky_relu_forward", x, x.dtype.type(slope))


def leaky_relu_backward(g, x, slope):
    return _unary("leaky_relu_backward", g, _c(x), g.dtype.type(slope))


def _per_slope(x, w):
    """x as a contiguous (N, S, P) with S = w.size slopes (C, or 1 shared)."""
    x = _c(x)
    N = x.shape[0] if x.ndim >= 2 else 1
    return x.reshape(N, w.size, -1)


def prelu_forward(x, w):
    x3 = _per_slope(x, w)
    y = cp.empty_like(x3)
    N, S, P = x3.shape
    _launch("prelu", "prelu_forward", x3.dtype, x3.size, (x3, _c(w), y, i64(N), i64(S), i64(P)))
    return y.reshape(x.shape)


def prelu_backward(g, x, w):
    x3, g3 = _per_slope(x, w), _per_slope(g, w)
    N, S, P = x3.shape
    dx = cp.empty_like(g3)
    _launch("prelu", "prelu_input_grad", g3.dtype, g3.size, (g3, x3, _c(w), dx, i64(N), i64(S), i64(P)))
    dw = cp.empty(S, dtype=g3.dtype)
    _launch("prelu", "prelu_weight_grad", g3.dtype, 0, (g3, x3, dw, i64(N), i64(S), i64(P)),
            shared=THREADS * g3.itemsize, blocks=S)
    return dx.reshape(x.shape), dw.astype(w.dtype, copy=False)


# ------------------------------------------------------------------------------------------------- batch norm
def _per_channel(x):
    return numpy_backend._per_channel(_c(x))


def batch_norm_stats(x):
    x3 = _per_channel(x)
    N, C, P = x3.shape
    mean, var = cp.empty(C, dtype=x3.dtype), cp.empty(C, dtype=x3.dtype)
    _launch("batch_norm", "batch_norm_stats", x3.dtype, 0, (x3, mean, var, i64(N), i64(C), i64(P)),
            shared=THREADS * 8, blocks=C)
    return mean, var


def batch_norm_forward(x, mean, invstd, weight, bias):
    x3 = _per_channel(x)
    N, C, P = x3.shape
    y = cp.empty_like(x3)
    _launch("batch_norm", "batch_norm_forward", x3.dtype, x3.size,
            (x3, _c(mean), _c(invstd), _c(weight), _c(bias), y, i64(N), i64(C), i64(P)))
    return y.reshape(x.shape)


def batch_norm_backward(g, x, mean, invstd, weight, training):
    x3, g3 = _per_channel(x), _per_channel(g)
    N, C, P = x3.shape
    mean, invstd = _c(mean), _c(invstd)
    db, dw = cp.empty(C, dtype=g3.dtype), cp.empty(C, dtype=g3.dtype)
    _launch("batch_norm", "batch_norm_sums", g3.dtype, 0, (g3, x3, mean, invstd, db, dw, i64(N), i64(C), i64(P)),
            shared=THREADS * 8, blocks=C)
    dx = cp.empty_like(g3)
    _launch("batch_norm", "batch_norm_input_grad", g3.dtype, g3.size,
            (g3, x3, mean, invstd, _c(weight), db, dw, i32(1 if training else 0), dx, i64(N), i64(C), i64(P)))
    return dx.reshape(x.shape), dw, db


def _flat(family, name, *arrays):
    arrays = tuple(_c(a) for a in arrays)
    out = cp.empty_like(arrays[0])
    _launch(family, name, out.dtype, out.size, arrays + (out, i64(out.size)))
    return out


def tanh_forward(x):
    return _flat("tanh_sigmoid", "tanh_forward", x)


def tanh_backward(g, y):
    return _flat("tanh_sigmoid", "tanh_backward", g, y)


def sigmoid_forward(x):
    return _flat("tanh_sigmoid", "sigmoid_forward", x)


def sigmoid_backward(g, y):
    return _flat("tanh_sigmoid", "sigmoid_backward", g, y)


# --------------------------------------------------------------------------------------------------- pixel shuffle
def pixel_shuffle_forward(x, r):
    x = _c(x)
    N, Crr, H, W = x.shape
    C = Crr // (r * r)
    y = cp.empty((N, C, H * r, W * r), dtype=x.dtype)
    _launch("pixel_shuffle", "pixel_shuffle_forward", x.dtype, y.size, (x, y, i64(N), i64(C), i64(H), i64(W), i32(r)))
    return y


def pixel_shuffle_backward(g, r):
    g = _c(g)
    N, C, Hr, Wr = g.shape
    H, W = Hr // r, Wr // r
    dx = cp.empty((N, C * r * r, H, W), dtype=g.dtype)
    _launch("pixel_shuffle", "pixel_shuffle_backward", g.dtype, g.size,
            (dx, g, i64(N), i64(C), i64(H), i64(W), i32(r)))
    return dx


# ---------------------------------------------------------------------------------------------------------- losses
def _diff_sum(name, a, b):
    a, b = _c(a), _c(b)
    blocks = max(1, min((a.size + THREADS - 1) // THREADS, 1024))
    partial = cp.empty(blocks, dtype=a.dtype)
    _launch("losses", name, a.dtype, a.size, (a, b, partial, i64(a.size)), shared=THREADS * a.itemsize,
            blocks=blocks)
    return partial.sum()


def mse_forward(a, b):
    return (_diff_sum("sq_diff_partial", a, b) / a.dtype.type(a.size)).astype(a.dtype)


def l1_forward(a, b):
    return (_diff_sum("abs_diff_partial", a, b) / a.dtype.type(a.size)).astype(a.dtype)


def _scaled(name, a, b, scale):
    a, b = _c(a), _c(b)
    out = cp.empty_like(a)
    _launch("losses", name, a.dtype, a.size, (a, b, a.dtype.type(scale), out, i64(a.size)))
    return out


def mse_backward(a, b, g):
    return _scaled("diff_scaled", a, b, 2.0 * float(g) / a.size)


def l1_backward(a, b, g):
    return _scaled("sign_diff_scaled", a, b, float(g) / a.size)


# ------------------------------------------------------------------------------------------------------ optimizers
def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    t = p.dtype.type
    use_buf = bool(momentum)
    buf = buf if use_buf else cp.empty(1, dtype=p.dtype)
    _launch("optim", "sgd_update", p.dtype, p.size,
            (p, _c(g), buf, t(lr), t(momentum), t(dampening), t(weight_decay), i32(bool(nesterov)),
             i32(bool(first)), i32(use_buf), i64(p.size)))


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    t = p.dtype.type
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    _launch("optim", "adam_update", p.dtype, p.size,
            (p, _c(g), m, v, t(lr / bc1), t(beta1), t(beta2), t(eps), t(bc2 ** 0.5), t(weight_decay), i64(p.size)))



# --------------------------------------------------------------------------------------------------------- pooling
# kernels/pool.cu: one thread per output element forward, one per input element backward (a gather, no atomics).
def _pool_dims(x_shape, kh, kw, sh, sw, ph, pw):
    N, C, H, W = x_shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    return (i64(N), i64(C), i64(H), i64(W), i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw), i64(Ho),
            i64(Wo)), (N, C, Ho, Wo)


def maxpool2d_argmax(x, kh, kw, sh, sw, ph, pw):
    x = _c(x)
    dims, out_shape = _pool_dims(x.shape, kh, kw, sh, sw, ph, pw)
    idx = cp.empty(out_shape, dtype=cp.int64)
    _launch("pool", "maxpool2d_argmax", x.dtype, idx.size, (x, idx) + dims)
    return idx


def maxpool2d_backward(g, idx, x_shape, kh, kw, sh, sw, ph, pw):
    g, idx = _c(g), _c(idx)
    dims, _ = _pool_dims(x_shape, kh, kw, sh, sw, ph, pw)
    dx = cp.empty(tuple(x_shape), dtype=g.dtype)
    _launch("pool", "maxpool2d_backward", g.dtype, dx.size, (g, idx, dx) + dims)
    return dx


def avgpool2d_forward(x, kh, kw, sh, sw, ph, pw, count_include_pad):
    x = _c(x)
    dims, out_shape = _pool_dims(x.shape, kh, kw, sh, sw, ph, pw)
    y = cp.empty(out_shape, dtype=x.dtype)
    _launch("pool", "avgpool2d_forward", x.dtype, y.size, (x, y) + dims + (i32(bool(count_include_pad)),))
    return y


def avgpool2d_backward(g, x_shape, kh, kw, sh, sw, ph, pw, count_include_pad):
    g = _c(g)
    dims, _ = _pool_dims(x_shape, kh, kw, sh, sw, ph, pw)
    dx = cp.empty(tuple(x_shape), dtype=g.dtype)
    _launch("pool", "avgpool2d_backward", g.dtype, dx.size, (g, dx) + dims + (i32(bool(count_include_pad)),))
    return dx
