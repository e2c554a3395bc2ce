"""What bench/compare.py and the pytest-benchmark files (bench/test_*.py) share: thread set-up, machine details,
the benchmark shapes, the conv2d callables, the models in both libraries and their training / inference steps.

Import this module before anything imports NumPy: on import it sets the thread counts of the BLAS under NumPy
(``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, read once when NumPy loads OpenBLAS) to
``MINISR_BENCH_THREADS`` (default: all cores) unless they are set, and ``NUMBA_THREADING_LAYER=workqueue``
unless set (see bench/compare.py's docstring for why). :func:`init` then sets Numba's and PyTorch's thread counts
to the same number, and OpenBLAS's (to ``OPENBLAS_NUM_THREADS``) again through its C API, in case NumPy was
imported first.

PyTorch is imported only by the functions that need it, so a memory-measuring child process for minisr never
loads it.
"""

from __future__ import annotations

import os
import sys

THREADS = max(1, int(os.environ.get("MINISR_BENCH_THREADS") or os.cpu_count() or 1))
TINY = os.environ.get("MINISR_BENCH_TINY", "") not in ("", "0")  # pytest bench/ --bench-tiny
NUMPY_WAS_IMPORTED = "numpy" in sys.modules  # then the BLAS env variables below came too late (init fixes it)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import ctypes  # noqa: E402
import glob  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402

import numpy as np  # noqa: E402

IMPLS = ("minisr-numba", "minisr-numpy", "torch")  # the columns of the pytest-benchmark groups


# ------------------------------------------------------------------------------------------------- threads
def _openblas():
    """ctypes handle of the OpenBLAS that NumPy loaded (None for another BLAS)."""
    here = os.path.dirname(np.__file__)
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*"):
        for path in glob.glob(os.path.join(here, pattern)):
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    return None


def _blas_fn(names, restype=ctypes.c_int, argtypes=()):
    lib = _openblas()
    for name in names:
        fn = getattr(lib, name, None) if lib is not None else None
        if fn is not None:
            fn.restype, fn.argtypes = restype, list(argtypes)
            return fn
    return None


def blas_threads() -> int | None:
    fn = _blas_fn(("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"))
    return int(fn()) if fn else None


def set_blas_threads(n: int) -> None:
    fn = _blas_fn(("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"),
                  restype=None, argtypes=(ctypes.c_int,))
    if fn:
        fn(int(n))


def init(threads: int = THREADS, backend: str = "numba", torch: bool = True, minisr: bool = True) -> None:
    """Same thread count for Numba, OpenBLAS and (when ``torch``) PyTorch; minisr's CPU kernel set (unless
    ``minisr=False``: then neither minisr nor Numba is imported, as in a PyTorch-only timing process)."""
    set_blas_threads(int(os.environ.get("OPENBLAS_NUM_THREADS") or threads))  # (a value set by hand is kept)
    if minisr:
        import numba

        import minisr as _minisr

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        _minisr.set_backend(backend)
    if torch:
        import torch as _torch

        _torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ machine details
def _cpuinfo() -> dict:
    out = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "cpu MHz") and key not in out:
                    out[key] = value.strip()
    except OSError:
        pass
    return out


