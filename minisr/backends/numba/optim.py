"""The optimizers' parameter updates, in place: SGD (momentum, dampening, Nesterov, weight decay) and Adam."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import numpy_backend as _reference
from .common import _c, _inplace_ok, _jit


@njit(**_jit)
def _sgd(p, g, buf, lr, momentum, dampening, wd, nesterov, first, use_buf):
    for k in prange(p.size):
        d = g[k] + wd * p[k]
        if use_buf:
            if first:
                buf[k] = d
            else:
                buf[k] = momentum * buf[k] + (1 - dampening) * d
            d = d + momentum * buf[k] if nesterov else buf[k]
        p[k] -= lr * d


def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    if not _inplace_ok(p, buf):
        return _reference.sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)
    t = p.dtype.type
    use_buf = bool(momentum)
    flat_buf = buf.reshape(-1) if use_buf else np.empty(1, dtype=p.dtype)
    _sgd(p.reshape(-1), _c(g).reshape(-1), flat_buf, t(lr), t(momentum), t(dampening), t(weight_decay),
         bool(nesterov), bool(first), use_buf)


@njit(**_jit)
def _adam(p, g, m, v, step_size, b1, b2, eps, sqrt_bc2, wd):
    for k in prange(p.size):
        d = g[k] + wd * p[k]
        m[k] = b1 * m[k] + (1 - b1) * d
        v[k] = b2 * v[k] + (1 - b2) * d * d
        p[k] -= step_size * m[k] / (np.sqrt(v[k]) / sqrt_bc2 + eps)


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    if not _inplace_ok(p, m, v):
        return _reference.adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay)
    t = p.dtype.type
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    _adam(p.reshape(-1), _c(g).reshape(-1), m.reshape(-1), v.reshape(-1), t(lr / bc1), t(beta1), t(beta2),
          t(eps), t(bc2 ** 0.5), t(weight_decay))
