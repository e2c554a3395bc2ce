"""Training patches, made on the fly from HR images.

For every image (in a new random order each epoch), every rescale factor ``f`` and every scale ``s``::

    image = clip(imresize(image, f))          (scale augmentation; f = 1, the image itself, by default)
    hr = modcrop(image, s) on [0, 1]          (Y or RGB)
    lr = degrade(hr, s, blur_sigma, noise_sigma)   (= imresize(hr, 1/s) by default)
    mode 'upscaled':  input = clip(imresize(lr, s)), the bicubic-upscaled LR at HR size (SRCNN, VDSR)
                      input and target patches: patch_size x patch_size at the same place
    mode 'lr':        input = clip(lr), a patch_size x patch_size LR patch (EDSR)
                      target: the (patch_size * s)-square HR patch over it

Patches are random crops (``patches_per_image`` per image and scale) or, with ``stride``, every sub-image on
a grid (SRCNN's 33x33 with stride 14). ``augment`` applies one of the 8 flips / 90-degree rotations to each
pair. ``rescale`` adds downscaled copies of each image (FSRCNN's scale augmentation: factors 1, 0.9, 0.8, 0.7 and
0.6 make five training images of each), each one an image of its own in the epoch's order. Batches are float32
NCHW arrays on [0, 1].

Everything random comes from ``numpy.random.default_rng((seed, epoch))`` (the noise from a second stream,
so that the patches stay put when the noise level changes): an epoch is the same whenever it is replayed.
To resume, call ``batches(batch_size, epoch, start_step=k)``. Memory stays bounded: images given as paths
are read when needed, and only the patches of ``buffer_images`` images are held (and shuffled together) at
a time.
"""

import math
from pathlib import Path

import numpy as np

from minisr.data.color import rgb_to_y
from minisr.data.degrade import degrade
from minisr.data.imresize import imresize, modcrop, resized_shape
from minisr.data.io import list_images, read_image


