"""Performance recovery score (PRS): does super-resolution give a classifier back its accuracy?

    python -m minisr.prs --model srcnn-x2 [--scale 2] [--data DIR] [--json] [--chart PATH]

The seed report's measure beside PSNR: train a small classifier (2 conv + 2 dense layers) on original images, then
classify the test images three ways -- as they are, degraded (MATLAB bicubic downscale by S) and enlarged back by
bicubic, and degraded and enlarged by an SR model -- and report each accuracy and PRS = accuracy / accuracy on the
originals. An SR model that restores what the classifier needs scores near 1; bicubic shows what was lost. The
mean PSNR of each set against the originals (Y / grey, ``S`` border pixels cut, as ``minisr.eval``) is reported
beside it.

Data: ``--data DIR`` in ImageFolder layout, ``DIR/<class>/*.png``. With ``DIR/train/<class>`` and
``DIR/test/<class>`` those are the split; otherwise a seeded, stratified split (``--test-fraction``, 0.2) of
each class. All images must share one size (they are cropped to a multiple of S). Without ``--data``: the digits
set that scikit-learn ships (1797 8x8 images of 0-9, no download; ``pip install "minisr[prs]"``), each enlarged
to 32x32 by MATLAB bicubic to form the "originals", so that x2 degradation leaves 16x16 images; split as above.

The classifier is trained once per data, seed and recipe and cached (``--cache-dir``, default
``$MINISR_CACHE`` or ``~/.cache/minisr``, under ``prs/``); ``--retrain`` ignores the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import checkpoint, nn, optim
from . import functional as F
from .atomic import save_figure
from .data import ImageReadError, imresize, list_images, read_image, round_uint8
from .metrics import psnr
from .random import manual_seed
from .tensor import Tensor, no_grad

SCALES = (2, 3, 4)
RECIPE = "prs-cnn-v1"  # bump when the classifier or its training changes: old cache entries are not reused


class PRSError(ValueError):
    """Bad input to the PRS run (data folder, model, options): the CLI prints it and exits with status 2."""


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class Split:
    images: np.ndarray  # (N, H, W) or (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64


@dataclass
class ClassificationData:
    train: Split
    test: Split
    classes: list
    name: str  # what the data is, for the report
    split: str  # how train and test were made
    fingerprint: str  # identifies the data for the classifier cache


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Seeded: per class, a random round(n * test_fraction) (at least 1) of its items go to the test split."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(max(1, round(len(idx) * test_fraction)), len(idx) - 1)
        test.extend(rng.permutation(idx)[:k].tolist())
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[test] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def _load_digits():
    """(1797, 8, 8) values 0..16 and labels 0..9: read from the CSV file that scikit-learn ships (importing
    sklearn itself takes seconds), else through ``sklearn.datasets.load_digits``."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise PRSError('the default data set is scikit-learn\'s digits: pip install "minisr[prs]" '
                       "(scikit-learn), or give --data DIR")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        table = np.loadtxt(csv, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target.astype(np.int64)


def digits_data(seed: int = 0, test_fraction: float = 0.2, size: int = 32) -> ClassificationData:
    """scikit-learn's digits (8x8, values 0..16) as uint8 images enlarged to size x size by MATLAB bicubic."""
    values, target = _load_digits()
    small = round_uint8(values * (255.0 / 16.0))  # (1797, 8, 8)
    big = imresize(small.transpose(1, 2, 0), output_shape=(size, size)).transpose(2, 0, 1)  # images as channels
    labels = target
    tr, te = _stratified_split(labels, test_fraction, seed)
    split = f"seeded stratified split (seed {seed}): {len(tr)} train, {len(te)} test"
    return ClassificationData(Split(big[tr], labels[tr]), Split(big[te], labels[te]), [str(c) for c in range(10)],
                              f"scikit-learn digits, 8x8 enlarged to {size}x{size} (MATLAB bicubic)", split,
                              f"sklearn-digits-{size}-{test_fraction}-{seed}")


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_class_tree(root: Path, classes=None):
    """Images and labels of an ImageFolder tree ``root/<class>/*``; file list for the fingerprint."""
    folders = _class_folders(root)
    if classes is None:
        if len(folders) < 2:
            raise PRSError(f"--data {root}: expected one folder per class (ImageFolder layout DIR/<class>/*.png), "
                           f"found {len(folders)} class folder(s)")
        classes = [p.name for p in folders]
    elif [p.name for p in folders] != list(classes):
        raise PRSError(f"--data: the classes in {root} ({[p.name for p in folders]}) differ from the training "
                       f"split's ({list(classes)})")
    files, labels = [], []
    for label, folder in enumerate(folders):
        found = list_images(folder)
        if not found:
            raise PRSError(f"--data: class folder {folder} holds no images (.png, .jpg, ...)")
        files += found
        labels += [label] * len(found)
    images = [read_image(f) for f in tqdm(files, desc=f"reading {root.name}", unit="img", leave=False, disable=None)]
    rgb = any(im.ndim == 3 for im in images)
    if rgb:
        images = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images]
    shape = images[0].shape[:2]
    for f, im in zip(files, images):
        if im.shape[:2] != shape:
            raise PRSError(f"--data: all images must have one size; {f} is {im.shape[1]}x{im.shape[0]}, "
                           f"{files[0]} is {shape[1]}x{shape[0]}")
    return np.stack(images), np.array(labels, dtype=np.int64), classes, files


