"""Build a CUDA C source for the CPU with g++ and launch its kernels like CUDA kernels (see cuda_emu.h, runtime.cpp).

``Module(code, options)`` is what ``cupy.RawModule`` is here: the source is compiled as C++ with ``cuda_emu.h``
force-included (one textual change: each ``extern __shared__ T name[];`` becomes a pointer to the block's dynamic
shared memory), into a shared library cached per content hash, and loaded with ctypes. ``get_function(name)``
returns a ``Kernel`` whose call ``kernel(grid, block, args, shared_mem=0)`` first checks every argument against the
kernel's C signature, parsed from the preprocessed source, as a device would need it: the number of arguments, a
device array for a pointer (of the pointer's element type, C-contiguous) and, for a scalar, a NumPy scalar of the
parameter's exact type (a Python int is an int64 and a float a float64, as CuPy passes them). A mismatch raises
``TypeError``. After the launch, the guard bytes around every array argument are checked (``RuntimeError`` if the
kernel wrote outside its arrays).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emu.h"
RUNTIME = HERE / "runtime.cpp"
CXX = os.environ.get("CXX", "g++")
#: blocks run on this many OS threads at a time (the threads of a block are fibers of one of them)
WORKERS = int(os.environ.get("MINISR_CUDA_EMU_WORKERS", "2"))
#: "fibers" (default: the threads of a block as fibers, deterministic) or "os" (one OS thread per CUDA thread)
THREADS = os.environ.get("MINISR_CUDA_EMU_THREADS", "fibers").strip().lower()
if THREADS not in ("fibers", "os"):
    raise ValueError(f"MINISR_CUDA_EMU_THREADS={THREADS!r}: use fibers or os")
MAX_THREADS_PER_BLOCK = 1024
MAX_SHARED = 48 * 1024  # dynamic shared memory a launch may ask for without opting in (cudaFuncSetAttribute)

_SCALARS = {
    "float": np.float32, "double": np.float64,
    "int": np.int32, "signed int": np.int32, "signed": np.int32, "int32_t": np.int32,
    "unsigned": np.uint32, "unsigned int": np.uint32, "uint32_t": np.uint32,
    "long long": np.int64, "long long int": np.int64, "signed long long": np.int64, "long": np.int64,
    "long int": np.int64, "int64_t": np.int64, "ptrdiff_t": np.int64, "ssize_t": np.int64,
    "unsigned long long": np.uint64, "unsigned long long int": np.uint64, "unsigned long": np.uint64,
    "size_t": np.uint64, "uint64_t": np.uint64,
    "short": np.int16, "int16_t": np.int16, "unsigned short": np.uint16, "uint16_t": np.uint16,
    "signed char": np.int8, "int8_t": np.int8, "uint8_t": np.uint8, "bool": np.bool_,
}
_BYTES = {"void", "char", "unsigned char"}  # pointers to these take an array of any dtype
_QUALIFIERS = re.compile(r"\b(const|volatile|__restrict__|__restrict|restrict|struct)\b")


def cache_dir() -> Path:
    d = Path(os.environ.get("MINISR_CUDA_EMU_CACHE") or Path(tempfile.gettempdir()) / f"minisr-cuda-emu-{os.getuid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _run(cmd, what):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"CUDA emulator: {what} failed:\n{' '.join(map(str, cmd))}\n{res.stderr[-6000:]}")
    return res.stdout


_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+((?:(?:__align__|alignas)\s*\(\s*\w+\s*\)\s*)*)([A-Za-z_][\w:]*(?:\s+[A-Za-z_][\w:]*)*?)"
    r"\s*((?:(?:__align__|alignas)\s*\(\s*\w+\s*\)\s*)*)\b(\w+)\s*\[\s*\]\s*;")


def rewrite_extern_shared(code: str) -> str:
    """``extern __shared__ T name[];`` -> ``T* const name = <this block's dynamic shared memory>;`` (same lines)."""
    def sub(m):
        t = m.group(2)
        decl = f"{t}* const {m.group(4)} = reinterpret_cast<{t}*>(::emu::dynamic_shared());"
        return decl + "\n" * m.group(0).count("\n")
    return _EXTERN_SHARED.sub(sub, code)


