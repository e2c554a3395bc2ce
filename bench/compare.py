"""minisr against PyTorch at the same thread count, each library in its own processes (as users run them):
conv2d layers, full training steps, inference, with the sgemm rate of the same run and the peak memory of each
library.

    python bench/compare.py                          # everything, all cores, numba backend (~10 min on 2 cores)
    python bench/compare.py --rounds 2 --repeats 3   # the same, shorter (~6 min)
    python bench/compare.py --same-process           # the old mode: both libraries in one process, interleaved
    python bench/compare.py --cases conv --threads 1 --repeats 20
    python bench/compare.py --markdown bench/RESULTS.md      # ... and append the results to RESULTS.md
    python bench/compare.py --from-json bench/results/compare.json --markdown bench/RESULTS.md   # no re-run
    python bench/compare.py --tiny --quick           # smoke test: tiny shapes, 2 repeats (seconds)

What is timed (float32 by default; ``--cases`` keeps the cases whose id or name contains one of its
comma-separated words, e.g. ``--cases conv,train-edsr``):

* ``sgemm-square`` / ``sgemm-conv``: a float32 ``np.matmul`` of 2048 x 2048 x 2048 and the conv-shaped batch
  16 x (64x576 @ 576x1681) (VDSR's layer as one batched GEMM), the BLAS that minisr's GEMMs call, at the same
  thread count; ``torch.matmul`` beside it. The run's *sgemm rate* is the best NumPy rate of the two, and every
  conv2d row shows its GFLOP/s as a percentage of it (run when a conv case is).
* ``conv-*``: ``conv2d`` forward and forward + backward of four layer shapes (SRCNN layer 1 (128,1,33,33) -> 64
  k9 p0; VDSR middle (16,64,41,41) -> 64 k3 p1; EDSR middle (16,64,48,48) -> 64 k3 p1; EDSR upsampler
  (16,64,48,48) -> 256 k3 p1). The backward is ``out.backward(G)`` with a fixed upstream gradient G, so no loss
  op is timed.
* ``train-*``: one full training step (zero_grad, forward, loss, backward, Adam with lr 1e-4) of SRCNN 9-5-5
  (64-32 features, valid padding; batch 128 of 33x33 inputs, MSE on the 17x17 centre that it outputs), VDSR-20
  (batch 16 of 41x41, MSE) and EDSR-baseline x2 (16 res-blocks x 64; batch 16 of 48x48 LR inputs, 96x96
  targets, L1), on fixed random data.
* ``infer-edsr``: EDSR-baseline x2 on one 512x512 RGB image (no_grad / torch.no_grad; 1024x1024 out).

The PyTorch models are built in bench/_common.py with minisr's parameter names and get minisr's weights through
``load_state_dict``; before timing, each model case checks once (on two images / a 48x48 crop) that the
outputs, loss and gradients agree (the ``check`` column of the JSON, relative errors, ~1e-6 in float32).

FLOPs: a convolution's forward is 2 N O C kh kw Ho Wo; the backward adds the same again for the weight
gradient and, when the input needs a gradient, once more for it. SRCNN's first layer sees the image itself, so
(as in training) its input needs no gradient; the other layers are inner layers and do compute it. Model rows
count their convolutions the same way (hooks on the PyTorch twin).

Threads: ``--threads n`` (default: all cores) sets ``torch.set_num_threads(n)`` and ``numba.set_num_threads(n)``.
The BLAS under NumPy (OpenBLAS, which minisr's GEMMs use) keeps its own thread pool: ``OPENBLAS_NUM_THREADS`` /
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are set to n before NumPy is imported, unless they are already set
(bench/_common.py does it on import, and sets OpenBLAS's count again through its C API).

OpenMP: in one process, Numba's OpenMP threading layer and PyTorch end up on one libgomp (PyTorch loads its
copy into the global symbol scope), whose ``OMP_WAIT_POLICY`` is read once, when the first of them loads it.
minisr wants ``PASSIVE`` (minisr.backends.prefer_passive_openmp: spinning threads slow the BLAS calls between
its kernels) and PyTorch is ~10-20% faster with its default active spinning. So that each library runs as it
would alone, this script sets ``NUMBA_THREADING_LAYER=workqueue`` (unless set): Numba's own thread pool,
no OpenMP, and PyTorch keeps its defaults. (minisr alone, on OpenMP with passive waiting, measured ~10%
faster than on workqueue: the table errs against minisr.)

Separate processes (the default): for each case, ``--rounds`` rounds (default 3) of one child process per
library (``compare.py --time-child CASE LIB``, which imports only that library; PyTorch's models keep their own
initialisation), minisr first in even rounds and PyTorch first in odd ones, so that slow drifts of the machine
hit both alike. Each child runs ``--warmup`` untimed and ``--repeats`` (default 5) timed calls of each pass, back
to back as in a training loop; the table reports, per library, the median over rounds of each round's median
(the JSON keeps every time and the round medians). This process builds both libraries' versions once to check
that they agree and to count FLOPs, but times nothing. Why: in one process PyTorch's OpenMP threads keep
spinning after its call and slow minisr's next call (measured: VDSR step 1.76x PyTorch back to back in one
process, 1.22x in separate processes), and users run one library at a time. A full run takes ~10 minutes on 2
cores, most of it child start-up; ``--rounds 2 --repeats 3`` about 6.

Same process (``--same-process``), interleaving: every repetition runs each case's callables in turn (minisr,
PyTorch; for conv: minisr fwd, torch fwd, minisr fwd+bwd, torch fwd+bwd), after ``--warmup`` untimed rounds, and
the median is reported. Both libraries' worker threads keep spinning for a while after a parallel call (OpenBLAS
for up to ~0.1 s), which slows whatever runs next on the same cores. So every timed call is preceded by a
``--pause`` (default 0.2 s) and one untimed call of the same function: it then runs right after its own library's
previous call, as in a training loop, not in the wake of the other library. (Inference, 5-10 s a call, runs
``--infer-repeats`` rounds after at most one warm-up round.)

Peak memory (``--no-memory`` skips it): for each training/inference case and each library, a separate child
process (``compare.py --memory-child CASE LIB``, which imports only that library) builds the model, the
optimizer and the data batch at full size and runs one warm-up step, with that optimizer, on a tiny batch (so
that one-off costs -- compiling or loading Numba's kernels, PyTorch's lazy initialisation -- are not counted,
and Adam's moment buffers exist), then reads VmRSS from /proc/self/status as the *baseline*, resets the
high-water mark (writing "5" to /proc/self/clear_refs), runs ``--memory-steps`` steps (inference: at most 2
calls) and reads VmHWM as the *peak*. Reported: peak - baseline in MiB, i.e. the resident memory a step adds on
top of the weights, the optimizer state and the batch: activations, gradients, workspaces and allocator caches.
If the reset is refused, the peak also covers everything before the baseline and the JSON says
``hwm_reset: false``.

JAX, where it is importable (``pip install jax``; optional, in no extra): a third column in the separate-process
mode, "jax ms" and "minisr/jax" (the same cases jitted on XLA's CPU backend, bench/_jax.py; a third child per
round, the order of the three rotated round by round; its threads bound to ``--threads`` CPUs). The model cases
check once that JAX, given minisr's weights, computes minisr's output (``jax_check`` in the JSON). ``--no-jax``
leaves it out; ``--same-process`` never has it.

Outputs: the table on screen, ``--json`` (default bench/results/compare.json, with machine details and all
repetition times), ``--plot`` (default bench/results/compare.png: the ratios minisr / PyTorch per case, time
and memory, with a line at 1.0) and ``--markdown FILE`` (appends a dated section: bench/RESULTS.md). An empty
path (``--json ''``) turns an output off. Issue 6's targets are checked at the end (PASS/FAIL): every training
step's time ratio <= 1.0 and their geometric mean <= 0.8; conv2d forward + backward on the VDSR and EDSR layer
shapes at >= 60% of the run's sgemm rate; a training step's peak memory <= 1.25 x PyTorch's.

Reading the numbers: any other busy process changes the results (either way) by far more than 2x. Run it on an
otherwise idle machine (the script prints the load average before and after; check that the sgemm rows are
steady), or compare with ``--threads 1``. NumPy's multi-threaded sgemm alone was seen going from 16 ms to 370 ms
under such load; minisr's conv GEMMs therefore run image by image (or band by band) on single-threaded BLAS
calls (minisr/backends/numba/conv_im2col.py).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "compare.json"
DEFAULT_PLOT = HERE / "results" / "compare.png"
PLACEHOLDER = "_No results recorded yet._"
TARGET_CONV_IDS = ("conv-vdsr", "conv-edsr", "conv-edsr-up")  # the "VDSR and EDSR layer shapes"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:2]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for Numba, OpenBLAS and PyTorch (default: all cores)")
    ap.add_argument("--repeats", type=int, help="timed repetitions per case, median reported (default 10)")
    ap.add_argument("--warmup", type=int, help="untimed repetitions first (default 2)")
    ap.add_argument("--pause", type=float, help="seconds of sleep before every (untimed + timed) pair of calls "
                                                "(default 0.2)")
    ap.add_argument("--infer-repeats", type=int, help="timed repetitions of the inference case (default 3)")
    ap.add_argument("--memory-steps", type=int, help="steps run in each peak-memory child (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 2 repeats, no warm-up rounds, no pause, 1 memory step (numbers meaningless)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (same layers and models), for tests")
    ap.add_argument("--backend", default="numba", choices=["numba", "numpy"], help="minisr CPU kernel set")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--cases", default="", help="comma-separated substrings of case ids/names to run "
                                                "(ids: sgemm-*, conv-srcnn1, conv-srcnn2, conv-vdsr, conv-edsr, "
                                                "conv-edsr-up, train-srcnn, train-vdsr, train-edsr, infer-edsr); "
                                                "default all")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--json", default=str(DEFAULT_JSON), metavar="FILE", help="results as JSON ('' for none)")
    ap.add_argument("--plot", default=str(DEFAULT_PLOT), metavar="FILE", help="bar chart PNG ('' for none)")
    ap.add_argument("--markdown", default="", metavar="FILE", help="append a dated section to this file "
                                                                   "(bench/RESULTS.md)")
    ap.add_argument("--from-json", metavar="FILE",
                    help="measure nothing: print, plot and --markdown the results of an earlier --json")
    ap.add_argument("--same-process", action="store_true",
                    help="time both libraries in this one process, interleaved call by call (the old mode); "
                         "default: each library's case in its own child process, see --rounds")
    ap.add_argument("--rounds", type=int,
                    help="separate-process mode: child processes per library and case, alternating minisr and "
                         "PyTorch (the order flips every round); reported: the median of the rounds' medians "
                         "(default 3)")
    ap.add_argument("--memory-child", nargs=2, metavar=("CASE", "LIB"), help=argparse.SUPPRESS)
    ap.add_argument("--time-child", nargs=2, metavar=("CASE", "LIB"), help=argparse.SUPPRESS)
    ap.add_argument("--no-jax", action="store_true", help="no JAX column even where JAX is importable")
    ap.add_argument("--keep-heap", action="store_true",
                    help="separate-process mode: run PyTorch's (and JAX's) timing children with glibc's mmap and "
                         "trim thresholds at 1 GB, so that freed buffers stay on the heap -- PyTorch's isolated "
                         "layer calls then stop page-faulting a fresh output every call (~5,000 faults, several ms "
                         "per VDSR layer here) and the layer rows compare kernels; steps change little")
    args = ap.parse_args(argv)
    if args.keep_heap and args.same_process:
        ap.error("--keep-heap sets the timing children's memory settings: it needs the separate-process mode, "
                 "not --same-process")
    quick = dict(repeats=2, warmup=0, pause=0.0, infer_repeats=1, memory_steps=1, rounds=1)
    normal = dict(repeats=10 if args.same_process else 5, warmup=2, pause=0.2, infer_repeats=3, memory_steps=3,
                  rounds=3)
    for key, value in (quick if args.quick else normal).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.threads = max(1, int(args.threads))
    args.rounds = max(1, int(args.rounds))
    return args


# ------------------------------------------------------------------------------------------------- timing
def time_interleaved(fns, warmup, repeats, pause):
    """Seconds of each callable per timed repetition; every repetition runs all of them in turn, each timed
    call right after an untimed call of the same callable."""
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
    return times


def _median(v):
    v = sorted(v)
    n = len(v)
    return (v[n // 2] + v[(n - 1) // 2]) / 2


# -------------------------------------------------------------------------------------------------- cases
def select(args, C):
    """[(id, name, kind, spec)] of the cases to run, in table order."""
    words = [w.strip().lower() for w in args.cases.split(",") if w.strip()]

    def wanted(cid, name):
        return not words or any(w in cid or w in name.lower() for w in words)

    conv = [C.conv_case(c, args.tiny) for c in C.CONV_CASES if wanted(c.id, c.label)]
    models = [C.model_case(c, args.tiny) for c in C.MODEL_CASES if wanted(c.id, c.label)]
    sgemm = [(cid, name, spec) for cid, name, spec in sgemm_cases(args, C) if conv or wanted(cid, name)]
    out = [(cid, name, "sgemm", spec) for cid, name, spec in sgemm]
    out += [(c.id, c.label, "conv", c) for c in conv]
    out += [(c.id, c.label, c.mode, c) for c in models]
    if not out:
        raise SystemExit(f"--cases {args.cases!r} matches no case")
    return out


def sgemm_cases(args, C):
    """[(id, name, (batch, m, k, n))]: a square sgemm and VDSR's conv layer as one batched GEMM."""
    n = 256 if args.tiny else 2048
    c = C.conv_case(next(c for c in C.CONV_CASES if c.id == "conv-vdsr"), args.tiny)
    N, Ci, H, W = c.shape
    K, P = Ci * c.k * c.k, (H + 2 * c.pad - c.k + 1) * (W + 2 * c.pad - c.k + 1)
    return [("sgemm-square", f"sgemm {n}^3", (None, n, n, n)),
            ("sgemm-conv", f"sgemm {N}x({c.out}x{K} @ {K}x{P})", (N, c.out, K, P))]


