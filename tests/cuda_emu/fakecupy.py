"""A stand-in for the CuPy API that minisr uses, on NumPy, with kernels run by the CUDA emulator (build.py).

Installed as ``sys.modules["cupy"]`` by :func:`cuda_emu.emulated`. Its arrays (``ndarray``) are as strict as CuPy's
about the host/device split: ``numpy.asarray(device_array)`` raises (``.get()`` copies to the host), NumPy arrays
mixed into device operations raise ``TypeError``, reductions return 0-d device arrays. Every device allocation is a
NumPy buffer with guard bytes before and after it, and ``empty``/``empty_like`` memory starts as 0xFF bytes (NaN),
so a kernel that leaves an element unwritten, or writes outside its array, shows. NumPy functions not defined
here are forwarded (``cupy.foo`` runs ``numpy.foo`` on the device arrays' buffers).
"""

from __future__ import annotations

import math
import sys
import types
import weakref

import numpy as np

from . import build

GUARD = 256  # bytes before and after every device allocation
_bases: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id(buffer) -> guarded uint8 buffer


def _alloc(shape, dtype=float) -> np.ndarray:
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    base = np.full(nbytes + 2 * GUARD, 0xFF, np.uint8)
    _bases[id(base)] = base
    return base[GUARD:GUARD + nbytes].view(dtype).reshape(shape)


def _root(a: np.ndarray):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _guarded(a: np.ndarray) -> bool:
    r = _root(a)
    return _bases.get(id(r)) is r


def check_guards(a: ndarray) -> str:
    """'' if the guard bytes around ``a``'s allocation are intact, else where they were overwritten."""
    r = _root(a._a)
    if _bases.get(id(r)) is not r:
        return ""
    if (r[:GUARD] != 0xFF).any():
        return "before the start of"
    if (r[-GUARD:] != 0xFF).any():
        return "past the end of"
    return ""


def _wrap(x):
    """A NumPy result as a device value: views of device memory stay views, fresh results get a device buffer."""
    if isinstance(x, np.ndarray):
        if _guarded(x):
            return ndarray._new(x)
        out = _alloc(x.shape, x.dtype)
        out[...] = x
        return ndarray._new(out)
    if isinstance(x, np.generic):  # CuPy reductions and indexing give 0-d device arrays, not host scalars
        out = _alloc((), x.dtype)
        out[...] = x
        return ndarray._new(out)
    if isinstance(x, tuple):
        return tuple(_wrap(e) for e in x)
    if isinstance(x, list):
        return [_wrap(e) for e in x]
    return x


def _dev(x):
    """Unwrap device arrays in an argument of a device operation; NumPy (host) arrays are refused, as CuPy does."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and x.ndim > 0:
        raise TypeError(f"Unsupported type {type(x)}: a NumPy (host) array {x.dtype}{list(x.shape)} in a CuPy "
                        "operation (copy it to the device with cupy.asarray first)")
    if isinstance(x, (tuple, list)):
        return type(x)(_dev(e) for e in x)
    if isinstance(x, dict):
        return {k: _dev(v) for k, v in x.items()}
    return x


def _loose(x):
    """Unwrap device arrays; host values pass (indices, values assigned into device arrays, transfers)."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (tuple, list)):
        return type(x)(_loose(e) for e in x)
    return x


def _call(f, args, kwargs):
    out = kwargs.get("out")
    res = f(*_dev(args), **_dev(kwargs))
    if out is not None:
        return out
    return _wrap(res)


class _Pointer:
    def __init__(self, ptr):
        self.ptr = ptr


