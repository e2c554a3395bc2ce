"""The three conv kernels of the Numba backend, each choosing its path per layer: Winograd F(2x2, 3x3)
(:mod:`.winograd`, when ``MINISR_CONV`` asks for it), shifted GEMMs on our own kernel (:mod:`.conv_shifted`:
stride 1 with >= 8 channels), or columns + BLAS (:mod:`.conv_im2col`: everything else)."""

from __future__ import annotations

from . import winograd as _winograd
from .common import _c
from .conv_im2col import _conv_forward_cols, _conv_input_grad_cols, _conv_weight_grad_cols
from .conv_shifted import _conv_forward_shifted, _conv_input_grad_shifted, _conv_weight_grad_shifted, _shifted


def conv_forward(x, w2, kh, kw, sh, sw, ph, pw):
    x, w2 = _c(x), _c(w2)
    C = x.shape[1]
    if _winograd.use(C, w2.shape[0], kh, kw, sh, sw, ph, pw, x.dtype):  # 3x3 stride 1: F(2x2, 3x3)
        return _winograd.conv_forward(x, w2, ph, pw)
    if _shifted(x, C, sh, sw):
        return _conv_forward_shifted(x, w2, kh, kw, ph, pw)
    return _conv_forward_cols(x, w2, kh, kw, sh, sw, ph, pw)


def conv_weight_grad(g, x, kh, kw, sh, sw, ph, pw):
    g, x = _c(g), _c(x)
    C = x.shape[1]
    if _winograd.use(C, g.shape[1], kh, kw, sh, sw, ph, pw, x.dtype, "weight_grad"):
        return _winograd.conv_weight_grad(g, x, ph, pw)
    if _shifted(x, C, sh, sw):
        return _conv_weight_grad_shifted(g, x, kh, kw, ph, pw)
    return _conv_weight_grad_cols(g, x, kh, kw, sh, sw, ph, pw)


def conv_input_grad(w2, g, x_shape, kh, kw, sh, sw, ph, pw):
    w2, g = _c(w2), _c(g)
    C = x_shape[1]
    if _winograd.use(C, w2.shape[0], kh, kw, sh, sw, ph, pw, g.dtype, "input_grad"):
        return _winograd.conv_input_grad(w2, g, x_shape, ph, pw)
    if _shifted(g, C, sh, sw):
        return _conv_input_grad_shifted(w2, g, x_shape, kh, kw, ph, pw)
    return _conv_input_grad_cols(w2, g, x_shape, kh, kw, sh, sw, ph, pw)
