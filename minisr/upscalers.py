"""Every upscaler in one place: uint8 LR image in, uint8 SR image out.

    bicubic_upscaler(scale)            MATLAB bicubic, the baseline of every table
    Upscaler(model, meta, scale)       a trained network on whole images: tiles with overlap (no seams), Y or RGB,
                                       repeated passes for x4 from x2 (``forward_tiled`` does the tiling)
    SelfEnsemble(upscaler)             the x8 self-ensemble (EDSR's "+"): the 8 flips / rotations, averaged
    make_upscaler(spec, scale)         any of them from 'bicubic', a checkpoint path or a shipped model name

Evaluation (``minisr.eval``), the CLI (``minisr.upscale``), training's validation and the paper table
(``minisr.report``) all import from here; this module imports none of them.
"""

from __future__ import annotations

import math

import numpy as np

from . import nn
from .data import imresize, rgb_to_ycbcr, ycbcr_to_rgb
from .data.imresize import round_uint8
from .data.patches import dihedral
from .device import to_device
from .tensor import Tensor, no_grad

__all__ = ["bicubic_upscaler", "Upscaler", "SelfEnsemble", "make_upscaler", "forward_tiled", "receptive_radius",
           "dihedral", "undo_dihedral", "activation_bytes", "tile_for_memory"]


def _check_uint8(lr, who: str) -> np.ndarray:
    img = np.asarray(lr)
    if img.dtype != np.uint8:
        raise TypeError(f"{who} expects a uint8 image, got {img.dtype}")
    return img


def bicubic_upscaler(scale: int):
    """The baseline: ``imresize(lr, scale)``, MATLAB bicubic, uint8 in and out."""
    def upscale(lr):
        return imresize(lr, scale)
    return upscale