def _meminfo_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(with_torch: bool = True) -> dict:
    """CPU, cores, memory, library versions, BLAS builds and the thread counts in effect."""
    import numba

    import minisr

    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    info = dict(
        cpu=cpu.get("model name") or platform.processor() or "unknown",
        cpu_flags=[f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        logical_cpus=os.cpu_count(),
        usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        mem_total_gib=_meminfo_gib(),
        platform=platform.platform(),
        python=platform.python_version(),
        minisr=minisr.__version__,
        minisr_backend=minisr.backends.cpu_backend_name(),
        numpy=np.__version__,
        numba=numba.__version__,
        numba_threads=numba.get_num_threads(),
        blas=_numpy_blas(),
        blas_core=blas_core(),
        blas_threads=blas_threads(),
        numpy_imported_before_thread_setup=NUMPY_WAS_IMPORTED,
        env={k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                            "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                            "NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY", "MINISR_BACKEND")},
    )
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel function has run yet
        info["numba_threading_layer"] = None
    if with_torch:
        import torch

        shown = torch.__config__.show()
        blas = re.search(r"BLAS_INFO=(\w+)", shown)
        cap = re.search(r"CPU capability usage: (\S+)", shown)
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    torch_interop_threads=torch.get_num_interop_threads(),
                    torch_blas=blas.group(1) if blas else None, torch_cpu_capability=cap.group(1) if cap else None,
                    torch_mkldnn=bool(torch.backends.mkldnn.is_available()))
    return info


def blas_core() -> str | None:
    """The CPU kernels OpenBLAS runs (e.g. "SkylakeX" = AVX-512, "Haswell" = AVX2), or None if unknown."""
    fn = _blas_fn(("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"),
                  restype=ctypes.c_char_p)
    return fn().decode() if fn else None


def slow_blas_core_warning() -> str | None:
    """A warning when OpenBLAS runs AVX2 kernels on a CPU that has AVX-512 -- typically because
    ``OPENBLAS_CORETYPE`` pins them (some machines set it for older OpenBLAS builds): minisr's BLAS GEMMs (its
    im2col convolutions) and the sgemm reference rate then run at about half the speed this CPU allows, while
    PyTorch (oneDNN) and minisr's own shifted-conv kernels use AVX-512 anyway."""
    flags = set(_cpuinfo().get("flags", "").split())
    core = blas_core()
    if "avx512f" in flags and core in ("Haswell", "Zen", "Sandybridge"):
        pinned = os.environ.get("OPENBLAS_CORETYPE")
        return (f"OpenBLAS runs its {core} (AVX2) kernels on this AVX-512 CPU"
                + (f" because OPENBLAS_CORETYPE={pinned} is set" if pinned else "")
                + ": minisr's im2col convolutions and the sgemm rate (the % sgemm column) get about half the "
                  "speed the CPU allows. For a like-for-like comparison run "
                  "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/compare.py ...`.")
    return None


def _numpy_blas() -> str:
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return deps.get("openblas configuration") or f"{deps.get('name')} {deps.get('version')}"
    except Exception:  # older NumPy without mode="dicts"
        fn = _blas_fn(("scipy_openblas_get_config64_", "openblas_get_config64_", "openblas_get_config"),
                      restype=ctypes.c_char_p)
        return fn().decode() if fn else "unknown"


# ---------------------------------------------------------------------------------------------- the shapes
@dataclass(frozen=True)
class ConvCase:
    id: str
    label: str
    shape: tuple  # input (N, C, H, W)
    out: int
    k: int
    pad: int
    input_grad: bool  # False for a first layer, whose input is the image

    def flops(self) -> tuple[float, float]:
        """(forward, forward + backward) FLOPs: 2 N O C k k Ho Wo, then again for dW and, with input_grad, dX."""
        N, C, H, W = self.shape
        Ho, Wo = H + 2 * self.pad - self.k + 1, W + 2 * self.pad - self.k + 1
        fwd = 2.0 * N * self.out * C * self.k * self.k * Ho * Wo
        return fwd, fwd * (3 if self.input_grad else 2)


CONV_CASES = [
    ConvCase("conv-srcnn1", "SRCNN layer 1", (128, 1, 33, 33), 64, 9, 0, False),
    ConvCase("conv-srcnn2", "SRCNN layer 2", (128, 64, 25, 25), 32, 5, 0, True),
    ConvCase("conv-vdsr", "VDSR middle", (16, 64, 41, 41), 64, 3, 1, True),
    ConvCase("conv-edsr", "EDSR middle", (16, 64, 48, 48), 64, 3, 1, True),
    ConvCase("conv-edsr-up", "EDSR upsampler", (16, 64, 48, 48), 256, 3, 1, True),
]
TINY_CONV = {"conv-srcnn1": (2, 1, 13, 13)}  # other cases: (2, 64, 10, 10) with their own O, k, padding


def conv_case(case: ConvCase, tiny: bool = False) -> ConvCase:
    if not tiny:
        return case
    return replace(case, shape=TINY_CONV.get(case.id, (2, 64, 10, 10)))


@dataclass(frozen=True)
class ModelCase:
    """A training step (forward, loss, backward, Adam) or an inference of one model on fixed random data."""

    id: str
    label: str
    model: str  # minisr.models.build name
    cfg: dict = field(hash=False)
    mode: str  # "train" or "infer"
    batch: int
    size: int  # input height = width
    target: int  # output height = width
    loss: str = "mse"  # "mse" or "l1"
    channels: int = 1
    lr: float = 1e-4


MODEL_CASES = [
    ModelCase("train-srcnn", "SRCNN 9-5-5 train step", "srcnn",
              dict(kernels=(9, 5, 5), features=(64, 32), padding="valid"), "train", 128, 33, 17, "mse", 1),
    ModelCase("train-vdsr", "VDSR-20 train step", "vdsr", dict(depth=20), "train", 16, 41, 41, "mse", 1),
    ModelCase("train-edsr", "EDSR-baseline x2 train step", "edsr", dict(scale=2), "train", 16, 48, 96, "l1", 3),
    ModelCase("infer-edsr", "EDSR-baseline x2 inference 512x512", "edsr", dict(scale=2), "infer", 1, 512, 1024,
              channels=3),
]
TINY_MODEL = {"train-srcnn": (2, 21, 5), "train-vdsr": (2, 11, 11), "train-edsr": (2, 12, 24),
              "infer-edsr": (1, 24, 48)}  # (batch, input size, output size)


def model_case(case: ModelCase, tiny: bool = False) -> ModelCase:
    if not tiny:
        return case
    b, s, t = TINY_MODEL[case.id]
    return replace(case, batch=b, size=s, target=t, label=case.label.replace(f"{case.size}x{case.size}", f"{s}x{s}"))


# ------------------------------------------------------------------------------------------------- conv2d
def conv_arrays(case: ConvCase, dtype=np.float32, seed: int = 0):
    """x, w, b and a fixed upstream gradient G for one layer shape."""
    rng = np.random.default_rng(seed)
    N, C, H, W = case.shape
    Ho, Wo = H + 2 * case.pad - case.k + 1, W + 2 * case.pad - case.k + 1
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((case.out, C, case.k, case.k)) / np.sqrt(C * case.k * case.k)).astype(dtype)
    b = rng.standard_normal(case.out).astype(dtype)
    G = rng.standard_normal((N, case.out, Ho, Wo)).astype(dtype)
    return x, w, b, G