def folder_data(root, seed: int = 0, test_fraction: float = 0.2) -> ClassificationData:
    root = Path(root)
    if not root.is_dir():
        raise PRSError(f"--data {root}: " + ("not a folder (give the folder that holds one folder per class)"
                                              if root.exists() else "no such folder"))
    if (root / "train").is_dir() and (root / "test").is_dir():
        x_tr, y_tr, classes, f_tr = _read_class_tree(root / "train")
        x_te, y_te, _, f_te = _read_class_tree(root / "test", classes)
        if x_te.shape[1:] != x_tr.shape[1:]:
            raise PRSError(f"--data: test images are {x_te.shape[1:]}, training images {x_tr.shape[1:]}")
        train, test, files = Split(x_tr, y_tr), Split(x_te, y_te), f_tr + f_te
        split = f"{root}/train and {root}/test: {len(y_tr)} train, {len(y_te)} test"
    else:
        x, y, classes, files = _read_class_tree(root)
        tr, te = _stratified_split(y, test_fraction, seed)
        train, test = Split(x[tr], y[tr]), Split(x[te], y[te])
        split = f"seeded stratified split (seed {seed}, {test_fraction:g} test): {len(tr)} train, {len(te)} test"
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return ClassificationData(train, test, classes, f"{root} ({len(classes)} classes)", split,
                              f"folder-{h.hexdigest()}-{test_fraction}-{seed}")


def _subset(s: Split, limit: int | None, seed: int) -> Split:
    if limit is None or limit >= len(s.labels):
        return s
    idx = np.sort(np.random.default_rng(seed).permutation(len(s.labels))[:limit])
    return Split(s.images[idx], s.labels[idx])


def _modcrop(s: Split, scale: int) -> Split:
    H, W = s.images.shape[1:3]
    return Split(s.images[:, :H - H % scale, :W - W % scale], s.labels)


# ------------------------------------------------------------------------------------------------ classifier
def build_classifier(in_channels: int, n_classes: int, height: int, width: int) -> nn.Module:
    """The seed report's small CNN, 2 conv + 2 dense layers (with batch norm and dropout):
    [conv 3x3 -> BN -> ReLU -> max-pool 2] x 2 (32, 64 channels), flatten, dense 128 -> ReLU -> dropout 0.3,
    dense n_classes."""
    flat = 64 * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, n_classes))


