"""Winograd F(4x4, 3x3) and F(2x2, 5x5) against minisr's direct convolution, in ONE process, alternating A/B call
by call (``MINISR_CONV=direct`` / ``winograd`` switched between calls), medians: the conv layers of the benchmark
(SRCNN's 5x5 middle layer, VDSR's and EDSR's 3x3 ones) and the SRCNN / VDSR-20 / EDSR-baseline training steps
(direct against ``auto``, the default); and the float32 error of each layer against float64.

    python bench/winograd_ab.py                        # timings (~3 min on 2 cores) and the error table
    python bench/winograd_ab.py --repeats 30 --cases conv
    python bench/winograd_ab.py --errors-only
    python bench/winograd_ab.py --tiny --repeats 2     # smoke test

Timing: each repetition runs direct then winograd (then the next pass), so the two see the same machine
load; the ratio is the median winograd
time / the median direct time. Noisy machines (other jobs) shift both alike.

Errors (float32, the benchmark's random data): for the forward output, the input gradient and the weight
gradient of each layer, ``max |a - r| / max |r|`` and ``mean |a - r| / mean |r|`` of direct (a = float32 direct
conv) and Winograd (a = float32 Winograd) against r = the float64 direct conv of the same (float32) numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402  (sets the thread environment before NumPy loads)
import numpy as np  # noqa: E402

LAYERS = ["conv-srcnn2", "conv-vdsr", "conv-edsr", "conv-edsr-up"]


def _median(v):
    return float(np.median(v))


def _conv_mode(mode):
    os.environ["MINISR_CONV"] = mode


def time_ab(fns, repeats, warmup=1, modes=None):
    """{(variant, pass): [seconds]} with fns {(variant, pass): fn}, variants alternating call by call, each under
    MINISR_CONV = modes.get(variant, variant)."""
    times = {k: [] for k in fns}
    for rep in range(warmup + repeats):
        for (variant, p), fn in fns.items():
            _conv_mode((modes or {}).get(variant, variant))
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if rep >= warmup:
                times[(variant, p)].append(dt)
    return times


def layer_fns(case):
    """conv2d forward, forward + backward, and each of the three kernels alone."""
    from minisr.backends import numba as nb

    x, w, b, G = C.conv_arrays(case, np.float32)
    fwd, fwd_bwd = C.minisr_conv(case, x, w, b, G)
    O, geo = w.shape[0], (case.k, case.k, 1, 1, case.pad, case.pad)
    w2, g = w.reshape(O, -1), G.reshape(G.shape[0], O, -1)
    passes = (("fwd", fwd), ("fwd+bwd", fwd_bwd), ("kernel: forward", lambda: nb.conv_forward(x, w2, *geo)),
              ("kernel: input grad", lambda: nb.conv_input_grad(w2, g, x.shape, *geo)),
              ("kernel: weight grad", lambda: nb.conv_weight_grad(g, x, *geo)))
    return {(v, p): fn for p, fn in passes for v in ("direct", "winograd")}


def step_fns(case):
    x, y = C.model_arrays(case, np.float32)
    out = {}
    for v in ("direct", "winograd"):
        model = C.minisr_model(case, np.float32)
        out[(v, "step")] = C.minisr_step(case, model, x, y)
    return out


def errors(case):
    """Rows of the error table for one layer shape."""
    import minisr
    import minisr.functional as F

    x, w, b, G = C.conv_arrays(case, np.float32)

    def run(mode, dt):
        _conv_mode(mode)
        tx = minisr.Tensor(x.astype(dt), requires_grad=True)
        tw = minisr.Tensor(w.astype(dt), requires_grad=True)
        out = F.conv2d(tx, tw, minisr.Tensor(b.astype(dt)), 1, case.pad)
        out.backward(G.astype(dt))
        return {"output": out.data, "input grad": tx.grad, "weight grad": tw.grad}

    ref = run("direct", np.float64)
    res = {mode: run(mode, np.float32) for mode in ("direct", "winograd")}
    rows = []
    for what, r in ref.items():
        row = dict(case=case.label, what=what)
        for mode, got in res.items():
            d = np.abs(got[what].astype(np.float64) - r)
            row[f"{mode}_max"] = float(d.max() / np.abs(r).max())
            row[f"{mode}_mean"] = float(d.mean() / np.abs(r).mean())
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--step-repeats", type=int, default=7)
    ap.add_argument("--steps", default="train-srcnn,train-vdsr,train-edsr",
                    help="training-step case ids (timed under MINISR_CONV=direct and auto, the default)")
    ap.add_argument("--cases", default="conv,train", help="conv, train, or both (comma-separated)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--errors-only", action="store_true")
    args = ap.parse_args(argv)
    C.init(C.THREADS, "numba", torch=False)
    convs = [C.conv_case(c, args.tiny) for c in C.CONV_CASES if c.id in LAYERS]
    print(f"threads {C.THREADS}; load average {os.getloadavg()[0]:.2f}", flush=True)
    print("\nfloat32 error vs the float64 direct conv (relative: max |a-r| / max |r|, mean |a-r| / mean |r|)")
    print("| layer | result | direct max | direct mean | Winograd max | Winograd mean |")
    print("|---|---|---:|---:|---:|---:|")
    for case in convs:
        for r in errors(case):
            print(f"| {r['case']} | {r['what']} | {r['direct_max']:.2e} | {r['direct_mean']:.2e} | "
                  f"{r['winograd_max']:.2e} | {r['winograd_mean']:.2e} |", flush=True)
    if args.errors_only:
        return
    print("\n| case | pass | direct ms | Winograd ms | Winograd / direct |")
    print("|---|---|---:|---:|---:|")
    wanted = args.cases.split(",")
    todo = []
    if "conv" in wanted:
        todo += [(c.label, layer_fns(c), args.repeats, None) for c in convs]
    if "train" in wanted:  # (a step's Winograd column: the default, auto, which leaves the small layers direct)
        todo += [(c.label, step_fns(C.model_case(c, args.tiny)), args.step_repeats, {"winograd": "auto"})
                 for c in C.MODEL_CASES if c.id in args.steps.split(",")]
    for label, fns, repeats, modes in todo:
        times = time_ab(fns, repeats, modes=modes)
        for p in dict.fromkeys(p for _, p in fns):
            d, w = _median(times[("direct", p)]), _median(times[("winograd", p)])
            print(f"| {label} | {p} | {d * 1e3:.2f} | {w * 1e3:.2f} | {w / d:.2f} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
