"""The paper table (``python -m minisr.eval --table`` / ``python -m minisr.report``)."""

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from test_upscale import save_model, smooth_image

from minisr import eval as sr_eval
from minisr import report
from minisr.data import write_image
from minisr.upscalers import SelfEnsemble, bicubic_upscaler, make_upscaler


@pytest.fixture
def root(tmp_path, rng):
    """A data root with two benchmarks (Set5 in the HR/ layout, Mini as plain images) and a training set."""
    r = tmp_path / "data"
    for folder, names in [(r / "Set5" / "HR", ["a", "b"]), (r / "Mini", ["c"]), (r / "T91", ["t"])]:
        folder.mkdir(parents=True)
        for n in names:
            write_image(folder / f"{n}.png", smooth_image(rng, 26, 30))
    (r / "empty").mkdir()
    return r


def test_table_scores_every_model_on_every_benchmark(root, tmp_path, capsys):
    x2 = save_model(tmp_path / "srcnn-a.npz", "srcnn", dict(features=(8, 4)), 2, scales=[2])
    x3 = save_model(tmp_path / "vdsr-b.npz", "vdsr", dict(depth=3, features=8), 3, scales=[3, 4])
    out = tmp_path / "table"
    args = ["--data-root", str(root), "--models", f"{x2},{x3}", "--out", str(out), "--ensemble"]
    assert report.main(args) == 0
    md = capsys.readouterr().out
    assert (out / "table.md").read_text() == md
    assert iio.imread(out / "table.png").ndim == 3
    rows = json.loads((out / "results.json").read_text())["results"]
    got = {(r["model"], r["dataset"], r["scale"]) for r in rows}
    assert {d for _, d, _ in got} == {"Set5", "Mini"}  # the training set and the empty folder are skipped
    for d in ("Set5", "Mini"):
        assert {(m, s) for m, dd, s in got if dd == d} == {
            ("bicubic", 2), ("bicubic", 3), ("bicubic", 4), ("srcnn-a", 2), ("srcnn-a+", 2),
            ("vdsr-b", 3), ("vdsr-b", 4), ("vdsr-b+", 3), ("vdsr-b+", 4)}
    by = {(r["model"], r["dataset"], r["scale"]): r for r in rows}
    # the numbers are minisr.eval's, per image
    want = sr_eval.evaluate(make_upscaler(str(x3), 4), "Set5", 4, data_root=root)
    assert by["vdsr-b", "Set5", 4]["images"] == want["images"]
    assert by["vdsr-b", "Set5", 4]["psnr"] == pytest.approx(want["mean"]["psnr"])
    plus = sr_eval.evaluate(SelfEnsemble(make_upscaler(str(x2), 2)), "Mini", 2, data_root=root)
    assert by["srcnn-a+", "Mini", 2]["psnr"] == pytest.approx(plus["mean"]["psnr"])
    bic = sr_eval.evaluate(bicubic_upscaler(3), "Mini", 3, data_root=root)
    assert by["bicubic", "Mini", 3]["psnr"] == pytest.approx(bic["mean"]["psnr"])
    # published figures beside ours, with the citation; none for a benchmark the papers do not list
    assert by["srcnn-a", "Set5", 2]["published"] == {"psnr": 36.66, "ssim": 0.9542}
    assert by["vdsr-b", "Set5", 3]["published"]["psnr"] == 33.66 and by["vdsr-b", "Mini", 3]["published"] is None
    line = next(ln for ln in md.splitlines() if ln.startswith("| srcnn-a | x2") and "36.66" in ln)
    assert f"{by['srcnn-a', 'Set5', 2]['psnr'] - 36.66:+.2f} dB" in line
    assert "Dong et al." in md and "Kim et al." in md
    assert md.index("**Set5**") < md.index("**Mini**")


