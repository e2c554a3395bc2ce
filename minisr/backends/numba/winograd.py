"""Winograd F(4x4, 3x3) and F(2x2, 5x5) for the Numba backend's 3 x 3 and 5 x 5 stride-1 convolutions: when they
run, and the conv kernels' signatures around :mod:`.winograd_lanes` (the driver, channels in the SIMD lanes, on
the LLVM kernels of :mod:`minisr.backends.winograd_kernel`). The math, as the paper's matrices, is in
:mod:`winograd_reference`; docs/backprop.md has why it is exact and where float32 loses bits.

When (``use``): ``MINISR_CONV=direct`` never, ``winograd`` for every conv it can do (3 x 3 or 5 x 5, stride 1,
padding < the kernel size, float32/64), ``auto`` (the default) for the kernels marked in ``AUTO`` (all three:
forward, input and weight gradient) on layers with at least AUTO_MIN_CHANNELS input and output channels, where
they beat the direct kernels (bench/RESULTS.md, "Winograd F(4x4, 3x3), channels in the lanes" and "F(2x2, 5x5)").
"""

from __future__ import annotations

import os

import numpy as np

from .. import shifted_kernel
from . import winograd_lanes

AUTO_MIN_CHANNELS = 16
AUTO = {"forward": True, "input_grad": True, "weight_grad": True}  # which kernels auto runs as Winograd
_MODES = ("auto", "direct", "winograd")
SIZES = (3, 5)  # the filter sizes: F(4x4, 3x3) and F(2x2, 5x5)


def mode() -> str:
    """``MINISR_CONV`` (read at every call, so tests and users can switch): auto, direct or winograd."""
    m = os.environ.get("MINISR_CONV", "auto").strip().lower() or "auto"
    if m not in _MODES:
        raise ValueError(f"MINISR_CONV={m!r}: choose one of {list(_MODES)}")
    return m


def possible(kh, kw, sh, sw, ph, pw, dtype) -> bool:
    """Whether Winograd applies: a 3 x 3 or 5 x 5 filter, stride 1, padding 0 .. size - 1, float32/float64, and the
    kernels compile."""
    return (kh == kw and kh in SIZES and sh == sw == 1 and 0 <= ph < kh and 0 <= pw < kw
            and np.dtype(dtype) in (np.float32, np.float64) and shifted_kernel.available())


def use(C, O, kh, kw, sh, sw, ph, pw, dtype, kernel="forward") -> bool:
    """Whether ``kernel`` (forward, input_grad or weight_grad) of conv2d with C input and O output channels
    runs as Winograd (see the module docstring)."""
    m = mode()
    if m == "direct" or not possible(kh, kw, sh, sw, ph, pw, dtype):
        return False
    return m == "winograd" or (AUTO[kernel] and min(C, O) >= AUTO_MIN_CHANNELS)


def _filters(w2, C, k):
    """w2 (O, k k C) as contiguous (O, C, k, k)."""
    return np.ascontiguousarray(w2).reshape(w2.shape[0], C, k, k)


def conv_forward(x, w2, k, ph, pw, b=None, relu=False):
    """conv.conv_forward for a k x k stride-1 layer (:mod:`.winograd_lanes`): x (N, C, H, W), w2 (O, k k C)
    -> (N, O, Ho*Wo) (+ b, then ReLU when asked)."""
    x = np.ascontiguousarray(x)
    out = winograd_lanes.forward(x, _filters(w2, x.shape[1], k), b, relu, ph, pw)
    return out.reshape(out.shape[0], out.shape[1], -1)


def _nchw(g, y, x_shape, O, k, ph, pw):
    """g and y (or None) of a layer's output, (N, O, Ho*Wo) or any shape of that size, as contiguous (N, O, Ho, Wo)."""
    N, C, H, W = x_shape
    shape = (N, O, H + 2 * ph - k + 1, W + 2 * pw - k + 1)
    return np.ascontiguousarray(g).reshape(shape), None if y is None else np.ascontiguousarray(y).reshape(shape)


def conv_input_grad(w2, g, x_shape, k, ph, pw, y=None):
    """conv.conv_input_grad for a k x k stride-1 layer: the forward on g (where y > 0, with y) with the filter
    flipped and transposed, padding k - 1 - p."""
    g4, y4 = _nchw(g, y, x_shape, w2.shape[0], k, ph, pw)
    return winograd_lanes.input_grad(_filters(w2, x_shape[1], k), g4, x_shape, ph, pw, y4)


def conv_weight_grad(g, x, k, ph, pw, y=None, need_db=False):
    """conv.conv_weight_grad for a k x k stride-1 layer: g (N, O, Ho*Wo) (where y > 0, with y), x (N, C, H, W)
    -> (dw (O, k k C), db (O,) or None)."""
    x = np.ascontiguousarray(x)
    O = g.shape[1]
    g4, y4 = _nchw(g, y, x.shape, O, k, ph, pw)
    dw, db = winograd_lanes.weight_grad(g4, x, ph, pw, y4, need_db)
    return dw.reshape(O, -1), db


def conv_backward(g, x, w2, k, ph, pw, y=None, need_db=False):
    """(dx, dw (O, k k C), db or None) of a k x k stride-1 layer, the two gradients sharing one padded copy of g
    (where y > 0, with y)."""
    x = np.ascontiguousarray(x)
    O = w2.shape[0]
    g4, y4 = _nchw(g, y, x.shape, O, k, ph, pw)
    dx, dw, db = winograd_lanes.backward(g4, x, _filters(w2, x.shape[1], k), y4, ph, pw, need_db)
    return dx, dw.reshape(O, -1), db
