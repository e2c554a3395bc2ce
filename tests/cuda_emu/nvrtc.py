"""NVRTC, the compiler CuPy's RawModule calls, through ctypes (no GPU or driver needed to compile): from the
``nvidia-cuda-nvrtc`` wheel (the dev extra), the ``-cu12`` wheel, or a CUDA toolkit. ``nvcc`` is the fallback."""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def _candidates():
    try:
        import nvidia

        for root in nvidia.__path__:
            yield from sorted(glob.glob(os.path.join(root, "cu*", "lib", "libnvrtc.so.*")), reverse=True)
            yield from sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so.*")), reverse=True)
    except ImportError:
        pass
    yield from sorted(glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"), reverse=True)
    yield "libnvrtc.so"


def _is_main_lib(path):
    return "builtins" not in os.path.basename(path) and "alt" not in os.path.basename(path)


_lib = None


def library():
    """The loaded libnvrtc, or None."""
    global _lib
    if _lib is None:
        for path in _candidates():
            if not _is_main_lib(path):
                continue
            try:
                _lib = ctypes.CDLL(path)
                _lib.path = path
                break
            except OSError:
                continue
        else:
            _lib = False
    return _lib or None


def version() -> str:
    lib = library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"


def compile(code: str, name: str, options) -> tuple[bytes, str]:
    """(CUBIN for an sm_XX architecture in options, or PTX for compute_XX; log). Raises RuntimeError on errors."""
    lib = library()
    prog = ctypes.c_void_p()
    check = _checker(lib)
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), name.encode(), 0, None, None), "create")
    opts = [o.encode() for o in options]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    log = log.value.decode(errors="replace")
    if rc:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        raise RuntimeError(f"NVRTC {version()} could not compile {name} with {' '.join(options)}:\n{log}")
    cubin = any("sm_" in o for o in options)
    get_size, get = (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if cubin else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX)
    check(get_size(prog, ctypes.byref(size)), "size")
    out = ctypes.create_string_buffer(size.value)
    check(get(prog, out), "get")
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return out.raw, log


def _checker(lib):
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(rc, what):
        if rc:
            raise RuntimeError(f"NVRTC {what}: {lib.nvrtcGetErrorString(rc).decode()}")
    return check


def nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    local = sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    return local[0] if local else None


def compile_nvcc(path: Path, options, arch: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "k.cubin"
        res = subprocess.run([nvcc(), *options, f"-arch={arch}", "--cubin", "-o", str(out), str(path)],
                             capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"nvcc could not compile {path.name}:\n{res.stderr}")
        return out.read_bytes()
