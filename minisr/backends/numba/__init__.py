"""Numba CPU kernels: the same signatures as :mod:`minisr.backends.numpy_backend`, as parallel loops (``prange``)
compiled once and cached on disk (``cache=True``). Set ``NUMBA_DISABLE_JIT=1`` to step through a kernel as plain
Python.

One idea per file:

* :mod:`.workspace` -- where big arrays come from: a cache of buffers reused step after step (``empty_cache()``
  releases it) and each worker thread's scratch arrays;
* :mod:`.threads` -- the conv worker threads (one per Numba thread, each bound to a CPU) and BLAS thread control;
* :mod:`.conv` -- ``conv_forward``, ``conv_weight_grad``, ``conv_input_grad``, choosing per layer one of four paths:
  :mod:`.conv_shifted` (stride 1, >= 8 channels: "shifted GEMMs" on the padded input through the hand-written
  kernels of :mod:`minisr.backends.shifted_kernel`: positions in the SIMD lanes, or, where the channels fill whole
  vectors, the channels -- no junk columns, sums stored straight into the output), :mod:`.conv_polyphase` (3x3
  stride 2, 8-128 channels: the shifted kernel over the input's four polyphase images), :mod:`.conv_im2col`
  (everything else: per-band im2col + NumPy's BLAS; also the ``im2col`` / ``col2im`` kernels) and
  :mod:`.winograd` (F(4x4, 3x3) and F(2x2, 5x5) in :mod:`.winograd_lanes`: all three kernels of 3x3 and 5x5
  stride-1 layers of >= 16 channels, of every such layer with ``MINISR_CONV=winograd``);
* :mod:`.bias`, :mod:`.activations`, :mod:`.batch_norm`, :mod:`.pixel_shuffle`, :mod:`.losses`, :mod:`.optim`,
  :mod:`.pooling` -- the other kernels;
* :mod:`.fork` -- what a fork()ed child does (fresh locks; the reference kernels where GNU OpenMP cannot run).

Layout and parallelism: every loop nest is parallel over its outermost independent axis (images x channels for
im2col/col2im, flat elements for elementwise kernels), so no two threads write the same element: col2im gives each
thread whole (n, c) planes of dx, so its += needs no atomics.

(OMP_WAIT_POLICY=PASSIVE for Numba's OpenMP threads is set when minisr is imported: see
minisr.backends.prefer_passive_openmp.)
"""

from __future__ import annotations

from . import fork
from .activations import (
    leaky_relu_backward,
    leaky_relu_forward,
    prelu_backward,
    prelu_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    tanh_backward,
    tanh_forward,
)
from .batch_norm import batch_norm_backward, batch_norm_forward, batch_norm_stats
from .bias import bias_add, bias_grad
from .conv import conv_forward, conv_fused_backward, conv_fused_forward, conv_input_grad, conv_weight_grad
from .conv_im2col import col2im, im2col
from .losses import l1_backward, l1_forward, mse_backward, mse_forward
from .optim import adam_update, sgd_update
from .pixel_shuffle import pixel_shuffle_backward, pixel_shuffle_forward
from .pooling import avgpool2d_backward, avgpool2d_forward, maxpool2d_argmax, maxpool2d_backward
from .workspace import empty_cache

NAME = "numba"

__all__ = [
    "NAME", "empty_cache",
    "im2col", "col2im", "conv_forward", "conv_weight_grad", "conv_input_grad",
    "bias_add", "bias_grad",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "pixel_shuffle_forward", "pixel_shuffle_backward",
    "mse_forward", "mse_backward", "l1_forward", "l1_backward",
    "sgd_update", "adam_update",
    "maxpool2d_argmax", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
    "prelu_forward", "prelu_backward", "tanh_forward", "tanh_backward", "sigmoid_forward", "sigmoid_backward",
    "conv_fused_forward", "conv_fused_backward",
    "batch_norm_stats", "batch_norm_forward", "batch_norm_backward",
]

fork.register(globals())
