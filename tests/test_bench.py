"""The benchmark suite in bench/ works: compare.py on tiny shapes writes its JSON, PNG and Markdown, and the
pytest-benchmark files pass as correctness tests (``--benchmark-disable``). The timings here mean nothing."""

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_compare():
    spec = importlib.util.spec_from_file_location("bench_compare", BENCH / "compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_result(train_ratios=(0.9, 0.7, 0.8), conv_pct=65.0, mem_ratio=1.1):
    rows = [dict(id="conv-vdsr", case="VDSR middle", kind="conv", **{"pass": "fwd+bwd"}, minisr_ms=10.0,
                 torch_ms=8.0, ratio=1.25, minisr_gflops=65.0, torch_gflops=80.0, minisr_pct_sgemm=conv_pct)]
    for cid, ratio in zip(("train-srcnn", "train-vdsr", "train-edsr"), train_ratios):
        rows.append(dict(id=cid, case=cid, kind="train", **{"pass": "step"}, minisr_ms=ratio, torch_ms=1.0,
                         ratio=ratio, minisr_gflops=1.0, torch_gflops=1.0, minisr_pct_sgemm=1.0,
                         memory=dict(minisr=dict(peak_mib=110.0), torch=dict(peak_mib=100.0), ratio=mem_ratio)))
    machine = dict(cpu="test CPU", usable_cpus=2, logical_cpus=2, mem_total_gib=8, minisr="0", torch="0",
                   numba_threads=2, numba_threading_layer="workqueue", blas_threads=2, torch_threads=2)
    settings = dict(threads=2, backend="numba", dtype="float32", repeats=10, warmup=2, pause=0.2,
                    infer_repeats=3, memory_steps=3, memory=True, tiny=False, quick=False)
    return dict(meta=dict(date="2000-01-01 00:00 UTC", command="python bench/compare.py", settings=settings,
                          machine=machine, sgemm_gflops=100.0, loadavg_before=[0.1, 0, 0], loadavg_after=[2, 0, 0]),
                rows=rows)


def test_targets():
    compare = load_compare()
    ok = compare.evaluate_targets(fake_result()["rows"])
    assert len(ok) == 3 + 1 + 1 + 3 and all(t["ok"] for t in ok)
    assert next(t for t in ok if "geometric" in t["target"])["value"] == pytest.approx((0.9 * 0.7 * 0.8) ** (1 / 3))
    bad = compare.evaluate_targets(fake_result((1.1, 0.9, 0.9), conv_pct=50.0, mem_ratio=1.3)["rows"])
    assert [t["ok"] for t in bad] == [False, True, True, False, False, False, False, False]


def test_markdown_replaces_placeholder(tmp_path):
    compare = load_compare()
    result = fake_result()
    result["targets"] = compare.evaluate_targets(result["rows"])
    md = tmp_path / "RESULTS.md"
    md.write_text(f"# Results\n\nHow they are made.\n\n{compare.PLACEHOLDER}\n")
    compare.write_markdown(result, md)
    compare.write_markdown(result, md)
    text = md.read_text()
    assert compare.PLACEHOLDER not in text and text.startswith("# Results\n\nHow they are made.\n\n## 2000-01-01")
    assert text.count("## 2000-01-01 00:00 UTC: test CPU, 2 threads, numba backend") == 2
    assert "| VDSR middle | fwd+bwd | 10.00 | 8.00 | 1.25 | 65.0 | 80.0 | 65 | - | - | - |" in text
    assert "- PASS: geometric mean of the 3 training-step ratios <= 0.8: 0.80" in text


@pytest.mark.slow
def test_compare_tiny_quick(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH / "compare.py"), "--tiny", "--quick", "--cases", "conv-vdsr,train-srcnn",
           "--json", str(out / "c.json"), "--plot", str(out / "c.png"), "--markdown", str(out / "R.md"),
           "--same-process"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"compare.py failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert "minisr GF/s" in res.stdout and "conv2d VDSR middle fwd+bwd >= 60% of sgemm rate" in res.stdout
    result = json.loads((out / "c.json").read_text())
    assert [(r["id"], r["pass"]) for r in result["rows"]] == [
        ("sgemm-square", "gemm"), ("sgemm-conv", "gemm"), ("conv-vdsr", "fwd"), ("conv-vdsr", "fwd+bwd"),
        ("train-srcnn", "step")]
    assert all(len(r["minisr_times_ms"]) == 2 and r["minisr_ms"] > 0 and r["torch_ms"] > 0 for r in result["rows"])
    train = result["rows"][-1]
    assert max(train["check"].values()) < 1e-4  # both libraries computed the same step
    for lib in ("minisr", "torch"):
        mem = train["memory"][lib]
        assert "error" not in mem, mem
        assert mem["hwm_reset"] and mem["peak_mib"] >= 0 and mem["baseline_mib"] > 0
    assert result["meta"]["machine"]["numba_threads"] >= 1 and result["meta"]["sgemm_gflops"] > 0
    assert (out / "c.png").stat().st_size > 1000
    md = (out / "R.md").read_text()
    assert "| case | pass | minisr ms |" in md and "| SRCNN 9-5-5 train step | step |" in md
    assert "both libraries in one process" in md
    assert sorted(p.name for p in out.iterdir()) == ["R.md", "c.json", "c.png"]
    assert list(tmp_path.iterdir()) == [out]
    # re-rendering an earlier JSON measures nothing
    res = subprocess.run([sys.executable, str(BENCH / "compare.py"), "--from-json", str(out / "c.json"),
                          "--plot", "", "--markdown", str(tmp_path / "again.md")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "| SRCNN 9-5-5 train step | step |" in (tmp_path / "again.md").read_text()


@pytest.mark.slow
def test_compare_separate_processes(tmp_path):
    """The default mode: each library's case in its own child processes, alternating over rounds."""
    pytest.importorskip("torch")
    js, md = tmp_path / "c.json", tmp_path / "R.md"
    cmd = [sys.executable, str(BENCH / "compare.py"), "--tiny", "--quick", "--rounds", "2", "--repeats", "2",
           "--cases", "train-srcnn", "--no-memory", "--json", str(js), "--plot", "", "--markdown", str(md), "--no-jax"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"compare.py failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    result = json.loads(js.read_text())
    assert result["meta"]["settings"]["mode"] == "separate" and result["meta"]["settings"]["rounds"] == 2
    (row,) = result["rows"]
    assert row["id"] == "train-srcnn" and max(row["check"].values()) < 1e-4
    for lib in ("minisr", "torch"):
        assert len(row[f"{lib}_times_ms"]) == 4 and len(row[f"{lib}_round_ms"]) == 2
        assert row[f"{lib}_ms"] == pytest.approx(sum(row[f"{lib}_round_ms"]) / 2)  # (the median of two)
    assert "each library in its own processes (2 rounds, alternating)" in md.read_text()
    assert "jax_ms" not in row and "| jax ms |" not in md.read_text()  # (--no-jax)


@pytest.mark.slow
def test_compare_jax_column(tmp_path):
    """Where JAX is importable, a third library: its own child per round, the same step, checked against minisr."""
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    js, md = tmp_path / "c.json", tmp_path / "R.md"
    cmd = [sys.executable, str(BENCH / "compare.py"), "--tiny", "--quick", "--rounds", "2", "--repeats", "2",
           "--cases", "train-srcnn", "--no-memory", "--json", str(js), "--plot", "", "--markdown", str(md)]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"compare.py failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    result = json.loads(js.read_text())
    assert result["meta"]["settings"]["jax"] and result["meta"]["machine"]["jax"]
    (row,) = result["rows"]
    assert len(row["jax_times_ms"]) == 4 and len(row["jax_round_ms"]) == 2 and row["jax_ms"] > 0
    assert row["jax_ratio"] == pytest.approx(row["minisr_ms"] / row["jax_ms"])
    assert row["jax_check"]["output"] < 1e-4  # JAX with minisr's weights computes minisr's output
    assert "| jax ms | minisr/jax |" in md.read_text() and "JAX (jit, XLA CPU)" in md.read_text()


def test_time_child_imports_only_its_library(tmp_path):
    """A PyTorch timing child never imports minisr or Numba (minisr sets OpenMP's wait policy on import)."""
    pytest.importorskip("torch")
    argv = ["--time-child", "conv-vdsr", "torch", "--tiny", "--repeats", "1", "--warmup", "0"]
    code = (f"import runpy, sys; sys.argv = {[str(BENCH / 'compare.py')] + argv!r}; "
            "runpy.run_path(sys.argv[0], run_name='__main__'); "
            "print('IMPORTED', 'minisr' in sys.modules, 'numba' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert json.loads(lines[-2])["times"].keys() == {"fwd", "fwd+bwd"}
    assert lines[-1] == "IMPORTED False False"


@pytest.mark.slow
def test_pytest_benchmarks_pass_as_tests():
    """Every kernel, op and model benchmark once, on tiny shapes, with its check against PyTorch."""
    pytest.importorskip("torch")
    pytest.importorskip("pytest_benchmark")
    cmd = [sys.executable, "-m", "pytest", str(BENCH), "--benchmark-disable", "--bench-tiny", "-q",
           "-p", "no:cacheprovider"]
    res = subprocess.run(cmd, cwd=BENCH.parent, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"pytest bench/ failed:\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    assert " passed" in res.stdout and "failed" not in res.stdout


def test_winograd_ab_error_table_runs():
    """bench/winograd_ab.py on tiny shapes: the float32 error table of Winograd and direct conv vs float64."""
    res = subprocess.run([sys.executable, str(BENCH / "winograd_ab.py"), "--tiny", "--errors-only"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in res.stdout.splitlines() if line.startswith("| VDSR middle |")]
    assert [r[1].strip() for r in rows] == ["output", "input grad", "weight grad"]
    assert all(0 <= float(v) < 1e-4 for r in rows for v in r[2:])  # float32 rounding, no more


def test_layer_times_tiny(tmp_path):
    """bench/layer_times.py on tiny shapes: every conv of VDSR-20 recorded from PyTorch and run by both libraries
    (each in its own process) on the same arrays, with the same outputs."""
    pytest.importorskip("torch")
    out = tmp_path / "l.json"
    res = subprocess.run([sys.executable, str(BENCH / "layer_times.py"), "--case", "train-vdsr", "--tiny",
                          "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["layers"]
    assert [r["weight"][:2] for r in rows] == [[64, 1]] + [[64, 64]] * 18 + [[1, 64]]
    for r in rows:
        for lib in ("minisr", "torch"):
            assert r[lib]["fwd"] > 0 and r[lib]["fwd_bwd"] > 0
            assert r[lib]["err"] < 1e-5, (r["name"], lib, r[lib]["err"])
    assert "ratio minisr/torch: forward" in res.stdout
    bad = subprocess.run([sys.executable, str(BENCH / "layer_times.py"), "--case", "nope"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "--case 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_compare_keep_heap_sets_the_torch_childs_malloc_only(monkeypatch):
    """--keep-heap: PyTorch's (and JAX's) timing children run with glibc's thresholds raised, minisr's as it is; the
    Markdown says so; it is refused with --same-process."""
    mod = load_compare()
    seen = {}

    class Done:
        returncode, stderr = 0, ""
        stdout = json.dumps(dict(times={"fwd": [0.001]}))

    def fake_run(cmd, **kw):
        seen[cmd[cmd.index("--time-child") + 2]] = kw.get("env")
        return Done()

    monkeypatch.setattr(mod, "subprocess", types.SimpleNamespace(run=fake_run))  # (this module's subprocess stays)
    args = mod.argparse.Namespace(threads=1, backend="numba", dtype="float32", repeats=1, warmup=0, infer_repeats=1,
                                  memory_steps=1, tiny=True, keep_heap=True)
    for lib in ("minisr", "torch", "jax"):
        assert mod.run_child("conv-vdsr", lib, args) == {"fwd": [0.001]}
    assert seen["minisr"] is None
    for lib in ("torch", "jax"):
        assert {k: seen[lib][k] for k in mod.KEEP_HEAP} == mod.KEEP_HEAP
    args.keep_heap = False
    mod.run_child("conv-vdsr", "torch", args)
    assert seen["torch"] is None
    meta = fake_result()["meta"]
    meta["settings"].update(mode="separate", rounds=3, keep_heap=True)
    assert "--keep-heap" in mod.settings_line(meta)
    res = subprocess.run([sys.executable, str(BENCH / "compare.py"), "--keep-heap", "--same-process", "--tiny"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--keep-heap" in res.stderr and "Traceback" not in res.stderr
