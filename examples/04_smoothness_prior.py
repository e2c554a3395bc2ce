"""A smoothness prior on the output: SRCNN trained on MSE + lambda * S against plain MSE.

S (``minisr.functional.smoothness_loss``) is the sum of squared differences between neighbouring output pixels,

    S = sum (x[i, j+1] - x[i, j])^2 + sum (x[i+1, j] - x[i, j])^2        over the batch,

a quadratic (Tikhonov-type) penalty that pulls neighbouring pixels together. SRCNN (Dong et al., ECCV 2014 / TPAMI
2016) trains on the plain MSE; this example asks what adding lambda * S does. S is a sum and the MSE a mean, so lambda
is small: the script prints S and the share lambda * S / MSE it takes of the loss at the end of training.

Every setting is trained from two seeds (weights and batches), so the table shows the run-to-run noise beside the
effect; the change each prior makes is measured against the plain-MSE run of the same seed (same initial weights and
batches), which cancels most of that noise. On this short budget SRCNN has not caught up with bicubic yet: the
comparison is between the two losses at equal steps, not of converged models. The figure: a crop of the cat from
each model and the difference between the largest-lambda model and the plain one (what the prior changed), then the
MSE part and S over training; S of the HR targets is the dashed line.

    python examples/04_smoothness_prior.py [--lam 1e-4,1e-3 --seeds 2 --steps 60 --budget 420] [--out DIR] [--tiny]

Every run trains the same number of steps: when the first run is stopped by its share of ``--budget``, the others
train as many steps as it did.
"""

from __future__ import annotations

import numpy as np
from _common import (
    SMOOTHING,
    bicubic_psnr,
    default_data,
    legend_outside,
    out_dir,
    parser,
    patches,
    plot_loss,
    psnr,
    save_figure,
    train,
    upscaler,
)

import minisr
from minisr import Tensor
from minisr import functional as F
from minisr.data import as_benchmark, imresize
from minisr.metrics import psnr as psnr_of
from minisr.models import SRCNN


def smoothness_of(img) -> float:
    """S of one image (H, W) or (H, W, 3) on [0, 255], measured on [0, 1] as in training."""
    a = np.asarray(img, dtype=np.float64) / 255.0
    return float(np.sum(np.diff(a, axis=1) ** 2) + np.sum(np.diff(a, axis=0) ** 2))


