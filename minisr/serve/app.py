"""The FastAPI application: ``create_app(Settings(...))``.

Endpoints (JSON errors are ``{"detail": "..."}`` naming the problem):

* ``POST /picture``, ``POST /video``: the seed service's API. Body ``{"DATA": base64, "MODEL": name, "FILENAME":
  name}`` (an optional ``"SCALE"``; default: the model's), answer ``{"DATA": base64, "MODEL": name, "FILENAME":
  name}`` with the upscaled PNG (``<stem>_x<s>.png``) or MP4 video (``<stem>_x<s>.mp4``).
* ``POST /upscale``: multipart form (``file``, ``model``, ``scale``), answers the PNG itself.
* ``GET /models``, ``GET /health``, ``GET /`` (the web page), ``/docs`` and ``/openapi.json`` (FastAPI's).

Models are loaded once, when the app is made, and shared by all requests. The upscaling runs on a thread pool of
``workers`` threads (default 1: one image at a time, the kernels use every core themselves); at most ``queue`` more
jobs wait, and a request beyond that gets 503 with ``Retry-After`` at once. Request bodies over ``max_upload_bytes``
get 413 before they are read (by Content-Length, or while streaming); images or video frames over ``max_pixels`` and
videos over ``max_video_frames`` get 413 too. Images are decoded in memory; a video is written to a folder under the
service's temporary folder, which is removed after each request and when the service stops.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import shutil
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

STATIC = Path(__file__).parent / "static"
JOB_PATHS = ("/picture", "/video", "/upscale")


@dataclass
class Settings:
    models: tuple = ("bicubic", "srcnn-x2", "srcnn-x3", "srcnn-x4")  # names, or checkpoint paths
    max_upload_bytes: int = 32 * 2 ** 20  # a request body (base64 JSON or multipart), bytes
    max_pixels: int = 4_000_000  # input pixels of an image or of a video frame
    max_video_frames: int = 1800
    workers: int = 1  # threads running the upscaler
    queue: int = 8  # jobs that may wait for a worker; beyond: 503
    retry_after: int = 5  # seconds, in the 503's Retry-After
    tile: int = 192
    device: str = "cpu"


class BadInput(ValueError):
    """400: the request's data cannot be used (not base64, not an image, unknown model)."""


class TooLarge(ValueError):
    """413: over a configured limit."""


class Busy(RuntimeError):
    """503: the job queue is full."""


class ClientGone(Exception):
    """The client disconnected while its job waited: nobody to answer."""