def to_batch(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W[, 3]) -> float32 (N, C, H, W) on [0, 1]."""
    x = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0)


def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model(Tensor(to_batch(images[i:i + batch_size]))).numpy().argmax(axis=1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def train_classifier(data: Split, n_classes: int, *, epochs: int, seed: int, batch_size: int = 64,
                     lr: float = 1e-3, progress: bool = True) -> nn.Module:
    """Adam, cross-entropy, shuffled mini-batches, ``epochs`` passes; seeded (weights, order, dropout)."""
    manual_seed(seed)
    N, H, W = data.images.shape[:3]
    C = 1 if data.images.ndim == 3 else 3
    model = build_classifier(C, n_classes, H, W)
    opt = optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    steps = epochs * math.ceil(N / batch_size)
    bar = tqdm(total=steps, desc="training the classifier", unit="step", disable=None if progress else True)
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(N)
        for i in range(0, N, batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:  # batch norm needs two values per channel
                continue
            loss = F.cross_entropy(model(Tensor(to_batch(data.images[idx]))), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return model


def default_cache_dir() -> Path:
    env = os.environ.get("MINISR_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "minisr"


def get_classifier(data: ClassificationData, *, epochs: int, seed: int, cache_dir=None, retrain: bool = False,
                   progress: bool = True):
    """``(model, info)``: the cached classifier for this data, seed and recipe, or a newly trained (and cached) one."""
    shape = data.train.images.shape[1:]
    key = json.dumps({"recipe": RECIPE, "data": data.fingerprint, "n_train": len(data.train.labels),
                      "shape": list(shape), "classes": list(data.classes), "epochs": epochs, "seed": seed},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = Path(cache_dir or default_cache_dir()) / "prs" / f"classifier-{digest}.npz"
    C = 1 if len(shape) == 2 else 3
    model = build_classifier(C, len(data.classes), shape[0], shape[1])
    if path.is_file() and not retrain:
        try:
            ckpt = checkpoint.load(path)
            if ckpt["meta"].get("key") == key:
                model.load_state_dict(ckpt["model"])
                model.eval()
                return model, {"path": str(path), "cached": True, **ckpt["meta"]["info"]}
        except (ValueError, KeyError):
            pass  # a damaged or foreign file: train again and replace it
    model = train_classifier(data.train, len(data.classes), epochs=epochs, seed=seed, progress=progress)
    info = {"epochs": epochs, "seed": seed, "train_accuracy": float(np.mean(predict(model, data.train.images)
                                                                            == data.train.labels))}
    try:
        checkpoint.save(path, model.state_dict(), {"model": "prs-classifier", "key": key, "info": info})
    except OSError as err:
        print(f"warning: could not cache the classifier in {path}: {err}", file=sys.stderr)
    return model, {"path": str(path), "cached": False, **info}


# ------------------------------------------------------------------------------------------------------- PRS
def degrade(images: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB bicubic downscale by ``scale`` (antialiased) of every image: (N, H, W[, 3]) -> (N, H/s, W/s[, 3])."""
    N = len(images)
    stacked = np.moveaxis(images.reshape(N, images.shape[1], images.shape[2], -1), 0, 2)  # H, W, N, C
    H, W = stacked.shape[:2]
    lr = imresize(stacked.reshape(H, W, -1), 1.0 / scale)  # every image (and channel) as a channel
    lr = np.moveaxis(lr.reshape(lr.shape[0], lr.shape[1], N, -1), 2, 0)
    return lr[..., 0] if images.ndim == 3 else lr


def _upscalers(models, scale: int, device: str):
    """name -> callable uint8 LR -> uint8 SR: "bicubic" and each model, through the project's one entry point."""
    from .eval import UnknownModelError, load_upscaler

    out = {}
    for name in ["bicubic"] + [m for m in models if m != "bicubic"]:
        try:
            out[name] = load_upscaler(name, scale, device=device)
        except UnknownModelError as err:
            raise PRSError(str(err)) from err
        except ValueError as err:  # e.g. a model trained for another scale
            raise PRSError(f"model {name!r}: {err}") from err
    return out


