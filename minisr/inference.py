"""Running a trained model on whole images (tiled, Y or RGB, repeated passes): now in :mod:`minisr.upscalers`,
the one home of every upscaler. These names stay importable from here.
"""

from .upscalers import Upscaler, forward_tiled, make_upscaler, receptive_radius  # noqa: F401

__all__ = ["Upscaler", "forward_tiled", "make_upscaler", "receptive_radius"]
