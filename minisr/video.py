"""Upscaling videos frame by frame: ``python -m minisr.upscale clip.mp4 -o out.mp4 --model NAME [--compare]``.

Any container and codec FFmpeg reads (through PyAV, the ``av`` package, imported only here and only when a video is
given). Frames are decoded, upscaled by the same tiled upscaler as images and encoded one at a time, so memory does
not grow with the length of the video. The output has the input's frame rate (its average rate; frames are numbered
at that rate), and its audio streams are copied packet by packet (remuxed, not re-encoded). ``--compare`` also writes
``<out>_compare.<ext>``: bicubic | SR side by side.

Everything is written under a temporary name in the output's folder and renamed only when the whole video succeeded:
a video that cannot be read, has no video stream, or has a frame that cannot be decoded (the error names the frame)
leaves nothing under the final name.
"""

from __future__ import annotations

import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from .atomic import create_beside

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".ogv", ".wmv")
# encoders tried in order for an output extension (the first that this FFmpeg build has wins)
_ENCODERS = {".webm": ("libvpx-vp9", "libvpx"), ".ogv": ("libtheora",), ".avi": ("mpeg4",),
             ".mpg": ("mpeg2video",), ".mpeg": ("mpeg2video",), ".flv": ("flv",), ".wmv": ("wmv2",)}
_DEFAULT_ENCODERS = ("libx264", "mpeg4")


class VideoReadError(ValueError):
    """A video that cannot be read: not a video, no video stream, or a frame that cannot be decoded."""


class VideoTooLongError(ValueError):
    """A video with more frames (or larger frames) than the caller allows."""