def minisr_conv(case: ConvCase, x, w, b, G):
    """(fwd, fwd_bwd) callables: fwd() -> out; fwd_bwd() -> (out, dx or None, dw, db), via ``out.backward(G)``."""
    import minisr
    import minisr.functional as F

    mx = minisr.Tensor(x, requires_grad=case.input_grad)
    mw, mb = minisr.Tensor(w, requires_grad=True), minisr.Tensor(b, requires_grad=True)

    def fwd():
        with minisr.no_grad():
            return F.conv2d(mx, mw, mb, 1, case.pad).data

    def fwd_bwd():
        mw.grad = mb.grad = mx.grad = None
        out = F.conv2d(mx, mw, mb, 1, case.pad)
        out.backward(G)
        return out.data, mx.grad, mw.grad, mb.grad

    return fwd, fwd_bwd


def torch_conv(case: ConvCase, x, w, b, G):
    """PyTorch's (fwd, fwd_bwd), the same contract as :func:`minisr_conv` (results as NumPy arrays)."""
    import torch

    tx = torch.from_numpy(x.copy()).requires_grad_(case.input_grad)
    tw, tb = torch.from_numpy(w.copy()).requires_grad_(), torch.from_numpy(b.copy()).requires_grad_()
    tG = torch.from_numpy(G.copy())

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw, tb, 1, case.pad).numpy()

    def fwd_bwd():
        tw.grad = tb.grad = tx.grad = None
        out = torch.nn.functional.conv2d(tx, tw, tb, 1, case.pad)
        out.backward(tG)
        return (out.detach().numpy(), None if tx.grad is None else tx.grad.numpy(), tw.grad.numpy(),
                tb.grad.numpy())

    return fwd, fwd_bwd


# ------------------------------------------------------------------------------------------------- models
def minisr_model(case: ModelCase, dtype=np.float32, seed: int = 0):
    import minisr
    from minisr import models

    minisr.manual_seed(seed)
    return models.build(case.model, **case.cfg).to(dtype=dtype)


