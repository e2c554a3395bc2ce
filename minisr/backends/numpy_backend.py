"""NumPy reference kernels: the readable version of every kernel minisr calls.

Each function is the contract for the same-named kernel in the other backends: same arguments, same shapes,
same dtype out. They use only array operations, so they also run unchanged on CuPy arrays
(``xp = get_array_module(x)``).

Notation: x is (N, C, H, W); a kernel window is kh x kw; stride (sh, sw); zero padding (ph, pw); the output
grid is Ho = (H + 2 ph - kh) // sh + 1 by Wo = (W + 2 pw - kw) // sw + 1, and P = Ho * Wo, K = C * kh * kw.
"""

from __future__ import annotations

from . import get_array_module

NAME = "numpy"


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


# -------------------------------------------------------------------------------------------- im2col / col2im
def im2col(x, kh, kw, sh, sw, ph, pw):
    """Unfold every kh x kw window of the zero-padded x into a column.

    cols[n, (c*kh + u)*kw + v, i*Wo + j] = xp[n, c, i*sh + u, j*sw + v]      shape (N, K, P)

    where xp is x padded by (ph, pw) zeros. Row order (c, u, v) matches an OIHW weight reshaped to (O, K).
    """
    xp_ = get_array_module(x)
    N, C, H, W = x.shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    xpad = xp_.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = xp_.empty((N, C, kh, kw, Ho, Wo), dtype=x.dtype)
    for u in range(kh):
        for v in range(kw):
            cols[:, :, u, v] = xpad[:, :, u:u + sh * Ho:sh, v:v + sw * Wo:sw]
    return cols.reshape(N, C * kh * kw, Ho * Wo)