@dataclass
class Param:
    name: str
    ctype: str        # as written (after preprocessing), for the trampoline
    pointer: bool
    dtype: object     # NumPy scalar type of the scalar or of the pointed-to element; None: any (void*, char*)

    def describe(self):
        return f"{self.ctype} {self.name}".strip()


def _canonical(t: str, typedefs: dict) -> str:
    t = " ".join(_QUALIFIERS.sub(" ", t).split())
    for _ in range(10):
        if t in typedefs:
            t = typedefs[t]
        else:
            break
    return t


def parse_kernels(pre: str) -> dict[str, list[Param]]:
    """The ``extern "C" __global__ void name(params)`` kernels of a preprocessed source and their parameters."""
    typedefs = {}
    for m in re.finditer(r"\btypedef\s+([\w\s]+?)\s+(\w+)\s*;", pre):
        typedefs[m.group(2)] = _canonical(m.group(1), typedefs)
    for m in re.finditer(r"\busing\s+(\w+)\s*=\s*([\w\s]+?)\s*;", pre):
        typedefs[m.group(1)] = _canonical(m.group(2), typedefs)
    kernels = {}
    for m in re.finditer(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', pre):
        params = []
        text = m.group(2).strip()
        for i, p in enumerate([] if text in ("", "void") else text.split(",")):
            p = " ".join(p.split())
            pm = re.match(r"^(.*?)(\w+)\s*$", p)
            ctype, name = (pm.group(1).strip(), pm.group(2)) if pm and pm.group(1).strip() else (p, f"arg{i}")
            if ctype.endswith("]"):
                raise RuntimeError(f"kernel {m.group(1)}: array parameter {p!r} is not supported")
            pointer = "*" in ctype
            base = _canonical(ctype.replace("*", " "), typedefs) if pointer else _canonical(ctype, typedefs)
            if pointer:
                dtype = None if base in _BYTES or ctype.count("*") > 1 else _SCALARS.get(base)
                if dtype is None and base not in _BYTES and ctype.count("*") == 1:
                    raise RuntimeError(f"kernel {m.group(1)}: pointer parameter {p!r}: unknown element type {base!r}")
            else:
                dtype = _SCALARS.get(base)
                if dtype is None:
                    raise RuntimeError(f"kernel {m.group(1)}: parameter {p!r}: unknown scalar type {base!r}")
            params.append(Param(name, ctype, pointer, dtype))
        kernels[m.group(1)] = params
    return kernels


def _trampolines(kernels) -> str:
    out = ["\n// ---- generated by tests/cuda_emu/build.py: one entry per kernel, arguments from a void* array\n"]
    for name, params in kernels.items():
        args = ", ".join(f"*({_QUALIFIERS.sub('', p.ctype) if p.pointer else p.ctype}*)a[{i}]"
                         for i, p in enumerate(params))
        out.append(f'extern "C" void emu_entry_{name}(void** a) {{ (void)a; {name}({args}); }}\n')
    return "".join(out)


_lock = threading.Lock()


def _runtime_object() -> Path:
    src = RUNTIME.read_text() + HEADER.read_text()
    obj = cache_dir() / f"runtime-{_sha(src, CXX)}.o"
    if not obj.exists():
        tmp = obj.with_suffix(f".{os.getpid()}.tmp.o")
        _run([CXX, "-std=c++17", "-O2", "-fPIC", "-pthread", "-c", str(RUNTIME), "-o", str(tmp)],
             "building runtime.cpp")
        os.replace(tmp, obj)
    return obj


def _source_name(code, includes):
    for d in includes:
        for f in sorted(Path(d).glob("*.cu")):
            try:
                if f.read_text() == code:
                    return str(f)
            except OSError:
                pass
    return "<RawModule code>"


class Module:
    """The emulated ``cupy.RawModule``: compiled for the CPU on first use, cached per preprocessed-source hash."""

    def __init__(self, code: str, options=(), threads: str | None = None):
        self.threads = threads or THREADS
        options = tuple(options)
        self.includes = [o[2:] for o in options if o.startswith("-I")]
        std = [o for o in options if o.startswith("-std=")] or ["-std=c++17"]
        flags = std + [o for o in options if o.startswith(("-I", "-D", "-U"))]
        flags += ["-DEMU_OS_THREADS"] if self.threads == "os" else []
        self.source = _source_name(code, self.includes)
        text = f'#line 1 "{self.source}"\n' + rewrite_extern_shared(code)
        key = _sha(text, " ".join(flags))
        d = cache_dir()
        src = d / f"src-{key}.cpp"
        with _lock:
            if not src.exists():
                tmp = src.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(text)
                os.replace(tmp, src)
            pre = _run([CXX, "-E", "-P", "-DEMU_PARSE", "-include", str(HEADER), *flags, "-x", "c++", str(src)],
                       f"preprocessing {self.source}")
            self.kernels = parse_kernels(pre)
            tu_text = text + _trampolines(self.kernels)
            stem = Path(self.source).stem if self.source[0] != "<" else "code"
            so = d / f"{stem}-{_sha(pre, tu_text, ' '.join(flags), HEADER.read_text(), RUNTIME.read_text(), CXX)}.so"
            if not so.exists():
                tu = d / f"tu-{key}.{os.getpid()}.cpp"
                tu.write_text(tu_text)
                tmp = so.with_suffix(f".{os.getpid()}.tmp.so")
                try:
                    _run([CXX, "-O1", "-fPIC", "-shared", "-pthread", "-include", str(HEADER), *flags, "-x", "c++",
                          str(tu), "-x", "none", str(_runtime_object()), "-o", str(tmp)], f"compiling {self.source}")
                    os.replace(tmp, so)
                finally:
                    tu.unlink(missing_ok=True)
        self.path = so
        self.lib = ctypes.CDLL(str(so))
        self.lib.emu_launch.restype = ctypes.c_int
        self.lib.emu_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_uint] * 6 + [
            ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]

    def get_function(self, name: str) -> Kernel:
        if name not in self.kernels:
            raise RuntimeError(f"CUDA emulator: no extern \"C\" __global__ kernel {name!r} in {self.source} "
                               f"(it has {sorted(self.kernels)})")  # (CuPy: cudaErrorNotFound / named symbol not found)
        return Kernel(self, name, self.kernels[name])


