"""The CUDA side: every kernels/*.cu compiles with NVRTC (the compiler CuPy uses; nvcc where NVRTC is missing) for
sm_80 and sm_90, the cupy backend defines the whole kernel seam, and on the "cuda" device -- a GPU with CuPy, else
the CUDA emulator of tests/cuda_emu (see the ``cuda`` fixture in conftest.py) -- ops, gradients, optimizers and
whole training steps match the CPU."""

import ast
from pathlib import Path

import numpy as np
import pytest
from cuda_emu import nvrtc

import minisr
import minisr.models
from minisr import Tensor
from minisr import functional as F
from minisr.backends import KERNELS

REPO = Path(__file__).resolve().parents[1]
KERNEL_DIR = REPO / "kernels"
CU_FILES = sorted(KERNEL_DIR.glob("*.cu"))
COMPILER = "nvrtc" if nvrtc.library() else ("nvcc" if nvrtc.nvcc() else "none")


def test_kernel_sources_exist_and_ship_with_the_package():
    assert {p.stem for p in CU_FILES} >= {"im2col", "bias", "activations", "pixel_shuffle", "losses", "optim"}
    packaged = Path(minisr.__file__).resolve().parent / "kernels"
    assert sorted(p.name for p in packaged.glob("*.cu")) == [p.name for p in CU_FILES]


def _backend_options(cu):
    """The options cupy_backend gives cupy.RawModule for this source, as the emulator's stand-in recorded them."""
    from cuda_emu import emulated, fakecupy

    with emulated() as be:
        try:
            be._module(cu.stem)
        except (RuntimeError, OSError):  # (building it for the emulator is not needed here)
            pass
    return fakecupy.RAW_MODULE_OPTIONS[cu.read_text()]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: f"{p.name}-{COMPILER}")
def test_kernel_compiles_for_the_gpu(cu, arch):
    """With the options cupy_backend gives cupy.RawModule, to a CUBIN (NVRTC's full compile, ptxas included); every
    extern "C" kernel of the file is in it."""
    import cuda_emu
    import cuda_emu.build

    options = _backend_options(cu)
    assert any(o.startswith("-std=") for o in options) and any(o.startswith("-I") for o in options), options
    code = cu.read_text()
    if COMPILER == "nvrtc":
        binary, log = nvrtc.compile(code, cu.name, options + (f"--gpu-architecture={arch}",))
        assert "warning" not in log.lower(), log
    elif COMPILER == "nvcc":
        binary = nvrtc.compile_nvcc(cu, options, arch)
    else:
        pytest.skip("neither NVRTC (pip install nvidia-cuda-nvrtc, in the dev extra) nor nvcc is available")
    if cuda_emu.unavailable():  # (the kernels' names come from the emulator's preprocessing with g++)
        return
    names = cuda_emu.build.Module(code, options).kernels
    assert {"f32", "f64"} <= {n.rsplit("_", 1)[-1] for n in names}, f"{cu.name}: no float and double kernels"
    missing = [n for n in names if n.encode() + b"\0" not in binary]
    assert not missing, f"{cu.name}: kernels {missing} not in the {arch} binary"


def test_cupy_backend_defines_every_kernel():
    """Checked from the source, so it runs without CuPy: the GPU set implements the whole seam."""
    tree = ast.parse((REPO / "minisr" / "backends" / "cupy_backend.py").read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
        if isinstance(node, ast.Assign):  # e.g. conv_fused_forward = _on_these_kernels(...)
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    missing = [k for k in KERNELS if k not in names]
    assert not missing, f"cupy_backend lacks {missing}"


def test_cuda_without_cupy_says_what_to_install():
    import cuda_emu

    if cuda_emu.real_gpu():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match=r"minisr\[cuda12\]"):
        Tensor(np.zeros(3, np.float32)).to("cuda")
    with pytest.raises(RuntimeError, match="cuda13"):
        minisr.nn.Conv2d(1, 1, 3).to("cuda")


# ------------------------------------------------------------------------------------- on the "cuda" device
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,stride,pad", [((2, 3, 9, 7), 3, 1, 1), ((1, 1, 12, 10), 9, 1, 4),
                                                ((2, 4, 11, 8), 3, 2, 0), ((1, 2, 10, 10), 1, 3, 0),
                                                ((2, 3, 1, 1), 3, 1, 1), ((1, 2, 1, 5), 3, 2, 1)])
def test_conv2d_gpu_matches_numpy(cuda, dtype, shape, k, stride, pad):
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


def test_pixel_shuffle_and_losses_gpu_float64_gradcheck(cuda):
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


