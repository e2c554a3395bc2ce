"""SRResNet and SRGAN (issue 18): the generator and the discriminator against PyTorch reimplementations (forward,
gradients through BatchNorm in training mode, state_dict names), one adversarial step against the same step in
PyTorch, ``python -m minisr.train srgan`` end to end, exact resume of both networks and both optimizers, and the
failure detection (NaN, discriminator winning, mode collapse)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from conftest import write_tiny_training_images

import minisr
import minisr.functional as F
from minisr import Tensor, checkpoint, gan, models, nn, optim, train

SMALL_G = dict(scale=2, n_blocks=1, n_feats=4)
SMALL_D = dict(n_feats=2, fc=6)


# --------------------------------------------------------------------------------------------- the models
def test_discriminator_takes_any_size_and_gives_one_logit():
    minisr.manual_seed(0)
    d = models.build("srgan_discriminator", **SMALL_D)
    for shape in [(2, 3, 96, 96), (3, 3, 17, 30), (2, 3, 1, 1)]:
        d.train()
        assert d(Tensor(np.random.rand(*shape).astype(np.float32))).shape == (shape[0], 1)
    full = models.build("srgan_discriminator")
    convs = [m for m in full.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in full.features) == 7
    assert full.classifier[1].out_features == 1024 and full.classifier[3].out_features == 1
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        d(Tensor(np.zeros((2, 1, 8, 8), np.float32)))


def test_srgan_is_the_srresnet_generator():
    g = models.build("srgan", **SMALL_G)
    assert isinstance(g, models.SRResNet)
    assert list(g.state_dict()) == list(models.build("srresnet", **SMALL_G).state_dict())


def test_zero_d_buffers_stay_zero_d_and_old_checkpoints_load():
    g = models.build("srresnet", **SMALL_G)
    g.to("cpu")
    g.double()
    key = "body.0.bn1.num_batches_tracked"
    assert g.state_dict()[key].shape == ()
    state = g.state_dict()
    state[key] = np.array([7.0])  # minisr's Module.to wrote (1,) before this was fixed
    g.load_state_dict(state)
    assert g.state_dict()[key].shape == () and float(g.state_dict()[key]) == 7.0


# ------------------------------------------------------------------------------------ PyTorch reimplementations
torch = pytest.importorskip("torch")
tnn = torch.nn
TF = torch.nn.functional


class TorchBlock(tnn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv1, self.bn1, self.act = tnn.Conv2d(n, n, 3, padding=1), tnn.BatchNorm2d(n), tnn.PReLU(n)
        self.conv2, self.bn2 = tnn.Conv2d(n, n, 3, padding=1), tnn.BatchNorm2d(n)

    def forward(self, x):
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))) + x


class TorchSRResNet(tnn.Module):
    """SRResNet as the paper draws it, written for PyTorch from the paper, with minisr's parameter names."""

    def __init__(self, scale=2, n_blocks=1, n_feats=4, n_colors=3):
        super().__init__()
        n = n_feats
        self.head = tnn.Sequential(tnn.Conv2d(n_colors, n, 9, padding=4), tnn.PReLU(n))
        self.body = tnn.Sequential(*[TorchBlock(n) for _ in range(n_blocks)], tnn.Conv2d(n, n, 3, padding=1),
                                   tnn.BatchNorm2d(n))
        ups = []
        for _ in range({2: 1, 4: 2}[scale]):
            ups += [tnn.Conv2d(n, 4 * n, 3, padding=1), tnn.PixelShuffle(2), tnn.PReLU(n)]
        self.upsample = tnn.Sequential(*ups)
        self.tail = tnn.Conv2d(n, n_colors, 9, padding=4)

    def forward(self, x):
        x = self.head(x)
        return self.tail(self.upsample(self.body(x) + x))


