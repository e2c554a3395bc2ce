"""The models (SRCNN, VDSR, EDSR): forward shapes, one training step, state_dict / checkpoint round trips."""

import zipfile

import numpy as np
import pytest

from minisr import checkpoint, models, nn
from minisr import functional as F
from minisr import optim as O
from minisr.random import manual_seed
from minisr.tensor import Tensor, no_grad

TINY = {  # small configs of each architecture, for speed
    "srcnn": dict(kernels=(9, 5, 5), features=(8, 4)),
    "vdsr": dict(depth=5, features=8),
    "edsr": dict(scale=2, n_resblocks=1, n_feats=8),
}


def batch(rng, n=2, c=1, h=24, w=20):
    return Tensor(rng.random((n, c, h, w), dtype=np.float32))


def forward(model, x):
    with no_grad():
        return model(x).numpy()


# ---------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("kernels,border", [((9, 1, 5), 6), ((9, 3, 5), 7), ((9, 5, 5), 8)])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_srcnn_valid_shrinks_by_the_border(rng, kernels, border, in_channels):
    model = models.build("srcnn", kernels=kernels, features=(8, 4), in_channels=in_channels)
    assert model.border == border and model.scale == 1 and model.upsample_input
    assert model.conv1.weight.shape == (8, in_channels, 9, 9)
    assert model.conv2.weight.shape == (4, 8, kernels[1], kernels[1])
    out = forward(model, batch(rng, c=in_channels))
    assert out.shape == (2, in_channels, 24 - 2 * border, 20 - 2 * border)


@pytest.mark.parametrize("kernels", [(9, 1, 5), (9, 3, 5), (9, 5, 5)])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_srcnn_same_keeps_the_size(rng, kernels, in_channels):
    model = models.build("srcnn", kernels=kernels, features=(8, 4), padding="same", in_channels=in_channels)
    assert model.border == 0
    assert forward(model, batch(rng, c=in_channels)).shape == (2, in_channels, 24, 20)


def test_srcnn_same_and_valid_agree_in_the_centre(rng):
    """Same weights: the valid output is the centre of the same-padded one (zero padding touches the rim)."""
    valid = models.build("srcnn", features=(8, 4))
    same = models.build("srcnn", features=(8, 4), padding="same")
    same.load_state_dict(valid.state_dict())
    x = batch(rng, h=30, w=30)
    b = valid.border
    # a pixel of the same-padded output is exact when its receptive field (radius 8) lies inside the image
    np.testing.assert_allclose(forward(valid, x), forward(same, x)[:, :, b:-b, b:-b], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [dict(kernels=(9, 5)), dict(features=(8,)), dict(padding="full")])
def test_srcnn_config_errors(bad):
    with pytest.raises(ValueError, match="SRCNN"):
        models.build("srcnn", **bad)


@pytest.mark.parametrize("depth", [5, 20])
@pytest.mark.parametrize("residual", [True, False])
def test_vdsr_shapes_and_global_residual(rng, depth, residual):
    model = models.build("vdsr", depth=depth, features=8, residual=residual)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth
    assert all(c.padding == 1 and c.kernel_size == (3, 3) for c in convs)
    x = batch(rng)
    out = forward(model, x)
    assert out.shape == (2, 1, 24, 20)
    body = forward(model.body, x)
    np.testing.assert_allclose(out, body + x.numpy() if residual else body, rtol=1e-6, atol=1e-6)


def test_vdsr_rejects_a_depth_below_two():
    with pytest.raises(ValueError, match="depth"):
        models.build("vdsr", depth=1)


@pytest.mark.parametrize("scale,shuffles", [(2, [2]), (3, [3]), (4, [2, 2])])
@pytest.mark.parametrize("res_scale", [1.0, 0.1])
def test_edsr_enlarges_by_its_scale(rng, scale, shuffles, res_scale):
    model = models.build("edsr", scale=scale, n_resblocks=2, n_feats=8, res_scale=res_scale)
    assert model.scale == scale and not model.upsample_input and model.in_channels == 3
    assert [m.upscale_factor for m in model.modules() if isinstance(m, nn.PixelShuffle)] == shuffles
    out = forward(model, batch(rng, n=2, c=3, h=9, w=7))
    assert out.shape == (2, 3, 9 * scale, 7 * scale)


def test_edsr_mean_shift_is_undone(rng):
    """With every trained weight zero the network adds nothing: the output is the constant RGB mean."""
    model = models.build("edsr", scale=2, n_resblocks=1, n_feats=8)
    state = model.state_dict()
    zero = {k: (np.zeros_like(v) if "mean" not in k else v) for k, v in state.items()}
    model.load_state_dict(zero)
    out = forward(model, batch(rng, n=1, c=3, h=5, w=6))
    expected = np.array([0.4488, 0.4371, 0.4040], dtype=np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out, np.broadcast_to(expected, (1, 3, 10, 12)), atol=1e-7)


