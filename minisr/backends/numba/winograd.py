"""Winograd F(4x4, 3x3) for the Numba backend's 3 x 3 stride-1 convolutions, padding <= 2: when it runs, and the
conv kernels' signatures around :mod:`.winograd_f4` (the driver, channels in the SIMD lanes, on the LLVM kernels
of :mod:`minisr.backends.winograd_kernel`). The math, as the paper's matrices, is in :mod:`winograd_reference`;
docs/backprop.md has why it is exact and where float32 loses bits.

When (``use``): ``MINISR_CONV=direct`` never, ``winograd`` for every conv it can do (3 x 3, stride 1, padding
<= 2, float32/64), ``auto`` (the default) for the kernels marked in ``AUTO`` (all three: forward, input and
weight gradient) on layers with at least AUTO_MIN_CHANNELS input and output channels, where they beat the direct
kernels (bench/RESULTS.md, "Winograd F(4x4, 3x3), channels in the lanes").
"""

from __future__ import annotations

import os

import numpy as np

from .. import shifted_kernel
from . import winograd_f4

AUTO_MIN_CHANNELS = 16
AUTO = {"forward": True, "input_grad": True, "weight_grad": True}  # which kernels auto runs as Winograd
_MODES = ("auto", "direct", "winograd")


def mode() -> str:
    """``MINISR_CONV`` (read at every call, so tests and users can switch): auto, direct or winograd."""
    m = os.environ.get("MINISR_CONV", "auto").strip().lower() or "auto"
    if m not in _MODES:
        raise ValueError(f"MINISR_CONV={m!r}: choose one of {list(_MODES)}")
    return m


def possible(kh, kw, sh, sw, ph, pw, dtype) -> bool:
    """Whether Winograd F(4x4, 3x3) applies: 3 x 3, stride 1, padding 0..2, float32/float64, and the kernels
    compile."""
    return (kh == kw == 3 and sh == sw == 1 and 0 <= ph <= 2 and 0 <= pw <= 2
            and np.dtype(dtype) in (np.float32, np.float64) and shifted_kernel.available())


def use(C, O, kh, kw, sh, sw, ph, pw, dtype, kernel="forward") -> bool:
    """Whether ``kernel`` (forward, input_grad or weight_grad) of conv2d with C input and O output channels
    runs as Winograd (see the module docstring)."""
    m = mode()
    if m == "direct" or not possible(kh, kw, sh, sw, ph, pw, dtype):
        return False
    return m == "winograd" or (AUTO[kernel] and min(C, O) >= AUTO_MIN_CHANNELS)


def conv_forward(x, w2, ph, pw, b=None, relu=False):
    """conv.conv_forward for a 3 x 3 stride-1 layer, F(4x4, 3x3) (:mod:`.winograd_f4`): x (N, C, H, W), w2 (O, 9 C)
    -> (N, O, Ho*Wo) (+ b, then ReLU when asked)."""
    x = np.ascontiguousarray(x)
    O, C = w2.shape[0], x.shape[1]
    out = winograd_f4.forward(x, np.ascontiguousarray(w2).reshape(O, C, 3, 3), b, relu, ph, pw)
    return out.reshape(out.shape[0], O, -1)


def _nchw(g, y, x_shape, O, ph, pw):
    """g and y (or None) of a layer's output, (N, O, Ho*Wo) or any shape of that size, as contiguous (N, O, Ho, Wo)."""
    N, C, H, W = x_shape
    shape = (N, O, H + 2 * ph - 2, W + 2 * pw - 2)
    return np.ascontiguousarray(g).reshape(shape), None if y is None else np.ascontiguousarray(y).reshape(shape)


def conv_input_grad(w2, g, x_shape, ph, pw, y=None):
    """conv.conv_input_grad for a 3 x 3 stride-1 layer, F(4x4, 3x3): the forward on g (where y > 0, with y) with
    the filter flipped and transposed, padding 2 - p."""
    O, C = w2.shape[0], x_shape[1]
    g4, y4 = _nchw(g, y, x_shape, O, ph, pw)
    return winograd_f4.input_grad(np.ascontiguousarray(w2).reshape(O, C, 3, 3), g4, x_shape, ph, pw, y4)


def conv_weight_grad(g, x, ph, pw, y=None, need_db=False):
    """conv.conv_weight_grad for a 3 x 3 stride-1 layer, F(4x4, 3x3): g (N, O, Ho*Wo) (where y > 0, with y), x (N, C,
    H, W) -> (dw (O, 9 C), db (O,) or None)."""
    x = np.ascontiguousarray(x)
    O = g.shape[1]
    g4, y4 = _nchw(g, y, x.shape, O, ph, pw)
    dw, db = winograd_f4.weight_grad(g4, x, ph, pw, y4, need_db)
    return dw.reshape(O, -1), db


def conv_backward(g, x, w2, ph, pw, y=None, need_db=False):
    """(dx, dw (O, 9 C), db or None) of a 3 x 3 stride-1 layer, F(4x4, 3x3), the two gradients sharing one padded
    copy of g (where y > 0, with y)."""
    x = np.ascontiguousarray(x)
    O, C = w2.shape[0], x.shape[1]
    g4, y4 = _nchw(g, y, x.shape, O, ph, pw)
    dx, dw, db = winograd_f4.backward(g4, x, np.ascontiguousarray(w2).reshape(O, C, 3, 3), y4, ph, pw, need_db)
    return dx, dw.reshape(O, -1), db
