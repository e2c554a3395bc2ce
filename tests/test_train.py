"""``python -m minisr.train``: smoke runs of every model, exact resume, Ctrl-C, NaN stops, errors."""

import csv
import math
import os
import signal
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import write_tiny_training_images

from minisr import checkpoint, models, train
from minisr import functional as F
from minisr import optim as O

# Tiny budgets: 3 small images, narrow models, a few steps. Validation runs on the same folder.
TINY_ARGS = {
    "srcnn": ["--features", "8,4", "--patch", "20", "--stride", "10", "--batch-size", "4"],
    "vdsr": ["--depth", "3", "--features", "8", "--patch", "16", "--stride", "16", "--batch-size", "4"],
    "edsr": ["--n-resblocks", "1", "--n-feats", "8", "--patch", "8", "--patches-per-image", "4",
             "--batch-size", "2"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_training_images(tmp_path_factory.mktemp("data"), [(10, 12, 3), (11, 10, 3), (10, 10)])


def argv(model, data, out, *extra):
    return [model, "--data", str(data), "--val", str(data), "--out", str(out), *TINY_ARGS[model],
            *map(str, extra)]


def run_main(capsys, args):
    try:
        code = train.main(args)
    except SystemExit as stop:  # a value refused at parse time (minisr.cli_checks): exit code 2, one line
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def read_history(out):
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(path):
    return checkpoint.load(path)["model"]


def assert_same_state(a, b):
    ca, cb = checkpoint.load(a), checkpoint.load(b)
    assert ca.keys() == cb.keys()
    for group in set(ca) - {"meta"}:  # model, optim and any extra group (ema)
        assert ca[group].keys() == cb[group].keys()
        for k in ca[group]:
            np.testing.assert_array_equal(ca[group][k], cb[group][k], err_msg=f"{group}/{k}")


def without_time(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# ------------------------------------------------------------------------------------------------ smoke runs
@pytest.mark.parametrize("model", sorted(TINY_ARGS))
def test_cli_smoke_run(data, tmp_path, capsys, model):
    out = tmp_path / "run"
    code, stdout, err = run_main(capsys, argv(model, data, out, "--epochs", "1", "--steps", "3"))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".minisr-train.lock", "best.npz", "curves.png", "history.csv",
                                                     "last.npz"]  # the lock: minisr/runlock.py
    rows = read_history(out)
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "3")]
    assert math.isfinite(float(rows[0]["loss"])) and math.isfinite(float(rows[0]["val_psnr"]))
    assert iio.imread(out / "curves.png").ndim == 3  # a real PNG
    net, meta = models.load(out / "last.npz")
    assert meta["model"] == model and (meta["epoch"], meta["step"], meta["step_in_epoch"]) == (0, 3, 3)
    assert meta["scale"] == {"srcnn": 3, "vdsr": 2, "edsr": 2}[model]
    assert meta["scales"] == ([2, 3, 4] if model == "vdsr" else [meta["scale"]])
    fresh = models.build(model, **meta["config"])
    assert any(not np.array_equal(v, fresh.state_dict()[k]) for k, v in net.state_dict().items())  # trained
    assert "validation PSNR" in stdout and "bicubic" in stdout and str(out / "best.npz") in stdout


