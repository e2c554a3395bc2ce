"""Eager tensors with reverse-mode automatic differentiation.

A :class:`Tensor` holds a backend array (``.data``: NumPy on the CPU, CuPy on a GPU) and, when it was made by
an op on tensors that require gradients, the op's *context*: its parent tensors and a ``backward`` function
that maps the gradient of the output to the gradients of the parents. ``loss.backward()`` visits the graph in
reverse topological order and accumulates ``.grad`` on the leaves (the parameters), as PyTorch does.

Every op is written in :mod:`minisr.functional` as one function whose forward and backward sit side by side.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import numpy as np

from .backends import get_array_module, is_cupy_array

_FLOATS = (np.float32, np.float64)
_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def no_grad():
    """Inside this block ops record no graph (inference, optimizer updates)."""
    prev = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = prev


@contextlib.contextmanager
def enable_grad():
    prev = is_grad_enabled()
    _state.grad_enabled = True
    try:
        yield
    finally:
        _state.grad_enabled = prev


# ------------------------------------------------------------------------------------------- storage versions
# In-place writes (relu(inplace=True), add(inplace=True), optimizer steps) bump a version counter that belongs to
# the *storage* -- the array that owns the memory -- so every tensor viewing it (reshape, slices, detach(),
# Tensor(t.data)) sees the same count, as PyTorch's storage version. A backward that reads saved data compares
# the count it saw at the forward (functional._saved). Counts live here, keyed by the id of the owning object
# (NumPy/CuPy views point at it through .base), and are dropped when it dies.
_versions: dict[int, int] = {}


def storage_of(arr):
    """The object that owns arr's memory: the end of its .base chain (arr itself when it owns it)."""
    while True:
        base = getattr(arr, "base", None)
        if base is None:
            return arr
        arr = base


def storage_version(arr) -> int:
    """How many in-place writes arr's storage has had."""
    return _versions.get(id(storage_of(arr)), 0)


def _set_storage_version(arr, value: int) -> None:
    owner = storage_of(arr)
    key = id(owner)
    if key not in _versions:
        try:
            weakref.finalize(owner, _versions.pop, key, None)
        except TypeError:  # (an owner that takes no weak reference: its count stays, a few bytes)
            pass
    _versions[key] = value


def bump_version(arr) -> int:
    """Record an in-place write into arr's storage (seen by every tensor viewing it); returns the new count."""
    v = storage_version(arr) + 1
    _set_storage_version(arr, v)
    return v


def _as_array(data, dtype=None):
    """Validate and convert user data: float32 / float64 arrays are kept, Python numbers become float32."""
    if isinstance(data, Tensor):
        data = data.data
    if is_cupy_array(data):
        arr = data
    elif isinstance(data, (np.ndarray, np.generic)):  # NumPy scalars keep their dtype (np.float64 too)
        arr = np.asarray(data)
    elif isinstance(data, (int, float, list, tuple)) and not isinstance(data, bool):
        arr = np.asarray(data, dtype=dtype or np.float32)
    else:
        raise TypeError("Tensor data must be a float array, a number or a list of numbers, "
                        f"got {type(data).__name__}")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if arr.dtype.type not in _FLOATS:
        raise TypeError(f"minisr tensors hold float32 or float64 data, got {arr.dtype}; "
                        "convert first, e.g. x.astype(np.float32) (images: divide uint8 by 255)")
    return arr


