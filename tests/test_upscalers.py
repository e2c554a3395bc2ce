"""minisr.upscalers: the one home of the upscalers (no import circle), and the x8 self-ensemble."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from test_upscale import save_model, smooth_image

from minisr import eval as sr_eval
from minisr import models, upscale
from minisr.data import dihedral, read_image, write_image
from minisr.data.imresize import round_uint8
from minisr.random import manual_seed
from minisr.upscalers import SelfEnsemble, Upscaler, bicubic_upscaler, make_upscaler, undo_dihedral

PACKAGE = Path(__file__).resolve().parents[1] / "minisr"
FRONT_ENDS = {"eval", "upscale", "inference", "train", "report"}


def imported_modules(path: Path) -> set[str]:
    """Every minisr module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = (node.module or "").removeprefix("minisr.").removeprefix("minisr")
            if node.level or (node.module or "").startswith("minisr"):
                found.add(base.split(".")[0] if base else "")
                if not base:
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("minisr.") for a in node.names if a.name.startswith("minisr."))
    return found - {""}


def test_upscalers_have_one_home_and_no_circle():
    assert not imported_modules(PACKAGE / "upscalers.py") & FRONT_ENDS
    assert not imported_modules(PACKAGE / "eval.py") & {"upscale", "inference"}
    assert not imported_modules(PACKAGE / "upscale.py") & {"eval", "inference"}
    for name in ("eval", "upscale", "train"):
        assert "upscalers" in imported_modules(PACKAGE / f"{name}.py"), name
    # the old names still work from their old modules
    from minisr import inference, upscalers
    assert inference.Upscaler is upscalers.Upscaler and inference.make_upscaler is upscalers.make_upscaler
    assert inference.forward_tiled is upscalers.forward_tiled and upscale.make_upscaler is upscalers.make_upscaler
    assert sr_eval.bicubic_upscaler is upscalers.bicubic_upscaler


@pytest.mark.parametrize("shape", [(13, 11, 3), (9, 14)])
def test_undo_dihedral_inverts_every_transform(rng, shape):
    x = rng.integers(0, 256, size=shape)
    seen = set()
    for k in range(8):
        y = dihedral(x, k)
        np.testing.assert_array_equal(undo_dihedral(y, k), x)
        seen.add(y.tobytes() + bytes(y.shape))
    assert len(seen) == 8  # eight different transforms


def manual_flip_average(one_pass, lr):
    """Eight passes by hand: transform with numpy, upscale, transform back, average, round."""
    total = 0.0
    for flip in (False, True):
        for quarter in range(4):
            x = np.rot90(lr, quarter, axes=(0, 1))
            x = x[:, ::-1] if flip else x
            y = np.asarray(one_pass(np.ascontiguousarray(x)), dtype=np.float64)
            y = y[:, ::-1] if flip else y
            total = total + np.rot90(y, -quarter, axes=(0, 1))
    return round_uint8(np.clip(total / 8, 0, 255))


@pytest.mark.parametrize("name,cfg,scale,channels", [
    ("srcnn", dict(features=(8, 4)), 3, 3),  # Y model on colour: chroma bicubic
    ("vdsr", dict(depth=3, features=8), 2, 1),  # greyscale
    ("edsr", dict(scale=2, n_resblocks=1, n_feats=8), 2, 3),  # RGB, enlarges itself
])
def test_self_ensemble_equals_eight_manual_passes(rng, name, cfg, scale, channels):
    manual_seed(1)
    model = models.build(name, **cfg)
    model.eval()
    up = Upscaler(model, {"scale": scale}, scale)
    lr = smooth_image(rng, 13, 10, channels)
    got = SelfEnsemble(up)(lr)
    np.testing.assert_array_equal(got, manual_flip_average(up.upscale_float, lr))
    assert got.shape == up(lr).shape and got.dtype == np.uint8
    assert not np.array_equal(got, up(lr))  # a random network is not flip-invariant: the ensemble did something


def test_self_ensemble_of_a_plain_callable_averages_its_uint8_outputs(rng):
    lr = smooth_image(rng, 12, 9)
    bic = bicubic_upscaler(2)
    np.testing.assert_array_equal(SelfEnsemble(bic)(lr), manual_flip_average(bic, lr))
    np.testing.assert_array_equal(make_upscaler("bicubic", 2, ensemble=True)(lr), SelfEnsemble(bic)(lr))


def test_ensemble_in_eval_and_upscale_clis(rng, tmp_path, capsys):
    ckpt = save_model(tmp_path / "m.npz", "srcnn", dict(features=(8, 4)), 2)
    images = tmp_path / "set"
    images.mkdir()
    write_image(images / "a.png", smooth_image(rng, 24, 22))
    write_image(images / "b.png", smooth_image(rng, 20, 26, channels=1))
    plus = SelfEnsemble(make_upscaler(str(ckpt), 2))
    assert sr_eval.main(["--model", str(ckpt), "--dataset", str(images), "--scale", "2", "--json", "--ensemble"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = sr_eval.evaluate(plus, images, 2)
    assert got["ensemble"] is True and got["mean"] == pytest.approx(want["mean"])
    assert got["mean"] != pytest.approx(sr_eval.evaluate(make_upscaler(str(ckpt), 2), images, 2)["mean"])
    out = tmp_path / "out"
    assert upscale.main([str(images / "a.png"), "-o", str(out), "--model", str(ckpt), "--scale", "2",
                         "--ensemble"]) == 0
    np.testing.assert_array_equal(read_image(out / "a_x2.png"), plus(read_image(images / "a.png")))


@pytest.mark.parametrize("name,cfg,scale,channels", [
    ("srcnn", dict(features=(8, 4)), 3, 3),  # Y model: upscale_float, rounded by bands
    ("edsr", dict(scale=2, n_resblocks=1, n_feats=8), 2, 3),  # RGB, enlarges itself: __call__'s own banded path
])
def test_call_is_upscale_float_rounded(rng, name, cfg, scale, channels):
    """Upscaler(lr) rounds by bands of rows (and, for RGB models, from the float32 output): the same pixels as
    round_uint8 of upscale_float, on an image taller than one band."""
    manual_seed(1)
    model = models.build(name, **cfg)
    model.eval()
    up = Upscaler(model, {"scale": scale}, scale)
    lr = smooth_image(rng, 100, 9, channels)  # 200-300 output rows: more than one 256-row band
    np.testing.assert_array_equal(up(lr), round_uint8(up.upscale_float(lr)))