OPTIMIZERS = {
    "sgd": lambda ps: minisr.optim.SGD(ps, lr=0.1),
    "sgd-momentum-wd": lambda ps: minisr.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "sgd-dampening": lambda ps: minisr.optim.SGD(ps, lr=0.05, momentum=0.8, dampening=0.3),
    "sgd-nesterov-wd": lambda ps: minisr.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
    "adam": lambda ps: minisr.optim.Adam(ps, lr=0.01),
    "adam-wd": lambda ps: minisr.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizers_gpu_match_cpu_step_for_step(cuda, opt, dtype):
    """Five steps on the "cuda" device and on the CPU (NumPy reference), parameters compared after every step;
    one parameter is larger than a block of threads."""
    rng = np.random.default_rng(2)
    shapes = [(4, 3), (300,)]
    p0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(5)]
    states = {}
    with minisr.use_backend("numpy"):
        for device in ("cpu", "cuda"):
            ps = [minisr.nn.Parameter(p.copy()).to(device) for p in p0]
            for p in ps:
                p.requires_grad = True
            states[device] = (ps, OPTIMIZERS[opt](ps))
        tol = 1e-12 if dtype == np.float64 else 2e-6
        for step, gs in enumerate(grads):
            for device, (ps, o) in states.items():
                for p, g in zip(ps, gs):
                    p.grad = Tensor(g).to(device).data
                o.step()
            for pc, pg in zip(states["cpu"][0], states["cuda"][0]):
                assert pg.device == "cuda"
                np.testing.assert_allclose(pg.numpy(), pc.numpy(), rtol=tol, atol=tol, err_msg=f"step {step + 1}")


def _training_step(model, x, y, loss_fn, opt):
    loss = loss_fn(model(x), y)
    opt.zero_grad()
    loss.backward()
    grads = {n: Tensor(p.grad).numpy().copy() for n, p in model.named_parameters()}
    opt.step()
    return loss.item(), grads, {n: p.numpy().copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("arch", ["srcnn", "edsr-baseline"])
def test_training_step_gpu_matches_cpu(cuda, arch, dtype):
    """A full step (forward, loss, backward, optimizer) of SRCNN (MSE, SGD with momentum) and of an EDSR-baseline
    (residual blocks, pixel shuffle, L1, Adam; small widths) on "cuda" and on the CPU: same loss, gradients and
    updated weights. (Adam's eps is 1e-4 here: with eps = 1e-8 its first update, lr * g / (|g| + eps), is a step
    function of g near 0, and a gradient of ~1e-8 -- EDSR's small model has some, depending on the initial
    weights -- made the float32 updates differ by 2e-4 between two equally right sums.)"""
    rng = np.random.default_rng(5)
    minisr.manual_seed(5)
    if arch == "srcnn":
        build = lambda: minisr.models.build("srcnn", kernels=(9, 1, 5), features=(8, 4))  # noqa: E731
        x, y = rng.random((2, 1, 17, 15)), rng.random((2, 1, 5, 3))
        loss_fn, make_opt = F.mse_loss, lambda ps: minisr.optim.SGD(ps, lr=0.1, momentum=0.9)  # noqa: E731
    else:
        build = lambda: minisr.models.build("edsr", scale=2, n_resblocks=2, n_feats=8)  # noqa: E731
        x, y = rng.random((2, 3, 7, 6)), rng.random((2, 3, 14, 12))
        loss_fn, make_opt = F.l1_loss, lambda ps: minisr.optim.Adam(ps, lr=1e-3, eps=1e-4)  # noqa: E731
    results = {}
    with minisr.use_backend("numpy"):
        for device in ("cpu", "cuda"):
            model = build()
            if device == "cuda":
                model.load_state_dict(results["cpu"][3])
            state0 = {k: np.array(v) for k, v in model.state_dict().items()}
            model.to(device=device, dtype=dtype)
            assert all(p.device == device for p in model.parameters())
            out = _training_step(model, Tensor(x.astype(dtype)).to(device), Tensor(y.astype(dtype)).to(device),
                                 loss_fn, make_opt(list(model.parameters())))
            results[device] = out + (state0,)
    (lc, gc, wc, _), (lg, gg, wg, _) = results["cpu"], results["cuda"]
    tol = 1e-10 if dtype == np.float64 else 2e-4
    assert abs(lg - lc) <= tol * max(1.0, abs(lc))
    for name in gc:
        scale = max(1.0, float(np.abs(gc[name]).max()))
        np.testing.assert_allclose(gg[name], gc[name], rtol=0, atol=tol * scale, err_msg=f"gradient {name}")
        np.testing.assert_allclose(wg[name], wc[name], rtol=0, atol=tol * scale, err_msg=f"updated {name}")