def main(argv=None) -> int:
    ap = parser(__doc__, budget=420.0)
    ap.add_argument("--lam", default="1e-4,1e-3", help="comma-separated smoothness weights (default 1e-4,1e-3)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per setting (default 2: --seed and --seed + 1)")
    ap.add_argument("--steps", type=int, default=60, help="training steps per run (default 60)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--scale", type=int, default=3, choices=(2, 3, 4))
    args = ap.parse_args(argv)
    lams = [0.0] + [float(v) for v in args.lam.split(",") if v]
    seeds = [args.seed + k for k in range(max(args.seeds, 1))]
    if args.tiny:
        args.steps, args.batch_size, lams = 2, 8, lams[:2]
    train_images, val = default_data(args.tiny)
    bicubic = bicubic_psnr(val, args.scale)
    budget = args.budget / (len(lams) * len(seeds))

    # S of the targets the loss compares with: the HR centres of one batch
    border = SRCNN().border
    _, t_hr = next(patches(train_images, args.scale, 33, seed=args.seed).batches(args.batch_size, 0))
    s_target = F.smoothness_loss(Tensor(np.ascontiguousarray(t_hr[:, :, border:-border, border:-border]))).item()
    print(f"SRCNN x{args.scale}, up to {args.steps} steps of {args.batch_size} 33x33 patches, Adam {args.lr:g}, "
          f"seeds {seeds}; S of one batch of HR targets: {s_target:.1f}")

    runs, steps = [], args.steps
    for lam in lams:
        for seed in seeds:
            name = "MSE" if lam == 0 else f"MSE + {lam:g} S"
            print(f"  {name}, seed {seed}")
            minisr.manual_seed(seed)
            model = SRCNN()
            res = train(model, patches(train_images, args.scale, 33, seed=seed), steps=steps,
                        batch_size=args.batch_size, lr=args.lr, smoothness=lam, budget=budget,
                        log=max(steps // 2, 1))
            if res["status"] == "budget" and not runs:  # the others then train as many steps, for a fair comparison
                steps = res["steps"]
                print(f"    (stopped by the budget after {steps} steps: every run trains {steps} steps)")
            runs.append(dict(name=name, lam=lam, seed=seed, model=model, psnr=psnr(model, val, args.scale), **res))

    # the cat: PSNR and S of the crop each model makes
    name, hr, lr = as_benchmark(val, args.scale)[0]
    size = 32 if args.tiny else 96
    y0, x0 = (0, 0) if args.tiny else (40, 150)  # the cat's eye and whiskers in chelsea.png
    b = args.scale
    for r in runs:
        r["sr"] = upscaler(r["model"], args.scale)(lr)
        r["S_val"] = smoothness_of(r["sr"][b:-b, b:-b])
    s_hr = smoothness_of(hr[b:-b, b:-b])

    def last(values):
        return float(np.mean(values[-10:])) if values else float("nan")

    print(f"\n{'loss':<16}  {'seed':>4}  {'steps':>5}  {'train s':>7}  {'final MSE':>9}  {'final S':>8}  "
          f"{'lambda S / MSE':>14}  {'S of ' + name:>12}  {'val PSNR':>8}  {'vs bicubic':>10}")
    print(f"{'bicubic':<16}  {'':>4}  {'':>5}  {'':>7}  {'':>9}  {'':>8}  {'':>14}  "
          f"{smoothness_of(imresize(lr, args.scale)[b:-b, b:-b]):12.1f}  {bicubic:8.2f}  {0.0:+10.2f}")
    print(f"{'HR':<16}  {'':>4}  {'':>5}  {'':>7}  {'':>9}  {'':>8}  {'':>14}  {s_hr:12.1f}")
    for r in runs:
        mse, s = last(r["mses"]), last(r["smooths"])
        note = {"budget": "  (stopped by the budget)", "diverged": "  (diverged)"}.get(r["status"], "")
        print(f"{r['name']:<16}  {r['seed']:>4}  {r['steps']:>5}  {r['seconds']:7.1f}  {mse:9.5f}  {s:8.1f}  "
              f"{r['lam'] * s / mse:14.3f}  {r['S_val']:12.1f}  {r['psnr']:8.2f}  {r['psnr'] - bicubic:+10.2f}{note}")

    print("\nper setting: val PSNR, mean over the seeds +- half their difference (the run-to-run noise); the change "
          "from plain MSE with the same seed (same initial weights and batches), per seed; S of the cat crop:")
    by = {lam: [r for r in runs if r["lam"] == lam] for lam in lams}
    base = {r["seed"]: r for r in by[0.0]}
    verdicts = []
    for lam, rs in by.items():
        p = [r["psnr"] for r in rs]
        d = [r["psnr"] - base[r["seed"]]["psnr"] for r in rs]
        ds = [100 * (r["S_val"] / base[r["seed"]]["S_val"] - 1) for r in rs]
        share = np.mean([r["lam"] * last(r["smooths"]) / last(r["mses"]) for r in rs])
        print(f"  {rs[0]['name']:<16} val PSNR {np.mean(p):6.2f} +- {(max(p) - min(p)) / 2:.2f} dB;  change "
              f"{', '.join(f'{v:+.2f}' for v in d)} dB;  S {', '.join(f'{v:+.0f}%' for v in ds)};  "
              f"lambda S = {100 * share:.1f}% of the MSE at the end")
        if lam and len(d) > 1:
            same_sign = all(v < 0 for v in d) or all(v > 0 for v in d)
            spread = (max(d) - min(d)) / 2
            seen = same_sign and abs(np.mean(d)) > 2 * spread
            verdict = "measurable (same sign for every seed, over twice the spread)" if seen else "within the noise"
            verdicts.append(f"lambda {lam:g}: {np.mean(d):+.2f} +- {spread:.2f} dB, {verdict}")
    for v in verdicts:
        print("  " + v)

    # the figure: crops + difference image (seed --seed), then curves
    first = [r for r in runs if r["seed"] == seeds[0]]
    plain, prior = first[0], first[-1]
    crops = [("HR", hr), ("bicubic", imresize(lr, args.scale))] + [(r["name"], r["sr"]) for r in first]
    png = out_dir(args) / "04_smoothness_prior.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3 * (len(crops) + 1), 7.2))
    grid = fig.add_gridspec(2, len(crops) + 1, height_ratios=[3, 2.3])
    for k, (label, img) in enumerate(crops):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(img[y0:y0 + size, x0:x0 + size], cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(label if label == "HR" else f"{label}\n{name}: {psnr_of(img, hr, b):.2f} dB", fontsize=9)
        ax.set_axis_off()
    ax = fig.add_subplot(grid[0, len(crops)])
    diff = prior["sr"].astype(np.float64) - plain["sr"].astype(np.float64)
    if diff.ndim == 3:
        diff = diff.mean(axis=2)
    crop = diff[y0:y0 + size, x0:x0 + size]
    lim = max(float(np.abs(crop).max()), 1e-6)
    im = ax.imshow(crop, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_title(f"{prior['name']} minus MSE\n(grey levels; max |diff| {lim:.1f})", fontsize=9)
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, fraction=0.046)
    half = (len(crops) + 1) // 2
    mse_ax, s_ax = fig.add_subplot(grid[1, :half]), fig.add_subplot(grid[1, half:])
    for r in first:
        line = plot_loss(mse_ax, r["mses"], r["name"])
        plot_loss(s_ax, r["smooths"], r["name"], color=line.get_color())
    s_ax.axhline(s_target, color="gray", ls="--", lw=1, label="S of the HR targets")
    mse_ax.set(xlabel="step", ylabel="MSE part of the loss", yscale="log",
               title=f"MSE (light: per step; line: {SMOOTHING}); seed {seeds[0]}")
    s_ax.set(xlabel="step", ylabel="S of the output batch", yscale="log", title="smoothness term S over training")
    legend_outside(s_ax)
    save_figure(fig, png, f"SRCNN x{args.scale}: plain MSE against MSE + lambda * S", args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
