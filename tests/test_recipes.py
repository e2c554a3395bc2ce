"""Training recipes: --recipe quick|paper, several --data sets, warm-up + cosine schedule, global-norm clipping,
mid-epoch saves (--save-every) that resume exactly, and the errors of --init / --resume / --data."""

import shutil

import numpy as np
import pytest
import test_train
from test_train import argv, assert_same_state, read_history, run_main, without_time
from test_upscale import save_model

from minisr import checkpoint, models, train
from minisr.data import write_image

data = test_train.data  # the same small training set (a module-scoped fixture)


@pytest.fixture(scope="module")
def more(tmp_path_factory):
    """A second training set (one 48x40 image) and one whose images are all too small (12x12)."""
    rng = np.random.default_rng(6)
    big, small = tmp_path_factory.mktemp("more"), tmp_path_factory.mktemp("small")
    write_image(big / "a.png", rng.integers(0, 256, size=(48, 40, 3)).astype(np.uint8))
    write_image(small / "b.png", rng.integers(0, 256, size=(12, 12, 3)).astype(np.uint8))
    return big, small


def parse(*args):
    return train.config_from_args(train.build_parser().parse_args(list(args)))


def test_paper_recipe_is_one_option_and_quick_the_default():
    quick = parse("srcnn")
    assert (quick.recipe, quick.data, quick.val, quick.schedule) == ("quick", "default", "default", "cosine")
    assert quick.warmup > 0 and quick.clip_norm
    paper = parse("srcnn", "--recipe", "paper")
    assert (paper.data, paper.val, paper.schedule) == ("T91,BSD200", "Set5", "cosine")
    assert paper.epochs > quick.epochs and paper.save_every > 0 and paper.stride is None
    assert paper.model_cfg == quick.model_cfg  # the same 9-5-5 network
    assert parse("srcnn", "--recipe", "paper", "--data", "T91", "--lr", "1e-4").data == "T91"
    for model in ("vdsr", "edsr"):
        cfg = parse(model, "--recipe", "paper")
        assert cfg.data == "T91,BSD200" and cfg.warmup > 0
    vdsr = parse("vdsr", "--recipe", "paper")  # the run that made vdsr.npz: x2 drawn twice, a weight average
    assert vdsr.optimizer == "adam" and vdsr.train_scales == [2, 2, 3, 4] and vdsr.ema == 0.999
    assert parse("vdsr").train_scales == [2, 3, 4]
    assert parse("vdsr", "--recipe", "paper", "--scale", "3").train_scales == [3]
    assert parse("srcnn", "--lr-step", "3").schedule == "step"  # a step size asks for the step schedule


def test_every_model_has_a_paper_recipe(monkeypatch):
    """`--recipe paper` works for every trainable model (it raised KeyError for fsrcnn and espcn); the LR-space Y
    models train on T91 alone, ESPCN on patches large enough that most outputs do not see the zero padding."""
    for model in train.RECIPES:
        cfg = parse(model, "--recipe", "paper")
        assert cfg.recipe == "paper" and cfg.val == "Set5" and cfg.schedule in ("cosine", "step"), model
    for model in ("fsrcnn", "espcn"):
        cfg = parse(model, "--recipe", "paper")
        assert cfg.data == "T91" and cfg.warmup > 0 and cfg.schedule == "cosine"
    espcn = parse("espcn", "--recipe", "paper")
    assert espcn.patch > parse("espcn").patch and espcn.batch_size * espcn.patch ** 2 >= 8 * 48 ** 2
    monkeypatch.setitem(train.RECIPES, "newmodel", dict(train.RECIPES["srcnn"]))  # a model added without one
    with pytest.raises(ValueError, match="no paper recipe for newmodel"):
        train.recipe("newmodel", "paper")


def lr_curve(cfg_args, data, tmp_path, steps):
    cfg = parse(*cfg_args)
    trainer = train.Trainer(cfg, tmp_path)
    return [trainer.lr_factor(s) for s in range(steps)], trainer.steps_per_epoch