def sgemm_callables(spec, args, libs=("minisr", "torch")):
    """{(lib, pass): fn} and FLOPs of one sgemm case; lib "minisr" is NumPy's matmul (minisr's BLAS)."""
    import numpy as np

    rng = np.random.default_rng(0)
    dt = np.dtype(args.dtype)
    batch, m, k, n = spec
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n) if batch is None else (batch, k, n)).astype(dt)
    out = np.matmul(a, b)  # (untimed) the output array that the timed calls write into
    fns = {}
    if "minisr" in libs:
        fns[("minisr", "gemm")] = lambda: np.matmul(a, b, out=out)
    if "torch" in libs:
        import torch

        ta, tb = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
        tout = torch.empty(tuple(out.shape), dtype=ta.dtype)
        fns[("torch", "gemm")] = lambda: torch.matmul(ta, tb, out=tout)
    return fns, {"gemm": 2.0 * (batch or 1) * m * k * n}, dict(shape=dict(batch=batch, m=m, k=k, n=n))


def conv_callables(case, args, C):
    import numpy as np

    x, w, b, G = C.conv_arrays(case, np.dtype(args.dtype))
    m_fwd, m_fwd_bwd = C.minisr_conv(case, x, w, b, G)
    t_fwd, t_fwd_bwd = C.torch_conv(case, x, w, b, G)
    fns = {("minisr", "fwd"): m_fwd, ("torch", "fwd"): t_fwd,
           ("minisr", "fwd+bwd"): m_fwd_bwd, ("torch", "fwd+bwd"): t_fwd_bwd}
    flop_fwd, flop_all = case.flops()
    info = dict(input=list(case.shape), out_channels=case.out, kernel=case.k, padding=case.pad,
                input_grad=case.input_grad)
    return fns, {"fwd": flop_fwd, "fwd+bwd": flop_all}, info


