"""Every example in examples/ runs with its --tiny flag (seconds), exits 0, prints its table and writes its PNG."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CASES = {  # script -> (PNG it writes, text its table prints)
    "01_conv_backprop_by_hand.py": ("01_conv_backprop_by_hand.png", "the three computations agree"),
    "02_train_srcnn.py": ("02_train_srcnn.png", "bicubic"),
    "03_vdsr_depth.py": ("03_vdsr_depth.png", "vs bicubic"),
    "04_smoothness_prior.py": ("04_smoothness_prior.png", "MSE + 1e-06 S"),
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
