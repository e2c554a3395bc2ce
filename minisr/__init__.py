"""minisr: a from-scratch CNN engine for image super-resolution.

``minisr.Tensor`` with reverse-mode autograd, ops in ``minisr.functional``, modules in ``minisr.nn``, optimizers in
``minisr.optim``; kernels from ``minisr.backends`` (NumPy reference, Numba CPU, CuPy GPU).
"""

from . import autograd, functional, nn, optim
from .backends import available_backends, get_backend, set_backend, use_backend
from .random import manual_seed
from .tensor import Tensor, enable_grad, is_grad_enabled, no_grad

__version__ = "0.1.0"

__all__ = [
    "Tensor", "no_grad", "enable_grad", "is_grad_enabled", "autograd", "functional", "nn", "optim",
    "set_backend", "get_backend", "use_backend", "available_backends", "manual_seed",
]
