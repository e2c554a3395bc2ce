"""Reading and writing images with imageio.

:func:`read_image` always returns uint8, HxW (greyscale) or HxWx3 (RGB), whatever the file holds:

* PNG, BMP, JPEG, TIFF (anything imageio reads); for multi-frame files the first frame.
* Greyscale + alpha and RGBA: the alpha channel is dropped (a warning says so, once per process).
* 16-bit (and other integer types wider than 8 bits): ``round(x / 257)``, i.e. [0, 65535] -> [0, 255] as
  MATLAB's ``im2uint8`` does. Float images are taken as [0, 1] when their maximum is at most 1, else [0, 255].

A file that is missing, truncated or not an image raises :class:`ImageReadError` naming the file.
:func:`write_image` writes through a temporary file and ``os.replace``, so nobody sees half an image; it
refuses to overwrite an existing file unless asked, and a protected (input) file always.
"""

import os
import warnings
from pathlib import Path

import numpy as np

from ..atomic import create_beside

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")

_alpha_warned = False


class ImageReadError(ValueError):
    """An image file could not be read: missing, truncated, or not an image."""


def list_images(folder) -> list[Path]:
    """The image files (by extension, see ``IMAGE_EXTENSIONS``) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image(path) -> np.ndarray:
    """Read an image file as uint8, HxW or HxWx3 (the module docstring lists the conversions)."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"cannot read image {path}: no such file")
    try:
        with warnings.catch_warnings():  # imageio's fallback plugins warn about their own deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            img = np.asarray(iio.imread(path, index=0))
    except Exception as err:  # imageio / Pillow raise OSError, ValueError, SyntaxError, ... by the damage
        raise ImageReadError(f"cannot read image {path}: {err}") from err
    return to_uint8_image(img, name=str(path))


def to_uint8_image(img, name: str = "image") -> np.ndarray:
    """Convert a decoded array to uint8 HxW or HxWx3: drop alpha, scale 16-bit or float values."""
    global _alpha_warned
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (2, 4):
        if not _alpha_warned:
            warnings.warn(f"{name}: dropping the alpha channel (further alpha channels are dropped silently)",
                          stacklevel=3)
            _alpha_warned = True
        img = img[..., :-1]
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3) or min(img.shape[:2]) == 0:
        raise ImageReadError(f"{name}: not a greyscale or RGB image (array shape {img.shape})")

    if img.dtype == np.uint8:
        return img
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    if np.issubdtype(img.dtype, np.integer):  # 16-bit and wider: 0..65535 -> 0..255
        img = np.clip(img, 0, 65535) / 257.0
    elif np.issubdtype(img.dtype, np.floating):
        img = img.astype(np.float64)
        if np.nanmax(img) <= 1.0:
            img = img * 255.0
    else:
        raise ImageReadError(f"{name}: unsupported pixel type {img.dtype}")
    return np.clip(np.floor(np.nan_to_num(img) + 0.5), 0, 255).astype(np.uint8)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def write_image(path, img, *, overwrite: bool = False, protect=()) -> Path:
    """Write a uint8 HxW or HxWx3 image atomically; the format follows the extension (PNG recommended).

    Args:
        overwrite: replace an existing file at ``path`` (default: refuse with FileExistsError).
        protect: paths that must never be written, whatever ``overwrite`` says (e.g. the input images).
    Returns the path written.
    """
    import imageio.v3 as iio

    path = Path(path)
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"write_image expects a uint8 image, got {img.dtype} (see minisr.data.round_uint8)")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] in (1, 3))):
        raise ValueError(f"write_image expects an HxW or HxWx3 image, got shape {img.shape}")
    if any(_same_file(path, Path(p)) for p in protect):
        raise FileExistsError(f"refusing to write {path}: it is one of the input files")
    if path.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite {path} (pass overwrite=True)")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ValueError(f"cannot write {path}: unknown extension (use one of {', '.join(IMAGE_EXTENSIONS)})")

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_beside(path, suffix=suffix)  # the permissions of any new file, not mkstemp's 0600
    os.close(fd)
    try:
        iio.imwrite(tmp, img, extension=suffix)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
