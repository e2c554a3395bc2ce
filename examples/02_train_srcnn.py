"""Training SRCNN x3 written out with the public API: the loop that ``python -m minisr.train srcnn`` runs, minus the
checkpoints, resume and reporting.

Data: scikit-image's photos (``minisr.data.default_split``), 33x33 Y sub-images with stride 14 cut from the
bicubic-upscaled LR image (``PatchDataset``). Model: SRCNN 9-5-5 with valid convolutions, so the loss compares only
the valid centre of each patch (``model.border`` pixels in from every side). Adam 1e-3, the last layer 10x slower as
in the paper (Dong et al., TPAMI 2016). Validation: PSNR on Y (border = scale) of the whole validation photos,
upscaled by the model through ``minisr.inference.Upscaler`` and scored by ``minisr.eval.evaluate``, against bicubic.

    python examples/02_train_srcnn.py [--steps 300 --batch-size 64 --budget 200] [--out DIR] [--tiny]

With the defaults it trains 300 steps (about 2 minutes on 2 idle cores; ``--budget`` seconds stops it earlier on a
busy machine) and writes the loss and PSNR curves to ``<out>/02_train_srcnn.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import minisr
from minisr import Tensor, optim
from minisr import functional as F
from minisr.data import DEFAULT_VALIDATION, PatchDataset, default_split
from minisr.eval import bicubic_upscaler, evaluate
from minisr.inference import Upscaler
from minisr.models import SRCNN


def centre_crop(img, size):
    h, w = img.shape[:2]
    y, x = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return img[y:y + size, x:x + size]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--validate-every", type=int, default=100, help="steps between validations (default 100)")
    ap.add_argument("--budget", type=float, default=200.0, help="stop training after this many seconds (default 200)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="output folder")
    ap.add_argument("--tiny", action="store_true", help="3 steps on 2 images, validation on 48x48 crops (CI)")
    args = ap.parse_args(argv)
    scale = 3

    # ------------------------------------------------------------------------------------------ the training loop
    minisr.manual_seed(0)
    train_images, val_images = default_split()
    val = dict(zip(DEFAULT_VALIDATION, val_images))  # {name: HR image}: evaluate() makes the LR images
    if args.tiny:
        args.steps, args.batch_size, args.validate_every = 3, 16, 3
        train_images, val = train_images[:2], {k: centre_crop(v, 48) for k, v in val.items()}
    data = PatchDataset(train_images, scales=scale, patch_size=33, stride=14, channels="y", seed=0)
    model = SRCNN(kernels=(9, 5, 5), features=(64, 32), padding="valid")
    b = model.border  # 8 pixels lost on every side by the three valid convolutions
    head = model.conv1.parameters() + model.conv2.parameters()
    opt = optim.Adam([{"params": head}, {"params": model.conv3.parameters(), "lr": args.lr * 0.1}], lr=args.lr)

    def validate() -> float:
        model.eval()
        psnr = evaluate(Upscaler(model, {"scale": scale}, scale), val, scale)["mean"]["psnr"]
        model.train()
        return psnr

    bicubic = evaluate(bicubic_upscaler(scale), val, scale)["mean"]["psnr"]
    losses, curve, step, epoch = [], [(0, validate())], 0, 0
    t0 = time.perf_counter()
    while step < args.steps and time.perf_counter() - t0 < args.budget:
        for x, t in data.batches(args.batch_size, epoch):  # float32 NCHW on [0, 1]: bicubic input, HR target
            pred = model(Tensor(x))  # (N, 1, 33 - 2b, 33 - 2b)
            loss = F.mse_loss(pred, Tensor(np.ascontiguousarray(t[:, :, b:-b, b:-b])))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % args.validate_every == 0 or step == args.steps:
                curve.append((step, validate()))
                print(f"step {step:4d}  loss {np.mean(losses[-args.validate_every:]):.5f}  "
                      f"val PSNR {curve[-1][1]:.2f} dB  ({time.perf_counter() - t0:.0f} s)")
            if step >= args.steps or time.perf_counter() - t0 >= args.budget:
                break
        epoch += 1
    seconds = time.perf_counter() - t0
    if curve[-1][0] != step:
        curve.append((step, validate()))
    # ---------------------------------------------------------------------------------------------------- report
    stopped = "" if step >= args.steps else f" (stopped by the {args.budget:.0f} s budget)"
    print(f"\nSRCNN x{scale}: {step} steps of {args.batch_size} patches in {seconds:.0f} s{stopped}, "
          f"{len(data)} patches per epoch")
    print(f"{'':<22}{'val PSNR (Y)':>13}")
    print(f"{'bicubic':<22}{bicubic:>10.2f} dB")
    for s, p in curve:
        print(f"{'SRCNN after ' + str(s) + ' steps':<22}{p:>10.2f} dB  ({p - bicubic:+.2f})")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "02_train_srcnn.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.5, 3.8))
    a, c = fig.subplots(1, 2)
    a.plot(np.arange(1, len(losses) + 1), losses, lw=0.8)
    a.set(xlabel="step", ylabel="MSE (valid centre)", yscale="log", title="training loss")
    c.plot([s for s, _ in curve], [p for _, p in curve], "o-", label="SRCNN")
    c.axhline(bicubic, color="gray", ls="--", label=f"bicubic {bicubic:.2f} dB")
    c.set(xlabel="step", ylabel="PSNR (dB, Y)", title="validation PSNR")
    c.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)  # off the data
    fig.suptitle(f"SRCNN x{scale} on scikit-image photos" + (" (tiny run)" if args.tiny else ""))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
