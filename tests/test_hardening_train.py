"""Training under hostile conditions: two runs on one output folder (a lock naming the other's pid; a dead
process's lock taken over), a full disk while saving a checkpoint (injected, and on a real 512 KiB tmpfs when the
tests run as root), and kill -9 at random moments followed by --resume: every checkpoint loads, the run finishes."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_training_images

from minisr import backends, checkpoint, runlock, train

TINY = ["--features", "8,4", "--patch", "20", "--stride", "10", "--batch-size", "4", "--backend", "numpy"]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), MPLBACKEND="Agg")


@pytest.fixture(autouse=True)
def _keep_the_cpu_backend():
    """train.main(--backend numpy) sets the process's CPU backend: put it back for the tests that follow."""
    before = backends.cpu_backend_name()
    yield
    backends.set_backend(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_training_images(tmp_path_factory.mktemp("data"), [(10, 12, 3), (11, 10, 3), (10, 10)])


def args(data, out, *extra):
    return ["srcnn", "--data", str(data), "--val", str(data), "--out", str(out), *TINY, *map(str, extra)]


def run(capsys, argv):
    code = train.main([str(a) for a in argv])
    got = capsys.readouterr()
    return code, got.out, got.err


def holder(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock until killed."""
    code = ("import sys, time; from minisr.runlock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert p.stdout.readline().strip() == "locked"
    return p


# --------------------------------------------------------------------------------------------------- the lock
def test_second_run_on_one_folder_is_refused_then_takes_over_a_dead_lock(data, tmp_path, capsys):
    out = tmp_path / "run"
    other = holder(out)
    try:
        code, _, err = run(capsys, args(data, out, "--steps", "2"))
        assert code == 2 and err.startswith("error: ")
        assert str(out) in err and f"pid {other.pid}" in err and "--out" in err
        assert not (out / "last.npz").exists()
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    code, _, err = run(capsys, args(data, out, "--steps", "2"))  # the dead process's lock is taken over
    assert code == 0, err
    assert checkpoint.load(out / "last.npz")["meta"]["step"] == 2
    with runlock.RunLock(out):  # released at the end of the run
        pass


def test_lock_in_process_and_partial_file_cleanup(tmp_path):
    a = runlock.RunLock(tmp_path).acquire()
    with pytest.raises(runlock.FolderLockedError, match=f"pid {os.getpid()}"):
        runlock.RunLock(tmp_path).acquire()
    (tmp_path / ".last.npz.0123abcd.tmp").write_bytes(b"half")
    (tmp_path / ".out.png.89abcdef.png").write_bytes(b"half")
    (tmp_path / "last.npz").write_bytes(b"keep")
    (tmp_path / "crops").mkdir()  # SRGAN's sample crops: a figure killed mid-write there too
    (tmp_path / "crops" / ".step_000500.png.0a1b2c3d.png").write_bytes(b"half")
    (tmp_path / "crops" / "step_000000.png").write_bytes(b"keep")
    assert sorted(p.name for p in runlock.cleanup_partial_files(tmp_path)) == [".last.npz.0123abcd.tmp",
                                                                                ".out.png.89abcdef.png",
                                                                                ".step_000500.png.0a1b2c3d.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [runlock.LOCK_NAME, "crops", "last.npz"]
    assert [p.name for p in (tmp_path / "crops").iterdir()] == ["step_000000.png"]
    a.release()
    runlock.RunLock(tmp_path).acquire().release()


# ---------------------------------------------------------------------------------------------- a full disk
def test_full_disk_while_saving_keeps_the_previous_checkpoint(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, _, err = run(capsys, args(data, out, "--epochs", "1"))
    assert code == 0, err
    good = (out / "last.npz").read_bytes()
    real_savez = np.savez

    def savez_then_enospc(f, **arrays):
        real_savez(f, **arrays)  # the bytes go out, then the disk is full
        f.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.np, "savez", savez_then_enospc)
    code, _, err = run(capsys, ["--resume", out / "last.npz", "--epochs", "2"])
    monkeypatch.undo()
    assert code == 1
    assert "No space left on device" in err and "last.npz" in err and "intact" in err and "Traceback" not in err
    assert (out / "last.npz").read_bytes() == good  # untouched
    assert checkpoint.load(out / "last.npz")["meta"]["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no partial file left
    code, _, err = run(capsys, ["--resume", out / "last.npz", "--epochs", "2"])  # space again: it continues
    assert code == 0, err
    assert checkpoint.load(out / "last.npz")["meta"]["epoch"] == 2


@pytest.fixture
def small_fs(tmp_path):
    """A real 512 KiB filesystem (tmpfs), when the tests may mount one (root); else skip."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or sys.platform != "linux":
        pytest.skip("mounting a small tmpfs needs root on Linux")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_on_a_real_small_filesystem(data, small_fs, capsys):
    out = small_fs / "run"
    code, _, err = run(capsys, args(data, out, "--epochs", "1"))
    assert code == 0, err
    good = (out / "last.npz").read_bytes()
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk, then free less than a checkpoint's room
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(filler, max(os.path.getsize(filler) - len(good) // 2, 0))
    code, _, err = run(capsys, ["--resume", out / "last.npz", "--epochs", "2"])
    assert code == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert (out / "last.npz").read_bytes() == good
    assert checkpoint.load(out / "last.npz")["meta"]["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".last.npz.")]


# --------------------------------------------------------------------------------------------------- kill -9
def test_kill_9_at_random_moments_then_resume(data, tmp_path):
    """Kill a training (checkpoint every step) at random moments, 4 times; each time every checkpoint on disk must
    load, and --resume (or a fresh start, when it died before its first save) continues; the last run finishes."""
    out = tmp_path / "run"
    rng = random.Random(20)
    fresh = [sys.executable, "-m", "minisr.train", *args(data, out, "--epochs", "30", "--save-every", "1")]
    resume = [sys.executable, "-m", "minisr.train", "--resume", str(out / "last.npz")]
    steps = []
    for _ in range(4):
        cmd = resume if (out / "last.npz").exists() else fresh
        before = os.stat(out / "last.npz").st_mtime_ns if (out / "last.npz").exists() else None
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:  # wait for this run's first save, then a bit more
            if (out / "last.npz").exists() and os.stat(out / "last.npz").st_mtime_ns != before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))  # a save every step (~0.1 s): kills land inside writes too
        assert p.poll() is None, "the training ended before it was killed"
        p.send_signal(signal.SIGKILL)
        p.wait()
        for name in ("last.npz", "best.npz"):
            if (out / name).exists():
                ckpt = checkpoint.load(out / name)  # a whole file, always
                assert ckpt["model"] and ckpt["meta"]["model"] == "srcnn"
        if (out / "last.npz").exists():
            steps.append(checkpoint.load(out / "last.npz")["meta"]["step"])
    assert len(steps) == 4 and steps == sorted(steps) and steps[0] > 0  # each run saved, and never went back
    cmd = resume if (out / "last.npz").exists() else fresh
    r = subprocess.run(cmd + (["--epochs", "4"] if cmd is resume else []), capture_output=True, text=True,
                       env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = checkpoint.load(out / "last.npz")["meta"]
    assert meta["epoch"] >= 4 and [h["epoch"] for h in meta["history"]] == list(range(1, meta["epoch"] + 1))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # partial files of the killed runs cleaned


def test_an_out_that_cannot_be_created_is_one_error_line(data, tmp_path, capsys):
    """--out below a file: mkdir's NotADirectoryError is an ``error:`` line and code 2, not a traceback."""
    (tmp_path / "a_file").write_text("x")
    code, _, err = run(capsys, args(data, tmp_path / "a_file" / "run", "--steps", "1"))
    assert code == 2 and err.startswith("error:") and "Traceback" not in err


def test_the_lock_is_released_when_the_trainer_fails_unexpectedly(data, tmp_path, capsys):
    """An error run_cli does not report (a bug's TypeError) still releases the folder's lock on its way up."""
    class Broken(train.Trainer):
        def __init__(self, *a, **k):
            raise TypeError("a bug")

    out = tmp_path / "run"
    parser = train.build_parser()
    with pytest.raises(TypeError):
        train.run_cli(args(data, out, "--steps", "1"), parser, train.config_from_args, train.Config, Broken)
    runlock.RunLock(out).acquire().release()  # would raise FolderLockedError if the lock were still held


def test_a_lock_whose_pid_cannot_be_written_is_not_left_held(tmp_path, monkeypatch):
    """A full disk while writing the owner's pid: acquire fails, and the file is neither held nor left open."""
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(runlock.os, "write", full)
        with pytest.raises(OSError):
            runlock.RunLock(tmp_path).acquire()
    runlock.RunLock(tmp_path).acquire().release()  # FolderLockedError if the failed attempt still held it
