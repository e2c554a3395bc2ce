"""Engine integrity (issue 22): no silent wrong gradient after an in-place write (through any view, or by an
optimizer step), clear errors instead of out-of-bounds kernel reads, checkpoints that load back, and conv
workers that stay consistent after Ctrl-C and work after fork().

Each test here failed before its fix; they run on both CPU kernel sets where kernels are involved."""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
import time

import numpy as np
import pytest

import minisr
import minisr.functional as F
from minisr import Tensor, checkpoint, models, nn, optim

SAVED = "backward: a tensor it needs was modified"


@pytest.fixture(params=minisr.backends.CPU_BACKENDS)
def backend(request):
    with minisr.use_backend(request.param):
        yield request.param


def _x(values=(-1.0, 2.0, -3.0, 4.0)):
    return Tensor(np.array(values, np.float32), requires_grad=True)


# ------------------------------------------------------------------------------ saved arrays are version-checked
def _relu_case(x):
    y = F.relu(x * 1.0)
    return y, y  # (the op output, the tensor that is then overwritten)


def _pow_case(x):
    y = x * 1.0
    return y ** 2, y


def _mse_case(x):
    y = x * 1.0
    return F.mse_loss(y, np.zeros(4, np.float32)), y


def _l1_case(x):
    y = x * 1.0
    return F.l1_loss(y, np.full(4, 0.5, np.float32)), y


def _leaky_case(x):
    y = x * 1.0
    return F.leaky_relu(y, 0.1), y


def _mul_case(x):
    y = x * 1.0
    return y * Tensor(np.ones(4, np.float32)), y


@pytest.mark.parametrize("case", [_relu_case, _pow_case, _mse_case, _l1_case, _leaky_case, _mul_case],
                         ids=lambda f: f.__name__[1:-5])
def test_backward_that_reads_an_overwritten_saved_tensor_raises(case, backend):
    """E.g. y = relu(x); y += 10 (in place); backward gave dx = [1 1 1 1] instead of raising."""
    out, saved = case(_x())
    out = F.add(out, 0.0)  # (the in-place write below must not be on out's own array)
    F.add(saved, 10.0, inplace=True)
    with pytest.raises(RuntimeError, match=SAVED):
        out.sum().backward()


def test_relu_output_overwritten_by_the_returned_tensor_raises(backend):
    """The issue's example, using what add(inplace=True) returns: relu's backward reads its overwritten y."""
    x = _x()
    y = F.relu(x * 1.0)
    z = F.add(y, 10.0, inplace=True)
    with pytest.raises(RuntimeError, match="relu " + SAVED):
        z.sum().backward()


def test_loss_target_overwritten_raises(backend):
    x = _x()
    target = Tensor(np.zeros(4, np.float32))
    loss = F.mse_loss(x * 1.0, target)
    F.add(target, 1.0, inplace=True)
    with pytest.raises(RuntimeError, match="mse_loss " + SAVED):
        loss.backward()


VIEWS = {
    "reshape": lambda t: t.reshape(2, 2),
    "slice": lambda t: t[1:3],
    "index": lambda t: t.reshape(2, 2)[1],
    "detach": lambda t: t.detach(),
    "detach-reshape": lambda t: t.detach().reshape(4, 1),
    "tensor-of-data": lambda t: Tensor(t.data[::2]),
}


@pytest.mark.parametrize("view", VIEWS, ids=str)
@pytest.mark.parametrize("op", ["relu", "add"])
def test_inplace_write_through_a_view_is_seen_by_the_saved_tensor_check(view, op, backend):
    """The version counter belongs to the storage: every tensor viewing one array shares it."""
    x = _x()
    y = F.relu(x * 1.0)
    out = y * 3.0  # (no saved data: only relu's check can fire)
    v = VIEWS[view](y)
    if op == "relu":
        F.relu(v, inplace=True)  # (same values: the version is bumped all the same, as in PyTorch)
    else:
        F.add(v, 10.0, inplace=True)
    with pytest.raises(RuntimeError, match="relu " + SAVED):
        out.sum().backward()


def test_conv_input_overwritten_through_a_view_raises(backend):
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((1, 2, 5, 5)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), requires_grad=True)
    h = F.conv2d(x, w, padding=1)
    y = F.conv2d(h, w, padding=1)
    F.relu(h.reshape(-1), inplace=True)
    with pytest.raises(RuntimeError, match="conv2d " + SAVED):
        y.sum().backward()


