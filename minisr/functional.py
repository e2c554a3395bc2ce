"""The ops: each one function, forward and backward side by side, calling the backend's kernels.

Every op takes tensors, checks shapes and dtypes (a mismatch is a clear error naming the shapes, never a
silent broadcast), computes its output with ``be = backend_for(...)`` kernels, and returns it with a
``backward`` closure that maps dE/d(output) to dE/d(each input). The docstrings state the equation implemented
and the gradient sums computed.
"""

from __future__ import annotations

import numbers

from .backends import backend_for, get_array_module
from .tensor import Tensor, bump_version, is_grad_enabled, make_result, storage_of, storage_version

__all__ = [
    "conv2d", "relu", "leaky_relu", "pixel_shuffle", "mse_loss", "l1_loss", "smoothness_loss", "pad",
    "conv2d_relu",
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
    """For a backward that reads these tensors' data: a check that none was modified in place since.

    Call it in the forward, ``check = _saved(a, b)``, and ``check("op")`` first thing in the backward. Versions
    belong to the storage, so a write through any view (reshape, slice, detach(), Tensor(t.data)) or by an
    optimizer step is seen; an array (e.g. an op's own output, relu's y) may be passed as well as a tensor.
    A tensor whose ``.data`` was replaced (load_state_dict) fails the check too.
    """
    arrays = [t.data if isinstance(t, Tensor) else t for t in tensors]
    versions = [storage_version(a) for a in arrays]

    def check(op: str) -> None:
        for t, a, v in zip(tensors, arrays, versions):
            if storage_version(a) != v or (isinstance(t, Tensor) and t.data is not a):
                raise RuntimeError(f"{op} backward: a tensor it needs was modified by an in-place op afterwards "
                                   "(relu(inplace=True), add(inplace=True), an optimizer step, or a write through "
                                   "a view of its memory); use the out-of-place op there, or step the optimizer "
                                   "after backward()")

    return check


def _inplace_target(x: Tensor, op: str) -> None:
    """In-place ops overwrite x's array: refuse where that would break the graph, as PyTorch does. Call it
    before writing; it records the write (bumps the storage's version)."""
    if is_grad_enabled():
        if x.requires_grad and x.is_leaf:
            raise RuntimeError(f"{op}(inplace=True) on a leaf tensor that requires grad (a parameter or an input "
                               "with requires_grad=True): its values are needed as they are; use inplace=False")
        base = x
        while base._view_of is not None:
            base = base._view_of
        if base is not x and base.requires_grad and base.is_leaf:
            raise RuntimeError(f"{op}(inplace=True) on a view of a leaf tensor that requires grad (a parameter "
                               f"or an input with requires_grad=True, shape {base.shape}): it would overwrite it; "
                               "use inplace=False")
        if x.requires_grad and x._ctx is not None and x._seen != x._version:
            raise RuntimeError(f"{op}(inplace=True): its input was already modified in place after it was computed "
                               "(through a view, or by an in-place op whose result was not used); use that op's "
                               "result, or inplace=False")
        x._inplace_at = bump_version(x.data)  # (make_result accepts x as the input of this op once)
    else:
        bump_version(x.data)


def _view(y: Tensor, a: Tensor) -> Tensor:
    """Mark y (a view-making op's result) as viewing a's storage when it does, for _inplace_target."""
    if storage_of(y.data) is storage_of(a.data):
        y._view_of = a
    return y


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

    Forward, with y the input zero-padded by (ph, pw) -- the one-channel
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
    the backward pass rather than keep them: only x is kept, as in PyTorch. The bias add runs in the conv's
    output pass and the bias gradient in its weight gradient's (numpy_backend.conv_fused_forward and
    conv_fused_backward, fused in the Numba backend).
    """
    return _conv2d(x, weight, bias, stride, padding, relu=False)


def conv2d_relu(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """relu(conv2d(x, weight, bias, stride, padding)) as one op (what nn.Sequential runs for a Conv2d followed
    by a ReLU): the same values and gradients, with ReLU in the conv's output pass and its mask applied where
    the conv's gradients read g, instead of two passes of their own over the activation.

    Forward, with out as in :func:`conv2d`:
        y = max(out, 0)

    Backward, g = dE/dy (ReLU's backward, then conv2d's):
        gm = g * [y > 0]
        dE/dw, dE/db, dE/dx = conv2d's backward with gm in place of g

    Keeps x (for dE/dw), the weight (for dE/dx) and y (for the mask; an in-place op on y afterwards is an
    error in the backward, as for relu).
    """
    return _conv2d(x, weight, bias, stride, padding, relu=True)


def _conv2d(x, weight, bias, stride, padding, relu: bool) -> Tensor:
    """conv2d, and conv2d_relu when relu: the checks, the forward and the backward of both."""
    op = "conv2d_relu" if relu else "conv2d"
    x, weight = _tensor(x, "conv2d input"), _tensor(weight, "conv2d weight")
    _check_ndim(x, 4, "conv2d input", "(N, C, H, W)")
    _check_ndim(weight, 4, "conv2d weight", "(O, C, kh, kw)")
    if 0 in weight.shape:
        raise ValueError(f"conv2d: weight {weight.shape} is empty (zero output channels, input channels or "
                         "kernel size): there is nothing to convolve with")
    if isinstance(padding, str):
        x, padding = _padding_mode(x, weight.shape[2:], stride, padding)
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
    if N == 0:  # an empty batch (as PyTorch: an empty output, zero gradients); the kernels assume N >= 1
        xp = get_array_module(x.data)
        return make_result(xp.zeros((0, O, Ho, Wo), x.dtype), parents,
                           lambda g: tuple(xp.zeros_like(p.data) for p in parents), op)
    w2 = weight.data.reshape(O, C * kh * kw)
    geometry = (kh, kw, sh, sw, ph, pw)
    # W2 @ im2col(x)[n] (+ b), then max(., 0) when relu: (N, O, P)
    y = be.conv_fused_forward(x.data, w2, None if bias is None else bias.data, relu, *geometry)
    out = y.reshape(N, O, Ho, Wo)

    # (the backward reads x for dw, the weight for dx, y for ReLU's mask; the bias not at all)
    mask = y if relu else None  # (conv2d's backward must not keep its output alive)
    check = _saved(x, weight, mask) if relu else _saved(x, weight)

    def backward(g):
        check(op)
        g = g.reshape(N, O, Ho * Wo)
        need_db = bias is not None and bias.requires_grad
        # dx = col2im(W2^T @ gm[n]), dw = sum_n gm[n] @ im2col(x)[n]^T, db = sum of gm; gm = g * [y > 0] or g
        dx, dw, db = be.conv_fused_backward(g, mask, x.data, w2, *geometry, x.requires_grad, weight.requires_grad,
                                            need_db)
        if dw is not None:
            dw = dw.reshape(weight.shape)
        return (dx, dw, db)[:len(parents)]

    return make_result(out, parents, backward, op)


def _padding_mode(x: Tensor, kernel, stride, mode: str):
    """PyTorch's padding strings: "valid" is no padding; "same" (stride 1 only) pads k - 1 in all per axis,
    (k - 1) // 2 before and the rest after -- for an even kernel one more after, done by an explicit pad() of
    x -- so the output has the input's size. Returns (x, padding for the symmetric case)."""
    if mode == "valid":
        return x, 0
    if mode != "same":
        raise ValueError(f"conv2d: padding {mode!r}: use an int, a pair of ints, 'same' or 'valid'")
    if _pair(stride, "stride") != (1, 1):
        raise ValueError(f"conv2d: padding='same' needs stride 1 (as in PyTorch), got stride {stride}")
    (top, left), (bottom, right) = ((k - 1) // 2 for k in kernel), ((k - 1) - (k - 1) // 2 for k in kernel)
    if (top, left) == (bottom, right):
        return x, (top, left)
    return pad(x, (left, right, top, bottom)), 0
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
    check = _saved(y)

    def backward(g):
        check("relu")
        return (be.relu_backward(g, y),)

    return make_result(y, [x], backward, "relu")


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
    if not isinstance(target, Tensor):  # an array target is cast to pred's dtype and device, but only from float data
        kind = getattr(getattr(target, "dtype", None), "kind", "f")
        if kind != "f":
            raise TypeError(f"{op}: target array has dtype {target.dtype} (shape {tuple(target.shape)}); "
                            "minisr compares float data, convert it first (images: divide uint8 by 255)")
        target = Tensor(target, dtype=pred.dtype).to(pred.device)
    _check_same(pred, target, op)
    return pred, target


def mse_loss(pred: Tensor, target) -> Tensor:
    """E = mean((pred - target)^2) over all n elements;  dE/dpred = 2 (pred - target) / n = -dE/dtarget."""
    pred, target = _loss_inputs(pred, target, "mse_loss")
    be = backend_for(pred.data)
    loss = be.mse_forward(pred.data, target.data)
    check = _saved(pred, target)

    def backward(g):
        check("mse_loss")
        d = be.mse_backward(pred.data, target.data, g)
        return d, (-d if target.requires_grad else None)

    return make_result(loss, [pred, target], backward, "mse_loss")


def l1_loss(pred: Tensor, target) -> Tensor:
    """E = mean(|pred - target|);  dE/dpred = sign(pred - target) / n = -dE/dtarget.

    sign(0) = 0, as PyTorch."""
    pred, target = _loss_inputs(pred, target, "l1_loss")
    be = backend_for(pred.data)
    loss = be.l1_forward(pred.data, target.data)
    check = _saved(pred, target)

    def backward(g):
        check("l1_loss")
        d = be.l1_backward(pred.data, target.data, g)
        return d, (-d if target.requires_grad else None)

    return make_result(loss, [pred, target], backward, "l1_loss")


def smoothness_loss(x: Tensor) -> Tensor:
    """A smoothness prior (squared neighbour differences, a Tikhonov-type penalty) on an output batch x (N, C, H, W):

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
    check = _saved(a)

    def backward(g):
        check("pow")
        return (g * p * a.data ** (p - 1),)

    return make_result(a.data ** p, [a], backward, "pow")


def astype(a: Tensor, dtype) -> Tensor:
    """A cast between float32 and float64; the gradient is cast back."""
    src = a.dtype
    y = a.data.astype(dtype)
    if y.dtype.kind != "f" or y.dtype.itemsize not in (4, 8):
        raise TypeError(f"astype: minisr tensors are float32 or float64, not {y.dtype}")
    return make_result(y, [a], lambda g: (g.astype(src),), "astype")


# ------------------------------------------------------------------------------------------- shape and reduce
def _norm_axes(axis, ndim):
    """Sorted non-negative axes; out of range or repeated ones raise as NumPy does (no wrapping modulo ndim)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    out = []
    for ax in axes:
        ax = int(ax)
        if not -ndim <= ax < ndim:
            raise _AxisError(ax, ndim)
        out.append(ax % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate value in 'axis': {axis} for a {ndim}-D tensor")
    return tuple(sorted(out))


def _axis_error_class():
    import numpy as np

    exc = getattr(np, "exceptions", None)
    return getattr(exc, "AxisError", None) or np.AxisError  # (numpy < 1.25 has only np.AxisError)


_AxisError = _axis_error_class()


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
    return _view(make_result(y, [a], lambda g: (g.reshape(a.shape),), "reshape"), a)


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

    return _view(make_result(y, [a], backward, "getitem"), a)


# ============================================================================================= classifier ops
# What a small image classifier (and a GAN discriminator) needs: linear, pooling, cross-entropy losses, batch
# norm, dropout. PyTorch's names, argument orders and conventions.
__all__ += [
    "linear", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "cross_entropy",
    "binary_cross_entropy_with_logits", "batch_norm", "dropout",
]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Fully connected layer, PyTorch's layout: x (..., in), weight (out, in), bias (out,), y (..., out).

        y[n, o] = b[o] + sum_i x[n, i] W[o, i]                (y = x W^T + b, rows n over all leading axes)

    Backward, g = dE/dy:
        dE/dx[n, i] = sum_o g[n, o] W[o, i]                   (g @ W)
        dE/dW[o, i] = sum_n g[n, o] x[n, i]                   (g^T @ x)
        dE/db[o]    = sum_n g[n, o]
    """
    x, weight = _tensor(x, "linear input"), _tensor(weight, "linear weight")
    _check_ndim(weight, 2, "linear weight", "(out_features, in_features)")
    O, In = weight.shape
    if x.ndim < 1 or x.shape[-1] != In:
        raise ValueError(f"linear: input {x.shape} has {x.shape[-1] if x.ndim else 0} features in its last axis "
                         f"but weight {weight.shape} expects {In}")
    if x.dtype != weight.dtype:
        raise TypeError(f"linear: input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    parents = [x, weight]
    if bias is not None:
        bias = _tensor(bias, "linear bias")
        if bias.shape != (O,):
            raise ValueError(f"linear: bias shape {bias.shape}, expected ({O},) for weight {weight.shape}")
        if bias.dtype != x.dtype:
            raise TypeError(f"linear: bias dtype {bias.dtype} differs from input dtype {x.dtype}")
        parents.append(bias)
    xp = get_array_module(x.data)
    x2 = x.data.reshape(-1, In)
    y = xp.matmul(x2, weight.data.T)
    if bias is not None:
        y += bias.data
    y = y.reshape(x.shape[:-1] + (O,))
    check = _saved(x, weight)

    def backward(g):
        check("linear")
        g2 = g.reshape(-1, O)
        dx = xp.matmul(g2, weight.data).reshape(x.shape) if x.requires_grad else None
        dw = xp.matmul(g2.T, x.data.reshape(-1, In)) if weight.requires_grad else None
        db = g2.sum(axis=0) if bias is not None and bias.requires_grad else None
        return (dx, dw, db)[:len(parents)]

    return make_result(y, parents, backward, "linear")


def _pool_args(x, kernel_size, stride, padding, op):
    x = _tensor(x, f"{op} input")
    _check_ndim(x, 4, f"{op} input", "(N, C, H, W)")
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None or stride == () else _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"{op}: kernel_size and stride must be >= 1 and padding >= 0, got kernel_size "
                         f"{(kh, kw)} stride {(sh, sw)} padding {(ph, pw)}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{op}: padding {(ph, pw)} must be at most half the kernel size {(kh, kw)} (as PyTorch)")
    N, C, H, W = x.shape
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: kernel {kh}x{kw} is larger than the padded input {H + 2 * ph}x{W + 2 * pw} "
                         f"(input {x.shape}, padding {(ph, pw)})")
    return x, (kh, kw, sh, sw, ph, pw), (N, C, Ho, Wo)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Max over kh x kw windows (stride defaults to the kernel size; padding counts as -inf), PyTorch's rule:

        out[n, c, i, j] = max_{u, v} x[n, c, i*sh - ph + u, j*sw - pw + v]

    The kernel returns the arg-max of each window as a flat index h*W + w into its (n, c) plane (the first one
    in row-major window order when several are equal, as PyTorch); the output is x gathered there.
    Backward: the gradient goes to the arg-max only, adding up where windows overlap:

        dE/dx[n, c, h, w] = sum over (i, j) with idx[n, c, i, j] = h*W + w of g[n, c, i, j]
    """
    x, geometry, (N, C, Ho, Wo) = _pool_args(x, kernel_size, stride, padding, "max_pool2d")
    be = backend_for(x.data)
    xp = get_array_module(x.data)
    idx = be.maxpool2d_argmax(x.data, *geometry)  # (N, C, Ho, Wo) int64
    y = xp.take_along_axis(x.data.reshape(N, C, -1), idx.reshape(N, C, -1), axis=2).reshape(N, C, Ho, Wo)
    return make_result(y, [x], lambda g: (be.maxpool2d_backward(g, idx, x.shape, *geometry),), "max_pool2d")


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """Mean over kh x kw windows (stride defaults to the kernel size, zero padding), PyTorch's rule:

        out[n, c, i, j] = (1 / d[i, j]) sum_{u, v} xpad[n, c, i*sh + u, j*sw + v]

    with d = kh*kw (``count_include_pad=True``, the default) or the number of window elements inside the
    unpadded image. Backward, every output spreads its gradient evenly over its window:

        dE/dx[n, c, h, w] = sum over windows (i, j) that contain (h, w) of g[n, c, i, j] / d[i, j]

    ``ceil_mode=True`` is not supported (an error).
    """
    if ceil_mode:
        raise ValueError("avg_pool2d: ceil_mode=True is not supported; pad the input instead")
    x, geometry, _ = _pool_args(x, kernel_size, stride, padding, "avg_pool2d")
    be = backend_for(x.data)
    inc = bool(count_include_pad)
    y = be.avgpool2d_forward(x.data, *geometry, inc)
    return make_result(y, [x], lambda g: (be.avgpool2d_backward(g, x.shape, *geometry, inc),), "avg_pool2d")


def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    """Average pooling to a fixed output size (oh, ow); ``output_size=1`` is the global average
    out[n, c] = mean_{h, w} x[n, c, h, w], kept as (N, C, 1, 1).

    PyTorch's bins are [floor(i H / oh), ceil((i + 1) H / oh)); when oh divides H (and ow divides W) they are
    the windows of avg_pool2d with kernel = stride = (H / oh, W / ow), which is what runs. Other sizes (bins of
    unequal length) are refused. ``None`` in output_size keeps that input size.
    """
    x = _tensor(x, "adaptive_avg_pool2d input")
    _check_ndim(x, 4, "adaptive_avg_pool2d input", "(N, C, H, W)")
    H, W = x.shape[2:]
    if isinstance(output_size, numbers.Integral) or output_size is None:
        output_size = (output_size, output_size)
    oh, ow = (H if output_size[0] is None else int(output_size[0]), W if output_size[1] is None else
              int(output_size[1]))
    if oh < 1 or ow < 1 or H % oh or W % ow:
        raise ValueError(f"adaptive_avg_pool2d: output size {(oh, ow)} must divide the input size {(H, W)} "
                         f"(input {x.shape}); minisr supports equal bins only (1 = global average)")
    return avg_pool2d(x, (H // oh, W // ow))


def _class_targets(targets, N: int, C: int, xp, op: str):
    """Integer class indices (N,) in [0, C), on the logits' device."""
    if isinstance(targets, Tensor):
        raise TypeError(f"{op}: targets must be an integer array of class indices (N,) = ({N},), not a float "
                        "minisr.Tensor")
    if not hasattr(targets, "dtype"):
        import numpy as np

        targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"{op}: targets have dtype {targets.dtype} (shape {tuple(targets.shape)}); they must be "
                        f"integer class indices in [0, {C}) (e.g. np.int64)")
    if tuple(targets.shape) != (N,):
        raise ValueError(f"{op}: targets shape {tuple(targets.shape)} does not match logits (N, C) = ({N}, {C}); "
                         f"expected ({N},)")
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= C:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{op}: target {bad} is out of range for {C} classes (logits (N, C) = ({N}, {C})); "
                         f"targets must lie in [0, {C - 1}]")
    return xp.asarray(targets).astype(xp.int64)


def cross_entropy(logits: Tensor, targets) -> Tensor:
    """Mean cross-entropy of logits z (N, C) against integer class targets t (N,), through a stable log-softmax:

        log p[n, c] = z[n, c] - m[n] - log sum_k exp(z[n, k] - m[n]),    m[n] = max_k z[n, k]
        E = -(1/N) sum_n log p[n, t[n]]

    Backward: dE/dz[n, c] = (p[n, c] - [c == t[n]]) / N   (p = softmax(z)).
    Targets are a NumPy (or CuPy) integer array; out-of-range or float targets are errors.
    """
    logits = _tensor(logits, "cross_entropy input")
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be 2-D (N, C), got shape {logits.shape} "
                         "(flatten them first, e.g. nn.Flatten())")
    N, C = logits.shape
    if N == 0 or C == 0:
        raise ValueError(f"cross_entropy: empty logits {logits.shape}")
    xp = get_array_module(logits.data)
    t = _class_targets(targets, N, C, xp, "cross_entropy")
    z = logits.data
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    rows = xp.arange(N)
    loss = xp.asarray(-logp[rows, t].sum() / z.dtype.type(N), dtype=z.dtype)

    def backward(g):
        d = xp.exp(logp)
        d[rows, t] -= 1
        d *= z.dtype.type(float(g) / N)
        return (d,)

    return make_result(loss, [logits], backward, "cross_entropy")


def binary_cross_entropy_with_logits(x: Tensor, t) -> Tensor:
    """Mean binary cross-entropy of logits x against targets t in [0, 1] (same shape), in the stable form

        E = (1/n) sum max(x, 0) - x t + log(1 + exp(-|x|))      (= -t log s(x) - (1 - t) log(1 - s(x)))

    Backward: dE/dx = (s(x) - t) / n with s the logistic sigmoid; dE/dt = -x / n.
    """
    x, t = _loss_inputs(x, t, "binary_cross_entropy_with_logits")
    xp = get_array_module(x.data)
    a, b = x.data, t.data
    e = xp.exp(-xp.abs(a))
    n = a.dtype.type(a.size)
    loss = xp.asarray((xp.maximum(a, 0) - a * b + xp.log1p(e)).sum() / n, dtype=a.dtype)
    check = _saved(x, t)

    def backward(g):
        check("binary_cross_entropy_with_logits")
        scale = a.dtype.type(float(g) / a.size)
        sig = xp.where(a >= 0, 1 / (1 + e), e / (1 + e))
        dx = (sig - b) * scale
        return dx, (-a * scale if t.requires_grad else None)

    return make_result(loss, [x, t], backward, "binary_cross_entropy_with_logits")


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """Batch normalisation over channel axis 1 of x (N, C, ...), PyTorch's rule. With the statistics over the
    n = N * H * W values of each channel c,

        training:  mu = mean(x[:, c]),  var = mean((x[:, c] - mu)^2)            (biased, used to normalise)
                   running_mean = (1 - momentum) running_mean + momentum mu      (in place, when given)
                   running_var  = (1 - momentum) running_var  + momentum var n / (n - 1)   (unbiased)
        eval:      mu = running_mean,  var = running_var
        xhat = (x - mu) / sqrt(var + eps),    y = weight[c] xhat + bias[c]

    Backward, g = dE/dy, dxhat = g weight[c], sums over each channel's n values:
        dE/dweight[c] = sum g xhat,    dE/dbias[c] = sum g
        training:  dE/dx = (1 / (n sqrt(var + eps))) (n dxhat - sum dxhat - xhat sum(dxhat xhat))
        eval:      dE/dx = dxhat / sqrt(var + eps)
    A training batch with one value per channel (n = 1) is an error, as in PyTorch. The kernels
    (``batch_norm_stats``, ``batch_norm_forward``, ``batch_norm_backward``) recompute xhat from x in the
    backward instead of keeping it.
    """
    x = _tensor(x, "batch_norm input")
    if x.ndim < 2:
        raise ValueError(f"batch_norm: input must be (N, C, ...), got shape {x.shape}")
    C = x.shape[1]
    parents = [x]
    for name, p in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if p is None:
            continue
        _tensor(p, f"batch_norm {name}")
        if p.shape != (C,):
            raise ValueError(f"batch_norm: {name} shape {p.shape}, expected ({C},) for input {x.shape}")
        if p.dtype != x.dtype:
            raise TypeError(f"batch_norm: {name} dtype {p.dtype} differs from input dtype {x.dtype}")
        if name in ("weight", "bias"):
            parents.append(p)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError("batch_norm: running_mean and running_var are needed when training=False")
    xp = get_array_module(x.data)
    be = backend_for(x.data)
    n = x.size // C if C else 0
    t = x.dtype.type
    if training:
        if n <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input shape "
                             f"{x.shape} (N*H*W = {n}); use a batch of 2 or more, or eval mode")
        mu, var = be.batch_norm_stats(x.data)
        if running_mean is not None:
            m = t(momentum)
            running_mean.data[...] = (1 - m) * running_mean.data + m * mu
            running_var.data[...] = (1 - m) * running_var.data + m * var * t(n / (n - 1))
    else:
        mu, var = running_mean.data.copy(), running_var.data.copy()
    invstd = 1 / xp.sqrt(var + t(eps))
    w = weight.data if weight is not None else xp.ones(C, x.dtype)
    b = bias.data if bias is not None else xp.zeros(C, x.dtype)
    y = be.batch_norm_forward(x.data, mu, invstd, w, b)
    check = _saved(*parents)

    def backward(g):
        check("batch_norm")
        dx, dw, db = be.batch_norm_backward(g, x.data, mu, invstd, w, training)
        grads = [dx if x.requires_grad else None]
        if weight is not None:
            grads.append(dw if weight.requires_grad else None)
        if bias is not None:
            grads.append(db if bias.requires_grad else None)
        return tuple(grads)

    return make_result(y, parents, backward, "batch_norm")


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: in training each element is kept with probability 1 - p and scaled by 1 / (1 - p),

        y = x * mask,   mask = [u >= p] / (1 - p),   u ~ U[0, 1) from minisr.random's generator

    (``minisr.manual_seed`` makes it reproducible); dE/dx = dE/dy * mask. p = 1 zeroes everything. Not training
    (or p = 0): y = x, the same tensor.
    """
    x = _tensor(x, "dropout input")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    if not training or p == 0.0:
        return x
    from . import random as mrandom

    xp = get_array_module(x.data)
    u = mrandom.generator().random(x.shape)
    keep = (u >= p).astype(x.dtype)
    mask = xp.asarray(keep * x.dtype.type(1.0 / (1.0 - p)) if p < 1.0 else keep)
    return make_result(x.data * mask, [x], lambda g: (g * mask,), "dropout")
