"""The ops: each one function, forward and backward side by side, calling the backend's kernels.

Every op takes tensors, checks shapes and dtypes (a mismatch is a clear error naming the shapes, never a
silent broadcast), computes its output with ``be = backend_for(...)`` kernels, and returns it with a
``backward`` closure that maps dE/d(output) to dE/d(each input). The docstrings state the equation implemented
and the gradient sums computed.
"""

from __future__ import annotations

import numbers

from .backends import backend_for, get_array_module
from .tensor import Tensor, is_grad_enabled, make_result

__all__ = [
    "conv2d", "relu", "leaky_relu", "pixel_shuffle", "mse_loss", "l1_loss", "smoothness_loss", "pad",
    "add", "sub", "mul", "neg", "pow", "sum", "mean", "reshape", "getitem", "astype",
    "conv_transpose2d", "prelu", "tanh", "sigmoid",
]


# --------------------------------------------------------------------------------------------------- checking
def _tensor(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    raise TypeError(f"{name} must be a minisr.Tensor, got {type(x).__name__} "
                    "(wrap arrays with minisr.Tensor(a))")


def _check_ndim(x: Tensor, ndim: int, what: str, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D {layout}, got shape {x.shape}")


def _saved(*tensors):
    """For a backward that reads these tensors' data: a check that none was modified in place since."""
    versions = [t._version for t in tensors]

    def check(op: str) -> None:
        if any(t._version != v for t, v in zip(tensors, versions)):
            raise RuntimeError(f"{op} backward: a tensor it needs was modified by an in-place op afterwards "
                               "(relu(inplace=True) or add(inplace=True)); use the out-of-place op there")

    return check


def _inplace_target(x: Tensor, op: str) -> None:
    """In-place ops overwrite x's array: refuse where that would break the graph, as PyTorch does."""
    if x.requires_grad and x.is_leaf and is_grad_enabled():
        raise RuntimeError(f"{op}(inplace=True) on a leaf tensor that requires grad (a parameter or an input "
                           "with requires_grad=True): its values are needed as they are; use inplace=False")
    x._version += 1


def _check_same(a: Tensor, b: Tensor, op: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} differ (minisr does not broadcast tensors)")
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: dtypes {a.dtype} and {b.dtype} differ; convert one with .astype()")
    if a.device != b.device:
        raise ValueError(f"{op}: tensors on {a.device} and {b.device}; move one with .to()")


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, numbers.Integral):
        v = (int(v), int(v))
    v = tuple(int(t) for t in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v}")
    return v


# ------------------------------------------------------------------------------------------------ convolution
def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """2-D convolution (cross-correlation, as PyTorch), computed as im2col + GEMM.

    Shapes: x (N, C, H, W), weight (O, C, kh, kw) (OIHW), bias (O,), output (N, O, Ho, Wo) with
    Ho = (H + 2 ph - kh) // sh + 1 and Wo = (W + 2 pw - kw) // sw + 1
    for stride (sh, sw) and zero padding (ph, pw).

    Forward, with y the input zero-padded by (ph, pw) -- the seed report's
    x(i,j) = sum_{c,d} w(c,d) y(i+c, j+d), summed over input channels and strided:

        out[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] * y[n, c, i*sh + u, j*sw + v]

    As a GEMM: cols = im2col(x), shape (N, K, P) with K = C*kh*kw, P = Ho*Wo; W2 = w.reshape(O, K);
    out[n] = W2 @ cols[n] (+ b).

    Backward, g = dE/d(out):
        dE/dw[o, c, u, v] = sum_{n, i, j} g[n, o, i, j] * y[n, c, i*sh + u, j*sw + v]
                          (as a GEMM: dW2 = sum_n g[n] @ cols[n]^T)
        dE/db[o]          = sum_{n, i, j} g[n, o, i, j]
        dE/dx             = col2im(W2^T @ g[n])
                          (col2im is the adjoint of im2col; the padding is cut off)

    The kernels (numpy_backend.conv_forward, conv_weight_grad, conv_input_grad) make the columns again in
    the backward pass rather than keep them: only x is kept, as in PyTorch.
    """
    x, weight = _tensor(x, "conv2d input"), _tensor(weight, "conv2d weight")
    _check_ndim(x, 4, "conv2d input", "(N, C, H, W)")
    _check_ndim(weight, 4, "conv2d weight", "(O, C, kh, kw)")
    N, C, H, W = x.shape
    O, Cw, kh, kw = weight.shape
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    if Cw != C:
        raise ValueError(f"conv2d: input {x.shape} has {C} channels but weight {weight.shape} expects {Cw}")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"conv2d: stride must be >= 1 and padding >= 0, got stride {(sh, sw)} "
                         f"padding {(ph, pw)}")
    if H + 2 * ph < kh or W + 2 * pw < kw:
        raise ValueError(f"conv2d: kernel {kh}x{kw} is larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw} (input {x.shape}, padding {(ph, pw)})")
    if x.dtype != weight.dtype:
        raise TypeError(f"conv2d: input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    parents = [x, weight]
    if bias is not None:
        bias = _tensor(bias, "conv2d bias")
        if bias.shape != (O,):
            raise ValueError(f"conv2d: bias shape {bias.shape}, expected ({O},) for weight {weight.shape}")
        if bias.dtype != x.dtype:
            raise TypeError(f"conv2d: bias dtype {bias.dtype} differs from input dtype {x.dtype}")
        parents.append(bias)

    be = backend_for(x.data, weight.data)
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    w2 = weight.data.reshape(O, C * kh * kw)
    geometry = (kh, kw, sh, sw, ph, pw)
    out = be.conv_forward(x.data, w2, *geometry)  # W2 @ im2col(x)[n]: (N, O, P)
    if bias is not None:
        be.bias_add(out, bias.data)
    out = out.reshape(N, O, Ho, Wo)

    check = _saved(x)

    def backward(g):
        check("conv2d")
        g = g.reshape(N, O, Ho * Wo)
        dx = dw = db = None
        if x.requires_grad:
            dx = be.conv_input_grad(w2, g, x.shape, *geometry)  # col2im(W2^T @ g[n])
        if weight.requires_grad:
            dw = be.conv_weight_grad(g, x.data, *geometry).reshape(weight.shape)  # sum_n g[n] @ im2col(x)[n]^T
        if bias is not None and bias.requires_grad:
            db = be.bias_grad(g)
        return (dx, dw, db)[:len(parents)]

    return make_result(out, parents, backward, "conv2d")


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0) -> Tensor:
    """Transposed convolution ("deconvolution"), PyTorch's ``conv_transpose2d``: the adjoint of :func:`conv2d`.

    Shapes: x (N, Ci, H, W), weight (Ci, Co, kh, kw) -- (in, out, ...), the layout of the conv2d whose adjoint
    this is -- bias (Co,), output (N, Co, Ho, Wo) with
    Ho = (H - 1) sh - 2 ph + kh + oph  and  Wo = (W - 1) sw - 2 pw + kw + opw,  0 <= output_padding < stride.

    Every input pixel scatters a weighted copy of the kernel into the (zero-padded) output, and the padding is
    cut off:

        out[n, o, i*sh + u - ph, j*sw + v - pw] += sum_c x[n, c, i, j] * w[c, o, u, v]   (+ b[o])

    That is exactly conv2d's input gradient: take a conv2d with weight w (read as OIHW with O = Ci, C = Co) on
    an input of shape (N, Co, Ho, Wo) -- whose output then has x's shape, since output_padding < stride --
    and feed x as its output gradient. So the three GEMMs of conv2d serve again, with their roles swapped
    (w2 = w.reshape(Ci, Co*kh*kw), geometry (kh, kw, sh, sw, ph, pw)):

        forward:     out   = col2im(w2^T @ x[n])           = conv_input_grad(w2, x)      (conv2d's dE/dx)
    Backward, g = dE/d(out):
        dE/dx[n]   = w2 @ im2col(g)[n]                      = conv_forward(g, w2)         (conv2d's forward)
        dE/dw2     = sum_n x[n] @ im2col(g)[n]^T            = conv_weight_grad(x, g)      (conv2d's dE/dw,
                                                                                           x in g's place)
        dE/db[o]   = sum_{n, i, j} g[n, o, i, j]

    output_padding only adds rows/columns at the bottom/right of the output (it picks which of the sh output
    heights that a conv2d would map to H is meant); it never adds an input pixel, so it must be < stride.
    """
    x, weight = _tensor(x, "conv_transpose2d input"), _tensor(weight, "conv_transpose2d weight")
    _check_ndim(x, 4, "conv_transpose2d input", "(N, C_in, H, W)")
    _check_ndim(weight, 4, "conv_transpose2d weight", "(C_in, C_out, kh, kw)")
    N, Ci, H, W = x.shape
    Cw, Co, kh, kw = weight.shape
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    oph, opw = _pair(output_padding, "output_padding")
    if Cw != Ci:
        raise ValueError(f"conv_transpose2d: input {x.shape} has {Ci} channels but weight {weight.shape} has "
                         f"{Cw} input channels; the weight layout is (C_in, C_out, kh, kw), the transpose of "
                         "conv2d's (O, C, kh, kw)")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"conv_transpose2d: stride must be >= 1 and padding >= 0, got stride {(sh, sw)} "
                         f"padding {(ph, pw)}")
    if not (0 <= oph < sh and 0 <= opw < sw):
        raise ValueError(f"conv_transpose2d: output_padding {(oph, opw)} must be >= 0 and smaller than the "
                         f"stride {(sh, sw)} (input {x.shape}, weight {weight.shape})")
    Ho, Wo = (H - 1) * sh - 2 * ph + kh + oph, (W - 1) * sw - 2 * pw + kw + opw
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv_transpose2d: padding {(ph, pw)} leaves no output ({Ho}x{Wo}) for input "
                         f"{x.shape} and kernel {kh}x{kw}")
    if x.dtype != weight.dtype:
        raise TypeError(f"conv_transpose2d: input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    parents = [x, weight]
    if bias is not None:
        bias = _tensor(bias, "conv_transpose2d bias")
        if bias.shape != (Co,):
            raise ValueError(f"conv_transpose2d: bias shape {bias.shape}, expected ({Co},) for weight "
                             f"{weight.shape} (C_in, C_out, kh, kw)")
        if bias.dtype != x.dtype:
            raise TypeError(f"conv_transpose2d: bias dtype {bias.dtype} differs from input dtype {x.dtype}")
        parents.append(bias)

    be = backend_for(x.data, weight.data)
    w2 = weight.data.reshape(Ci, Co * kh * kw)
    geometry = (kh, kw, sh, sw, ph, pw)
    out_shape = (N, Co, Ho, Wo)
    x3 = x.data.reshape(N, Ci, H * W)
    out = be.conv_input_grad(w2, x3, out_shape, *geometry)  # col2im(W2^T @ x[n]): conv2d's input gradient
    if bias is not None:
        be.bias_add(out, bias.data)

    check = _saved(x, weight)

    def backward(g):
        check("conv_transpose2d")
        dx = dw = db = None
        if x.requires_grad:
            dx = be.conv_forward(g, w2, *geometry).reshape(x.shape)  # W2 @ im2col(g)[n]: conv2d's forward
        if weight.requires_grad:
            dw = be.conv_weight_grad(x3, g, *geometry).reshape(weight.shape)  # sum_n x[n] @ im2col(g)[n]^T
        if bias is not None and bias.requires_grad:
            db = be.bias_grad(g)
        return (dx, dw, db)[:len(parents)]

    return make_result(out, parents, backward, "conv_transpose2d")


# ------------------------------------------------------------------------------------------------ activations
def relu(x: Tensor, inplace: bool = False) -> Tensor:
    """y = max(x, 0);  dE/dx = dE/dy * [y > 0].

    ``inplace=True`` writes y over x's array (PyTorch's ``nn.ReLU(inplace=True)``): a conv -> ReLU pair then
    keeps one activation instead of two until the backward (the backward needs only y). x's own values are
    gone: an op that saved x for its backward raises there.
    """
    x = _tensor(x, "relu input")
    be = backend_for(x.data)
    if inplace:
        _inplace_target(x, "relu")
    y = be.relu_forward(x.data, out=x.data if inplace else None)
    return make_result(y, [x], lambda g: (be.relu_backward(g, y),), "relu")


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """y = x if x > 0 else a x;  dE/dx = dE/dy * (1 if x > 0 else a)."""
    x = _tensor(x, "leaky_relu input")
    be = backend_for(x.data)
    y = be.leaky_relu_forward(x.data, negative_slope)
    check = _saved(x)

    def backward(g):
        check("leaky_relu")
        return (be.leaky_relu_backward(g, x.data, negative_slope),)

    return make_result(y, [x], backward, "leaky_relu")


def prelu(x: Tensor, weight: Tensor) -> Tensor:
    """Parametric ReLU (He et al. 2015), PyTorch's ``prelu``: a learnt negative slope, one shared or one per channel.

    x (N, C, ...) (channels on axis 1), weight (1,) or (C,):

        y[n, c, p] = x[n, c, p]            if x > 0
                   = a[c] * x[n, c, p]     otherwise          (a[c] = weight[0] for a single slope)

    Backward, g = dE/dy:
        dE/dx[n, c, p] = g           if x > 0 else a[c] g
        dE/da[c]       = sum_{n, p: x[n, c, p] <= 0} g[n, c, p] x[n, c, p]   (summed over c too for one slope)
    """
    x, weight = _tensor(x, "prelu input"), _tensor(weight, "prelu weight")
    if weight.ndim != 1:
        raise ValueError(f"prelu: weight must be 1-D (1 or C slopes), got shape {weight.shape}")
    C = x.shape[1] if x.ndim >= 2 else 1
    if weight.shape[0] not in (1, C):
        raise ValueError(f"prelu: weight {weight.shape} has {weight.shape[0]} slopes; input {x.shape} needs 1 or "
                         f"{C} (one per channel, axis 1)")
    if x.dtype != weight.dtype:
        raise TypeError(f"prelu: input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    be = backend_for(x.data, weight.data)
    y = be.prelu_forward(x.data, weight.data)
    check = _saved(x, weight)

    def backward(g):
        check("prelu")
        dx, dw = be.prelu_backward(g, x.data, weight.data)
        return (dx if x.requires_grad else None), (dw if weight.requires_grad else None)

    return make_result(y, [x, weight], backward, "prelu")


def tanh(x: Tensor) -> Tensor:
    """y = tanh(x);  dE/dx = dE/dy * (1 - y^2) (from the saved output y)."""
    x = _tensor(x, "tanh input")
    be = backend_for(x.data)
    y = be.tanh_forward(x.data)

    def backward(g):
        check("tanh")
        return (be.tanh_backward(g, y),)

    out = make_result(y, [x], backward, "tanh")
    check = _saved(out)  # the backward reads the output: an in-place op on it afterwards must raise
    return out


def sigmoid(x: Tensor) -> Tensor:
    """y = 1 / (1 + exp(-x));  dE/dx = dE/dy * y (1 - y) (from the saved output y)."""
    x = _tensor(x, "sigmoid input")
    be = backend_for(x.data)
    y = be.sigmoid_forward(x.data)

    def backward(g):
        check("sigmoid")
        return (be.sigmoid_backward(g, y),)

    out = make_result(y, [x], backward, "sigmoid")
    check = _saved(out)  # the backward reads the output: an in-place op on it afterwards must raise
    return out


# ---------------------------------------------------------------------------------------------- pixel shuffle
def pixel_shuffle(x: Tensor, upscale_factor: int) -> Tensor:
    """Sub-pixel rearrangement (N, C*r*r, H, W) -> (N, C, H*r, W*r), PyTorch's channel order (C, r, r):

        out[n, c, h*r + i, w*r + j] = x[n, c*r*r + i*r + j, h, w]

    A permutation, so the backward is the inverse permutation (pixel unshuffle) of the gradient.
    """
    x = _tensor(x, "pixel_shuffle input")
    _check_ndim(x, 4, "pixel_shuffle input", "(N, C*r*r, H, W)")
    r = int(upscale_factor)
    if r < 1 or x.shape[1] % (r * r):
        raise ValueError(f"pixel_shuffle: {x.shape[1]} channels (input {x.shape}) is not divisible by "
                         f"upscale_factor^2 = {r * r}")
    be = backend_for(x.data)
    y = be.pixel_shuffle_forward(x.data, r)
    return make_result(y, [x], lambda g: (be.pixel_shuffle_backward(g, r),), "pixel_shuffle")


# ----------------------------------------------------------------------------------------------------- losses
def _loss_inputs(pred, target, op):
    pred = _tensor(pred, f"{op} input")
    if not isinstance(target, Tensor):  # an array target is cast to pred's dtype, but only from float data
        kind = getattr(getattr(target, "dtype", None), "kind", "f")
        if kind != "f":
            raise TypeError(f"{op}: target array has dtype {target.dtype} (shape {tuple(target.shape)}); "
                            "minisr compares float data, convert it first (images: divide uint8 by 255)")
        target = Tensor(target, dtype=pred.dtype)
    _check_same(pred, target, op)
    return pred, target


def mse_loss(pred: Tensor, target) -> Tensor:
    """E = mean((pred - target)^2) over all n elements;  dE/dpred = 2 (pred - target) / n = -dE/dtarget."""
    pred, target = _loss_inputs(pred, target, "mse_loss")
    be = backend_for(pred.data)
    loss = be.mse_forward(pred.data, target.data)

    def backward(g):
        d = be.mse_backward(pred.data, target.data, g)
        return d, (-d if target.requires_grad else None)

    return make_result(loss, [pred, target], backward, "mse_loss")


def l1_loss(pred: Tensor, target) -> Tensor:
    """E = mean(|pred - target|);  dE/dpred = sign(pred - target) / n = -dE/dtarget.

    sign(0) = 0, as PyTorch."""
    pred, target = _loss_inputs(pred, target, "l1_loss")
    be = backend_for(pred.data)
    loss = be.l1_forward(pred.data, target.data)

    def backward(g):
        d = be.l1_backward(pred.data, target.data, g)
        return d, (-d if target.requires_grad else None)

    return make_result(loss, [pred, target], backward, "l1_loss")


def smoothness_loss(x: Tensor) -> Tensor:
    """The seed report's smoothness prior on an output image batch x (N, C, H, W):

        S = sum (x[..., i, j+1] - x[..., i, j])^2 + sum (x[..., i+1, j] - x[..., i, j])^2

    (a sum, not a mean: the caller scales it by lambda). With dh = horizontal and dv = vertical differences,

        dS/dx[.., i, j] = 2 (dh[.., i, j-1] - dh[.., i, j]) + 2 (dv[.., i-1, j] - dv[.., i, j])

    (terms that fall outside the image are 0).
    """
    x = _tensor(x, "smoothness_loss input")
    _check_ndim(x, 4, "smoothness_loss input", "(N, C, H, W)")
    xp = get_array_module(x.data)
    dh = x.data[..., :, 1:] - x.data[..., :, :-1]
    dv = x.data[..., 1:, :] - x.data[..., :-1, :]
    s = (dh * dh).sum() + (dv * dv).sum()

    def backward(g):
        two_g = x.dtype.type(2.0 * float(g))
        gx = xp.zeros_like(x.data)
        gx[..., :, 1:] += two_g * dh
        gx[..., :, :-1] -= two_g * dh
        gx[..., 1:, :] += two_g * dv
        gx[..., :-1, :] -= two_g * dv
        return (gx,)

    return make_result(xp.asarray(s, dtype=x.dtype), [x], backward, "smoothness_loss")


# -------------------------------------------------------------------------------------------------------- pad
def pad(x: Tensor, pad, mode: str = "constant", value: float = 0.0) -> Tensor:
    """Pad the last two axes, PyTorch's argument order: ``pad = (left, right, top, bottom)``.

    ``(left, right)`` pads W only. mode "constant" fills ``value``; "replicate" repeats the edge pixel;
    "reflect" mirrors without repeating it. Every output pixel is a copy of one input pixel (or the constant),
    out = x[..., ih[a], iw[b]], so the backward adds each output gradient back to the pixel it was copied from
    (the adjoint of that gather).
    """
    x = _tensor(x, "pad input")
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        pad = pad + (0, 0)
    if len(pad) != 4 or min(pad) < 0:
        raise ValueError("pad must be (left, right) or (left, right, top, bottom) of non-negative ints, "
                         f"got {pad}")
    if x.ndim < 2:
        raise ValueError(f"pad needs at least 2 dimensions, got shape {x.shape}")
    left, right, top, bottom = pad
    H, W = x.shape[-2:]
    xp = get_array_module(x.data)
    lead = (slice(None),) * (x.ndim - 2)
    if mode == "constant":
        y = xp.full(x.shape[:-2] + (H + top + bottom, W + left + right), value, dtype=x.dtype)
        y[lead + (slice(top, top + H), slice(left, left + W))] = x.data

        def backward(g):
            return (g[lead + (slice(top, top + H), slice(left, left + W))],)

        return make_result(y, [x], backward, "pad")
    if mode not in ("replicate", "reflect"):
        raise ValueError(f"pad mode {mode!r}: use 'constant', 'replicate' or 'reflect'")
    if mode == "reflect" and (max(top, bottom) >= H or max(left, right) >= W):
        raise ValueError(f"reflect padding {pad} must be smaller than the input size {(H, W)}")

    def source_index(n, before, after):
        i = xp.arange(-before, n + after)
        if mode == "replicate":
            return xp.clip(i, 0, n - 1)
        i = xp.abs(i)
        return xp.where(i > n - 1, 2 * (n - 1) - i, i)

    ih, iw = source_index(H, top, bottom), source_index(W, left, right)
    y = x.data[lead + (ih[:, None], iw[None, :])]

    def backward(g):
        gx = xp.zeros_like(x.data)
        gw = xp.zeros(g.shape[:-1] + (W,), dtype=g.dtype)
        _scatter_add_last(gw, iw, g)
        _scatter_add_last(gx.swapaxes(-1, -2), ih, gw.swapaxes(-1, -2))
        return (gx,)

    return make_result(y, [x], backward, "pad")


def _scatter_add_last(dst, index, src):
    """dst[..., index[k]] += src[..., k] for every k (repeated indices add up)."""
    for k in range(len(index)):
        dst[..., int(index[k])] += src[..., k]


# ------------------------------------------------------------------------------------------------ elementwise
def _scalar_or_same(a: Tensor, b, op: str):
    if isinstance(b, numbers.Number):
        return None
    b = _tensor(b, f"{op} operand")
    _check_same(a, b, op)
    return b


def add(a: Tensor, b, inplace: bool = False) -> Tensor:
    """y = a + b (b a tensor of the same shape, or a number);  dE/da = dE/db = dE/dy.

    ``inplace=True`` writes y over a's array (as ``a += b`` in PyTorch): for a residual sum whose branch output
    is needed by nothing else (EDSR's ``res += x``), one activation less until the backward.
    """
    tb = _scalar_or_same(a, b, "add")
    other = a.dtype.type(b) if tb is None else tb.data
    if inplace:
        _inplace_target(a, "add")
        a.data += other
        y = a.data
    else:
        y = a.data + other
    if tb is None:
        return make_result(y, [a], lambda g: (g,), "add")
    return make_result(y, [a, tb], lambda g: (g, g), "add")


def sub(a: Tensor, b) -> Tensor:
    """y = a - b;  dE/da = dE/dy, dE/db = -dE/dy."""
    tb = _scalar_or_same(a, b, "sub")
    if tb is None:
        return make_result(a.data - a.dtype.type(b), [a], lambda g: (g,), "sub")
    return make_result(a.data - tb.data, [a, tb], lambda g: (g, -g), "sub")


def mul(a: Tensor, b) -> Tensor:
    """y = a * b (elementwise);  dE/da = dE/dy * b, dE/db = dE/dy * a."""
    tb = _scalar_or_same(a, b, "mul")
    if tb is None:
        s = a.dtype.type(b)
        return make_result(a.data * s, [a], lambda g: (g * s,), "mul")
    check = _saved(a, tb)

    def backward(g):
        check("mul")
        return g * tb.data, g * a.data

    return make_result(a.data * tb.data, [a, tb], backward, "mul")


def neg(a: Tensor) -> Tensor:
    """y = -a;  dE/da = -dE/dy."""
    return make_result(-a.data, [a], lambda g: (-g,), "neg")


def pow(a: Tensor, exponent: float) -> Tensor:
    """y = a^p for a number p;  dE/da = dE/dy * p a^(p-1)."""
    if not isinstance(exponent, numbers.Number):
        raise TypeError("pow: the exponent must be a number")
    p = a.dtype.type(exponent)
    return make_result(a.data ** p, [a], lambda g: (g * p * a.data ** (p - 1),), "pow")


def astype(a: Tensor, dtype) -> Tensor:
    """A cast between float32 and float64; the gradient is cast back."""
    src = a.dtype
    y = a.data.astype(dtype)
    if y.dtype.kind != "f" or y.dtype.itemsize not in (4, 8):
        raise TypeError(f"astype: minisr tensors are float32 or float64, not {y.dtype}")
    return make_result(y, [a], lambda g: (g.astype(src),), "astype")


# ------------------------------------------------------------------------------------------- shape and reduce
def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    return tuple(sorted(int(a) % ndim for a in axes))


def sum(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 - mirrors torch.sum
    """y = sum of a over ``axis`` (all by default);  dE/da = dE/dy broadcast back over the summed axes."""
    xp = get_array_module(a.data)
    axes = _norm_axes(axis, a.ndim)
    y = xp.asarray(a.data.sum(axis=axes, keepdims=keepdims))

    def backward(g):
        if not keepdims:
            g = g.reshape(tuple(1 if i in axes else n for i, n in enumerate(a.shape)))
        return (xp.broadcast_to(g, a.shape).copy(),)

    return make_result(y, [a], backward, "sum")


def mean(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """y = mean of a over ``axis``;  dE/da = dE/dy / (number of elements averaged), broadcast back."""
    axes = _norm_axes(axis, a.ndim)
    count = 1
    for i in axes:
        count *= a.shape[i]
    return mul(sum(a, axes, keepdims), 1.0 / count)


def reshape(a: Tensor, shape) -> Tensor:
    """A view with another shape of the same size;  dE/da = dE/dy reshaped back."""
    try:
        y = a.data.reshape(shape)
    except ValueError as e:
        raise ValueError(f"reshape: cannot reshape {a.shape} into {tuple(shape)}") from e
    return make_result(y, [a], lambda g: (g.reshape(a.shape),), "reshape")


def getitem(a: Tensor, index) -> Tensor:
    """y = a[index] (slicing, e.g. the valid centre of an image);  dE/da is dE/dy at index, 0 elsewhere.

    With basic indexing (ints, slices, ``...``, ``None``) every element of a is picked at most once, so the
    backward simply writes g into a zero array. An integer/boolean array index may pick an element several
    times; its gradients then add up (``add.at``, unbuffered).
    """
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, Tensor) for i in index):
        raise TypeError("indexing with a tensor is not supported; use slices, integers or integer arrays")
    xp = get_array_module(a.data)
    y = a.data[index]
    y = xp.ascontiguousarray(y) if y.ndim else xp.asarray(y)  # (ascontiguousarray makes 0-d results 1-d)
    basic = all(i is None or i is Ellipsis or isinstance(i, (slice, numbers.Integral)) for i in index)

    def backward(g):
        ga = xp.zeros_like(a.data)
        if basic:
            ga[index] = g
        else:
            xp.add.at(ga, index, g)
        return (ga,)

    return make_result(y, [a], backward, "getitem")
