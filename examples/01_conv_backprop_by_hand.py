"""The seed report's convolution equations, checked three ways on a tiny image.

Forward (valid convolution of an N x N image y with an m x m filter w, as in the report):

    x(i, j) = sum_{c=0}^{m-1} sum_{d=0}^{m-1} w(c, d) y(i + c, j + d),      i, j = 0 .. N - m

Error E = mean over (i, j) of (x(i, j) - t(i, j))^2 against a target t, so dE/dx(i, j) = 2 (x(i, j) - t(i, j)) / n.
Weight gradient (weight sharing: w(c, d) appears in every x(i, j)):

    dE/dw(c, d) = sum_{i=0}^{N-m} sum_{j=0}^{N-m} dE/dx(i, j) y(i + c, j + d)

This script computes dE/dw (and dE/dy, the gradient passed to the layer below) three ways:
  1. "by hand": the double sums above as Python loops;
  2. "engine": minisr's conv2d (im2col + GEMM) and loss.backward();
  3. "finite differences": (E(w + h e_cd) - E(w - h e_cd)) / 2h, with E computed by the forward loop,
prints the largest differences between them, shows minisr.autograd.trace() of the engine's backward, and draws the
three gradient maps.

    python examples/01_conv_backprop_by_hand.py [--size 12 --kernel 5] [--out DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import minisr
from minisr import Tensor, autograd
from minisr import functional as F


def forward_by_hand(y, w):
    """x(i, j) = sum_{c, d} w(c, d) y(i + c, j + d): the report's equation, as loops."""
    N, m = y.shape[0], w.shape[0]
    x = np.zeros((N - m + 1, N - m + 1))
    for i in range(N - m + 1):
        for j in range(N - m + 1):
            for c in range(m):
                for d in range(m):
                    x[i, j] += w[c, d] * y[i + c, j + d]
    return x


def error(x, t):
    return np.mean((x - t) ** 2)


def weight_grad_by_hand(y, dE_dx, m):
    """dE/dw(c, d) = sum_{i, j} dE/dx(i, j) y(i + c, j + d)."""
    n_out = dE_dx.shape[0]
    dw = np.zeros((m, m))
    for c in range(m):
        for d in range(m):
            for i in range(n_out):
                for j in range(n_out):
                    dw[c, d] += dE_dx[i, j] * y[i + c, j + d]
    return dw