def test_views_share_the_version_counter():
    x = Tensor(np.zeros((2, 3), np.float32))
    views = [x.reshape(6), x[1], x.detach(), x.reshape(3, 2)[1:], Tensor(x.data)]
    F.add(views[1], 1.0, inplace=True)
    assert len({t._version for t in [x] + views}) == 1 and x._version > 0
    copy = x[:, 1:]  # (not contiguous: getitem copies, so a write to it does not touch x)
    before = x._version
    F.add(copy, 1.0, inplace=True)
    assert x._version == before and float(x.data.sum()) == 3.0


@pytest.mark.parametrize("view", ["reshape", "slice", "index"])
@pytest.mark.parametrize("op", ["relu", "add"])
def test_inplace_on_a_view_of_a_parameter_is_refused(view, op):
    w = nn.Parameter(np.array([[-1.0, 2.0], [-3.0, 4.0]], np.float32))
    v = {"reshape": lambda: w.reshape(4), "slice": lambda: w[0:1], "index": lambda: w[1]}[view]()
    with pytest.raises(RuntimeError, match="view of a leaf"):
        F.relu(v, inplace=True) if op == "relu" else F.add(v, 1.0, inplace=True)
    np.testing.assert_array_equal(w.data, [[-1, 2], [-3, 4]])
    with minisr.no_grad():  # (as an optimizer update: allowed)
        F.add(w.reshape(4), 1.0, inplace=True)
    np.testing.assert_array_equal(w.data, [[0, 3], [-2, 5]])


def test_using_a_tensor_after_an_inplace_write_it_did_not_record_raises(backend):
    """y's graph no longer matches its values once they were overwritten through a view (or by an in-place
    op whose result was not used): its gradient would be silently wrong, so using it is refused."""
    x = _x()
    y = x * 2.0
    F.relu(y.reshape(2, 2), inplace=True)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum()
    a, b = _x(), _x((1.0, 1.0, 1.0, 1.0))
    r = a * 1.0
    F.add(r, b, inplace=True)  # the sum is in r's array, but r's graph does not know b
    with pytest.raises(RuntimeError, match="modified in place"):
        (r * 2.0).sum()
    # what the in-place op returned is the tensor to use: its gradient is right
    r = a * 1.0
    s = F.add(r, b, inplace=True)
    s.sum().backward()
    np.testing.assert_array_equal(b.grad, np.ones(4))


@pytest.mark.parametrize("opt_cls", [optim.SGD, optim.Adam])
def test_optimizer_step_between_forward_and_backward_raises(opt_cls, backend):
    """An optimizer step writes the parameters in place: conv2d's backward (which reads the weight for dx) and
    mul's must notice."""
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((1, 2, 6, 6)).astype(np.float32), requires_grad=True)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    opt = opt_cls(conv.parameters(), lr=0.5)
    out = conv(x)
    before = conv.weight._version
    for p in conv.parameters():
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    assert conv.weight._version > before
    with pytest.raises(RuntimeError, match="conv2d " + SAVED):
        out.sum().backward()
    w = nn.Parameter(np.ones(4, np.float32))
    opt = opt_cls([w], lr=0.5)
    out = _x() * w
    w.grad = np.ones(4, np.float32)
    opt.step()
    with pytest.raises(RuntimeError, match="mul " + SAVED):
        out.sum().backward()


def test_conv_weight_changed_by_load_state_dict_is_noticed(backend):
    x = Tensor(np.ones((1, 1, 4, 4), np.float32), requires_grad=True)
    conv = nn.Conv2d(1, 1, 3)
    out = conv(x)
    conv.load_state_dict({k: v * 2 for k, v in conv.state_dict().items()})
    with pytest.raises(RuntimeError, match="conv2d " + SAVED):
        out.sum().backward()


# ------------------------------------------------------------------------------ validation at the kernel boundary
@pytest.mark.parametrize("opt_cls", [optim.SGD, optim.Adam])
@pytest.mark.parametrize("bad", ["shape", "dtype", "size"])
def test_optimizer_refuses_a_gradient_of_the_wrong_shape_or_dtype(opt_cls, bad, backend):
    p = nn.Parameter(np.ones((3, 4), np.float32))
    grad = {"shape": np.ones((4, 3), np.float32), "dtype": np.ones((3, 4), np.float64),
            "size": np.ones(5, np.float32)}[bad]
    opt = opt_cls([p], lr=0.1)
    p.grad = grad
    with pytest.raises((ValueError, TypeError), match=r"grad"):
        opt.step()
    np.testing.assert_array_equal(p.data, np.ones((3, 4)))


