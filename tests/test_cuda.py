"""The CUDA side: every kernels/*.cu compiles with nvcc (when nvcc is on the PATH), the cupy backend defines the
whole kernel seam, and -- with CuPy and a GPU -- every kernel and gradient matches the NumPy reference."""

import ast
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import minisr
from minisr import Tensor
from minisr import functional as F
from minisr.backends import KERNELS

REPO = Path(__file__).resolve().parents[1]
KERNEL_DIR = REPO / "kernels"
CU_FILES = sorted(KERNEL_DIR.glob("*.cu"))


def _has_gpu():
    try:
        from minisr.device import import_cupy

        import_cupy()
        return True
    except RuntimeError:
        return False


gpu = pytest.mark.skipif(not _has_gpu(), reason="needs CuPy and an NVIDIA GPU")


def test_kernel_sources_exist_and_ship_with_the_package():
    assert {p.stem for p in CU_FILES} >= {"im2col", "bias", "activations", "pixel_shuffle", "losses", "optim"}
    packaged = Path(minisr.__file__).resolve().parent / "kernels"
    assert sorted(p.name for p in packaged.glob("*.cu")) == [p.name for p in CU_FILES]


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_kernel_compiles_with_nvcc(cu, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    res = subprocess.run([nvcc, "-std=c++14", "--ptx", f"-I{KERNEL_DIR}", "-o", str(tmp_path / "k.ptx"), str(cu)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    # every extern "C" kernel is there for float and double
    for name in ("f32", "f64"):
        assert f"_{name}(" in ptx or f"_{name}\n" in ptx


def test_cupy_backend_defines_every_kernel():
    """Checked from the source, so it runs without CuPy: the GPU set implements the whole seam."""
    tree = ast.parse((REPO / "minisr" / "backends" / "cupy_backend.py").read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    missing = [k for k in KERNELS if k not in names]
    assert not missing, f"cupy_backend lacks {missing}"


def test_cuda_without_cupy_says_what_to_install():
    if _has_gpu():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match=r"minisr\[cuda12\]"):
        Tensor(np.zeros(3, np.float32)).to("cuda")
    with pytest.raises(RuntimeError, match="cuda13"):
        minisr.nn.Conv2d(1, 1, 3).to("cuda")


# ----------------------------------------------------------------------------------------------- with a GPU only
@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,stride,pad", [((2, 3, 9, 7), 3, 1, 1), ((1, 1, 12, 10), 9, 1, 4),
                                                ((2, 4, 11, 8), 3, 2, 0), ((1, 2, 10, 10), 1, 3, 0)])
def test_conv2d_gpu_matches_numpy(dtype, shape, k, stride, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((5, shape[1], k, k)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    results = []
    for device in ("cpu", "cuda"):
        with minisr.use_backend("numpy"):
            tx, tw, tb = (Tensor(a, requires_grad=True).to(device) for a in (x, w, b))
            tx.requires_grad = tw.requires_grad = tb.requires_grad = True
            y = F.relu(F.conv2d(tx, tw, tb, stride, pad))
            loss = F.mse_loss(y, Tensor(np.zeros(y.shape, dtype)).to(device))
            loss.backward()
            results.append([y.numpy(), Tensor(tx.grad).numpy(), Tensor(tw.grad).numpy(), Tensor(tb.grad).numpy()])
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for a, g in zip(*results):
        np.testing.assert_allclose(g, a, rtol=tol, atol=tol)


@gpu
def test_pixel_shuffle_and_losses_gpu_float64_gradcheck():
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((2, 8, 3, 5)), requires_grad=True).to("cuda")
    x.requires_grad = True
    t = Tensor(rng.standard_normal((2, 2, 6, 10))).to("cuda")
    loss = F.mse_loss(F.pixel_shuffle(x, 2), t) + F.l1_loss(F.leaky_relu(F.pixel_shuffle(x, 2), 0.1), t)
    loss.backward()
    g = Tensor(x.grad).numpy()
    x0 = x.numpy().copy()
    h = 1e-6
    def energy(xv):
        xt = Tensor(xv).to("cuda")
        y = F.pixel_shuffle(xt, 2)
        return (F.mse_loss(y, t) + F.l1_loss(F.leaky_relu(y, 0.1), t)).item()

    for idx in [(0, 0, 0, 0), (1, 7, 2, 4), (0, 3, 1, 2)]:
        up, down = x0.copy(), x0.copy()
        up[idx] += h
        down[idx] -= h
        num = (energy(up) - energy(down)) / (2 * h)
        assert abs(num - g[idx]) < 1e-6


@gpu
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_optimizers_gpu_match_cpu(opt):
    rng = np.random.default_rng(2)
    p0, grads = rng.standard_normal((4, 3)), [rng.standard_normal((4, 3)) for _ in range(5)]
    finals = []
    for device in ("cpu", "cuda"):
        p = minisr.nn.Parameter(p0.copy()).to(device)
        p.requires_grad = True
        o = (minisr.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-3) if opt == "sgd"
             else minisr.optim.Adam([p], lr=0.01, weight_decay=1e-3))
        for g in grads:
            p.grad = Tensor(g).to(device).data
            o.step()
        finals.append(p.numpy())
    np.testing.assert_allclose(finals[1], finals[0], rtol=1e-12, atol=1e-12)