_CTYPES = {np.float32: ctypes.c_float, np.float64: ctypes.c_double, np.int32: ctypes.c_int32,
           np.uint32: ctypes.c_uint32, np.int64: ctypes.c_int64, np.uint64: ctypes.c_uint64, np.int16: ctypes.c_int16,
           np.uint16: ctypes.c_uint16, np.int8: ctypes.c_int8, np.uint8: ctypes.c_uint8, np.bool_: ctypes.c_bool}


def _dim(v, what, limits):
    if isinstance(v, (int, np.integer)):
        v = (v,)
    if not isinstance(v, tuple) or not 1 <= len(v) <= 3 or not all(isinstance(e, (int, np.integer)) for e in v):
        raise TypeError(f"{what} must be an int or a tuple of 1 to 3 ints, got {v!r}")
    v = tuple(int(e) for e in v) + (1,) * (3 - len(v))
    for e, lim, axis in zip(v, limits, "xyz"):
        if not 1 <= e <= lim:
            raise ValueError(f"{what}.{axis} = {e} is outside 1..{lim}")
    return v


class Kernel:
    """The emulated ``cupy.RawKernel`` / function of a module: ``kernel(grid, block, args, shared_mem=0)``."""

    def __init__(self, module, name, params):
        self.module, self.name, self.params = module, name, params
        self.entry = ctypes.cast(getattr(module.lib, f"emu_entry_{name}"), ctypes.c_void_p).value

    def signature(self):
        return f"{self.name}({', '.join(p.describe() for p in self.params)})"

    def _refuse(self, i, msg, exc=TypeError):
        p = self.params[i]
        raise exc(f"kernel {self.name} ({self.module.source}), argument {i} '{p.describe()}': {msg}\n"
                  f"  signature: {self.signature()}")

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        from . import fakecupy

        grid = _dim(grid, "grid", (2**31 - 1, 65535, 65535))
        block = _dim(block, "block", (1024, 1024, 64))
        if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"kernel {self.name}: {block} is more than {MAX_THREADS_PER_BLOCK} threads per block")
        shared_mem = int(shared_mem)
        if not 0 <= shared_mem <= MAX_SHARED:
            raise ValueError(f"kernel {self.name}: shared_mem={shared_mem} bytes is outside 0..{MAX_SHARED}")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel {self.name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise TypeError(f"kernel {self.name} ({self.module.source}) takes {len(self.params)} arguments, "
                            f"got {len(args)}\n  signature: {self.signature()}")
        storage, arrays = [], []
        for i, (a, p) in enumerate(zip(args, self.params)):
            if isinstance(a, fakecupy.ndarray):
                if not p.pointer:
                    self._refuse(i, f"a device array ({a.dtype}{list(a.shape)}) for a scalar parameter")
                if p.dtype is not None and a.dtype != np.dtype(p.dtype):
                    self._refuse(i, f"an array of {a.dtype} for a pointer to {np.dtype(p.dtype)}")
                if not a.flags.c_contiguous:
                    self._refuse(i, f"a non-contiguous array (strides {a.strides}): the kernel indexes it as flat")
                arrays.append((i, a))
                storage.append(ctypes.c_void_p(a._a.ctypes.data))
                continue
            if a is None:
                if not p.pointer:
                    self._refuse(i, "None for a scalar parameter")
                storage.append(ctypes.c_void_p(0))
                continue
            if isinstance(a, np.ndarray):
                self._refuse(i, f"a NumPy (host) array {a.dtype}{list(a.shape)}: kernels take device arrays "
                                "(CuPy: TypeError, unsupported type numpy.ndarray)")
            if isinstance(a, bool):
                a = np.bool_(a)
            elif isinstance(a, int):
                a = np.int64(a)  # as CuPy passes a Python int
            elif isinstance(a, float):
                a = np.float64(a)
            if not isinstance(a, np.generic):
                self._refuse(i, f"unsupported argument type {type(a).__name__}")
            if p.pointer:
                self._refuse(i, f"a scalar {a.dtype} for a pointer parameter")
            if a.dtype != np.dtype(p.dtype):
                self._refuse(i, f"a {a.dtype} scalar for a {np.dtype(p.dtype)} parameter: the kernel would read "
                                f"{np.dtype(p.dtype).itemsize} bytes of a {a.dtype.itemsize}-byte value")
            storage.append(_CTYPES[p.dtype](a.item()))
        ptrs = (ctypes.c_void_p * max(1, len(storage)))(*[ctypes.addressof(s) for s in storage])
        err = ctypes.create_string_buffer(2048)
        rc = self.module.lib.emu_launch(self.entry, ptrs, *grid, *block, shared_mem, WORKERS,
                                         self.module.threads == "os", err, len(err))
        if rc:
            raise RuntimeError(f"kernel {self.name} ({self.module.source}), grid {grid} block {block}: "
                               f"{err.value.decode()}")
        for i, a in arrays:
            where = fakecupy.check_guards(a)
            if where:
                self._refuse(i, f"the kernel wrote {where} this array (grid {grid}, block {block})", RuntimeError)
