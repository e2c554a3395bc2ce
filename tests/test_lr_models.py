"""FSRCNN and ESPCN (issue 16): architecture and initialisation, parity with the same network in PyTorch, tiled ==
untiled upscaling at x2/x3/x4, x4 from x2 by passes, and the train / upscale --compare / eval CLIs on them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minisr import checkpoint, inference, models, train, upscalers
from minisr import eval as sr_eval
from minisr import upscale as upscale_cli
from minisr.data import imresize, read_image, write_image
from minisr.inference import Upscaler, forward_tiled, make_upscaler
from minisr.random import manual_seed
from minisr.tensor import Tensor, no_grad

LR_MODELS = [("fsrcnn", 2), ("fsrcnn", 3), ("fsrcnn", 4), ("espcn", 2), ("espcn", 3), ("espcn", 4)]


def smooth_image(rng, h, w, channels=3):
    shape = (-(-h // 4), -(-w // 4)) + ((channels,) if channels > 1 else ())
    big = imresize(rng.integers(0, 256, size=shape).astype(np.float64), 4)
    return np.clip(big[:h, :w], 0, 255).astype(np.uint8)


def scrambled(name, scale, seed=0, **cfg):
    """A model with O(1) random weights, so that every layer, the deconvolution included, matters."""
    manual_seed(seed)
    model = models.build(name, scale=scale, **cfg)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = (0.3 * rng.standard_normal(p.shape)).astype(p.dtype)
    return model.eval()


# -------------------------------------------------------------------------------------------- architecture
def test_fsrcnn_is_the_paper_network():
    m = models.build("fsrcnn", scale=3)
    assert m.config == dict(scale=3, d=56, s=12, m=4, in_channels=1)
    assert (m.in_channels, m.scale, m.border, m.upsample_input) == (1, 3, 0, False)
    weights = sum(p.size for n, p in m.named_parameters() if n.endswith("weight") and p.ndim == 4)
    assert weights == 12464  # the paper's FSRCNN(56, 12, 4): 12,464 weights
    assert m.deconv.weight.shape == (56, 1, 9, 9) and (m.deconv.stride, m.deconv.padding) == (3, 4)
    assert len(m.mapping) == 4 and m.shrink[0].weight.shape == (12, 56, 1, 1)
    # the paper's initialisation: deconvolution N(0, 0.001^2); convolutions He et al. for PReLU, slopes 0.25
    assert abs(m.deconv.weight.numpy().std() - 1e-3) < 1e-4
    w = m.extract[0].weight.numpy()
    assert abs(w.std() / np.sqrt(2 / (1.0625 * 25)) - 1) < 0.1 and not m.extract[0].bias.numpy().any()
    assert np.all(m.mapping[0][1].weight.numpy() == np.float32(0.25)) and m.mapping[0][1].weight.shape == (12,)


def test_espcn_is_the_paper_network():
    m = models.build("espcn", scale=3)
    assert [c.weight.shape for c in (m.conv1, m.conv2, m.conv3)] == [(64, 1, 5, 5), (32, 64, 3, 3), (9, 32, 3, 3)]
    assert (m.in_channels, m.scale, m.border, m.upsample_input) == (1, 3, 0, False)


@pytest.mark.parametrize("name,scale", LR_MODELS)
def test_output_is_exactly_scale_times_the_input(rng, name, scale):
    m = models.build(name, scale=scale)
    with no_grad():
        y = m(Tensor(rng.random((2, 1, 13, 8), dtype=np.float32)))
    assert y.shape == (2, 1, 13 * scale, 8 * scale)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="scale must be 2, 3 or 4, got 5"):
        models.build("fsrcnn", scale=5)
    with pytest.raises(ValueError, match="2 feature counts and 3 kernel sizes"):
        models.build("espcn", features=(64,))


# ---------------------------------------------------------------------------------------------- vs PyTorch
torch = pytest.importorskip("torch")


def torch_twin(m):
    """The same network in PyTorch, with m's weights."""
    tnn = torch.nn
    if hasattr(m, "deconv"):
        cfg = m.config
        layers = [tnn.Conv2d(1, cfg["d"], 5, padding=2), tnn.PReLU(cfg["d"]),
                  tnn.Conv2d(cfg["d"], cfg["s"], 1), tnn.PReLU(cfg["s"])]
        for _ in range(cfg["m"]):
            layers += [tnn.Conv2d(cfg["s"], cfg["s"], 3, padding=1), tnn.PReLU(cfg["s"])]
        layers += [tnn.Conv2d(cfg["s"], cfg["d"], 1), tnn.PReLU(cfg["d"]),
                   tnn.ConvTranspose2d(cfg["d"], 1, 9, stride=m.scale, padding=4, output_padding=m.scale - 1)]
        net = tnn.Sequential(*layers)
    else:
        net = tnn.Sequential(tnn.Conv2d(1, 64, 5, padding=2), tnn.Tanh(), tnn.Conv2d(64, 32, 3, padding=1),
                             tnn.Tanh(), tnn.Conv2d(32, m.scale ** 2, 3, padding=1), tnn.PixelShuffle(m.scale))
    ours = [p for p in m.parameters()]
    theirs = list(net.parameters())
    assert [p.shape for p in ours] == [tuple(p.shape) for p in theirs]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            b.copy_(torch.tensor(a.numpy()))
    return net