def test_warmup_then_cosine_decay(data, tmp_path):
    args = argv("srcnn", data, tmp_path / "r", "--epochs", "4", "--warmup", "3", "--min-lr", "0.1")
    spe = lr_curve(args, data, tmp_path, 1)[1]
    f, _ = lr_curve(args, data, tmp_path, 4 * spe + 2)
    total = 4 * spe
    assert f[:3] == pytest.approx([c * (1 + np.cos(np.pi * s / total)) / 2 * (s + 1) / 3 * 0.9 + (s + 1) / 3 * 0.1
                                   for s, c in zip(range(3), [1, 1, 1])])
    assert f[3] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 3 / total)))
    assert all(a >= b for a, b in zip(f[3:total], f[4:total + 1]))  # decays after the warm-up
    assert f[total] == pytest.approx(0.1) and f[-1] == pytest.approx(0.1)  # the floor, kept after the end


def test_several_datasets_at_once(data, more, tmp_path):
    big, small = more
    one = train.Trainer(parse(*argv("srcnn", data, tmp_path / "a")), tmp_path / "a")
    two = train.Trainer(parse(*argv("srcnn", data, tmp_path / "b"), "--data", f"{data},{big}"), tmp_path / "b")
    extra = train.Trainer(parse(*argv("srcnn", big, tmp_path / "c")), tmp_path / "c")
    assert len(two.data) == len(one.data) + len(extra.data) > len(one.data)


def test_rescale_trains_on_downscaled_copies_too(data, tmp_path):
    """--rescale 1,0.9,0.8 (scale augmentation) reaches the patch sampler: three sizes of every image, each cut into
    its own patches, so more patches per epoch where the stride grid sets the count; the default is the images as
    they are, and the factors travel with the run's configuration (what --resume rebuilds it from)."""
    plain = train.Trainer(parse(*argv("srcnn", data, tmp_path / "a")), tmp_path / "a")
    cfg = parse(*argv("srcnn", data, tmp_path / "b"), "--rescale", "1,0.9,0.8")
    aug = train.Trainer(cfg, tmp_path / "b")
    assert plain.data.rescale == (1.0,) and cfg.rescale == [1.0, 0.9, 0.8] and aug.data.rescale == (1.0, 0.9, 0.8)
    assert len(plain.data) < len(aug.data) < 3 * len(plain.data)
    assert train.Config(**train._jsonable(train.asdict(cfg))).rescale == [1.0, 0.9, 0.8]


@pytest.mark.parametrize("case", ["small", "empty"])
def test_a_dataset_without_usable_images_is_named(data, more, tmp_path, capsys, case):
    folder = more[1] if case == "small" else tmp_path / "empty"
    folder.mkdir(exist_ok=True)
    code, _, err = run_main(capsys, argv("srcnn", data, tmp_path / "r") + ["--data", f"{data},{folder}"])
    assert code == 2 and str(folder) in err
    assert ("smaller than the 20" in err) if case == "small" else ("no images" in err)
    assert str(data) + " " not in err  # the good set is not blamed


def test_init_from_another_architecture_or_scale_names_both(data, tmp_path, capsys):
    vdsr = save_model(tmp_path / "vdsr.npz", "vdsr", dict(depth=3, features=8), 2)
    code, _, err = run_main(capsys, argv("srcnn", data, tmp_path / "r", "--init", vdsr))
    assert code == 2 and "vdsr x2" in err and "srcnn x3" in err
    code, _, err = run_main(capsys, argv("srcnn", data, tmp_path / "r", "--init", vdsr, "--features", "16,4"))
    assert code == 2 and "features 16-4" in err
    edsr = save_model(tmp_path / "edsr.npz", "edsr", dict(scale=2, n_resblocks=1, n_feats=8), 2)
    code, _, err = run_main(capsys, argv("edsr", data, tmp_path / "r", "--init", edsr, "--scale", "4"))
    assert code == 2 and "edsr x2" in err and "edsr x4" in err and "--init-matching" in err
    assert not (tmp_path / "r" / "last.npz").exists()
    # SRCNN's weights work at any scale: another scale is a fine-tuning start, said so
    srcnn = save_model(tmp_path / "srcnn.npz", "srcnn", dict(features=(8, 4)), 2)
    code, out, err = run_main(capsys, argv("srcnn", data, tmp_path / "ok", "--init", srcnn, "--steps", "1"))
    assert code == 0, err
    assert "srcnn x2" in out and "srcnn x3" in out


