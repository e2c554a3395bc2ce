"""VDSR with and without its global residual: loss curves, validation PSNR, and the gradient reaching each layer.

VDSR outputs ``input + body(input)``: the body only has to learn the residual between the bicubic input and the HR
image. The plain net (``VDSR(residual=False)``) must reproduce the whole image. Both start from the same weights (He
initialisation, same seed) and see the same batches (Adam, MSE, 32x32 Y patches of scikit-image's photos).

Before and after training, one backward pass on a fixed batch runs inside ``minisr.autograd.trace()``: the norm of
dE/d(output) of every conv layer, in forward order, shows how much gradient reaches the early layers of each net.

    python examples/05_residual_vs_plain.py [--depth 20 --features 32 --steps 100 --budget 200] [--out DIR] [--tiny]
"""

from __future__ import annotations

import numpy as np
from _common import bicubic_psnr, default_data, out_dir, parser, patches, psnr, save_figure, smooth, train

import minisr
from minisr import Tensor, autograd
from minisr import functional as F
from minisr.models import VDSR


def gradient_trace(model, x, t) -> autograd.Trace:
    """One traced backward of the MSE on (x, t); the gradients it leaves on the parameters are cleared."""
    loss = F.mse_loss(model(Tensor(x)), Tensor(t))
    with autograd.trace(model=model) as tr:
        loss.backward()
    model.zero_grad()
    return tr


def main(argv=None) -> int:
    ap = parser(__doc__, budget=200.0)
    ap.add_argument("--depth", type=int, default=20, help="conv layers (default 20, the paper's)")
    ap.add_argument("--features", type=int, default=32, help="channels per layer (default 32; the paper 64)")
    ap.add_argument("--steps", type=int, default=100, help="training steps per net (default 100)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--scale", type=int, default=3, choices=(2, 3, 4))
    args = ap.parse_args(argv)
    if args.tiny:
        args.depth, args.features, args.steps, args.batch_size, args.patch = 5, 8, 2, 4, 16
    train_images, val = default_data(args.tiny)
    data = patches(train_images, args.scale, args.patch, seed=args.seed)
    probe_x, probe_t = next(data.batches(args.batch_size, epoch=10_000))  # a fixed batch for the gradient picture
    bicubic = bicubic_psnr(val, args.scale)
    print(f"VDSR x{args.scale}, depth {args.depth}, {args.features} features, {args.steps} steps of "
          f"{args.batch_size} {args.patch}x{args.patch} patches, Adam {args.lr:g}")

    runs = []
    for residual in (True, False):
        name = "residual" if residual else "plain"
        print(f"  {name}")
        minisr.manual_seed(args.seed)
        model = VDSR(depth=args.depth, features=args.features, residual=residual)
        before = gradient_trace(model, probe_x, probe_t)
        res = train(model, data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    budget=args.budget / 2, log=max(args.steps // 2, 1))
        after = gradient_trace(model, probe_x, probe_t) if res["status"] != "diverged" else None
        p = psnr(model, val, args.scale) if res["status"] != "diverged" else float("nan")
        runs.append(dict(name=name, before=before, after=after, psnr=p, **res))

    print(f"\n{'net':<9}  {'steps':>5}  {'train s':>7}  {'first loss':>10}  {'final loss':>10}  {'val PSNR':>8}  "
          f"{'vs bicubic':>10}")
    print(f"{'bicubic':<9}  {'':>5}  {'':>7}  {'':>10}  {'':>10}  {bicubic:8.2f}  {0.0:+10.2f}")
    for r in runs:
        first = np.mean(r["losses"][:5]) if r["losses"] else float("nan")
        final = np.mean(r["losses"][-10:]) if r["losses"] else float("nan")
        note = {"budget": "  (stopped by the budget)", "diverged": "  (diverged)"}.get(r["status"], "")
        print(f"{r['name']:<9}  {r['steps']:>5}  {r['seconds']:7.1f}  {first:10.5f}  {final:10.5f}  {r['psnr']:8.2f}  "
              f"{r['psnr'] - bicubic:+10.2f}{note}")

    print("\n|dE/d output| of each conv layer on a fixed batch (minisr.autograd.trace), before and after training:")
    cols = [(r["name"], when, r[when]) for when in ("before", "after") for r in runs if r[when] is not None]
    print(f"{'layer':<10}" + "".join(f"  {n + ' ' + w:>16}" for n, w, _ in cols))
    per = [{rec.layer: rec.grad_norm for rec in tr.layers("conv2d")} for *_, tr in cols]
    for layer in [rec.layer for rec in cols[0][2].layers("conv2d")]:
        print(f"{layer:<10}" + "".join(f"  {p[layer]:16.3e}" for p in per))
    for n, w, tr in cols:
        g = [rec.grad_norm for rec in tr.layers("conv2d")]
        print(f"  {n} {w}: first layer / last layer = {g[0] / g[-1]:.3g}")

    png = out_dir(args) / "05_residual_vs_plain.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.4))
    a, b, c = fig.subplots(1, 3)
    for r in runs:
        a.plot(np.arange(1, len(r["losses"]) + 1), smooth(r["losses"]), label=f"{r['name']} ({r['psnr']:.2f} dB)")
    a.set(xlabel="step", ylabel="MSE (running mean of 10)", yscale="log", title="training loss (val PSNR)")
    a.legend(fontsize=8)
    for ax, when in ((b, "before"), (c, "after")):
        for r in runs:
            if r[when] is not None:
                r[when].plot(ax=ax, label=r["name"], param=True)
        ax.set_title(f"gradient norm per conv layer, {when} training", fontsize=10)
    save_figure(fig, png, f"VDSR-{args.depth} x{args.scale}: global residual against plain", args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
