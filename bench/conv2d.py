"""conv2d speed: minisr (numba backend by default) against PyTorch, in one process, at the same thread count.

    python bench/conv2d.py                      # all cores, 10 interleaved repetitions
    python bench/conv2d.py --threads 1 --repeats 20 --json results.json

For every layer shape it times the forward pass and forward + backward (``out.backward(G)`` with a fixed
upstream gradient G, so no loss op is timed) of both libraries, alternating minisr / PyTorch inside each
repetition after a warm-up, and prints the median times, GFLOP/s and the ratio minisr / PyTorch (issue 2's
target: <= 2.0).

Threads: ``--threads n`` (default: all cores) sets ``torch.set_num_threads(n)`` and
``numba.set_num_threads(n)``. The BLAS under NumPy (OpenBLAS, which minisr's GEMMs use) keeps its own thread
pool: this script sets ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` to n before NumPy
is imported, unless they are already set.

OpenMP: in one process, Numba's OpenMP threading layer and PyTorch end up on one libgomp (PyTorch loads its
copy into the global symbol scope), whose ``OMP_WAIT_POLICY`` is read once, when the first of them loads it.
minisr wants ``PASSIVE`` (minisr.backends.prefer_passive_openmp: spinning threads slow the BLAS calls between
its kernels) and PyTorch is ~10-20% faster with its default active spinning. So that each library runs as it
would alone, this script sets ``NUMBA_THREADING_LAYER=workqueue`` (unless set): Numba's own thread pool,
no OpenMP, and PyTorch keeps its defaults. (minisr alone, on OpenMP with passive waiting, measured ~10%
faster than on workqueue: the table errs against minisr.)

Both libraries' worker threads keep spinning for a while after a parallel call (OpenBLAS for up to ~0.1 s),
which slows whatever runs next on the same cores. So every timed call is preceded by a ``--pause`` (default
0.2 s) and one untimed call of the same function: it then runs right after its own library's previous call,
as in a training loop, not in the wake of the other library.

FLOPs: forward 2 N O C kh kw Ho Wo; the backward adds the same again for the weight gradient and, when the
input needs a gradient, once more for it. SRCNN's first layer sees the image itself, so (as in training) its
input needs no gradient; the other layers are inner layers and do compute it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

# (name, input shape (N, C, H, W), out channels, kernel, padding, input needs a gradient)
CASES = [
    ("SRCNN layer 1", (128, 1, 33, 33), 64, 9, 0, False),
    ("VDSR middle", (16, 64, 41, 41), 64, 3, 1, True),
    ("EDSR middle", (16, 64, 48, 48), 64, 3, 1, True),
    ("EDSR upsampler", (16, 64, 48, 48), 256, 3, 1, True),
]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for both libraries (default: all cores)")
    ap.add_argument("--repeats", type=int, default=10, help="timed repetitions per case (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    ap.add_argument("--pause", type=float, default=0.2,
                    help="seconds of sleep before every (untimed + timed) pair of calls")
    ap.add_argument("--backend", default="numba", choices=["numba", "numpy"], help="minisr CPU kernel set")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--cases", default="", help="comma-separated case numbers (1-4) to run; default all")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return ap.parse_args(argv)


def make_case(case, dtype, rng):
    """The four timed callables of one layer shape, and its FLOP counts."""
    import numpy as np
    import torch

    import minisr
    import minisr.functional as F

    name, (N, C, H, W), O, k, p, input_grad = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((O, C, k, k)) / np.sqrt(C * k * k)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    Ho, Wo = H + 2 * p - k + 1, W + 2 * p - k + 1
    G = rng.standard_normal((N, O, Ho, Wo)).astype(dtype)

    mx = minisr.Tensor(x, requires_grad=input_grad)
    mw, mb = minisr.Tensor(w, requires_grad=True), minisr.Tensor(b, requires_grad=True)
    tx = torch.from_numpy(x.copy()).requires_grad_(input_grad)
    tw, tb = torch.from_numpy(w.copy()).requires_grad_(), torch.from_numpy(b.copy()).requires_grad_()
    tG = torch.from_numpy(G.copy())

    def m_fwd():
        with minisr.no_grad():
            F.conv2d(mx, mw, mb, 1, p)

    def m_fwd_bwd():
        mw.grad = mb.grad = mx.grad = None
        F.conv2d(mx, mw, mb, 1, p).backward(G)

    def t_fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tw, tb, 1, p)

    def t_fwd_bwd():
        tw.grad = tb.grad = tx.grad = None
        torch.nn.functional.conv2d(tx, tw, tb, 1, p).backward(tG)

    fns = {"minisr fwd": m_fwd, "torch fwd": t_fwd, "minisr fwd+bwd": m_fwd_bwd, "torch fwd+bwd": t_fwd_bwd}
    flop_fwd = 2.0 * N * O * C * k * k * Ho * Wo
    return fns, flop_fwd, flop_fwd * (3 if input_grad else 2)


def time_interleaved(fns, warmup, repeats, pause):
    """Median seconds of each callable; every repetition runs all of them in turn, each timed call right after
    an untimed call of the same callable."""
    import numpy as np

    times = {key: [] for key in fns}
    for rep in range(warmup + repeats):
        for key, fn in fns.items():
            time.sleep(pause)
            fn()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if rep >= warmup:
                times[key].append(dt)
    return {key: float(np.median(v)) for key, v in times.items()}


def main(argv=None):
    args = parse_args(argv)
    n = max(1, int(args.threads))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")  # see the module docstring

    import numba
    import numpy as np
    import torch

    import minisr

    torch.set_num_threads(n)
    numba.set_num_threads(n)
    minisr.set_backend(args.backend)
    rng = np.random.default_rng(0)
    cases = [CASES[int(i) - 1] for i in args.cases.split(",")] if args.cases else CASES

    print(f"minisr {minisr.__version__} ({args.backend}) vs PyTorch {torch.__version__}, {args.dtype}; "
          f"threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}, "
          f"OpenBLAS {os.environ.get('OPENBLAS_NUM_THREADS')}; Numba threading layer "
          f"{os.environ['NUMBA_THREADING_LAYER']}; {args.repeats} interleaved repeats after "
          f"{args.warmup} warm-up, {args.pause:g} s pause + 1 untimed call before each; median times",
          flush=True)

    results = []
    for case in cases:
        fns, flop_fwd, flop_all = make_case(case, np.dtype(args.dtype), rng)
        med = time_interleaved(fns, args.warmup, args.repeats, args.pause)
        name, shape, O, k, p, input_grad = case
        results.append(dict(
            case=name, input=list(shape), out_channels=O, kernel=k, padding=p, input_grad=input_grad,
            flop_fwd=flop_fwd, flop_fwd_bwd=flop_all, **{f"{key} s": v for key, v in med.items()},
            ratio_fwd=med["minisr fwd"] / med["torch fwd"],
            ratio_fwd_bwd=med["minisr fwd+bwd"] / med["torch fwd+bwd"]))

    head = (f"{'case':<16}{'pass':<9}{'minisr ms':>10}{'torch ms':>10}{'minisr GF/s':>13}{'torch GF/s':>12}"
            f"{'ratio':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        for kind, flop, ratio in (("fwd", r["flop_fwd"], r["ratio_fwd"]),
                                  ("fwd+bwd", r["flop_fwd_bwd"], r["ratio_fwd_bwd"])):
            ms, ts = r[f"minisr {kind} s"], r[f"torch {kind} s"]
            print(f"{r['case']:<16}{kind:<9}{ms * 1e3:>10.2f}{ts * 1e3:>10.2f}{flop / ms / 1e9:>13.1f}"
                  f"{flop / ts / 1e9:>12.1f}{ratio:>8.2f}")
    worst = max(max(r["ratio_fwd"], r["ratio_fwd_bwd"]) for r in results)
    print(f"worst ratio minisr/PyTorch: {worst:.2f} (issue 2 target: <= 2.0)")
    if args.json:
        meta = dict(threads=n, backend=args.backend, dtype=args.dtype, repeats=args.repeats,
                    warmup=args.warmup, pause=args.pause, torch=torch.__version__, numpy=np.__version__,
                    numba=numba.__version__, openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS"))
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=2)
    return results


if __name__ == "__main__":
    main()