def test_init_matching_loads_the_shared_parameters_of_another_scale(data, tmp_path, capsys):
    """EDSR x2 from x4 weights (--init-matching): every x2 parameter has an x4 twin of the same name and shape, so
    all are loaded and the x4-only second upsampling stage is dropped; from x2 to x4 that stage starts fresh."""
    x4 = save_model(tmp_path / "x4.npz", "edsr", dict(scale=4, n_resblocks=1, n_feats=8), 4)
    src = models.load(str(x4))[0].state_dict()
    x2 = train.Trainer(parse(*argv("edsr", data, tmp_path / "a", "--scale", "2", "--init", str(x4),
                                   "--init-matching")), tmp_path / "a")
    got = x2.model.state_dict()
    assert set(got) < set(src) and all(np.array_equal(got[k], src[k]) for k in got)
    assert f"loaded {len(got)} of {len(got)} parameter arrays" in x2.notes[0] and len(got) == 16
    x2_file = save_model(tmp_path / "x2.npz", "edsr", dict(scale=2, n_resblocks=1, n_feats=8), 2)
    names4 = set(models.build("edsr", scale=4, n_resblocks=1, n_feats=8).state_dict())
    up = train.Trainer(parse(*argv("edsr", data, tmp_path / "b", "--scale", "4", "--init", str(x2_file),
                                   "--init-matching")), tmp_path / "b")
    only4 = sorted(names4 - set(models.load(str(x2_file))[0].state_dict()))
    assert only4 == ["tail.0.2.bias", "tail.0.2.weight"] and all(k in up.notes[0] for k in only4)
    assert "loaded 16 of 18" in up.notes[0]
    # another architecture shares no parameter: still an error naming both
    vdsr = save_model(tmp_path / "vdsr.npz", "vdsr", dict(depth=3, features=8), 2)
    code, _, err = run_main(capsys, argv("edsr", data, tmp_path / "c", "--init", vdsr, "--init-matching"))
    assert code == 2 and "vdsr x2" in err and "edsr x2" in err and "same names and shapes" in err
    code, _, err = run_main(capsys, argv("edsr", data, tmp_path / "c", "--init-matching"))
    assert code == 2 and "give --init too" in err


def test_resume_with_another_model_or_scale_names_both(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_main(capsys, argv("srcnn", data, run, "--steps", "1"))[0] == 0
    for extra, asked in [(["vdsr"], "vdsr x3"), (["srcnn", "--scale", "2"], "srcnn x2")]:
        code, _, err = run_main(capsys, [*extra, "--resume", str(run / "last.npz")])
        assert code == 2 and "srcnn x3" in err and asked in err


def test_mid_epoch_saves_resume_exactly(data, tmp_path, capsys, monkeypatch):
    """--save-every writes last.npz inside epochs; a run killed after one of them and resumed from it equals the run
    that was never stopped (warm-up, cosine decay and norm clipping included)."""
    extra = ["--epochs", "2", "--warmup", "4", "--clip-norm", "0.01", "--save-every", "2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    kept = tmp_path / "kept.npz"
    real_save = checkpoint.save
    saved_at = []

    def save_and_keep(path, model_state, meta, optim_state=None, groups=None):
        out = real_save(path, model_state, meta, optim_state, groups)
        saved_at.append((meta["step"], meta["step_in_epoch"]))
        if meta["epoch"] == 1 and meta["step_in_epoch"] == 2:  # inside the second epoch
            shutil.copy(out, kept)
        return out

    monkeypatch.setattr(checkpoint, "save", save_and_keep)
    assert run_main(capsys, argv("srcnn", data, whole, *extra))[0] == 0
    monkeypatch.undo()
    spe = checkpoint.load(whole / "last.npz")["meta"]["step"] // 2
    assert spe >= 3 and (2, 2) in saved_at and (spe + 2, 2) in saved_at  # mid-epoch saves
    parts.mkdir()
    shutil.copy(kept, parts / "last.npz")
    code, _, err = run_main(capsys, ["--resume", str(parts / "last.npz")])
    assert code == 0, err
    assert without_time(read_history(parts)) == without_time(read_history(whole))
    assert_same_state(whole / "last.npz", parts / "last.npz")
    model, _ = models.load(parts / "best.npz")
    assert model.config["kernels"] == [9, 5, 5]
