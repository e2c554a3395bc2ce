"""``minisr.serve``: the seed's JSON API, POST /upscale, limits and errors through FastAPI's TestClient (fast), then a
real uvicorn on 127.0.0.1: a full queue answers 503 at once, a client that disconnects mid-upload leaves nothing
behind, Ctrl-C (SIGINT) lets the request in progress finish and exits cleanly. Every wait is bounded."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
av = pytest.importorskip("av")
from PIL import Image  # noqa: E402

from minisr.data import imresize  # noqa: E402
from minisr.serve.app import Settings, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Starlette's TestClient warns that it would rather use httpx2; httpx is what it runs on here
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


def png_bytes(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(imresize(rng.integers(0, 256, (-(-h // 4), -(-w // 4), 3)).astype(float), 4)[:h, :w], 0,
                   255).astype(np.uint8)


def b64(data):
    return base64.b64encode(data).decode("ascii")


def decode_png(data):
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    settings = Settings(models=("bicubic", "srcnn-x2"), max_upload_bytes=300_000, max_pixels=40_000,
                        max_video_frames=6)
    with TestClient(create_app(settings)) as c:
        yield c


# ------------------------------------------------------------------------------------------ TestClient
def test_picture_answers_the_seed_json(client):
    img = image(30, 41)
    r = client.post("/picture", json={"DATA": b64(png_bytes(img)), "MODEL": "bicubic", "FILENAME": "cat.jpg"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["DATA", "MODEL", "FILENAME"]  # the seed's keys, in its order
    assert body["MODEL"] == "bicubic" and body["FILENAME"] == "cat_x2.png"
    np.testing.assert_array_equal(decode_png(base64.b64decode(body["DATA"])), imresize(img, 2))
    r = client.post("/picture", json={"DATA": b64(png_bytes(img[..., 0])), "MODEL": "srcnn-x2", "FILENAME": "g.png",
                                      "SCALE": 4})
    assert r.status_code == 200, r.text
    assert decode_png(base64.b64decode(r.json()["DATA"])).shape == (120, 164)


def test_upscale_multipart_returns_png(client):
    img = image(20, 24, seed=3)
    r = client.post("/upscale", files={"file": ("photo.png", png_bytes(img), "image/png")},
                    data={"model": "bicubic", "scale": "3"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == 'attachment; filename="photo_x3.png"'
    np.testing.assert_array_equal(decode_png(r.content), imresize(img, 3))


def test_video_endpoint(client, tmp_path):
    from test_video import make_clip

    clip = make_clip(tmp_path / "clip.mp4", n=4, audio=True)
    r = client.post("/video", json={"DATA": b64(clip.read_bytes()), "MODEL": "bicubic", "FILENAME": "clip.mp4"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["DATA", "MODEL", "FILENAME"] and body["FILENAME"] == "clip_x2.mp4"
    out = tmp_path / "out.mp4"
    out.write_bytes(base64.b64decode(body["DATA"]))
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height, float(v.average_rate)) == (64, 48, 24.0)
        assert len(c.streams.audio) == 1
        assert sum(1 for _ in c.decode(video=0)) == 4
    assert client.get("/health").json()["temp_entries"] == 0  # the job's folder is gone


def test_models_health_docs_page(client):
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["bicubic"]["scales"] == [2, 3, 4] and models["srcnn-x2"]["scales"] == [2, 4]
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["jobs"]["running"] == 0 and h["jobs"]["capacity"] == 9
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/picture", "/video", "/upscale", "/models", "/health"} <= set(paths)
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in ("index.html", "app.js", "style.css"):  # works offline: nothing from another host
        text = (REPO / "minisr" / "serve" / "static" / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
        if name != "index.html":
            assert client.get(f"/static/{name}").status_code == 200


@pytest.mark.parametrize("body, status, words", [
    ({"DATA": "not base64!", "MODEL": "bicubic", "FILENAME": "a.png"}, 400, "DATA is not valid base64"),
    ({"DATA": b64(b"hello, not an image"), "MODEL": "bicubic", "FILENAME": "a.png"}, 400, "is not an image"),
    ({"DATA": b64(b"x"), "MODEL": "edsr-x9", "FILENAME": "a.png"}, 400, "unknown model 'edsr-x9'"),
    ({"DATA": b64(b"x"), "MODEL": "srcnn-x2", "FILENAME": "a.png", "SCALE": 3}, 400, "does not do x3"),
    ({"DATA": "", "MODEL": "bicubic", "FILENAME": "a.png"}, 400, "DATA is empty"),
    ({"MODEL": "bicubic", "FILENAME": "a.png"}, 422, "DATA"),
    ({"DATA": b64(png_bytes(image(201, 200))), "MODEL": "bicubic", "FILENAME": "a.png"}, 413,
     "201 = 40200 pixels, over the limit of 40000"),
])
def test_picture_errors(client, body, status, words):
    r = client.post("/picture", json=body)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert words in json.dumps(r.json())


def test_video_errors(client, tmp_path):
    from test_video import make_clip

    r = client.post("/video", json={"DATA": b64(b"no video here" * 10), "MODEL": "bicubic", "FILENAME": "x.mp4"})
    assert r.status_code == 400 and "is not a video" in r.json()["detail"]
    long_clip = make_clip(tmp_path / "long.mp4", n=8)
    r = client.post("/video", json={"DATA": b64(long_clip.read_bytes()), "MODEL": "bicubic", "FILENAME": "l.mp4"})
    assert r.status_code == 413 and "8 frames, over the limit of 6" in r.json()["detail"]
    assert client.get("/health").json()["temp_entries"] == 0


def test_upload_over_the_byte_limit(client):
    r = client.post("/upscale", files={"file": ("big.png", b"\0" * 400_000, "image/png")}, data={"model": "bicubic"})
    assert r.status_code == 413 and "over the limit of 300000 bytes" in r.json()["detail"]
    r = client.post("/upscale", files={"file": ("e.png", b"", "image/png")}, data={"model": "bicubic"})
    assert r.status_code == 400 and "empty" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/upscale", "/picture"])
def test_streamed_body_over_the_limit(client, path):
    """No Content-Length (chunked): counted as it comes in, 413 (not FastAPI's 400 'error parsing the body')."""
    def chunks():
        json_head, form_head = b'{"DATA": "', b"--b\r\nContent-Disposition: form-data; name=file; filename=a\r\n\r\n"
        yield json_head if path == "/picture" else form_head
        for _ in range(40):
            yield b"A" * 10_000
    ctype = "application/json" if path == "/picture" else "multipart/form-data; boundary=b"
    r = client.post(path, content=chunks(), headers={"Content-Type": ctype})
    assert r.status_code == 413 and r.json() == {"detail": "request body is over the limit of 300000 bytes"}


# ------------------------------------------------------------------------------------------ real uvicorn
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def post(url, data, headers, timeout=60):
    """(status, headers, body) of a POST; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def multipart(name, data, fields):
    boundary = "minisrtestboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(url, name, data, fields, timeout=60):
    body, ctype = multipart(name, data, fields)
    return post(url + "/upscale", body, {"Content-Type": ctype}, timeout)


def wait_until(pred, timeout=60.0, step=0.1, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def gated_server():
    """uvicorn in a thread on 127.0.0.1 with one worker and a queue of one, and a model that waits for ``gate``."""
    import uvicorn

    gate, entered = threading.Event(), threading.Event()

    def slow(lr):
        entered.set()
        gate.wait(30)
        return imresize(lr, 2)

    app = create_app(Settings(models=("bicubic",), workers=1, queue=1, retry_after=7),
                     extra_upscalers={"slow": {2: slow}})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: get(url + "/health")["status"] == "ok", 30, what="the server")
    yield url, gate, entered
    gate.set()
    server.should_exit = True
    thread.join(30)
    assert not thread.is_alive()


def picture_json(data, model):
    return json.dumps({"DATA": b64(data), "MODEL": model, "FILENAME": "a.png"}).encode()


def in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.update(r=fn()))
    t.start()
    return t, out


def test_full_queue_answers_503_at_once(gated_server):
    url, gate, entered = gated_server
    data = png_bytes(image(16, 16))
    json_type = {"Content-Type": "application/json"}
    ta, a = in_thread(lambda: post(url + "/picture", picture_json(data, "slow"), json_type))
    assert entered.wait(30), "the first job never started"
    tb, b = in_thread(lambda: post(url + "/picture", picture_json(data, "bicubic"), json_type))
    wait_until(lambda: get(url + "/health")["jobs"]["queued"] == 1, 30, what="the second job to queue")
    status, headers, body = post(url + "/picture", picture_json(data, "bicubic"), json_type, timeout=10)
    assert status == 503 and headers["Retry-After"] == "7" and "busy" in json.loads(body)["detail"]
    status, headers, _ = upload(url, "c.png", data, {"model": "bicubic"}, timeout=10)
    assert status == 503 and headers["Retry-After"] == "7"
    assert get(url + "/health")["jobs"] == {"running": 1, "queued": 1, "capacity": 2, "done": 0, "dropped": 0}
    gate.set()
    ta.join(30)
    tb.join(30)
    for r in (a["r"], b["r"]):
        assert r[0] == 200
        np.testing.assert_array_equal(decode_png(base64.b64decode(json.loads(r[2])["DATA"])),
                                      imresize(decode_png(data), 2))
    wait_until(lambda: get(url + "/health")["jobs"]["done"] == 2, 10, what="the job count")


def test_client_gone_while_queued_drops_its_job(gated_server):
    url, gate, entered = gated_server
    data = png_bytes(image(16, 16))
    ta, a = in_thread(lambda: post(url + "/picture", picture_json(data, "slow"), {"Content-Type": "application/json"}))
    assert entered.wait(30), "the first job never started"
    body = picture_json(data, "slow")
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /picture HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: get(url + "/health")["jobs"]["queued"] == 1, 30, what="the second job to queue")
    wait_until(lambda: get(url + "/health")["jobs"]["dropped"] == 1, 30, what="the queued job to be dropped")
    assert get(url + "/health")["jobs"]["queued"] == 0
    gate.set()
    ta.join(30)
    assert a["r"][0] == 200
    wait_until(lambda: get(url + "/health")["jobs"] == {"running": 0, "queued": 0, "capacity": 2, "done": 1,
                                                        "dropped": 1}, 10, what="the counts")


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    """``python -m minisr.serve`` on a free loopback port, its temporary folder under a test folder."""
    tmp = tmp_path_factory.mktemp("serve-tmp")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp), NUMBA_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "minisr.serve", "--port", str(port), "--models", "bicubic",
                             "--max-upload-mb", "4", "--max-pixels", "1000000", "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or get(url + "/health")["status"] == "ok", 90, 0.2,
                   what="python -m minisr.serve")
        assert proc.poll() is None, proc.stdout.read()
        yield proc, url, tmp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_client_disconnecting_mid_upload_leaks_nothing(server_process):
    proc, url, tmp = server_process
    port = int(url.rsplit(":", 1)[1])
    ok = upload(url, "a.png", png_bytes(image(8, 8)), {"model": "bicubic"})
    assert ok[0] == 200
    before = open_fds(proc.pid)
    for _ in range(4):  # 3 MB announced, 2 MB sent (past Starlette's 1 MB in-memory part: spooled to a file)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        head, ctype = multipart("big.png", b"", {"model": "bicubic"})
        s.sendall((f"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: 3000000\r\n\r\n"
                   ).encode() + head[:-len("\r\n--minisrtestboundary--\r\n")])
        s.sendall(b"\x89PNG" + b"\0" * 2_000_000)
        s.close()
    wait_until(lambda: open_fds(proc.pid) <= before, 20, what="the server to close the aborted uploads' files")
    h = get(url + "/health")
    assert h["jobs"]["running"] == h["jobs"]["queued"] == 0 and h["temp_entries"] == 0
    assert upload(url, "b.png", png_bytes(image(8, 8)), {"model": "bicubic"})[0] == 200
    assert proc.poll() is None


def test_body_over_limit_is_413_before_it_is_sent(server_process):
    """A client that announces 5 MB (and waits, as curl does with Expect: 100-continue) gets the 413 at once."""
    _, url, _ = server_process
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 5242880\r\nExpect: 100-continue\r\n\r\n")
        answer = b""
        while b"}" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"100 Continue" not in head
    assert "request body of 5242880 bytes is over the limit of 4194304 bytes" in json.loads(body)["detail"]


def test_sigint_drains_exits_cleanly_and_restarts(server_process):
    proc, url, tmp = server_process
    img = image(280, 280, seed=5)  # bicubic x4 to 1120 x 1120: seconds here, in progress at the signal
    body, ctype = multipart("big.png", png_bytes(img), {"model": "bicubic", "scale": "4"})
    result = {}
    t = threading.Thread(target=lambda: result.update(r=post(url + "/upscale", body, {"Content-Type": ctype}, 120)))
    t.start()
    wait_until(lambda: "r" in result or get(url + "/health")["jobs"]["running"] == 1, 30, what="the job to start")
    proc.send_signal(signal.SIGINT)
    t.join(120)
    assert result["r"][0] == 200 and decode_png(result["r"][2]).shape == (1120, 1120, 3)
    assert proc.wait(60) == 0
    log = proc.stdout.read()
    assert "Traceback" not in log, log
    assert list(tmp.iterdir()) == []  # the service's temporary folder is gone
    # and it starts again on the same port at once
    port = url.rsplit(":", 1)[1]
    again = subprocess.Popen([sys.executable, "-m", "minisr.serve", "--port", port, "--models", "bicubic",
                              "--log-level", "warning"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: again.poll() is not None or get(url + "/health")["status"] == "ok", 90, 0.2,
                   what="the restarted server")
        assert again.poll() is None
        assert upload(url, "a.png", png_bytes(image(8, 8)), {"model": "bicubic"})[0] == 200
        again.send_signal(signal.SIGINT)
        assert again.wait(60) == 0
    finally:
        if again.poll() is None:
            again.kill()
            again.wait(10)


def test_cli_unknown_model_exits_2(capsys):
    from minisr.serve.__main__ import main

    assert main(["--models", "bicubic", "no-such-model", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "Traceback" not in err
