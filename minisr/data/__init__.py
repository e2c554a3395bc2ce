"""Images, MATLAB-exact bicubic degradation, colour conversion, benchmark and training data.

    read_image, write_image, ImageReadError, list_images     io.py
    imresize, modcrop, round_uint8                            imresize.py  (MATLAB imresize, bit-exact)
    degrade                                                   degrade.py   (blur + imresize + noise)
    rgb_to_ycbcr, ycbcr_to_rgb, rgb_to_y                      color.py     (MATLAB BT.601)
    resolve_dataset, load_benchmark, load_images,
    default_images, default_split                             datasets.py
    PatchDataset                                              patches.py
"""

from minisr.data.color import rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from minisr.data.datasets import (
    DEFAULT_TRAIN,
    DEFAULT_VALIDATION,
    ENV_VAR,
    BenchmarkImage,
    DatasetNotFoundError,
    as_benchmark,
    benchmark_files,
    default_images,
    default_split,
    load_benchmark,
    load_images,
    resolve_dataset,
)
from minisr.data.degrade import degrade
from minisr.data.imresize import imresize, modcrop, round_uint8
from minisr.data.io import IMAGE_EXTENSIONS, ImageReadError, ImageTooLargeError, list_images, read_image, write_image
from minisr.data.patches import PatchDataset, dihedral

__all__ = [
    "BenchmarkImage", "DEFAULT_TRAIN", "DEFAULT_VALIDATION", "DatasetNotFoundError", "ENV_VAR",
    "IMAGE_EXTENSIONS", "ImageReadError", "PatchDataset", "as_benchmark", "benchmark_files", "default_images",
    "default_split", "degrade", "dihedral", "imresize", "list_images", "load_benchmark", "load_images",
    "modcrop", "read_image", "resolve_dataset", "rgb_to_y", "rgb_to_ycbcr", "round_uint8", "write_image",
    "ycbcr_to_rgb",
]
__all__ += ["ImageTooLargeError"]