def test_backward_refuses_to_accumulate_into_a_grad_of_the_wrong_shape_or_dtype():
    w = Tensor(np.ones(4, np.float32), requires_grad=True)
    w.grad = np.ones(1, np.float32)  # would broadcast silently
    with pytest.raises(ValueError, match="grad"):
        (w * 2.0).sum().backward()
    w.grad = np.ones(4, np.float64)  # would turn the gradient into float64
    with pytest.raises(TypeError, match="grad"):
        (w * 2.0).sum().backward()
    w.grad = np.ones(4, np.float32)
    (w * 2.0).sum().backward()
    np.testing.assert_array_equal(w.grad, np.full(4, 3.0))


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda ps: optim.Adam(ps, lr=0.1)], ids=["sgd", "sgd-nesterov", "adam"])
def test_optimizer_state_of_a_0d_parameter_survives_save_and_load(make, backend, tmp_path):
    """A 0-d parameter's momentum buffer came back as a Python float: the Numba step crashed and the NumPy step
    silently dropped the momentum."""
    grads = [0.5, -1.0, 2.0, 0.25, -0.75, 1.5]

    def run(p, opt, gs):
        for g in gs:
            p.grad = np.asarray(g, np.float32)
            opt.step()

    p = nn.Parameter(np.asarray(1.0, np.float32))
    run(p, make([p]), grads)
    want = float(p.data)

    q = nn.Parameter(np.asarray(1.0, np.float32))
    opt = make([q])
    run(q, opt, grads[:3])
    path = checkpoint.save(tmp_path / "o.npz", {"q": q.data}, {"step": 3}, opt.state_dict())
    ck = checkpoint.load(path)
    q2 = nn.Parameter(ck["model"]["q"])
    opt2 = make([q2])
    opt2.load_state_dict(ck["optim"])
    run(q2, opt2, grads[3:])
    assert float(q2.data) == want


@pytest.mark.parametrize("fn", ["sum", "mean"])
def test_reduction_axis_out_of_range_raises_as_numpy(fn):
    x = Tensor(np.ones((2, 3, 4, 5), np.float32))
    for axis in (4, 5, -5, (0, 7)):
        with pytest.raises(np.exceptions.AxisError if hasattr(np, "exceptions") else ValueError):
            getattr(x, fn)(axis=axis)
    with pytest.raises(ValueError, match="duplicate"):
        getattr(x, fn)(axis=(1, -3))
    assert getattr(x, fn)(axis=-1).shape == (2, 3, 4)
    assert getattr(x, fn)(axis=(0, -1)).shape == (3, 4)


