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
