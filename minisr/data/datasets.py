"""Benchmark and training image sets.

Benchmarks follow the EDSR / BasicSR layout::

    <root>/Set5/HR/baby.png
    <root>/Set5/LR_bicubic/X2/babyx2.png      = imresize(modcrop(HR, 2), 1/2), MATLAB bicubic

A dataset is a folder, or a name (``Set5``) looked up under a data root: the ``data_root`` argument
(``--data-root``), or else the ``MINISR_DATA`` environment variable. A folder without ``LR_bicubic/X{s}``
(only ``HR/``, or just images) gets its LR images made with :func:`minisr.data.imresize`, which reproduces
the shipped ones exactly.

With nothing downloaded, :func:`default_split` gives a small training / validation set made of the natural
photographs that scikit-image ships inside its package.
"""

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minisr.data.imresize import imresize, modcrop
from minisr.data.io import IMAGE_EXTENSIONS, list_images, read_image

ENV_VAR = "MINISR_DATA"

# scikit-image's bundled natural photographs (synthetic images such as chessboard, logo, phantom, color,
# horse and the microscopy / text images are left out). Validation: one colour and one greyscale photo.
DEFAULT_TRAIN = ("astronaut", "brick", "camera", "coffee", "grass", "gravel", "moon",
                 "motorcycle_left", "motorcycle_right")
DEFAULT_VALIDATION = ("chelsea", "coins")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset name or folder was not found; the message says where we looked and how to configure it."""


class BenchmarkImage(NamedTuple):
    """One test image: ``hr`` is modcropped to the scale, ``lr`` is its bicubic LR (both uint8)."""

    name: str
    hr: np.ndarray
    lr: np.ndarray


def resolve_dataset(name_or_dir, data_root=None) -> Path:
    """The folder of a dataset given as a path, or as a name under ``data_root`` (else ``$MINISR_DATA``).

    Names match sub-folders of the root exactly, or else ignoring case (``set5`` finds ``Set5``).
    """
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if data_root is not None:
        root, source = Path(data_root).expanduser(), "--data-root / data_root"
    elif os.environ.get(ENV_VAR):
        root, source = Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        root, source = None, None

    name = str(name_or_dir)
    if root is not None and len(path.parts) == 1:
        if (root / name).is_dir():
            return root / name
        if root.is_dir():
            matches = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
            if len(matches) == 1:
                return matches[0]
    if root is not None:
        where = f"not a folder, and not under the data root {root} (from {source})"
    else:
        where = f"not a folder, and no data root is set (neither --data-root nor ${ENV_VAR})"
    raise DatasetNotFoundError(
        f"dataset {name!r} not found: {where}. Pass a folder of images (or one with HR/ and "
        f"LR_bicubic/X<s>/), or set {ENV_VAR} / --data-root to the folder that holds {name}/.")


def _hr_folder(folder: Path) -> Path:
    return folder / "HR" if (folder / "HR").is_dir() else folder


def _find_lr(folder: Path, name: str, scale: int):
    lr_dir = folder / "LR_bicubic" / f"X{scale}"
    for ext in IMAGE_EXTENSIONS:
        for candidate in (lr_dir / f"{name}x{scale}{ext}", lr_dir / f"{name}{ext}"):
            if candidate.is_file():
                return candidate
    return None


def benchmark_files(name_or_dir, data_root=None) -> list[Path]:
    """Every image file of a benchmark folder (HR and LR), e.g. to protect them from being overwritten."""
    folder = resolve_dataset(name_or_dir, data_root)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_benchmark(name_or_dir, scale: int, data_root=None) -> list[BenchmarkImage]:
    """Load a benchmark at one scale: ``[(name, hr, lr), ...]`` with ``hr = modcrop(HR, scale)``, all uint8.

    ``lr`` comes from ``LR_bicubic/X{scale}/{name}x{scale}.png`` when the folder has it, else from
    ``imresize(hr, 1 / scale)``.
    """
    folder = resolve_dataset(name_or_dir, data_root)
    files = list_images(_hr_folder(folder))
    if not files:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {_hr_folder(folder)}")
    items = []
    for path in files:
        hr = modcrop(read_image(path), scale)
        lr_path = _find_lr(folder, path.stem, scale)
        if lr_path is None:
            lr = imresize(hr, 1 / scale)
        else:
            lr = read_image(lr_path)
            expected = (hr.shape[0] // scale, hr.shape[1] // scale) + hr.shape[2:]
            if lr.shape != expected:
                raise ValueError(f"{lr_path} has shape {lr.shape}, expected {expected} for {path} x{scale}")
        items.append(BenchmarkImage(path.stem, hr, lr))
    return items


def as_benchmark(images, scale: int) -> list[BenchmarkImage]:
    """Benchmark items from images in memory: a dict ``{name: hr}``, or a list of HR arrays, of ``(name, hr)``
    pairs or of ``(name, hr, lr)`` triples. HR images are modcropped; missing LR images made by imresize."""
    items = images.items() if isinstance(images, dict) else images
    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            name, hr, lr = f"image{i:03d}", item, None
        elif len(item) == 2:
            (name, hr), lr = item, None
        else:
            name, hr, lr = item
        hr = modcrop(np.asarray(hr), scale)
        out.append(BenchmarkImage(str(name), hr, imresize(hr, 1 / scale) if lr is None else np.asarray(lr)))
    return out


def load_images(folder) -> list[np.ndarray]:
    """Every image in a folder (e.g. T91) as uint8 arrays, sorted by file name."""
    files = list_images(folder)
    if not files:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return [read_image(p) for p in files]


def skimage_data_dir() -> Path:
    """The folder of sample images inside the installed scikit-image package."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def default_images() -> dict[str, np.ndarray]:
    """The embedded default images, ``{name: uint8 array}``, train names first, then validation names."""
    folder = skimage_data_dir()
    images = {}
    for name in DEFAULT_TRAIN + DEFAULT_VALIDATION:
        path = folder / f"{name}.png"
        if path.is_file():  # tolerate a scikit-image that lacks one of them
            images[name] = read_image(path)
    if not all(name in images for name in DEFAULT_VALIDATION) or len(images) < 4:
        raise DatasetNotFoundError(f"scikit-image's sample photos are missing from {folder}")
    return images


def default_split() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(train, validation)`` lists of uint8 images, named in ``DEFAULT_TRAIN`` / ``DEFAULT_VALIDATION``."""
    images = default_images()
    return ([images[n] for n in DEFAULT_TRAIN if n in images], [images[n] for n in DEFAULT_VALIDATION])