def model_callables(case, args, C):
    import numpy as np

    dt = np.dtype(args.dtype)
    x, y = C.model_arrays(case, dt)
    mmodel = C.minisr_model(case, dt)
    tmodel = C.torch_model(case, mmodel.state_dict(), dt)
    if case.mode == "infer":  # a crop is enough to show that both compute the same thing
        check = C.models_agree(case, mmodel, tmodel, np.ascontiguousarray(x[:, :, :48, :48]))
    else:
        check = C.models_agree(case, mmodel, tmodel, x[:2].copy(), y[:2].copy())
    flop_fwd, flop_all = C.model_flops(case, tmodel)
    jax_check = _jax_check(case, mmodel, x) if getattr(args, "jax", False) else None
    p = "step" if case.mode == "train" else "fwd"
    fns = {("minisr", p): C.minisr_step(case, mmodel, x, y), ("torch", p): C.torch_step(case, tmodel, x, y)}
    info = dict(model=case.model, config=case.cfg, batch=case.batch, input=case.size, output=case.target,
                loss=case.loss if case.mode == "train" else None, check=check,
                parameters=int(mmodel.num_parameters()))
    if jax_check is not None:
        info["jax_check"] = jax_check
    return fns, {p: flop_all if case.mode == "train" else flop_fwd}, info


