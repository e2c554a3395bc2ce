"""RGB <-> YCbCr with MATLAB's ``rgb2ycbcr`` constants (ITU-R BT.601, "studio swing").

For R, G, B in [0, 255]:

    Y  =  16 + ( 65.481 R + 128.553 G +  24.966 B) / 255      (Y in [16, 235])
    Cb = 128 + (-37.797 R -  74.203 G + 112.000 B) / 255      (Cb, Cr in [16, 240])
    Cr = 128 + (112.000 R -  93.786 G -  18.214 B) / 255

Convention: the functions take the value scale of their input from ``data_range``: 255 (the default) for
uint8 images or floats in [0, 255], 1.0 for floats in [0, 1]. The result is float64 on the same scale (so
with ``data_range=1`` Y lies in [16/255, 235/255]) and is neither rounded nor clipped. The SR papers compute
PSNR/SSIM on this unrounded Y.
"""

import numpy as np

# Rows give Y, Cb, Cr from R, G, B in [0, 1]; the offsets are on the [0, 255] scale.
RGB_TO_YCBCR = np.array([
    [65.481, 128.553, 24.966],
    [-37.797, -74.203, 112.0],
    [112.0, -93.786, -18.214],
])
YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


def _check_rgb(img):
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    return img


def rgb_to_ycbcr(img, data_range: float = 255.0):
    """HxWx3 RGB on [0, data_range] -> float64 YCbCr on the same scale (MATLAB ``rgb2ycbcr``, unrounded)."""
    rgb = _check_rgb(img).astype(np.float64) / data_range  # in [0, 1]
    ycbcr = rgb @ RGB_TO_YCBCR.T + YCBCR_OFFSET  # on [0, 255]
    return ycbcr * (data_range / 255.0)


def ycbcr_to_rgb(img, data_range: float = 255.0):
    """Inverse of :func:`rgb_to_ycbcr`: YCbCr on [0, data_range] -> float64 RGB on that scale, unclipped."""
    ycbcr = _check_rgb(img).astype(np.float64) * (255.0 / data_range)  # on [0, 255]
    rgb = (ycbcr - YCBCR_OFFSET) @ np.linalg.inv(RGB_TO_YCBCR).T  # in [0, 1]
    return rgb * data_range


def rgb_to_y(img, data_range: float = 255.0):
    """The Y channel of an RGB image as a float64 HxW array on [0, data_range].

    A greyscale HxW (or HxWx1) image is returned as it is (as float64): it already is the luminance, and
    that is how the benchmarks treat greyscale images such as Set14's bridge.
    """
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return img.astype(np.float64)
    rgb = _check_rgb(img).astype(np.float64) * (255.0 / data_range)
    y = 16.0 + rgb @ RGB_TO_YCBCR[0] / 255.0
    return y * (data_range / 255.0)
