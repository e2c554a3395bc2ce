"""Reading and writing images with imageio.

:func:`read_image` always returns uint8, HxW (greyscale) or HxWx3 (RGB), whatever the file holds:

* PNG, BMP, JPEG, TIFF (anything imageio reads); for multi-frame files the first frame.
* Palette images: their colours (RGB). CMYK (and YCbCr, LAB, HSV) images: converted to RGB by Pillow.
* Greyscale + alpha and RGBA: the alpha channel is dropped (a warning says so, once per process): the colour
  values are kept as they are, not composited over a background.
* 16-bit (and other integer types wider than 8 bits): ``round(x / 257)``, i.e. [0, 65535] -> [0, 255] as
  MATLAB's ``im2uint8`` does; negative values or values over 65535 are refused. Float images are taken as [0, 1]
  when their maximum is at most 1, else [0, 255]; NaN or infinite pixels, and values outside [0, 255], are refused.

A file that is missing, empty, truncated or not an image raises :class:`ImageReadError` naming the file and saying
what it looks like (text, ZIP, PDF, a video, ...). The image size is read from the file's header before decoding:
over ``MAX_PIXELS`` (100 megapixels; ``MINISR_MAX_PIXELS`` or ``read_image(max_pixels=...)`` change it) is refused
before any pixel is decoded, so a small file declaring a huge image (a decompression bomb) costs nothing.
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


#: the largest image read_image decodes, in pixels (width x height); the environment's MINISR_MAX_PIXELS wins
MAX_PIXELS = 100_000_000


class ImageReadError(ValueError):
    """An image file could not be read: missing, empty, truncated, not an image, too large, or with invalid values."""


class ImageTooLargeError(ImageReadError):
    """The file declares more pixels than the limit (checked from its header, before decoding)."""


def pixel_limit() -> int:
    """The pixel limit in force: ``MINISR_MAX_PIXELS`` if set (a positive integer), else ``MAX_PIXELS``."""
    env = os.environ.get("MINISR_MAX_PIXELS")
    if env is None:
        return MAX_PIXELS
    try:
        value = int(float(env))
    except ValueError:
        value = 0
    if value < 1:
        raise ImageReadError(f"MINISR_MAX_PIXELS={env!r}: give a positive number of pixels, e.g. 200000000")
    return value


# file signatures: images imageio reads, and what other files are
_IMAGE_MAGIC = [(b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
                (b"MM\x00*", "TIFF"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF")]
_OTHER_MAGIC = [(b"PK\x03\x04", "a ZIP archive (or .npz, .docx, ...)"), (b"PK\x05\x06", "an empty ZIP archive"),
                (b"%PDF", "a PDF document"), (b"\x1f\x8b", "gzip-compressed data"),
                (b"\x93NUMPY", "a NumPy .npy array"),
                (b"7z\xbc\xaf", "a 7-Zip archive"), (b"\x7fELF", "an executable (ELF)"), (b"BZh", "bzip2 data"),
                (b"\x1aE\xdf\xa3", "a Matroska/WebM video (use minisr.upscale on videos: .mkv, .webm)"),
                (b"OggS", "an Ogg media file"), (b"ID3", "an MP3 audio file"), (b"RIFF", "a RIFF file (WAV, AVI, ...)")]


def describe_file(path) -> str:
    """What a file that is not a readable image looks like, from its first bytes: for error messages."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if size == 0:
        return "an empty file (0 bytes)"
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video or HEIF image (use minisr.upscale on videos: .mp4, .mov)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, what in _IMAGE_MAGIC:
        if head.startswith(magic):
            return f"a damaged or truncated {what} image"
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # a multi-byte character cut at 512 bytes is still text
        text = head[:err.start].decode("utf-8") if err.start > len(head) - 4 else None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        low = text.lstrip().lower()
        kind = ("HTML" if low.startswith(("<!doctype html", "<html")) else "XML/SVG" if low.startswith("<")
                else "JSON" if low[:1] in "{[" else "text")
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"{kind}, not an image" + (f" (starts with {first!r})" if first else "")
    return f"not an image format we know (first bytes {head[:8].hex(' ')})"