def _jax_check(case, mmodel, x) -> dict:
    """{"output": relative error} of JAX's forward (bench/_jax.py) with minisr's weights against minisr's, on
    two images / a 48x48 crop."""
    import _jax as J
    import numpy as np

    import minisr

    x = np.ascontiguousarray(x[:, :, :48, :48] if case.mode == "infer" else x[:2])
    with minisr.no_grad():
        m_out = mmodel(minisr.Tensor(x)).data
    params = {k: np.asarray(v) for k, v in mmodel.state_dict().items() if k in J.param_shapes(case)}
    j_out = np.asarray(J.forward(case)(params, x))
    return {"output": float(np.abs(m_out - j_out).max() / max(np.abs(j_out).max(), 1e-30))}


def case_callables(kind, spec, args, C):
    if kind == "sgemm":
        return sgemm_callables(spec, args)
    if kind == "conv":
        return conv_callables(spec, args, C)
    return model_callables(spec, args, C)


def _rows(cid, name, kind, flops, info, times, rounds=None):
    """Table rows of one case from the times {(lib, pass): [s]} (and, separate processes, the per-round
    medians {(lib, pass): [s]}, whose median is then reported)."""
    rows = []
    for p, flop in flops.items():
        ms, ts = times[("minisr", p)], times[("torch", p)]
        if rounds is None:
            m_med, t_med = _median(ms), _median(ts)
            extra = {}
        else:
            m_med, t_med = _median(rounds[("minisr", p)]), _median(rounds[("torch", p)])
            extra = dict(minisr_round_ms=[t * 1e3 for t in rounds[("minisr", p)]],
                         torch_round_ms=[t * 1e3 for t in rounds[("torch", p)]])
        if rounds is not None and ("jax", p) in rounds:  # the JAX column (separate processes only)
            j_med = _median(rounds[("jax", p)])
            extra.update(jax_ms=j_med * 1e3, jax_ratio=m_med / j_med, jax_gflops=flop / j_med / 1e9,
                         jax_times_ms=[t * 1e3 for t in times[("jax", p)]],
                         jax_round_ms=[t * 1e3 for t in rounds[("jax", p)]])
        rows.append(dict(
            id=cid, case=name, kind=kind, **{"pass": p}, minisr_ms=m_med * 1e3, torch_ms=t_med * 1e3,
            ratio=m_med / t_med, flop=flop, minisr_gflops=flop / m_med / 1e9, torch_gflops=flop / t_med / 1e9,
            minisr_times_ms=[t * 1e3 for t in ms], torch_times_ms=[t * 1e3 for t in ts], **extra, **info))
    return rows


def run_case(cid, name, kind, spec, args, C):
    """Both libraries in this process, interleaved call by call (--same-process)."""
    fns, flops, info = case_callables(kind, spec, args, C)
    infer = kind == "infer"
    times = time_interleaved(fns, min(args.warmup, 1) if infer else args.warmup,
                             args.infer_repeats if infer else args.repeats, args.pause)
    return _rows(cid, name, kind, flops, info, times)


# ---------------------------------------------------------------------------------- separate processes
LIBS = ("minisr", "torch")
ALL_LIBS = LIBS + ("jax",)


def libs(args) -> tuple:
    """The libraries timed: minisr and PyTorch, and JAX where it is importable (separate processes only)."""
    return LIBS + (("jax",) if getattr(args, "jax", False) else ())


def jax_wanted(args) -> bool:
    import _jax as J

    return not args.no_jax and not args.same_process and J.available()


def find_case(cid, args, C):
    """(name, kind, spec) of the case with this id."""
    for c_id, name, spec in sgemm_cases(args, C):
        if c_id == cid:
            return name, "sgemm", spec
    for c in C.CONV_CASES:
        if c.id == cid:
            return c.label, "conv", C.conv_case(c, args.tiny)
    for c in C.MODEL_CASES:
        if c.id == cid:
            c = C.model_case(c, args.tiny)
            return c.label, c.mode, c
    raise SystemExit(f"no case {cid!r}")


