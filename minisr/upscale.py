"""``python -m minisr.upscale IN... -o OUT --model NAME|CKPT [--scale S] [--compare HR]``: super-resolve images.

IN are image files or folders; OUT is a folder (or a file name for a single input). Inputs are never overwritten, and
existing outputs only with ``--overwrite``. ``--compare HR`` also writes ``<name>_compare.png``: bicubic | SR | HR
crops side by side with their PSNR (Y, border = scale). ``--ensemble``: the x8 self-ensemble (EDSR's "+").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import cli_checks
from .data import IMAGE_EXTENSIONS, ImageReadError, imresize, list_images, read_image, write_image
from .metrics import psnr
from .upscalers import make_upscaler


def _inputs(paths) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += list_images(p)
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    if not files:
        raise FileNotFoundError(f"no images in {', '.join(map(str, paths))}")
    return files


def _outputs(files: list[Path], out: Path, scale: int) -> list[Path]:
    if out.suffix.lower() in IMAGE_EXTENSIONS and not out.is_dir():
        if len(files) > 1:
            raise ValueError(f"-o {out} names one image file, but there are {len(files)} inputs: "
                             "give a folder")
        return [out]
    return [out / f"{f.stem}_x{scale}.png" for f in files]


def _compare_path(dst: Path) -> Path:
    return dst.with_name(dst.stem + "_compare.png")


def _check_outputs(files: list[Path], outs: list[Path], overwrite: bool) -> None:
    """Refuse before any work: an output that is an input (always) or that exists (without --overwrite)."""
    inputs, seen = {f.resolve() for f in files}, set()
    for dst in outs:
        if dst.resolve() in seen:
            raise ValueError(f"two inputs would both be written to {dst} (same name in different folders)")
        seen.add(dst.resolve())
        if dst.resolve() in inputs:
            raise FileExistsError(f"refusing to write {dst}: it is one of the input files")
        if dst.exists() and not overwrite:
            raise FileExistsError(f"refusing to overwrite {dst} (pass --overwrite)")


def compare_figure(path, lr, sr, hr, scale: int, name: str = "") -> Path:
    """Write bicubic | SR | HR side by side (a centre crop when large) with PSNR (Y, border = scale) in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = min(sr.shape[0], hr.shape[0])
    w = min(sr.shape[1], hr.shape[1])
    bic = imresize(lr, scale)[:h, :w]
    sr, hr = sr[:h, :w], hr[:h, :w]
    crop = 256
    y0, x0 = max((h - crop) // 2, 0), max((w - crop) // 2, 0)
    cut = (slice(y0, y0 + crop), slice(x0, x0 + crop))
    panels = [("bicubic", bic, psnr(bic, hr, crop_border=scale)), ("SR", sr, psnr(sr, hr, crop_border=scale)),
              ("HR", hr, None)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (title, img, p) in zip(axes, panels):
        ax.imshow(img[cut], cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"{title}  {p:.2f} dB" if p is not None else title)
        ax.axis("off")
    fig.suptitle(f"{name} x{scale} (centre crop)")
    fig.tight_layout()
    from .atomic import save_figure

    return save_figure(fig, path, close=True, dpi=100)  # a temporary name, renamed: no partial PNG; closed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minisr.upscale", description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--output", required=True, help="output folder (or file name for one input)")
    p.add_argument("--model", required=True, help="'bicubic', a checkpoint path or a shipped name (e.g. srcnn-x3)")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the model's)")
    p.add_argument("--compare", nargs="?", const="", default=None,
                   help="HR image (or folder of HR images with the same names); for a video, no value: "
                        "also write OUT_compare (bicubic | SR side by side), or the file name given")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tile", type=int, default=None, help="tile size in input pixels (default 192, or chosen by "
                                                         "--max-memory)")
    p.add_argument("--max-memory", type=cli_checks.memory_size, metavar="SIZE",
                   help="memory budget of the model's activations, e.g. 500M or 2G: the largest tile that fits")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never the inputs)")
    p.add_argument("--ensemble", action="store_true",
                   help="x8 self-ensemble: average the 8 flips / rotations (EDSR's '+'; 8 times slower)")
    return cli_checks.validated(p, cli_checks.UPSCALE)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli_checks.check_upscale(parser, args)
    if args.tile is None and args.max_memory is None:
        args.tile = 192
    from . import video  # videos (any FFmpeg container, through PyAV): minisr/video.py

    if video.is_video_job(args):
        return video.main(args)
    if args.compare == "":
        print("error: --compare needs an HR image (or folder) for images", file=sys.stderr)
        return 2
    try:
        files = _inputs(args.inputs)
        scale = args.scale
        if scale is None:
            if args.model == "bicubic":
                raise ValueError("--scale is required with --model bicubic")
            from .models import load

            _, meta = load(args.model)
            scale = int(meta.get("scale", 2))
        if scale < 2:
            raise ValueError(f"--scale must be >= 2, got {scale}")
        upscaler = make_upscaler(args.model, scale, device=args.device, tile=args.tile, ensemble=args.ensemble,
                                 max_memory=args.max_memory)
        if args.max_memory is not None and hasattr(getattr(upscaler, "upscaler", upscaler), "tile"):
            print(f"--max-memory {args.max_memory / 2 ** 20:.0f}M: tiles of "
                  f"{getattr(upscaler, 'upscaler', upscaler).tile} pixels", file=sys.stderr)
        outs = _outputs(files, Path(args.output), scale)
        compares = [_compare_path(d) for d in outs] if args.compare else []
        _check_outputs(files, outs + compares, args.overwrite)
        for src, dst in tqdm(list(zip(files, outs)), desc="upscale", unit="img", disable=len(files) < 2):
            lr = read_image(src)
            sr = upscaler(lr)
            write_image(dst, sr, overwrite=args.overwrite, protect=files)
            line = f"{src} -> {dst} ({lr.shape[1]}x{lr.shape[0]} -> {sr.shape[1]}x{sr.shape[0]})"
            if args.compare:
                hr_path = Path(args.compare)
                if hr_path.is_dir():
                    # the same name, else the longest name the input's starts with ("babyx2" -> "baby")
                    matches = [p for p in list_images(hr_path) if src.stem.startswith(p.stem)]
                    if not matches:
                        raise FileNotFoundError(f"--compare: no HR image for {src.name} in {hr_path}")
                    hr_path = max(matches, key=lambda p: len(p.stem))
                hr = read_image(hr_path)
                cmp_path = _compare_path(dst)
                compare_figure(cmp_path, lr, sr, hr, scale, name=src.stem)
                h, w = min(sr.shape[0], hr.shape[0]), min(sr.shape[1], hr.shape[1])
                line += f"  PSNR {psnr(sr[:h, :w], hr[:h, :w], crop_border=scale):.2f} dB, compare: {cmp_path}"
            print(line)
    except (FileNotFoundError, FileExistsError, ImageReadError, ValueError, KeyError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