class Tensor:
    """An n-dimensional float array that can record the ops applied to it.

    ``Tensor(data, requires_grad=False, dtype=None)``: data is a float32/float64 NumPy (or CuPy) array, a
    number or a nested list (made float32). Integer and boolean arrays are refused, so a uint8 image is never
    silently used.
    """

    __array_priority__ = 1000  # ndarray (op) Tensor defers to Tensor's reflected operators

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None  # (parents, backward_fn, op_name) for op outputs that need gradients
        self._seen = storage_version(self.data)  # the storage's version when this tensor's values were made
        self._view_of = None  # the tensor whose storage this one views, for view-making ops (reshape, getitem)
        self.name = None  # parameters get their module path here (used by graph views)

    # --------------------------------------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def device(self) -> str:
        return "cuda" if is_cupy_array(self.data) else "cpu"

    @property
    def _version(self) -> int:
        """The version of the storage (bumped by in-place writes through any tensor viewing it)."""
        return storage_version(self.data)

    @_version.setter
    def _version(self, value: int) -> None:  # (``t._version += 1`` records an in-place write)
        _set_storage_version(self.data, int(value))

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    @property
    def op(self) -> str:
        return self._ctx[2] if self._ctx else "leaf"

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self._ctx:
            extra += f", op={self.op}"
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device}{extra})"

    # --------------------------------------------------------------------------------------------- conversion
    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied to the host for GPU tensors)."""
        if is_cupy_array(self.data):
            return self.data.get()
        return self.data

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return float(self.numpy().reshape(()))

    def detach(self) -> Tensor:
        """A tensor sharing the data, cut from the graph."""
        return Tensor(self.data)

    def astype(self, dtype) -> Tensor:
        from . import functional as F

        return F.astype(self, dtype)

    def float(self) -> Tensor:
        return self.astype(np.float32)

    def double(self) -> Tensor:
        return self.astype(np.float64)

    def to(self, device) -> Tensor:
        """Move to ``"cpu"`` or ``"cuda"``; returns self when already there. The copy is a new leaf."""
        from .device import to_device

        data = to_device(self.data, device)
        if data is self.data:
            return self
        out = Tensor(data, requires_grad=self.requires_grad)
        out.name = self.name
        return out

    def requires_grad_(self, flag: bool = True) -> Tensor:
        self.requires_grad = flag
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # ----------------------------------------------------------------------------------------------- backward
    def backward(self, grad=None) -> None:
        """Reverse-mode sweep from this tensor: accumulate d(self)/d(leaf) * grad into every leaf's ``.grad``.

        ``grad`` defaults to 1 for a scalar; a non-scalar needs an explicit gradient of its own shape. As in
        PyTorch the graph is freed as it is consumed: call backward once per forward.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no parameter or input "
                               "with requires_grad=True took part in computing it (or it was computed "
                               "under no_grad())")
        xp = get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() without a gradient needs a scalar, got shape {self.shape}; "
                                 "reduce it (e.g. .mean()) or pass backward(grad) with that shape")
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(grad): grad has shape {tuple(grad.shape)}, "
                                 f"the tensor has {self.shape}")

        order = _topological_order(self)
        grads = {id(self): grad}
        for node in order:  # outputs before inputs
            g = grads.pop(id(node), None)
            if node._ctx is None:
                if g is not None and node.requires_grad:
                    node.grad = g.copy() if node.grad is None else _accumulate(node, g)
                continue
            if g is None:
                continue
            parents, backward_fn, op = node._ctx
            if backward_fn is None:
                raise RuntimeError(f"backward through {op!r} a second time: the graph was freed by the first "
                                   "backward(); run the forward again")
            parent_grads = backward_fn(g)
            node._ctx = (parents, None, op)  # free what only the closure kept (arrays an op made for its backward)
            for p, pg in zip(parents, parent_grads):
                if pg is None or not p.requires_grad:
                    continue
                if tuple(pg.shape) != p.shape:
                    raise RuntimeError(f"internal error: {op} backward gave a gradient of shape "
                                       f"{tuple(pg.shape)} for an input of shape {p.shape}")
                k = id(p)
                grads[k] = pg if k not in grads else grads[k] + pg

    # ---------------------------------------------------------------------------------------------- operators
    def __add__(self, other):
        from . import functional as F

        return F.add(self, other)

    __radd__ = __add__

    def __sub__(self, other):
        from . import functional as F

        return F.sub(self, other)

    def __rsub__(self, other):
        from . import functional as F

        return F.add(F.neg(self), other)

    def __mul__(self, other):
        from . import functional as F

        return F.mul(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        from . import functional as F

        if isinstance(other, Tensor):
            raise TypeError("division by a tensor is not supported; divide by a number")
        return F.mul(self, 1.0 / other)

    def __neg__(self):
        from . import functional as F

        return F.neg(self)

    def __pow__(self, exponent):
        from . import functional as F

        return F.pow(self, exponent)

    def __getitem__(self, index):
        from . import functional as F

        return F.getitem(self, index)

    def sum(self, axis=None, keepdims=False):
        from . import functional as F

        return F.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        from . import functional as F

        return F.mean(self, axis, keepdims)

    def reshape(self, *shape):
        from . import functional as F

        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return F.reshape(self, shape)


def check_grad(t: Tensor, grad, what: str = "grad"):
    """A gradient for t must match it exactly: shape, dtype and device (a kernel that updates t through flat
    views would otherwise read past the gradient's end, and a sum would silently broadcast)."""
    shape = tuple(getattr(grad, "shape", ()))
    if not hasattr(grad, "dtype") or shape != t.shape:
        raise ValueError(f"{what} of shape {shape if hasattr(grad, 'shape') else type(grad).__name__} for a "
                         f"tensor of shape {t.shape}{' (' + t.name + ')' if t.name else ''}: they must match")
    if grad.dtype != t.dtype:
        raise TypeError(f"{what} has dtype {grad.dtype}, the tensor{' ' + t.name if t.name else ''} has "
                        f"{t.dtype}: they must match")
    if is_cupy_array(grad) != is_cupy_array(t.data):
        raise ValueError(f"{what} is on {'cuda' if is_cupy_array(grad) else 'cpu'}, the tensor on {t.device}")
    return grad


def _accumulate(leaf: Tensor, g):
    check_grad(leaf, leaf.grad, "the .grad already there")
    return leaf.grad + g


def graph_order(root: Tensor, grad_only: bool = True) -> list[Tensor]:
    """Every tensor the graph of ``root`` reaches (ops and leaves), each after all of its inputs: forward order.

    ``grad_only`` follows only inputs that require gradients, as ``backward()`` does. An iterative depth-first
    search, so deep nets need no recursion.
    """
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for p in reversed(node._ctx[0]):
                if id(p) not in seen and (p.requires_grad or not grad_only):
                    stack.append((p, False))
    return order


def _topological_order(root: Tensor) -> list[Tensor]:
    """Nodes reachable from root through inputs that need gradients, each before every input it was computed
    from: the order of the backward sweep."""
    return graph_order(root, grad_only=True)[::-1]


def make_result(data, parents, backward_fn, op: str) -> Tensor:
    """Wrap an op's output; record (parents, backward_fn, op) when gradients are on and a parent needs one."""
    out = Tensor.__new__(Tensor)
    if isinstance(data, np.generic):  # NumPy turns 0-d array arithmetic into scalars; keep .data an array
        data = np.asarray(data)
    out.data = data
    out.grad = None
    out.name = None
    out._seen = storage_version(data)
    out._view_of = None
    out.requires_grad = is_grad_enabled() and any(p.requires_grad for p in parents)
    if out.requires_grad:
        for p in parents:
            if p.requires_grad and p._ctx is not None and p._seen != p._version:
                _stale_input(p, op)
    out._ctx = (tuple(parents), backward_fn, op) if out.requires_grad else None
    return out


def _stale_input(p: Tensor, op: str) -> None:
    """p's storage was written in place after p was made, by an op that did not return p: p's graph no longer
    matches its values, so a gradient through it would be silently wrong."""
    v = p._version
    if getattr(p, "_inplace_at", None) == v:  # the in-place op that wrote p, wrapping its own result: fine
        p._inplace_at = None
        return
    raise RuntimeError(f"{op}: an input ({p.op} output of shape {p.shape}) was modified in place after it was "
                       "computed (through a view of its memory, or by an in-place op whose result was not used): "
                       "its graph no longer matches its values and its gradient would be wrong; use the tensor the "
                       "in-place op returned, or inplace=False")