def lib_callables(kind, spec, args, C, lib):
    """{pass: fn} of one library only (the other is not imported): a timing child's work. The PyTorch
    models keep PyTorch's own initialisation (the times do not depend on the weights)."""
    import numpy as np

    dt = np.dtype(args.dtype)
    if lib == "jax":
        import _jax as J

        if kind == "sgemm":
            return {"gemm": J.sgemm(spec, dt)}
        if kind == "conv":
            fwd, fwd_bwd = J.conv(spec, *C.conv_arrays(spec, dt))
            return {"fwd": fwd, "fwd+bwd": fwd_bwd}
        return {"step" if kind == "train" else "fwd": J.step(spec, *C.model_arrays(spec, dt))}
    if kind == "sgemm":
        return {p: fn for (_, p), fn in sgemm_callables(spec, args, libs=(lib,))[0].items()}
    if kind == "conv":
        fwd, fwd_bwd = (C.minisr_conv if lib == "minisr" else C.torch_conv)(spec, *C.conv_arrays(spec, dt))
        return {"fwd": fwd, "fwd+bwd": fwd_bwd}
    x, y = C.model_arrays(spec, dt)
    if lib == "minisr":
        step = C.minisr_step(spec, C.minisr_model(spec, dt), x, y)
    else:
        step = C.torch_step(spec, C.torch_model(spec, dtype=dt), x, y)
    return {"step" if kind == "train" else "fwd": step}


def time_child(cid, lib, args, C):
    """Runs in its own process, with only ``lib`` imported: --warmup untimed then --repeats timed calls of each
    pass of case ``cid`` (inference: at most 1 and --infer-repeats), back to back; prints one JSON line."""
    if lib not in ALL_LIBS:
        raise SystemExit(f"--time-child: LIB must be minisr, torch or jax, not {lib!r}")
    if lib == "jax":
        import _jax as J

        J.limit_threads(args.threads)
    C.init(args.threads, args.backend, torch=lib == "torch", minisr=lib == "minisr")
    name, kind, spec = find_case(cid, args, C)
    fns = lib_callables(kind, spec, args, C, lib)
    infer = kind == "infer"
    warmup, repeats = (min(args.warmup, 1), args.infer_repeats) if infer else (args.warmup, args.repeats)
    times = {p: [] for p in fns}
    for rep in range(warmup + repeats):
        for p, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if rep >= warmup:
                times[p].append(dt)
    print(json.dumps(dict(case=cid, lib=lib, times=times)))


def _child_cmd(flag, cid, lib, args):
    return ([sys.executable, str(Path(__file__).resolve()), flag, cid, lib, "--threads", str(args.threads),
             "--backend", args.backend, "--dtype", args.dtype, "--repeats", str(args.repeats), "--warmup",
             str(args.warmup), "--infer-repeats", str(args.infer_repeats), "--memory-steps", str(args.memory_steps)]
            + (["--tiny"] if args.tiny else []))


#: glibc settings of ``--keep-heap``: freed memory stays on the heap instead of going back to the system
KEEP_HEAP = dict(MALLOC_MMAP_THRESHOLD_="1000000000", MALLOC_TRIM_THRESHOLD_="1000000000")


def run_child(cid, lib, args) -> dict:
    """{pass: [seconds]} from a timing child process."""
    env = dict(os.environ, **KEEP_HEAP) if getattr(args, "keep_heap", False) and lib != "minisr" else None
    res = subprocess.run(_child_cmd("--time-child", cid, lib, args), capture_output=True, text=True, env=env)
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])["times"]
    except (IndexError, json.JSONDecodeError, KeyError):
        raise SystemExit(f"timing child {cid} {lib} failed (exit {res.returncode}):\n"
                         f"{(res.stderr or res.stdout)[-3000:]}") from None


def run_case_separate(cid, name, kind, spec, args, C):
    """Each library in its own child processes: --rounds rounds, minisr then PyTorch in even rounds and the
    other way round in odd ones; the median of each round's median is reported. This process only checks
    that both libraries compute the same thing (model cases) and counts the FLOPs."""
    fns, flops, info = case_callables(kind, spec, args, C)
    del fns
    gc.collect()
    order = libs(args)
    times = {(lib, p): [] for lib in order for p in flops}
    rounds = {(lib, p): [] for lib in order for p in flops}
    for r in range(args.rounds):
        for lib in (order if r % 2 == 0 else order[::-1]):
            for p, ts in run_child(cid, lib, args).items():
                times[(lib, p)] += ts
                rounds[(lib, p)].append(_median(ts))
    return _rows(cid, name, kind, flops, info, times, rounds)


