"""``python -m minisr.crops``: the model card's side-by-side crops (HR, bicubic, models) with PSNR/SSIM."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest

import minisr
from minisr import checkpoint, crops, models
from minisr.data import imresize, write_image
from minisr.metrics import psnr, ssim
from minisr.upscalers import make_upscaler


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A data root with one benchmark, Tiny: two 64x80 / 72x64 images."""
    root = tmp_path_factory.mktemp("root")
    rng = np.random.default_rng(3)
    for name, shape in [("a", (16, 20, 3)), ("b", (18, 16, 3))]:
        noise = rng.integers(0, 256, size=shape).astype(np.float64)
        write_image(root / "Tiny" / f"{name}.png", np.clip(imresize(noise, 4), 0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    minisr.manual_seed(4)
    g = models.build("srresnet", scale=4, n_blocks=1, n_feats=4)
    path = tmp_path_factory.mktemp("ck") / "g.npz"
    checkpoint.save(path, g.state_dict(), dict(model="srresnet", config=g.config, scale=4, scales=[4]))
    return path


def test_parse():
    assert crops.parse_crops("Set5:butterfly@10,20,Set14:baboon") == [("Set5", "butterfly", (10, 20)),
                                                                      ("Set14", "baboon", None)]
    assert crops.parse_models("bicubic,SRGAN=runs/x/last.npz,runs/y/best.npz", 4) == [
        ("bicubic", "bicubic"), ("SRGAN", "runs/x/last.npz"), ("y/best", "runs/y/best.npz")]
    assert crops.default_models(4)[0] == "bicubic"
    assert all(name in models.shipped() for name in crops.default_models(4)[1:])
    for bad in ["butterfly", "Set5:b@1", "Set5:b@1,x"]:
        with pytest.raises(ValueError, match="--crops"):
            crops.parse_crops(bad)


def test_default_columns_take_edsr_under_either_name(monkeypatch):
    """The default columns: bicubic, then the shipped models of the scale in architecture order, EDSR shipped as
    "edsr-x4" or as "edsr-baseline-x4" (issue 13's name)."""
    fake = {n: f"{n}.npz" for n in ("srgan-x4", "edsr-baseline-x4", "srcnn-x4", "srresnet-x4", "srcnn-x3")}
    monkeypatch.setattr(models, "shipped", lambda: fake)
    assert crops.default_models(4) == ["bicubic", "srcnn-x4", "edsr-baseline-x4", "srresnet-x4", "srgan-x4"]


def test_detailed_window_finds_the_texture():
    img = np.full((60, 80), 128, np.uint8)
    img[30:50, 44:64] = np.random.default_rng(0).integers(0, 256, (20, 20))
    y, x = crops.detailed_window(img, 20, step=2)
    assert (y, x) == (30, 44)


@pytest.mark.parametrize("spec", ["bicubic", "ckpt", "srcnn-x4"])
def test_a_crop_from_a_window_equals_the_crop_of_the_whole_image(root, ckpt, spec):
    up = make_upscaler(str(ckpt) if spec == "ckpt" else spec, 4)
    lr = np.asarray(iio.imread(root / "Tiny" / "a.png"))  # any LR image: 64x80, 256x320 upscaled
    whole = np.asarray(up(lr)).astype(int)
    for y, x in [(0, 0), (101, 139), (256 - 16, 320 - 16)]:
        part = crops.crop_sr(up, lr, 4, y, x, 16, context=16)  # tiny SRResNet: radius 13
        np.testing.assert_allclose(part.astype(int), whole[y:y + 16, x:x + 16], atol=1)
    if spec != "bicubic":  # too little context shows (the test can fail)
        part = crops.crop_sr(up, lr, 4, 101, 139, 16, context=1)
        assert np.abs(part.astype(int) - whole[101:117, 139:155]).max() > 1


def test_cli_writes_the_figure_and_the_numbers(root, ckpt, tmp_path, capsys):
    out, js = tmp_path / "c.png", tmp_path / "c.json"
    code = crops.main(["--scale", "4", "--data-root", str(root), "--crops", "Tiny:a,Tiny:b@4,8", "--size", "24",
                       "--models", f"bicubic,G={ckpt}", "--out", str(out), "--json", str(js)])
    assert code == 0, capsys.readouterr().err
    assert iio.imread(out).ndim == 3
    res = json.loads(js.read_text())
    assert [(c["image"], c["y"], c["x"]) for c in res["crops"]][1] == ("b", 4, 8)
    assert [m["label"] for m in res["crops"][0]["results"]] == ["bicubic", "G"]
    # the scores are those of the crop, against the HR crop
    hr = iio.imread(root / "Tiny" / "b.png")
    sr = imresize(imresize(hr, 1 / 4), 4)[4:28, 8:32]
    m = res["crops"][1]["results"][0]
    assert m["psnr"] == pytest.approx(psnr(sr, hr[4:28, 8:32])) and m["ssim"] == pytest.approx(ssim(sr, hr[4:28, 8:32]))
    for args, msg in [(["--crops", "Tiny:zz"], "no such image"), (["--crops", "Tiny:a@70,0"], "leaves the"),
                      (["--models", "nonexistent-x4"], "nonexistent-x4")]:
        assert crops.main(["--data-root", str(root), "--size", "24", "--out", str(tmp_path / "x.png"), *args]) == 2
        assert msg in capsys.readouterr().err


def test_cli_refuses_bad_values_and_unwritable_outputs_with_one_line(root, tmp_path, capsys):
    """--scale 0 (a ZeroDivisionError), --context -5 (a window inside the crop), --size 5 (too small for SSIM):
    refused at parse time; an output that cannot be written is an error line, and no temporary file stays."""
    for bad in (["--scale", "0"], ["--context", "-5"], ["--size", "5"]):
        with pytest.raises(SystemExit) as stop:
            crops.main(["--data-root", str(root), "--crops", "Tiny:a", "--models", "bicubic", *bad])
        assert stop.value.code == 2 and capsys.readouterr().err.startswith("error: argument")
    (tmp_path / "a_file").write_text("x")
    code = crops.main(["--scale", "4", "--data-root", str(root), "--crops", "Tiny:a", "--size", "24", "--models",
                       "bicubic", "--out", str(tmp_path / "ok.png"), "--json", str(tmp_path / "a_file" / "c.json")])
    err = capsys.readouterr().err
    assert code == 1 and f"error: could not write {tmp_path / 'a_file' / 'c.json'}" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "ok.png"]
