"""The three conv kernels of the Numba backend, each choosing its path per layer: Winograd (:mod:`.winograd`:
F(4x4, 3x3) and F(2x2, 5x5) for all three kernels of 3x3 and 5x5 stride-1 layers with >= 16 channels; of every
such layer with ``MINISR_CONV=winograd``; none with ``direct``), shifted GEMMs on our own kernel (:mod:`.conv_shifted`:
stride 1 with >= 8 channels, and a first layer's weight gradient; :mod:`.conv_polyphase`: 3x3 stride 2 with >= 8
channels), or columns + BLAS (:mod:`.conv_im2col`: everything else).

conv_fused_forward and conv_fused_backward (conv2d's and conv2d_relu's kernels) fuse the bias add, the ReLU and
their gradients into the shifted GEMMs' own passes over the data (see :mod:`.conv_shifted`), into Winograd's
output transform and input copy, and into the im2col path's forward bands; elsewhere, or with ``MINISR_FUSE=0``
(read at every call, to compare), they run the plain kernels one after the other, as the NumPy reference does."""

from __future__ import annotations

import os

from . import winograd as _winograd
from .activations import relu_backward, relu_forward
from .bias import bias_add, bias_grad
from .common import _c, _floats
from .conv_im2col import _conv_forward_cols, _conv_input_grad_cols, _conv_weight_grad_cols
from .conv_polyphase import _conv_forward_polyphase, _conv_input_grad_polyphase, _conv_weight_grad_polyphase, _polyphase
from .conv_shifted import _conv_forward_shifted, _conv_input_grad_shifted, _conv_weight_grad_shifted, _shifted


def conv_forward(x, w2, kh, kw, sh, sw, ph, pw):
    _floats("conv_forward", x, w2)
    x, w2 = _c(x), _c(w2)
    C = x.shape[1]
    if _winograd.use(C, w2.shape[0], kh, kw, sh, sw, ph, pw, x.dtype):  # 3x3 / 5x5 stride 1: F(4x4, 3x3) / F(2x2, 5x5)
        return _winograd.conv_forward(x, w2, kh, ph, pw)
    if _shifted(x, C, sh, sw):
        return _conv_forward_shifted(x, w2, kh, kw, ph, pw)
    if _polyphase(x, C, kh, kw, sh, sw):
        return _conv_forward_polyphase(x, w2, ph, pw)
    return _conv_forward_cols(x, w2, kh, kw, sh, sw, ph, pw)


def conv_weight_grad(g, x, kh, kw, sh, sw, ph, pw):
    _floats("conv_weight_grad", g, x)
    g, x = _c(g), _c(x)
    C = x.shape[1]
    if _winograd.use(C, g.shape[1], kh, kw, sh, sw, ph, pw, x.dtype, "weight_grad"):
        return _winograd.conv_weight_grad(g, x, kh, ph, pw)[0]
    if _shifted(x, C, sh, sw, kh, kw, weight_grad=True):
        return _conv_weight_grad_shifted(g, x, kh, kw, ph, pw)[0]
    if _polyphase(x, C, kh, kw, sh, sw):
        return _conv_weight_grad_polyphase(g, x, ph, pw)
    return _conv_weight_grad_cols(g, x, kh, kw, sh, sw, ph, pw)


def conv_input_grad(w2, g, x_shape, kh, kw, sh, sw, ph, pw):
    _floats("conv_input_grad", w2, g)
    w2, g = _c(w2), _c(g)
    C = x_shape[1]
    if _winograd.use(C, w2.shape[0], kh, kw, sh, sw, ph, pw, g.dtype, "input_grad"):
        return _winograd.conv_input_grad(w2, g, x_shape, kh, ph, pw)
    if _shifted(g, C, sh, sw):
        return _conv_input_grad_shifted(w2, g, x_shape, kh, kw, ph, pw)
    if _polyphase(g, C, kh, kw, sh, sw):
        return _conv_input_grad_polyphase(w2, g, x_shape, ph, pw)
    return _conv_input_grad_cols(w2, g, x_shape, kh, kw, sh, sw, ph, pw)


def fused() -> bool:
    """``MINISR_FUSE`` (read at every call): 1 (the default) fuses the epilogues, 0 runs them as separate passes."""
    v = os.environ.get("MINISR_FUSE", "1").strip().lower() or "1"
    if v not in ("0", "1"):
        raise ValueError(f"MINISR_FUSE={v!r}: choose 1 (fused epilogues, the default) or 0 (separate passes)")
    return v == "1"


def conv_fused_forward(x, w2, b, relu, kh, kw, sh, sw, ph, pw):
    _floats("conv_fused_forward", x, w2)
    x, w2 = _c(x), _c(w2)
    C = x.shape[1]
    if fused() and (b is not None or relu):
        if _winograd.use(C, w2.shape[0], kh, kw, sh, sw, ph, pw, x.dtype):
            return _winograd.conv_forward(x, w2, kh, ph, pw, b, relu)
        if _shifted(x, C, sh, sw):
            return _conv_forward_shifted(x, w2, kh, kw, ph, pw, b, relu)
        if _polyphase(x, C, kh, kw, sh, sw):
            return _conv_forward_polyphase(x, w2, ph, pw, b, relu)
        return _conv_forward_cols(x, w2, kh, kw, sh, sw, ph, pw, b, relu)
    out = conv_forward(x, w2, kh, kw, sh, sw, ph, pw)
    if b is not None:
        bias_add(out, b)
    if relu:
        relu_forward(out, out=out)
    return out


def conv_fused_backward(g, y, x, w2, kh, kw, sh, sw, ph, pw, need_dx, need_dw, need_db):
    _floats("conv_fused_backward", g, x, w2)
    g, x, w2 = _c(g), _c(x), _c(w2)
    C, O = x.shape[1], w2.shape[0]
    geometry = (kh, kw, sh, sw, ph, pw)
    fuse = fused()
    wino_w = need_dw and _winograd.use(C, O, *geometry, x.dtype, "weight_grad")
    fuse_w = need_dw and fuse and (wino_w or _shifted(x, C, sh, sw, kh, kw, weight_grad=True))
    wino_x = need_dx and _winograd.use(C, O, *geometry, x.dtype, "input_grad")
    fuse_x = need_dx and fuse and (wino_x or _shifted(x, C, sh, sw))
    gm = None  # ReLU's backward as a pass of its own, for what is not fused
    if (need_dw and not fuse_w) or (need_dx and not fuse_x) or (need_db and not fuse_w):
        gm = g if y is None else relu_backward(g, y)
    dx = dw = db = None
    if fuse_w and wino_w and fuse_x and wino_x:  # (one padded copy of g for both)
        return _winograd.conv_backward(g, x, w2, kh, ph, pw, y, need_db)
    if fuse_w and wino_w:
        dw, db = _winograd.conv_weight_grad(g, x, kh, ph, pw, y, need_db)
    elif fuse_w:
        dw, db = _conv_weight_grad_shifted(g, x, kh, kw, ph, pw, y, need_db)
    elif need_dw:
        dw = conv_weight_grad(gm, x, *geometry)
    if need_db and db is None:
        db = bias_grad(gm)
    if fuse_x and wino_x:
        dx = _winograd.conv_input_grad(w2, g, x.shape, kh, ph, pw, y)
    elif fuse_x:
        dx = _conv_input_grad_shifted(w2, g, x.shape, kh, kw, ph, pw, y)
    elif need_dx:
        dx = conv_input_grad(w2, gm, x.shape, *geometry)
    return dx, dw, db