# ------------------------------------------------------------------------------------------------- memory
def proc_status() -> dict:
    """VmRSS / VmHWM of this process in MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def memory_child(cid, lib, args, C):
    """Runs in its own process: prints one JSON line with the peak memory of ``lib`` on case ``cid``."""
    import numpy as np

    case = C.model_case(next(c for c in C.MODEL_CASES if c.id == cid), args.tiny)
    dt = np.dtype(args.dtype)
    C.init(args.threads, args.backend, torch=lib == "torch")
    if lib == "minisr":
        model, make_step = C.minisr_model(case, dt), C.minisr_step
    elif lib == "torch":
        model, make_step = C.torch_model(case, dtype=dt), C.torch_step
    else:
        raise SystemExit(f"--memory-child: LIB must be minisr or torch, not {lib!r}")
    x, y = C.model_arrays(case, dt)
    step = make_step(case, model, x, y)
    before_warmup = proc_status()["VmRSS"]
    step(*C.model_arrays(C.model_case(case, tiny=True), dt))  # warm-up on a tiny batch: kernels, Adam's state
    gc.collect()
    baseline = proc_status()["VmRSS"]
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    steps = args.memory_steps if case.mode == "train" else min(args.memory_steps, 2)
    for _ in range(steps):
        step()
    end = proc_status()
    print(json.dumps(dict(case=cid, lib=lib, steps=steps, hwm_reset=reset, rss_before_warmup_mib=before_warmup,
                          baseline_mib=baseline, hwm_mib=end["VmHWM"], rss_end_mib=end["VmRSS"],
                          peak_mib=end["VmHWM"] - baseline, retained_mib=end["VmRSS"] - baseline)))


def measure_memory(cid, args):
    """{lib: child's JSON (or {"error": ...})} for both libraries, one fresh process each."""
    out = {}
    for lib in ("minisr", "torch"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", cid, lib,
               "--threads", str(args.threads), "--backend", args.backend, "--dtype", args.dtype,
               "--memory-steps", str(args.memory_steps)] + (["--tiny"] if args.tiny else [])
        res = subprocess.run(cmd, capture_output=True, text=True)
        try:
            out[lib] = json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            out[lib] = dict(error=f"exit {res.returncode}: {(res.stderr or res.stdout)[-500:]}")
    m, t = out["minisr"].get("peak_mib"), out["torch"].get("peak_mib")
    out["ratio"] = m / t if m is not None and t else None
    return out


# ------------------------------------------------------------------------------------------------ summary
def evaluate_targets(rows) -> list[dict]:
    """Issue 6's targets, for the rows that were run: [{target, value, limit, ok}]."""
    out = []
    train = [r for r in rows if r["kind"] == "train"]
    for r in train:
        out.append(dict(target=f"{r['case']}: time minisr/PyTorch <= 1.0", value=r["ratio"], limit=1.0,
                        ok=r["ratio"] <= 1.0))
    if len({r["id"] for r in train}) == 3:
        g = math.exp(sum(math.log(r["ratio"]) for r in train) / 3)
        out.append(dict(target="geometric mean of the 3 training-step ratios <= 0.8", value=g, limit=0.8,
                        ok=g <= 0.8))
    for r in rows:
        if r["id"] in TARGET_CONV_IDS and r["pass"] == "fwd+bwd" and r.get("minisr_pct_sgemm") is not None:
            out.append(dict(target=f"conv2d {r['case']} fwd+bwd >= 60% of sgemm rate",
                            value=r["minisr_pct_sgemm"], limit=60.0, ok=r["minisr_pct_sgemm"] >= 60.0))
    for r in train:
        ratio = (r.get("memory") or {}).get("ratio")
        if ratio is not None:
            out.append(dict(target=f"{r['case']}: peak memory <= 1.25 x PyTorch's", value=ratio, limit=1.25,
                            ok=ratio <= 1.25))
    return out


def _fmt(v, spec, width=0):
    text = "-" if v is None else format(v, spec)
    return text.rjust(width)


COLUMNS = [  # (header, key or function of the row, format, width)
    ("minisr ms", "minisr_ms", ".2f", 11), ("torch ms", "torch_ms", ".2f", 10), ("ratio", "ratio", ".2f", 7),
    ("minisr GF/s", "minisr_gflops", ".1f", 12), ("torch GF/s", "torch_gflops", ".1f", 11),
    ("% sgemm", "minisr_pct_sgemm", ".0f", 8),
    ("minisr MiB", lambda r: ((r.get("memory") or {}).get("minisr") or {}).get("peak_mib"), ".0f", 11),
    ("torch MiB", lambda r: ((r.get("memory") or {}).get("torch") or {}).get("peak_mib"), ".0f", 10),
    ("mem ratio", lambda r: (r.get("memory") or {}).get("ratio"), ".2f", 10),
]


JAX_COLUMNS = [("jax ms", "jax_ms", ".2f", 10), ("minisr/jax", "jax_ratio", ".2f", 11)]


def columns(rows) -> list:
    """COLUMNS, and the JAX columns when some row has a JAX time."""
    return COLUMNS + (JAX_COLUMNS if any(r.get("jax_ms") is not None for r in rows) else [])


def _cell(r, key):
    return key(r) if callable(key) else r.get(key)


def format_table(result) -> list[str]:
    cw = max([len(r["case"]) for r in result["rows"]] + [28]) + 2
    cols = columns(result["rows"])
    head = f"{'case':<{cw}}{'pass':<9}" + "".join(f"{h:>{w}}" for h, _, _, w in cols)
    lines, kind = [head, "-" * len(head)], None
    for r in result["rows"]:
        if kind is not None and r["kind"] != kind:
            lines.append("")
        kind = r["kind"]
        lines.append(f"{r['case']:<{cw}}{r['pass']:<9}" + "".join(_fmt(_cell(r, k), f, w) for _, k, f, w in cols))
    return lines


def format_summary(result) -> list[str]:
    meta = result["meta"]
    lines = []
    if meta.get("sgemm_gflops"):
        lines.append(f"sgemm rate of this run (best NumPy/OpenBLAS sgemm): {meta['sgemm_gflops']:.1f} GFLOP/s")
    for t in result["targets"]:
        lines.append(f"[{'PASS' if t['ok'] else 'FAIL'}] {t['target']}: {t['value']:.2f}")
    bad = {r["case"]: r["check"] for r in result["rows"] if max((r.get("check") or {0: 0}).values()) > 1e-3}
    for name, errs in bad.items():
        lines.append(f"WARNING: {name}: minisr and PyTorch disagree (relative errors {errs})")
    for r in result["rows"]:
        if (r.get("jax_check") or {}).get("output", 0) > 1e-3:
            lines.append(f"WARNING: {r['case']}: minisr and JAX disagree (relative error {r['jax_check']})")
    la0, la1 = meta.get("loadavg_before"), meta.get("loadavg_after")
    if la0 is not None:
        lines.append(f"load average (1 min) before / after: {la0[0]:.2f} / {la1[0]:.2f}" + (
            "  -- other processes were busy: the timings are not reliable" if la0[0] > 0.5 else ""))
    return lines


def machine_line(meta) -> str:
    m, s = meta["machine"], meta["settings"]
    return (f"{m['cpu']} ({m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, "
            f"{m['mem_total_gib']} GiB); minisr {m['minisr']} ({s['backend']}) vs PyTorch {m.get('torch')}; "
            f"{s['dtype']}; threads: numba {m['numba_threads']} ({m.get('numba_threading_layer')} layer), "
            f"OpenBLAS {m['blas_threads']} ({m.get('blas_core')} kernels), torch {m.get('torch_threads')}")


def mode_text(s) -> str:
    """How the two libraries were timed, in words (older JSONs: one process)."""
    if s.get("mode", "same-process") == "same-process":
        return "both libraries in one process"
    return f"each library in its own processes ({s['rounds']} rounds, alternating)"


def settings_line(meta) -> str:
    s = meta["settings"]
    if s.get("mode", "same-process") == "separate":
        return (f"{mode_text(s)}: per round and library a child process runs {s['warmup']} warm-up + "
                f"{s['repeats']} timed calls (inference 1 + {s['infer_repeats']}); reported: the median of the "
                f"rounds' medians" + ("; JAX (jit, XLA CPU) as a third library" if s.get("jax") else "")
                + (f"; peak memory over {s['memory_steps']} steps in child processes"
                                      if s["memory"] else "")
                + ("; PyTorch's children with freed memory kept on the heap (--keep-heap)"
                   if s.get("keep_heap") else "")
                + ("; TINY shapes" if s["tiny"] else "") + ("; --quick" if s["quick"] else ""))
    return (f"{mode_text(s)}: {s['repeats']} interleaved repeats after {s['warmup']} warm-up "
            f"(inference {s['infer_repeats']}), "
            f"{s['pause']:g} s pause + 1 untimed call before each timed call; medians"
            + (f"; peak memory over {s['memory_steps']} steps in child processes" if s["memory"] else "")
            + ("; TINY shapes" if s["tiny"] else "") + ("; --quick" if s["quick"] else ""))


def markdown_section(result) -> str:
    meta, m = result["meta"], result["meta"]["machine"]
    out = [f"## {meta['date']}: {m['cpu']}, {meta['settings']['threads']} threads, "
           f"{meta['settings']['backend']} backend, {mode_text(meta['settings'])}", "",
           f"`{meta['command']}`", "", f"{settings_line(meta)}.", ""]
    cols = columns(result["rows"])
    heads = ["case", "pass"] + [h for h, _, _, _ in cols]
    out += ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(cols)) + "|"]
    for r in result["rows"]:
        cells = [r["case"], r["pass"]] + [_fmt(_cell(r, k), f) for _, k, f, _ in cols]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if meta.get("sgemm_gflops"):
        out += [f"sgemm rate of this run (best NumPy/OpenBLAS sgemm): {meta['sgemm_gflops']:.1f} GFLOP/s.", ""]
    if any(r.get("memory") for r in result["rows"]):
        out += ["Memory: peak - baseline resident MiB of a step, in a child process per library.", ""]
    if result["targets"]:
        out.append("Targets (issue 6):")
        out.append("")
        out += [f"- {'PASS' if t['ok'] else 'FAIL'}: {t['target']}: {t['value']:.2f}" for t in result["targets"]]
        out.append("")
    out += ["Machine:", ""]
    out += [f"- {k}: {v}" for k, v in m.items()]
    la0, la1 = meta.get("loadavg_before"), meta.get("loadavg_after")
    if la0 is not None:
        out.append(f"- load average before / after: {la0} / {la1}")
    out.append("")
    return "\n".join(out)