def dihedral(img, k: int):
    """The k-th (0..7) of the 8 flips / rotations of an HxW[xC] array: rotate 90 k degrees, flip if k >= 4."""
    out = np.rot90(img, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


class PatchDataset:
    """Pairs of (input, target) patches for SR training; see the module docstring.

    Args:
        images: a folder, or a list of image paths (read on demand) and/or arrays (uint8, or float on [0, 1]).
        scales: one scale or a list, which mixes scales in one run (VDSR); in 'lr' mode a batch has one scale.
        patch_size: HR patch side in 'upscaled' mode, LR patch side in 'lr' mode.
        stride: None for random crops, or the step of a regular grid of patches.
        patches_per_image: random crops per image and scale per epoch (ignored with a stride).
        channels: 'y' (1 channel: MATLAB's Y, greyscale images as they are) or 'rgb' (greyscale repeated).
        augment: apply a random flip / rotation to each pair.
        mode: 'upscaled' or 'lr'.
        seed: seed of every random choice.
        blur_sigma, noise_sigma: the degradation (:func:`minisr.data.degrade`); noise_sigma in grey levels.
        buffer_images: how many images' patches are pooled and shuffled together.
        rescale: factors in (0, 1]: each image is used at each of these sizes (MATLAB imresize, antialiased).
    """

    def __init__(self, images, scales=2, patch_size: int = 33, *, stride=None, patches_per_image: int = 16,
                 channels: str = "y", augment: bool = True, mode: str = "upscaled", seed: int = 0,
                 blur_sigma: float = 0.0, noise_sigma: float = 0.0, buffer_images: int = 8, rescale=(1.0,)):
        if isinstance(images, (str, Path)):
            images = list_images(images)
        self.images = list(images)
        self.scales = [int(s) for s in (scales if isinstance(scales, (list, tuple)) else [scales])]
        if not self.images:
            raise ValueError("PatchDataset needs at least one image")
        if channels not in ("y", "rgb"):
            raise ValueError(f"channels must be 'y' or 'rgb', got {channels!r}")
        if mode not in ("upscaled", "lr"):
            raise ValueError(f"mode must be 'upscaled' or 'lr', got {mode!r}")
        self.rescale = tuple(float(f) for f in (rescale if isinstance(rescale, (list, tuple)) else [rescale]))
        if not self.rescale or not all(0.0 < f <= 1.0 for f in self.rescale):
            raise ValueError(f"rescale factors must be in (0, 1], got {rescale}")
        # what an epoch shuffles: (image index, factor) pairs; one per image when there is no rescaling
        self._items = [(k, f) for k in range(len(self.images)) for f in self.rescale]
        if patch_size < 1 or (stride is not None and stride < 1) or not self.scales or min(self.scales) < 1:
            raise ValueError(f"bad patch_size {patch_size} / stride {stride} / scales {self.scales}")
        self.patch_size, self.stride, self.patches_per_image = int(patch_size), stride, int(patches_per_image)
        self.channels, self.augment, self.mode, self.seed = channels, augment, mode, int(seed)
        self.blur_sigma, self.noise_sigma = blur_sigma, noise_sigma
        self.buffer_images = max(1, int(buffer_images))
        self._shapes = None

    # --- sizes ---

    def _grid(self, shape, scale: int):
        """Number of patch positions along each axis of the input grid (0 when the image is too small)."""
        h, w = shape[0] // scale, shape[1] // scale  # LR size
        if self.mode == "upscaled":
            h, w = h * scale, w * scale
        p = self.patch_size
        if h < p or w < p:
            return 0, 0
        if self.stride is None:
            return h - p + 1, w - p + 1
        return (h - p) // self.stride + 1, (w - p) // self.stride + 1

    def _count(self, shape, scale: int) -> int:
        gh, gw = self._grid(shape, scale)
        if gh == 0:
            return 0
        return self.patches_per_image if self.stride is None else gh * gw

    def _image_shapes(self):
        if self._shapes is None:
            import imageio.v3 as iio

            base = [tuple(iio.improps(im).shape[:2]) if isinstance(im, (str, Path)) else im.shape[:2]
                    for im in self.images]
            self._shapes = [base[k] if f == 1.0 else resized_shape(base[k], f) for k, f in self._items]
        return self._shapes

    def _counts_per_key(self):
        counts = {}
        for shape in self._image_shapes():
            for s in self.scales:
                key = s if self.mode == "lr" else 0
                counts[key] = counts.get(key, 0) + self._count(shape, s)
        return counts

    def __len__(self) -> int:
        """Patches per epoch."""
        return sum(self._counts_per_key().values())

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        """Batches that :meth:`batches` yields per epoch."""
        rounding = math.floor if drop_last else math.ceil
        return sum(rounding(n / batch_size) for n in self._counts_per_key().values())

    # --- patches ---

    def _load(self, i: int):
        """Item i (an image at one rescale factor) as float64 HxWxC on [0, 1], C = 1 ('y') or 3 ('rgb')."""
        k, factor = self._items[i]
        img = self.images[k]
        img = read_image(img) if isinstance(img, (str, Path)) else np.asarray(img)
        scale = 255.0 if img.dtype == np.uint8 else 1.0
        if self.channels == "y":
            img = rgb_to_y(img)[..., None] / scale
        else:
            img = img.astype(np.float64) / scale
            img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
        return img if factor == 1.0 else np.clip(imresize(img, factor), 0.0, 1.0)

    def _pairs(self, img, scale: int, rng, noise_rng):
        """All (input, target) CHW float32 patches of one image at one scale."""
        gh, gw = self._grid(img.shape, scale)
        if gh == 0:
            return []
        hr = modcrop(img, scale)
        lr = degrade(hr, scale, self.blur_sigma, self.noise_sigma / 255.0, noise_rng)
        inp = np.clip(imresize(lr, output_shape=hr.shape[:2]) if self.mode == "upscaled" else lr, 0.0, 1.0)
        if self.stride is None:
            ys = rng.integers(0, gh, size=self.patches_per_image)
            xs = rng.integers(0, gw, size=self.patches_per_image)
        else:
            ys, xs = np.meshgrid(np.arange(gh) * self.stride, np.arange(gw) * self.stride, indexing="ij")
            ys, xs = ys.ravel(), xs.ravel()
        ks = rng.integers(0, 8, size=len(ys)) if self.augment else np.zeros(len(ys), dtype=int)

        p = self.patch_size
        t = scale if self.mode == "lr" else 1  # target pixels per input pixel
        pairs = []
        for y, x, k in zip(ys, xs, ks):
            a = dihedral(inp[y:y + p, x:x + p], k)
            b = dihedral(hr[y * t:(y + p) * t, x * t:(x + p) * t], k)
            pairs.append((a.transpose(2, 0, 1).astype(np.float32), b.transpose(2, 0, 1).astype(np.float32)))
        return pairs

    def batches(self, batch_size: int, epoch: int = 0, drop_last: bool = False, start_step: int = 0):
        """Yield ``(inputs, targets)`` float32 NCHW batches of one epoch; equal for equal (seed, epoch).

        ``start_step`` skips that many batches (still drawing them, so the rest is unchanged): exact resume.
        """
        rng = np.random.default_rng((self.seed, epoch))
        noise_rng = np.random.default_rng((self.seed, epoch, 1))
        order = rng.permutation(len(self._items))
        pools = {}  # one pool per batch shape: per scale in 'lr' mode, a single one in 'upscaled' mode
        step = 0
        for start in range(0, len(order), self.buffer_images):
            for i in order[start:start + self.buffer_images]:
                img = self._load(i)
                for s in self.scales:
                    pool = pools.setdefault(s if self.mode == "lr" else 0, [])
                    pool.extend(self._pairs(img, s, rng, noise_rng))
            last_chunk = start + self.buffer_images >= len(order)
            for pool in pools.values():
                rng.shuffle(pool)
                while len(pool) >= batch_size or (last_chunk and pool and not drop_last):
                    batch, pool[:] = pool[:batch_size], pool[batch_size:]
                    if step >= start_step:
                        yield np.stack([a for a, _ in batch]), np.stack([b for _, b in batch])
                    step += 1
