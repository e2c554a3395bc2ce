"""The convolution layer's equations, checked three ways on a tiny image: channels, stride, zero padding and a bias.

Forward: an image y with C channels, N x N pixels, zero-padded by p on every side (yp), an O x C x m x m filter bank
w, a bias b, stride s. Output channel o at position (i, j) is the bias plus the filter's weighted sum over the window
that starts at (i s, j s):

    x[o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] yp[c, i*s + u, j*s + v],      i, j = 0 .. (N + 2p - m) // s

(with C = O = 1, s = 1, p = 0, b = 0 this is the single-filter sum x(i, j) = sum_{u, v} w(u, v) y(i + u, j + v)).
Error E = mean over all outputs of (x - t)^2 against a target t, so dE/dx = 2 (x - t) / n. The gradients:

    dE/dw[o, c, u, v] = sum_{i, j} dE/dx[o, i, j] yp[c, i*s + u, j*s + v]     (the weight is shared by every window)
    dE/db[o]          = sum_{i, j} dE/dx[o, i, j]                            (b[o] is added to every output of o)
    dE/dyp[c, a, b']  = sum of dE/dx[o, i, j] w[o, c, u, v] over every (o, i, j, u, v) with i*s + u = a, j*s + v = b'
    dE/dy             = dE/dyp without its padding (the zeros are constants, their gradient is dropped)

This script computes them three ways:
  1. "by hand": the sums above as Python loops;
  2. "engine": minisr's conv2d (im2col + GEMM) and loss.backward();
  3. "finite differences": (E(w + h e) - E(w - h e)) / 2h for every entry of w, b and y, E from the forward loops,
prints the largest differences between them, shows minisr.autograd.trace() of the engine's backward, and draws the
gradient maps of the first channel.

    python examples/01_conv_backprop_by_hand.py [--size 12 --kernel 5 --channels 2 --out-channels 3 --stride 1
                                                 --padding 0 --no-bias] [--out DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import minisr
from minisr import Tensor, autograd
from minisr import functional as F


def pad(y, p):
    """yp: y (C, N, N) with p zeros on every side."""
    return np.pad(y, ((0, 0), (p, p), (p, p)))


def out_size(N, m, s, p):
    return (N + 2 * p - m) // s + 1


def forward_by_hand(y, w, b, s, p):
    """x[o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] yp[c, i*s + u, j*s + v], as loops."""
    O, C, m, _ = w.shape
    yp, n = pad(y, p), out_size(y.shape[1], m, s, p)
    x = np.zeros((O, n, n))
    for o in range(O):
        for i in range(n):
            for j in range(n):
                x[o, i, j] = b[o]
                for c in range(C):
                    for u in range(m):
                        for v in range(m):
                            x[o, i, j] += w[o, c, u, v] * yp[c, i * s + u, j * s + v]
    return x


def error(x, t):
    return np.mean((x - t) ** 2)


def weight_grad_by_hand(y, dE_dx, m, s, p):
    """dE/dw[o, c, u, v] = sum_{i, j} dE/dx[o, i, j] yp[c, i*s + u, j*s + v]."""
    O, n = dE_dx.shape[0], dE_dx.shape[1]
    yp, C = pad(y, p), y.shape[0]
    dw = np.zeros((O, C, m, m))
    for o in range(O):
        for c in range(C):
            for u in range(m):
                for v in range(m):
                    for i in range(n):
                        for j in range(n):
                            dw[o, c, u, v] += dE_dx[o, i, j] * yp[c, i * s + u, j * s + v]
    return dw


def bias_grad_by_hand(dE_dx):
    """dE/db[o] = sum_{i, j} dE/dx[o, i, j]."""
    db = np.zeros(dE_dx.shape[0])
    for o in range(dE_dx.shape[0]):
        for i in range(dE_dx.shape[1]):
            for j in range(dE_dx.shape[2]):
                db[o] += dE_dx[o, i, j]
    return db


def input_grad_by_hand(w, dE_dx, y_shape, s, p):
    """Each output sends dE/dx[o, i, j] w[o, c, u, v] back to the padded pixel its window read, (i*s + u, j*s + v)
    (what col2im does, the adjoint of im2col); the padding's share is dropped at the end."""
    O, C, m, _ = w.shape
    n = dE_dx.shape[1]
    dyp = np.zeros((C, y_shape[1] + 2 * p, y_shape[2] + 2 * p))
    for o in range(O):
        for i in range(n):
            for j in range(n):
                for c in range(C):
                    for u in range(m):
                        for v in range(m):
                            dyp[c, i * s + u, j * s + v] += dE_dx[o, i, j] * w[o, c, u, v]
    return dyp[:, p:p + y_shape[1], p:p + y_shape[2]]


