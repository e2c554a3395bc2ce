"""The evaluation: the published bicubic baseline, the CLI and its errors, the hook to trained models."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from minisr.data import imresize, modcrop, read_image, write_image
from minisr.eval import bicubic_upscaler, evaluate, main
from minisr.metrics import psnr, ssim

# Bicubic PSNR / SSIM (Y channel, border = scale) as published, e.g. in the VDSR / EDSR papers.
PUBLISHED_BICUBIC = {
    ("Set5", 2): (33.66, 0.9299), ("Set5", 3): (30.39, 0.8682), ("Set5", 4): (28.42, 0.8104),
    ("Set14", 2): (30.24, 0.8688), ("Set14", 3): (27.55, 0.7742), ("Set14", 4): (26.00, 0.7027),
}


@pytest.mark.parametrize("dataset,scale", sorted(PUBLISHED_BICUBIC))
def test_bicubic_matches_the_published_table(data_root, dataset, scale):
    result = evaluate(bicubic_upscaler(scale), dataset, scale, data_root=data_root)
    expected_psnr, expected_ssim = PUBLISHED_BICUBIC[dataset, scale]
    assert len(result["images"]) == {"Set5": 5, "Set14": 14}[dataset]
    assert result["mean"]["psnr"] == pytest.approx(expected_psnr, abs=0.03)
    assert result["mean"]["ssim"] == pytest.approx(expected_ssim, abs=0.002)


def test_cli_json_in_a_subprocess(data_root):
    env = {k: v for k, v in os.environ.items() if k != "MINISR_DATA"}
    proc = subprocess.run([sys.executable, "-m", "minisr.eval", "--model", "bicubic", "--dataset", "Set5",
                           "--scale", "4", "--json", "--data-root", str(data_root)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    assert set(result) == {"model", "dataset", "scale", "ensemble", "mean", "images"}
    assert result["ensemble"] is False
    assert (result["model"], result["dataset"], result["scale"]) == ("bicubic", "Set5", 4)
    assert [im["name"] for im in result["images"]] == ["baby", "bird", "butterfly", "head", "woman"]
    assert set(result["images"][0]) == {"name", "psnr", "ssim"}
    assert result["mean"]["psnr"] == pytest.approx(28.42, abs=0.03)
    assert result["mean"]["ssim"] == pytest.approx(0.8104, abs=0.002)
    assert result["mean"]["psnr"] == pytest.approx(np.mean([im["psnr"] for im in result["images"]]))


@pytest.fixture
def tiny_set(tmp_path, rng):
    """A folder of two smooth-ish RGB images (no LR folder: the LR is made by imresize)."""
    folder = tmp_path / "tiny"
    for name in ("one", "two"):
        noise = rng.integers(0, 256, size=(12, 15, 3)).astype(np.float64)
        write_image(folder / f"{name}.png", imresize(noise, 4).clip(0, 255).astype(np.uint8))
    return folder


def test_cli_table(tiny_set, capsys):
    assert main(["--model", "bicubic", "--dataset", str(tiny_set), "--scale", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("bicubic on") and "x2" in lines[0]
    assert any(line.startswith("one ") for line in lines) and any(line.startswith("two ") for line in lines)
    mean_line = next(line for line in lines if line.startswith("mean"))
    result = evaluate(bicubic_upscaler(2), tiny_set, 2)
    assert f"{result['mean']['psnr']:.2f}" in mean_line and f"{result['mean']['ssim']:.4f}" in mean_line


def test_bad_scale_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "bicubic", "--dataset", "Set5", "--scale", "5"])
    assert exit_info.value.code == 2
    assert "--scale" in capsys.readouterr().err


def test_unknown_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINISR_DATA", str(tmp_path))
    assert main(["--model", "bicubic", "--dataset", "Set99", "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "Set99" in err and str(tmp_path) in err and "MINISR_DATA" in err


def test_corrupt_image_in_dataset(tiny_set, capsys):
    (tiny_set / "broken.png").write_text("not a png")
    assert main(["--model", "bicubic", "--dataset", str(tiny_set), "--scale", "2"]) == 2
    assert "broken.png" in capsys.readouterr().err


def fake_upscale_module(calls, error=None):
    """A stand-in for minisr.upscalers: make_upscaler gives nearest-neighbour upscaling, or raises ``error``."""
    def make_upscaler(model, scale, device="cpu"):
        calls.append((model, scale, device))
        if error is not None:
            raise error

        def upscale(lr):
            return np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
        return upscale
    return types.SimpleNamespace(make_upscaler=make_upscaler)


def test_trained_models_come_from_minisr_upscalers(tiny_set, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(sys.modules, "minisr.upscalers", fake_upscale_module(calls))
    code = main(["--model", str(tmp_path / "net.npz"), "--dataset", str(tiny_set), "--scale", "3", "--json",
                 "--device", "cuda"])
    assert code == 0
    assert calls == [(str(tmp_path / "net.npz"), 3, "cuda")]
    result = json.loads(capsys.readouterr().out)
    hr = modcrop(read_image(tiny_set / "one.png"), 3)
    nearest = np.repeat(np.repeat(imresize(hr, 1 / 3), 3, axis=0), 3, axis=1)
    assert result["images"][0]["psnr"] == pytest.approx(psnr(nearest, hr, crop_border=3))
    assert result["images"][0]["ssim"] == pytest.approx(ssim(nearest, hr, crop_border=3))


@pytest.mark.parametrize("error", [KeyError("no such model"), FileNotFoundError("no such checkpoint")])
def test_unknown_model(tiny_set, monkeypatch, capsys, error):
    monkeypatch.setitem(sys.modules, "minisr.upscalers", fake_upscale_module([], error))
    assert main(["--model", "srgan9000", "--dataset", str(tiny_set), "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "srgan9000" in err and "bicubic" in err and "checkpoint" in err


def test_models_unavailable(tiny_set, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "minisr.upscalers", None)  # makes `from minisr.upscalers import ...` fail
    assert main(["--model", "edsr", "--dataset", str(tiny_set), "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "edsr" in err and "bicubic" in err


def test_save_writes_pngs_and_never_an_input(tiny_set, capsys):
    args = ["--model", "bicubic", "--dataset", str(tiny_set), "--scale", "2", "--save", str(tiny_set)]
    before = {p.name: p.read_bytes() for p in tiny_set.iterdir()}
    assert main(args) == 0
    for name, data in before.items():
        assert (tiny_set / name).read_bytes() == data  # inputs untouched
    saved = tiny_set / "one_x2_bicubic.png"
    hr = modcrop(read_image(tiny_set / "one.png"), 2)
    np.testing.assert_array_equal(read_image(saved), imresize(imresize(hr, 0.5), 2))
    # Run again: the saved images are now inputs of the dataset folder themselves, so they are protected.
    written = saved.read_bytes()
    assert main(args) == 2
    assert "one_x2_bicubic.png" in capsys.readouterr().err
    assert saved.read_bytes() == written


def test_evaluate_images_in_memory(rng):
    noise = rng.integers(0, 256, size=(10, 10, 3)).astype(np.float64)
    hr = imresize(noise, 4).clip(0, 255).astype(np.uint8)
    as_list = evaluate(bicubic_upscaler(2), [hr, hr[::-1]], 2)
    as_dict = evaluate(bicubic_upscaler(2), {"a": hr, "b": hr[::-1]}, 2)
    assert [im["name"] for im in as_dict["images"]] == ["a", "b"]
    assert as_list["mean"] == as_dict["mean"]
    sr = imresize(imresize(hr, 0.5), 2)
    assert as_dict["images"][0]["psnr"] == pytest.approx(psnr(sr, hr, crop_border=2))
    rgb = evaluate(bicubic_upscaler(2), {"a": hr}, 2, y_channel=False, crop_border=0)
    assert rgb["images"][0]["ssim"] == pytest.approx(ssim(sr, hr, y_channel=False))


def test_evaluate_checks_the_upscaler_output(rng):
    hr = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(16, 16\)"):
        evaluate(lambda lr: lr, [hr], 2)
    with pytest.raises(TypeError, match="uint8"):
        evaluate(lambda lr: imresize(lr.astype(np.float64), 2), [hr], 2)
