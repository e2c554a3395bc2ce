"""Where a training step's time goes, layer by layer, in minisr and in PyTorch on the very same data.

    python bench/layer_times.py [--case train-vdsr] [--repeats 7] [--threads N] [--json FILE]

compare.py times whole steps and a few layers in isolation; when the two disagree (a layer at parity in isolation,
the step 1.5x behind), this says which layers of the step make the difference. The parent process runs the PyTorch
twin of the model (bench/_common.py) once, forward and backward, with hooks that record every Conv2d's real input,
weight, bias and output gradient; then one child process per library (each library in its own process, as
compare.py) times, for every conv in the order of the forward, the conv's forward, and its forward + backward
(input gradient, except for the first layer, plus weight and bias gradients) on those arrays: median of
``--repeats`` calls after one warm-up call. Only convolutions are timed (ReLU, the loss and the optimizer are
not), and in minisr the plain ``conv2d`` (not the fused conv + ReLU that nn.Sequential runs), so the sum is a
little under a step's time.

Note on the PyTorch column: glibc gives each call's fresh multi-MB output (and oneDNN's reorder buffers) new pages
that fault in on first touch, ~5,000 page faults and several ms per VDSR-sized call, which its calls inside a
training step mostly avoid; ``--keep-heap`` keeps freed memory on the heap so that the columns compare kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _median_ms(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def _case(case_id: str, tiny: bool):
    import _common as C

    case = next((c for c in C.MODEL_CASES if c.id == case_id and c.mode == "train"), None)
    if case is None:
        raise SystemExit(f"--case {case_id!r}: not one of "
                         f"{', '.join(c.id for c in C.MODEL_CASES if c.mode == 'train')}")
    return C.model_case(case, tiny=tiny)


def record(case_id: str, path: str, tiny: bool = False) -> list[dict]:
    """Run the PyTorch twin once; save each conv's input, weight, bias, output, output gradient and settings to
    ``path``."""
    import _common as C
    import numpy as np
    import torch

    case = _case(case_id, tiny)
    model = C.torch_model(case, state=C.minisr_model(case).state_dict())
    x, y = C.model_arrays(case)
    seen, arrays = [], {}

    def hook(module, inputs, output):
        i = len(seen)
        seen.append(dict(name=module._name, stride=module.stride[0], padding=module.padding[0],
                         shape=list(inputs[0].shape), weight=list(module.weight.shape)))
        arrays[f"x{i}"] = inputs[0].detach().numpy().copy()
        arrays[f"w{i}"] = module.weight.detach().numpy().copy()
        arrays[f"b{i}"] = module.bias.detach().numpy().copy()
        arrays[f"y{i}"] = output.detach().numpy().copy()
        output.register_hook(lambda g, i=i: arrays.__setitem__(f"g{i}", g.detach().numpy().copy()))

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:  # (EDSR's MeanShift convs are buffers)
            m._name = name
            m.register_forward_hook(hook)
    loss_fn = torch.nn.functional.mse_loss if case.loss == "mse" else torch.nn.functional.l1_loss
    loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    np.savez(path, **arrays)
    return seen


def _time_layer(lib, x, w, b, y, g, stride, padding, first, repeats) -> dict:
    """Median ms of one conv's forward and forward + backward in ``lib``, and the relative error of its output
    against PyTorch's recorded one (``y``; both libraries compute the same thing)."""
    import numpy as np

    if lib == "torch":
        import torch

        tx = torch.from_numpy(x).requires_grad_(not first)
        tw, tb = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_()
        tg, wrt = torch.from_numpy(g), ([tw, tb] if first else [tx, tw, tb])

        def fwd():
            return torch.nn.functional.conv2d(tx, tw, tb, stride, padding)

        def fwd_bwd():
            torch.autograd.grad(fwd(), wrt, tg)
    else:
        import minisr
        import minisr.functional as F

        mx = minisr.Tensor(x, requires_grad=not first)
        mw, mb = minisr.Tensor(w, requires_grad=True), minisr.Tensor(b, requires_grad=True)

        def fwd():
            return F.conv2d(mx, mw, mb, stride, padding)

        def fwd_bwd():
            for t in (mx, mw, mb):
                t.grad = None
            fwd().backward(g)
    out = fwd()
    out = np.asarray(out.detach().numpy() if lib == "torch" else out.data)
    err = float(np.abs(out - y).max() / max(float(np.abs(y).max()), 1e-30))
    return dict(fwd=_median_ms(fwd, repeats), fwd_bwd=_median_ms(fwd_bwd, repeats), err=err)