def torch_model(case: ModelCase, state=None, dtype=np.float32):
    """The same architecture in PyTorch, with the same parameter and buffer names as minisr's, so that
    ``load_state_dict(minisr_model.state_dict())`` gives both the same weights (strict: any naming or shape
    difference is an error). Mirrors minisr/models/{srcnn,vdsr,edsr}.py."""
    import torch
    from torch import nn

    cfg = dict(case.cfg)
    if case.model == "srcnn":
        f1, f2, f3 = cfg.get("kernels", (9, 5, 5))
        n1, n2 = cfg.get("features", (64, 32))
        c = cfg.get("in_channels", 1)
        pad = (lambda k: k // 2) if cfg.get("padding", "valid") == "same" else (lambda k: 0)

        class SRCNN(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(c, n1, f1, padding=pad(f1))
                self.conv2 = nn.Conv2d(n1, n2, f2, padding=pad(f2))
                self.conv3 = nn.Conv2d(n2, c, f3, padding=pad(f3))
                self.relu = nn.ReLU()

            def forward(self, x):
                return self.conv3(self.relu(self.conv2(self.relu(self.conv1(x)))))

        model = SRCNN()
    elif case.model == "vdsr":
        depth, feats = cfg.get("depth", 20), cfg.get("features", 64)
        c, residual = cfg.get("in_channels", 1), cfg.get("residual", True)

        class VDSR(nn.Module):
            def __init__(self):
                super().__init__()
                layers = [nn.Conv2d(c, feats, 3, padding=1), nn.ReLU()]
                for _ in range(depth - 2):
                    layers += [nn.Conv2d(feats, feats, 3, padding=1), nn.ReLU()]
                layers.append(nn.Conv2d(feats, c, 3, padding=1))
                self.body = nn.Sequential(*layers)

            def forward(self, x):
                out = self.body(x)
                return out + x if residual else out

        model = VDSR()
    elif case.model == "edsr":
        from minisr.models.edsr import DIV2K_RGB_MEAN

        scale, n_blocks = cfg.get("scale", 2), cfg.get("n_resblocks", 16)
        n, res_scale, c = cfg.get("n_feats", 64), cfg.get("res_scale", 1.0), cfg.get("n_colors", 3)
        mean = DIV2K_RGB_MEAN if c == 3 else (0.5,) * c

        class MeanShift(nn.Module):
            def __init__(self, sign):
                super().__init__()
                self.register_buffer("weight", torch.eye(c).reshape(c, c, 1, 1))
                self.register_buffer("bias", sign * torch.tensor(mean))

            def forward(self, x):
                return nn.functional.conv2d(x, self.weight, self.bias)

        class ResBlock(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(n, n, 3, padding=1)
                self.relu = nn.ReLU()
                self.conv2 = nn.Conv2d(n, n, 3, padding=1)

            def forward(self, x):
                r = self.conv2(self.relu(self.conv1(x)))
                return (r * res_scale if res_scale != 1 else r) + x

        if scale in (2, 4, 8):
            up = []
            for _ in range({2: 1, 4: 2, 8: 3}[scale]):
                up += [nn.Conv2d(n, 4 * n, 3, padding=1), nn.PixelShuffle(2)]
        else:
            up = [nn.Conv2d(n, 9 * n, 3, padding=1), nn.PixelShuffle(3)]

        class EDSR(nn.Module):
            def __init__(self):
                super().__init__()
                self.sub_mean = MeanShift(-1)
                self.head = nn.Conv2d(c, n, 3, padding=1)
                self.body = nn.Sequential(*[ResBlock() for _ in range(n_blocks)], nn.Conv2d(n, n, 3, padding=1))
                self.tail = nn.Sequential(nn.Sequential(*up), nn.Conv2d(n, c, 3, padding=1))
                self.add_mean = MeanShift(+1)

            def forward(self, x):
                x = self.head(self.sub_mean(x))
                x = self.body(x) + x
                return self.add_mean(self.tail(x))

        model = EDSR()
    else:
        raise KeyError(f"no PyTorch twin for model {case.model!r}")
    model = model.to(dtype=torch.float64 if np.dtype(dtype) == np.float64 else torch.float32)
    if state is not None:
        model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=dtype)) for k, v in state.items()})
    return model


def model_arrays(case: ModelCase, dtype=np.float32, seed: int = 0):
    """Input batch and target in [0, 1): x (N, C, size, size), y (N, C, target, target)."""
    rng = np.random.default_rng(seed)
    shape = (case.batch, case.channels)
    x = rng.random(shape + (case.size, case.size)).astype(dtype)
    y = rng.random(shape + (case.target, case.target)).astype(dtype)
    return x, y


