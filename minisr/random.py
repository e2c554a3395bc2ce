"""One seeded NumPy generator for parameter initialisation: ``minisr.manual_seed(s)`` makes models
reproducible."""

from __future__ import annotations

import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the generator that Conv2d and friends draw their initial weights from."""
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def generator() -> np.random.Generator:
    return _rng