@pytest.mark.parametrize("wshape", [(2, 3, 0, 3), (2, 3, 3, 0), (0, 3, 3, 3), (2, 0, 3, 3)])
def test_conv2d_refuses_empty_kernels_and_zero_output_channels(wshape, backend):
    C = wshape[1]
    x = Tensor(np.ones((1, C, 5, 5), np.float32))
    w = Tensor(np.ones(wshape, np.float32))
    b = Tensor(np.ones(wshape[0], np.float32))
    with pytest.raises(ValueError, match="conv2d: .*empty"):
        F.conv2d(x, w, b)


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("k", [(3, 3), (2, 2), (4, 3), (1, 5), (2, 5)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_padding_same_and_valid_match_torch(k, padding, backend):
    torch = _torch()
    rng = np.random.default_rng(3)
    x0, w0 = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3) + k)
    b0, g0 = rng.standard_normal(4), None
    x, w, b = (Tensor(a, requires_grad=True) for a in (x0, w0, b0))
    out = F.conv2d(x, w, b, padding=padding)
    g0 = rng.standard_normal(out.shape)
    out.backward(g0)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x0, w0, b0))
    tout = torch.nn.functional.conv2d(tx, tw, tb, padding=padding)
    tout.backward(torch.tensor(g0))
    assert out.shape == tuple(tout.shape)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-10)
    for a, t in [(x, tx), (w, tw), (b, tb)]:
        np.testing.assert_allclose(a.grad, t.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_conv2d_padding_strings_are_checked():
    x, w = Tensor(np.ones((1, 1, 5, 5), np.float32)), Tensor(np.ones((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="same.*stride"):
        F.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="'full'.*same.*valid"):
        F.conv2d(x, w, padding="full")
    conv = nn.Conv2d(1, 2, 4, padding="same")
    assert conv(Tensor(np.ones((1, 1, 6, 5), np.float32))).shape == (1, 2, 6, 5)
    assert nn.Conv2d(1, 2, 3, padding="valid")(Tensor(np.ones((1, 1, 6, 5), np.float32))).shape == (1, 2, 4, 3)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_srcnn_refuses_even_kernels(padding):
    with pytest.raises(ValueError, match="odd"):
        models.build("srcnn", kernels=(9, 4, 5), padding=padding)
    with pytest.raises(ValueError, match="odd"):
        models.build("srcnn", kernels=(8, 1, 5), padding=padding)


def test_tiled_inference_of_an_even_same_conv_keeps_every_pixel():
    from minisr.inference import forward_tiled

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 4, padding="same")
            self.scale, self.border = 1, 0

        def forward(self, x):
            return self.conv(x)

    net = Net()
    x = np.random.default_rng(0).random((1, 1, 13, 11)).astype(np.float32)
    whole = net(Tensor(x)).data
    np.testing.assert_allclose(forward_tiled(net, x, tile=5), whole, rtol=1e-5, atol=1e-6)


def test_checkpoint_save_never_writes_what_load_refuses(tmp_path):
    p = nn.Parameter(np.ones(3, np.float32))
    opt = optim.SGD([{"params": [p], "lr": 0.1, "note": None, "tag": "fine-tune"}], lr=0.1)
    path = checkpoint.save(tmp_path / "a.npz", {"p": p.data}, {"epoch": 1}, opt.state_dict())
    ck = checkpoint.load(path)
    opt2 = optim.SGD([{"params": [p], "lr": 0.5, "note": 1, "tag": ""}], lr=0.5)
    opt2.load_state_dict(ck["optim"])
    assert opt2.param_groups[0]["note"] is None and opt2.param_groups[0]["tag"] == "fine-tune"
    assert opt2.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="optim/bad"):
        checkpoint.save(tmp_path / "b.npz", {"p": p.data}, {}, {"bad": {1, 2}})
    with pytest.raises(ValueError, match="model/w"):
        checkpoint.save(tmp_path / "c.npz", {"w": np.array([None, 1.0])}, {})
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.npz"]


# ------------------------------------------------------------------------------------------- process level
def _nb():
    from minisr.backends import numba

    return numba


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt here, as in a terminal -- also when pytest was started with SIGINT ignored (a
    background job of a non-interactive shell, nohup), which Python would otherwise keep."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupted_wait_for_the_conv_workers_waits_for_the_running_shares(ctrl_c):
    """Ctrl-C while the caller waits for the workers: run() must not return (and free the scratch buffers of
    worker 0 for the calling thread) while a share is still running."""
    from minisr.backends.numba import threads

    pool = threads._Workers(2)
    main = threading.main_thread().ident
    state = {"finished": 0, "started": 0}
    lock = threading.Lock()
    slow_started = threading.Event()

    def interrupter():
        with lock:
            state["started"] += 1
        slow_started.wait(10)
        signal.pthread_kill(main, signal.SIGINT)
        with lock:
            state["finished"] += 1

    def slow():
        with lock:
            state["started"] += 1
        slow_started.set()
        time.sleep(0.5)
        with lock:
            state["finished"] += 1

    with pytest.raises(KeyboardInterrupt):
        pool.run([interrupter, slow])
        time.sleep(5)  # (the signal arrives in run(), or at the latest here)
    with lock:
        assert state["finished"] == state["started"] == 2, "run() returned while a share was still running"


