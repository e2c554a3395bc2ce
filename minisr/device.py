"""Devices: ``"cpu"`` (NumPy arrays) and ``"cuda"`` (CuPy arrays).

CuPy is imported only when a GPU is asked for."""

from __future__ import annotations

import numpy as np

from .backends import is_cupy_array

CUDA_HELP = ('the "cuda" device needs CuPy and an NVIDIA GPU: pip install "minisr[cuda12]" (CUDA 12) '
             'or "minisr[cuda13]" (CUDA 13)')


def normalize(device) -> str:
    name = str(device or "cpu").lower()
    if name.startswith("cuda"):
        return "cuda"
    if name != "cpu":
        raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'")
    return name


def import_cupy():
    """Import cupy with a message that says what to install when it is missing or finds no GPU."""
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(CUDA_HELP) from e
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy is installed but sees no GPU. " + CUDA_HELP)
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise RuntimeError(f"CuPy is installed but CUDA is not usable ({e}). " + CUDA_HELP) from e
    return cupy


def to_device(array, device):
    """The same values on ``device``; returns the array itself when it is already there."""
    device = normalize(device)
    if device == "cpu":
        return array.get() if is_cupy_array(array) else np.asarray(array)
    if is_cupy_array(array):
        return array
    cupy = import_cupy()
    return cupy.asarray(array)