@pytest.mark.parametrize("name,scale", [("fsrcnn", 3), ("espcn", 2)])
def test_forward_and_every_gradient_match_pytorch(rng, name, scale):
    m = scrambled(name, scale, d=8, s=4, m=2) if name == "fsrcnn" else scrambled(name, scale)
    m.double()
    net = torch_twin(m).double()
    x = rng.random((2, 1, 9, 7))
    t = rng.random((2, 1, 9 * scale, 7 * scale))
    from minisr import functional as F

    loss = F.mse_loss(m(Tensor(x)), Tensor(t))
    loss.backward()
    tloss = torch.nn.functional.mse_loss(net(torch.tensor(x)), torch.tensor(t))
    tloss.backward()
    assert loss.item() == pytest.approx(tloss.item(), rel=1e-10)
    for (name_, p), q in zip(m.named_parameters(), net.parameters()):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=name_)


# --------------------------------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("name,scale", LR_MODELS)
def test_tiled_equals_untiled(rng, name, scale):
    m = scrambled(name, scale)
    x = rng.random((1, 1, 37, 29), dtype=np.float32)
    with no_grad():
        direct = m(Tensor(x)).numpy()
    for tile in (5, 16):  # many tiles, the last ones partial
        # Up to float32 rounding, relative to the output's scale (these weights give outputs up to ~600): ESPCN's
        # 3x3 layers run as Winograd F(4x4, 3x3), whose rounding depends on a pixel's place in its 4x4 block, and
        # the direct kernels' sums depend on the tile's shape (measured: up to 5e-6 x max |out| on AVX-512 and
        # AVX2 machines); a missing pixel of context costs 5-28 here, > 1e-3 in the test below.
        np.testing.assert_allclose(forward_tiled(m, x, tile=tile), direct, rtol=0, atol=1e-5 * np.abs(direct).max())


def test_the_deconvolution_needs_its_context(rng, monkeypatch):
    """With one pixel of context less than receptive_radius gives, tiles differ: the radius counts the
    deconvolution's reach (so the test above can fail)."""
    m = scrambled("fsrcnn", 2)
    x = rng.random((1, 1, 37, 29), dtype=np.float32)
    r = inference.receptive_radius(m)
    assert r == 4 + 2 + 2  # 5x5, 4 x 3x3, then the 9x9 deconvolution reaches 2 LR pixels either way at x2
    whole = forward_tiled(m, x, tile=64)
    monkeypatch.setattr(upscalers, "receptive_radius", lambda model: r - 1)  # what forward_tiled calls
    assert np.abs(forward_tiled(m, x, tile=8) - whole).max() > 1e-3


@pytest.mark.parametrize("name,scale", [("fsrcnn", 3), ("espcn", 3)])
def test_upscaler_on_colour_images(rng, name, scale):
    """Y through the model, chroma bicubic; tiles do not change the result."""
    m = scrambled(name, scale)
    img = smooth_image(rng, 30, 25)
    small = Upscaler(m, {"scale": scale}, scale, tile=7)(img)
    big = Upscaler(m, {"scale": scale}, scale, tile=512)(img)
    assert small.shape == (90, 75, 3) and small.dtype == np.uint8
    assert np.abs(small.astype(int) - big.astype(int)).max() <= 1


def test_x4_from_a_x2_fsrcnn_by_two_passes(rng):
    m = scrambled("fsrcnn", 2)
    up = Upscaler(m, {"scale": 2}, 4)
    assert (up.step_scale, up.passes) == (2, 2)
    assert up(smooth_image(rng, 10, 12)).shape == (40, 48, 3)
    with pytest.raises(ValueError, match="enlarges x2 itself"):
        Upscaler(m, {"scales": [2, 3]}, 3)


# ------------------------------------------------------------------------------------------------------ CLIs
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(5)
    for i, shape in enumerate([(40, 48, 3), (44, 40, 3), (40, 40)]):
        write_image(folder / f"im{i}.png", smooth_image(rng, *shape[:2], channels=shape[2] if len(shape) > 2 else 1))
    return folder


def run_train(capsys, *args):
    code = train.main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


TINY = ["--patch", "8", "--patches-per-image", "4", "--batch-size", "4", "--epochs", "1"]