def child(lib: str, path: str, layers: list[dict], repeats: int, threads: int) -> list[dict]:
    """Time every recorded conv in one library (this process imports only that one)."""
    import _common as C
    import numpy as np

    C.init(threads, "numba", torch=lib == "torch", minisr=lib == "minisr")
    data = np.load(path)
    return [_time_layer(lib, *(data[f"{k}{i}"] for k in "xwbyg"), layer["stride"], layer["padding"], i == 0, repeats)
            for i, layer in enumerate(layers)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="train-vdsr", help="a training case of bench/_common.py (train-srcnn, "
                    "train-vdsr, train-edsr; default train-vdsr)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="threads of both libraries (default: all cores)")
    ap.add_argument("--json", help="also write the table as JSON here")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (the same layers), for tests")
    ap.add_argument("--keep-heap", action="store_true",
                    help="run PyTorch's child with glibc's mmap and trim thresholds at 1 GB, so that freed buffers "
                         "stay on the heap and its isolated calls stop page-faulting a fresh output every call "
                         "(minisr's workspace cache already avoids that): the columns then compare the kernels")
    ap.add_argument("--child", nargs=3, metavar=("LIB", "NPZ", "LAYERS_JSON"), help=argparse.SUPPRESS)
    ap.add_argument("--record", metavar="NPZ", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    if args.record:
        print(json.dumps(record(args.case, args.record, args.tiny)))
        return 0
    if args.child:
        lib, npz, layers = args.child
        print(json.dumps(child(lib, npz, json.loads(Path(layers).read_text()), args.repeats, threads)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        npz, lj = os.path.join(tmp, "layers.npz"), os.path.join(tmp, "layers.json")
        env = dict(os.environ, MINISR_BENCH_THREADS=str(threads))
        heap = dict(MALLOC_MMAP_THRESHOLD_="1000000000", MALLOC_TRIM_THRESHOLD_="1000000000")
        _case(args.case, args.tiny)  # a clear error for an unknown case, before any child starts
        rec = subprocess.run([sys.executable, __file__, "--case", args.case, "--record", npz]
                             + ["--tiny"] * args.tiny, env=env, capture_output=True, text=True, check=True)
        layers = json.loads(rec.stdout.strip().splitlines()[-1])
        Path(lj).write_text(json.dumps(layers))
        times = {}
        for lib in ("minisr", "torch"):
            child_env = dict(env, **heap) if args.keep_heap and lib == "torch" else env
            r = subprocess.run([sys.executable, __file__, "--child", lib, npz, lj, "--repeats", str(args.repeats),
                                "--threads", str(threads)], env=child_env, capture_output=True, text=True, check=True)
            times[lib] = json.loads(r.stdout.strip().splitlines()[-1])
    rows = []
    print(f"{args.case}: conv layers, ms (median of {args.repeats}), {threads} threads, each library in its own "
          "process" + (", freed memory kept on the heap (--keep-heap)" if args.keep_heap else ""))
    print(f"{'layer':<18}{'input':>18}{'weight':>16}  {'minisr fwd':>10} {'torch fwd':>10} {'minisr f+b':>10} "
          f"{'torch f+b':>10}")
    for layer, m, t in zip(layers, times["minisr"], times["torch"]):
        rows.append(dict(layer, minisr=m, torch=t))
        print(f"{layer['name']:<18}{'x'.join(map(str, layer['shape'])):>18}{'x'.join(map(str, layer['weight'])):>16}  "
              f"{m['fwd']:10.2f} {t['fwd']:10.2f} {m['fwd_bwd']:10.2f} {t['fwd_bwd']:10.2f}")
    tot = {lib: (sum(r[lib]["fwd"] for r in rows), sum(r[lib]["fwd_bwd"] for r in rows)) for lib in ("minisr", "torch")}
    print(f"{'total':<52}  {tot['minisr'][0]:10.1f} {tot['torch'][0]:10.1f} {tot['minisr'][1]:10.1f} "
          f"{tot['torch'][1]:10.1f}")
    print(f"ratio minisr/torch: forward {tot['minisr'][0] / tot['torch'][0]:.2f}, "
          f"forward + backward {tot['minisr'][1] / tot['torch'][1]:.2f}")
    print("largest relative difference of a conv output from PyTorch's: minisr "
          f"{max(r['minisr']['err'] for r in rows):.1e}, torch {max(r['torch']['err'] for r in rows):.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(case=args.case, threads=threads, repeats=args.repeats,
                                                   keep_heap=args.keep_heap, layers=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
