"""python -m minisr.prs: a tiny end-to-end run on the embedded digits (cached classifier the second time), an
ImageFolder run in both layouts, the batched degradation, and bad input (exit status 2, a message, no traceback)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from minisr import prs
from minisr.data import imresize, write_image

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn not installed")
TINY = ["--limit", "96", "--epochs", "2"]  # 4 steps: well above chance (10%), a few seconds


def run(argv, capsys):
    code = prs.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_tiny_prs_run_end_to_end_and_cached(tmp_path, capsys):
    argv = TINY + ["--model", "srcnn-x2", "--cache-dir", str(tmp_path / "cache"), "--chart", str(tmp_path / "c.png"),
                   "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert [r["images"] for r in report["rows"]] == ["original", "bicubic x2", "srcnn-x2 x2"]
    assert report["rows"][0]["prs"] == 1.0
    assert report["rows"][0]["accuracy"] > 0.3  # it learned something in 4 steps: chance is 0.1
    assert report["rows"][0]["psnr"] is None and all(20 < r["psnr"] < 60 for r in report["rows"][1:])
    for r in report["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["prs"] == pytest.approx(r["accuracy"] / report["rows"][0]["accuracy"])
    assert report["n_test"] == 96 and report["image_size"] == [32, 32]
    assert not report["classifier"]["cached"]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out2, _ = run(argv, capsys)
    again = json.loads(out2)
    assert code == 0 and again["classifier"]["cached"]
    assert again["rows"] == report["rows"]  # the cached classifier classifies exactly as the trained one


def _image_folder(root, layout):
    """Two classes of 12x12 images told apart by which half is bright."""
    rng = np.random.default_rng(0)
    parts = ["train", "test"] if layout == "split" else [""]
    for part in parts:
        for c in ("top", "bottom"):
            for i in range(6):
                img = rng.integers(0, 60, (12, 12)).astype(np.uint8)
                img[:6] += 150 * (c == "top")
                img[6:] += 150 * (c == "bottom")
                write_image(root / part / c / f"{i}.png", img)
    return root


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_prs_on_an_image_folder(tmp_path, capsys, layout):
    data = _image_folder(tmp_path / "data", layout)
    code, out, err = run(["--data", str(data), "--model", "bicubic", "--epochs", "1", "--cache-dir",
                          str(tmp_path / "cache"), "--chart", str(tmp_path / "c.png"), "--examples",
                          str(tmp_path / "e.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    assert "bicubic x2" in out and "PRS" in out
    assert ("data/train and" in out) == (layout == "split")


def test_degrade_is_imresize_per_image(rng):
    grey = rng.integers(0, 256, (3, 12, 10)).astype(np.uint8)
    rgb = rng.integers(0, 256, (2, 9, 6, 3)).astype(np.uint8)
    for images, s in ((grey, 2), (rgb, 3)):
        want = np.stack([imresize(im, 1 / s) for im in images])
        np.testing.assert_array_equal(prs.degrade(images, s), want)


@pytest.mark.parametrize("make,extra,match", [
    (lambda p: p / "missing", [], r"--data .*missing: no such folder"),
    (lambda p: p, [], r"expected one folder per class"),
    (lambda p: write_image(p / "x.png", np.zeros((4, 4), np.uint8)), [], r"x.png: not a folder"),
    (lambda p: (p / "a").mkdir() or (p / "b").mkdir() or p, [], r"class folder .* holds no images"),
    (lambda p: _image_folder(p, "flat"), ["--model", "no-such-model"], r"unknown model 'no-such-model'"),
    (lambda p: _image_folder(p, "flat"), ["--scale", "5"], r"--scale 5: choose one of"),
    (lambda p: _image_folder(p, "flat"), ["--model", "srcnn-x2", "--scale", "3"], r"srcnn-x2"),
])
def test_bad_input(tmp_path, capsys, make, extra, match):
    data = make(tmp_path)
    code, out, err = run(["--data", str(data), "--epochs", "1", "--cache-dir", str(tmp_path / "cache"),
                          "--chart", str(tmp_path.parent / f"{tmp_path.name}.png")] + extra, capsys)
    assert code == 2
    assert err.startswith("error: ")
    assert re.search(match, err), err
    assert "Traceback" not in err


def test_images_of_different_sizes(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", "flat")
    write_image(data / "top" / "odd.png", np.zeros((10, 12), np.uint8))
    code, _, err = run(["--data", str(data), "--cache-dir", str(tmp_path / "c"), "--chart",
                        str(tmp_path / "c.png")], capsys)
    assert code == 2 and "must have one size" in err and "odd.png is 12x10" in err


def test_cli_exit_status_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", "minisr.prs", "--data", str(tmp_path / "nope"), "--model", "bicubic",
                        "--chart", str(tmp_path / "c.png")], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert "no such folder" in r.stderr and "Traceback" not in r.stderr
