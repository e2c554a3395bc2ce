"""VDSR's depth study (Kim et al., CVPR 2016, "Accurate Image Super-Resolution Using Very Deep Convolutional
Networks"), on a short budget: validation PSNR of VDSR with 5, 10, 15 and 20 layers.

Each depth is trained the same way from the same seed: 3x3 convolutions with ``--features`` channels (the paper: 64),
ReLU between, zero padding and the global residual (output = bicubic input + network), He initialisation; Adam on the
MSE of random 32x32 Y patches of scikit-image's photos at x``--scale``, the same number of steps per depth (and at most
``--budget`` / 4 seconds each). Then every model upscales the whole validation photos (``Upscaler``) and is scored on Y
against bicubic.

    python examples/03_vdsr_depth.py [--depths 5,10,15,20 --steps 100 --features 32 --budget 200] [--out DIR] [--tiny]

A short budget tells you about the first minutes of training, not about the converged networks of the paper: deeper
nets cost more per step and need more steps; the table gives each depth's time and loss so you can see where it is.
"""

from __future__ import annotations

import time

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
)

import minisr
from minisr.models import VDSR


def main(argv=None) -> int:
    ap = parser(__doc__, budget=200.0)
    ap.add_argument("--depths", default="5,10,15,20", help="comma-separated depths (default 5,10,15,20)")
    ap.add_argument("--features", type=int, default=32, help="channels per layer (default 32; the paper 64)")
    ap.add_argument("--steps", type=int, default=100, help="training steps per depth (default 100)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--scale", type=int, default=3, choices=(2, 3, 4))
    args = ap.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",") if d]
    if args.tiny:
        args.features, args.steps, args.batch_size, args.patch = 8, 2, 4, 16
    train_images, val = default_data(args.tiny)
    data = patches(train_images, args.scale, args.patch, seed=args.seed)
    bicubic = bicubic_psnr(val, args.scale)
    print(f"VDSR x{args.scale}, {args.features} features, {args.steps} steps of {args.batch_size} {args.patch}x"
          f"{args.patch} patches per depth, Adam {args.lr:g}")

    rows = []
    for depth in depths:
        minisr.manual_seed(args.seed)
        model = VDSR(depth=depth, features=args.features)
        print(f"  depth {depth} ({model.num_parameters():,} parameters)")
        res = train(model, data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    budget=args.budget / len(depths), log=max(args.steps // 2, 1))
        t0 = time.perf_counter()
        p = psnr(model, val, args.scale) if res["status"] != "diverged" else float("nan")
        rows.append(dict(depth=depth, params=model.num_parameters(), psnr=p, eval_s=time.perf_counter() - t0, **res))

    print(f"\n{'depth':>5}  {'params':>8}  {'steps':>5}  {'train s':>7}  {'s/step':>6}  {'final loss':>10}  "
          f"{'val PSNR':>8}  {'vs bicubic':>10}")
    print(f"{'bicubic':>5}  {'':>8}  {'':>5}  {'':>7}  {'':>6}  {'':>10}  {bicubic:8.2f}  {0.0:+10.2f}")
    for r in rows:
        final = np.mean(r["losses"][-10:]) if r["losses"] else float("nan")
        note = {"budget": "  (stopped by the budget)", "diverged": "  (diverged)"}.get(r["status"], "")
        print(f"{r['depth']:>5}  {r['params']:>8,}  {r['steps']:>5}  {r['seconds']:7.1f}  "
              f"{r['seconds'] / max(r['steps'], 1):6.2f}  {final:10.5f}  {r['psnr']:8.2f}  "
              f"{r['psnr'] - bicubic:+10.2f}{note}")

    png = out_dir(args) / "03_vdsr_depth.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4))
    a, c = fig.subplots(1, 2)
    for r in rows:
        plot_loss(a, r["losses"], f"depth {r['depth']}")
    a.set(xlabel="step", ylabel="MSE (training batch)", yscale="log")
    a.set_title(f"training loss\nlight: every step; line: {SMOOTHING}", fontsize=9)
    legend_outside(a)
    c.plot([r["depth"] for r in rows], [r["psnr"] for r in rows], "o-", label="VDSR")
    c.axhline(bicubic, color="gray", ls="--", label=f"bicubic {bicubic:.2f} dB")
    c.set(xlabel="depth (conv layers)", ylabel="PSNR (dB, Y)", title="validation PSNR after the budget",
          xticks=[r["depth"] for r in rows])
    legend_outside(c)
    save_figure(fig, png, f"VDSR depth study, x{args.scale}, {args.features} features, up to {args.steps} steps "
                       f"or {args.budget / len(depths):.0f} s of training per depth", args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
