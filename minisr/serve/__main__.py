"""``python -m minisr.serve [--host 127.0.0.1 --port 8000 --models bicubic srcnn-x2 ...]``: the upscaling service.

Open http://127.0.0.1:8000/ for the web page, /docs for the API. Ctrl-C stops taking connections, lets the requests
in progress finish (up to ``--drain-timeout`` seconds) and removes the temporary folder.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from .app import Settings

    d = Settings()
    p = argparse.ArgumentParser(prog="python -m minisr.serve", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--models", nargs="+", default=list(d.models),
                   help="model names or checkpoint paths ('bicubic' included)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2 ** 20,
                   help="largest request body, MiB (base64 JSON or multipart)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest input image or video frame, pixels")
    p.add_argument("--max-video-frames", type=int, default=d.max_video_frames)
    p.add_argument("--workers", type=int, default=d.workers, help="upscaling threads")
    p.add_argument("--queue", type=int, default=d.queue, help="jobs that may wait; beyond them: 503 + Retry-After")
    p.add_argument("--retry-after", type=int, default=d.retry_after, help="seconds, in the 503's Retry-After")
    p.add_argument("--tile", type=int, default=d.tile, help="tile size in input pixels")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="seconds Ctrl-C waits for requests in progress")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug", "trace"])
    from .. import cli_checks

    return cli_checks.validated(p, cli_checks.SERVE)


def main(argv=None) -> int:
    try:
        import uvicorn

        from .app import Settings, create_app
    except ImportError as err:
        print(f"error: the service needs the 'serve' extra: pip install 'minisr[serve]' ({err})", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    settings = Settings(models=tuple(args.models), max_upload_bytes=int(args.max_upload_mb * 2 ** 20),
                        max_pixels=args.max_pixels, max_video_frames=args.max_video_frames, workers=args.workers,
                        queue=args.queue, retry_after=args.retry_after, tile=args.tile, device=args.device)
    try:
        app = create_app(settings)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = ", ".join(app.state.service.models.table)
    print(f"minisr.serve: models {names}; http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.drain_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