def minisr_step(case: ModelCase, model, x, y):
    """Training case: step() runs forward, loss, backward and Adam and returns the loss (a float).
    Inference case: step() runs the forward under no_grad and returns the output array.
    ``step(x2, y2)`` runs on another batch (the memory measurement's warm-up: same optimizer)."""
    import minisr
    import minisr.functional as F
    from minisr import optim

    mx, my = minisr.Tensor(x), minisr.Tensor(y)
    if case.mode == "infer":
        model.eval()

        def infer(x2=None, y2=None):
            with minisr.no_grad():
                return model(mx if x2 is None else minisr.Tensor(x2)).data

        return infer
    loss_fn = F.mse_loss if case.loss == "mse" else F.l1_loss
    opt = optim.Adam(model.parameters(), lr=case.lr)

    def step(x2=None, y2=None):
        opt.zero_grad()
        out = model(mx if x2 is None else minisr.Tensor(x2))
        loss = loss_fn(out, my if y2 is None else minisr.Tensor(y2))
        loss.backward()
        opt.step()
        return float(loss.item())

    return step


def torch_step(case: ModelCase, model, x, y):
    """PyTorch's twin of :func:`minisr_step` (default torch.optim.Adam, as a user gets it)."""
    import torch

    tx, ty = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    if case.mode == "infer":
        model.eval()

        def infer(x2=None, y2=None):
            with torch.no_grad():
                return model(tx if x2 is None else torch.from_numpy(x2)).numpy()

        return infer
    loss_fn = torch.nn.functional.mse_loss if case.loss == "mse" else torch.nn.functional.l1_loss
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)

    def step(x2=None, y2=None):
        opt.zero_grad(set_to_none=True)
        out = model(tx if x2 is None else torch.from_numpy(x2))
        loss = loss_fn(out, ty if y2 is None else torch.from_numpy(y2))
        loss.backward()
        opt.step()
        return float(loss.item())

    return step


def model_flops(case: ModelCase, tmodel) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of the convolutions (2 N O C k k Ho Wo each; the backward adds
    one more for dW and one more for dX when the layer's input needs a gradient), counted with hooks on a
    one-image forward of the PyTorch twin and scaled by the batch size."""
    import torch

    fwd = [0.0, 0.0]

    def hook(mod, inp, out):
        f = 2.0 * out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        fwd[0] += f
        fwd[1] += f * (3 if inp[0].requires_grad else 2)

    handles = [m.register_forward_hook(hook) for m in tmodel.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        dtype = next(tmodel.parameters()).dtype
        tmodel(torch.zeros((1, case.channels, case.size, case.size), dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return fwd[0] * case.batch, fwd[1] * case.batch


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (b the reference)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def models_agree(case: ModelCase, mmodel, tmodel, x, y=None) -> dict:
    """Relative errors of minisr against PyTorch on the same weights and input: the forward output and, for a
    training case, the loss and every parameter gradient (worst one). Runs forward (+ backward) once each; does
    not step an optimizer."""
    import torch

    import minisr
    import minisr.functional as F

    errs = {}
    if case.mode == "infer":
        with minisr.no_grad():
            m_out = mmodel(minisr.Tensor(x)).data
        with torch.no_grad():
            t_out = tmodel(torch.from_numpy(x.copy())).numpy()
        errs["output"] = rel_err(m_out, t_out)
        return errs
    m_out = mmodel(minisr.Tensor(x))
    t_out = tmodel(torch.from_numpy(x.copy()))
    errs["output"] = rel_err(m_out.data, t_out.detach().numpy())
    m_loss = (F.mse_loss if case.loss == "mse" else F.l1_loss)(m_out, minisr.Tensor(y))
    t_loss = (torch.nn.functional.mse_loss if case.loss == "mse" else torch.nn.functional.l1_loss)(
        t_out, torch.from_numpy(y.copy()))
    errs["loss"] = rel_err(m_loss.item(), t_loss.item())
    mmodel.zero_grad()
    tmodel.zero_grad(set_to_none=True)
    m_loss.backward()
    t_loss.backward()
    t_params = dict(tmodel.named_parameters())
    errs["grads"] = max(rel_err(p.grad, t_params[name].grad.numpy()) for name, p in mmodel.named_parameters())
    mmodel.zero_grad()
    tmodel.zero_grad(set_to_none=True)
    return errs
