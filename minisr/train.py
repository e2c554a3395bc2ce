"""``python -m minisr.train {srcnn,vdsr,edsr,fsrcnn,espcn,srresnet,srgan} [options]``: train an SR model with its
paper recipe by default.

With no options ``python -m minisr.train srcnn`` trains SRCNN x3 on the embedded default images (scikit-image's
photos; no download), validates each epoch, and prints the validation PSNR against bicubic and where it wrote:
``best.npz`` / ``last.npz`` checkpoints, ``history.csv`` and ``curves.png``. That is the quick recipe (minutes on a
CPU); ``--recipe paper`` is the long one behind the shipped weights (T91 + BSD200, validated on Set5; ``--data`` takes
several datasets joined by commas). Both warm the learning rate up, decay it (cosine by default) and clip the
gradients' global norm, so that the validation curve does not collapse; ``best.npz`` is the best validation epoch.
With ``--ema DECAY`` validation measures, and ``best.npz`` keeps, a moving average of the weights (``optim.EMA``).

``python -m minisr.train --resume RUN/last.npz [--steps N | --epochs N]`` continues a run exactly: the same batches,
learning rates, optimizer state and per-epoch losses as if it had never stopped. Ctrl-C saves ``last.npz`` and exits
(code 130); a NaN or infinite loss (or weights) stops with an error (code 3) without overwriting ``last.npz``.

``python -m minisr.train srgan --init srresnet-x4`` fine-tunes a trained SRResNet against a discriminator (SRGAN):
the same options plus the adversarial ones (``--adv-weight``, ``--d-lr``, ...); its loop is :mod:`minisr.gan`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import backends, checkpoint, cli_checks, models, runlock
from . import functional as F
from . import optim as O
from . import random as mrandom
from .data import (
    IMAGE_EXTENSIONS,
    DatasetNotFoundError,
    PatchDataset,
    default_split,
    list_images,
    resolve_dataset,
)
from .random import manual_seed
from .tensor import Tensor
from .upscalers import Upscaler, bicubic_upscaler

# Each model's paper recipe, budgets cut to fit a CPU: the quick recipe, the default (every value can be overridden on
# the command line; PAPER_RECIPES below are the long runs).
RECIPES = {
    # SRCNN: 33x33 Y sub-images with stride 14 from the bicubic-upscaled LR, MSE on the valid centre.
    # Adam (as the seed tutorial) instead of the paper's SGD; the last layer learns 10x slower, as in the paper.
    "srcnn": dict(scale=3, scales=None, patch=33, stride=14, patches_per_image=None, batch_size=128, epochs=12,
                  optimizer="adam", lr=1e-3, loss="mse", lr_step=8, lr_gamma=0.1, clip=None,
                  schedule="cosine", warmup=100, clip_norm=1.0,
                  model=dict(kernels=(9, 5, 5), features=(64, 32), padding="valid")),
    # VDSR: 41x41 Y patches mixing x2, x3, x4, SGD 0.1 with momentum 0.9, weight decay 1e-4, adjustable gradient
    # clipping to [-theta/lr, theta/lr] (theta 0.4), learning rate / 10 every 20 epochs.
    "vdsr": dict(scale=2, scales=(2, 3, 4), patch=41, stride=41, patches_per_image=None, batch_size=64, epochs=80,
                 optimizer="sgd", lr=0.1, loss="mse", lr_step=20, lr_gamma=0.1, clip=0.4,
                 warmup=500,
                 model=dict(depth=20, features=64)),
    # EDSR: 48x48 RGB LR patches, L1 loss, Adam 1e-4 (betas 0.9/0.999, eps 1e-8), halved every 200 epochs.
    "edsr": dict(scale=2, scales=None, patch=48, stride=None, patches_per_image=16, batch_size=16, epochs=300,
                 optimizer="adam", lr=1e-4, loss="l1", lr_step=200, lr_gamma=0.5, clip=None,
                 warmup=500,
                 model=dict(n_resblocks=16, n_feats=64, res_scale=1.0)),
}
# LR-input Y models (issue 16), trained on LR patches (--patch is the LR side) with random crops. Adam 1e-3 for every
# layer instead of the papers' SGD with a 10x smaller rate for the last layer (FSRCNN: 1e-3 convs, 1e-4 deconvolution):
# Adam's steps do not scale with the gradient, and with the last layer initialised at N(0, 0.001^2) a 10x smaller
# rate there only delays the first useful output by thousands of steps. MSE. FSRCNN x3/x4 from a trained x2 by
# fine-tuning only the deconvolution, as the paper's transfer: --scale 3 --init X2.npz --train-only deconv.
# ESPCN: LR patches 17x17 (the paper's 17r HR sub-images).
RECIPES.update(
    fsrcnn=dict(scale=2, scales=None, patch=16, stride=None, patches_per_image=64, batch_size=64, epochs=1000,
                optimizer="adam", lr=1e-3, loss="mse", lr_step=400, lr_gamma=0.5, clip=None,
                model=dict(d=56, s=12, m=4)),
    espcn=dict(scale=3, scales=None, patch=17, stride=None, patches_per_image=64, batch_size=64, epochs=1000,
               optimizer="adam", lr=1e-3, loss="mse", lr_step=400, lr_gamma=0.5, clip=None,
               model=dict(features=(64, 32), kernels=(5, 3, 3))),
)
# SRResNet (SRGAN's generator): 24x24 RGB LR patches (the paper's 96x96 HR crops at x4), MSE, Adam 1e-4, batch 16.
RECIPES.update(
    srresnet=dict(scale=4, scales=None, patch=24, stride=None, patches_per_image=16, batch_size=16, epochs=100,
                  optimizer="adam", lr=1e-4, loss="mse", lr_step=0, lr_gamma=0.1, clip=None, warmup=200,
                  model=dict(n_blocks=16, n_feats=64)),
)
# SRGAN (minisr/gan.py): SRResNet fine-tuned against a discriminator, content MSE + 1e-3 x adversarial, Adam 1e-4 for
# both networks at a constant rate (the paper: 10^5 steps at 1e-4, then 10^5 at 1e-5), no clipping.
RECIPES.update(
    srgan=dict(scale=4, scales=None, patch=24, stride=None, patches_per_image=16, batch_size=16, epochs=10,
               optimizer="adam", lr=1e-4, loss="mse", lr_step=0, lr_gamma=0.1, clip=None, warmup=0,
               model=dict(n_blocks=16, n_feats=64)),
)
#: per model, the parameters (by name prefix) that learn at 0.1 x the learning rate
SLOW_PARAMS = {"srcnn": "conv3"}

# ``--recipe paper``: the long runs that make the shipped weights, on the 291 images (T91 + the 200 Berkeley training
# images, VDSR's set), validated on Set5; each is RECIPES[model] with these changes. Epochs are shorter than a pass
# over every sub-image (random crops), so that validation, best.npz and the curve come often on a CPU.
PAPER_RECIPES = {
    # SRCNN on 291 images: Adam with warm-up and a cosine decay to 1/100 (no collapse, no hand-tuned steps),
    # 64 random 33x33 crops per image per epoch.
    "srcnn": dict(data="T91,BSD200", val="Set5", stride=None, patches_per_image=64, batch_size=64, epochs=100,
                  lr=5e-4, warmup=500, schedule="cosine", clip_norm=1.0, save_every=50),
    # VDSR-20 on 291 images mixing x2/x3/x4, x2 drawn twice as often (its residual is the smallest, so in an even mix
    # its loss is learnt last): Adam instead of SGD 0.1 (which needs the paper's 80 epochs over 10^6 patches to
    # settle), warm-up, cosine decay, global-norm clipping in place of the adjustable clipping, and best.npz from a
    # weight average (EMA 0.999). The run that made the shipped vdsr.npz (~2 hours on 2 cores).
    "vdsr": dict(data="T91,BSD200", val="Set5", scales=(2, 2, 3, 4), stride=None, patches_per_image=4, batch_size=16,
                 epochs=32, optimizer="adam", lr=3e-4, weight_decay=0.0, clip=None, warmup=500, schedule="cosine",
                 clip_norm=1.0, ema=0.999, save_every=100),
    # EDSR-baseline: L1, Adam 2e-4 with warm-up and cosine decay (the paper halves 1e-4 every 200 epochs of DIV2K).
    "edsr": dict(data="T91,BSD200", val="Set5", patch=32, patches_per_image=16, batch_size=16, epochs=300,
                 lr=2e-4, warmup=1000, schedule="cosine", clip_norm=1.0, save_every=20),
    # SRResNet x4 on 291 images: Adam 2e-4 (the paper's 1e-4 is for 10^6 steps) with warm-up and cosine decay.
    "srresnet": dict(data="T91,BSD200", val="Set5", patches_per_image=16, batch_size=16, epochs=60,
                     lr=2e-4, warmup=1000, schedule="cosine", clip_norm=1.0, save_every=100),
}
# SRGAN x4 from srresnet-x4 on 291 images: 1e-4, x0.1 halfway (the paper's two phases, 10^5 steps each, cut to 1,450
# steps each: 10 epochs of 290 steps, ~3 hours on a 2-core CPU).
PAPER_RECIPES["srgan"] = dict(data="T91,BSD200", val="Set5", patches_per_image=16, batch_size=16, epochs=10,
                              lr=1e-4, schedule="step", lr_step=5, lr_gamma=0.1, save_every=100)
# FSRCNN and ESPCN on T91 alone (their papers' 91 images; it beat T91 + BSD200 for ESPCN here), validated on Set5,
# warm-up and a cosine decay: the settings of the runs that made the shipped files (minisr/weights/README.md), from
# scratch in one command. FSRCNN x3/x4: add --init FSRCNN_X2.npz (--train-only deconv first, as the paper). ESPCN on
# 48x48 LR patches, batch 8: 17x17 patches (the paper's) leave only the centre 9x9 of each output free of the zero
# padding of its three convolutions, and moving to 48 gained 0.05 dB on Set5.
PAPER_RECIPES["fsrcnn"] = dict(data="T91", val="Set5", patches_per_image=192, epochs=200, lr=1e-3, warmup=100,
                               schedule="cosine", save_every=500)
PAPER_RECIPES["espcn"] = dict(data="T91", val="Set5", patch=48, batch_size=8, patches_per_image=64, epochs=300,
                              lr=3e-4, warmup=100, schedule="cosine", save_every=1000)
RECIPE_NAMES = ("quick", "paper")


def recipe(model: str, name: str = "quick") -> dict:
    """The hyper-parameters of ``model`` under recipe ``name`` ('quick': the default, minutes on a CPU; 'paper': the
    long run on the 291 images that makes the shipped weights)."""
    if name not in RECIPE_NAMES:
        raise ValueError(f"--recipe {name!r}: use one of {', '.join(RECIPE_NAMES)}")
    r = dict(RECIPES[model])
    if name == "paper":
        if model not in PAPER_RECIPES:
            raise ValueError(f"--recipe paper: no paper recipe for {model} (models with one: "
                             f"{', '.join(sorted(PAPER_RECIPES))})")
        r.update(PAPER_RECIPES[model])
    return r


@dataclass
class Config:
    model: str
    scale: int = 3
    scales: list | None = None
    data: str = "default"
    val: str = "default"
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 128
    patch: int = 33
    stride: int | None = 14
    patches_per_image: int | None = None
    rescale: list | None = None  # scale augmentation: the factors each training image is also used at
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 0
    lr_gamma: float = 0.1
    clip: float | None = None
    clip_norm: float | None = None
    schedule: str = "step"
    warmup: int = 0
    min_lr: float = 0.01
    save_every: int = 0
    ema: float = 0.0  # decay of the weights' moving average (0: none) that validation, best.npz use
    recipe: str = "quick"
    loss: str = "mse"
    smoothness: float = 0.0
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    backend: str | None = None
    out: str | None = None
    data_root: str | None = None
    init: str | None = None
    train_only: str | None = None
    init_matching: bool = False
    model_cfg: dict = field(default_factory=dict)

    @property
    def train_scales(self) -> list[int]:
        return [int(s) for s in (self.scales or [self.scale])]


# ------------------------------------------------------------------------------------------------------------ data
def _channels(model) -> str:
    return "y" if model.in_channels == 1 else "rgb"


def _patch_dataset(images, cfg: Config, model) -> PatchDataset:
    return PatchDataset(images, cfg.train_scales, cfg.patch, stride=cfg.stride,
                        patches_per_image=cfg.patches_per_image or 16, channels=_channels(model),
                        augment=cfg.augment, mode="upscaled" if model.upsample_input else "lr", seed=cfg.seed,
                        rescale=cfg.rescale or (1.0,))


def dataset_names(data: str) -> list[str]:
    """``--data T91,BSD200`` -> ["T91", "BSD200"]."""
    names = [d.strip() for d in str(data).split(",") if d.strip()]
    if not names:
        raise ValueError(f"--data {data!r} names no dataset")
    return names


def make_dataset(cfg: Config, model) -> PatchDataset:
    """The training patches of ``cfg.data``: 'default', or one or more folders / names joined by commas. Each dataset
    must hold images, and at least one large enough for a patch; the error names the one that does not."""
    if cfg.data == "default":
        return _patch_dataset(default_split()[0], cfg, model)
    files = []
    for name in dataset_names(cfg.data):
        folder = resolve_dataset(name, cfg.data_root)
        found = list_images(folder / "HR" if (folder / "HR").is_dir() else folder)
        if not found:
            raise DatasetNotFoundError(f"--data {name}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
        if _patch_dataset(found, cfg, model).steps_per_epoch(1) == 0:
            p = cfg.patch
            side = f"{p}x{p} patch" if model.upsample_input else \
                f"{p}x{p} LR patch ({' / '.join(f'{p * s}x{p * s}' for s in cfg.train_scales)} HR)"
            scales = ", ".join(f"x{s}" for s in cfg.train_scales)
            raise ValueError(f"no training patches in --data {name} ({folder}): every one of its {len(found)} "
                             f"images is smaller than the {side} at {scales} (use a smaller --patch)")
        files += found
    return _patch_dataset(files, cfg, model)


def validation_set(cfg: Config):
    """A benchmark name/folder, or the default validation images as ``{name: hr}``."""
    if cfg.val == "default":
        from .data import DEFAULT_VALIDATION

        return dict(zip(DEFAULT_VALIDATION, default_split()[1]))
    return cfg.val


# ----------------------------------------------------------------------------------------------------------- model
def make_optimizer(cfg: Config, model):
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    slow = SLOW_PARAMS.get(cfg.model)
    if slow and not cfg.train_only:  # the reconstruction layer learns 10x slower (SRCNN paper)
        last = [p for n, p in model.named_parameters() if n.startswith(slow)]
        rest = [p for n, p in model.named_parameters() if not n.startswith(slow)]
        params = [{"params": rest}, {"params": last, "lr": cfg.lr * 0.1}]
    if cfg.optimizer == "adam":
        return O.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return O.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"--optimizer {cfg.optimizer!r}: use adam or sgd")


def freeze_except(model, prefixes: str) -> None:
    """Train only the parameters inside the comma-separated modules or names ``prefixes`` (FSRCNN's transfer:
    ``deconv``); the others get requires_grad=False, so the backward stops where nothing below needs a gradient."""
    keep = [p.strip().rstrip(".") for p in prefixes.split(",") if p.strip()]
    names = [n for n, _ in model.named_parameters()]

    def kept(name):
        return any(name == k or name.startswith(k + ".") for k in keep)

    unknown = [k for k in keep if not any(n == k or n.startswith(k + ".") for n in names)]
    if not keep or unknown:
        raise ValueError(f"--train-only {', '.join(unknown) or repr(prefixes)} matches no parameter; the model's are: "
                         f"{', '.join(names)}")
    for n, p in model.named_parameters():
        p.requires_grad = kept(n)


class CheckpointWriteError(RuntimeError):
    """Saving a checkpoint failed (e.g. a full disk); the previous checkpoint of that name is kept."""


class Trainer:
    """One training run: model, optimizer, data, the loop, validation, checkpoints and history."""

    def __init__(self, cfg: Config, out_dir: Path, resume: dict | None = None):
        self.cfg, self.out = cfg, out_dir
        manual_seed(cfg.seed)
        self.model = models.build(cfg.model, **cfg.model_cfg)
        self.notes: list[str] = []
        if cfg.init and resume is None:  # start from trained weights (e.g. x3 fine-tuned from x2)
            self._init_from(cfg.init)
        if cfg.train_only:
            freeze_except(self.model, cfg.train_only)
        self.model.to(cfg.device)
        self.optimizer = make_optimizer(cfg, self.model)
        self.ema = O.EMA(self.model, cfg.ema) if cfg.ema else None
        self.data = make_dataset(cfg, self.model)
        if self.data.steps_per_epoch(cfg.batch_size) == 0:
            raise ValueError(f"no training patches: every image of {cfg.data} is smaller than the {cfg.patch}x"
                             f"{cfg.patch} patch at x{cfg.train_scales} (use a smaller --patch)")
        b = self.model.border
        if b and cfg.patch <= 2 * b:
            raise ValueError(f"--patch {cfg.patch} is too small for {cfg.model} {self.model.config['kernels']}: "
                             f"valid convolutions lose {b} pixels per side, so the patch must exceed {2 * b}")
        self.val = validation_set(cfg)
        self.loss_fn = {"mse": F.mse_loss, "l1": F.l1_loss}[cfg.loss]
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0
        # The current epoch's losses and time so far: kept in checkpoints, so that an epoch interrupted and resumed
        # reports the same mean loss as an uninterrupted one.
        self.epoch_losses: list[float] = []
        self.epoch_seconds = 0.0
        self.history: list[dict] = []
        self.best = -math.inf
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.steps_per_epoch = self.data.steps_per_epoch(cfg.batch_size)
        if resume is not None:
            self._restore(resume)

    def _init_from(self, spec: str) -> None:
        """Load ``--init`` weights; another architecture or config, or another scale for a model that enlarges by
        itself (EDSR), is an error naming both. SRCNN/VDSR weights work at any scale (their input is already
        enlarged), so another scale is only noted. ``--init-matching`` loads only the parameters whose names and
        shapes agree and leaves the rest as initialised (EDSR x2 from x4: everything but the second upsampling
        stage, as EDSR's x3/x4 start from its x2 with a fresh upsampler)."""
        src, meta = models.load(spec)
        cfg, mine = self.cfg, self.model.config
        theirs = f"{meta['model']} x{meta.get('scale')} ({_describe(meta['config'])})"
        ours = f"{cfg.model} x{cfg.scale} ({_describe(mine)})"
        state, own = src.state_dict(), self.model.state_dict()
        if cfg.init_matching:
            shared = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
            if meta["model"] != cfg.model or not shared:
                raise ValueError(f"--init {spec} is a {theirs} checkpoint; this run trains {ours}: --init-matching "
                                 "needs the same architecture with parameters of the same names and shapes")
            fresh = [k for k in own if k not in shared]
            self.notes.append(f"note: --init {spec} is {theirs}; loaded {len(shared)} of {len(own)} parameter "
                              f"arrays into {ours}" + (f"; initialised afresh: {', '.join(fresh)}" if fresh else ""))
            self.model.load_state_dict(shared, strict=False)
            return
        same = meta["model"] == cfg.model and {k: v.shape for k, v in state.items()} == \
            {k: v.shape for k, v in own.items()}
        # a model that enlarges by itself takes weights of another scale only to fine-tune part of it (FSRCNN x3/x4
        # from x2: --train-only deconv, as in its paper)
        if not same or (not self.model.upsample_input and meta.get("scale") != cfg.scale and not cfg.train_only):
            raise ValueError(f"--init {spec} is a {theirs} checkpoint; this run trains {ours}: give weights of the "
                             "same architecture" + ("" if same else " and config") + " and scale"
                             + (" (or fine-tune part of it with --train-only)" if same
                                else " (or load the parameters that match with --init-matching)"
                                if meta["model"] == cfg.model else ""))
        if int(meta.get("scale", cfg.scale)) != cfg.scale:
            self.notes.append(f"note: --init {spec} is {theirs}; fine-tuning it as {ours}")
        self.model.load_state_dict(state)

    # --------------------------------------------------------------------------------------------- checkpoints
    def meta(self) -> dict:
        return dict(model=self.cfg.model, config=self.model.config, scale=self.cfg.scale,
                    scales=self.cfg.train_scales, epoch=self.epoch, step=self.step, step_in_epoch=self.step_in_epoch,
                    epoch_losses=self.epoch_losses, epoch_seconds=self.epoch_seconds, best_psnr=self.best,
                    history=self.history, train_config=_jsonable(asdict(self.cfg)), channels=_channels(self.model),
                    rng_state=mrandom.generator().bit_generator.state)

    def checkpoint_groups(self) -> dict:
        """More state saved beside the model's in each checkpoint ({group: {key: array}}): the weights' moving
        average (``ema/``) with --ema; SRGAN adds the discriminator."""
        return {"ema": self.ema.state_dict()} if self.ema else {}

    def averaged(self):
        """``with self.averaged():`` the model holds the weights that validation measures and best.npz keeps: the
        moving average with --ema, its own otherwise."""
        return self.ema.applied() if self.ema else contextlib.nullcontext()

    def save(self, name: str) -> Path:
        try:
            return checkpoint.save(self.out / name, self.model.state_dict(), self.meta(), self.optimizer.state_dict(),
                                   groups=self.checkpoint_groups())
        except OSError as err:  # a full disk, a quota, a folder gone: the previous file is untouched (atomic write)
            kept = f"the previous {self.out / name} is intact" if (self.out / name).is_file() else "nothing was saved"
            raise CheckpointWriteError(f"could not save {self.out / name} at step {self.step}: "
                                       f"{err.strerror or err}; {kept}") from err

    def _restore(self, ckpt: dict) -> None:
        meta = ckpt["meta"]
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optim"])
        self.epoch, self.step, self.step_in_epoch = meta["epoch"], meta["step"], meta["step_in_epoch"]
        self.epoch_losses, self.epoch_seconds = list(meta.get("epoch_losses", [])), meta.get("epoch_seconds", 0.0)
        self.history, self.best = meta["history"], meta["best_psnr"]
        if self.ema:
            if "ema" not in ckpt:
                raise ValueError("the checkpoint has no weight average (ema/), but its run has --ema: not a "
                                 "minisr.train checkpoint of that run")
            self.ema.load_state_dict(ckpt["ema"])
        if "rng_state" in meta:  # the data order comes from (seed, epoch, step_in_epoch); this is the init generator
            mrandom.generator().bit_generator.state = meta["rng_state"]

    def _weights_finite(self) -> bool:
        return all(bool(np.isfinite(v).all()) for v in self.model.state_dict().values())

    def _stop_on_nan(self, what: str, step: int) -> None:
        """The error message of a diverged run; nothing is saved, so last.npz keeps the last good weights."""
        last = self.out / "last.npz"
        kept = (f"the last good checkpoint {last} is kept" if last.is_file()
                else "no checkpoint was written (training diverged in its first epoch)")
        print(f"\nerror: {what} at epoch {self.epoch + 1}, step {step}: stopping; {kept}. "
              f"Lower --lr, or add --clip.", file=sys.stderr)

    # ------------------------------------------------------------------------------------------------ training
    def lr_factor(self, step: int | None = None) -> float:
        """The learning rate at ``step`` (default: the next one) over the base rate: a linear warm-up over
        ``warmup`` steps, times the schedule: 'step' (x lr_gamma every lr_step epochs) or 'cosine' (from 1 down to
        ``min_lr`` over epochs x steps_per_epoch steps). A function of the step alone, so a resumed run gets the
        same rates."""
        cfg = self.cfg
        step = self.step if step is None else step
        if cfg.schedule == "cosine":
            total = max(cfg.epochs * self.steps_per_epoch, 1)
            t = min(step, total) / total
            factor = cfg.min_lr + (1.0 - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
        elif cfg.schedule == "step":
            epoch = step // self.steps_per_epoch if self.steps_per_epoch else 0
            factor = cfg.lr_gamma ** (epoch // cfg.lr_step) if cfg.lr_step else 1.0
        else:
            raise ValueError(f"--schedule {cfg.schedule!r}: use step or cosine")
        if cfg.warmup and step < cfg.warmup:
            factor *= (step + 1) / cfg.warmup
        return factor

    def _set_lr(self) -> None:
        factor = self.lr_factor()
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * factor

    def train_step(self, x: np.ndarray, t: np.ndarray) -> float:
        """Forward, loss (+ smoothness prior), backward, clip, update; returns the loss."""
        m, cfg = self.model, self.cfg
        pred = m(Tensor(x).to(cfg.device))
        b = m.border
        target = Tensor(np.ascontiguousarray(t[:, :, b:t.shape[2] - b, b:t.shape[3] - b]) if b else t).to(cfg.device)
        loss = self.loss_fn(pred, target)
        if cfg.smoothness:
            loss = loss + cfg.smoothness * F.smoothness_loss(pred)
        value = loss.item()
        if not math.isfinite(value):
            return value
        self.optimizer.zero_grad()
        loss.backward()
        if cfg.clip_norm:  # global-norm clipping: one bad batch cannot throw the weights far
            O.clip_grad_norm_(m.parameters(), cfg.clip_norm)
        if cfg.clip:  # VDSR's adjustable clipping: [-theta / lr, theta / lr]
            O.clip_grad_value_(m.parameters(), cfg.clip / self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        return value

    def validate(self) -> dict:
        from .eval import evaluate

        self.model.eval()
        meta = dict(model=self.cfg.model, scale=self.cfg.scale, scales=self.cfg.train_scales)
        with self.averaged():
            res = evaluate(Upscaler(self.model, meta, self.cfg.scale, device=self.cfg.device), self.val,
                           self.cfg.scale, data_root=self.cfg.data_root)
        self.model.train()
        return res["mean"]

    def run(self, log=print) -> dict:
        cfg = self.cfg
        steps_per_epoch = self.data.steps_per_epoch(cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        interrupted = False

        def on_sigint(signum, frame):
            nonlocal interrupted
            interrupted = True

        old_handler = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
        bar = tqdm(total=total, initial=self.step, unit="step", dynamic_ncols=True, disable=None)
        status = "finished"
        try:
            while self.epoch < cfg.epochs and self.step < total and status == "finished":
                t0, seen = time.perf_counter(), 0
                mark = t0  # epoch_seconds counts up to here
                for x, t in self.data.batches(cfg.batch_size, self.epoch, start_step=self.step_in_epoch):
                    self._set_lr()
                    value = self.train_step(x, t)
                    if not math.isfinite(value):
                        status = "nan"
                        self._stop_on_nan(f"the loss became {value}", self.step + 1)
                        break
                    if self.ema:
                        self.ema.update()
                    self.epoch_losses.append(value)
                    seen += len(x)
                    self.step += 1
                    self.step_in_epoch += 1
                    bar.update(1)
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{value:.5f}",
                                    samples_s=f"{seen / (time.perf_counter() - t0):.0f}")
                    if interrupted or self.step >= total:
                        break
                    if cfg.save_every and self.step % cfg.save_every == 0 and \
                            self.step_in_epoch < steps_per_epoch:  # mid-epoch: --resume continues from here
                        if not self._weights_finite():
                            status = "nan"
                            self._stop_on_nan("the weights became non-finite", self.step)
                            break
                        now = time.perf_counter()
                        self.epoch_seconds, mark = self.epoch_seconds + now - mark, now
                        self.save("last.npz")
                self.epoch_seconds += time.perf_counter() - mark
                if status == "nan":
                    break
                if status == "finished" and not self._weights_finite():  # the last update overflowed
                    status = "nan"
                    self._stop_on_nan("the weights became non-finite", self.step)
                if status == "nan":
                    break
                if interrupted:
                    status = "interrupted"
                    self.save("last.npz")
                    log(f"\ninterrupted: saved {self.out / 'last.npz'} (epoch {self.epoch + 1}, step "
                        f"{self.step}); continue with --resume {self.out / 'last.npz'}")
                    break
                epoch_done = self.step_in_epoch >= steps_per_epoch
                if not epoch_done and self.step < total:
                    raise RuntimeError(f"epoch {self.epoch + 1} ended after {self.step_in_epoch} of "
                                       f"{steps_per_epoch} batches")
                self._end_epoch(epoch_done, log=bar.write)
        finally:
            bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        return {"status": status, "best_psnr": self.best, "history": self.history}

    def _end_epoch(self, epoch_done: bool, log) -> None:
        """Validate, record the epoch (or the part of it run so far, when --steps stops inside it), save."""
        val = self.validate()
        row = self.epoch_row(val)
        if self.history and self.history[-1]["epoch"] == row["epoch"]:
            self.history[-1] = row  # a run stopped inside this epoch recorded it so far; resumed, it is complete
        else:
            self.history.append(row)
        if epoch_done:
            self.next_epoch()
        log(self.epoch_line(row))
        self.save("last.npz")
        if val["psnr"] > self.best:
            self.best = val["psnr"]
            with self.averaged():
                self.save("best.npz")
        self.write_history()

    def epoch_row(self, val: dict) -> dict:
        """The history row of the current epoch (so far), with its validation ``val`` (psnr, ssim)."""
        return dict(epoch=self.epoch + 1, step=self.step,
                    loss=float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan"),
                    val_psnr=val["psnr"], val_ssim=val["ssim"], lr=self.optimizer.param_groups[0]["lr"],
                    seconds=self.epoch_seconds)

    def epoch_line(self, row: dict) -> str:
        """The log line of an epoch's history row."""
        return (f"epoch {row['epoch']}: loss {row['loss']:.5f}  val PSNR {row['val_psnr']:.2f} dB  "
                f"SSIM {row['val_ssim']:.4f}")

    def next_epoch(self) -> None:
        """Start the next epoch: its step count and per-epoch records from zero."""
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_losses, self.epoch_seconds = [], 0.0

    # ------------------------------------------------------------------------------------------------- reports
    #: the columns of history.csv
    HISTORY_KEYS = ("epoch", "step", "loss", "val_psnr", "val_ssim", "lr", "seconds")

    def write_history(self) -> None:
        path = self.out / "history.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.HISTORY_KEYS)
            w.writeheader()
            for row in self.history:
                w.writerow({k: row.get(k) for k in self.HISTORY_KEYS})
        os.replace(tmp, path)
        self.plot_curves()

    def plot_curves(self) -> None:
        plot_curves(self.history, self.out / "curves.png", self.bicubic_psnr,
                    title=f"{self.cfg.model} x{self.cfg.scale}")

    def start_message(self) -> str:
        cfg = self.cfg
        return (f"training {cfg.model} x{cfg.scale} ({self.model.num_parameters():,} parameters) on {cfg.data}: "
                f"{len(self.data)} patches/epoch, {cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} "
                f"lr {cfg.lr} ({cfg.schedule}, warm-up {cfg.warmup} steps), "
                f"kernels {backends.cpu_backend_name() if cfg.device == 'cpu' else cfg.device}; outputs in {self.out}")

    def end_message(self, result: dict, minutes: float) -> str:
        final = result["history"][-1]["val_psnr"] if result["history"] else float("nan")
        out = self.out
        return (f"done in {minutes:.1f} min: validation PSNR {final:.2f} dB (best {result['best_psnr']:.2f} dB) vs "
                f"bicubic {self.bicubic_psnr:.2f} dB ({final - self.bicubic_psnr:+.2f} dB), Y channel, border "
                f"{self.cfg.scale}\n"
                f"outputs: {out / 'best.npz'}, {out / 'last.npz'}, {out / 'history.csv'}, {out / 'curves.png'}")

    bicubic_psnr: float | None = None


def plot_curves(history, path, bicubic=None, title=""):
    """Loss per epoch (left) and validation PSNR per epoch with the bicubic baseline (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [h["loss"] for h in history], "o-")
    a.set(xlabel="epoch", ylabel="training loss", title="loss", yscale="log")
    b.plot(ep, [h["val_psnr"] for h in history], "o-", label="model")
    if bicubic is not None:
        b.axhline(bicubic, color="gray", ls="--", label=f"bicubic {bicubic:.2f} dB")
    b.set(xlabel="epoch", ylabel="PSNR (dB, Y)", title="validation PSNR")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    from .atomic import save_figure

    save_figure(fig, path, close=True, dpi=100)  # a temporary name, renamed: a full disk leaves no partial curves.png


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _describe(config: dict) -> str:
    return ", ".join(f"{k} {'-'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in config.items())


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


# ---------------------------------------------------------------------------------------------------------- CLI
def _ints(text: str):
    return tuple(int(v) for v in text.replace("x", ",").split(",") if v)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minisr.train", description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", choices=sorted(RECIPES), help="architecture (optional with --resume)")
    p.add_argument("--scale", type=int, help="upscaling factor (default: srcnn and espcn 3, vdsr, edsr and fsrcnn 2, "
                                             "srresnet and srgan 4)")
    p.add_argument("--scales", type=_ints, help="scales mixed in training, e.g. 2,3,4 (VDSR default); "
                   "a scale given twice is drawn twice as often (2,2,3,4)")
    p.add_argument("--recipe", choices=RECIPE_NAMES, default="quick",
                   help="quick (default): minutes on a CPU; paper: the long run on T91,BSD200 validated on Set5 that "
                        "makes the shipped weights (see minisr/weights/README.md)")
    p.add_argument("--data",
                   help="training images: 'default' (scikit-image photos), or folders / names under --data-root "
                        "joined by commas, e.g. T91,BSD200 (default: the recipe's)")
    p.add_argument("--val", help="validation: 'default', Set5, Set14 or a folder (default: the recipe's)")
    p.add_argument("--data-root", help="where dataset names resolve (default $MINISR_DATA)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, dest="max_steps", help="stop after this many steps in total")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--patch", type=int, help="patch size (HR for srcnn/vdsr, LR for edsr)")
    p.add_argument("--stride", type=int, help="sub-image stride (0: random crops)")
    p.add_argument("--patches-per-image", type=int, help="random crops per image per epoch")
    p.add_argument("--rescale", help="scale augmentation: also train on each image downscaled by these factors, "
                                     "e.g. 1,0.9,0.8,0.7,0.6 (FSRCNN's; default 1: the images as they are)")
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lr-step", type=int, help="multiply the learning rate by --lr-gamma every this many epochs")
    p.add_argument("--lr-gamma", type=float)
    p.add_argument("--clip", type=float, help="VDSR gradient clipping theta (gradients to [-theta/lr, theta/lr])")
    p.add_argument("--clip-norm", type=float, help="clip the gradients' global L2 norm to this (0: off)")
    p.add_argument("--schedule", choices=["step", "cosine"],
                   help="learning-rate schedule: step (x lr-gamma every lr-step epochs) or cosine (to --min-lr)")
    p.add_argument("--warmup", type=int, help="linear learning-rate warm-up over this many steps")
    p.add_argument("--min-lr", type=float, help="cosine schedule's last learning rate, as a fraction of --lr")
    p.add_argument("--save-every", type=int, help="also save last.npz every this many steps inside an epoch")
    p.add_argument("--ema", type=float, help="validate and keep as best.npz an exponential moving average of the "
                   "weights with this decay per step (e.g. 0.999; default 0: the weights themselves)")
    p.add_argument("--loss", choices=["mse", "l1"])
    p.add_argument("--smoothness", type=float, default=0.0, help="weight of the smoothness prior added to the loss")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=list(backends.CPU_BACKENDS), help="CPU kernel set (default numba)")
    p.add_argument("--out", help="output folder (default runs/<model>-x<scale>-<time>)")
    p.add_argument("--resume", help="checkpoint (last.npz) to continue exactly")
    p.add_argument("--init", help="start from these weights (a checkpoint or shipped name of the same architecture)")
    p.add_argument("--init-matching", action="store_true",
                   help="with --init: load only the parameters whose names and shapes match (e.g. EDSR x2 from x4 "
                        "weights: all but the second upsampling stage); the others start as initialised")
    p.add_argument("--train-only", help="train only the parameters with these name prefixes (comma-separated), "
                                        "e.g. deconv for FSRCNN x3/x4 from x2")
    p.add_argument("--dsm", type=_ints, help="fsrcnn d,s,m (default 56,12,4)")
    # model config
    p.add_argument("--kernels", type=_ints, help="srcnn kernel sizes, e.g. 9,5,5")
    p.add_argument("--features", type=_ints, help="srcnn filter counts, e.g. 64,32")
    p.add_argument("--padding", choices=["valid", "same"], help="srcnn padding")
    p.add_argument("--channels", type=int, choices=[1, 3], help="srcnn/vdsr input channels (1 = Y, 3 = RGB)")
    p.add_argument("--depth", type=int, help="vdsr depth")
    p.add_argument("--no-residual", action="store_true", help="vdsr without the global residual")
    p.add_argument("--n-resblocks", type=int, help="edsr residual blocks")
    p.add_argument("--n-blocks", type=int, help="srresnet residual blocks (default 16)")
    p.add_argument("--n-feats", type=int)
    p.add_argument("--res-scale", type=float)
    return cli_checks.validated(p, cli_checks.TRAIN)  # every value's range, in one place


def config_from_args(args) -> Config:
    r = recipe(args.model, args.recipe)
    model_cfg = dict(r["model"])
    for key, attr in [("kernels", "kernels"), ("features", "features"), ("padding", "padding"), ("depth", "depth"),
                      ("n_resblocks", "n_resblocks"), ("n_feats", "n_feats"), ("res_scale", "res_scale"),
                      ("n_blocks", "n_blocks")]:
        if key in model_cfg and getattr(args, attr) is not None:
            model_cfg[key] = getattr(args, attr)
    if args.model == "vdsr" and args.features is not None:  # one width for every layer
        if len(args.features) != 1:
            raise ValueError(f"vdsr --features takes one number (every layer's width), got {args.features}")
        model_cfg["features"] = args.features[0]
    if args.model == "fsrcnn" and args.dsm is not None:
        if len(args.dsm) != 3:
            raise ValueError(f"--dsm takes d,s,m (three numbers), got {args.dsm}")
        model_cfg.update(zip(("d", "s", "m"), args.dsm))
    if args.channels is not None and args.model in ("srcnn", "vdsr", "fsrcnn", "espcn"):
        model_cfg["in_channels"] = args.channels
    if args.no_residual and args.model == "vdsr":
        model_cfg["residual"] = False
    scale = args.scale or r["scale"]
    scales = list(args.scales) if args.scales else (list(r["scales"]) if r["scales"] and not args.scale else None)
    if args.model in ("edsr", "fsrcnn", "espcn", "srresnet"):  # the network itself enlarges
        model_cfg["scale"] = scale
        scales = None
    for s in scales or [scale]:
        if s not in (2, 3, 4):
            raise ValueError(f"scale {s}: minisr trains x2, x3 and x4")

    def pick(name, default):
        v = getattr(args, name)
        return default if v is None else v

    stride = pick("stride", r["stride"])
    return Config(
        model=args.model, scale=scale, scales=scales, data=pick("data", r.get("data", "default")),
        val=pick("val", r.get("val", "default")), data_root=args.data_root, recipe=args.recipe,
        clip_norm=pick("clip_norm", r.get("clip_norm")) or None,
        schedule=pick("schedule", "step" if args.lr_step else r.get("schedule", "step")),
        warmup=pick("warmup", r.get("warmup", 0)), min_lr=pick("min_lr", r.get("min_lr", 0.01)),
        save_every=pick("save_every", r.get("save_every", 0)), ema=pick("ema", r.get("ema", 0.0)),
        epochs=pick("epochs", r["epochs"]), max_steps=args.max_steps, batch_size=pick("batch_size", r["batch_size"]),
        patch=pick("patch", r["patch"]), stride=stride or None,
        patches_per_image=pick("patches_per_image", r["patches_per_image"]),
        rescale=list(args.rescale) if args.rescale else r.get("rescale"),
        optimizer=pick("optimizer", r["optimizer"]),
        lr=pick("lr", r["lr"]), momentum=args.momentum,
        weight_decay=pick("weight_decay", r.get("weight_decay", 1e-4 if args.model == "vdsr" else 0.0)),
        lr_step=pick("lr_step", r["lr_step"]), lr_gamma=pick("lr_gamma", r["lr_gamma"]), clip=pick("clip", r["clip"]),
        loss=pick("loss", r["loss"]), smoothness=args.smoothness, augment=not args.no_augment, seed=args.seed,
        device=args.device, backend=args.backend, out=args.out, init=args.init, train_only=args.train_only,
        init_matching=args.init_matching,
        model_cfg=model_cfg)


def _out_dir(cfg: Config) -> Path:
    if cfg.out:
        return Path(cfg.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model}-x{cfg.scale}-{stamp}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from . import gan

    if gan.wants(argv):  # srgan, or --resume of an srgan run: two networks (minisr/gan.py)
        return run_cli(argv, gan.build_parser(), gan.config_from_args, gan.GANConfig, gan.GANTrainer)
    return run_cli(argv, build_parser(), config_from_args, Config, Trainer)


def run_cli(argv, parser, make_config, config_cls, trainer_cls) -> int:
    """Parse and check the options, start a run (``make_config(args)``) or resume one (``config_cls`` from the
    checkpoint), lock its output folder and train it with ``trainer_cls``: the command line of every model."""
    args = parser.parse_args(argv)
    cli_checks.check_train(parser, args, RECIPES)  # combinations of options
    lock = None
    try:
        resume = None
        if args.resume:
            resume = checkpoint.load(args.resume)
            if "train_config" not in resume["meta"]:
                raise ValueError(f"{args.resume} has no training state (not written by minisr.train): "
                                 "cannot resume")
            cfg = config_cls(**resume["meta"]["train_config"])
            if (args.model and args.model != cfg.model) or (args.scale and args.scale != cfg.scale):
                asked = f"{args.model or cfg.model} x{args.scale or cfg.scale}"
                what = _describe(resume["meta"]["config"])
                raise ValueError(f"{args.resume} is a {cfg.model} x{cfg.scale} run ({what}), not {asked}: "
                                 "--resume continues a run as it was started")
            if args.epochs:
                cfg.epochs = args.epochs
            cfg.max_steps = args.max_steps
            out = Path(args.out) if args.out else Path(args.resume).parent
            cfg.out = str(out)
        else:
            cfg = make_config(args)
            out = _out_dir(cfg)
        if cfg.backend:
            backends.set_backend(cfg.backend)
        out.mkdir(parents=True, exist_ok=True)
        lock = runlock.RunLock(out).acquire()  # one run per folder; held until this process ends
        runlock.cleanup_partial_files(out)  # temporary files of a run killed mid-write
        trainer = trainer_cls(cfg, out, resume)
    except (ValueError, OSError, KeyError, RuntimeError) as e:  # OSError: an --out that cannot be created
        print(f"error: {e}", file=sys.stderr)
        if lock is not None:
            lock.release()
        return 2
    except BaseException:  # (an unexpected error, Ctrl-C while loading): the folder's lock is released all the same
        if lock is not None:
            lock.release()
        raise
    try:
        return _train(trainer)
    except OSError as e:  # a full disk while writing the history or the curves (checkpoints: CheckpointWriteError)
        print(f"\nerror: could not write to {out}: {e}", file=sys.stderr)
        return 1
    except CheckpointWriteError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    finally:
        lock.release()


def _train(trainer: Trainer) -> int:
    from .eval import evaluate

    cfg = trainer.cfg
    trainer.bicubic_psnr = evaluate(bicubic_upscaler(cfg.scale), trainer.val, cfg.scale,
                                    data_root=cfg.data_root)["mean"]["psnr"]
    for note in trainer.notes:
        print(note)
    print(trainer.start_message())
    t0 = time.perf_counter()
    result = trainer.run()
    minutes = (time.perf_counter() - t0) / 60
    if result["status"] == "nan":
        return 3
    if result["status"] == "interrupted":
        return 130
    print(trainer.end_message(result, minutes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
