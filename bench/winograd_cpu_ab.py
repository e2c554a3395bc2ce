"""Direct vs Winograd by CPU time on ONE thread (``time.thread_time``: what the calling thread itself ran, so
time spent waiting for a CPU that other processes hold is not counted -- a steadier A/B than wall time on a
busy machine, though cache and SMT contention still show). Alternating call by call, minimum and median.

    NUMBA_NUM_THREADS=1 python bench/winograd_cpu_ab.py [--repeats 15] [--step-repeats 5]
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
    ap.add_argument("--steps", default="train-vdsr")
    ap.add_argument("--layers", default="conv-vdsr,conv-edsr", help="layer case ids ('' for none)")
    ap.add_argument("--modes", default="direct,winograd", help="the two MINISR_CONV settings compared (B / A)")
    args = ap.parse_args(argv)
    C.init(1, "numba", torch=False)
    from minisr.backends import numba as nb

    todo = []
    for case in C.CONV_CASES:
        if case.id not in args.layers.split(","):
            continue
        x, w, b, G = C.conv_arrays(case, np.float32)
        O, geo = w.shape[0], (3, 3, 1, 1, case.pad, case.pad)
        w2, g = w.reshape(O, -1), G.reshape(G.shape[0], O, -1)
        todo += [(case.label, "forward", lambda x=x, w2=w2, geo=geo: nb.conv_forward(x, w2, *geo), args.repeats),
                 (case.label, "input grad", lambda w2=w2, g=g, x=x, geo=geo: nb.conv_input_grad(w2, g, x.shape, *geo),
                  args.repeats),
                 (case.label, "weight grad", lambda g=g, x=x, geo=geo: nb.conv_weight_grad(g, x, *geo), args.repeats)]
    for c in C.MODEL_CASES:
        if c.id in args.steps.split(","):
            xs, ys = C.model_arrays(c, np.float32)
            todo.append((c.label, "step", C.minisr_step(c, C.minisr_model(c, np.float32), xs, ys), args.step_repeats))
    print(f"load average {os.getloadavg()[0]:.2f}; 1 thread, CPU time of the calling thread")
    a, b = args.modes.split(",")
    print(f"| case | kernel | {a} ms (min / median) | {b} ms (min / median) | ratio of minima "
          "| ratio of medians |")
    print("|---|---|---:|---:|---:|---:|")
    for label, what, fn, repeats in todo:
        t = {a: [], b: []}
        for rep in range(repeats + 1):
            for mode in t:
                os.environ["MINISR_CONV"] = mode
                t0 = time.thread_time()
                fn()
                if rep:
                    t[mode].append(time.thread_time() - t0)
        d, w = np.array(t[a]) * 1e3, np.array(t[b]) * 1e3
        print(f"| {label} | {what} | {d.min():.1f} / {np.median(d):.1f} | {w.min():.1f} / {np.median(w):.1f} | "
              f"{w.min() / d.min():.2f} | {np.median(w) / np.median(d):.2f} |", flush=True)


if __name__ == "__main__":
    main()