def finite_differences(f, a, h):
    """(f(a + h e_k) - f(a - h e_k)) / 2h for every entry k of the array a."""
    g = np.zeros_like(a)
    for k in np.ndindex(a.shape):
        e = np.zeros_like(a)
        e[k] = h
        g[k] = (f(a + e) - f(a - e)) / (2 * h)
    return g


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=12, help="image side N (default 12)")
    ap.add_argument("--kernel", type=int, default=5, help="filter side m (default 5)")
    ap.add_argument("--channels", type=int, default=2, help="input channels C (default 2)")
    ap.add_argument("--out-channels", type=int, default=3, help="output channels O (default 3)")
    ap.add_argument("--stride", type=int, default=1, help="stride s (default 1)")
    ap.add_argument("--padding", type=int, default=0, help="zero padding p on every side (default 0)")
    ap.add_argument("--no-bias", action="store_true", help="a layer without the bias b")
    ap.add_argument("--h", type=float, default=1e-6, help="finite-difference step (default 1e-6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="output folder")
    ap.add_argument("--tiny", action="store_true", help="a 7x7 image with 2 channels, 2 output channels, a 3x3 filter, "
                                                        "stride 2 and padding 1 (CI)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.size, args.kernel, args.channels, args.out_channels, args.stride, args.padding = 7, 3, 2, 2, 2, 1
    N, m, C, O, s, p = args.size, args.kernel, args.channels, args.out_channels, args.stride, args.padding
    if min(N, m, C, O, s) < 1 or p < 0 or N + 2 * p < m:
        ap.error(f"need size, kernel, channels, out-channels, stride >= 1, padding >= 0 and size + 2 padding >= "
                 f"kernel; got size {N}, kernel {m}, channels {C}, out-channels {O}, stride {s}, padding {p}")
    bias = not args.no_bias
    n = out_size(N, m, s, p)
    rng = np.random.default_rng(args.seed)
    y = rng.random((C, N, N))  # the image (float64 throughout, so the finite differences are accurate)
    w = rng.normal(0.0, 0.3, (O, C, m, m))
    b = rng.normal(0.0, 0.3, O) if bias else np.zeros(O)
    t = rng.random((O, n, n))

    # 1. by hand
    t0 = time.perf_counter()
    x = forward_by_hand(y, w, b, s, p)
    dE_dx = 2.0 * (x - t) / x.size
    dw_hand = weight_grad_by_hand(y, dE_dx, m, s, p)
    db_hand = bias_grad_by_hand(dE_dx)
    dy_hand = input_grad_by_hand(w, dE_dx, y.shape, s, p)
    s_hand = time.perf_counter() - t0

    # 2. the engine: conv2d on (N, C, H, W) = (1, C, N, N) with an OIHW weight (O, C, m, m)
    y_t = Tensor(y[None].copy(), requires_grad=True)
    w_t = Tensor(w.copy(), requires_grad=True)
    b_t = Tensor(b.copy(), requires_grad=True) if bias else None
    F.conv2d(y_t, w_t, b_t, stride=s, padding=p)  # warm-up: loads the compiled kernels, so the timing below is the sum
    t0 = time.perf_counter()
    x_t = F.conv2d(y_t, w_t, b_t, stride=s, padding=p)
    loss = F.mse_loss(x_t, Tensor(t[None].copy()))
    with autograd.trace(params={"w": w_t, "b": b_t, "y": y_t} if bias else {"w": w_t, "y": y_t}) as tr:
        loss.backward()
    s_engine = time.perf_counter() - t0
    dw_engine, dy_engine = w_t.grad, y_t.grad[0]
    db_engine = b_t.grad if bias else np.zeros(O)

    # 3. finite differences of E, with the forward loops
    t0 = time.perf_counter()
    dw_fd = finite_differences(lambda a: error(forward_by_hand(y, a, b, s, p), t), w, args.h)
    db_fd = finite_differences(lambda a: error(forward_by_hand(y, w, a, s, p), t), b, args.h)
    dy_fd = finite_differences(lambda a: error(forward_by_hand(a, w, b, s, p), t), y, args.h)
    s_fd = time.perf_counter() - t0

    print(f"image {C}x{N}x{N}, filters {O}x{C}x{m}x{m}, stride {s}, padding {p}, "
          f"{'with' if bias else 'no'} bias: output {O}x{n}x{n}; E = mean squared error over the {x.size} outputs "
          f"(E = {error(x, t):.6f}; engine {loss.item():.6f}); backend {minisr.backends.cpu_backend_name()}, float64")
    print()
    print("gradient   comparison                      max |difference|   max |gradient|")
    scale_w, scale_b, scale_y = np.abs(dw_hand).max(), np.abs(db_hand).max(), np.abs(dy_hand).max()
    rows = [("dE/dw", "by hand vs engine", dw_hand, dw_engine, scale_w),
            ("dE/dw", "by hand vs finite differences", dw_hand, dw_fd, scale_w),
            ("dE/dw", "engine vs finite differences", dw_engine, dw_fd, scale_w),
            ("dE/db", "by hand vs engine", db_hand, db_engine, scale_b),
            ("dE/db", "by hand vs finite differences", db_hand, db_fd, scale_b),
            ("dE/db", "engine vs finite differences", db_engine, db_fd, scale_b),
            ("dE/dy", "by hand vs engine (col2im)", dy_hand, dy_engine, scale_y),
            ("dE/dy", "by hand vs finite differences", dy_hand, dy_fd, scale_y),
            ("dE/dy", "engine vs finite differences", dy_engine, dy_fd, scale_y)]
    worst = {}
    for g, what, a, c, sc in rows:
        diff = float(np.abs(a - c).max())
        if g == "dE/db" and not bias:
            continue
        worst[(g, "finite" in what)] = max(worst.get((g, "finite" in what), 0.0), diff / sc)
        print(f"{g:<10} {what:<31} {diff:16.3e}   {sc:14.4e}")
    print(f"\ntimes: by hand {s_hand * 1e3:.1f} ms, engine (forward + backward) {s_engine * 1e3:.1f} ms, "
          f"finite differences {s_fd * 1e3:.1f} ms")
    print("\nthe engine's backward, as minisr.autograd.trace() recorded it:")
    tr.table()

    exact = max(v for (g, is_fd), v in worst.items() if not is_fd)
    fd = max(v for (g, is_fd), v in worst.items() if is_fd)
    verdict = "agree" if exact < 1e-12 and fd < 1e-6 else "DISAGREE"
    print(f"\nthe three computations {verdict}: by hand vs engine to {exact:.1e} relative (rounding only), finite "
          f"differences to {fd:.1e} relative (O(h^2) truncation and rounding, step h = {args.h:g})")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "01_conv_backprop_by_hand.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6))
    axes = fig.subplots(2, 4)
    for r, (name, maps) in enumerate([("dE/dw[0, 0]", (dw_hand[0, 0], dw_engine[0, 0], dw_fd[0, 0])),
                                      ("dE/dy[0]", (dy_hand[0], dy_engine[0], dy_fd[0]))]):
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
    bias_note = (f"\ndE/db: by hand {np.array2string(db_hand[:4], precision=4)}{' ...' if O > 4 else ''}, max "
                 f"|difference| {np.abs(db_hand - db_engine).max():.1e} from the engine, "
                 f"{np.abs(db_hand - db_fd).max():.1e} from finite differences") if bias else ""
    fig.suptitle(f"conv layer gradients (first channel), {C}x{N}x{N} image, {O}x{C}x{m}x{m} filters, stride {s}, "
                 f"padding {p}: the three computations {verdict}{bias_note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"\nwrote {png}")
    return 0 if verdict == "agree" else 1


if __name__ == "__main__":
    raise SystemExit(main())