def col2im(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """The adjoint of im2col: add every column entry back to the input pixel it was copied from.

    dx[n, c, h, w] = sum over (u, v, i, j) with i*sh + u = h + ph and j*sw + v = w + pw of
                     cols[n, (c*kh + u)*kw + v, i*Wo + j]

    so that <im2col(x), cols> = <x, col2im(cols)> for all x, cols. Returns (N, C, H, W).
    """
    xp_ = get_array_module(cols)
    N, C, H, W = x_shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    cols = cols.reshape(N, C, kh, kw, Ho, Wo)
    dxpad = xp_.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for u in range(kh):
        for v in range(kw):
            dxpad[:, :, u:u + sh * Ho:sh, v:v + sw * Wo:sw] += cols[:, :, u, v]
    return dxpad[:, :, ph:ph + H, pw:pw + W]


# ------------------------------------------------------------------------------------------------ conv GEMMs
# The three GEMMs of conv2d, each with its im2col/col2im. The columns are made again in the backward pass
# instead of being kept from the forward pass: a training step then holds one layer's columns at a time, not
# every layer's (for VDSR-20 at batch 16 that is 62 MB instead of 1.2 GB), as PyTorch keeps only the inputs.
def conv_forward(x, w2, kh, kw, sh, sw, ph, pw):
    """out[n] = w2 @ im2col(x)[n]: x (N, C, H, W), w2 (O, K) -> (N, O, P)."""
    return get_array_module(x).matmul(w2, im2col(x, kh, kw, sh, sw, ph, pw))


def conv_weight_grad(g, x, kh, kw, sh, sw, ph, pw):
    """dw2 = sum_n g[n] @ im2col(x)[n]^T: g (N, O, P), x (N, C, H, W) -> (O, K), the weight-gradient sum over
    all outputs.

    One batched GEMM (cols[n]^T is a transposed view, which BLAS reads without a copy), then the sum over the
    batch.
    """
    cols = im2col(x, kh, kw, sh, sw, ph, pw)
    return get_array_module(g).matmul(g, cols.transpose(0, 2, 1)).sum(axis=0)


def conv_input_grad(w2, g, x_shape, kh, kw, sh, sw, ph, pw):
    """dx = col2im(w2^T @ g[n]): w2 (O, K), g (N, O, P) -> (N, C, H, W) = x_shape."""
    dcols = get_array_module(g).matmul(w2.T, g)  # (N, K, P)
    return col2im(dcols, x_shape, kh, kw, sh, sw, ph, pw)


# ------------------------------------------------------------------------------------------------------- bias
def bias_add(y, b):
    """In place: y[n, o, ...] += b[o] for y of shape (N, O, ...). Returns y."""
    y += b.reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


def bias_grad(g):
    """db[o] = sum over n and all positions of g[n, o, ...]."""
    axes = (0,) + tuple(range(2, g.ndim))
    return g.sum(axis=axes)


# ------------------------------------------------------------------------------------------------ activations
def relu_forward(x, out=None):
    """y = max(x, 0), into ``out`` when given (out may be x itself: the in-place ReLU)."""
    return get_array_module(x).maximum(x, 0, out=out)


def relu_backward(g, y):
    """dx = g where y > 0, else 0 (y is the forward output)."""
    return g * (y > 0)


# ------------------------------------------------------------------------------------ conv with its epilogue
# conv2d and conv2d_relu call these two: the bias add and the ReLU belong to the conv's output pass, the bias
# gradient to its weight gradient's pass and ReLU's mask to where its gradients read g (the Numba backend fuses
# them so). Here, to read: the plain kernels one after the other.
def conv_fused_forward(x, w2, b, relu, kh, kw, sh, sw, ph, pw):
    """out = conv_forward(x, w2) (+ b[o] when b is not None), then max(out, 0) when relu: (N, O, P)."""
    out = conv_forward(x, w2, kh, kw, sh, sw, ph, pw)
    if b is not None:
        bias_add(out, b)
    if relu:
        relu_forward(out, out=out)
    return out


def conv_fused_backward(g, y, x, w2, kh, kw, sh, sw, ph, pw, need_dx, need_dw, need_db):
    """(dx, dw2, db) of conv_fused_forward, each None unless asked for: with gm = g where y > 0, else 0 (y the
    forward's output after the ReLU; y None: no ReLU, gm = g),
        dx = conv_input_grad(w2, gm), dw2 = conv_weight_grad(gm, x), db[o] = sum over n and positions of gm."""
    gm = g if y is None else relu_backward(g, y)
    dx = conv_input_grad(w2, gm, x.shape, kh, kw, sh, sw, ph, pw) if need_dx else None
    dw = conv_weight_grad(gm, x, kh, kw, sh, sw, ph, pw) if need_dw else None
    db = bias_grad(gm) if need_db else None
    return dx, dw, db


def leaky_relu_forward(x, slope):
    """y = x if x > 0 else slope * x."""
    return get_array_module(x).where(x > 0, x, x * x.dtype.type(slope))


def leaky_relu_backward(g, x, slope):
    """dx = g if x > 0 else slope * g."""
    return get_array_module(g).where(x > 0, g, g * g.dtype.type(slope))


def _per_slope(x, w):
    """x viewed as (N, S, P) with S = w.size slopes: S = C (one per channel) or 1 (one for everything)."""
    N = x.shape[0] if x.ndim >= 2 else 1
    return x.reshape(N, w.size, -1)


def prelu_forward(x, w):
    """y = x if x > 0 else w[c] * x, c the channel (axis 1); w (C,) or (1,)."""
    xp_ = get_array_module(x)
    x3 = _per_slope(x, w)
    return xp_.where(x3 > 0, x3, x3 * w.reshape(1, -1, 1)).reshape(x.shape)


def prelu_backward(g, x, w):
    """(dx, dw): dx = g if x > 0 else w[c] g;  dw[c] = sum over n and positions of g x where x <= 0."""
    xp_ = get_array_module(x)
    x3, g3 = _per_slope(x, w), _per_slope(g, w)
    neg = x3 <= 0
    dx = xp_.where(neg, g3 * w.reshape(1, -1, 1), g3).reshape(x.shape)
    dw = (g3 * x3 * neg).sum(axis=(0, 2)).astype(w.dtype)
    return dx, dw


def _per_channel(x):
    """x (N, C, ...) viewed as (N, C, P): each channel's values over images and positions."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _column(a):
    return a.reshape(1, -1, 1)


def batch_norm_stats(x):
    """(mean, var): each channel's (axis 1) mean and biased variance over its n = N * P values, in x's dtype:
    mean[c] = sum x / n,  var[c] = sum (x - mean[c])^2 / n."""
    x3 = _per_channel(x)
    mean = x3.mean(axis=(0, 2))
    d = x3 - _column(mean)
    return mean, (d * d).mean(axis=(0, 2))


def batch_norm_forward(x, mean, invstd, weight, bias):
    """y = (x - mean[c]) * invstd[c] * weight[c] + bias[c], all four (C,)."""
    x3 = _per_channel(x)
    return ((x3 - _column(mean)) * _column(invstd) * _column(weight) + _column(bias)).reshape(x.shape)


def batch_norm_backward(g, x, mean, invstd, weight, training):
    """(dx, dweight, dbias) of batch_norm_forward, xhat = (x - mean[c]) invstd[c], sums over each channel's
    n = N * P values:

        dbias[c] = sum g,    dweight[c] = sum g xhat
        training (mean and invstd are x's own statistics):  dx = weight invstd / n (n g - dbias - xhat dweight)
        eval (they are constants):                          dx = weight invstd g
    """
    x3, g3 = _per_channel(x), _per_channel(g)
    xhat = (x3 - _column(mean)) * _column(invstd)
    db, dw = g3.sum(axis=(0, 2)), (g3 * xhat).sum(axis=(0, 2))
    k = _column(weight * invstd)
    if training:
        n = g.dtype.type(x3.shape[0] * x3.shape[2])
        dx = k / n * (n * g3 - _column(db) - xhat * _column(dw))
    else:
        dx = k * g3
    return dx.reshape(x.shape), dw, db


def tanh_forward(x):
    """y = tanh(x)."""
    return get_array_module(x).tanh(x)


def tanh_backward(g, y):
    """dx = g (1 - y^2), y the forward output."""
    return g * (1 - y * y)


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)), written so that exp never overflows: exp(x) / (1 + exp(x)) for x < 0."""
    xp_ = get_array_module(x)
    e = xp_.exp(-xp_.abs(x))  # in (0, 1]
    return xp_.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def sigmoid_backward(g, y):
    """dx = g y (1 - y), y the forward output."""
    return g * y * (1 - y)


# ---------------------------------------------------------------------------------------------- pixel shuffle
def pixel_shuffle_forward(x, r):
    """(N, C*r*r, H, W) -> (N, C, H*r, W*r) with y[n, c, h*r + i, w*r + j] = x[n, c*r*r + i*r + j, h, w]."""
    N, Crr, H, W = x.shape
    C = Crr // (r * r)
    return x.reshape(N, C, r, r, H, W).transpose(0, 1, 4, 2, 5, 3).reshape(N, C, H * r, W * r)


def pixel_shuffle_backward(g, r):
    """The inverse permutation (pixel unshuffle): (N, C, H*r, W*r) -> (N, C*r*r, H, W)."""
    N, C, Hr, Wr = g.shape
    H, W = Hr // r, Wr // r
    return g.reshape(N, C, H, r, W, r).transpose(0, 1, 3, 5, 2, 4).reshape(N, C * r * r, H, W)


# ----------------------------------------------------------------------------------------------------- losses
def mse_forward(a, b):
    """mean((a - b)^2) as a 0-d array of a's dtype."""
    d = a - b
    return get_array_module(a).asarray((d * d).sum() / a.dtype.type(a.size))


def mse_backward(a, b, g):
    """d/da mean((a - b)^2) * g = 2 (a - b) g / n  (g: the upstream scalar gradient)."""
    return (a - b) * a.dtype.type(2.0 * float(g) / a.size)


def l1_forward(a, b):
    """mean(|a - b|) as a 0-d array of a's dtype."""
    xp_ = get_array_module(a)
    return xp_.asarray(xp_.abs(a - b).sum() / a.dtype.type(a.size))


def l1_backward(a, b, g):
    """d/da mean(|a - b|) * g = sign(a - b) g / n, with sign(0) = 0 and 0 at NaN (as PyTorch, and the Numba and
    CUDA kernels)."""
    d = a - b
    sign = (d > 0).astype(d.dtype) - (d < 0).astype(d.dtype)  # (np.sign would give NaN at NaN)
    return sign * a.dtype.type(float(g) / a.size)


# ------------------------------------------------------------------------------------------------- optimizers
def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """In place, torch.optim.SGD's rule:  d = g + wd p;
    buf = d (first step) or momentum buf + (1 - dampening) d;  d = d + momentum buf (Nesterov) or buf;
    p -= lr d.  ``buf`` is None when momentum is 0."""
    t = p.dtype.type
    d = g + t(weight_decay) * p if weight_decay else g
    if momentum:
        if first:
            buf[...] = d
        else:
            buf *= t(momentum)
            buf += t(1 - dampening) * d
        d = d + t(momentum) * buf if nesterov else buf
    p -= t(lr) * d


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """In place, torch.optim.Adam's rule (L2 weight decay added to the gradient), step counted from 1:
    d = g + wd p;  m = b1 m + (1 - b1) d;  v = b2 v + (1 - b2) d^2;
    p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)."""
    xp_ = get_array_module(p)
    t = p.dtype.type
    d = g + t(weight_decay) * p if weight_decay else g
    m *= t(beta1)
    m += t(1 - beta1) * d
    v *= t(beta2)
    v += t(1 - beta2) * d * d
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    denom = xp_.sqrt(v) / t(bc2 ** 0.5) + t(eps)
    p -= t(lr / bc1) * m / denom


# ---------------------------------------------------------------------------------------------------- pooling
# Windows as in im2col: output (i, j) covers input rows i*sh - ph + u (u < kh) and columns j*sw - pw + v (v < kw);
# positions outside the image are padding. Every window holds at least one image pixel (padding <= kernel / 2).
def _windows(x, kh, kw, sh, sw, ph, pw, fill):
    """(N, C, kh, kw, Ho, Wo): every window's values, padding positions set to ``fill``."""
    xp_ = get_array_module(x)
    N, C, H, W = x.shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    xpad = xp_.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    win = xp_.empty((N, C, kh, kw, Ho, Wo), dtype=x.dtype)
    for u in range(kh):
        for v in range(kw):
            win[:, :, u, v] = xpad[:, :, u:u + sh * Ho:sh, v:v + sw * Wo:sw]
    return win


def maxpool2d_argmax(x, kh, kw, sh, sw, ph, pw):
    """idx[n, c, i, j] = h*W + w of the largest x[n, c, h, w] in window (i, j), int64 (N, C, Ho, Wo): the first in
    row-major window order among equal values (PyTorch's choice); padding never wins."""
    xp_ = get_array_module(x)
    N, C, H, W = x.shape
    win = _windows(x, kh, kw, sh, sw, ph, pw, -xp_.inf)
    Ho, Wo = win.shape[4:]
    k = win.reshape(N, C, kh * kw, Ho, Wo).argmax(axis=2)  # first maximum
    h = xp_.arange(Ho).reshape(Ho, 1) * sh - ph + k // kw
    w = xp_.arange(Wo).reshape(1, Wo) * sw - pw + k % kw
    return (h * W + w).astype(xp_.int64)


def maxpool2d_backward(g, idx, x_shape, kh, kw, sh, sw, ph, pw):
    """dx[n, c].flat[idx[n, c, i, j]] += g[n, c, i, j] for every output (i, j): (N, C, H, W) = x_shape.

    (The window geometry is not needed here; kernels that gather per input pixel use it.)"""
    xp_ = get_array_module(g)
    N, C, H, W = x_shape
    dx = xp_.zeros((N * C, H * W), dtype=g.dtype)
    rows = xp_.arange(N * C).reshape(-1, 1)
    xp_.add.at(dx, (rows, idx.reshape(N * C, -1)), g.reshape(N * C, -1))
    return dx.reshape(x_shape)


def _avg_divisor(x_shape, kh, kw, sh, sw, ph, pw, count_include_pad, dtype, xp_):
    """d[i, j]: kh*kw, or the number of image pixels in window (i, j) when padding is not counted. (Ho, Wo)."""
    N, C, H, W = x_shape
    Ho, Wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    if count_include_pad:
        return xp_.full((Ho, Wo), kh * kw, dtype=dtype)
    ones = xp_.ones((1, 1, H, W), dtype=dtype)
    return _windows(ones, kh, kw, sh, sw, ph, pw, 0).sum(axis=(2, 3))[0, 0]


def avgpool2d_forward(x, kh, kw, sh, sw, ph, pw, count_include_pad):
    """y[n, c, i, j] = sum of window (i, j) of the zero-padded x / d[i, j]: (N, C, Ho, Wo)."""
    xp_ = get_array_module(x)
    s = _windows(x, kh, kw, sh, sw, ph, pw, 0).sum(axis=(2, 3))
    return s / _avg_divisor(x.shape, kh, kw, sh, sw, ph, pw, count_include_pad, x.dtype, xp_)


def avgpool2d_backward(g, x_shape, kh, kw, sh, sw, ph, pw, count_include_pad):
    """dx[n, c, h, w] = sum over windows (i, j) holding (h, w) of g[n, c, i, j] / d[i, j]: (N, C, H, W)."""
    xp_ = get_array_module(g)
    N, C, H, W = x_shape
    Ho, Wo = g.shape[2:]
    gd = g / _avg_divisor(x_shape, kh, kw, sh, sw, ph, pw, count_include_pad, g.dtype, xp_)
    dxpad = xp_.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=g.dtype)
    for u in range(kh):
        for v in range(kw):
            dxpad[:, :, u:u + sh * Ho:sh, v:v + sw * Wo:sw] += gd
    return dxpad[:, :, ph:ph + H, pw:pw + W]
