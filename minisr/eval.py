"""Evaluate an upscaler on a benchmark: PSNR / SSIM per image and their means.

    python -m minisr.eval --model bicubic --dataset Set5 --scale 2 [--json] [--save DIR] [--data-root DIR]

MODEL is ``bicubic`` (MATLAB bicubic upscaling of the LR image, uint8), a checkpoint path, or a shipped
model name (``minisr.upscalers.make_upscaler`` builds those). ``--ensemble`` averages the 8 flips / rotations (EDSR's
"+"). ``--table`` scores every shipped model on every benchmark found (see :mod:`minisr.report`). The metrics follow
the papers: Y channel (MATLAB BT.601, unrounded), ``scale`` pixels cut off every border (see :mod:`minisr.metrics`).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from minisr import cli_checks
from minisr.data import (
    DatasetNotFoundError,
    ImageReadError,
    as_benchmark,
    benchmark_files,
    load_benchmark,
    write_image,
)
from minisr.metrics import psnr, ssim
from minisr.upscalers import bicubic_upscaler  # noqa: F401  (its home is minisr.upscalers; importable from here)

SCALES = (2, 3, 4)


class UnknownModelError(LookupError):
    """The --model argument is neither 'bicubic', a checkpoint path nor a shipped model name."""


def load_upscaler(model: str, scale: int, device: str = "cpu", ensemble: bool = False):
    """A callable ``lr_uint8 -> sr_uint8`` for 'bicubic', a checkpoint path or a shipped model name (from
    :mod:`minisr.upscalers`); ``ensemble``: the x8 self-ensemble of it."""
    hint = "MODEL is 'bicubic', a checkpoint path, or the name of a shipped model"
    try:
        from minisr.upscalers import make_upscaler
    except ImportError as err:
        message = f"cannot load model {model!r}: trained models are not available ({err}). {hint}."
        raise UnknownModelError(message) from err
    try:
        if ensemble:
            return make_upscaler(model, scale, device=device, ensemble=True)
        return make_upscaler(model, scale, device=device)
    except (KeyError, FileNotFoundError) as err:
        raise UnknownModelError(f"unknown model {model!r}. {hint} ({err}).") from err


def evaluate(upscaler, dataset, scale: int, *, data_root=None, crop_border=None, y_channel: bool = True,
             save_dir=None, tag: str = "sr", progress: bool = False) -> dict:
    """Run ``upscaler`` on every LR image of ``dataset`` and score it against the HR image.

    Args:
        upscaler: callable taking an HxW or HxWx3 uint8 LR image and returning the uint8 SR image,
            ``scale`` times larger.
        dataset: a benchmark name or folder (see :func:`minisr.data.load_benchmark`), or images in memory
            (see :func:`minisr.data.as_benchmark`: ``{name: hr}``, a list of HR arrays, or (name, hr[, lr])).
        crop_border: pixels cut off each side before scoring; default ``scale``.
        y_channel: score on Y (default) or on all channels.
        save_dir: write each SR image there as ``<name>_x<scale>_<tag>.png`` (never over an input file).
        progress: show a tqdm progress bar.
    Returns ``{"dataset", "scale", "mean": {"psnr", "ssim"}, "images": [{"name", "psnr", "ssim"}, ...]}``.
    """
    from tqdm import tqdm

    on_disk = isinstance(dataset, (str, Path))
    items = load_benchmark(dataset, scale, data_root) if on_disk else as_benchmark(dataset, scale)
    protect = benchmark_files(dataset, data_root) if on_disk and save_dir is not None else ()
    border = scale if crop_border is None else crop_border
    label = str(dataset) if on_disk else "images"

    rows = []
    desc = f"{Path(label).name} x{scale}"
    for name, hr, lr in tqdm(items, desc=desc, disable=not progress, leave=False):
        sr = np.asarray(upscaler(lr))
        if sr.dtype != np.uint8:
            raise TypeError(f"{name}: the upscaler returned {sr.dtype}, expected uint8")
        if sr.shape != hr.shape:
            raise ValueError(f"{name}: the upscaler returned shape {sr.shape}, expected {hr.shape} "
                             f"(LR {lr.shape} x{scale})")
        scores = {"psnr": psnr(sr, hr, border, y_channel), "ssim": ssim(sr, hr, border, y_channel)}
        rows.append({"name": name, **scores})
        if save_dir is not None:
            write_image(Path(save_dir) / f"{name}_x{scale}_{tag}.png", sr, overwrite=True, protect=protect)
    mean = {key: float(np.mean([r[key] for r in rows])) for key in ("psnr", "ssim")}
    return {"dataset": label, "scale": scale, "mean": mean, "images": rows}


def format_table(result: dict, model: str) -> str:
    """The per-image and mean PSNR / SSIM as a text table."""
    width = max([len(r["name"]) for r in result["images"]] + [4])
    lines = [f"{model} on {result['dataset']} x{result['scale']} (Y channel, border {result['scale']})",
             f"{'image':<{width}}  {'PSNR':>7}  {'SSIM':>6}"]
    for r in result["images"]:
        lines.append(f"{r['name']:<{width}}  {r['psnr']:7.2f}  {r['ssim']:6.4f}")
    mean = result["mean"]
    lines += ["-" * (width + 17), f"{'mean':<{width}}  {mean['psnr']:7.2f}  {mean['ssim']:6.4f}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minisr.eval", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="'bicubic', a checkpoint path or a shipped model name (required)")
    parser.add_argument("--dataset", help="Set5, Set14, ... (under --data-root) or a folder (required)")
    parser.add_argument("--scale", type=int, choices=SCALES, help="upscaling factor (required)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--save", metavar="DIR", help="write the SR images to DIR as PNG")
    parser.add_argument("--data-root", metavar="DIR", help="root of named datasets (default $MINISR_DATA)")
    parser.add_argument("--device", default="cpu", help="device for trained models (default: cpu)")
    parser.add_argument("--ensemble", action="store_true",
                        help="x8 self-ensemble: average the 8 flips / rotations (EDSR's '+')")
    parser.add_argument("--table", action="store_true",
                        help="the paper table: every shipped model x every benchmark under the data root x its "
                             "scales, beside bicubic and the published figures (minisr.report)")
    parser.add_argument("--out", metavar="DIR", default="paper-table",
                        help="--table: where table.md, table.png and results.json go (default ./paper-table)")
    parser.add_argument("--models", help="--table: comma-separated shipped names or checkpoints (default: all)")
    parser.add_argument("--datasets", help="--table: comma-separated benchmarks (default: all under the data root)")
    return cli_checks.validated(parser, cli_checks.EVAL)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.table:
        from minisr import report  # the table is built on evaluate() above

        return report.main(args=args)
    cli_checks.check_eval(parser, args)
    tag = ("bicubic" if args.model == "bicubic" else Path(args.model).stem) + ("+" if args.ensemble else "")
    try:
        upscaler = load_upscaler(args.model, args.scale, device=args.device, ensemble=args.ensemble)
        result = evaluate(upscaler, args.dataset, args.scale, data_root=args.data_root, save_dir=args.save,
                          tag=tag, progress=not args.json)
    except (UnknownModelError, DatasetNotFoundError, ImageReadError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": args.model, "dataset": args.dataset, "scale": args.scale, "ensemble": args.ensemble,
                          "mean": result["mean"], "images": result["images"]}))
    else:
        print(format_table(result, args.model + (" (x8 self-ensemble)" if args.ensemble else "")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
