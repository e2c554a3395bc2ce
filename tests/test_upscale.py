"""Running models on images: tiling without seams, repeated passes, Y/RGB handling,
``python -m minisr.upscale`` and ``python -m minisr.eval`` with a checkpoint or a shipped model."""

import json
import subprocess
import sys

import numpy as np
import pytest

from minisr import checkpoint, models
from minisr import eval as sr_eval
from minisr import upscale as cli
from minisr.data import imresize, read_image, write_image
from minisr.inference import Upscaler, forward_tiled, make_upscaler
from minisr.random import manual_seed
from minisr.tensor import Tensor, no_grad

TILED_MODELS = {
    "srcnn-valid": ("srcnn", dict(features=(8, 4))),
    "srcnn-same": ("srcnn", dict(features=(8, 4), padding="same")),
    "vdsr": ("vdsr", dict(depth=5, features=8)),
    "edsr-x2": ("edsr", dict(scale=2, n_resblocks=2, n_feats=8)),
    "edsr-x3": ("edsr", dict(scale=3, n_resblocks=2, n_feats=8)),
    "edsr-x4": ("edsr", dict(scale=4, n_resblocks=1, n_feats=8)),
}


def smooth_image(rng, h, w, channels=3):
    """A natural-ish uint8 image: bicubic-enlarged noise."""
    shape = (-(-h // 4), -(-w // 4)) + ((channels,) if channels > 1 else ())
    big = imresize(rng.integers(0, 256, size=shape).astype(np.float64), 4)
    return np.clip(big[:h, :w], 0, 255).astype(np.uint8)


def save_model(path, name, cfg, scale, seed=0, **meta):
    manual_seed(seed)
    model = models.build(name, **cfg)
    meta = dict(model=name, config=model.config, scale=scale, **meta)
    return checkpoint.save(path, model.state_dict(), meta)


# ---------------------------------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("key", sorted(TILED_MODELS))
def test_tiled_equals_untiled(rng, key):
    name, cfg = TILED_MODELS[key]
    manual_seed(4)
    model = models.build(name, **cfg)
    x = rng.random((1, model.in_channels, 37, 29), dtype=np.float32)
    whole = forward_tiled(model, x, tile=64)  # one tile: the plain forward
    tiled = forward_tiled(model, x, tile=16)  # 3 x 2 tiles, the last ones partial
    s = model.scale
    assert whole.shape == tiled.shape == (1, model.in_channels, 37 * s, 29 * s)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    b = model.border
    padded = np.pad(x, ((0, 0), (0, 0), (b, b), (b, b)), mode="edge") if b else x
    with no_grad():
        direct = model(Tensor(padded)).numpy()
    np.testing.assert_allclose(whole, direct, rtol=0, atol=1e-6)


def test_tiny_tiles_still_have_no_seams(rng):
    model = models.build("vdsr", depth=3, features=4)
    x = rng.random((2, 1, 11, 13), dtype=np.float32)
    np.testing.assert_allclose(forward_tiled(model, x, tile=1), forward_tiled(model, x, tile=100), atol=1e-5)


@pytest.mark.parametrize("key", ["srcnn-valid", "edsr-x3"])
def test_upscaler_tiled_equals_untiled(rng, key):
    name, cfg = TILED_MODELS[key]
    model = models.build(name, **cfg)
    scale = model.scale if name == "edsr" else 3
    img = smooth_image(rng, 30, 25)
    small = Upscaler(model, {"scale": scale}, scale, tile=8)(img)
    big = Upscaler(model, {"scale": scale}, scale, tile=512)(img)
    assert small.shape == big.shape == (90, 75, 3) and small.dtype == np.uint8
    assert np.abs(small.astype(int) - big.astype(int)).max() <= 1  # float rounding can flip a .5


# -------------------------------------------------------------------------------------------- scales, passes
@pytest.mark.parametrize("key", sorted(TILED_MODELS))
@pytest.mark.parametrize("channels", [1, 3])
def test_upscaler_output_size_at_its_scales(rng, key, channels):
    name, cfg = TILED_MODELS[key]
    model = models.build(name, **cfg)
    scales = [model.scale] if name == "edsr" else [2, 3, 4]
    img = smooth_image(rng, 13, 10, channels)
    for s in scales:
        sr = Upscaler(model, {"scales": [s]}, s)(img)
        assert sr.shape == (13 * s, 10 * s) + img.shape[2:] and sr.dtype == np.uint8


@pytest.mark.parametrize("name,cfg", [("srcnn", dict(features=(8, 4))), ("edsr", dict(scale=2, n_resblocks=1,
                                                                                       n_feats=8))])
def test_a_x2_model_runs_twice_for_x4_and_three_times_for_x8(rng, name, cfg):
    model = models.build(name, **cfg)
    img = smooth_image(rng, 10, 12)
    up4 = Upscaler(model, {"scale": 2}, 4)
    assert (up4.step_scale, up4.passes) == (2, 2)
    sr4 = up4(img)
    assert sr4.shape == (40, 48, 3)
    x2 = Upscaler(model, {"scale": 2}, 2)
    twice = x2(x2(img))  # the same up to the rounding of the intermediate image
    assert np.abs(sr4.astype(int) - twice.astype(int)).max() <= 2
    assert Upscaler(model, {"scale": 2}, 8).passes == 3


def test_a_x3_model_refuses_x2_and_x4():
    model = models.build("srcnn", features=(8, 4))
    for scale in (2, 4):
        with pytest.raises(ValueError, match=rf"\[3\].*x{scale} is not one of those scales or a power"):
            Upscaler(model, {"scale": 3, "name": "srcnn-x3"}, scale)
    edsr = models.build("edsr", scale=2, n_resblocks=1, n_feats=8)
    with pytest.raises(ValueError, match="x3"):
        Upscaler(edsr, {"scale": 2}, 3)


def test_a_multiscale_model_runs_once_at_a_scale_it_learned():
    model = models.build("vdsr", depth=3, features=4)
    up = Upscaler(model, {"scale": 2, "scales": [2, 3, 4]}, 4)
    assert (up.step_scale, up.passes) == (4, 1)  # x4 directly, not x2 twice
    up = Upscaler(model, {"scales": [2, 3, 4]}, 9)
    assert (up.step_scale, up.passes) == (3, 2)


def identity_vdsr():
    """A VDSR whose network adds nothing: output = input (the global residual), so SR = its bicubic input."""
    model = models.build("vdsr", depth=3, features=4)
    model.load_state_dict({k: np.zeros_like(v) for k, v in model.state_dict().items()})
    return model


def test_y_models_take_y_and_get_bicubic_chroma(rng):
    img = smooth_image(rng, 16, 18)
    sr = Upscaler(identity_vdsr(), {"scale": 2}, 2)(img)
    bicubic = imresize(img, 2)
    assert np.abs(sr.astype(int) - bicubic.astype(int)).max() <= 1
    grey = img[..., 1]
    sr = Upscaler(identity_vdsr(), {"scale": 2}, 2)(grey)
    assert sr.shape == (32, 36)
    assert np.abs(sr.astype(int) - imresize(grey, 2).astype(int)).max() <= 1


def test_rgb_models_on_greyscale_images(rng):
    grey = smooth_image(rng, 9, 11, channels=1)
    model = models.build("edsr", scale=2, n_resblocks=1, n_feats=8)
    sr = Upscaler(model, {"scale": 2}, 2)(grey)
    assert sr.shape == (18, 22)
    rgb = Upscaler(model, {"scale": 2}, 2)(np.repeat(grey[..., None], 3, axis=2))
    assert np.abs(sr.astype(int) - rgb.astype(float).mean(axis=2)).max() <= 1


def test_upscaler_refuses_float_images(rng):
    with pytest.raises(TypeError, match="uint8"):
        Upscaler(identity_vdsr(), {"scale": 2}, 2)(rng.random((8, 8)))


# ----------------------------------------------------------------------------------------------- upscale CLI
@pytest.fixture
def ckpt(tmp_path):
    return save_model(tmp_path / "srcnn_x2.npz", "srcnn", dict(features=(8, 4)), 2, scales=[2])


@pytest.fixture
def images(tmp_path, rng):
    folder = tmp_path / "in"
    write_image(folder / "rgb.png", smooth_image(rng, 20, 24))
    write_image(folder / "grey.png", smooth_image(rng, 17, 15, channels=1))
    rgba = np.concatenate([smooth_image(rng, 12, 14), np.full((12, 14, 1), 128, np.uint8)], axis=2)
    import imageio.v3 as iio

    iio.imwrite(folder / "rgba.png", rgba)
    return folder


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_upscale_one_file(images, ckpt, tmp_path, capsys):
    out = tmp_path / "out" / "big.png"
    code, stdout, _ = run_cli(capsys, images / "rgb.png", "-o", out, "--model", ckpt)  # no --scale: x2
    assert code == 0
    sr = read_image(out)
    assert sr.shape == (40, 48, 3)
    expected = make_upscaler(str(ckpt), 2)(read_image(images / "rgb.png"))
    np.testing.assert_array_equal(sr, expected)
    assert "24x20 -> 48x40" in stdout


def test_upscale_a_folder_with_grey_and_rgba(images, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="alpha"):
        code, _, err = run_cli(capsys, images, "-o", out, "--model", ckpt, "--scale", "4")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["grey_x4.png", "rgb_x4.png", "rgba_x4.png"]
    assert read_image(out / "grey_x4.png").shape == (68, 60)  # greyscale stays greyscale
    assert read_image(out / "rgba_x4.png").shape == (48, 56, 3)  # alpha dropped
    assert read_image(out / "rgb_x4.png").shape == (80, 96, 3)


def test_upscale_compare_writes_a_png(images, ckpt, tmp_path, capsys, rng):
    hr = smooth_image(rng, 40, 48)
    write_image(tmp_path / "hr.png", hr)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, images / "rgb.png", "-o", out, "--model", ckpt, "--compare",
                                tmp_path / "hr.png")
    assert code == 0, err
    figure = read_image(out / "rgb_x2_compare.png")
    assert figure.ndim == 3 and figure.shape[1] > figure.shape[0] > 100  # three panels side by side
    assert "PSNR" in stdout and "rgb_x2_compare.png" in stdout


def test_upscale_never_overwrites_the_input(images, ckpt, capsys):
    src = images / "rgb.png"
    before = src.read_bytes()
    code, _, err = run_cli(capsys, src, "-o", src, "--model", ckpt, "--overwrite")
    assert code == 2 and "input" in err and str(src) in err
    assert src.read_bytes() == before


def test_upscale_refuses_an_existing_output_without_overwrite(images, ckpt, tmp_path, capsys):
    out = tmp_path / "exists.png"
    out.write_bytes(b"keep me")
    code, _, err = run_cli(capsys, images / "rgb.png", "-o", out, "--model", ckpt)
    assert code == 2 and "--overwrite" in err
    assert out.read_bytes() == b"keep me"
    code, _, _ = run_cli(capsys, images / "rgb.png", "-o", out, "--model", ckpt, "--overwrite")
    assert code == 0 and read_image(out).shape == (40, 48, 3)


def test_upscale_checks_every_output_before_writing_any(images, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "rgba_x2.png").write_bytes(b"keep me")  # the last of the three (sorted by name)
    code, _, err = run_cli(capsys, images, "-o", out, "--model", ckpt)
    assert code == 2 and "rgba_x2.png" in err
    assert sorted(p.name for p in out.iterdir()) == ["rgba_x2.png"]  # nothing half done


@pytest.mark.parametrize("what", ["input", "model", "checkpoint", "scale", "one-file-many-inputs"])
def test_upscale_errors(images, ckpt, tmp_path, capsys, what):
    argv = {
        "input": [tmp_path / "missing.png", "-o", tmp_path / "o", "--model", ckpt],
        "model": [images / "rgb.png", "-o", tmp_path / "o", "--model", "srcnn-x9"],
        "checkpoint": [images / "rgb.png", "-o", tmp_path / "o", "--model", images / "rgb.png"],
        "scale": [images / "rgb.png", "-o", tmp_path / "o", "--model", ckpt, "--scale", "3"],
        "one-file-many-inputs": [images, "-o", tmp_path / "o.png", "--model", ckpt],
    }[what]
    expected = {"input": "missing.png", "model": "srcnn-x9", "checkpoint": "not a minisr checkpoint",
                "scale": "x3", "one-file-many-inputs": "3 inputs"}[what]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.png").exists()


def test_upscale_in_a_subprocess(images, ckpt, tmp_path):
    out = tmp_path / "sub"
    proc = subprocess.run([sys.executable, "-m", "minisr.upscale", str(images / "grey.png"), "-o", str(out),
                           "--model", str(ckpt)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_image(out / "grey_x2.png").shape == (34, 30)
    proc = subprocess.run([sys.executable, "-m", "minisr.upscale", str(images / "grey.png"), "-o", str(out),
                           "--model", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr


# -------------------------------------------------------------------------------------------------- eval CLI
@pytest.fixture
def tiny_set(tmp_path, rng):
    folder = tmp_path / "tiny"
    write_image(folder / "a.png", smooth_image(rng, 36, 30))
    write_image(folder / "b.png", smooth_image(rng, 27, 33, channels=1))
    return folder


@pytest.mark.parametrize("scale", [2, 3])
def test_eval_cli_with_a_checkpoint(tiny_set, tmp_path, capsys, scale):
    ckpt = save_model(tmp_path / "edsr.npz", "edsr", dict(scale=scale, n_resblocks=1, n_feats=8), scale)
    code = sr_eval.main(["--model", str(ckpt), "--dataset", str(tiny_set), "--scale", str(scale), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [im["name"] for im in result["images"]] == ["a", "b"]
    expected = sr_eval.evaluate(make_upscaler(str(ckpt), scale), tiny_set, scale)
    assert result["mean"]["psnr"] == pytest.approx(expected["mean"]["psnr"])
    assert np.isfinite(result["mean"]["psnr"])


def test_eval_cli_on_set5(data_root, ckpt, capsys):
    code = sr_eval.main(["--model", str(ckpt), "--dataset", "Set5", "--scale", "4", "--json", "--data-root",
                         str(data_root)])  # the x2 model applied twice
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [im["name"] for im in result["images"]] == ["baby", "bird", "butterfly", "head", "woman"]
    assert 5 < result["mean"]["psnr"] < 60


def test_eval_cli_refuses_a_scale_the_model_cannot_do(tiny_set, ckpt, capsys):
    assert sr_eval.main(["--model", str(ckpt), "--dataset", str(tiny_set), "--scale", "3"]) == 2
    assert "x3" in capsys.readouterr().err


def test_eval_cli_unknown_model(tiny_set, capsys):
    assert sr_eval.main(["--model", "srcnn-x9", "--dataset", str(tiny_set), "--scale", "3"]) == 2
    err = capsys.readouterr().err
    assert "srcnn-x9" in err and "shipped" in err


def test_shipped_srcnn_x3_beats_bicubic_on_set5(data_root):
    if "srcnn-x3" not in models.shipped():
        pytest.skip("srcnn-x3 is not shipped yet (minisr/weights/srcnn-x3.npz)")
    proc = subprocess.run([sys.executable, "-m", "minisr.eval", "--model", "srcnn-x3", "--dataset", "Set5",
                           "--scale", "3", "--json", "--data-root", str(data_root)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    bicubic = sr_eval.evaluate(sr_eval.bicubic_upscaler(3), "Set5", 3, data_root=data_root)["mean"]["psnr"]
    assert bicubic == pytest.approx(30.39, abs=0.03)
    print(f"srcnn-x3 on Set5 x3: {result['mean']['psnr']:.2f} dB (bicubic {bicubic:.2f} dB)")
    assert result["mean"]["psnr"] > bicubic