async def _disconnected(request) -> None:
    """Ends when the client disconnects (the body has been read by then, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ------------------------------------------------------------------------------------------------ models
class Models:
    """The upscalers, loaded once when the service starts and shared by all requests:
    ``get(name, scale) -> (callable, scale)``.

    Each model serves the scales of x2, x3, x4 its upscaler accepts (the trained one, and x4 from a x2 model by
    running it twice); ``bicubic`` serves all three. ``extra`` adds ready-made upscalers ``{name: {scale: fn}}``."""

    def __init__(self, specs, tile: int = 192, device: str = "cpu", extra=None):
        from ..inference import make_upscaler  # the one place the service gets its upscalers

        self.table: dict[str, dict[int, object]] = {}
        for spec in map(str, specs):
            ups, errors = {}, []
            for s in (2, 3, 4):
                try:
                    ups[s] = make_upscaler(spec, s, device=device, tile=tile)
                except ValueError as err:  # not a scale this model does
                    errors.append(str(err))
            if not ups:
                raise ValueError(f"model {spec}: no scale among x2, x3, x4 ({errors[0]})")
            self.table[Path(spec).stem if Path(spec).is_file() else spec] = ups
        for name, ups in (extra or {}).items():
            self.table[name] = dict(ups)
        if not self.table:
            raise ValueError("no models to serve")

    def describe(self) -> list[dict]:
        return [dict(name=n, scales=sorted(t), default_scale=min(t)) for n, t in self.table.items()]

    def get(self, name: str, scale: int | None):
        if name not in self.table:
            raise BadInput(f"unknown model {name!r} (available: {', '.join(self.table)})")
        ups = self.table[name]
        scale = min(ups) if scale is None else int(scale)
        if scale not in ups:
            raise BadInput(f"model {name!r} does not do x{scale} (it does x{', x'.join(map(str, sorted(ups)))})")
        return ups[scale], scale


# -------------------------------------------------------------------------------------------------- jobs
class Runner:
    """A thread pool with a bounded queue: ``await run(fn, ...)`` or Busy when ``workers + queue`` jobs are in."""

    def __init__(self, workers: int, queue: int):
        self.pool = ThreadPoolExecutor(max(int(workers), 1), thread_name_prefix="minisr-serve")
        self.capacity = max(int(workers), 1) + max(int(queue), 0)
        self.lock = threading.Lock()
        self.pending = 0  # submitted and not finished (queued + running)
        self.running = 0
        self.done = 0
        self.dropped = 0  # queued jobs whose client went away before a worker took them

    def full(self) -> bool:
        with self.lock:
            return self.pending >= self.capacity

    def _call(self, fn, args):
        with self.lock:
            self.running += 1
        try:
            return fn(*args)
        finally:
            with self.lock:
                self.running -= 1

    def _finished(self, fut) -> None:
        with self.lock:
            self.pending -= 1
            if fut is not None and fut.cancelled():
                self.dropped += 1
            else:
                self.done += 1

    async def run(self, fn, *args, gone=None):
        """``fn(*args)`` on the pool. ``gone``: an awaitable that ends when the client has disconnected; a job still
        queued then is dropped (one already running finishes, its answer goes nowhere)."""
        with self.lock:
            if self.pending >= self.capacity:
                raise Busy(f"server busy: {self.pending} jobs in progress or queued (capacity {self.capacity})")
            self.pending += 1
        try:
            fut = self.pool.submit(self._call, fn, args)
        except RuntimeError:  # the pool is shutting down
            self._finished(None)
            raise Busy("server is shutting down") from None
        fut.add_done_callback(self._finished)
        result = asyncio.wrap_future(fut)
        if gone is None:
            return await result
        watcher = asyncio.ensure_future(gone)
        try:
            await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not result.done():
            fut.cancel()
            raise ClientGone
        return result.result()

    def stats(self) -> dict:
        with self.lock:
            return dict(running=self.running, queued=self.pending - self.running, capacity=self.capacity,
                        done=self.done, dropped=self.dropped)


# --------------------------------------------------------------------------------------------- decoding
def b64decode(data: str, what: str = "DATA") -> bytes:
    if data.startswith("data:") and "," in data[:200]:  # a data URL is fine too
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadInput(f"{what} is not valid base64 ({err})") from None
    if not raw:
        raise BadInput(f"{what} is empty")
    return raw


def decode_image(data: bytes, max_pixels: int, what: str = "the image") -> np.ndarray:
    """uint8 HxW or HxWx3 from the bytes of an image file; the size is checked from the header first."""
    from PIL import Image

    from ..data.io import to_uint8_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise TooLarge(f"{what} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.asarray(im)
            return to_uint8_image(arr, name=what)
    except TooLarge:
        raise
    except Image.DecompressionBombError as err:
        raise TooLarge(f"{what}: {err}") from None
    except Image.UnidentifiedImageError:
        raise BadInput(f"{what} is not an image (not a format Pillow recognises: PNG, JPEG, BMP, TIFF, ...)") from None
    except Exception as err:  # Pillow raises many kinds by the damage
        raise BadInput(f"{what} is not an image we can read ({type(err).__name__}: {err})") from None


def encode_png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def out_name(filename: str, scale: int, ext: str) -> str:
    stem = Path(str(filename or "upload").replace("\\", "/")).stem or "upload"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:100]
    return f"{stem}_x{scale}{ext}"


# ------------------------------------------------------------------------------------------ middleware
def _json(status: int, detail: str, headers=None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class _BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware in front of the job endpoints: 503 when the queue is full and 413 when the body is over
    ``max_upload_bytes`` (by Content-Length, or counted while it streams in), both before the body is read."""

    def __init__(self, app, service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        s = self.service
        limit = s.settings.max_upload_bytes
        if scope["path"] in JOB_PATHS and s.runner.full():
            return await _json(503, "server busy: the job queue is full, retry later",
                               {"Retry-After": str(s.settings.retry_after)})(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _json(413, f"request body of {int(length)} bytes is over the limit of {limit} bytes")(
                scope, receive, send)
        seen, started, over = 0, False, False
        too_large = _json(413, f"request body is over the limit of {limit} bytes")

        async def receive_counted():
            nonlocal seen, over
            if over:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise _BodyTooLarge
            return message

        async def send_checked(message):
            # once the body went over the limit, whatever the app answers (FastAPI: 400, "error parsing the body")
            # becomes the 413
            nonlocal started
            if message["type"] == "http.response.start":
                if started:
                    return
                started = True
                if over:
                    return await too_large(scope, receive, send)
            if not over:
                await send(message)

        try:
            await self.app(scope, receive_counted, send_checked)
        except _BodyTooLarge:
            if not started:
                await too_large(scope, receive, send)


# ------------------------------------------------------------------------------------------------ app
class Payload(BaseModel):
    """The seed service's request body."""
    DATA: str = Field(description="the file, base64")
    MODEL: str = Field(description="a model name from GET /models")
    FILENAME: str = Field(description="the file's name (the answer's is <stem>_x<scale>.png / .mp4)")
    SCALE: int | None = Field(None, description="optional: the factor (default: the model's)")


class Answer(BaseModel):
    DATA: str
    MODEL: str
    FILENAME: str


class Service:
    def __init__(self, settings: Settings, extra=None):
        self.settings = settings
        self.models = Models(settings.models, tile=settings.tile, device=settings.device, extra=extra)
        self.runner = Runner(settings.workers, settings.queue)
        self.tmp_root: Path | None = None

    def start(self) -> None:
        self.tmp_root = Path(tempfile.mkdtemp(prefix="minisr-serve-"))

    def stop(self) -> None:
        self.runner.pool.shutdown(wait=True)
        if self.tmp_root is not None:
            shutil.rmtree(self.tmp_root, ignore_errors=True)

    def temp_entries(self) -> int:
        return len(list(self.tmp_root.iterdir())) if self.tmp_root and self.tmp_root.is_dir() else 0

    # the jobs (run on the pool's threads)
    def image_job(self, data: bytes, upscaler, what: str) -> bytes:
        return encode_png(upscaler(decode_image(data, self.settings.max_pixels, what)))

    def video_job(self, data: bytes, upscaler, scale: int, filename: str) -> bytes:
        from ..video import upscale_video

        suffix = Path(filename).suffix.lower()
        if not re.fullmatch(r"\.[a-z0-9]{1,5}", suffix):
            suffix = ".mp4"
        root = self.tmp_root if self.tmp_root and self.tmp_root.is_dir() else None
        with tempfile.TemporaryDirectory(dir=root, prefix="job-") as tmp:
            src, dst = Path(tmp) / f"input{suffix}", Path(tmp) / "output.mp4"
            src.write_bytes(data)
            upscale_video(src, dst, upscaler, scale, max_frames=self.settings.max_video_frames,
                          max_pixels=self.settings.max_pixels, progress=False)
            return dst.read_bytes()


def create_app(settings: Settings | None = None, extra_upscalers=None) -> FastAPI:
    """The service's FastAPI app; the models are loaded here (errors surface before a port is opened)."""
    from ..video import VideoReadError, VideoTooLongError

    settings = settings or Settings()
    service = Service(settings, extra_upscalers)

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="minisr upscaling service", version="0.1.0", lifespan=lifespan,
                  description="Super-resolution of images and videos with minisr's models.")
    app.state.service = service
    app.add_middleware(Guard, service=service)

    async def run_job(request, fn, *args):
        try:
            return await service.runner.run(fn, *args, gone=_disconnected(request))
        except ClientGone:
            raise _HTTP(499, "client closed the request") from None  # never sent: the connection is gone
        except Busy as err:
            raise _HTTP(503, str(err), {"Retry-After": str(settings.retry_after)}) from None
        except TooLarge as err:
            raise _HTTP(413, str(err)) from None
        except VideoTooLongError as err:
            raise _HTTP(413, str(err)) from None
        except (BadInput, VideoReadError) as err:
            raise _HTTP(400, str(err)) from None

    def pick(model: str, scale):
        try:
            return service.models.get(model, scale)
        except BadInput as err:
            raise _HTTP(400, str(err)) from None

    @app.exception_handler(_HTTP)
    async def _http_error(request, exc: _HTTP):
        return _json(exc.status, exc.detail, exc.headers)

    @app.post("/picture", response_model=Answer, summary="Upscale an image (the seed's JSON API)")
    async def picture(p: Payload, request: Request):
        upscaler, scale = pick(p.MODEL, p.SCALE)
        data = _b64(p.DATA)
        png = await run_job(request, service.image_job, data, upscaler, f"DATA ({p.FILENAME})")
        return {"DATA": base64.b64encode(png).decode("ascii"), "MODEL": p.MODEL,
                "FILENAME": out_name(p.FILENAME, scale, ".png")}

    @app.post("/video", response_model=Answer, summary="Upscale a video frame by frame (the seed's JSON API)")
    async def video(p: Payload, request: Request):
        upscaler, scale = pick(p.MODEL, p.SCALE)
        data = _b64(p.DATA)
        mp4 = await run_job(request, service.video_job, data, upscaler, scale, p.FILENAME)
        return {"DATA": base64.b64encode(mp4).decode("ascii"), "MODEL": p.MODEL,
                "FILENAME": out_name(p.FILENAME, scale, ".mp4")}

    @app.post("/upscale", summary="Upscale an uploaded image; answers the PNG",
              response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def upscale(request: Request, file: UploadFile = File(...), model: str = Form(...),
                      scale: int | None = Form(None)):
        upscaler, scale = pick(model, scale)
        data = await file.read()
        if not data:
            raise _HTTP(400, f"the uploaded file {file.filename!r} is empty")
        png = await run_job(request, service.image_job, data, upscaler, f"the uploaded file {file.filename!r}")
        name = out_name(file.filename, scale, ".png")
        return Response(png, media_type="image/png", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/models", summary="The models served and their scales")
    async def models_():
        return {"models": service.models.describe()}

    @app.get("/health", summary="Liveness, the job queue, the temporary folder")
    async def health():
        return {"status": "ok", "jobs": service.runner.stats(), "temp_entries": service.temp_entries(),
                "models": list(service.models.table)}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class _HTTP(Exception):
    def __init__(self, status: int, detail: str, headers=None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def _b64(data: str) -> bytes:
    try:
        return b64decode(data, "DATA")
    except BadInput as err:
        raise _HTTP(400, str(err)) from None


__all__ = ["Settings", "create_app"]