def is_video_path(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _av():
    try:
        import av
    except ImportError as err:  # pragma: no cover - av is a dependency of the serve/dev extras
        raise RuntimeError(f"videos need PyAV: pip install av ({err})") from err
    return av


def probe(src) -> dict:
    """``{"frames", "width", "height", "fps", "audio"}`` of a video file (frames is 0 when the container
    does not say); VideoReadError when it is not a video or has no video stream."""
    inp = _open(src)
    try:
        v = inp.streams.video[0]
        return dict(frames=int(v.frames or 0), width=v.codec_context.width, height=v.codec_context.height,
                    fps=float(_rate(v)), audio=len(inp.streams.audio))
    finally:
        inp.close()


def _open(src):
    av = _av()
    src = Path(src)
    if not src.is_file():
        raise VideoReadError(f"cannot read video {src}: no such file")
    try:
        inp = av.open(str(src), "r")
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise VideoReadError(f"{src} is not a video FFmpeg can read ({err})") from err
    if not inp.streams.video:
        kinds = ", ".join(s.type for s in inp.streams) or "none"
        inp.close()
        raise VideoReadError(f"{src} has no video stream (its streams: {kinds})")
    return inp


def _rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(25)


def _video_stream(out, ext: str, rate: Fraction, width: int, height: int):
    av = _av()
    for name in _ENCODERS.get(ext, _DEFAULT_ENCODERS):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # this FFmpeg build lacks the encoder: try the next one
            continue
        stream = out.add_stream(name, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if name == "libx264":
            stream.options = {"crf": "18", "preset": "medium"}
        elif name in ("mpeg4", "mpeg2video", "flv", "wmv2"):
            stream.bit_rate = max(2_000_000, width * height * 8)
        return stream
    raise RuntimeError(f"no video encoder for {ext} files in this FFmpeg build")


def _even(img: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: an odd last row/column is repeated once."""
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return img


class _Output:
    """An output video under a temporary name in the destination's folder; ``commit`` renames it."""

    def __init__(self, dst: Path, rate: Fraction, width: int, height: int, audio):
        av = _av()
        self.dst = dst
        fd, tmp = create_beside(dst, suffix=".part" + dst.suffix)
        os.close(fd)
        self.tmp = Path(tmp)
        try:
            self.container = av.open(str(self.tmp), "w", format=_format_for(dst))
            self.video = _video_stream(self.container, dst.suffix.lower(), rate, width, height)
            self.audio = {a.index: self.container.add_stream_from_template(a) for a in audio}
        except Exception:
            self.discard()
            raise
        self.n = 0

    def frame(self, rgb: np.ndarray) -> None:
        av = _av()
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(_even(rgb)), format="rgb24")
        f.pts = self.n
        self.n += 1
        for packet in self.video.encode(f):
            self.container.mux(packet)

    def mux_audio(self, packet) -> None:
        packet.stream = self.audio[packet.stream.index]
        self.container.mux(packet)

    def close(self) -> None:
        for packet in self.video.encode(None):  # flush the encoder
            self.container.mux(packet)
        self.container.close()
        self.container = None

    def commit(self) -> None:
        os.replace(self.tmp, self.dst)

    def discard(self) -> None:
        if getattr(self, "container", None) is not None:
            try:
                self.container.close()
            except Exception:  # a broken half-written file: it is deleted next anyway
                pass
            self.container = None
        self.tmp.unlink(missing_ok=True)


def _format_for(dst: Path) -> str | None:
    return {".m4v": "mp4", ".ts": "mpegts", ".mpg": "mpeg", ".mpeg": "mpeg", ".ogv": "ogg", ".wmv": "asf",
            ".mkv": "matroska"}.get(dst.suffix.lower())


def compare_path(dst) -> Path:
    dst = Path(dst)
    return dst.with_name(f"{dst.stem}_compare{dst.suffix}")


def upscale_video(src, dst, upscaler, scale: int, *, compare=None, overwrite: bool = False,
                  max_frames: int | None = None, max_pixels: int | None = None, progress: bool = True) -> dict:
    """Upscale the video ``src`` into ``dst`` frame by frame with ``upscaler`` (uint8 HxWx3 -> uint8, ``scale``
    times larger); ``compare`` (a path) also gets bicubic | SR side by side. Returns a summary dict.

    Raises VideoReadError (not a video, no video stream, frame N cannot be decoded), VideoTooLongError (more than
    ``max_frames`` frames or frames over ``max_pixels``), FileExistsError; nothing is left under ``dst`` or
    ``compare`` unless the whole video succeeded.
    """
    av = _av()
    src, dst = Path(src), Path(dst)
    targets = [dst] + ([Path(compare)] if compare else [])
    for t in targets:
        if t.exists() and t.resolve() == src.resolve():
            raise FileExistsError(f"refusing to write {t}: it is the input video")
        if t.exists() and not overwrite:
            raise FileExistsError(f"refusing to overwrite {t} (pass --overwrite)")
        if not is_video_path(t):
            raise ValueError(f"{t}: not a video file name (use one of {', '.join(VIDEO_EXTENSIONS)})")
    inp = _open(src)
    outs: list[_Output] = []
    t0 = time.perf_counter()
    try:
        vin = inp.streams.video[0]
        w, h, total = vin.codec_context.width, vin.codec_context.height, int(vin.frames or 0)
        if max_pixels and w * h > max_pixels:
            raise VideoTooLongError(f"{src}: frames of {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
        if max_frames and total > max_frames:
            raise VideoTooLongError(f"{src}: {total} frames, over the limit of {max_frames}")
        rate = _rate(vin)
        bicubic = None
        for t in targets:
            t.parent.mkdir(parents=True, exist_ok=True)
        sw, sh = -(-w * scale // 2) * 2, -(-h * scale // 2) * 2  # even, see _even
        outs.append(_Output(dst, rate, sw, sh, inp.streams.audio))
        if compare:
            from .data import imresize

            def bicubic(x):
                return imresize(x, scale)

            outs.append(_Output(Path(compare), rate, 2 * sw, sh, []))
        bar = _progress(total, src.name, progress)
        n = 0
        for packet in inp.demux(vin, *inp.streams.audio):
            if packet.stream.type != "video":
                if packet.dts is not None:  # the demuxer's final flush packets carry nothing
                    outs[0].mux_audio(packet)
                continue
            try:
                frames = packet.decode()
            except av.FFmpegError as err:
                t = f" (t = {float(packet.pts * packet.time_base):.3f} s)" if packet.pts is not None else ""
                raise VideoReadError(f"{src}: frame {n}{t} cannot be decoded: {err}") from err
            for frame in frames:
                if max_frames and n >= max_frames:
                    raise VideoTooLongError(f"{src}: more than {max_frames} frames, over the limit")
                lr = frame.to_ndarray(format="rgb24")
                sr = upscaler(lr)
                if sr.shape[:2] != (h * scale, w * scale):
                    raise RuntimeError(f"the upscaler returned {sr.shape} for a {lr.shape} frame at x{scale}")
                outs[0].frame(sr)
                if compare:
                    outs[1].frame(np.concatenate([_even(bicubic(lr)), _even(sr)], axis=1))
                n += 1
                bar.update(1)
        bar.close()
        if n == 0:
            raise VideoReadError(f"{src}: its video stream has no frame that can be decoded")
        for o in outs:
            o.close()
        for o in outs:
            o.commit()
    except BaseException:
        for o in outs:
            o.discard()
        raise
    finally:
        inp.close()
    seconds = time.perf_counter() - t0
    return dict(frames=n, fps=float(rate), size=(w, h), out_size=(sw, sh), audio=len(outs[0].audio),
                seconds=seconds, output=str(dst), compare=str(compare) if compare else None)


def _progress(total: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total or None, desc=name, unit="frame", disable=not enabled, file=sys.stderr)


# ------------------------------------------------------------------------------------------------------ the CLI
def is_video_job(args) -> bool:
    """``python -m minisr.upscale``'s arguments name a video (input or output extension)."""
    return any(is_video_path(p) and not Path(p).is_dir() for p in args.inputs) or is_video_path(args.output)


def main(args) -> int:
    """The video branch of ``python -m minisr.upscale`` (it parses the arguments and dispatches here)."""
    try:
        if len(args.inputs) != 1:
            raise ValueError(f"one video at a time, got {len(args.inputs)} inputs")
        src = Path(args.inputs[0])
        if not src.exists():
            raise FileNotFoundError(f"input not found: {src}")
        scale = args.scale
        if scale is None:
            if args.model == "bicubic":
                raise ValueError("--scale is required with --model bicubic")
            from .models import load

            scale = int(load(args.model)[1].get("scale", 2))
        if scale < 2:
            raise ValueError(f"--scale must be >= 2, got {scale}")
        dst = Path(args.output)
        if dst.is_dir() or not dst.suffix:
            dst = dst / f"{src.stem}_x{scale}{src.suffix if is_video_path(src) else '.mp4'}"
        cmp_dst = None
        if args.compare is not None:
            cmp_dst = Path(args.compare) if args.compare else compare_path(dst)
        from .inference import make_upscaler  # the one place videos get their upscaler

        upscaler = make_upscaler(args.model, scale, device=args.device, tile=args.tile,
                                 max_memory=getattr(args, "max_memory", None))
        info = upscale_video(src, dst, upscaler, scale, compare=cmp_dst, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (w, h), (sw, sh) = info["size"], info["out_size"]
    line = (f"{src} -> {dst} ({w}x{h} -> {sw}x{sh}, {info['frames']} frames at {info['fps']:.3f} fps, "
            f"{info['audio']} audio stream(s) copied, {info['frames'] / max(info['seconds'], 1e-9):.2f} frames/s)")
    if cmp_dst:
        line += f", compare: {cmp_dst}"
    print(line)
    return 0
