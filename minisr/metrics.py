"""PSNR and SSIM as the SR papers report them.

Both take two images of the same shape with values in [0, 255] (uint8, or floats on that scale), HxW or
HxWx3. By default they compare the luminance Y (MATLAB's BT.601 ``rgb2ycbcr``, computed in floating point and
not rounded; greyscale images are used as they are), after cutting ``crop_border`` pixels off every side (the
papers cut the scale factor). ``y_channel=False`` compares all channels (RGB).

PSNR = 10 log10(255^2 / MSE).

SSIM is Wang et al.'s ``ssim_index`` (IEEE TIP 2004): with an 11x11 Gaussian window w (sigma 1.5, normalised
to sum 1) and 'valid' filtering (only the positions where the window fits inside the image),

    mu_x = w * x,  sigma_x^2 = w * x^2 - mu_x^2,  sigma_xy = w * (x y) - mu_x mu_y,
    SSIM map = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),

C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 255. SSIM is the mean of the map (then the mean over channels for RGB).
"""

import numpy as np

from minisr.data.color import rgb_to_y

DATA_RANGE = 255.0


def _prepare(a, b, crop_border: int, y_channel: bool):
    """Check the shapes, take Y if asked, cut the border; returns two float64 arrays, HxW or HxWxC."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected HxW or HxWxC images, got shape {a.shape}")
    if y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    if crop_border:
        c = int(crop_border)
        if 2 * c >= min(a.shape[:2]):
            raise ValueError(f"crop_border {c} leaves nothing of a {a.shape[0]}x{a.shape[1]} image")
        a, b = a[c:-c, c:-c], b[c:-c, c:-c]
    return a, b


def psnr(a, b, crop_border: int = 0, y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB for images on [0, 255]; ``inf`` when they are equal."""
    a, b = _prepare(a, b, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(DATA_RANGE**2 / mse))


def gaussian_window(size: int = 11, sigma: float = 1.5):
    """1-D Gaussian, normalised to sum 1; ``outer(g, g)`` is MATLAB's ``fspecial('gaussian', 11, 1.5)``."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img, g):
    """Correlate a 2-D array with the separable window ``outer(g, g)``, keeping only the 'valid' part."""
    k = len(g)
    h, w = img.shape[0] - k + 1, img.shape[1] - k + 1
    rows = sum(g[i] * img[i:i + h, :] for i in range(k))
    return sum(g[j] * rows[:, j:j + w] for j in range(k))


def _ssim_2d(x, y):
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    g = gaussian_window()
    if min(x.shape) < len(g):
        raise ValueError(f"SSIM needs at least {len(g)}x{len(g)} pixels, got {x.shape[0]}x{x.shape[1]}")
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x**2
    var_y = _filter_valid(y * y, g) - mu_y**2
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def ssim(a, b, crop_border: int = 0, y_channel: bool = True) -> float:
    """Structural similarity (Wang et al.'s ``ssim_index``) of images on [0, 255]; RGB: mean over channels."""
    a, b = _prepare(a, b, crop_border, y_channel)
    if a.ndim == 2:
        return _ssim_2d(a, b)
    return float(np.mean([_ssim_2d(a[..., c], b[..., c]) for c in range(a.shape[-1])]))