def _header(path: Path, limit: int):
    """``(width, height, Pillow mode)`` from the file's header without decoding it, or None if Pillow does not know
    the format (imageio's other plugins may still read it)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.size[0], im.size[1], im.mode
    except Image.DecompressionBombError as err:  # Pillow's own limit (2 x its MAX_IMAGE_PIXELS), from the header
        import re

        n = re.search(r"\((\d+) pixels\)", str(err))
        declared = f"{int(n.group(1)):,} pixels" if n else "a size"
        raise ImageTooLargeError(f"cannot read image {path}: it declares {declared}, over the limit of {limit:,} "
                                 "(MINISR_MAX_PIXELS raises it)") from None
    except Exception:
        return None


def list_images(folder) -> list[Path]:
    """The image files (by extension, see ``IMAGE_EXTENSIONS``) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image(path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as uint8, HxW or HxWx3 (the module docstring lists the conversions).

    ``max_pixels``: refuse (before decoding) an image declaring more pixels (default :func:`pixel_limit`)."""
    import imageio.v3 as iio
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"cannot read image {path}: it is a folder")
    if not path.is_file():
        raise ImageReadError(f"cannot read image {path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"cannot read image {path}: empty file (0 bytes)")
    limit = pixel_limit() if max_pixels is None else int(max_pixels)
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # Pillow's own bomb check must not undo a limit raised on purpose
    header = _header(path, limit)
    if header is None:  # not a format Pillow knows: an image imageio's other plugins read, or no image at all
        what = describe_file(path)
        if not what.startswith(("a damaged", "a WebP", "not an image format we know")):
            raise ImageReadError(f"cannot read image {path}: {what}")
        try:
            shape = iio.improps(path, index=0).shape
        except Exception:
            raise ImageReadError(f"cannot read image {path}: {what}") from None
        if len(shape) < 2 or (0 in shape[:2] and not what.startswith("a damaged")):
            raise ImageReadError(f"cannot read image {path}: {what}")
        header = (shape[1], shape[0], None)
    w, h, mode = header  # (from Pillow, or from imageio above)
    if w * h > limit:
        raise ImageTooLargeError(f"cannot read image {path}: it declares {w}x{h} = {w * h:,} pixels, over the "
                                 f"limit of {limit:,} (MINISR_MAX_PIXELS raises it)")
    if w * h == 0:
        raise ImageReadError(f"cannot read image {path}: it declares an empty {w}x{h} image")
    try:
        with warnings.catch_warnings():  # imageio's fallback plugins warn about their own deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size was checked above
            if mode in ("CMYK", "YCbCr", "LAB", "HSV"):  # Pillow's colour conversion
                with Image.open(path) as im:
                    img = np.asarray(im.convert("RGB"))
            else:
                img = np.asarray(iio.imread(path, index=0))
    except Exception as err:  # imageio / Pillow raise OSError, ValueError, SyntaxError, ... by the damage
        what = describe_file(path)
        detail = "" if "pip install" in str(err) else f" ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        raise ImageReadError(f"cannot read image {path}: {what}{detail}") from err
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
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise ImageReadError(f"{name}: not a greyscale or RGB image (array shape {img.shape})")
    if min(img.shape[:2]) == 0:
        raise ImageReadError(f"{name}: an empty image ({img.shape[1]}x{img.shape[0]} pixels)")

    if img.dtype == np.uint8:
        return img
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    if np.issubdtype(img.dtype, np.integer):  # 16-bit and wider: 0..65535 -> 0..255
        lo, hi = int(img.min()), int(img.max())
        if lo < 0 or hi > 65535:
            raise ImageReadError(f"{name}: {img.dtype} pixel values from {lo} to {hi}; integer images must lie in "
                                 "0..255 (8-bit) or 0..65535 (16-bit)")
        img = img / 257.0
    elif np.issubdtype(img.dtype, np.floating):
        img = img.astype(np.float64)
        bad = ~np.isfinite(img)
        if bad.any():
            n_nan, n_inf = int(np.isnan(img).sum()), int(np.isinf(img).sum())
            what = " and ".join(f"{n} {k}" for n, k in ((n_nan, "NaN"), (n_inf, "infinite")) if n)
            raise ImageReadError(f"{name}: {what} pixel value(s) in a float image: not a valid image")
        lo, hi = float(img.min()), float(img.max())
        if lo < -1e-6 or hi > 255.0 + 1e-6:
            raise ImageReadError(f"{name}: float pixel values from {lo:g} to {hi:g}; float images must lie in "
                                 "[0, 1] or [0, 255]")
        if hi <= 1.0:
            img = img * 255.0
    else:
        raise ImageReadError(f"{name}: unsupported pixel type {img.dtype}")
    return np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)


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
