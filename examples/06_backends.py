"""One conv layer and one training step on every backend: NumPy (the reference), Numba, CuPy (with a GPU) and
PyTorch (when installed), with their times and their largest differences from the NumPy reference.

The same float32 data go through each: the conv layer's forward, then forward + backward with a fixed upstream
gradient G (``out.backward(G)``, so no loss op is timed); then one Adam step of SRCNN 9-5-5 on a fixed batch (MSE on
the valid centre). Times are medians over ``--repeats`` runs after a warm-up, in one process at the same thread count.
Backends that are not available are listed as skipped.

    python examples/06_backends.py [--batch 16 --channels 64 --size 41 --repeats 5] [--out DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np


def import_torch():
    """PyTorch, imported before minisr (as bench/compare.py does), or None."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def timed(fn, repeats: int, sync=lambda: None) -> float:
    """Median seconds of fn() over ``repeats`` runs after one warm-up."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync_for(device: str):
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if device != "cuda":
        return lambda: None
    import cupy

    return cupy.cuda.Device().synchronize


def maxdiff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=64, help="input and output channels of the conv layer")
    ap.add_argument("--size", type=int, default=41, help="image side (default 41, VDSR's patch)")
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="output folder")
    ap.add_argument("--tiny", action="store_true", help="a 2x4x12x12 layer, 2 repeats (CI)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.batch, args.channels, args.size, args.repeats = 2, 4, 12, 2

    torch = import_torch()
    import minisr
    from minisr import Tensor, optim
    from minisr import functional as F
    from minisr.models import SRCNN

    available = minisr.available_backends()
    backends = ["numpy", "numba", "cupy", "torch"]
    skipped = {}
    if "cupy" not in available:
        skipped["cupy"] = "CuPy with a GPU not available"
    if torch is None:
        skipped["torch"] = "PyTorch not installed"
    if "numba" not in available:
        skipped["numba"] = "Numba not importable"

    rng = np.random.default_rng(args.seed)
    N, C, S, k = args.batch, args.channels, args.size, args.kernel
    x = rng.standard_normal((N, C, S, S)).astype(np.float32)
    w = (rng.standard_normal((C, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32)
    bias = rng.standard_normal(C).astype(np.float32) * 0.1
    G = rng.standard_normal((N, C, S, S)).astype(np.float32)  # the upstream gradient (padding k // 2 keeps S)
    pad = k // 2

    # one conv layer: output, gradients, times per backend
    conv = {}
    for name in backends:
        if name in skipped:
            continue
        if name == "torch":
            tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, bias))
            tG = torch.tensor(G)

            def fwd(tx=tx, tw=tw, tb=tb):
                with torch.no_grad():
                    return torch.nn.functional.conv2d(tx, tw, tb, padding=pad)

            def fwd_bwd(tx=tx, tw=tw, tb=tb, tG=tG):
                for t in (tx, tw, tb):
                    t.grad = None
                torch.nn.functional.conv2d(tx, tw, tb, padding=pad).backward(tG)

            out = fwd().numpy()
            fwd_bwd()
            grads = (tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy())
            conv[name] = dict(fwd=timed(fwd, args.repeats), fwd_bwd=timed(fwd_bwd, args.repeats), out=out, grads=grads)
            continue
        device = "cuda" if name == "cupy" else "cpu"
        sync = sync_for(device)
        cpu = "numba" if name == "cupy" else name
        with minisr.use_backend(cpu):
            mx, mw, mb = (Tensor(a, requires_grad=True).to(device) for a in (x, w, bias))
            mG = Tensor(G).to(device)

            def fwd(mx=mx, mw=mw, mb=mb):
                with minisr.no_grad():
                    return F.conv2d(mx, mw, mb, padding=pad)

            def fwd_bwd(mx=mx, mw=mw, mb=mb, mG=mG):
                for t in (mx, mw, mb):
                    t.grad = None
                F.conv2d(mx, mw, mb, padding=pad).backward(mG)

            out = fwd().numpy()
            fwd_bwd()
            host = (lambda a: a.get()) if device == "cuda" else (lambda a: a)
            grads = (host(mx.grad), host(mw.grad), host(mb.grad))
            conv[name] = dict(fwd=timed(fwd, args.repeats, sync), fwd_bwd=timed(fwd_bwd, args.repeats, sync), out=out,
                              grads=grads)

    # one Adam step of SRCNN on a fixed batch, from the same weights
    minisr.manual_seed(args.seed)
    ref_model = SRCNN(kernels=(9, 5, 5), features=(8, 4) if args.tiny else (64, 32))
    init = ref_model.state_dict()
    b = ref_model.border
    patch = 2 * b + (4 if args.tiny else 17)
    xb = rng.random((4 if args.tiny else 16, 1, patch, patch)).astype(np.float32)
    tb_ = np.ascontiguousarray(rng.random(xb.shape).astype(np.float32)[:, :, b:-b, b:-b])
    names = [n for n, _ in ref_model.named_parameters()]

    def minisr_step(device):
        model = SRCNN(kernels=(9, 5, 5), features=ref_model.config["features"])
        model.load_state_dict(init)
        model.to(device)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        loss = F.mse_loss(model(Tensor(xb).to(device)), Tensor(tb_).to(device))
        opt.zero_grad()
        loss.backward()
        grads = {n: Tensor(p.grad).numpy().copy() for n, p in model.named_parameters()}
        opt.step()
        return loss.item(), grads, {n: p.numpy().copy() for n, p in model.named_parameters()}

    def torch_step():
        layers = []
        for i, (f_in, f_out, kk) in enumerate([(1, ref_model.conv1.out_channels, 9),
                                                (ref_model.conv1.out_channels, ref_model.conv2.out_channels, 5),
                                                (ref_model.conv2.out_channels, 1, 5)]):
            c = torch.nn.Conv2d(f_in, f_out, kk)
            with torch.no_grad():
                c.weight.copy_(torch.tensor(init[f"conv{i + 1}.weight"]))
                c.bias.copy_(torch.tensor(init[f"conv{i + 1}.bias"]))
            layers += [c, torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers[:-1])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss = torch.nn.functional.mse_loss(model(torch.tensor(xb)), torch.tensor(tb_))
        opt.zero_grad()
        loss.backward()
        grads = {n: p.grad.numpy().copy() for n, p in zip(names, model.parameters())}
        opt.step()
        return loss.item(), grads, {n: p.detach().numpy().copy() for n, p in zip(names, model.parameters())}

    step = {}
    for name in backends:
        if name in skipped:
            continue
        if name == "torch":
            fn, sync = torch_step, (lambda: None)
        else:
            device = "cuda" if name == "cupy" else "cpu"
            sync = sync_for(device)

            def fn(device=device, cpu="numba" if name == "cupy" else name):
                with minisr.use_backend(cpu):
                    return minisr_step(device)
        result = fn()
        step[name] = dict(time=timed(fn, args.repeats, sync), result=result)

    # report
    threads = f"{os.cpu_count()} cores"
    print(f"one conv layer: x {(N, C, S, S)}, weight {(C, C, k, k)}, padding {pad}, float32; median of "
          f"{args.repeats} after a warm-up, {threads}; differences from the numpy reference")
    head = (f"{'backend':<8}  {'forward ms':>10}  {'fwd+bwd ms':>10}  {'max|out diff|':>13}  {'max|dx diff|':>12}  "
            f"{'max|dw diff|':>12}  {'max|db diff|':>12}")
    print(head)
    print("-" * len(head))
    ref = conv["numpy"]
    agreement = {}  # backend -> max |diff| of out, dx, dw, db, then the step's loss, gradients, parameters
    for name in backends:
        if name in skipped:
            print(f"{name:<8}  skipped: {skipped[name]}")
            continue
        r = conv[name]
        d = [maxdiff(r["out"], ref["out"])] + [maxdiff(a, c) for a, c in zip(r["grads"], ref["grads"])]
        agreement[name] = [v / max(float(np.abs(a).max()), 1e-30)
                           for v, a in zip(d, [ref["out"], *ref["grads"]])]  # relative to the reference's size
        print(f"{name:<8}  {r['fwd'] * 1e3:10.2f}  {r['fwd_bwd'] * 1e3:10.2f}  {d[0]:13.2e}  {d[1]:12.2e}  "
              f"{d[2]:12.2e}  {d[3]:12.2e}")
    print(f"\nmax |output| {np.abs(ref['out']).max():.3g}, max |dw| {np.abs(ref['grads'][1]).max():.3g}: float32 "
          "rounding differs with the order of the sums (im2col + BLAS here, other algorithms in PyTorch)")

    feats = ref_model.config["features"]
    print(f"\none training step: SRCNN 9-5-5 ({feats[0]}, {feats[1]} features), batch {xb.shape}, MSE on the valid "
          f"centre, Adam 1e-3")
    head = (f"{'backend':<8}  {'step ms':>8}  {'loss':>10}  {'|loss diff|':>11}  {'max|grad diff|':>14}  "
            f"{'max|param diff|':>15}")
    print(head)
    print("-" * len(head))
    ref_loss, ref_grads, ref_params = step["numpy"]["result"]
    for name in backends:
        if name in skipped:
            print(f"{name:<8}  skipped: {skipped[name]}")
            continue
        loss, grads, params = step[name]["result"]
        gd = max(maxdiff(grads[n], ref_grads[n]) for n in names)
        pd = max(maxdiff(params[n], ref_params[n]) for n in names)
        agreement[name] += [abs(loss - ref_loss) / abs(ref_loss),
                            gd / max(float(np.abs(ref_grads[n]).max()) for n in names),
                            pd / max(float(np.abs(ref_params[n]).max()) for n in names)]
        print(f"{name:<8}  {step[name]['time'] * 1e3:8.1f}  {loss:10.6f}  {abs(loss - ref_loss):11.2e}  {gd:14.2e}  "
              f"{pd:15.2e}")
    print("(Adam's first step moves every weight by about lr = 1e-3 whatever the gradient's size, so a parameter "
          "difference far below 1e-3 means the backends agree)")

    print("\nlargest |difference| relative to the largest |value| of the reference, per tensor (the right panel):")
    print(f"{'backend':<8}" + "".join(f"  {t:>11}" for t in ("out", "dx", "dw", "db", "step loss", "step grads",
                                                            "step params")))
    for name, vals in agreement.items():
        print(f"{name:<8}" + "".join(f"  {v:11.1e}" for v in vals))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "06_backends.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.2))
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 2.2]})
    done = [n for n in backends if n not in skipped]
    colours = dict(zip(backends, ["#4c72b0", "#55a868", "#c44e52", "#8172b2"]))
    for ax, (title, values) in zip(axes, [("conv forward", [conv[n]["fwd"] for n in done]),
                                          ("conv forward + backward", [conv[n]["fwd_bwd"] for n in done]),
                                          ("SRCNN training step", [step[n]["time"] for n in done])]):
        bars = ax.bar(done, [v * 1e3 for v in values], color=[colours[n] for n in done])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set(title=title, ylabel="ms (median)")
    # the agreement: largest |difference| from the NumPy reference, per tensor, one bar per backend
    ax = axes[3]
    others = [n for n in done if n != "numpy"]
    tensors = ["out", "dx", "dw", "db", "step\nloss", "step\ngrads", "step\nparams"]
    width = 0.8 / max(len(others), 1)
    nonzero = [v for n in others for v in agreement[n] if v > 0]
    floor = min(min(nonzero) / 30, 1e-9) if nonzero else 1e-9
    for k, n in enumerate(others):
        vals = agreement[n]
        pos = np.arange(len(tensors)) + (k - (len(others) - 1) / 2) * width
        ax.bar(pos, [v if v > 0 else np.nan for v in vals], width, bottom=0, color=colours[n], label=n)
        for p, v in zip(pos, vals):
            if v == 0:  # bit-for-bit equal: no bar on a log scale, say so
                ax.text(p, floor * 1.5, "0", ha="center", va="bottom", fontsize=8, color=colours[n])
    ax.set_ylim(bottom=floor)
    ax.set_xticks(np.arange(len(tensors)))
    ax.set_xticklabels(tensors, fontsize=8)
    ax.set(yscale="log", ylabel="max |difference| / max |numpy value|",
           title="agreement with the NumPy reference (0: bit-for-bit equal)")
    ax.axhline(float(np.finfo(np.float32).eps), color="gray", ls=":", lw=1, label="float32 eps")
    if others:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    fig.suptitle(f"minisr backends and PyTorch, {threads}" + (" (tiny run)" if args.tiny else "")
                 + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"\nwrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