def test_conv_after_an_interrupted_conv_is_right(monkeypatch, ctrl_c):
    """The end-to-end case: Ctrl-C while a conv's workers run, then a conv small enough to run on the calling
    thread (one band), which uses worker 0's scratch columns. Worker 0 is slowed after the interrupt and the
    small conv waits between making its columns and multiplying them, so an orphaned share always overlaps it."""
    from minisr.backends.numba import conv_im2col, threads

    nb = _nb()
    if threads._threads() < 2:
        pytest.skip("needs >= 2 Numba threads")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4, 40, 40)).astype(np.float32)  # (4 channels: im2col + GEMM, one band per image)
    w = rng.standard_normal((16, 4 * 9)).astype(np.float32)
    xs = rng.standard_normal((1, 4, 3, 300)).astype(np.float32)  # one output row: one band, the calling thread
    want = minisr.backends.numpy_backend.conv_forward(xs, w, 3, 3, 1, 1, 0, 0)
    nb.conv_forward(x, w, 3, 3, 1, 1, 0, 0)  # (compiled and loaded before the timing below)
    nb.conv_forward(xs, w, 3, 3, 1, 1, 0, 0)
    main = threading.main_thread()
    real = conv_im2col._im2col_image
    interrupted = threading.Event()

    def im2col_image(*args):
        me = threading.current_thread()
        if me.name.endswith("-1") and not interrupted.is_set():
            interrupted.set()
            signal.pthread_kill(main.ident, signal.SIGINT)
        elif me is not main:
            interrupted.wait(10)  # (worker 0 does its share after the interrupt, slowly)
            time.sleep(0.05)
        real(*args)
        if me is main:
            time.sleep(0.1)  # (the small conv's columns wait for their GEMM)

    monkeypatch.setattr(conv_im2col, "_im2col_image", im2col_image)
    with pytest.raises(KeyboardInterrupt):
        nb.conv_forward(x, w, 3, 3, 1, 1, 0, 0)
        time.sleep(5)  # (the signal arrives in the conv, or at the latest here)
    np.testing.assert_allclose(nb.conv_forward(xs, w, 3, 3, 1, 1, 0, 0), want, rtol=1e-4, atol=1e-4)


def _conv_in_child(queue):
    import minisr.functional as F
    from minisr import Tensor

    with minisr.use_backend("numba"):
        rng = np.random.default_rng(0)
        x = Tensor(rng.standard_normal((2, 8, 12, 12)).astype(np.float32), requires_grad=True)
        w = Tensor(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), requires_grad=True)
        y = F.relu(F.conv2d(x, w, padding=1))
        y.sum().backward()
        queue.put((y.data.copy(), x.grad.copy()))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_parallel_kernels_work_in_a_forked_child():
    """After the parent ran parallel Numba kernels, a fork()ed child (multiprocessing's default on Linux) must
    run them too: it used to abort ("fork() called from a process already using GNU OpenMP") or hang."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    _conv_in_child(queue)  # the parent's threads are up
    want = queue.get(timeout=60)
    child = ctx.Process(target=_conv_in_child, args=(queue,))
    child.start()
    try:
        got = queue.get(timeout=120)
    except Exception:  # noqa: BLE001
        got = None
    child.join(30)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == 0 and got is not None, f"the forked child failed (exit code {child.exitcode})"
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- "noticed, not reproduced" items
def test_l1_gradient_at_a_nan_prediction_is_zero_on_every_backend_as_torch(backend):
    """The reference gave NaN (np.sign), the Numba and CUDA kernels 0, PyTorch 0."""
    pred = Tensor(np.array([np.nan, 1.0, -1.0, 0.0], np.float32), requires_grad=True)
    F.l1_loss(pred, np.zeros(4, np.float32)).backward()
    np.testing.assert_array_equal(pred.grad, [0.0, 0.25, -0.25, 0.0])


def test_checkpoint_save_changes_no_umask_and_syncs_the_folder(tmp_path, monkeypatch):
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    synced = []
    real_fsync = os.fsync

    def no_umask(*_):
        raise AssertionError("os.umask() changes the mask of every thread of the process")

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(os, "umask", no_umask)
    monkeypatch.setattr(os, "fsync", fsync)
    path = checkpoint.save(tmp_path / "m.npz", {"w": np.ones(2, np.float32)}, {"epoch": 1})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    assert synced == [False, True]  # the file, then the folder holding the new name
    assert checkpoint.load(path)["meta"] == {"epoch": 1}


def test_shifted_kernels_are_built_under_numbas_compiler_lock():
    """LLVM's context is shared with Numba: a kernel built on a conv worker must not run beside a Numba compile."""
    from numba.core.compiler_lock import global_compiler_lock

    from minisr.backends import shifted_kernel as sk

    def probe(*_):
        return global_compiler_lock.is_locked()

    try:
        assert sk._cached(probe, "integrity-probe") is True
    finally:
        sk._kernels.pop((probe, "integrity-probe"), None)


def test_conv2d_of_an_empty_batch(backend):
    """N = 0: the Numba kernels divided by zero; PyTorch returns an empty output and zero gradients."""
    x = Tensor(np.ones((0, 3, 5, 5), np.float32), requires_grad=True)
    w = Tensor(np.ones((4, 3, 3, 3), np.float32), requires_grad=True)
    b = Tensor(np.ones(4, np.float32), requires_grad=True)
    y = F.conv2d(x, w, b, padding=1)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert x.grad.shape == (0, 3, 5, 5) and not w.grad.any() and not b.grad.any()
