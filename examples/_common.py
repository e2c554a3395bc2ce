"""Helpers shared by examples 03-05: the command line, the default data, a short training loop, and validation.

(02_train_srcnn.py writes the same loop out in full.)
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from minisr import Tensor, no_grad, optim
from minisr import functional as F
from minisr.data import DEFAULT_VALIDATION, PatchDataset, default_split
from minisr.eval import bicubic_upscaler, evaluate
from minisr.inference import Upscaler

EXAMPLES = Path(__file__).resolve().parent


def parser(doc: str, budget: float) -> argparse.ArgumentParser:
    """--out, --tiny, --budget and --seed, which every example takes."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(EXAMPLES / "out"), help="output folder (default examples/out)")
    ap.add_argument("--budget", type=float, default=budget,
                    help=f"seconds of training in all, shared by the runs (default {budget:.0f}); a run that "
                         "reaches its share stops early and says so")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a few steps on small data, for CI (seconds)")
    return ap


def out_dir(args) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def centre_crop(img, size: int):
    h, w = img.shape[:2]
    y, x = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return img[y:y + size, x:x + size]


def default_data(tiny: bool, crop: int | None = None):
    """(training images, validation {name: HR}) from scikit-image's photos; tiny: 2 training images and 48x48
    validation crops; ``crop``: validation centre crops of that size."""
    train, val = default_split()
    val = dict(zip(DEFAULT_VALIDATION, val))
    if tiny:
        return train[:2], {k: centre_crop(v, 48) for k, v in val.items()}
    if crop:
        val = {k: centre_crop(v, crop) for k, v in val.items()}
    return train, val


def patches(images, scale: int, patch: int, seed: int = 0, per_image: int = 64) -> PatchDataset:
    """Random Y patches of the bicubic-upscaled LR image and the HR image (SRCNN/VDSR input)."""
    return PatchDataset(images, scales=scale, patch_size=patch, patches_per_image=per_image, channels="y", seed=seed)


def train(model, data: PatchDataset, *, steps: int, batch_size: int, lr: float, budget: float, smoothness: float = 0.0,
          clip: float | None = None, log=None) -> dict:
    """Adam on the MSE of the valid centre (+ ``smoothness`` * smoothness_loss of the output) for ``steps`` steps or
    ``budget`` seconds, whichever comes first. Returns losses (total, MSE part and the smoothness term S of the
    output per step; S is measured with no gradient when it is not in the loss), steps, seconds, status ("done",
    "budget" or "diverged")."""
    opt = optim.Adam(model.parameters(), lr=lr)
    b = model.border
    losses, mses, smooths, step, epoch, status = [], [], [], 0, 0, "done"
    t0 = time.perf_counter()
    while status == "done" and step < steps:
        for x, t in data.batches(batch_size, epoch):
            pred = model(Tensor(x))
            target = Tensor(np.ascontiguousarray(t[:, :, b:t.shape[2] - b, b:t.shape[3] - b]))
            mse = F.mse_loss(pred, target)
            if smoothness:
                s = F.smoothness_loss(pred)
                loss = mse + smoothness * s
            else:
                with no_grad():
                    s = F.smoothness_loss(pred)
                loss = mse
            value = loss.item()
            if not math.isfinite(value):
                status = "diverged"
                break
            opt.zero_grad()
            loss.backward()
            if clip:
                optim.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            losses.append(value)
            mses.append(mse.item())
            smooths.append(s.item())
            step += 1
            if log and (step % log == 0 or step == steps):
                print(f"    step {step:4d}  loss {np.mean(losses[-log:]):.5f}  ({time.perf_counter() - t0:.0f} s)")
            if step >= steps:
                break
            if time.perf_counter() - t0 >= budget:
                status = "budget"
                break
        epoch += 1
    return dict(losses=losses, mses=mses, smooths=smooths, steps=step, seconds=time.perf_counter() - t0, status=status)


def upscaler(model, scale: int) -> Upscaler:
    return Upscaler(model, {"scale": scale}, scale)


def psnr(model, val, scale: int) -> float:
    """Mean validation PSNR on Y (border = scale) of the model through Upscaler."""
    model.eval()
    value = evaluate(upscaler(model, scale), val, scale)["mean"]["psnr"]
    model.train()
    return value


def bicubic_psnr(val, scale: int) -> float:
    return evaluate(bicubic_upscaler(scale), val, scale)["mean"]["psnr"]


def save_figure(fig, png, title: str, tiny: bool) -> None:
    """Title (marked when it is a tiny run), lay out, write the PNG and say where."""
    fig.suptitle(title + (" (tiny run)" if tiny else ""))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")


def smooth(values, sigma: float = 3.0):
    """Gaussian-weighted centred mean over the steps (for loss curves):

        smoothed_t = sum_k w_tk v_k / sum_k w_tk,      w_tk = exp(-(t - k)^2 / (2 sigma^2)),  all k

    One rule at every step: no window that stops growing or drops a value all at once (which draws a cliff that is
    not in the data), and, being centred, no lag behind a falling loss. At the ends the weights that fall outside
    are simply missing, so the first and last points average only their neighbours on one side."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return v.copy()
    t = np.arange(len(v))
    w = np.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)
    return (w @ v) / w.sum(axis=1)


SMOOTHING = "Gaussian-weighted mean, sigma 3 steps"


def plot_loss(ax, values, label: str, color=None):
    """The raw per-step values, light, and their :func:`smooth` curve in the same colour, labelled."""
    steps = np.arange(1, len(values) + 1)
    (line,) = ax.plot(steps, smooth(values), color=color, lw=1.6, label=label)
    ax.plot(steps, values, color=line.get_color(), lw=0.7, alpha=0.3)
    return line


def legend_outside(ax, **kw):
    """The legend to the right of the axes, off the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, **kw)
