"""MATLAB's ``imresize(img, scale, 'bicubic')``, bit for bit, in NumPy.

The SR benchmarks (Set5, Set14, ...) were made with MATLAB: ``LR = imresize(modcrop(HR, s), 1/s, 'bicubic')``.
What MATLAB does, and what this module reproduces (checked on all 57 LR images of Set5/Set14 x2/x3/x4):

* Kernel: Keys' cubic with a = -0.5:
  ``k(x) = 1.5|x|^3 - 2.5|x|^2 + 1`` for ``|x| <= 1``,
  ``k(x) = -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2`` for ``1 < |x| <= 2``, else 0.
* Antialiasing when shrinking (scale ``c < 1``): the kernel is stretched, ``h(x) = c k(c x)``, so its
  support grows from 4 to ``4 / c`` input pixels.
* Output pixel ``x`` (1-based) sits at input coordinate ``u = x / c + (1 - 1/c) / 2``. It takes the
  ``P = ceil(width) + 2`` input pixels ``j`` from ``floor(u - width / 2)`` on, with weights ``h(u - j)``
  normalised to sum 1.
* Borders: indices outside the image are clamped to the first / last pixel (the edge pixel is replicated).
  Ports that mirror instead (``[1..n, n..1]``, as BasicSR's ``matlab_functions.imresize`` does) miss the
  first and last rows and columns of the benchmark LR images by up to 11 grey levels.
* One dimension at a time, the one with the smaller scale first (rows first when both are equal).
* uint8 in, uint8 out: the result of *each* one-dimensional pass is rounded half away from zero and clipped
  to [0, 255] before the next pass (MATLAB's resizer works in the class of its input). Rounding only once at
  the end, or rounding halves to even, misses hundreds of thousands resp. thousands of the 4.6 M pixels.
* Output size: ``ceil(c * n)`` per dimension.

Float input gives float64 output with no rounding or clipping at all (bicubic overshoots slightly outside the
input range): that is the training path.
"""

import math

import numpy as np


def cubic(x):
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    inner = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return inner + outer


def contributions(in_length: int, out_length: int, scale: float):
    """Weights and 0-based source indices of a 1-D resize, as MATLAB's ``contributions`` computes them.

    Returns ``(weights, indices)``, both of shape ``(out_length, P)``: output pixel ``i`` is
    ``sum_p weights[i, p] * input[indices[i, p]]``.
    """
    kernel_width = 4.0
    if scale < 1:  # antialiasing: stretch the kernel by 1 / scale
        def kernel(x):
            return scale * cubic(scale * x)
        kernel_width /= scale
    else:
        kernel = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate of each output pixel
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]  # 1-based, may fall outside [1, in_length]
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Clamp out-of-range indices to the image (the edge pixels are replicated), and go 1-based -> 0-based.
    indices = np.clip(indices.astype(np.int64) - 1, 0, in_length - 1)
    keep = np.any(weights != 0, axis=0)  # drop taps that are zero for every output pixel
    return weights[:, keep], indices[:, keep]


def round_uint8(x):
    """Round half away from zero and clip to [0, 255], as MATLAB's conversion to uint8 does."""
    x = np.clip(x, 0, 255)
    r = np.floor(x)
    r += (x - r) >= 0.5  # exact: x - floor(x) has no rounding error, unlike floor(x + 0.5)
    return r.astype(np.uint8)


def _resize_axis(img, axis: int, out_length: int, scale: float):
    """Resize one axis of a float64 array; the taps are summed in order, like MATLAB's resizer."""
    weights, indices = contributions(img.shape[axis], out_length, scale)
    src = np.moveaxis(img, axis, 0)
    shape = (out_length,) + (1,) * (src.ndim - 1)
    out = np.zeros((out_length,) + src.shape[1:], dtype=np.float64)
    band = max(1, (64 << 20) // max(out[:, :1].nbytes, 1))  # ~64 MB of temporaries at a time, not 2 whole outputs
    for c0 in range(0, max(src.shape[1], 1) if src.ndim > 1 else 1, band):  # (elementwise: the same sums)
        part = (slice(None), slice(c0, c0 + band)) if src.ndim > 1 else (slice(None),)
        for p in range(weights.shape[1]):
            out[part] += weights[:, p].reshape(shape) * src[(indices[:, p],) + part[1:]]
    return np.moveaxis(out, 0, axis)


def resized_shape(in_shape, scale) -> tuple[int, int]:
    """The (rows, cols) that :func:`imresize` gives an image of ``in_shape`` at ``scale``: ``ceil(scale * size)``."""
    scales = _pair(scale)
    return math.ceil(scales[0] * in_shape[0]), math.ceil(scales[1] * in_shape[1])


def imresize(img, scale=None, output_shape=None):
    """Resize an image like MATLAB's ``imresize(img, scale, 'bicubic')`` (antialiased when shrinking).

    Args:
        img: HxW or HxWxC array. uint8 gives uint8 (rounded as MATLAB does); any other dtype is computed
            and returned as float64, unclipped.
        scale: a number, or a pair (row scale, column scale). The output size is ``ceil(scale * size)``.
        output_shape: (rows, cols) instead of ``scale``; the scales are then ``rows / H`` and ``cols / W``.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HxW or HxWxC image, got shape {img.shape}")
    in_shape = img.shape[:2]
    if output_shape is not None:
        out_shape = (int(output_shape[0]), int(output_shape[1]))
        scales = (out_shape[0] / in_shape[0], out_shape[1] / in_shape[1]) if scale is None else _pair(scale)
    elif scale is not None:
        scales, out_shape = _pair(scale), resized_shape(in_shape, scale)
    else:
        raise ValueError("imresize needs a scale or an output_shape")
    if min(scales) <= 0 or min(out_shape) <= 0 or min(in_shape) <= 0:
        raise ValueError(f"imresize: invalid scale {scales} / output shape {out_shape} for input {in_shape}")

    is_uint8 = img.dtype == np.uint8
    out = img.astype(np.float64)
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)  # smaller scale first, rows first on a tie
    for axis in order:
        out = _resize_axis(out, axis, out_shape[axis], scales[axis])
        if is_uint8:
            out = round_uint8(out).astype(np.float64)
    return out.astype(np.uint8) if is_uint8 else out


def _pair(scale):
    if np.isscalar(scale):
        return (float(scale), float(scale))
    rows, cols = scale
    return (float(rows), float(cols))


def modcrop(img, scale: int):
    """Keep the top-left ``floor(H / s) * s`` by ``floor(W / s) * s`` pixels, so that H and W divide by s."""
    img = np.asarray(img)
    h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
    return img[:h, :w]