def receptive_radius(model: nn.Module) -> int:
    """An upper bound on how far (in input pixels) an output pixel looks: the sum of the convolutions' padding,
    plus the valid border. Tiles overlap by this much, so every kept output pixel sees exactly what it would untiled."""
    pad = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str):  # "same" with an even kernel: k // 2 on the wider side
                p = max(m.kernel_size) // 2
            else:
                p = m.padding if isinstance(m.padding, int) else max(m.padding)
            pad += p
        elif isinstance(m, nn.ConvTranspose2d):
            # output pixel o (of input pixel i = o // s) reads inputs i - ceil((k - 1 - p) / s) .. i + (s - 1 + p) // s
            st = (m.stride,) * 2 if isinstance(m.stride, int) else m.stride
            pd = (m.padding,) * 2 if isinstance(m.padding, int) else m.padding
            pad += max(max(-(-(k - 1 - p) // s), (s - 1 + p) // s) for k, s, p in zip(m.kernel_size, st, pd))
    return pad


def forward_tiled(model: nn.Module, x: np.ndarray, tile: int = 192, device: str = "cpu",
                  release: bool = False) -> np.ndarray:
    """``model`` applied to x (N, C, H, W) float, tile by tile, stitched to (N, C', H*s, W*s).

    ``release``: empty the kernels' workspace cache after every tile, so that idle buffers of other tile sizes
    (the edges) do not pile up beside the next tile's (``--max-memory``: memory before speed).

    Valid-padding models (``border`` b > 0, SRCNN) first get the image edge-replicated by b so the output keeps the
    input size. Each tile is cut with ``receptive_radius`` pixels of context on every side and only its centre is
    kept, so the result equals the untiled forward (up to float rounding).
    """
    N, C, H, W = x.shape
    s, b = model.scale, model.border
    r = 0 if b else receptive_radius(model)
    if b:
        x = np.pad(x, ((0, 0), (0, 0), (b, b), (b, b)), mode="edge")
    tile = max(int(tile), 1)
    out = None
    with no_grad():
        for y0 in range(0, H, tile):
            y1 = min(y0 + tile, H)
            ya, yb = max(y0 - r, 0), min(y1 + r, H)
            for x0 in range(0, W, tile):
                x1 = min(x0 + tile, W)
                xa, xb = max(x0 - r, 0), min(x1 + r, W)
                patch = Tensor(to_device(np.ascontiguousarray(x[:, :, ya:yb + 2 * b, xa:xb + 2 * b]), device))
                y = model(patch).numpy()
                if out is None:
                    out = np.empty((N, y.shape[1], H * s, W * s), dtype=y.dtype)
                ky, kx = (y0 - ya) * s, (x0 - xa) * s  # where the kept centre starts in the tile's output
                out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = y[:, :, ky:ky + (y1 - y0) * s, kx:kx + (x1 - x0) * s]
                del y, patch
                if release and device == "cpu":
                    _empty_workspace()
    return out


def _empty_workspace() -> None:
    from . import backends

    empty = getattr(backends.get_backend(), "empty_cache", None)
    if empty:
        empty()


def activation_bytes(model: nn.Module, side: int) -> int:
    """The peak memory (bytes) one inference forward of ``model`` takes on a ``side`` x ``side`` input, beyond what
    was allocated before: measured with ``tracemalloc``, which sees NumPy's buffers (the activations, the numba
    backend's workspace), after a small warm-up run (compiling the kernels) and with the workspace cache emptied,
    so that it counts what a tile of that size needs. CPU only (a GPU's memory is not traced)."""
    import tracemalloc

    x = np.random.default_rng(0).random((1, model.in_channels, side, side)).astype(np.float32)
    with no_grad():
        small = min(side, 16 + 2 * model.border)
        model(Tensor(np.ascontiguousarray(x[:, :, :small, :small])))  # warm-up: the kernels compiled (not counted)
        _empty_workspace()
        was_tracing = tracemalloc.is_tracing()
        if not was_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            model(Tensor(x)).numpy()
            return max(tracemalloc.get_traced_memory()[1] - base, 0)
        finally:
            if not was_tracing:
                tracemalloc.stop()


#: headroom on the measured cost per pixel (allocator slack, the stitching copies of a tile's output)
MEMORY_SAFETY = 1.25
MIN_TILE = 8


def tile_for_memory(model: nn.Module, max_bytes: int) -> int:
    """The largest tile (in network-input pixels, as ``forward_tiled``'s ``tile``) whose forward stays within
    ``max_bytes``: the cost per pixel and the fixed part are measured on two small inputs (:func:`activation_bytes`),
    then a tile side s must satisfy ``per_pixel * (s + 2 context)^2 + fixed <= max_bytes`` (context: the receptive
    radius, or the valid border, on each side). The whole image's input and output arrays are not part of it."""
    b = model.border
    ctx = b if b else receptive_radius(model)
    a_side, b_side = 24 + 2 * b, 48 + 2 * b
    pa, pb = activation_bytes(model, a_side), activation_bytes(model, b_side)
    per_px = max((pb - pa) / (b_side ** 2 - a_side ** 2), pb / b_side ** 2) * MEMORY_SAFETY
    fixed = max(pa - per_px * a_side ** 2, 0.0)
    side = int(math.isqrt(max(int((max_bytes - fixed) / per_px), 0)))
    for _ in range(3):  # the cost per pixel is not quite constant (buffer sizes cross thresholds): check the tile
        if side - 2 * ctx < MIN_TILE:
            break
        used = activation_bytes(model, side) * MEMORY_SAFETY
        if used <= max_bytes:
            break
        side = int(side * math.sqrt(max_bytes / used) * 0.95)
    tile = side - 2 * ctx
    if tile < MIN_TILE:
        need = per_px * (MIN_TILE + 2 * ctx) ** 2 + fixed
        raise ValueError(f"--max-memory {max_bytes / 2 ** 20:.0f}M is too small for this model: it takes "
                         f"{per_px / 1024:.1f} KiB per input pixel, and the smallest tile ({MIN_TILE} pixels + "
                         f"{ctx} of context a side) needs {need / 2 ** 20:.1f}M")
    return tile


class Upscaler:
    """``Upscaler(model, meta, scale)(lr_uint8) -> sr_uint8``.

    * Y models (in_channels 1) on colour images: the Y channel goes through the model, Cb and Cr are bicubic.
      Greyscale images are their own Y.
    * RGB models take RGB; a greyscale image is repeated into three channels and averaged back.
    * SRCNN/VDSR (``upsample_input``) first enlarge by bicubic; EDSR enlarges itself.
    * A scale the model was not trained for but a power of one it was (x4 from x2) runs the model repeatedly.
    """

    def __init__(self, model: nn.Module, meta: dict, scale: int, device: str = "cpu", tile: int | None = 192,
                 max_memory: int | None = None):
        if max_memory is not None:  # the largest tile whose activations fit the budget (CPU memory)
            if str(device).lower().startswith("cuda"):
                raise ValueError("--max-memory budgets the CPU's memory; on a GPU give --tile")
            tile = tile_for_memory(model, int(max_memory))
        self.model, self.meta, self.scale, self.device, self.tile = model, meta, int(scale), device, tile or 192
        self.budgeted = max_memory is not None
        trained = [int(s) for s in meta.get("scales", [meta.get("scale", model.scale)])]
        self.passes = None
        for s in sorted(trained, reverse=True):  # the largest trained factor that fits: x4 directly, not x2 twice
            k = round(math.log(self.scale) / math.log(s)) if s > 1 else 0
            if k >= 1 and s ** k == self.scale:
                self.step_scale, self.passes = s, k
                break
        if self.passes is None:
            raise ValueError(f"model {meta.get('name', meta.get('model'))} was trained for x{trained}; "
                             f"x{self.scale} is not one of those scales or a power of one")
        if not model.upsample_input and self.step_scale != model.scale:
            raise ValueError(f"model enlarges x{model.scale} itself; cannot run it for x{self.step_scale}")

    def _net(self, x: np.ndarray) -> np.ndarray:
        """HxWxC float image in [0, 1] -> the model's output HxWxC (float, unclipped)."""
        t = np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
        return forward_tiled(self.model, t, self.tile, self.device, release=self.budgeted)[0].transpose(1, 2, 0)

    def _one_pass(self, img: np.ndarray) -> np.ndarray:
        """float64 HxW or HxWx3 on [0, 255] -> float64 on [0, 255], enlarged by step_scale.

        The network input is clipped to [0, 255] as the training inputs are: the Y (or RGB) the model sees."""
        s, m = self.step_scale, self.model
        up = imresize(img, s) if (m.upsample_input or m.in_channels == 1) else None  # bicubic: input and/or chroma
        net_in = up if m.upsample_input else img
        if m.in_channels == 1:
            if img.ndim == 2:  # greyscale is its own luminance
                return self._net(np.clip(net_in, 0, 255)[..., None] / 255.0)[..., 0].astype(np.float64) * 255.0
            ycc = _by_rows(rgb_to_ycbcr, up, out=up)  # (in place: the enlarged RGB image becomes its YCbCr)
            y_in = ycc[..., :1] if m.upsample_input else rgb_to_ycbcr(img)[..., :1]
            del up, net_in
            ycc[..., 0] = self._net(np.clip(y_in, 0, 255) / 255.0)[..., 0] * 255.0
            return _by_rows(ycbcr_to_rgb, ycc, out=ycc)
        gray = img.ndim == 2
        out = self._rgb_net(np.repeat(net_in[..., None], 3, axis=2) if gray else net_in)
        out64 = out.astype(np.float64)
        del out
        out64 *= 255.0
        return out64.mean(axis=2) if gray else out64

    def _rgb_net(self, rgb: np.ndarray) -> np.ndarray:
        """An RGB model on HxWx3 float64 [0, 255] (clipped, / 255): its float32 output, before the * 255."""
        rgb = np.clip(rgb, 0, 255)
        rgb /= 255.0  # (in place, as every step here: one whole-image array at a time, not three)
        return self._net(rgb)

    def upscale_float(self, lr: np.ndarray) -> np.ndarray:
        """The SR image before rounding: float64 on [0, 255] (what the self-ensemble averages)."""
        img = _check_uint8(lr, "Upscaler")
        out = img.astype(np.float64)
        for _ in range(self.passes):
            out = self._one_pass(out)
            np.clip(out, 0, 255, out=out)
        return out

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        img = _check_uint8(lr, "Upscaler")
        m = self.model
        if self.passes == 1 and img.ndim == 3 and m.in_channels == 3 and not m.upsample_input:
            # EDSR-like on a colour image: the float32 output converted to float64, scaled, clipped and rounded a
            # band of rows at a time -- the same operations as upscale_float + round_uint8, without the whole
            # float64 output (800 MB for a 4K x2 image)
            out = self._rgb_net(img.astype(np.float64))
            return _by_rows(_float32_to_uint8, out, out=np.empty(out.shape, np.uint8))
        out = self.upscale_float(img)  # rounded a band of rows at a time: without round_uint8's whole-image
        return _by_rows(round_uint8, out, out=np.empty(out.shape, np.uint8))  # float64 temporaries (2.4 GB at 4K x2)


def _float32_to_uint8(band: np.ndarray) -> np.ndarray:
    """A model's float32 output on [0, 1] -> uint8: to float64, x 255, clipped, rounded (upscale_float's steps)."""
    band = band.astype(np.float64)
    band *= 255.0
    np.clip(band, 0, 255, out=band)
    return round_uint8(band)


def _by_rows(fn, x: np.ndarray, rows: int = 256, out: np.ndarray | None = None) -> np.ndarray:
    """``fn(x)`` for a per-pixel ``fn`` (the colour conversions, the rounding), a band of rows at a time into one
    array (``out``, which may be x itself; default a new float64 one): the same values without fn's whole-image
    temporaries (four of them, 1.1 GB each for a 48-megapixel output)."""
    out = np.empty(x.shape, np.float64) if out is None else out
    for r0 in range(0, x.shape[0], rows):
        out[r0:r0 + rows] = fn(x[r0:r0 + rows])
    return out


def undo_dihedral(img, k: int):
    """The inverse of :func:`minisr.data.dihedral`: ``undo_dihedral(dihedral(x, k), k) == x``."""
    out = img[:, ::-1] if k >= 4 else img
    return np.rot90(out, -(k % 4), axes=(0, 1))


class SelfEnsemble:
    """The x8 self-ensemble (EDSR's "+" models): upscale each of the 8 flips / 90-degree rotations of the LR image,
    undo the transform on each result, average the eight (before rounding), round to uint8.

    ``upscaler`` is an :class:`Upscaler` (its unrounded ``upscale_float`` is averaged) or any uint8 -> uint8
    callable (its uint8 outputs are averaged).
    """

    def __init__(self, upscaler):
        self.upscaler = upscaler
        self.scale = getattr(upscaler, "scale", None)

    def upscale_float(self, lr: np.ndarray) -> np.ndarray:
        img = _check_uint8(lr, "SelfEnsemble")
        one = getattr(self.upscaler, "upscale_float", None) or (lambda x: np.asarray(self.upscaler(x), np.float64))
        total = None
        for k in range(8):
            out = undo_dihedral(one(np.ascontiguousarray(dihedral(img, k))), k)
            total = out.astype(np.float64) if total is None else total + out
        return total / 8.0

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        return round_uint8(np.clip(self.upscale_float(lr), 0, 255))


def make_upscaler(spec: str, scale: int, device: str = "cpu", tile: int | None = 192, ensemble: bool = False,
                  max_memory: int | None = None):
    """An upscaler for ``"bicubic"``, a checkpoint path, or a shipped model name (e.g. ``"srcnn-x3"``);
    ``ensemble=True`` wraps it in the x8 :class:`SelfEnsemble`; ``max_memory`` (bytes): choose the tile size so
    that the model's activations stay within it (:func:`tile_for_memory`)."""
    if spec == "bicubic":
        if max_memory is not None:  # (it would be ignored)
            raise ValueError("--max-memory chooses the tile size of a model's forward; bicubic runs no model")
        up = bicubic_upscaler(scale)
    else:
        from .models import load

        model, meta = load(spec, device=device)
        meta.setdefault("name", str(spec))
        up = Upscaler(model, meta, scale, device=device, tile=tile, max_memory=max_memory)
    return SelfEnsemble(up) if ensemble else up