def run_prs(models, scale: int = 2, data_dir=None, *, seed: int = 0, epochs: int = 10, limit: int | None = None,
            test_fraction: float = 0.2, cache_dir=None, retrain: bool = False, device: str = "cpu",
            progress: bool = True) -> dict:
    """Train or load the classifier, classify originals, bicubic and SR test images; returns the report dict."""
    if scale not in SCALES:
        raise PRSError(f"--scale {scale}: choose one of {SCALES}")
    if not 0 < test_fraction < 1:
        raise PRSError(f"--test-fraction {test_fraction}: must lie between 0 and 1")
    upscalers = _upscalers(list(models), scale, device)  # fail on a bad model before any training
    data = digits_data(seed, test_fraction) if data_dir is None else folder_data(data_dir, seed, test_fraction)
    data.train, data.test = _modcrop(_subset(data.train, limit, seed), scale), _modcrop(_subset(data.test, limit,
                                                                                                seed + 1), scale)
    if limit is not None:
        data.split += f"; --limit {limit}: {len(data.train.labels)} train, {len(data.test.labels)} test used"
    H, W = data.train.images.shape[1:3]
    if min(H, W) < 4 * scale:
        raise PRSError(f"--data: images of {W}x{H} are too small for x{scale} (at least {4 * scale} pixels a side)")
    model, info = get_classifier(data, epochs=epochs, seed=seed, cache_dir=cache_dir, retrain=retrain,
                                 progress=progress)
    test = data.test
    lr = degrade(test.images, scale)
    examples = {"original": test.images[:8], f"LR (1/{scale})": lr[:8]}
    rows = [{"images": "original", "accuracy": float(np.mean(predict(model, test.images) == test.labels)),
             "psnr": None}]
    for name, up in upscalers.items():
        sr = np.stack([up(im) for im in tqdm(lr, desc=f"{name} x{scale}", unit="img", leave=False,
                                             disable=None if progress else True)])
        if sr.shape != test.images.shape:
            raise PRSError(f"model {name!r} returned images of shape {sr.shape[1:]}, expected {test.images.shape[1:]}")
        examples[f"{name} x{scale}"] = sr[:8]
        psnrs = [psnr(a, b, scale) for a, b in zip(sr, test.images)]
        rows.append({"images": f"{name} x{scale}", "model": name,
                     "accuracy": float(np.mean(predict(model, sr) == test.labels)),
                     "psnr": float(np.mean([p for p in psnrs if math.isfinite(p)] or [float("inf")]))})
    base = rows[0]["accuracy"]
    for r in rows:
        r["prs"] = r["accuracy"] / base if base > 0 else float("nan")
    return {"data": data.name, "split": data.split, "scale": scale, "image_size": [int(W), int(H)],
            "n_test": int(len(test.labels)), "classifier": info, "rows": rows, "_examples": examples}


def format_table(report: dict) -> str:
    lines = [f"PRS on {report['data']}, x{report['scale']}",
             f"  {report['split']}; {report['n_test']} test images of {report['image_size'][0]}x"
             f"{report['image_size'][1]}",
             f"  classifier: {'cached' if report['classifier']['cached'] else 'trained'} "
             f"({report['classifier']['epochs']} epochs, seed {report['classifier']['seed']}, train accuracy "
             f"{100 * report['classifier']['train_accuracy']:.2f}%) {report['classifier']['path']}",
             "",
             f"{'test images':<24} {'accuracy':>9} {'PRS':>7} {'PSNR (dB)':>10}"]
    for r in report["rows"]:
        p = "-" if r["psnr"] is None else f"{r['psnr']:.2f}"
        lines.append(f"{r['images']:<24} {100 * r['accuracy']:8.2f}% {r['prs']:7.4f} {p:>10}")
    return "\n".join(lines)


