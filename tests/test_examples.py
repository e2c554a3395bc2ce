"""Every example in examples/ runs with its --tiny flag (seconds), exits 0, prints its table and writes its PNG."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CASES = {  # script -> (PNG it writes, text its table prints)
    "01_conv_backprop_by_hand.py": ("01_conv_backprop_by_hand.png", "the three computations agree"),
    "02_train_srcnn.py": ("02_train_srcnn.png", "bicubic"),
    "03_vdsr_depth.py": ("03_vdsr_depth.png", "vs bicubic"),
    "04_smoothness_prior.py": ("04_smoothness_prior.png", "of the MSE at the end"),
    "05_residual_vs_plain.py": ("05_residual_vs_plain.png", "first layer / last layer"),
    "06_backends.py": ("06_backends.png", "max|param diff|"),
}


def test_every_example_is_tested():
    scripts = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert scripts == sorted(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs_tiny(script, tmp_path):
    png, text = CASES[script]
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(EXAMPLES / script), "--tiny", "--out", str(out)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{script} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert text in res.stdout
    assert (out / png).is_file() and (out / png).stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == [png]  # nothing else written, and nothing outside --out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_loss_smoothing_has_no_cliff():
    """The loss curves' smoothing is one rule at every step (a Gaussian-weighted centred mean): a large first loss
    fades out gradually, with no jump where a running window would drop it."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        from _common import smooth
    finally:
        sys.path.remove(str(EXAMPLES))
    values = np.array([10.0] + [1.0] * 40)
    s = smooth(values, sigma=3.0)
    assert len(s) == len(values)
    drops = -np.diff(s)
    assert np.all(drops > -1e-12) and np.all(np.diff(drops) < 1e-12)  # falling, ever more slowly: no cliff
    t = np.arange(len(values))
    w = np.exp(-0.5 * ((t[:, None] - t[None, :]) / 3.0) ** 2)
    np.testing.assert_allclose(s, (w @ values) / w.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(smooth(np.full(7, 3.0)), 3.0)  # a constant stays put
    ramp = np.arange(40.0)
    np.testing.assert_allclose(smooth(ramp)[15:25], ramp[15:25], atol=1e-3)  # centred: no lag behind a trend