class TorchDiscriminator(tnn.Module):
    """SRGAN's discriminator with a global average pool before the dense layers, minisr's parameter names."""

    def __init__(self, n_feats=2, n_colors=3, fc=6):
        super().__init__()
        layers, c = [tnn.Conv2d(n_colors, n_feats, 3, padding=1), tnn.LeakyReLU(0.2)], n_feats
        for w, s in zip((1, 2, 2, 4, 4, 8, 8), (2, 1, 2, 1, 2, 1, 2)):
            layers += [tnn.Conv2d(c, w * n_feats, 3, stride=s, padding=1), tnn.BatchNorm2d(w * n_feats),
                       tnn.LeakyReLU(0.2)]
            c = w * n_feats
        self.features = tnn.Sequential(*layers)
        self.pool = tnn.AdaptiveAvgPool2d(1)
        self.classifier = tnn.Sequential(tnn.Flatten(), tnn.Linear(c, fc), tnn.LeakyReLU(0.2), tnn.Linear(fc, 1))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def to_torch(ours, theirs):
    """Copy minisr's state_dict into the torch module by name (strict: every name must match)."""
    state = {k: torch.tensor(v.astype(np.int64) if k.endswith("num_batches_tracked") else v)
             for k, v in ours.state_dict().items()}
    theirs.double().load_state_dict(state, strict=True)
    return theirs


def assert_state_close(ours, theirs, tol=1e-9, what=""):
    mine = ours.state_dict()
    for k, v in theirs.state_dict().items():
        a, b = np.asarray(mine[k], np.float64), v.detach().double().numpy()
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
        assert err < tol, f"{what}{k}: relative error {err:.2e}"


def check_forward_backward(ours, theirs, x, rng, train_mode=True):
    """Forward and every gradient (input, parameters) of sum(G * model(x)), G random; and the BN running stats."""
    ours.train(train_mode)
    theirs.train(train_mode)
    xt = Tensor(x.copy(), requires_grad=True)
    y = ours(xt)
    xr = torch.tensor(x.copy(), requires_grad=True)
    yr = theirs(xr)
    np.testing.assert_allclose(y.numpy(), yr.detach().numpy(), rtol=1e-9, atol=1e-10)
    G = rng.standard_normal(y.shape)
    y.backward(G)
    yr.backward(torch.tensor(G))
    np.testing.assert_allclose(xt.grad.numpy() if hasattr(xt.grad, "numpy") else xt.grad, xr.grad.numpy(),
                               rtol=1e-8, atol=1e-10 * np.abs(xr.grad.numpy()).max())
    tp = dict(theirs.named_parameters())
    # (a convolution's bias before a training-mode BatchNorm has a zero gradient: rounding noise on both sides,
    # measured against the largest gradient of the network)
    floor = 1e-6 * max(float(p.grad.abs().max()) for p in theirs.parameters())
    for name, p in ours.named_parameters():
        g = p.grad.numpy() if hasattr(p.grad, "numpy") else p.grad
        ref = tp[name].grad.numpy()
        err = np.abs(g - ref).max() / max(np.abs(ref).max(), floor)
        assert err < 1e-8, f"d/d{name}: relative error {err:.2e}"
    assert_state_close(ours, theirs, what="after the forward: ")


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    with minisr.use_backend(request.param):
        yield request.param


def test_discriminator_gradients_through_batchnorm_in_training_mode(backend, rng):
    minisr.manual_seed(1)
    ours = models.build("srgan_discriminator", **SMALL_D).double()
    for m in ours.modules():  # BatchNorm's affine parameters away from (1, 0), so their gradients matter
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.uniform(-0.5, 0.5, m.bias.shape)
    theirs = to_torch(ours, TorchDiscriminator(**SMALL_D))
    check_forward_backward(ours, theirs, rng.standard_normal((3, 3, 19, 13)), rng)
    check_forward_backward(ours, theirs, rng.standard_normal((2, 3, 16, 16)), rng, train_mode=False)


def test_srresnet_forward_backward_and_names_against_pytorch(backend, rng):
    minisr.manual_seed(2)
    cfg = dict(scale=4, n_blocks=2, n_feats=4)
    ours = models.build("srresnet", **cfg).double()
    theirs = to_torch(ours, TorchSRResNet(**cfg))
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())  # the same names (torch: per module order)
    check_forward_backward(ours, theirs, rng.random((2, 3, 7, 6)), rng)
    check_forward_backward(ours, theirs, rng.random((1, 3, 5, 9)), rng, train_mode=False)