def test_recipes():
    cfg = train.config_from_args(train.build_parser().parse_args(["fsrcnn"]))
    assert (cfg.scale, cfg.patch, cfg.optimizer, cfg.loss, cfg.model_cfg) == \
        (2, 16, "adam", "mse", dict(d=56, s=12, m=4, scale=2))
    cfg = train.config_from_args(train.build_parser().parse_args(["espcn", "--scale", "4"]))
    assert (cfg.scale, cfg.patch, cfg.model_cfg["scale"]) == (4, 17, 4)
    cfg = train.config_from_args(train.build_parser().parse_args(["fsrcnn", "--dsm", "32,5,1", "--scale", "3"]))
    assert cfg.model_cfg == dict(d=32, s=5, m=1, scale=3)


@pytest.mark.parametrize("name", ["fsrcnn", "espcn"])
def test_train_smoke_and_exact_resume(data, tmp_path, capsys, name):
    base = [name, "--data", data, "--val", data, *TINY, "--epochs", "2", "--scale", "3"]
    run_train(capsys, *base, "--out", tmp_path / "whole", "--steps", "4")
    run_train(capsys, *base, "--out", tmp_path / "parts", "--steps", "2")
    run_train(capsys, "--resume", tmp_path / "parts" / "last.npz", "--steps", "4")
    a, b = (checkpoint.load(tmp_path / p / "last.npz") for p in ("whole", "parts"))
    assert a["meta"]["step"] == b["meta"]["step"] == 4
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k], err_msg=k)
    model, meta = models.load(tmp_path / "whole" / "best.npz")
    assert meta["model"] == name and model.scale == 3


def test_fsrcnn_x3_from_x2_fine_tunes_only_the_deconvolution(data, tmp_path, capsys):
    run_train(capsys, "fsrcnn", "--data", data, "--val", data, *TINY, "--steps", "2", "--out", tmp_path / "x2")
    x2 = tmp_path / "x2" / "last.npz"
    out = run_train(capsys, "fsrcnn", "--scale", "3", "--init", x2, "--train-only", "deconv", "--data", data,
                    "--val", data, *TINY, "--epochs", "2", "--steps", "3", "--out", tmp_path / "x3")
    assert "x3" in out
    before, after = checkpoint.load(x2)["model"], checkpoint.load(tmp_path / "x3" / "last.npz")
    assert after["meta"]["config"]["scale"] == 3
    changed = sorted(k for k in before if not np.array_equal(before[k], after["model"][k]))
    assert changed == ["deconv.bias", "deconv.weight"]
    # resuming keeps the others frozen
    run_train(capsys, "--resume", tmp_path / "x3" / "last.npz", "--steps", "5")
    again = checkpoint.load(tmp_path / "x3" / "last.npz")["model"]
    assert sorted(k for k in before if not np.array_equal(before[k], again[k])) == changed


def test_train_only_that_matches_nothing(data, tmp_path, capsys):
    code = train.main(["fsrcnn", "--data", str(data), "--train-only", "decon", "--steps", "1",
                       "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--train-only decon matches no parameter" in err and "deconv.weight" in err


@pytest.fixture
def ckpt(tmp_path):
    m = scrambled("fsrcnn", 2, d=8, s=4, m=1)
    for p in m.parameters():
        p.data *= 0.1
    return checkpoint.save(tmp_path / "fsrcnn_x2.npz", m.state_dict(), dict(model="fsrcnn", config=m.config, scale=2))


def test_upscale_compare_and_eval_cli(rng, tmp_path, capsys, ckpt):
    hr = smooth_image(rng, 40, 48)
    write_image(tmp_path / "hr.png", hr)
    write_image(tmp_path / "lr.png", smooth_image(rng, 20, 24))
    code = upscale_cli.main([str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"), "--model", str(ckpt),
                             "--compare", str(tmp_path / "hr.png")])
    stdout = capsys.readouterr().out
    assert code == 0 and "PSNR" in stdout
    assert read_image(tmp_path / "out" / "lr_x2.png").shape == (40, 48, 3)
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "out" / "lr_x2_compare.png").ndim == 3  # a real PNG
    folder = tmp_path / "set"
    write_image(folder / "a.png", hr)
    assert sr_eval.main(["--model", str(ckpt), "--dataset", str(folder), "--scale", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = sr_eval.evaluate(make_upscaler(str(ckpt), 4), folder, 4)
    assert result["mean"]["psnr"] == pytest.approx(expected["mean"]["psnr"]) and np.isfinite(expected["mean"]["psnr"])


@pytest.mark.parametrize("name,scale,bicubic", [("fsrcnn-x2", 2, 33.67), ("fsrcnn-x3", 3, 30.40),
                                                ("fsrcnn-x4", 4, 28.43), ("espcn-x3", 3, 30.40)])
def test_shipped_weights_beat_bicubic_on_set5(data_root, name, scale, bicubic):
    if name not in models.shipped():
        pytest.skip(f"{name} is not shipped (minisr/weights/{name}.npz)")
    result = sr_eval.evaluate(make_upscaler(name, scale), "Set5", scale, data_root=data_root)
    print(f"{name} on Set5 x{scale}: {result['mean']['psnr']:.2f} dB (bicubic {bicubic:.2f} dB)")
    assert result["mean"]["psnr"] > bicubic + 0.5
