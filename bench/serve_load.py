"""Load on ``python -m minisr.serve``: N concurrent clients, images of mixed sizes, against a real uvicorn on 127.0.0.1.

    python bench/serve_load.py                                   # 8 clients x 6 requests, twice
    python bench/serve_load.py --clients 16 --requests 8 --queue 4 --markdown bench/RESULTS.md

Starts the server (``--models``, ``--workers``, ``--queue``), warms every model up once, then runs ``--rounds`` rounds:
every client sends its requests one after the other (POST /upscale, model and size in turn), each answer is checked
(200: the PNG equals what the same upscaler gives in this process; 503: it carries Retry-After; anything else
fails the run). Reports answers by status, latency p50/p95/max of the 200s, and the server's resident memory (VmRSS)
after the warm-up and after each round: flat memory means the rounds leave nothing behind. Exits 1 if any answer
was wrong. A benchmark, not a test: the timings depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def png(img) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def test_image(size: int, seed: int) -> np.ndarray:
    from minisr.data import imresize

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-size // 4), -(-size // 4), 3)).astype(float)
    return np.clip(imresize(small, 4)[:size, :size], 0, 255).astype(np.uint8)


def multipart(data: bytes, model: str, name: str):
    b = "minisrloadboundary"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=6, help="per client and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256], help="input sizes (square), in turn")
    p.add_argument("--models", nargs="+", default=["bicubic", "srcnn-x2"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--queue", type=int, default=4)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a client waits for one answer")
    p.add_argument("--markdown", default=None, help="append the results as a section of this Markdown file")
    args = p.parse_args(argv)

    from minisr.inference import make_upscaler

    port = free_port()
    cmd = [sys.executable, "-m", "minisr.serve", "--port", str(port), "--models", *args.models, "--workers",
           str(args.workers), "--queue", str(args.queue), "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if json.loads(r.read())["status"] == "ok":
                        break
            except OSError:
                time.sleep(0.2)
            if server.poll() is not None:
                raise SystemExit("the server did not start")
        else:
            raise SystemExit("the server did not answer /health within 2 minutes")
        models = {m["name"]: m["default_scale"] for m in
                  json.loads(urllib.request.urlopen(base + "/models", timeout=10).read())["models"]}
        jobs = [(m, s) for s in args.sizes for m in args.models]
        images = {s: test_image(s, s) for s in args.sizes}
        pngs = {s: png(images[s]) for s in args.sizes}
        local = {m: make_upscaler(m, models[m]) for m in args.models}
        expected = {(m, s): local[m](images[s]) for m, s in jobs}

        def request(model, size):
            body, ctype = multipart(pngs[size], model, f"s{size}.png")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=args.timeout)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/upscale", body, {"Content-Type": ctype})
                r = conn.getresponse()
                data = r.read()
                return r.status, r.getheader("Retry-After"), data, time.perf_counter() - t0
            finally:
                conn.close()

        for m, s in jobs[:len(args.models)]:  # warm-up: one request per model (JIT compilation, first allocations)
            request(m, s)
        rss = [("after warm-up", rss_mib(server.pid))]
        results, lock, wrong = [], threading.Lock(), []

        def client(cid, rnd):
            for k in range(args.requests):
                model, size = jobs[(cid + k * args.clients) % len(jobs)]
                try:
                    status, retry, data, dt = request(model, size)
                except OSError as err:
                    with lock:
                        wrong.append(f"{model} {size}px: {err!r}")
                    continue
                ok = (status == 200 and np.array_equal(unpng(data), expected[(model, size)])) or \
                     (status == 503 and retry is not None)
                with lock:
                    results.append(dict(round=rnd, model=model, size=size, status=status, seconds=dt, ok=ok))
                    if not ok:
                        wrong.append(f"{model} {size}px: HTTP {status} {data[:200]!r}")

        t_start = time.perf_counter()
        for rnd in range(args.rounds):
            threads = [threading.Thread(target=client, args=(c, rnd)) for c in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rss.append((f"after round {rnd + 1}", rss_mib(server.pid)))
        wall = time.perf_counter() - t_start
        health = json.loads(urllib.request.urlopen(base + "/health", timeout=10).read())
    finally:
        server.terminate()
        server.wait(120)

    lat = np.array([r["seconds"] for r in results if r["status"] == 200])
    by_status = {}
    for r in results:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    per_size = {s: np.array([r["seconds"] for r in results if r["status"] == 200 and r["size"] == s])
                for s in args.sizes}
    lines = [
        f"server: `python {' '.join(cmd[1:3])} --models {' '.join(args.models)} --workers {args.workers} "
        f"--queue {args.queue}`; {args.clients} clients x {args.requests} requests x {args.rounds} rounds, "
        f"sizes {args.sizes} px in turn, models in turn",
        "",
        f"- answers: {', '.join(f'{k}: {v}' for k, v in sorted(by_status.items()))} of {len(results)}; "
        f"wrong: {len(wrong)}; wall {wall:.1f} s",
        (f"- latency of the 200s: p50 {np.percentile(lat, 50):.2f} s, p95 {np.percentile(lat, 95):.2f} s, "
         f"max {lat.max():.2f} s" if lat.size else "- no 200 answers"),
        "- p50 by input size: " + ", ".join(f"{s} px {np.percentile(v, 50):.2f} s" for s, v in per_size.items()
                                              if v.size),
        "- server VmRSS: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in rss),
        f"- /health after: {json.dumps(health['jobs'])}, temporary entries {health['temp_entries']}",
    ]
    print("\n".join(lines))
    for w in wrong[:10]:
        print("WRONG:", w)
    if args.markdown:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(args.markdown, "a") as f:
            f.write(f"\n## Service under load ({stamp}, `python bench/serve_load.py`)\n\n" + "\n".join(lines) + "\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
