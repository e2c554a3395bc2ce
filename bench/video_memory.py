"""Memory of ``python -m minisr.upscale`` on videos: peak RSS for clips of different lengths (flat = streamed).

    python bench/video_memory.py [--frames 50 400 --size 160x120 --model bicubic --scale 2]

Makes each clip (x264, a moving pattern) in a temporary folder, upscales it in a fresh process and reports that
process's peak resident memory (ru_maxrss) and frames/s. The same peak for a clip 8 times longer means the frames
are streamed, not held.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_clip(path, n, w, h, fps=25):
    import av

    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(n):
            img = np.stack([(xx * 255 // w + 3 * i) % 256, (yy * 255 // h) % 256, ((xx + yy + 5 * i) % 64) * 4], -1)
            f = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            f.pts = i
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[50, 400])
    p.add_argument("--size", default="160x120")
    p.add_argument("--model", default="bicubic")
    p.add_argument("--scale", default="2")
    args = p.parse_args()
    w, h = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            clip, out = Path(tmp) / f"clip{n}.mp4", Path(tmp) / f"out{n}.mp4"
            make_clip(clip, n, w, h)
            t0 = time.perf_counter()
            code = ("import resource, sys; from minisr.upscale import main; rc = main(sys.argv[1:]); "
                    "print('maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
            r = subprocess.run([sys.executable, "-c", code, str(clip), "-o", str(out), "--model", args.model,
                                "--scale", args.scale], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                               capture_output=True, text=True)
            dt = time.perf_counter() - t0
            if r.returncode:
                sys.exit(r.stderr)
            kib = int(r.stdout.split("maxrss_kib")[1].split()[0])
            print(f"{n} frames {w}x{h} -> x{args.scale} with {args.model}: peak RSS {kib / 1024:.0f} MiB, "
                  f"{n / dt:.1f} frames/s (process wall time, start-up included)")


if __name__ == "__main__":
    main()
