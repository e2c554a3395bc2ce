"""The seed report's regularised loss: SRCNN trained on MSE + lambda * smoothness against plain MSE.

The smoothness prior (``minisr.functional.smoothness_loss``) is the sum of squared differences between neighbouring
output pixels, S = sum (x[i, j+1] - x[i, j])^2 + sum (x[i+1, j] - x[i, j])^2 over the batch; the report adds
lambda * S to the loss to reduce blockiness. S is a sum and the MSE a mean, so lambda is small: with 64 patches of
17x17 valid outputs, S of the true HR centres is about 150 and the MSE about 0.002, so lambda = 1e-6 makes the prior
about 7% of the loss.

Every run starts from the same weights and sees the same batches (same seed); the table gives validation PSNR on Y
against bicubic, and the PNG a crop of the cat's face from each model.

    python examples/04_smoothness_prior.py [--lam 1e-6,1e-5 --steps 200 --budget 210] [--out DIR] [--tiny]
"""

from __future__ import annotations

import numpy as np
from _common import bicubic_psnr, default_data, out_dir, parser, patches, psnr, save_figure, smooth, train, upscaler

import minisr
from minisr.data import as_benchmark, imresize
from minisr.metrics import psnr as psnr_of
from minisr.models import SRCNN


def main(argv=None) -> int:
    ap = parser(__doc__, budget=210.0)
    ap.add_argument("--lam", default="1e-6,1e-5", help="comma-separated smoothness weights (default 1e-6,1e-5)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per run (default 200)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--scale", type=int, default=3, choices=(2, 3, 4))
    args = ap.parse_args(argv)
    lams = [0.0] + [float(v) for v in args.lam.split(",") if v]
    if args.tiny:
        args.steps, args.batch_size, lams = 2, 8, lams[:2]
    train_images, val = default_data(args.tiny)
    data = patches(train_images, args.scale, 33, seed=args.seed)
    bicubic = bicubic_psnr(val, args.scale)

    runs = []
    for lam in lams:
        name = "MSE" if lam == 0 else f"MSE + {lam:g} S"
        print(f"  {name}")
        minisr.manual_seed(args.seed)
        model = SRCNN()
        res = train(model, data, steps=args.steps, batch_size=args.batch_size, lr=args.lr, smoothness=lam,
                    budget=args.budget / len(lams), log=max(args.steps // 2, 1))
        runs.append(dict(name=name, lam=lam, model=model, psnr=psnr(model, val, args.scale), **res))

    print(f"\n{'loss':<16}  {'steps':>5}  {'train s':>7}  {'final MSE':>9}  {'lambda S / MSE':>14}  {'val PSNR':>8}  "
          f"{'vs bicubic':>10}")
    print(f"{'bicubic':<16}  {'':>5}  {'':>7}  {'':>9}  {'':>14}  {bicubic:8.2f}  {0.0:+10.2f}")
    for r in runs:
        mse = np.mean(r["mses"][-10:]) if r["mses"] else float("nan")
        prior = (np.mean(r["losses"][-10:]) - mse) / mse if r["losses"] else float("nan")
        note = {"budget": "  (stopped by the budget)", "diverged": "  (diverged)"}.get(r["status"], "")
        print(f"{r['name']:<16}  {r['steps']:>5}  {r['seconds']:7.1f}  {mse:9.5f}  {prior:14.3f}  {r['psnr']:8.2f}  "
              f"{r['psnr'] - bicubic:+10.2f}{note}")

    # a crop of the first validation image (the cat) from every model
    name, hr, lr = as_benchmark(val, args.scale)[0]
    size = 32 if args.tiny else 96
    y0, x0 = (0, 0) if args.tiny else (40, 150)  # the cat's eye and whiskers in chelsea.png
    crops = [("HR", hr), ("bicubic", imresize(lr, args.scale))]
    crops += [(r["name"], upscaler(r["model"], args.scale)(lr)) for r in runs]
    b = args.scale
    png = out_dir(args) / "04_smoothness_prior.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3 * len(crops), 6.6))
    grid = fig.add_gridspec(2, len(crops), height_ratios=[3, 2])
    for k, (label, img) in enumerate(crops):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(img[y0:y0 + size, x0:x0 + size], cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(label if label == "HR" else f"{label}\n{name}: {psnr_of(img, hr, b):.2f} dB", fontsize=9)
        ax.set_axis_off()
    curves = fig.add_subplot(grid[1, :])
    for r in runs:
        curves.plot(np.arange(1, len(r["mses"]) + 1), smooth(r["mses"]), label=f"{r['name']}: MSE part")
    curves.set(xlabel="step", ylabel="MSE (running mean of 10)", yscale="log")
    curves.legend(fontsize=8)
    save_figure(fig, png, f"SRCNN x{args.scale}: plain MSE against MSE + lambda * smoothness", args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