def test_one_adversarial_step_matches_pytorch(backend, rng):
    """A D step then a G step (Adam, both networks in training mode), minisr vs the same step in PyTorch."""
    minisr.manual_seed(3)
    g, d = models.build("srresnet", **SMALL_G).double(), models.build("srgan_discriminator", **SMALL_D).double()
    tg, td = to_torch(g, TorchSRResNet(**SMALL_G)), to_torch(d, TorchDiscriminator(**SMALL_D))
    lr_img, hr_img = rng.random((3, 3, 6, 5)), rng.random((3, 3, 12, 10))
    w, lr = 0.1, 1e-2  # a large adversarial weight and rate, so that a wrong term shows
    opt_g, opt_d = optim.Adam(g.parameters(), lr=lr), optim.Adam(d.parameters(), lr=lr)
    before_g, before_d = g.state_dict(), d.state_dict()
    stats = gan.adversarial_step(g, d, opt_g, opt_d, lr_img, hr_img, adv_weight=w)

    topt_g, topt_d = torch.optim.Adam(tg.parameters(), lr=lr), torch.optim.Adam(td.parameters(), lr=lr)
    x, y = torch.tensor(lr_img), torch.tensor(hr_img)
    fake = tg(x)
    real_logits, fake_logits = td(y), td(fake.detach())
    d_loss = (TF.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
              + TF.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    topt_d.zero_grad()
    d_loss.backward()
    topt_d.step()
    td.requires_grad_(False)
    logits = td(fake)
    content = TF.mse_loss(fake, y)
    adv = TF.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    g_loss = content + w * adv
    topt_g.zero_grad()
    g_loss.backward()
    topt_g.step()

    assert stats["d_loss"] == pytest.approx(d_loss.item(), rel=1e-10)
    assert stats["content"] == pytest.approx(content.item(), rel=1e-10)
    assert stats["adv"] == pytest.approx(adv.item(), rel=1e-10)
    assert stats["g_loss"] == pytest.approx(g_loss.item(), rel=1e-10)
    assert stats["real_acc"] == pytest.approx(float((real_logits > 0).double().mean()))
    assert stats["fake_acc"] == pytest.approx(float((fake_logits < 0).double().mean()))
    assert all(p.requires_grad for p in d.parameters())  # frozen only for the G step
    assert_state_close(d, td, tol=1e-7, what="discriminator after the step: ")
    assert_state_close(g, tg, tol=1e-7, what="generator after the step: ")
    # the step moved both networks (equal states alone would also hold for no update at all)
    assert not np.array_equal(before_g["tail.weight"], g.state_dict()["tail.weight"])
    assert not np.array_equal(before_d["classifier.3.weight"], d.state_dict()["classifier.3.weight"])


def test_the_adversarial_step_on_the_gpu_equals_the_cpu_s(cuda, rng):
    """On a GPU, or on the CUDA emulator (tests/cuda_emu) without one: the same step, the same numbers."""
    lr_img, hr_img = rng.random((3, 3, 6, 5)), rng.random((3, 3, 12, 10))
    out = {}
    for dev in ["cpu", "cuda"]:
        minisr.manual_seed(3)
        g = models.build("srresnet", **SMALL_G).double().to(dev)
        d = models.build("srgan_discriminator", **SMALL_D).double().to(dev)
        opt_g, opt_d = optim.Adam(g.parameters(), lr=1e-2), optim.Adam(d.parameters(), lr=1e-2)
        out[dev] = gan.adversarial_step(g, d, opt_g, opt_d, lr_img, hr_img, 0.1, device=dev), g, d
    for k in ("d_loss", "g_loss", "content", "adv", "real_acc", "fake_acc", "fake_spread"):
        assert out["cuda"][0][k] == pytest.approx(out["cpu"][0][k], rel=1e-9), k
    for i, what in [(1, "generator"), (2, "discriminator")]:
        cpu, gpu = out["cpu"][i].state_dict(), out["cuda"][i].state_dict()
        for k in cpu:
            np.testing.assert_allclose(gpu[k], cpu[k], rtol=1e-7, atol=1e-9, err_msg=f"{what} {k}")


# ------------------------------------------------------------------------------------------ failure detection
def stats(**kw):
    s = dict(d_loss=0.7, g_loss=0.1, content=0.1, adv=0.7, real_acc=0.5, fake_acc=0.5, fake_spread=0.2,
             real_spread=0.2)
    s.update(kw)
    return s


def test_failure_detector_reports_each_episode_once():
    det = gan.FailureDetector(window=3, d_win_loss=0.05, collapse_ratio=0.1)
    wins = stats(d_loss=0.01, real_acc=1.0, fake_acc=1.0)
    seq = [wins, wins, stats(), wins, wins, wins, wins, stats(fake_spread=0.001), stats(fake_spread=0.001),
           stats(fake_spread=0.001)]
    alerts = [(step, kind) for step, s in enumerate(seq, 1) for kind, _ in det.update(s, step)]
    assert alerts == [(6, "d_wins"), (10, "collapse")]
    assert det.update(stats(d_loss=0.01, real_acc=1.0, fake_acc=0.9), 11) == []  # one fake fooled it: no win
    restored = gan.FailureDetector(3)
    restored.load_state(det.state())
    assert restored.runs == det.runs


def test_a_stuck_generator_and_a_fast_discriminator_trigger_both_alerts(rng):
    """For real: a generator that outputs one image whatever its input (its last layer zeroed, a learning rate of
    1e-12) collapses from the first step, and a discriminator at lr 3e-2 learns to tell its output from the real
    images, until it wins."""
    minisr.manual_seed(7)
    g, d = models.build("srresnet", scale=4, n_blocks=1, n_feats=4), models.build("srgan_discriminator", **SMALL_D)
    g.tail.weight.data[...] = 0
    opt_g, opt_d = optim.Adam(g.parameters(), lr=1e-12), optim.Adam(d.parameters(), lr=3e-2)
    det = gan.FailureDetector(window=5)
    lr_img, hr_img = rng.random((4, 3, 6, 6)).astype(np.float32), rng.random((4, 3, 24, 24)).astype(np.float32)
    seen, losses = {}, []
    for step in range(1, 151):
        s = gan.adversarial_step(g, d, opt_g, opt_d, lr_img, hr_img)
        losses.append(s["d_loss"])
        for kind, _ in det.update(s, step):
            seen.setdefault(kind, step)
        if "d_wins" in seen:
            break
    assert seen.get("collapse") == 5
    assert "d_wins" in seen, f"the discriminator's loss went {losses[0]:.3f} -> {min(losses):.3f} in 150 steps"
    assert all(v < 0.05 for v in losses[-5:]) and losses[0] > 1.0


# ------------------------------------------------------------------------------------------- the CLI end to end
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_training_images(tmp_path_factory.mktemp("data"), [(10, 12, 3), (11, 10, 3), (12, 12, 3)])


def make_init(path, zero_tail=False):
    minisr.manual_seed(7)
    g = models.build("srresnet", scale=4, n_blocks=1, n_feats=4)
    state = g.state_dict()
    if zero_tail:  # the output is the tail's bias: the same image for every input
        state["tail.weight"][...] = 0
    checkpoint.save(path, state, dict(model="srresnet", config=g.config, scale=4, scales=[4], channels="rgb"))
    return path


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    return make_init(tmp_path_factory.mktemp("init") / "srresnet.npz")


def argv(data, out, init, *extra):
    return ["srgan", "--init", str(init), "--n-blocks", "1", "--n-feats", "4", "--d-feats", "2", "--d-fc", "8",
            "--data", str(data), "--val", str(data), "--patch", "6", "--patches-per-image", "4", "--batch-size", "4",
            "--out", str(out), *map(str, extra)]


def run(capsys, args):
    code = train.main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def history(out):
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_srgan_cli_end_to_end(data, init, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, argv(data, out, init, "--steps", "2", "--crops-every", "2"))
    assert code == 0, err
    assert "generator initialised from" in stdout
    # (the lock file: an SRGAN run holds its folder as every minisr.train run does)
    assert sorted(p.name for p in out.iterdir()) == [".minisr-train.lock", "best.npz", "crops", "curves.png",
                                                     "history.csv", "last.npz"]
    assert [p.name for p in (out / "crops").iterdir()] == ["step_000002.png"]
    (row,) = history(out)
    assert row["step"] == "2"
    for k in ("loss", "d_loss", "content", "adv", "real_acc", "fake_acc", "val_psnr", "val_ssim"):
        assert np.isfinite(float(row[k])), k
    # the checkpoint is the generator's: models.load, eval and upscale take it
    g, meta = models.load(out / "best.npz")
    assert isinstance(g, models.SRResNet) and meta["model"] == "srgan" and meta["scale"] == 4
    ck = checkpoint.load(out / "last.npz")
    assert set(ck) >= {"model", "optim", "disc", "disc_optim"}
    from minisr.eval import evaluate
    from minisr.upscalers import make_upscaler

    assert np.isfinite(evaluate(make_upscaler(str(out / "best.npz"), 4), str(data), 4)["mean"]["psnr"])
    # a generator of another config is refused, naming both
    code, _, err = run(capsys, argv(data, tmp_path / "bad", init, "--steps", "1", "--n-feats", "8"))
    assert code == 2 and "srresnet weights of the same config" in err


def test_train_dispatches_srgan_runs(data, init, tmp_path, capsys):
    assert gan.wants(["srgan", "--init", "x"]) and gan.wants(["--scale", "4", "srgan"])
    assert not gan.wants(["srcnn", "--out", "srgan"]) and not gan.wants(["srresnet"])
    out = tmp_path / "run"
    assert run(capsys, argv(data, out, init, "--steps", "1", "--crops-every", "0"))[0] == 0
    assert gan.wants(["--resume", str(out / "last.npz")])
    assert not gan.wants(["--resume", str(init)])


def test_resume_is_exact_for_both_networks_and_both_optimizers(data, init, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(capsys, argv(data, straight, init, "--steps", "5", "--crops-every", "0"))[0] == 0
    assert run(capsys, argv(data, split, init, "--steps", "2", "--crops-every", "0"))[0] == 0
    at_2 = checkpoint.load(split / "last.npz")
    code, _, err = run(capsys, ["--resume", str(split / "last.npz"), "--steps", "5"])
    assert code == 0, err
    a, b = checkpoint.load(straight / "last.npz"), checkpoint.load(split / "last.npz")
    assert a["meta"]["step"] == b["meta"]["step"] == 5
    # an adversarial option given with --resume would be ignored (the run's own settings): refused, nothing runs
    with pytest.raises(SystemExit) as stop:
        train.main(["--resume", str(split / "last.npz"), "--steps", "6", "--stop-on-failure", "--adv-weight", "1"])
    assert stop.value.code == 2 and "--adv-weight, --stop-on-failure with --resume" in capsys.readouterr().err
    assert checkpoint.load(split / "last.npz")["meta"]["step"] == 5
    for group in ("model", "optim", "disc", "disc_optim"):
        assert a[group].keys() == b[group].keys() and a[group], group
        for k in a[group]:
            np.testing.assert_array_equal(a[group][k], b[group][k], err_msg=f"{group}/{k}")
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in history(straight)] == \
           [{k: v for k, v in r.items() if k not in drop} for r in history(split)]
    # the discriminator did learn (the comparison is not between two untouched copies)
    assert at_2["meta"]["step"] == 2
    for group, key in [("model", "tail.weight"), ("disc", "features.0.weight"), ("disc_optim", "state0.exp_avg")]:
        assert not np.array_equal(at_2[group][key], a[group][key]), group


def test_nan_stops_with_code_3_and_keeps_the_last_good_checkpoint(data, init, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    mse = F.mse_loss

    def mse_turning_nan(pred, target):
        calls["n"] += 1
        loss = mse(pred, target)
        return F.mul(loss, float("nan")) if calls["n"] > 3 else loss

    monkeypatch.setattr(F, "mse_loss", mse_turning_nan)
    code, _, err = run(capsys, argv(data, out, init, "--steps", "6", "--crops-every", "0"))
    assert code == 3
    assert "the generator's loss became nan" in err and "last good checkpoint" in err
    assert checkpoint.load(out / "last.npz")["meta"]["step"] == 3  # the end of epoch 1, before the NaN


def test_mode_collapse_is_detected(data, tmp_path, capsys):
    init = make_init(tmp_path / "constant.npz", zero_tail=True)  # every output the same image
    out = tmp_path / "run"
    code, _, err = run(capsys, argv(data, out, init, "--steps", "3", "--crops-every", "0", "--lr", "1e-12",
                                    "--fail-window", "2"))
    assert code == 0, err
    assert "mode collapse" in err and "step 2" in err
    assert history(out)[0]["alerts"] == "collapse@2"
    code, _, err = run(capsys, argv(data, tmp_path / "stop", init, "--steps", "3", "--crops-every", "0",
                                    "--lr", "1e-12", "--fail-window", "2", "--stop-on-failure"))
    assert code == 3 and "mode collapse" in err


def test_discriminator_winning_is_detected(data, init, tmp_path, capsys, monkeypatch):
    step = gan.adversarial_step

    def d_wins(*args, **kw):  # the real step, reported as a discriminator that is always right
        s = step(*args, **kw)
        s.update(d_loss=1e-4, real_acc=1.0, fake_acc=1.0)
        return s

    monkeypatch.setattr(gan, "adversarial_step", d_wins)
    code, _, err = run(capsys, argv(data, tmp_path / "run", init, "--steps", "4", "--crops-every", "0",
                                    "--fail-window", "3", "--stop-on-failure"))
    assert code == 3
    assert "the discriminator is winning" in err and "steps (1-3" in err
    assert not (tmp_path / "run" / "last.npz").exists()  # stopped inside epoch 1: nothing good to keep yet


def test_targets_without_spread_give_a_nan_ratio_not_a_crash(data, init, tmp_path, capsys, monkeypatch):
    """Flat targets (every HR patch the same, spread 0): the epoch's spread ratio is NaN, as the detector's is,
    not a ZeroDivisionError at the end of the epoch."""
    assert math.isnan(gan.spread_ratio(0.0, 0.0)) and math.isnan(gan.spread_ratio(0.3, float("nan")))
    assert gan.spread_ratio(0.1, 0.4) == 0.25
    step = gan.adversarial_step

    def flat(*args, **kw):
        s = step(*args, **kw)
        s.update(real_spread=0.0, fake_spread=0.0)
        return s

    monkeypatch.setattr(gan, "adversarial_step", flat)
    out = tmp_path / "run"
    code, _, err = run(capsys, argv(data, out, init, "--steps", "3", "--crops-every", "0"))
    assert code == 0, err
    assert history(out)[0]["spread_ratio"] == "nan"


def test_the_generator_step_leaves_frozen_discriminator_layers_frozen(rng):
    """adversarial_step freezes D for the generator's step and puts each flag back as it was: a layer frozen by the
    caller stays frozen (and unchanged), the others train."""
    minisr.manual_seed(3)
    g, d = models.build("srresnet", scale=4, n_blocks=1, n_feats=4), models.build("srgan_discriminator", **SMALL_D)
    frozen = d.features[0].weight
    frozen.requires_grad = False
    before = frozen.data.copy()
    opt_g = optim.Adam(g.parameters(), lr=1e-3)
    opt_d = optim.Adam([p for p in d.parameters() if p.requires_grad], lr=1e-3)
    lr_img, hr_img = rng.random((2, 3, 6, 6)).astype(np.float32), rng.random((2, 3, 24, 24)).astype(np.float32)
    gan.adversarial_step(g, d, opt_g, opt_d, lr_img, hr_img)
    assert not frozen.requires_grad and np.array_equal(frozen.data, before)
    assert all(p.requires_grad for p in d.parameters() if p is not frozen)
