"""Blur + downscale + noise: ``LR = imresize(HR * g_sigma, 1/s) + n``, with n ~ N(0, noise_sigma^2).

With ``blur_sigma = noise_sigma = 0`` this is exactly the bicubic benchmark degradation ``imresize(HR, 1/s)``.
"""

import numpy as np
from scipy.ndimage import gaussian_filter

from minisr.data.imresize import imresize, round_uint8


def degrade(img, scale: int, blur_sigma: float = 0.0, noise_sigma: float = 0.0, rng=None):
    """Blur with a Gaussian of std ``blur_sigma`` pixels, shrink by ``scale`` with :func:`imresize`, then add
    Gaussian noise of std ``noise_sigma``.

    ``noise_sigma`` is in the units of the image's values: grey levels for uint8 or [0, 255] floats; for
    a float image in [0, 1] pass e.g. ``10 / 255``. The Gaussian kernel is cut at 4 sigma and the borders
    are mirrored (half-sample symmetric). ``rng``: a ``numpy.random.Generator`` or a seed, for the noise.

    uint8 in gives uint8 out (rounded and clipped once, at the end); float in gives float64 out, unclipped.
    """
    img = np.asarray(img)
    if blur_sigma < 0 or noise_sigma < 0:
        raise ValueError(f"blur_sigma and noise_sigma must be >= 0, got {blur_sigma} and {noise_sigma}")
    if blur_sigma == 0 and noise_sigma == 0:
        return imresize(img, 1 / scale)  # the benchmark degradation, bit-exact for uint8

    out = img.astype(np.float64)
    if blur_sigma > 0:
        sigmas = (blur_sigma, blur_sigma) + (0,) * (out.ndim - 2)  # blur rows and columns, not channels
        out = gaussian_filter(out, sigmas, mode="reflect", truncate=4.0)
    out = imresize(out, 1 / scale)
    if noise_sigma > 0:
        rng = np.random.default_rng(rng)
        out = out + rng.normal(0.0, noise_sigma, size=out.shape)
    return round_uint8(out) if img.dtype == np.uint8 else out
