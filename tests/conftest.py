"""Shared fixtures. The benchmark images come from MINISR_DATA, or from ../shared/datasets beside the
checkout."""

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_root():
    env = os.environ.get("MINISR_DATA")
    if env:
        return Path(env)
    guess = REPO.parent / "shared" / "datasets"
    return guess if guess.is_dir() else None


@pytest.fixture(scope="session")
def data_root():
    """Root of Set5/Set14/T91 in the EDSR/BasicSR layout; tests that need it skip when it is absent."""
    root = _data_root()
    if root is None or not (root / "Set5").is_dir():
        pytest.skip("benchmark datasets not found: set MINISR_DATA")
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def cuda():
    """The "cuda" device for the GPU tests: CuPy on a real GPU; without one (or with MINISR_CUDA_EMULATE=1) the CUDA
    emulator of tests/cuda_emu, which runs the unchanged kernels/*.cu and cupy_backend on the CPU. Yields "device" or
    "emulator"; skips only without a GPU when MINISR_CUDA_EMULATE=0 or the emulator cannot run (no Linux, no g++)."""
    import cuda_emu

    mode = cuda_emu.mode()
    if mode == "none":
        pytest.skip("no GPU, and " + (cuda_emu.unavailable() or "MINISR_CUDA_EMULATE=0 forbids the CUDA emulator"))
    if mode == "device":
        yield "device"
        return
    with cuda_emu.emulated():
        yield "emulator"


def write_tiny_training_images(folder, shapes, seed=5):
    """PNG training images for the CLI tests: uint8 noise of each (h, w[, c]) in ``shapes`` enlarged x4 by bicubic
    (smooth enough to train on, small enough to be fast); returns ``folder``."""
    from minisr.data import imresize
    from minisr.data.io import write_image

    rng = np.random.default_rng(seed)
    for i, shape in enumerate(shapes):
        noise = rng.integers(0, 256, size=shape).astype(np.float64)
        write_image(folder / f"im{i}.png", np.clip(imresize(noise, 4), 0, 255).astype(np.uint8))
    return folder