def plot(report: dict, path) -> Path:
    """Two panels: the accuracies (full 0-100% scale) and the PRS values (zoomed, 1.0 dashed), each bar labelled;
    written to a temporary name, then renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = report["rows"]
    names = [r["images"] for r in rows]
    acc = [100 * r["accuracy"] for r in rows]
    prs = [r["prs"] if math.isfinite(r["prs"]) else 0.0 for r in rows]
    colors = (["#4c72b0", "#8c8c8c"] + ["#dd8452"] * len(names))[:len(names)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(3.0 + 2.2 * len(names), 3.8), dpi=110)
    for b, a in zip(ax1.bar(names, acc, color=colors), acc):
        ax1.text(b.get_x() + b.get_width() / 2, b.get_height() + 1, f"{a:.1f}%", ha="center", va="bottom", fontsize=9)
    ax1.set_ylim(0, 110)
    ax1.set_ylabel("classifier test accuracy (%)")
    lo = min(prs)
    bottom = max(0.0, math.floor((lo - 0.25 * (1.0 - lo) - 0.005) * 100) / 100)
    for b, v in zip(ax2.bar(names, [v - bottom for v in prs], bottom=bottom, color=colors), prs):
        ax2.text(b.get_x() + b.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom", fontsize=9)
    ax2.axhline(1.0, color="k", lw=0.8, ls="--")
    ax2.set_ylim(bottom, max(prs + [1.0]) + 0.15 * (max(prs + [1.0]) - bottom))
    ax2.set_ylabel("PRS (zoomed axis)")
    ax1.set_title("accuracy", fontsize=9)
    ax2.set_title("PRS = accuracy / accuracy on originals", fontsize=9)
    for ax in (ax1, ax2):
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"PRS x{report['scale']}: {report['data']}, {report['n_test']} test images", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save_figure(fig, path, close=True)



def plot_examples(examples: dict, path) -> Path:
    """A grid of the first test images: one row per set (original, LR shown at its own size, each upscaler)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    n = min(len(v) for v in examples.values())
    fig, axes = plt.subplots(len(examples), n, figsize=(1.1 * n + 1.6, 1.1 * len(examples)), dpi=110, squeeze=False)
    for r, (name, imgs) in enumerate(examples.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, close=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minisr.prs", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--model", nargs="+", metavar="NAME|CKPT",
                   help="SR model(s): shipped names (srcnn-x2, ...) or checkpoint paths (default: srcnn-x<S>)")
    p.add_argument("--scale", type=int, default=2, help="degradation / upscaling factor (default 2)")
    p.add_argument("--data", metavar="DIR", help="ImageFolder data DIR/<class>/*.png (default: scikit-learn digits)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--chart", metavar="PATH", help="bar chart PNG (default prs-x<S>.png)")
    p.add_argument("--examples", metavar="PATH", help="also write a PNG of the first test images of every set")
    p.add_argument("--epochs", type=int, default=10, help="classifier training epochs (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, weights and batches (default 0)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="test share of a seeded split (default 0.2)")
    p.add_argument("--limit", type=int, metavar="N", help="use at most N training and N test images (quick runs)")
    p.add_argument("--cache-dir", metavar="DIR", help="classifier cache (default $MINISR_CACHE or ~/.cache/minisr)")
    p.add_argument("--retrain", action="store_true", help="train the classifier again even if it is cached")
    p.add_argument("--device", default="cpu", help="device of the SR models (default cpu)")
    from . import cli_checks

    return cli_checks.validated(p, cli_checks.PRS)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    models = args.model or [f"srcnn-x{args.scale}"]
    chart = Path(args.chart or f"prs-x{args.scale}.png")
    try:
        for opt, out in (("--chart", chart), ("--examples", args.examples)):
            if out is None:
                continue
            if Path(out).suffix.lower() != ".png":
                raise PRSError(f"{opt} {out}: give a .png file name")
            if args.data and Path(out).resolve().is_relative_to(Path(args.data).resolve()):
                raise PRSError(f"{opt} {out} lies inside the data folder {args.data}; write it elsewhere")
        report = run_prs(models, args.scale, args.data, seed=args.seed, epochs=args.epochs, limit=args.limit,
                         test_fraction=args.test_fraction, cache_dir=args.cache_dir, retrain=args.retrain,
                         device=args.device, progress=not args.json)
        examples = report.pop("_examples")
        report["chart"] = str(plot(report, chart))
        if args.examples:
            report["examples"] = str(plot_examples(examples, args.examples))
    except (PRSError, ImageReadError, FileNotFoundError, ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
        print(f"\nchart: {report['chart']}" + (f"\nexamples: {report['examples']}" if args.examples else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