def test_eval_table_is_the_same_command(root, tmp_path, capsys):
    ckpt = save_model(tmp_path / "m.npz", "srcnn", dict(features=(8, 4)), 2)
    a, b = tmp_path / "a", tmp_path / "b"
    assert report.main(["--data-root", str(root), "--models", str(ckpt), "--out", str(a)]) == 0
    assert sr_eval.main(["--table", "--data-root", str(root), "--models", str(ckpt), "--out", str(b)]) == 0
    assert (a / "table.md").read_text() == (b / "table.md").read_text()
    assert sr_eval.main(["--table", "--data-root", str(root), "--models", str(ckpt), "--out", str(b),
                         "--datasets", "Mini"]) == 0
    assert {r["dataset"] for r in json.loads((b / "results.json").read_text())["results"]} == {"Mini"}


def test_table_without_a_data_root_says_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINISR_DATA", raising=False)
    assert sr_eval.main(["--table", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and "$MINISR_DATA is not set" in err
    monkeypatch.setenv("MINISR_DATA", str(tmp_path / "nowhere"))
    assert sr_eval.main(["--table"]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    (tmp_path / "only-train" / "T91").mkdir(parents=True)
    assert report.main(["--data-root", str(tmp_path / "only-train")]) == 2
    assert "no benchmark folders" in capsys.readouterr().err


def test_eval_without_table_still_needs_model_dataset_scale(capsys):
    with pytest.raises(SystemExit) as e:
        sr_eval.main(["--model", "bicubic"])
    assert e.value.code == 2 and "--dataset, --scale required" in capsys.readouterr().err


def test_checkpoints_with_the_same_file_name_keep_their_folder(tmp_path):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        save_model(tmp_path / run / "best.npz", "srcnn", dict(features=(8, 4)), 2)
    names = report.shipped_models([str(tmp_path / "a" / "best.npz"), str(tmp_path / "b" / "best.npz")])
    assert list(names) == ["a/best", "b/best"]


def test_papers_and_shipped_models():
    assert report.paper_of({"model": "edsr", "config": {"n_resblocks": 16, "n_feats": 64}}) == "edsr-baseline"
    assert report.paper_of({"model": "edsr", "config": {"n_resblocks": 32, "n_feats": 256}}) is None
    assert report.paper_of({"model": "srcnn"}) == "srcnn"
    assert report.paper_of({"model": "srgan", "config": {"n_blocks": 16, "n_feats": 64}}) == "srgan"
    assert report.paper_of({"model": "srresnet", "config": {"n_blocks": 8, "n_feats": 64}}) is None
    for (paper, _, _), (p, s) in report.PUBLISHED.items():
        assert paper in report.CITATIONS and 20 < p < 40 and (s is None or 0.6 < s < 1)
    # every shipped model has a published row on Set5 at each of its scales
    for name, meta in report.shipped_models().items():
        for s in report.model_scales(meta):
            assert (report.paper_of(meta), "Set5", s) in report.PUBLISHED, name
    assert np.isclose(report.PUBLISHED["srcnn", "Set5", 3][0], 32.75)


# -------------------------------------------------------------------------------- the committed table is current
TABLE = Path(__file__).resolve().parents[1] / "docs" / "paper-table" / "results.json"


def _committed_set5_rows():
    rows = json.loads(TABLE.read_text())["results"] if TABLE.exists() else []
    return {(r["model"], r["scale"]): r for r in rows if r["dataset"] == "Set5" and not r["ensemble"]}


@pytest.mark.parametrize("name", sorted(report.shipped_models()) or ["none"])
def test_committed_table_matches_the_shipped_weights_on_set5(data_root, name):
    """docs/paper-table (the model card's numbers) lists every shipped model, and its Set5 scores are what minisr.eval
    gives for the weights in minisr/weights now: a weight file replaced without regenerating the table fails here."""
    if name == "none":
        pytest.skip("no shipped weights (minisr/weights/*.npz)")
    meta, rows = report.shipped_models()[name], _committed_set5_rows()
    for scale in report.model_scales(meta):
        assert (name, scale) in rows, f"{name} x{scale} is shipped but not in {TABLE}: run minisr.eval --table"
        now = sr_eval.evaluate(make_upscaler(name, scale), "Set5", scale, data_root=data_root)["mean"]
        assert now["psnr"] == pytest.approx(rows[name, scale]["psnr"], abs=0.01), (name, scale)
        assert now["ssim"] == pytest.approx(rows[name, scale]["ssim"], abs=1e-4), (name, scale)
