"""``minisr.upscale --max-memory``: the tile size chosen from a memory budget (minisr.upscalers.tile_for_memory), the
same image whatever the tile, and the budget held: the peak RSS of an upscale in a child process, measured from
its kernel high-water mark, rises by no more than the budget plus the whole-image arrays (and it does rise by much
more without the budget). The big images: bench/upscale_memory.py, figures in bench/RESULTS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minisr import checkpoint, models
from minisr.random import manual_seed
from minisr.upscalers import Upscaler, make_upscaler, tile_for_memory

MiB = 2 ** 20
EDSR = dict(scale=2, n_resblocks=2, n_feats=64, res_scale=1.0)


@pytest.fixture(scope="module")
def edsr_ckpt(tmp_path_factory):
    manual_seed(0)
    model = models.build("edsr", **EDSR)
    path = tmp_path_factory.mktemp("m") / "edsr.npz"
    return checkpoint.save(path, model.state_dict(), dict(model="edsr", config=model.config, scale=2, scales=[2]))


def test_tile_grows_with_the_budget_and_a_tiny_budget_is_refused():
    manual_seed(0)
    m = models.build("edsr", **EDSR)
    tiles = [tile_for_memory(m, mb * MiB) for mb in (16, 32, 96)]
    assert tiles == sorted(tiles) and tiles[0] >= 8 and tiles[2] > 2 * tiles[0]
    with pytest.raises(ValueError, match=r"--max-memory 1M is too small for this model: it takes .* KiB per input "
                                         r"pixel, and the smallest tile \(8 pixels"):
        tile_for_memory(m, 1 * MiB)
    with pytest.raises(ValueError, match="on a GPU give --tile"):
        Upscaler(m, dict(model="edsr", scale=2), 2, device="cuda", max_memory=64 * MiB)


def test_budget_gives_the_same_image(edsr_ckpt, rng, monkeypatch):
    """Bit for bit with the direct convolutions, whose sums do not depend on where a tile starts; with Winograd
    (the default for EDSR's 3x3 layers) a pixel's float32 rounding depends on its place in a 4x4 block, so a few
    pixels may round to the next 8-bit level."""
    lr = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    small = make_upscaler(str(edsr_ckpt), 2, max_memory=8 * MiB)
    assert small.tile < 70  # several tiles
    whole = make_upscaler(str(edsr_ckpt), 2, tile=512)
    a, b = small(lr).astype(int), whole(lr).astype(int)
    assert np.abs(a - b).max() <= 1 and np.mean(a != b) < 1e-3
    monkeypatch.setenv("MINISR_CONV", "direct")
    np.testing.assert_array_equal(small(lr), whole(lr))


CHILD = r"""
import json, sys, numpy as np
from pathlib import Path
from minisr.upscalers import make_upscaler

def hwm():
    return next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines()
                if l.startswith("VmHWM:"))

ckpt, budget, tile = sys.argv[1], sys.argv[2], sys.argv[3]
up = make_upscaler(ckpt, 2, max_memory=int(budget)) if budget != "-" else make_upscaler(ckpt, 2, tile=int(tile))
rng = np.random.default_rng(0)
up(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8))  # warm-up: every kernel compiled, workspace made
lr = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
before = hwm()
sr = up(lr)
print(json.dumps({"rise": hwm() - before, "tile": up.tile, "shape": sr.shape}))
"""


def _child(ckpt, budget="-", tile=0):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(budget), str(tile)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_peak_rss_stays_within_the_budget(edsr_ckpt):
    budget = 32 * MiB
    got = _child(edsr_ckpt, budget)
    # the whole-image arrays the budget does not cover: the LR input (float64, clipped, / 255), the float32 network
    # input, the output (float32 from the tiles, float64) and the uint8 result
    h, w = 240, 320
    image = h * w * 3 * (8 + 8 + 4) + 4 * h * w * 3 * (4 + 8 + 1)
    assert got["tile"] < 240 and tuple(got["shape"]) == (480, 640, 3)
    assert got["rise"] <= budget + image + 16 * MiB, f"rise {got['rise'] / MiB:.0f} MiB, tile {got['tile']}"
    whole = _child(edsr_ckpt, tile=1024)  # one tile: the activations of the whole image
    assert whole["rise"] > got["rise"] + 2 * budget, (whole, got)
    print(f"rise with --max-memory {budget / MiB:.0f}M: {got['rise'] / MiB:.0f} MiB (tile {got['tile']}); "
          f"untiled: {whole['rise'] / MiB:.0f} MiB; whole-image arrays {image / MiB:.0f} MiB")


def test_a_budget_for_bicubic_is_refused_not_ignored(tmp_path, capsys):
    """bicubic runs no network, so --max-memory would choose nothing: an error line, not a silent no-op."""
    from minisr import upscale
    from minisr.data import write_image

    write_image(tmp_path / "a.png", np.zeros((12, 12, 3), np.uint8))
    code = upscale.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png"), "--model", "bicubic", "--scale",
                         "2", "--max-memory", "1G"])
    assert code == 2 and "--max-memory" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists()
