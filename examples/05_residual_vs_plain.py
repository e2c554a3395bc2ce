"""VDSR with and without its global residual: loss curves, validation PSNR, and the gradient reaching each layer.

VDSR outputs ``input + body(input)``: the body only has to learn the residual between the bicubic input and the HR
image. The plain net (``VDSR(residual=False)``) must reproduce the whole image. Both start from the same weights (He
initialisation, same seed) and see the same batches (Adam, MSE, 32x32 Y patches of scikit-image's photos).

The residual idea is from Kim et al., "Accurate Image Super-Resolution Using Very Deep Convolutional Networks" (CVPR
2016): the input is already a good guess, so the net predicts only the correction, r = HR - bicubic, and the loss is
the squared error of input + r against HR.

Before and after training, one backward pass on a fixed batch runs inside ``minisr.autograd.trace()``, which records
g_l = |dE/d(output of conv layer l)| for every layer. The figure plots g_l / g_last: the gradient that reaches layer l
as a fraction of the gradient entering the last layer (what the loss hands to the network), in forward order. This
ratio is how much the backward sweep through the layers above l shrinks (< 1) or grows (> 1) the gradient,
independent of how large the error is. How to read it:

  * before training the two nets have the same weights, so the same activations and ReLU masks in the body: the
    backward sweep through the body is the same linear map in both. What differs is the gradient fed into it: the
    plain net's error is the whole image (its output starts near 0), the residual net's only the residual, so the
    plain net's is larger (the script prints by how much) and has another direction, which the same map can shrink
    differently. VDSR's residual is one skip around the whole body, not one per layer: it changes what the body has
    to learn, not the path the gradient takes through it.
  * after training the weights differ too: the table and the right panel show where each net's gradient shrinks.

    python examples/05_residual_vs_plain.py [--depth 20 --features 32 --steps 100 --budget 200] [--out DIR] [--tiny]
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
)

import minisr
from minisr import Tensor, autograd
from minisr import functional as F
from minisr.models import VDSR


def gradient_trace(model, x, t) -> autograd.Trace:
    """One traced backward of the MSE on (x, t); the gradients it leaves on the parameters are cleared."""
    loss = F.mse_loss(model(Tensor(x)), Tensor(t))
    with autograd.trace() as tr:  # layers named by the parameters' .name (their module path)
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

    cols = [(r["name"], when, r[when]) for when in ("before", "after") for r in runs if r[when] is not None]
    raw = [[rec.grad_norm for rec in tr.layers("conv2d")] for *_, tr in cols]
    layers = [rec.layer for rec in cols[0][2].layers("conv2d")]
    print("\ng_l = |dE/d output| of each conv layer on a fixed batch (minisr.autograd.trace), as a fraction of g_last "
          "(the gradient entering the last layer), before and after training:")
    print(f"{'layer':<10}" + "".join(f"  {n + ' ' + w:>16}" for n, w, _ in cols))
    for i, layer in enumerate(layers):
        print(f"{layer:<10}" + "".join(f"  {g[i] / g[-1]:16.3g}" for g in raw))
    print(f"{'g_last':<10}" + "".join(f"  {g[-1]:16.3e}" for g in raw) + "   (raw: the scale the ratios divide out)")
    for (n, w, _), g in zip(cols, raw):
        print(f"  {n} {w}: first layer / last layer = {g[0] / g[-1]:.3g}")
    before = {n: g for (n, w, _), g in zip(cols, raw) if w == "before"}
    if len(before) == 2:
        res, pl = before["residual"], before["plain"]
        spread = max(abs(np.log(a / a[-1]) - np.log(b / b[-1])).max() for a, b in [(np.array(res), np.array(pl))])
        same = "nearly the same curve" if spread < np.log(1.25) else "different curves"
        print(f"before training (same weights, so the same backward map through the body): the normalised gradients "
              f"give {same} (largest ratio between them {np.exp(spread):.2f}); what differs is the gradient fed in: "
              f"the plain net's is {pl[-1] / res[-1]:.1f}x the residual net's in norm (its error is the whole image), "
              "and points another way")

    png = out_dir(args) / "05_residual_vs_plain.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.6))
    a, b, c = fig.subplots(1, 3)
    c.sharey(b)
    for r in runs:
        plot_loss(a, r["losses"], f"{r['name']} ({r['psnr']:.2f} dB)")
    a.set(xlabel="step", ylabel="MSE (training batch)", yscale="log")
    a.set_title(f"training loss (legend: val PSNR)\nlight: every step; line: {SMOOTHING}", fontsize=9)
    legend_outside(a)
    x = np.arange(1, len(layers) + 1)
    for ax, when in ((b, "before"), (c, "after")):
        for (n, w, _), g in zip(cols, raw):
            if w == when:
                ax.plot(x, np.asarray(g) / g[-1], "o-" if n == "residual" else "s--", label=n)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(yscale="log", xlabel="conv layer (forward order)", title=f"{when} training")
        ax.set_xticks(x)
        ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    b.set_ylabel("g_l / g_last  (g = |dE/d output| of a conv layer)")
    legend_outside(c)
    save_figure(fig, png, f"VDSR-{args.depth} x{args.scale}: global residual against plain", args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