class ndarray:
    """A device array: a NumPy array in a guarded buffer, with CuPy's strictness about the host."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._a = _alloc(shape, dtype)

    @classmethod
    def _new(cls, a):
        obj = object.__new__(cls)
        obj._a = a
        return obj

    # -- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray._new(self._a.T))
    data = property(lambda self: _Pointer(self._a.ctypes.data))
    device = property(lambda self: cuda.Device(0))

    def __getattr__(self, name):
        if name.startswith("__"):  # (__array_interface__ & co. would hand NumPy the buffer)
            raise AttributeError(name)
        try:
            attr = getattr(self._a, name)
        except AttributeError:
            raise AttributeError(f"'cupy.ndarray' (emulated) object has no attribute {name!r}") from None
        if callable(attr):
            return lambda *args, **kwargs: _call(attr, args, kwargs)
        return _wrap(attr)

    # -- host transfers
    def get(self, stream=None, order="C", out=None):
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order)

    def set(self, arr, stream=None):
        self._a[...] = arr

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        res = getattr(ufunc, method)(*_dev(inputs), **_dev(kwargs))
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _wrap(res)

    def __array_function__(self, func, types_, args, kwargs):
        return _call(func, args, kwargs)

    # -- indexing, conversions
    def __getitem__(self, key):
        return _wrap(self._a[_loose(key)])

    def __setitem__(self, key, value):
        self._a[_loose(key)] = _loose(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __complex__(self):
        return complex(self._a)

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self._a[()] if self._a.ndim == 0 else self._a, spec)

    def __copy__(self):
        return _wrap(self._a.copy())

    def __deepcopy__(self, memo):
        return _wrap(self._a.copy())


def _binop(name):
    inplace = name.startswith("__i") and name not in ("__invert__",)

    def op(self, *other):
        res = getattr(self._a, name)(*_dev(other))
        if res is NotImplemented:
            return NotImplemented
        return self if inplace else _wrap(res)

    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift",
              "rshift"):
    for _pre in ("__", "__r", "__i"):
        setattr(ndarray, f"{_pre}{_name}__", _binop(f"{_pre}{_name}__"))
for _name in ("neg", "pos", "abs", "invert", "lt", "le", "gt", "ge", "eq", "ne", "divmod", "rdivmod"):
    setattr(ndarray, f"__{_name}__", _binop(f"__{_name}__"))


# ------------------------------------------------------------------------------------------ module-level functions
def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    host = np.asarray(a, dtype=dtype)
    out = _alloc(host.shape, host.dtype)
    out[...] = host
    return ndarray._new(out)


asanyarray = asarray


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    host = np.array(_loose(obj), dtype=dtype, ndmin=ndmin)
    out = _alloc(host.shape, host.dtype)
    out[...] = host
    return ndarray._new(out)


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        raise TypeError(f"Argument 'a' has incorrect type (expected cupy.ndarray, got {type(a).__name__})")
    if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return _wrap(np.ascontiguousarray(a._a, dtype=dtype))


def empty(shape, dtype=float, order="C"):
    return ndarray._new(_alloc(shape, dtype))


def zeros(shape, dtype=float, order="C"):
    out = _alloc(shape, dtype)
    out[...] = 0
    return ndarray._new(out)


def ones(shape, dtype=float, order="C"):
    out = _alloc(shape, dtype)
    out[...] = 1
    return ndarray._new(out)


def full(shape, fill_value, dtype=None, order="C"):
    dtype = dtype if dtype is not None else np.asarray(_loose(fill_value)).dtype
    out = _alloc(shape, dtype)
    out[...] = _loose(fill_value)
    return ndarray._new(out)


def _like(a, dtype, shape):
    return (a.shape if shape is None else shape), (a.dtype if dtype is None else dtype)


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    return empty(*_like(_check_device(a), dtype, shape))


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    return zeros(*_like(_check_device(a), dtype, shape))


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    return ones(*_like(_check_device(a), dtype, shape))


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    shape, dtype = _like(_check_device(a), dtype, shape)
    return full(shape, fill_value, dtype)


def _check_device(a):
    if isinstance(a, np.ndarray):
        _dev(a)
    return a


def asnumpy(a, stream=None, order="C", out=None):
    return a.get(out=out) if isinstance(a, ndarray) else np.asarray(a, order=order)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


#: source -> the options it was given to RawModule with (the NVRTC test compiles with the backend's options)
RAW_MODULE_OPTIONS: dict = {}


class RawModule:
    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, log_stream=None, jitify=False,
                 emu_threads=None):
        if code is None:
            with open(path) as f:
                code = f.read()
        RAW_MODULE_OPTIONS[code] = tuple(options)
        self._module = build.Module(code, options, threads=emu_threads)  # (emu_threads: "fibers" or "os")

    def get_function(self, name):
        return self._module.get_function(name)


def RawKernel(code, name, options=(), backend="nvrtc", translate_cucomplex=False, enable_cooperative_groups=False,
              jitify=False):
    return build.Module(code, options).get_function(name)


class _Ufunc:
    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kwargs):
        return _call(self._uf, args, kwargs)

    def at(self, a, indices, b=None):
        if not isinstance(a, ndarray):
            raise TypeError("ufunc.at needs a device array")
        if b is None:
            self._uf.at(a._a, _loose(indices))
        else:
            self._uf.at(a._a, _loose(indices), _dev(b))

    def __getattr__(self, name):
        attr = getattr(self._uf, name)
        return (lambda *a, **k: _call(attr, a, k)) if callable(attr) else attr


def _forward(obj):
    if isinstance(obj, np.ufunc):
        return _Ufunc(obj)
    if isinstance(obj, types.ModuleType):
        return _Namespace(obj)
    if isinstance(obj, type) or not callable(obj):
        return obj  # dtypes (cupy.float32 is numpy.float32), constants
    return lambda *args, **kwargs: _call(obj, args, kwargs)


class _Namespace:
    """cupy.linalg, cupy.random, ...: NumPy's, on device arrays."""

    def __init__(self, mod):
        self._mod = mod

    def __getattr__(self, name):
        return _forward(getattr(self._mod, name))


def __getattr__(name):  # module-level: the rest of NumPy's API
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return _forward(getattr(np, name))
    except AttributeError:
        raise AttributeError(f"module 'cupy' (emulated) has no attribute {name!r}") from None


# ---------------------------------------------------------------------------------------------------- cupy.cuda
class _CUDARuntimeError(RuntimeError):
    pass


class _Device:
    def __init__(self, device=0):
        self.id = int(device)
        self.compute_capability = "90"

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Stream:
    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


_pool = _MemoryPool()
cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, CUDARuntimeError=_CUDARuntimeError,
                                  deviceSynchronize=lambda: None, runtimeGetVersion=lambda: 12000),
    Device=_Device, Stream=_Stream, get_current_stream=lambda: _Stream(),
    get_device_id=lambda: 0, MemoryPool=_MemoryPool,
)
get_default_memory_pool = lambda: _pool  # noqa: E731
get_default_pinned_memory_pool = lambda: _pool  # noqa: E731
__version__ = "13.0.0 (minisr CUDA emulator)"
EMULATED = True
ndarray.__module__ = "cupy"
