"""Peak memory (RSS) of ``python -m minisr.upscale`` on large images, with and without ``--max-memory``.

    python bench/upscale_memory.py --case edsr-4k --max-memory 1G      # EDSR-baseline x2 on a 3840x2160 RGB image
    python bench/upscale_memory.py --case vdsr-12mp --max-memory 1G    # VDSR x2 on a 4000x3000 (12 MP) photo
    python bench/upscale_memory.py --case small --max-memory 64M       # seconds: what tests/ runs
    ... --markdown bench/RESULTS.md                                   # also append the result as a table row

EDSR and VDSR ship no weights: the models are built with random weights (``models.build``, seed 0) and saved as a
checkpoint, which gives the same memory and time as trained weights. The image is synthetic (smooth colour
gradients plus noise), written as a PNG. The upscaler runs as the CLI in a child process; its peak RSS is the
kernel's high-water mark (``VmHWM`` in /proc/PID/status, sampled every 0.5 s into a JSON log so that a run stopped
early still reports its peak so far, and the child's ``ru_maxrss`` when it ends). A second child upscales an 8x8
image with the same model: its peak is the fixed part (Python, NumPy, Numba, the model), so peak - fixed is what
the image costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {  # name: (model, config, scale, (width, height), channels)
    "edsr-4k": ("edsr", dict(scale=2, n_resblocks=16, n_feats=64, res_scale=1.0), 2, (3840, 2160), 3),
    "vdsr-12mp": ("vdsr", dict(depth=20, features=64), 2, (4000, 3000), 3),
    "vdsr-2mp": ("vdsr", dict(depth=20, features=64), 2, (1600, 1200), 3),  # 1/6 of the pixels: 6x less time
    "small": ("edsr", dict(scale=2, n_resblocks=2, n_feats=64, res_scale=1.0), 2, (320, 240), 3),
}


def make_checkpoint(case: str, folder: Path) -> Path:
    from minisr import checkpoint, models
    from minisr.random import manual_seed

    name, cfg, scale, _, _ = CASES[case]
    manual_seed(0)
    model = models.build(name, **cfg)
    meta = dict(model=name, config=model.config, scale=scale, scales=[scale])
    return checkpoint.save(folder / f"{case}.npz", model.state_dict(), meta)


def make_image(size, channels: int, path: Path) -> Path:
    """A smooth colour image with noise (not constant: PNG would compress it to nothing, and nothing else cares)."""
    from minisr.data import write_image

    w, h = size
    rng = np.random.default_rng(0)
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    img = np.empty((h, w, channels), np.uint8)
    for c in range(channels):
        band = 90 + 80 * np.sin(6.0 * xx * (c + 1) + 4.0 * yy) + rng.normal(0, 12, (h, w)).astype(np.float32)
        img[..., c] = np.clip(band, 0, 255)
    return write_image(path, img if channels == 3 else img[..., 0], overwrite=True)


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_upscale(image: Path, ckpt: Path, out: Path, extra: list[str], log: Path | None = None) -> dict:
    """Run the CLI in a child; its peak RSS (bytes), wall time, exit code and stderr."""
    cmd = [sys.executable, "-m", "minisr.upscale", str(image), "-o", str(out), "--model", str(ckpt), "--overwrite",
           *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    peak = 0
    while p.poll() is None:
        peak = max(peak, _hwm(p.pid))
        if log is not None:
            log.write_text(json.dumps({"running": True, "peak_rss": peak, "seconds": time.perf_counter() - t0,
                                       "command": " ".join(cmd)}))
        time.sleep(0.5)
    stdout, stderr = p.communicate()
    seconds = time.perf_counter() - t0
    try:
        import resource

        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)  # largest child so far
    except ImportError:
        pass
    return dict(peak_rss=peak, seconds=seconds, code=p.returncode, stderr=stderr.strip()[-2000:], command=cmd)


def measure(case: str, max_memory: str | None = None, tile: int | None = None, workdir: Path | None = None,
            log: Path | None = None) -> dict:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="minisr-mem-"))
    workdir.mkdir(parents=True, exist_ok=True)
    name, cfg, scale, size, channels = CASES[case]
    ckpt = make_checkpoint(case, workdir)
    image = make_image(size, channels, workdir / f"{case}.png")
    tiny = make_image((8, 8), channels, workdir / "tiny.png")
    extra = (["--max-memory", max_memory] if max_memory else []) + (["--tile", str(tile)] if tile else [])
    fixed = run_upscale(tiny, ckpt, workdir / "tiny_x2.png", extra)  # the small child first: RUSAGE_CHILDREN
    big = run_upscale(image, ckpt, workdir / f"{case}_x{scale}.png", extra, log=log)
    w, h = size
    return dict(case=case, model=name, config=cfg, scale=scale, size=f"{w}x{h}", megapixels=w * h / 1e6,
                max_memory=max_memory, tile=tile, peak_rss_mb=big["peak_rss"] / 2 ** 20,
                fixed_rss_mb=fixed["peak_rss"] / 2 ** 20, seconds=big["seconds"], code=big["code"],
                tile_note=next((ln for ln in big["stderr"].splitlines() if "tiles of" in ln), ""),
                stderr=big["stderr"] if big["code"] else "",
                command="python bench/upscale_memory.py --case " + case
                        + (f" --max-memory {max_memory}" if max_memory else "") + (f" --tile {tile}" if tile else ""))


def markdown_row(r: dict) -> str:
    budget = r["max_memory"] or (f"--tile {r['tile']}" if r["tile"] else "default (--tile 192)")
    return (f"| {r['case']} ({r['model']} x{r['scale']}, {r['size']}) | {budget} | {r['tile_note'] or '-'} | "
            f"{r['peak_rss_mb']:.0f} MiB | {r['fixed_rss_mb']:.0f} MiB | {r['seconds']:.0f} s | `{r['command']}` |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=sorted(CASES), default="small")
    p.add_argument("--max-memory", help="passed to minisr.upscale (e.g. 1G)")
    p.add_argument("--tile", type=int, help="passed to minisr.upscale instead of --max-memory")
    p.add_argument("--workdir", help="where the checkpoint, image and output go (default: a temporary folder)")
    p.add_argument("--log", help="JSON file updated every 0.5 s with the peak so far")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--markdown", help="append the result as a table row to this Markdown file")
    args = p.parse_args(argv)
    r = measure(args.case, args.max_memory, args.tile, args.workdir, Path(args.log) if args.log else None)
    r["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(json.dumps(r, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(markdown_row(r) + "\n")
    return 0 if r["code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