def write_markdown(result, path) -> None:
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmark results\n\nWritten by `bench/compare.py --markdown`.\n"
    text = "\n".join(line for line in text.splitlines() if line.strip() != PLACEHOLDER).rstrip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n\n" + markdown_section(result))


def plot(result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["kind"] != "sgemm"]
    if not rows:
        return
    labels = [f"{r['case']}\n{r['pass']}" for r in rows]
    time_r = [r["ratio"] for r in rows]
    mem_r = [(r.get("memory") or {}).get("ratio") for r in rows]
    jax_r = [r.get("jax_ratio") for r in rows]
    xs = range(len(rows))
    if any(v is not None for v in jax_r):  # three bars: time vs PyTorch, time vs JAX, memory vs PyTorch
        width = 0.28
        ax_bars = [("time / PyTorch", time_r, -width, "tab:blue"), ("time / JAX", jax_r, 0.0, "tab:green"),
                          ("peak memory / PyTorch", mem_r, width, "tab:orange")]
    else:
        width = 0.4 if any(v is not None for v in mem_r) else 0.6
        ax_bars = [("time", time_r, -width / 2 if width < 0.5 else 0.0, "tab:blue")]
        if width < 0.5:
            ax_bars.append(("peak memory", mem_r, width / 2, "tab:orange"))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.8))
    for label, values, dx, color in ax_bars:
        pts = [(x + dx, v) for x, v in zip(xs, values) if v is not None]
        if pts:
            bars = ax.bar([p[0] for p in pts], [p[1] for p in pts], width, label=label, color=color)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xticks(list(xs), labels, fontsize=8, rotation=30, ha="right")
    ax.set_ylabel("minisr / other library (lower is better)" if any(v is not None for v in jax_r)
                  else "minisr / PyTorch (lower is better)")
    m, s = result["meta"]["machine"], result["meta"]["settings"]
    ax.set_title(f"minisr ({s['backend']}) / PyTorch{' and JAX' if any(v is not None for v in jax_r) else ''}, "
                 f"{s['threads']} threads, {m['cpu']}"
                 + (" [tiny]" if s["tiny"] else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(result, args) -> None:
    print(machine_line(result["meta"]))
    print(settings_line(result["meta"]))
    print("\n".join(format_table(result)))
    print("\n".join(format_summary(result)))
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    if args.markdown:
        write_markdown(result, args.markdown)
        print(f"markdown: appended to {args.markdown}")


# --------------------------------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        report(result, args)
        return result
    os.environ["MINISR_BENCH_THREADS"] = str(args.threads)  # read by _common on import, before NumPy loads
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import _common as C

    if args.memory_child:
        memory_child(*args.memory_child, args, C)
        return None
    if args.time_child:
        time_child(*args.time_child, args, C)
        return None
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("bench/compare.py compares with PyTorch: pip install -e '.[torch]'") from None
    import minisr

    C.init(args.threads, args.backend)
    args.jax = jax_wanted(args)
    cases = select(args, C)
    settings = dict(mode="same-process" if args.same_process else "separate", rounds=args.rounds,
                    threads=args.threads, backend=args.backend, dtype=args.dtype, repeats=args.repeats,
                    warmup=args.warmup, pause=args.pause, infer_repeats=args.infer_repeats,
                    memory_steps=args.memory_steps, memory=not args.no_memory, tiny=args.tiny, quick=args.quick,
                    cases=[c[0] for c in cases], jax=args.jax, keep_heap=args.keep_heap)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                command="python bench/compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
                settings=settings, machine=C.machine_info(), loadavg_before=list(os.getloadavg()))
    print(machine_line(meta), flush=True)
    print(settings_line(meta), flush=True)
    if meta["loadavg_before"][0] > 0.5:
        print(f"WARNING: load average {meta['loadavg_before'][0]:.2f} before starting: other processes are busy "
              "and the timings will not be reliable", flush=True)
    if C.slow_blas_core_warning():
        print("WARNING: " + C.slow_blas_core_warning(), flush=True)

    rows = []
    for i, (cid, name, kind, spec) in enumerate(cases, 1):
        t0 = time.perf_counter()
        new = (run_case if args.same_process else run_case_separate)(cid, name, kind, spec, args, C)
        gc.collect()
        getattr(minisr.get_backend(args.backend), "empty_cache", lambda: None)()
        if kind in ("train", "infer") and not args.no_memory:
            new[0]["memory"] = measure_memory(cid, args)
        rows += new
        done = ", ".join(f"{r['pass']} {r['minisr_ms']:.1f} / {r['torch_ms']:.1f}"
                         + (f" / {r['jax_ms']:.1f}" if r.get("jax_ms") is not None else "") + " ms" for r in new)
        print(f"[{i}/{len(cases)}] {name}: minisr / torch{' / jax' if args.jax else ''} {done} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    meta["loadavg_after"] = list(os.getloadavg())
    meta["machine"] = C.machine_info()  # again, now that Numba's threading layer is known
    if args.jax:
        import importlib.metadata

        meta["machine"]["jax"] = importlib.metadata.version("jax")
    sgemm = [r["minisr_gflops"] for r in rows if r["kind"] == "sgemm"]
    meta["sgemm_gflops"] = max(sgemm) if sgemm else None
    for r in rows:
        if r["kind"] != "sgemm" and meta["sgemm_gflops"]:
            r["minisr_pct_sgemm"] = 100 * r["minisr_gflops"] / meta["sgemm_gflops"]
            r["torch_pct_sgemm"] = 100 * r["torch_gflops"] / meta["sgemm_gflops"]
    result = dict(meta=meta, rows=rows, targets=evaluate_targets(rows))
    print()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"json: {args.json}")
    report(result, args)
    return result


if __name__ == "__main__":
    main()
