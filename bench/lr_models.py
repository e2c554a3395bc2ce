"""Speed per 1080p frame of the LR-space models (FSRCNN, ESPCN) beside SRCNN, and against PyTorch running the same
architecture with the same weights (issue 16).

    python bench/lr_models.py [--repeats 3] [--threads N] [--json bench/results/lr_models.json]

What is timed: the network's forward pass on the Y channel of one 1920x1080 output frame, batch 1, float32, no
gradient: FSRCNN x2 / ESPCN x2 on a 960x540 LR input, FSRCNN x3 / ESPCN x3 on 640x360, and SRCNN 9-5-5 (which takes
the bicubic-upscaled frame) on 1920x1080 plus its 8-pixel valid border. (Colour conversion, bicubic chroma and tiling
are the same for every model and are left out.) Each library runs in its own process (``--worker``), one after the
other: minisr with the Numba kernels, then PyTorch, with the same thread count; the first call of each is a warm-up
(Numba compilation), the median of the rest is reported. Timings on a shared machine are noisy: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = [  # (label, model, scale, LR input (H, W) for a 1920x1080 output)
    ("srcnn-x2", "srcnn", 2, (1080 + 16, 1920 + 16)),
    ("fsrcnn-x2", "fsrcnn", 2, (540, 960)),
    ("espcn-x2", "espcn", 2, (540, 960)),
    ("fsrcnn-x3", "fsrcnn", 3, (360, 640)),
    ("espcn-x3", "espcn", 3, (360, 640)),
]


def _minisr_model(name, scale):
    import minisr
    from minisr import models

    minisr.manual_seed(0)
    return models.build(name) if name == "srcnn" else models.build(name, scale=scale)


def _torch_twin(name, scale, state):
    """The same network in PyTorch, with minisr's parameter names, so the state dict loads strictly."""
    import torch
    from torch import nn

    if name == "srcnn":
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 64, 9), nn.Conv2d(64, 32, 5), nn.Conv2d(32, 1, 5)

            def forward(self, x):
                return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
    elif name == "fsrcnn":
        def block(cin, cout, k):
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.PReLU(cout))

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.extract, self.shrink = block(1, 56, 5), block(56, 12, 1)
                self.mapping = nn.Sequential(*[block(12, 12, 3) for _ in range(4)])
                self.expand = block(12, 56, 1)
                self.deconv = nn.ConvTranspose2d(56, 1, 9, stride=scale, padding=4, output_padding=scale - 1)

            def forward(self, x):
                return self.deconv(self.expand(self.mapping(self.shrink(self.extract(x)))))
    else:
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(1, 64, 5, padding=2)
                self.conv2 = nn.Conv2d(64, 32, 3, padding=1)
                self.conv3 = nn.Conv2d(32, scale * scale, 3, padding=1)

            def forward(self, x):
                return nn.functional.pixel_shuffle(self.conv3(torch.tanh(self.conv2(torch.tanh(self.conv1(x))))), scale)
    net = Net()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return net.eval()


def worker(lib: str, label: str, repeats: int, threads: int) -> dict:
    """Time one case in this process; returns the median seconds and a checksum of the output."""
    import numpy as np

    _, name, scale, (h, w) = next(c for c in CASES if c[0] == label)
    x = np.random.default_rng(0).random((1, 1, h, w), dtype=np.float32)
    model = _minisr_model(name, scale)
    if lib == "minisr":
        import numba

        import minisr
        from minisr import Tensor, no_grad

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        minisr.set_backend("numba")

        def run():
            with no_grad():
                return model(Tensor(x)).numpy()
    else:
        import torch

        torch.set_num_threads(threads)
        net = _torch_twin(name, scale, model.state_dict())
        tx = torch.from_numpy(x)

        def run():
            with torch.no_grad():
                return net(tx).numpy()

    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        y = run()
        times.append(time.perf_counter() - t0)
    return dict(lib=lib, case=label, seconds=statistics.median(times[1:]), all=times[1:],
                out_shape=list(y.shape), checksum=float(np.float64(y).sum()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--cases", default=",".join(c[0] for c in CASES))
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.add_argument("--worker", nargs=2, metavar=("LIB", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.threads)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    rows = []
    print(f"{'case':<11} {'LR input':>10} {'minisr s':>9} {'torch s':>8} {'minisr/torch':>12}  "
          f"(threads {args.threads}, median of {args.repeats})")
    for label in args.cases.split(","):
        res = {}
        for lib in ("minisr", "torch"):
            proc = subprocess.run([sys.executable, __file__, "--worker", lib, label, "--repeats", str(args.repeats),
                                   "--threads", str(args.threads)], capture_output=True, text=True, env=env)
            if proc.returncode:
                print(proc.stderr, file=sys.stderr)
                return 1
            res[lib] = json.loads(proc.stdout.strip().splitlines()[-1])
        a, b = res["minisr"], res["torch"]
        rel = abs(a["checksum"] - b["checksum"]) / max(abs(b["checksum"]), 1e-12)
        h, w = next(c[3] for c in CASES if c[0] == label)
        rows.append(dict(case=label, lr=[h, w], minisr_s=a["seconds"], torch_s=b["seconds"], checksum_rel_diff=rel,
                         out_shape=a["out_shape"], minisr_all=a["all"], torch_all=b["all"]))
        print(f"{label:<11} {w:>4}x{h:<5} {a['seconds']:9.3f} {b['seconds']:8.3f} {a['seconds'] / b['seconds']:12.2f}"
              f"  (outputs agree to {rel:.1e})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(threads=args.threads, repeats=args.repeats, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