def input_grad_by_hand(w, dE_dx, N):
    """dE/dy(a, b) = sum of dE/dx(i, j) w(c, d) over every (i, j, c, d) with i + c = a, j + d = b: each output
    sends its gradient back to the pixels its window read (what col2im does, the adjoint of im2col)."""
    m, n_out = w.shape[0], dE_dx.shape[0]
    dy = np.zeros((N, N))
    for i in range(n_out):
        for j in range(n_out):
            for c in range(m):
                for d in range(m):
                    dy[i + c, j + d] += dE_dx[i, j] * w[c, d]
    return dy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=12, help="image side N (default 12)")
    ap.add_argument("--kernel", type=int, default=5, help="filter side m (default 5)")
    ap.add_argument("--h", type=float, default=1e-6, help="finite-difference step (default 1e-6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="output folder")
    ap.add_argument("--tiny", action="store_true", help="a 6x6 image and a 3x3 filter (CI)")
    args = ap.parse_args(argv)
    N, m = (6, 3) if args.tiny else (args.size, args.kernel)
    rng = np.random.default_rng(args.seed)
    y = rng.random((N, N))  # the image (float64 throughout, so the finite differences are accurate)
    w = rng.normal(0.0, 0.3, (m, m))
    t = rng.random((N - m + 1, N - m + 1))

    # 1. by hand
    t0 = time.perf_counter()
    x = forward_by_hand(y, w)
    dE_dx = 2.0 * (x - t) / x.size
    dw_hand = weight_grad_by_hand(y, dE_dx, m)
    dy_hand = input_grad_by_hand(w, dE_dx, N)
    s_hand = time.perf_counter() - t0

    # 2. the engine: conv2d on (N, C, H, W) = (1, 1, N, N) with an OIHW weight (1, 1, m, m)
    y_t = Tensor(y[None, None].copy(), requires_grad=True)
    w_t = Tensor(w[None, None].copy(), requires_grad=True)
    F.conv2d(y_t, w_t)  # warm-up: loads the compiled kernels, so the timing below is the computation
    t0 = time.perf_counter()
    x_t = F.conv2d(y_t, w_t)
    loss = F.mse_loss(x_t, Tensor(t[None, None].copy()))
    with autograd.trace(params={"w": w_t, "y": y_t}) as tr:
        loss.backward()
    s_engine = time.perf_counter() - t0
    dw_engine, dy_engine = w_t.grad[0, 0], y_t.grad[0, 0]

    # 3. finite differences of E, with the forward loop
    t0 = time.perf_counter()
    dw_fd = np.zeros((m, m))
    dy_fd = np.zeros((N, N))
    for c in range(m):
        for d in range(m):
            e = np.zeros((m, m))
            e[c, d] = args.h
            dw_fd[c, d] = (error(forward_by_hand(y, w + e), t) - error(forward_by_hand(y, w - e), t)) / (2 * args.h)
    for a in range(N):
        for b in range(N):
            e = np.zeros((N, N))
            e[a, b] = args.h
            dy_fd[a, b] = (error(forward_by_hand(y + e, w), t) - error(forward_by_hand(y - e, w), t)) / (2 * args.h)
    s_fd = time.perf_counter() - t0

    print(f"image {N}x{N}, filter {m}x{m}, E = mean squared error over the {x.size} outputs "
          f"(E = {error(x, t):.6f}; engine {loss.item():.6f}); backend {minisr.backends.cpu_backend_name()}, float64")
    print()
    print("gradient   comparison                      max |difference|   max |gradient|")
    scale_w, scale_y = np.abs(dw_hand).max(), np.abs(dy_hand).max()
    rows = [("dE/dw", "by hand vs engine", dw_hand, dw_engine, scale_w),
            ("dE/dw", "by hand vs finite differences", dw_hand, dw_fd, scale_w),
            ("dE/dw", "engine vs finite differences", dw_engine, dw_fd, scale_w),
            ("dE/dy", "by hand vs engine (col2im)", dy_hand, dy_engine, scale_y),
            ("dE/dy", "by hand vs finite differences", dy_hand, dy_fd, scale_y),
            ("dE/dy", "engine vs finite differences", dy_engine, dy_fd, scale_y)]
    worst = {}
    for g, what, a, b, s in rows:
        diff = float(np.abs(a - b).max())
        worst[(g, "finite" in what)] = max(worst.get((g, "finite" in what), 0.0), diff / s)
        print(f"{g:<10} {what:<31} {diff:16.3e}   {s:14.4e}")
    print(f"\ntimes: by hand {s_hand * 1e3:.1f} ms, engine (forward + backward) {s_engine * 1e3:.1f} ms, "
          f"finite differences {s_fd * 1e3:.1f} ms")
    print("\nthe engine's backward, as minisr.autograd.trace() recorded it:")
    tr.table()

    exact = max(worst[("dE/dw", False)], worst[("dE/dy", False)])
    fd = max(worst[("dE/dw", True)], worst[("dE/dy", True)])
    verdict = "agree" if exact < 1e-12 and fd < 1e-6 else "DISAGREE"
    print(f"\nthe three computations {verdict}: by hand vs engine to {exact:.1e} relative (rounding only), finite "
          f"differences to {fd:.1e} relative (O(h^2) truncation and rounding, step h = {args.h:g})")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "01_conv_backprop_by_hand.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6))
    axes = fig.subplots(2, 4)
    for r, (name, maps) in enumerate([("dE/dw", (dw_hand, dw_engine, dw_fd)), ("dE/dy", (dy_hand, dy_engine, dy_fd))]):
        lim = np.abs(maps[0]).max()
        for k, (title, a) in enumerate(zip(("by hand (loops)", "engine (im2col/col2im)", "finite differences"), maps)):
            im = axes[r, k].imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[r, k].set_title(f"{name}: {title}", fontsize=9)
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
        fig.colorbar(im, ax=axes[r, 2], fraction=0.046)
        diff = np.abs(maps[0] - maps[2])
        im = axes[r, 3].imshow(diff, cmap="magma")
        axes[r, 3].set_title(f"|by hand - finite diff.|\nmax {diff.max():.1e}", fontsize=9, loc="left")
        axes[r, 3].set_xticks([])
        axes[r, 3].set_yticks([])
        fig.colorbar(im, ax=axes[r, 3], fraction=0.046)
    fig.suptitle(f"conv layer gradients, {N}x{N} image, {m}x{m} filter: the three computations agree")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"\nwrote {png}")
    return 0 if verdict == "agree" else 1


if __name__ == "__main__":
    raise SystemExit(main())