def test_edsr_rejects_other_scales():
    with pytest.raises(ValueError, match="scale"):
        models.build("edsr", scale=5)


def test_build_unknown_architecture():
    with pytest.raises(KeyError, match="srcnn"):
        models.build("esrgan")  # (srgan is SRGAN's generator since issue 18)


# -------------------------------------------------------------------------------------------------- training
def fixed_batch(rng, name, model):
    """A bicubic-like input and its target: a smooth target, the input a blurred copy (or the LR for EDSR)."""
    hr = rng.random((4, model.in_channels, 8, 8)).repeat(3, axis=2).repeat(3, axis=3)  # 24x24, blocky
    hr = hr.astype(np.float32)
    if name == "edsr":
        lr = hr.reshape(4, 3, 12, 2, 12, 2).mean(axis=(3, 5))
        return Tensor(lr), Tensor(hr)
    blurred = (hr + np.roll(hr, 1, axis=2) + np.roll(hr, 1, axis=3)) / 3
    b = model.border
    return Tensor(blurred), Tensor(np.ascontiguousarray(hr[:, :, b:24 - b, b:24 - b]) if b else hr)


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_few_adam_steps_lower_the_loss_on_a_fixed_batch(rng, name):
    manual_seed(1)
    model = models.build(name, **TINY[name])
    x, t = fixed_batch(rng, name, model)
    loss_fn = F.l1_loss if name == "edsr" else F.mse_loss
    opt = O.Adam(model.parameters(), lr={"edsr": 3e-3}.get(name, 1e-3))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    losses = []
    for _ in range(6):
        loss = loss_fn(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = loss_fn(model(x), t).item()
    assert final < 0.9 * losses[0], losses + [final]
    assert all(b < a for a, b in zip(losses, losses[1:] + [final])), losses + [final]
    after = model.state_dict()
    trained = [k for k in before if not np.array_equal(before[k], after[k])]
    assert trained == [n for n, _ in model.named_parameters()]  # every parameter moved, no buffer did


# ------------------------------------------------------------------------------------- state and checkpoints
def save_model(path, name, model, **meta):
    return checkpoint.save(path, model.state_dict(), dict(model=name, config=model.config, **meta))


@pytest.mark.parametrize("name", sorted(TINY))
def test_state_dict_round_trip_through_a_checkpoint(tmp_path, rng, name):
    manual_seed(2)
    model = models.build(name, **TINY[name])
    path = save_model(tmp_path / "m.npz", name, model, scale=2)
    manual_seed(3)
    loaded, meta = models.load(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert meta["model"] == name and meta["scale"] == 2 and meta["path"] == str(path)
    assert list(loaded.state_dict()) == list(model.state_dict())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    x = batch(rng, n=1, c=model.in_channels, h=21, w=19)
    np.testing.assert_array_equal(forward(loaded, x), forward(model, x))
    other = models.build(name, **TINY[name])  # a fresh init differs: the comparison above can fail
    assert not np.array_equal(forward(other, x), forward(model, x))


def test_load_state_dict_reports_missing_and_misshapen(rng):
    model = models.build("srcnn", features=(8, 4))
    state = model.state_dict()
    with pytest.raises(KeyError, match="conv3.bias"):
        model.load_state_dict({k: v for k, v in state.items() if k != "conv3.bias"})
    wrong = models.build("srcnn", features=(16, 4)).state_dict()
    with pytest.raises(ValueError, match="conv1.weight"):
        model.load_state_dict(wrong)


def test_optimizer_state_goes_into_the_checkpoint(tmp_path, rng):
    model = models.build("srcnn", features=(8, 4), padding="same")
    opt = O.Adam(model.parameters(), lr=1e-3)
    x = batch(rng, n=1, h=12, w=12)
    loss = F.mse_loss(model(x), x)
    loss.backward()
    opt.step()
    checkpoint.save(tmp_path / "c.npz", model.state_dict(), {"model": "srcnn"}, opt.state_dict())
    ckpt = checkpoint.load(tmp_path / "c.npz")
    assert set(ckpt["optim"]) == set(opt.state_dict())
    fresh = O.Adam(models.build("srcnn", features=(8, 4), padding="same").parameters(), lr=5.0)
    fresh.load_state_dict(ckpt["optim"])
    assert fresh.param_groups[0]["lr"] == 1e-3 and fresh.state[0]["step"] == 1
    np.testing.assert_array_equal(fresh.state[0]["exp_avg"], opt.state[0]["exp_avg"])


def test_unknown_shipped_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="srcnn-x9.*neither a checkpoint file nor a shipped model"):
        models.load("srcnn-x9")


def test_missing_checkpoint_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        models.load(tmp_path / "nothere.npz")


def test_corrupt_checkpoints_give_clear_errors(tmp_path):
    model = models.build("srcnn", features=(8, 4))
    good = save_model(tmp_path / "good.npz", "srcnn", model).read_bytes()
    cases = {
        "text.npz": b"this is not a checkpoint",
        "truncated.npz": good[: len(good) // 2],
        "empty.npz": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    np.savez(tmp_path / "nometa.npz", w=np.zeros(3))
    for name in list(cases) + ["nometa.npz"]:
        with pytest.raises(ValueError, match=rf"{name}.* not a minisr checkpoint"):
            models.load(tmp_path / name)
    checkpoint.save(tmp_path / "nomodel.npz", model.state_dict(), {"epoch": 1})
    with pytest.raises(ValueError, match="no model name"):
        models.load(tmp_path / "nomodel.npz")


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    model = models.build("srcnn", features=(8, 4))
    path = save_model(tmp_path / "sub" / "last.npz", "srcnn", model, epoch=1)
    assert [p.name for p in path.parent.iterdir()] == ["last.npz"]  # no temporary file left behind
    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as z:  # plain .npz, readable without pickle
        assert "model/conv1.weight" in z.files and "meta" in z.files
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, "srcnn", models.build("srcnn", features=(8, 4)), epoch=2)
    assert path.read_bytes() == before  # the good checkpoint is untouched
    assert [p.name for p in path.parent.iterdir()] == ["last.npz"]
    assert checkpoint.load(path)["meta"]["epoch"] == 1


@pytest.mark.parametrize("name", sorted(models.shipped()) or ["none"])
def test_shipped_weights_load_by_name(rng, name):
    if name == "none":
        pytest.skip("no shipped weights yet (minisr/weights/*.npz)")
    model, meta = models.load(name)
    assert meta["model"] in models.MODELS and int(meta["scale"]) in (2, 3, 4)
    assert not model.training
    x = batch(rng, n=1, c=model.in_channels, h=2 * model.border + 8, w=2 * model.border + 8)
    out = forward(model, x)
    assert np.isfinite(out).all()


def test_one_multiscale_file_answers_its_alias_names(tmp_path, monkeypatch, rng):
    """vdsr.npz (x2, x3, x4) is shipped as vdsr-x2 / -x3 / -x4: each name loads the same network with its own scale,
    the paper table sees the file once, and an alias whose scale the file lacks is an error naming both."""
    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    manual_seed(4)
    model = models.build("vdsr", depth=3, features=8)
    save_model(tmp_path / "vdsr.npz", "vdsr", model, scale=2, scales=[2, 2, 3, 4])  # x2 drawn twice as often
    assert models.trained_scales(models.load("vdsr")[1]) == [2, 3, 4]
    assert sorted(models.shipped()) == ["vdsr", "vdsr-x2", "vdsr-x3", "vdsr-x4"]
    assert sorted(models.shipped(aliases=False)) == ["vdsr"]
    from minisr.report import shipped_models

    assert list(shipped_models()) == ["vdsr"]
    from minisr.report import model_scales

    chosen = shipped_models(["vdsr-x3", "vdsr"])  # an alias is evaluated at its own scale only
    assert [model_scales(m) for m in chosen.values()] == [[3], [2, 3, 4]]
    x = batch(rng, n=1, h=13, w=11)
    for s in (2, 3, 4):
        loaded, meta = models.load(f"vdsr-x{s}")
        assert meta["scale"] == s and meta["name"] == f"vdsr-x{s}" and meta["path"] == str(tmp_path / "vdsr.npz")
        assert meta["alias_of"] == "vdsr" and "alias_of" not in models.load("vdsr")[1]
        np.testing.assert_array_equal(forward(loaded, x), forward(model, x))
    from minisr.crops import default_models

    assert default_models(3) == ["bicubic", "vdsr-x3"]
    save_model(tmp_path / "vdsr.npz", "vdsr", model, scale=2, scales=[2])
    with pytest.raises(ValueError, match=r"vdsr-x3 needs a model trained for x3.*scales \[2\]"):
        models.load("vdsr-x3")
    (tmp_path / "vdsr-x3.npz").write_bytes((tmp_path / "vdsr.npz").read_bytes())  # a file of that name wins
    assert models.shipped()["vdsr-x3"] == tmp_path / "vdsr-x3.npz"
    assert models.load("vdsr-x3")[1]["scale"] == 2