def test_cli_in_a_subprocess(data, tmp_path):
    out = tmp_path / "sub"
    args = argv("srcnn", data, out, "--steps", "2", "--scale", "2", "--kernels", "9,1,5")
    proc = subprocess.run([sys.executable, "-m", "minisr.train", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "outputs:" in proc.stdout
    model, meta = models.load(out / "best.npz")
    assert meta["scale"] == 2 and meta["config"]["kernels"] == [9, 1, 5] and model.border == 6
    assert (out / "curves.png").is_file() and len(read_history(out)) == 1


def test_recipes_are_the_defaults():
    cfg = train.config_from_args(train.build_parser().parse_args(["srcnn"]))
    assert (cfg.scale, cfg.patch, cfg.stride, cfg.optimizer, cfg.loss) == (3, 33, 14, "adam", "mse")
    assert cfg.model_cfg["kernels"] == (9, 5, 5) and cfg.model_cfg["padding"] == "valid"
    cfg = train.config_from_args(train.build_parser().parse_args(["vdsr"]))
    assert (cfg.train_scales, cfg.patch, cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.clip) == \
        ([2, 3, 4], 41, "sgd", 0.9, 1e-4, 0.4)
    cfg = train.config_from_args(train.build_parser().parse_args(["edsr", "--scale", "3"]))
    assert (cfg.patch, cfg.loss, cfg.lr, cfg.model_cfg["scale"], cfg.model_cfg["n_resblocks"]) == \
        (48, "l1", 1e-4, 3, 16)


# ---------------------------------------------------------------------------------------------------- resume
def steps_per_epoch(model, data, tmp_path):
    args = train.build_parser().parse_args(argv(model, data, tmp_path / "probe"))
    cfg = train.config_from_args(args)
    return train.Trainer(cfg, tmp_path / "probe").data.steps_per_epoch(cfg.batch_size)


@pytest.mark.parametrize("model,split", [("srcnn", "mid-epoch"), ("srcnn", "epoch-end"),
                                         ("vdsr", "mid-epoch"), ("edsr", "mid-epoch"), ("edsr", "ema")])
def test_resume_continues_exactly(data, tmp_path, capsys, model, split):
    """N steps in one go == some steps, then --resume for the rest: same losses, weights, optimizer state (and
    weight average, with --ema)."""
    spe = steps_per_epoch(model, data, tmp_path)
    assert spe >= 3
    first = spe + spe // 2 if split == "mid-epoch" else spe
    total = 2 * spe + 1  # ends one step into the third epoch
    # a learning rate that halves every epoch: the schedule must also resume
    extra = ["--epochs", "3", "--lr-step", "1", "--lr-gamma", "0.5", "--warmup", "0"]
    if model == "srcnn":
        extra += ["--smoothness", "1e-3"]
    if split == "ema":
        extra += ["--ema", "0.7"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_main(capsys, argv(model, data, whole, "--steps", total, *extra))[0] == 0
    assert run_main(capsys, argv(model, data, parts, "--steps", first, *extra))[0] == 0
    assert checkpoint.load(parts / "last.npz")["meta"]["step"] == first
    code, _, err = run_main(capsys, ["--resume", str(parts / "last.npz"), "--steps", str(total)])
    assert code == 0, err
    expected = without_time(read_history(whole))
    assert [r["epoch"] for r in expected] == ["1", "2", "3"]
    lrs = [float(r["lr"]) for r in expected]
    assert lrs == pytest.approx([lrs[0], lrs[0] / 2, lrs[0] / 4])
    assert without_time(read_history(parts)) == expected
    assert_same_state(whole / "last.npz", parts / "last.npz")
    meta_whole, meta_parts = (checkpoint.load(p / "last.npz")["meta"] for p in (whole, parts))
    assert without_time(meta_parts["history"]) == without_time(meta_whole["history"])
    assert meta_parts["epoch_losses"] == meta_whole["epoch_losses"]


def test_ema_is_what_validation_measures_and_best_keeps(data, tmp_path, capsys):
    """--ema: last.npz holds the weights and their average (ema/), best.npz the average as its model, and the
    history's validation PSNR is the average's."""
    from minisr.eval import evaluate
    from minisr.upscalers import Upscaler

    out = tmp_path / "ema"
    code, _, err = run_main(capsys, argv("edsr", data, out, "--epochs", "1", "--steps", "4", "--ema", "0.5"))
    assert code == 0, err
    last, best = checkpoint.load(out / "last.npz"), checkpoint.load(out / "best.npz")
    assert last["meta"]["train_config"]["ema"] == 0.5
    net, meta = models.load(out / "best.npz")
    assert set(last["ema"]) == {name for name, _ in net.named_parameters()}
    for k, avg in last["ema"].items():
        np.testing.assert_array_equal(best["model"][k], avg, err_msg=k)
    assert any(not np.array_equal(last["model"][k], avg) for k, avg in last["ema"].items())
    psnr = evaluate(Upscaler(net, meta, 2), str(data), 2)["mean"]["psnr"]
    assert float(read_history(out)[0]["val_psnr"]) == pytest.approx(psnr, abs=1e-9)
    code, _, err = run_main(capsys, ["--resume", str(out / "last.npz"), "--ema", "0.9"])
    assert code == 2 and "--ema" in err  # a resumed run keeps its decay


def test_ctrl_c_saves_and_resume_continues_exactly(data, tmp_path, capsys, monkeypatch):
    # Ctrl-C as in a terminal, also when pytest was started with SIGINT ignored (nohup, a background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_saves_and_resume_continues_exactly(data, tmp_path, capsys, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_saves_and_resume_continues_exactly(data, tmp_path, capsys, monkeypatch):
    spe = steps_per_epoch("srcnn", data, tmp_path)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_main(capsys, argv("srcnn", data, whole, "--epochs", "2"))[0] == 0

    real_step = train.Trainer.train_step
    calls = []

    def step_then_ctrl_c(self, x, t):
        calls.append(1)
        if len(calls) == spe + 2:  # Ctrl-C while the second epoch's second batch is being trained on
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, x, t)

    monkeypatch.setattr(train.Trainer, "train_step", step_then_ctrl_c)
    code, stdout, _ = run_main(capsys, argv("srcnn", data, parts, "--epochs", "2"))
    assert code == 130
    assert "interrupted" in stdout and "--resume" in stdout
    meta = checkpoint.load(parts / "last.npz")["meta"]
    # the batch in flight was finished, then saved
    assert (meta["epoch"], meta["step"], meta["step_in_epoch"]) == (1, spe + 2, 2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    monkeypatch.undo()
    assert run_main(capsys, ["--resume", str(parts / "last.npz")])[0] == 0
    assert without_time(read_history(parts)) == without_time(read_history(whole))
    assert_same_state(whole / "last.npz", parts / "last.npz")


def test_resume_errors(data, tmp_path, capsys):
    code, _, err = run_main(capsys, ["--resume", str(tmp_path / "nothing.npz")])
    assert code == 2 and "nothing.npz" in err
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    code, _, err = run_main(capsys, ["--resume", str(tmp_path / "bad.npz")])
    assert code == 2 and "not a minisr checkpoint" in err
    net = models.build("srcnn", features=(8, 4))
    checkpoint.save(tmp_path / "weights_only.npz", net.state_dict(), {"model": "srcnn", "config": net.config})
    code, _, err = run_main(capsys, ["--resume", str(tmp_path / "weights_only.npz")])
    assert code == 2 and "cannot resume" in err


# ------------------------------------------------------------------------------------------------- NaN stops
def test_absurd_learning_rate_stops_with_a_clear_message(data, tmp_path, capsys):
    out = tmp_path / "run"
    with np.errstate(all="ignore"):
        args = argv("srcnn", data, out, "--optimizer", "sgd", "--lr", "1e30", "--epochs", "2")
        code, _, err = run_main(capsys, args)
    assert code == 3
    assert "error: the loss became" in err and "stopping" in err and "no checkpoint was written" in err
    assert not (out / "last.npz").exists()


def test_nan_loss_keeps_the_last_good_checkpoint(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_main(capsys, argv("srcnn", data, out, "--epochs", "1"))[0] == 0
    good = {name: (out / name).read_bytes() for name in ("last.npz", "best.npz", "history.csv")}

    real_mse = F.mse_loss
    calls = []

    def mse_turning_nan(pred, target):
        calls.append(1)
        loss = real_mse(pred, target)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(F, "mse_loss", mse_turning_nan)
    code, stdout, err = run_main(capsys, ["--resume", str(out / "last.npz"), "--epochs", "3"])
    assert code == 3
    assert "the loss became nan at epoch 2, step" in err and str(out / "last.npz") in err and "kept" in err
    for name, data_bytes in good.items():
        assert (out / name).read_bytes() == data_bytes, name  # not overwritten
    assert not list(out.glob("*.tmp"))
    assert all(np.isfinite(v).all() for v in weights(out / "last.npz").values())


def test_weights_that_overflow_on_an_epochs_last_step_are_not_saved(data, tmp_path, capsys, monkeypatch):
    """The loss was finite, but the update after it made the weights infinite: no epoch-end save."""
    out = tmp_path / "run"
    spe = steps_per_epoch("srcnn", data, tmp_path)
    assert run_main(capsys, argv("srcnn", data, out, "--epochs", "1"))[0] == 0
    good = (out / "last.npz").read_bytes()

    real_step = O.Adam.step
    calls = []

    def step_overflowing(self):
        real_step(self)
        calls.append(1)
        if len(calls) == spe:  # the last step of the second epoch
            self.param_groups[0]["params"][0].data[...] = np.inf

    monkeypatch.setattr(O.Adam, "step", step_overflowing)
    code, _, err = run_main(capsys, ["--resume", str(out / "last.npz"), "--epochs", "2"])
    assert code == 3
    assert "weights became non-finite" in err and "kept" in err
    assert (out / "last.npz").read_bytes() == good


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("case", ["patch", "data", "scale", "vdsr-features"])
def test_cli_errors(data, tmp_path, capsys, case):
    out = tmp_path / "run"
    args = {
        "patch": argv("srcnn", data, out, "--patch", "16"),  # 9-5-5 loses 8 pixels a side
        "data": argv("srcnn", data, out, "--patch", "60"),  # no image holds a 60x60 patch
        "scale": argv("edsr", data, out, "--scale", "5"),
        "vdsr-features": argv("vdsr", data, out, "--features", "8,4"),
    }[case]
    code, _, err = run_main(capsys, args)
    assert code == 2
    expected = {"patch": "--patch 16", "data": "no training patches", "scale": "--scale: '5'",
                "vdsr-features": "one number"}[case]
    assert err.startswith("error: ") and expected in err
    assert not (out / "last.npz").exists()
