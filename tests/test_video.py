"""Videos through ``python -m minisr.upscale``: small clips made here with PyAV (8 frames of 32x24, with and without
audio), frame rate and audio kept, ``--compare``, and bad input (not a video, no video stream, a corrupt frame)
leaving nothing under the output name."""

import numpy as np
import pytest

av = pytest.importorskip("av")

from minisr import upscale as cli  # noqa: E402
from minisr import video  # noqa: E402
from minisr.data import imresize  # noqa: E402

W, H, N, FPS = 32, 24, 8, 24


def frame_image(i, w=W, h=H):
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w)[None].astype(np.uint8)
    img[..., 1] = 30 * i
    img[4:12, 2 * i:2 * i + 8] = 255
    return img


def make_clip(path, n=N, audio=False, codec="libx264", corrupt=None, fps=FPS, w=W, h=H):
    """A clip of ``n`` frames; ``audio`` adds a sine on an AAC stream; ``corrupt=k`` replaces frame k's packet with
    garbage (with an intra-only codec such as png, the decoder then fails on exactly that frame)."""
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=fps)
        v.width, v.height = w, h
        v.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
        a = None
        if audio:
            a = c.add_stream("aac", rate=16000)
            a.layout = "mono"
        k = 0
        for i in range(n + 1):
            frame = None
            if i < n:
                frame = av.VideoFrame.from_ndarray(frame_image(i, w, h), format="rgb24")
                frame.pts = i
            for p in v.encode(frame):
                if corrupt is not None and k == corrupt:
                    bad = av.Packet(b"\x00garbage" * 8)
                    bad.pts, bad.dts, bad.time_base, bad.stream = p.pts, p.dts, p.time_base, p.stream
                    p = bad
                k += 1
                c.mux(p)
        if a is not None:
            sr = 16000
            t = np.arange(int(sr * n / fps)) / sr
            s = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            pts = 0
            for j in range(0, s.shape[1], 1024):
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(s[:, j:j + 1024]), format="fltp", layout="mono")
                f.sample_rate, f.pts = sr, pts
                pts += f.samples
                for p in a.encode(f):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return path


def read_frames(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def nearest(scale):
    return lambda lr: np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)


def test_upscale_video_frames_rate_and_audio(tmp_path):
    src = make_clip(tmp_path / "clip.mp4", audio=True)
    dst = tmp_path / "out" / "big.mp4"
    info = video.upscale_video(src, dst, nearest(2), 2, progress=False)
    assert info["frames"] == N and info["audio"] == 1 and info["out_size"] == (2 * W, 2 * H)
    p = video.probe(dst)
    assert (p["width"], p["height"], p["fps"], p["audio"]) == (2 * W, 2 * H, FPS, 1)
    lr, sr = read_frames(src), read_frames(dst)
    assert len(sr) == N
    for a, b in zip(lr, sr):  # the upscaled frames are the input frames enlarged (up to the codec's loss)
        assert np.abs(b.astype(float) - nearest(2)(a)).mean() < 4
    # the audio was copied packet for packet, not re-encoded
    with av.open(str(src)) as c1, av.open(str(dst)) as c2:
        bytes_in = [bytes(p) for p in c1.demux(audio=0) if p.size]
        bytes_out = [bytes(p) for p in c2.demux(audio=0) if p.size]
        assert c2.streams.audio[0].codec_context.name == "aac"
    assert bytes_in == bytes_out and len(bytes_in) > 0
    assert sorted(x.name for x in dst.parent.iterdir()) == ["big.mp4"]  # no temporary file left


