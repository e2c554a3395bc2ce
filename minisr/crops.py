"""Side-by-side crops for the model card: HR, bicubic and each model on the same benchmark crops, PSNR/SSIM in titles.

    python -m minisr.crops [--scale 4] [--models bicubic,srresnet-x4,srgan-x4,...] [--crops Set5:butterfly,...]
                           [--size 96] [--out crops-x4.png] [--json crops-x4.json] [--data-root DIR]

``--models`` takes ``bicubic``, shipped names and checkpoint paths, each optionally labelled ``LABEL=SPEC``
(``SRGAN=runs/srgan/last.npz``); by default bicubic and every shipped model of that scale (SRCNN, EDSR, SRResNet,
SRGAN, ... when present). ``--crops`` names benchmark images as ``DATASET:IMAGE`` or ``DATASET:IMAGE@Y,X`` (the crop's
top-left corner in HR pixels); without ``@`` the crop is the ``--size`` square of the image with the most detail (the
largest sum of HR gradient magnitudes on a grid), the part where the models differ. The LR input is the benchmark's
(``LR_bicubic/X<s>``, else MATLAB bicubic), as in :mod:`minisr.eval`.

Each model runs on a window of the LR image around the crop with ``--context`` LR pixels on each side (default 64:
more than the receptive radius of every model here, 43 for SRResNet-16, 37 for EDSR x4), so the crop is what the
whole image would give, in a fraction of the time. PSNR and SSIM are on the crop's Y channel (no border: the crop
lies inside the image). The first column shows the whole HR image with the crop outlined. ``--json``: every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import cli_checks
from .data import DatasetNotFoundError, load_benchmark
from .metrics import psnr, ssim

DEFAULT_CROPS = "Set5:butterfly,Set14:baboon,Set14:comic"
# the default columns' order (EDSR under either name: issue 13 ships "edsr-baseline-x2/x4")
ARCHITECTURES = ("srcnn", "fsrcnn", "espcn", "vdsr", "edsr", "edsr-baseline", "srresnet", "srgan")


def default_models(scale: int) -> list[str]:
    """bicubic, then the shipped models of ``scale``, in ARCHITECTURES order."""
    from .models import shipped

    have = shipped()
    return ["bicubic"] + [f"{a}-x{scale}" for a in ARCHITECTURES if f"{a}-x{scale}" in have]


def parse_models(text: str | None, scale: int) -> list[tuple[str, str]]:
    """``"bicubic,SRGAN=run/last.npz"`` -> ``[("bicubic", "bicubic"), ("SRGAN", "run/last.npz")]``."""
    specs = [s.strip() for s in text.split(",") if s.strip()] if text else default_models(scale)
    out = []
    for s in specs:
        label, _, spec = s.rpartition("=")
        out.append((label or (Path(spec).parent.name + "/" + Path(spec).stem if spec.endswith(".npz") else spec),
                    spec))
    return out


def parse_crops(text: str) -> list[tuple[str, str, tuple[int, int] | None]]:
    """``"Set5:butterfly@10,20,Set14:baboon"`` -> ``[("Set5", "butterfly", (10, 20)), ("Set14", "baboon", None)]``
    (a comma after ``@Y`` belongs to the position)."""
    out, parts = [], text.split(",")
    i = 0
    while i < len(parts):
        part = parts[i].strip()
        i += 1
        if not part:
            continue
        if ":" not in part:
            raise ValueError(f"--crops {part!r}: write DATASET:IMAGE or DATASET:IMAGE@Y,X (e.g. Set5:butterfly)")
        dataset, image = part.split(":", 1)
        pos = None
        if "@" in image:
            image, y = image.split("@", 1)
            if i >= len(parts):
                raise ValueError(f"--crops {part!r}: the position needs Y,X")
            try:
                pos = (int(y), int(parts[i]))
            except ValueError:
                raise ValueError(f"--crops {part},{parts[i]}: the position Y,X must be two integers") from None
            i += 1
        out.append((dataset, image, pos))
    return out


def detailed_window(hr: np.ndarray, size: int, step: int | None = None) -> tuple[int, int]:
    """Top-left (y, x) of the ``size`` square of ``hr`` with the largest sum of gradient magnitudes (on Y)."""
    from .data import rgb_to_y

    g = rgb_to_y(hr) if hr.ndim == 3 else hr.astype(np.float64)
    mag = np.zeros_like(g)
    mag[:-1] += np.abs(np.diff(g, axis=0))
    mag[:, :-1] += np.abs(np.diff(g, axis=1))
    H, W = g.shape
    if size > min(H, W):
        raise ValueError(f"crop size {size} exceeds the image ({H}x{W})")
    c = np.pad(mag.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = step or max(size // 4, 1)
    best, where = -1.0, (0, 0)
    for y in range(0, H - size + 1, step):
        for x in range(0, W - size + 1, step):
            s = c[y + size, x + size] - c[y, x + size] - c[y + size, x] + c[y, x]
            if s > best:
                best, where = s, (y, x)
    return where


def crop_sr(upscaler, lr: np.ndarray, scale: int, y: int, x: int, size: int, context: int) -> np.ndarray:
    """The ``size`` HR crop at (y, x) of ``upscaler(lr)``, computed from an LR window with ``context`` pixels around
    the crop (clipped to the image)."""
    h, w = lr.shape[:2]
    y0, x0 = max(y // scale - context, 0), max(x // scale - context, 0)
    y1, x1 = min(-(-(y + size) // scale) + context, h), min(-(-(x + size) // scale) + context, w)
    sr = np.asarray(upscaler(np.ascontiguousarray(lr[y0:y1, x0:x1])))
    oy, ox = y - y0 * scale, x - x0 * scale
    return sr[oy:oy + size, ox:ox + size]


def compare(models, crops, scale: int, size: int = 96, context: int = 64, data_root=None, device: str = "cpu",
            progress: bool = False):
    """``{"scale", "size", "crops": [{"dataset", "image", "y", "x", "hr", "lr", "results": [{"label", "spec",
    "sr", "psnr", "ssim"}]}]}`` (images as uint8 arrays)."""
    from tqdm import tqdm

    from .upscalers import make_upscaler

    ups = [(label, spec, make_upscaler(spec, scale, device=device)) for label, spec in models]
    rows, cache = [], {}
    for dataset, image, pos in crops:
        if dataset not in cache:
            cache[dataset] = {b.name: b for b in load_benchmark(dataset, scale, data_root)}
        if image not in cache[dataset]:
            raise ValueError(f"--crops {dataset}:{image}: no such image (the images of {dataset}: "
                             f"{', '.join(cache[dataset])})")
        hr, lr = cache[dataset][image].hr, cache[dataset][image].lr
        y, x = pos if pos is not None else detailed_window(hr, size)
        if not (0 <= y <= hr.shape[0] - size and 0 <= x <= hr.shape[1] - size):
            raise ValueError(f"--crops {dataset}:{image}@{y},{x}: a {size}x{size} crop there leaves the "
                             f"{hr.shape[0]}x{hr.shape[1]} image")
        ref = hr[y:y + size, x:x + size]
        results = []
        for label, spec, up in tqdm(ups, desc=f"{dataset}/{image}", disable=not progress, leave=False):
            sr = crop_sr(up, lr, scale, y, x, size, context)
            results.append(dict(label=label, spec=spec, sr=sr, psnr=psnr(sr, ref), ssim=ssim(sr, ref)))
        rows.append(dict(dataset=dataset, image=image, y=int(y), x=int(x), hr=hr, lr=lr, results=results))
    return {"scale": scale, "size": size, "crops": rows}


def plot(result, path) -> Path:
    """The figure: one row per crop; the whole HR image (crop outlined), the HR crop, then each model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .atomic import save_figure

    rows, size = result["crops"], result["size"]
    ncol = 2 + max(len(r["results"]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.3 * ncol, 2.9 * len(rows)), squeeze=False)
    for ax_row, r in zip(axes, rows):
        hr = r["hr"]
        cmap = "gray" if hr.ndim == 2 else None
        panels = [(hr, f"{r['dataset']}/{r['image']}"), (hr[r["y"]:r["y"] + size, r["x"]:r["x"] + size], "HR")]
        panels += [(m["sr"], f"{m['label']}\n{m['psnr']:.2f} dB / {m['ssim']:.4f}") for m in r["results"]]
        for ax, (img, title) in zip(ax_row, panels):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        ax_row[0].add_patch(Rectangle((r["x"], r["y"]), size, size, fill=False, color="red", lw=1.5))
        for ax in ax_row[len(panels):]:
            ax.axis("off")
    fig.suptitle(f"x{result['scale']}: {size}x{size} HR crops; PSNR / SSIM of the crop (Y channel)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(path), close=True, dpi=100)


def to_json(result) -> dict:
    return {"scale": result["scale"], "size": result["size"],
            "crops": [{k: r[k] for k in ("dataset", "image", "y", "x")} |
                      {"results": [{k: m[k] for k in ("label", "spec", "psnr", "ssim")} for m in r["results"]]}
                      for r in result["crops"]]}


def _write_json(path: Path, obj) -> None:
    """``obj`` as JSON, written whole (a temporary name beside ``path``, renamed; removed if that fails)."""
    from .atomic import create_beside

    fd, tmp = create_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minisr.crops", description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--models", help="comma-separated bicubic / shipped names / checkpoint paths, each optionally "
                                    "LABEL=SPEC (default: bicubic and every shipped model of --scale)")
    p.add_argument("--crops", default=DEFAULT_CROPS,
                   help=f"DATASET:IMAGE[@Y,X] joined by commas (default {DEFAULT_CROPS}; no @: the most detailed "
                        "square)")
    p.add_argument("--size", type=int, default=96, help="crop side in HR pixels (default 96)")
    p.add_argument("--context", type=int, default=64, help="LR pixels around the crop that each model sees (64)")
    p.add_argument("--data-root", help="where dataset names resolve (default $MINISR_DATA)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="PNG to write (default crops-x<scale>.png)")
    p.add_argument("--json", help="also write the numbers here")
    return cli_checks.validated(p, cli_checks.CROPS)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out or f"crops-x{args.scale}.png")
    try:
        models = parse_models(args.models, args.scale)
        result = compare(models, parse_crops(args.crops), args.scale, args.size, args.context, args.data_root,
                         args.device, progress=True)
    except (ValueError, KeyError, FileNotFoundError, DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    target = out
    try:
        plot(result, out)
        if args.json:
            target = Path(args.json)
            _write_json(target, to_json(result))
    except OSError as e:  # a folder that cannot be created, a full disk: nothing partial is left
        print(f"error: could not write {target}: {e.strerror or e}", file=sys.stderr)
        return 1
    for r in result["crops"]:
        scores = "  ".join(f"{m['label']} {m['psnr']:.2f}/{m['ssim']:.4f}" for m in r["results"])
        print(f"{r['dataset']}/{r['image']} @{r['y']},{r['x']}: {scores}")
    print(f"wrote {out}" + (f" and {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
