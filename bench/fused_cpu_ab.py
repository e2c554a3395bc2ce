"""Fused conv epilogues vs separate passes, by CPU time on ONE Numba thread (``time.process_time``: time spent
waiting for a CPU that other processes hold is not counted). Alternating call by call in one process; minimum
and median, and the ratio of the wall-clock medians beside.

Why process time and not the calling thread's (``time.thread_time``, as bench/winograd_cpu_ab.py): with
NUMBA_NUM_THREADS=1 the conv kernels run on the calling thread, but a ``prange`` kernel -- bias_add, relu_*,
bias_grad, exactly the separate passes compared here -- runs on Numba's one worker thread, which the caller's
clock does not see (measured: relu_backward on a VDSR activation 0.16 ms of thread time, 0.46 ms wall). Process
time counts it (and whatever CPU the caller spends waiting for it).

    NUMBA_NUM_THREADS=1 python bench/fused_cpu_ab.py [--repeats 15] [--step-repeats 5]

"fused": the default (conv2d_relu for Conv2d + ReLU, bias and ReLU in the conv's passes). "separate": what
minisr ran before them -- ``MINISR_FUSE=0`` (the conv kernels, then bias_add / bias_grad / relu_* as passes of
their own) and Conv2d + ReLU as two ops (nn.fusable switched off), the ReLU in place as the models have it.
Layer rows: conv2d + bias + ReLU on the benchmark's layer shapes, forward, and forward + backward (dx, dw, db).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("MINISR_BENCH_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--step-repeats", type=int, default=5)
    ap.add_argument("--steps", default="train-srcnn,train-vdsr,train-edsr", help="model case ids ('' for none)")
    ap.add_argument("--layers", default="conv-vdsr,conv-edsr", help="layer case ids ('' for none)")
    ap.add_argument("--threads", type=int, default=1, help="Numba (and BLAS) threads: 1 as above, or more (then "
                    "set NUMBA_NUM_THREADS too; process time then sums the threads' CPU time)")
    args = ap.parse_args(argv)
    C.init(args.threads, "numba", torch=False)
    import minisr
    import minisr.functional as F
    from minisr import nn

    real_fusable = nn.fusable

    def mode(fused: bool):
        os.environ["MINISR_FUSE"] = "1" if fused else "0"
        nn.fusable = real_fusable if fused else (lambda conv, relu: False)

    todo = []
    for case in C.CONV_CASES:
        if case.id not in args.layers.split(","):
            continue
        x, w, b, G = C.conv_arrays(case, np.float32)
        tx = minisr.Tensor(x, requires_grad=case.input_grad)
        tw, tb = minisr.Tensor(w, requires_grad=True), minisr.Tensor(b, requires_grad=True)

        def layer(fused, tx=tx, tw=tw, tb=tb, pad=case.pad):
            return F.conv2d_relu(tx, tw, tb, 1, pad) if fused else F.relu(F.conv2d(tx, tw, tb, 1, pad), inplace=True)

        def fwd(fused, layer=layer):
            with minisr.no_grad():
                layer(fused)

        def fwd_bwd(fused, layer=layer, tx=tx, tw=tw, tb=tb, G=G):
            tx.grad = tw.grad = tb.grad = None
            layer(fused).backward(G)

        todo += [(case.label + " conv+bias+ReLU", "forward", fwd, args.repeats),
                 (case.label + " conv+bias+ReLU", "fwd+bwd", fwd_bwd, args.repeats)]
    for c in C.MODEL_CASES:
        if c.id in args.steps.split(","):
            xs, ys = C.model_arrays(c, np.float32)
            step = C.minisr_step(c, C.minisr_model(c, np.float32), xs, ys)
            todo.append((c.label, "step", lambda fused, step=step: step(), args.step_repeats))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.threads} Numba thread(s), CPU time of the process")
    print("| case | pass | separate ms (min / median) | fused ms (min / median) | ratio of minima "
          "| ratio of medians | wall ratio of medians |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, what, fn, repeats in todo:
        t = {False: [], True: []}
        wall = {False: [], True: []}
        for rep in range(repeats + 1):
            for fused in (False, True) if rep % 2 else (True, False):
                mode(fused)
                t0, w0 = time.process_time(), time.perf_counter()
                fn(fused)
                if rep:
                    t[fused].append(time.process_time() - t0)
                    wall[fused].append(time.perf_counter() - w0)
        s, f = np.array(t[False]) * 1e3, np.array(t[True]) * 1e3
        print(f"| {label} | {what} | {s.min():.1f} / {np.median(s):.1f} | {f.min():.1f} / {np.median(f):.1f} | "
              f"{f.min() / s.min():.2f} | {np.median(f) / np.median(s):.2f} | "
              f"{np.median(wall[True]) / np.median(wall[False]):.2f} |", flush=True)
    mode(True)


if __name__ == "__main__":
    main()