def test_cli_video_without_audio_and_compare(tmp_path, capsys):
    src = make_clip(tmp_path / "clip.mkv", n=5)
    dst = tmp_path / "out.mkv"
    assert cli.main([str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2", "--compare"]) == 0
    out = capsys.readouterr().out
    assert "5 frames at 24.000 fps" in out and "0 audio stream(s)" in out
    assert video.probe(dst)["audio"] == 0
    cmp = tmp_path / "out_compare.mkv"
    frames, side = read_frames(dst), read_frames(cmp)
    assert len(side) == 5 and side[0].shape == (2 * H, 4 * W, 3)
    lr = read_frames(src)[2]
    np.testing.assert_allclose(side[2][:, 2 * W:].astype(float), frames[2], atol=40)  # right half: SR
    assert np.abs(side[2][:, :2 * W].astype(float) - imresize(lr, 2)).mean() < 4  # left half: bicubic
    # a second run refuses to overwrite; --overwrite replaces
    assert cli.main([str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert cli.main([str(src), "-o", str(tmp_path), "--model", "bicubic", "--scale", "3"]) == 0
    assert video.probe(tmp_path / "clip_x3.mkv")["width"] == 3 * W


def test_not_a_video(tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 20)
    dst = tmp_path / "out.mp4"
    assert cli.main([str(bad), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "notes.mp4 is not a video" in err and "Traceback" not in err
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4"]


def test_no_video_stream(tmp_path):
    src = tmp_path / "sound.mkv"
    with av.open(str(src), "w") as c:
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = 16000, 0
        for p in list(a.encode(f)) + list(a.encode(None)):
            c.mux(p)
    with pytest.raises(video.VideoReadError, match="no video stream.*audio"):
        video.upscale_video(src, tmp_path / "out.mp4", nearest(2), 2, progress=False)
    assert not (tmp_path / "out.mp4").exists()


def test_corrupt_frame_names_it_and_leaves_nothing(tmp_path, capsys):
    src = make_clip(tmp_path / "clip.avi", codec="png", corrupt=4)
    dst = tmp_path / "out.mkv"
    with pytest.raises(video.VideoReadError, match=r"frame 4 \(t = 0.167 s\) cannot be decoded"):
        video.upscale_video(src, dst, nearest(2), 2, compare=tmp_path / "cmp.mkv", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi"]  # no output, no temporary file
    assert cli.main([str(src), "-o", str(dst), "--model", "bicubic", "--scale", "2"]) == 2
    assert "frame 4" in capsys.readouterr().err and not dst.exists()


def test_limits(tmp_path):
    src = make_clip(tmp_path / "clip.mp4")
    with pytest.raises(video.VideoTooLongError, match="over the limit of 5"):
        video.upscale_video(src, tmp_path / "a.mp4", nearest(2), 2, max_frames=5, progress=False)
    with pytest.raises(video.VideoTooLongError, match="768 pixels, over the limit of 500"):
        video.upscale_video(src, tmp_path / "b.mp4", nearest(2), 2, max_pixels=500, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_images_keep_working_and_compare_needs_hr(tmp_path, capsys):
    from minisr.data import write_image

    img = tmp_path / "a.png"
    write_image(img, frame_image(1))
    assert cli.main([str(img), "-o", str(tmp_path / "out"), "--model", "bicubic", "--scale", "2", "--compare"]) == 2
    assert "--compare needs an HR image" in capsys.readouterr().err
    assert cli.main([str(img), "-o", str(tmp_path / "out"), "--model", "bicubic", "--scale", "2"]) == 0


def test_core_import_needs_neither_av_nor_fastapi():
    import subprocess
    import sys

    code = ("import sys, minisr, minisr.upscale, minisr.video, minisr.serve; "
            "print(sorted(m for m in ('av', 'fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_odd_sizes_are_padded_to_even(tmp_path):
    """yuv420p (x264) needs even sizes: 33x25 x3 = 99x75 is written as 100x76, the last row/column repeated."""
    src = make_clip(tmp_path / "odd.avi", n=3, codec="png", w=33, h=25)
    dst = tmp_path / "odd_x3.mp4"
    info = video.upscale_video(src, dst, nearest(3), 3, progress=False)
    assert info["out_size"] == (100, 76)
    frames, lr = read_frames(dst), read_frames(src)
    assert frames[0].shape == (76, 100, 3)
    assert np.abs(frames[1][:75, :99].astype(float) - nearest(3)(lr[1])).mean() < 4
