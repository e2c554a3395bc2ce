"""``python -m minisr.train srgan --init srresnet-x4``: SRGAN, SRResNet fine-tuned against a discriminator.

Each step (Ledig et al. 2017; Goodfellow et al.'s non-saturating form):

    fake = G(lr)
    discriminator:  L_D = BCE(D(hr), 1) + BCE(D(fake), 0)          (fake detached: no gradient into G)
    generator:      L_G = content(fake, hr) + adv_weight * BCE(D(fake), 1)      (= content - 1e-3 log D(G(lr)))

with BCE the binary cross-entropy on the logits (``F.binary_cross_entropy_with_logits``: the sigmoid and the log
in one stable expression), the content loss the pixel MSE (``--loss l1`` for L1), adv_weight 1e-3, Adam 1e-4 for
both networks (the paper's; ``--lr`` for G, ``--d-lr`` for D). The discriminator's weights get no gradient from the
generator's step (they are frozen for it). Both networks are in training mode: BatchNorm on batch statistics.

Content loss: pixels, not VGG features. The paper's best-looking SRGAN uses the feature maps of an ImageNet-trained
VGG19, which cannot be downloaded here, and a feature network we could train ourselves on 291 images (or on the
digits of ``minisr.prs``) would not have learnt ImageNet's textures; a loss on its features would be an untested
stand-in. SRGAN-MSE is the paper's own variant with the pixel loss (its Table 1), and it is what runs here.

Everything else comes from :mod:`minisr.train` (data, learning-rate schedule, validation PSNR/SSIM, checkpoints,
exact resume, Ctrl-C, the NaN stop): :class:`GANTrainer` is its ``Trainer`` with this step. The checkpoint's
``model/`` entries and meta are the generator's (``models.load``, ``minisr.eval`` and ``minisr.upscale`` take an
srgan checkpoint as any other); the discriminator and its optimizer are the groups ``disc/`` and ``disc_optim/`` of
the same file, so ``--resume`` restores both networks and both optimizers exactly.

Failure detection (reported in the log and in history.csv's ``alerts``; ``--stop-on-failure`` stops on them with
code 3, keeping the last good checkpoint, as a NaN always does):
  * the discriminator winning: L_D < ``--d-win-loss`` with every real and fake image classified right, for
    ``--fail-window`` steps in a row (the generator then gets almost no adversarial gradient);
  * mode collapse: the generated batch's spread (the standard deviation across the batch of each output value,
    averaged) below ``--collapse-ratio`` x the targets' spread, for ``--fail-window`` steps in a row;
  * NaN / inf in either loss or in either network's weights: stop (code 3), ``last.npz`` kept.
Sample crops (LR, bicubic, G, HR on validation crops) go to ``crops/step_NNNNNN.png`` every ``--crops-every``
steps; ``curves.png`` shows both losses, D's accuracies and the validation PSNR per epoch.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import cli_checks, models
from . import functional as F
from . import optim as O
from . import train as T
from .atomic import save_figure
from .tensor import Tensor

__all__ = ["GANConfig", "GANTrainer", "FailureDetector", "adversarial_step", "batch_spread", "wants", "build_parser",
           "config_from_args"]
__all__ += ["spread_ratio"]


@dataclass
class GANConfig(T.Config):
    adv_weight: float = 1e-3
    d_lr: float | None = None  # None: the generator's --lr
    d_feats: int = 64
    d_fc: int | None = None  # None: 16 x d_feats (1024)
    crops_every: int = 500
    fail_window: int = 100
    d_win_loss: float = 0.05
    collapse_ratio: float = 0.1
    stop_on_failure: bool = False


# ------------------------------------------------------------------------------------------------------ the step
def batch_spread(x) -> float:
    """The standard deviation across the batch (axis 0) of each value, averaged: 0 when every sample is the same."""
    a = np.asarray(x.numpy() if isinstance(x, Tensor) else x, dtype=np.float64)
    return float(a.std(axis=0).mean()) if a.shape[0] > 1 else float("nan")


def spread_ratio(fake_spread: float, real_spread: float) -> float:
    """The generated batch's spread over the targets' (:func:`batch_spread`); NaN when the targets' is 0 or NaN."""
    return fake_spread / real_spread if real_spread > 0 else float("nan")


def _accuracy(logits: Tensor, real: bool) -> float:
    z = logits.numpy()
    return float(np.mean(z > 0 if real else z < 0))


def _set_requires_grad(module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad = flag


def adversarial_step(g, d, opt_g, opt_d, lr, hr, adv_weight: float = 1e-3, content_loss=F.mse_loss,
                     clip_norm: float | None = None, device: str = "cpu") -> dict:
    """One discriminator step, then one generator step, on a batch (lr, hr) of NCHW float arrays (see the module
    docstring for the losses). Returns the step's numbers: ``d_loss``, ``g_loss`` (content + adv_weight x adv),
    ``content``, ``adv``, ``real_acc`` / ``fake_acc`` (D's accuracy on the real and generated images, before its
    update), ``fake_spread`` / ``real_spread`` (:func:`batch_spread`). When a loss is not finite nothing is updated
    from there on."""
    x = Tensor(lr).to(device) if not isinstance(lr, Tensor) else lr
    y = Tensor(hr).to(device) if not isinstance(hr, Tensor) else hr
    fake = g(x)
    n = fake.shape[0]
    ones = Tensor(np.ones((n, 1), dtype=fake.dtype)).to(device)
    zeros = Tensor(np.zeros((n, 1), dtype=fake.dtype)).to(device)
    stats = dict(fake_spread=batch_spread(fake), real_spread=batch_spread(y))

    real_logits, fake_logits = d(y), d(fake.detach())
    d_loss = F.add(F.binary_cross_entropy_with_logits(real_logits, ones),
                   F.binary_cross_entropy_with_logits(fake_logits, zeros))
    stats.update(d_loss=d_loss.item(), real_acc=_accuracy(real_logits, True), fake_acc=_accuracy(fake_logits, False),
                 g_loss=float("nan"), content=float("nan"), adv=float("nan"))
    if not math.isfinite(stats["d_loss"]):
        return stats
    opt_d.zero_grad()
    d_loss.backward()
    if clip_norm:
        O.clip_grad_norm_(d.parameters(), clip_norm)
    opt_d.step()

    trainable = [p.requires_grad for p in d.parameters()]  # (put back as they were: a frozen layer stays frozen)
    _set_requires_grad(d, False)  # the generator's step: D passes the gradient on, its weights take none
    try:
        content = content_loss(fake, y)
        adv = F.binary_cross_entropy_with_logits(d(fake), ones)
        g_loss = F.add(content, F.mul(adv, adv_weight))
        stats.update(g_loss=g_loss.item(), content=content.item(), adv=adv.item())
        if not math.isfinite(stats["g_loss"]):
            return stats
        opt_g.zero_grad()
        g_loss.backward()
    finally:
        for p, flag in zip(d.parameters(), trainable):
            p.requires_grad = flag
    if clip_norm:
        O.clip_grad_norm_(g.parameters(), clip_norm)
    opt_g.step()
    return stats


# ---------------------------------------------------------------------------------------------------- detection
class FailureDetector:
    """Watches each step's numbers for the two known ways a GAN goes wrong (NaN is the trainer's), and says so once
    per episode: when a condition has held for ``window`` steps in a row; it re-arms when the condition breaks."""

    KINDS = ("d_wins", "collapse")

    def __init__(self, window: int = 100, d_win_loss: float = 0.05, collapse_ratio: float = 0.1):
        if window < 1:
            raise ValueError(f"--fail-window must be >= 1, got {window}")
        self.window, self.d_win_loss, self.collapse_ratio = int(window), float(d_win_loss), float(collapse_ratio)
        self.runs = dict.fromkeys(self.KINDS, 0)  # consecutive steps each condition has held

    def conditions(self, s: dict) -> dict:
        ratio = spread_ratio(s["fake_spread"], s["real_spread"])
        return {"d_wins": s["d_loss"] < self.d_win_loss and s["real_acc"] >= 1.0 and s["fake_acc"] >= 1.0,
                "collapse": ratio < self.collapse_ratio}

    def update(self, stats: dict, step: int) -> list[tuple[str, str]]:
        """``[(kind, message), ...]`` for the conditions that reach ``window`` steps at this step."""
        alerts = []
        for kind, holds in self.conditions(stats).items():
            self.runs[kind] = self.runs[kind] + 1 if holds else 0
            if self.runs[kind] != self.window:
                continue
            first = step - self.window + 1
            if kind == "d_wins":
                msg = (f"the discriminator is winning: its loss has stayed below {self.d_win_loss} with every real "
                       f"and generated image classified right for {self.window} steps ({first}-{step}; loss now "
                       f"{stats['d_loss']:.2e}); the generator gets almost no adversarial gradient (lower --d-lr "
                       "or raise --adv-weight)")
            else:
                msg = (f"mode collapse: the generated images hardly differ across the batch: spread "
                       f"{stats['fake_spread']:.2e} vs the targets' {stats['real_spread']:.2e} (below "
                       f"{self.collapse_ratio} x) for {self.window} steps ({first}-{step})")
            alerts.append((kind, msg))
        return alerts

    def state(self) -> dict:
        return dict(self.runs)

    def load_state(self, state: dict) -> None:
        self.runs.update({k: int(v) for k, v in state.items() if k in self.runs})


# ------------------------------------------------------------------------------------------------------ trainer
STAT_KEYS = ("d_loss", "g_loss", "content", "adv", "real_acc", "fake_acc", "fake_spread", "real_spread")
HISTORY_KEYS = ["epoch", "step", "loss", "d_loss", "content", "adv", "real_acc", "fake_acc", "spread_ratio",
                "val_psnr", "val_ssim", "lr", "seconds", "alerts"]


class GANTrainer(T.Trainer):
    """:class:`minisr.train.Trainer` with SRGAN's step: the generator is ``self.model`` (``loss`` in its history is
    the generator's total loss), the discriminator ``self.disc`` with its optimizer ``self.disc_optimizer``."""

    HISTORY_KEYS = HISTORY_KEYS

    def __init__(self, cfg: GANConfig, out_dir: Path, resume: dict | None = None):
        self._resuming = resume is not None
        super().__init__(cfg, out_dir, None)  # seeds, builds G (+ --init), its optimizer, the data
        self.disc = models.build("srgan_discriminator", n_feats=cfg.d_feats, n_colors=self.model.in_channels,
                                 fc=cfg.d_fc)
        self.disc.to(cfg.device)
        self.disc.train()
        self.disc_optimizer = O.Adam(self.disc.parameters(), lr=cfg.d_lr or cfg.lr, weight_decay=cfg.weight_decay)
        self.disc_base_lr = self.disc_optimizer.param_groups[0]["lr"]
        self.detector = FailureDetector(cfg.fail_window, cfg.d_win_loss, cfg.collapse_ratio)
        self.content_loss = self.loss_fn
        self.epoch_stats: dict[str, list] = {k: [] for k in STAT_KEYS}
        self.epoch_alerts: list[str] = []
        self.failure: str | None = None
        self._samples = None
        if resume is not None:
            self._restore(resume)
        elif not cfg.init:
            self.notes.append("note: no --init: the generator starts from random weights (SRGAN fine-tunes a trained "
                              "SRResNet: --init srresnet-x4 or a checkpoint)")

    def start_message(self) -> str:
        cfg = self.cfg
        return (f"training SRGAN x{cfg.scale}: generator {self.model.num_parameters():,} parameters, discriminator "
                f"{self.disc.num_parameters():,}; on {cfg.data}: {len(self.data)} patches/epoch, {cfg.epochs} "
                f"epochs, batch {cfg.batch_size}, Adam lr G {cfg.lr} D {cfg.d_lr or cfg.lr}, content {cfg.loss} + "
                f"{cfg.adv_weight:g} x adversarial; outputs in {self.out}")

    def end_message(self, result: dict, minutes: float) -> str:
        return (super().end_message(result, minutes) + f", {self.out / 'crops'}\n(SRGAN trades PSNR for texture: "
                "look at the crops)")

    def _init_from(self, spec: str) -> None:
        """``--init``: an SRResNet (or SRGAN) generator of the same config and scale."""
        if self._resuming:
            return
        src, meta = models.load(spec)
        theirs = f"{meta['model']} x{meta.get('scale')} ({T._describe(meta['config'])})"
        ours = f"srresnet x{self.cfg.scale} ({T._describe(self.model.config)})"
        if meta["model"] not in ("srresnet", "srgan") or dict(meta["config"]) != dict(self.model.config):
            raise ValueError(f"--init {spec} is a {theirs} checkpoint; this SRGAN run trains the generator {ours}: "
                             "give srresnet weights of the same config and scale (--n-blocks, --n-feats, --scale)")
        self.model.load_state_dict(src.state_dict())
        self.notes.append(f"generator initialised from {spec} ({theirs})")

    # ----------------------------------------------------------------------------------------- checkpoints
    def meta(self) -> dict:
        m = super().meta()
        m.update(discriminator=dict(model="srgan_discriminator", config=self.disc.config),
                 gan=dict(detector=self.detector.state(), epoch_stats=self.epoch_stats,
                          epoch_alerts=self.epoch_alerts))
        return m

    def checkpoint_groups(self) -> dict:
        return {**super().checkpoint_groups(), "disc": self.disc.state_dict(),
                "disc_optim": self.disc_optimizer.state_dict()}

    def _restore(self, ckpt: dict) -> None:
        if not hasattr(self, "disc"):  # Trainer.__init__ calls this only with resume, which GANTrainer keeps back
            raise RuntimeError("GANTrainer._restore before the discriminator exists")
        if "disc" not in ckpt or "disc_optim" not in ckpt:
            raise ValueError("the checkpoint has no discriminator state (disc/, disc_optim/): not an srgan run")
        super()._restore(ckpt)
        self.disc.load_state_dict(ckpt["disc"])
        self.disc_optimizer.load_state_dict(ckpt["disc_optim"])
        gan = ckpt["meta"].get("gan", {})
        self.detector.load_state(gan.get("detector", {}))
        self.epoch_stats = {k: list(gan.get("epoch_stats", {}).get(k, [])) for k in STAT_KEYS}
        self.epoch_alerts = list(gan.get("epoch_alerts", []))

    def _weights_finite(self) -> bool:
        return super()._weights_finite() and all(bool(np.isfinite(v).all())
                                                 for v in self.disc.state_dict().values())

    def _stop_on_nan(self, what: str, step: int) -> None:
        super()._stop_on_nan(self.failure or what, step)

    # -------------------------------------------------------------------------------------------- training
    def _set_lr(self) -> None:
        super()._set_lr()
        self.disc_optimizer.param_groups[0]["lr"] = self.disc_base_lr * self.lr_factor()

    def train_step(self, x: np.ndarray, t: np.ndarray) -> float:
        """One D step and one G step; returns the generator's loss (NaN stops the run: see ``failure``)."""
        cfg = self.cfg
        s = adversarial_step(self.model, self.disc, self.optimizer, self.disc_optimizer, x, t, cfg.adv_weight,
                             self.content_loss, cfg.clip_norm, cfg.device)
        step = self.step + 1
        if not math.isfinite(s["d_loss"]):
            self.failure = f"the discriminator's loss became {s['d_loss']}"
            return float("nan")
        if not math.isfinite(s["g_loss"]):
            self.failure = f"the generator's loss became {s['g_loss']} (content {s['content']}, adversarial {s['adv']})"
            return float("nan")
        for k in STAT_KEYS:
            self.epoch_stats[k].append(s[k])
        for kind, msg in self.detector.update(s, step):
            self.epoch_alerts.append(f"{kind}@{step}")
            tqdm.write(f"warning: step {step}: {msg}", file=sys.stderr)
            if cfg.stop_on_failure:
                self.failure = msg
                return float("nan")
        if cfg.crops_every and step % cfg.crops_every == 0:
            self.write_crops(step)
        return s["g_loss"]

    def epoch_row(self, val: dict) -> dict:
        st = {k: float(np.mean(v)) if v else float("nan") for k, v in self.epoch_stats.items()}
        row = super().epoch_row(val)
        row.update(d_loss=st["d_loss"], content=st["content"], adv=st["adv"], real_acc=st["real_acc"],
                   fake_acc=st["fake_acc"], spread_ratio=spread_ratio(st["fake_spread"], st["real_spread"]),
                   alerts=" ".join(self.epoch_alerts))
        return row

    def epoch_line(self, row: dict) -> str:
        return (f"epoch {row['epoch']}: D loss {row['d_loss']:.4f} (accuracy real {row['real_acc']:.2f}, fake "
                f"{row['fake_acc']:.2f})  G loss {row['loss']:.5f} (content {row['content']:.5f}, adversarial "
                f"{row['adv']:.3f})  val PSNR {row['val_psnr']:.2f} dB  SSIM {row['val_ssim']:.4f}"
                + (f"  alerts: {row['alerts']}" if row["alerts"] else ""))

    def next_epoch(self) -> None:
        super().next_epoch()
        self.epoch_stats, self.epoch_alerts = {k: [] for k in STAT_KEYS}, []

    # --------------------------------------------------------------------------------------------- reports
    def plot_curves(self) -> None:
        plot_gan_curves(self.history, self.out / "curves.png", self.bicubic_psnr,
                        title=f"SRGAN x{self.cfg.scale} (adversarial weight {self.cfg.adv_weight:g})")

    def samples(self, n: int = 4, size: int = 32):
        """Fixed validation crops ``[(name, lr, hr, y, x, c)]``: the first ``n`` validation images (uint8) and the
        centre ``c`` x ``c`` LR crop of each (c = ``size`` or less), at (y, x) in LR pixels."""
        if self._samples is None:
            from .data import as_benchmark, load_benchmark

            s = self.cfg.scale
            val = self.val
            items = as_benchmark(val, s) if isinstance(val, dict) else load_benchmark(val, s, self.cfg.data_root)
            out = []
            for name, hr, lr in items[:n]:
                h, w = lr.shape[:2]
                c = min(size, h, w)
                out.append((name, lr, hr, (h - c) // 2, (w - c) // 2, c))
            self._samples = out
        return self._samples

    def write_crops(self, step: int) -> Path:
        """``crops/step_NNNNNN.png``: per validation crop, LR (nearest), bicubic, the generator, HR. Each upscaler
        sees the crop with its receptive field of context around it, so the crop is what the whole image gives."""
        from .crops import crop_sr
        from .upscalers import Upscaler, bicubic_upscaler, receptive_radius

        s = self.cfg.scale
        meta = dict(model=self.cfg.model, scale=s, scales=self.cfg.train_scales)
        self.model.eval()
        try:
            up = Upscaler(self.model, meta, s, device=self.cfg.device)
            context = receptive_radius(self.model) + 1
            rows = [(name, lr[y:y + c, x:x + c], crop_sr(bicubic_upscaler(s), lr, s, y * s, x * s, c * s, 4),
                     crop_sr(up, lr, s, y * s, x * s, c * s, context), hr[y * s:(y + c) * s, x * s:(x + c) * s])
                    for name, lr, hr, y, x, c in self.samples()]
        finally:
            self.model.train()
        return plot_crops(rows, self.out / "crops" / f"step_{step:06d}.png", f"SRGAN x{s}, step {step}")



def plot_crops(rows, path, title: str = "") -> Path:
    """A grid: one row per (name, lr, bicubic, sr, hr) of uint8 images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import psnr

    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    for ax_row, (name, lr, bic, sr, hr) in zip(axes, rows):
        panels = [("LR", lr), (f"bicubic {psnr(bic, hr):.2f} dB", bic), (f"SRGAN {psnr(sr, hr):.2f} dB", sr),
                  (f"HR ({name})", hr)]
        for ax, (label, img) in zip(ax_row, panels):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(label, fontsize=9)
            ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, Path(path), close=True, dpi=100)


def plot_gan_curves(history, path, bicubic=None, title="") -> Path:
    """Per epoch: D's and G's losses, D's accuracy on real and generated images, the validation PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 3.8))
    a.plot(ep, [h["d_loss"] for h in history], "o-", label="D: BCE real + fake")
    a.plot(ep, [h["adv"] for h in history], "o-", label="G: adversarial -log D(G(x))")
    a.plot(ep, [h["content"] for h in history], "o-", label="G: content (pixels)")
    a.set(xlabel="epoch", ylabel="loss", title="losses", yscale="log")
    a.legend(fontsize=8)
    b.plot(ep, [h["real_acc"] for h in history], "o-", label="on real HR")
    b.plot(ep, [h["fake_acc"] for h in history], "o-", label="on generated")
    b.axhline(0.5, color="gray", ls=":")
    b.set(xlabel="epoch", ylabel="accuracy", title="discriminator accuracy", ylim=(-0.02, 1.02))
    b.legend(fontsize=8)
    c.plot(ep, [h["val_psnr"] for h in history], "o-", label="generator")
    if bicubic is not None:
        c.axhline(bicubic, color="gray", ls="--", label=f"bicubic {bicubic:.2f} dB")
    c.set(xlabel="epoch", ylabel="PSNR (dB, Y)", title="validation PSNR")
    c.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, Path(path), close=True, dpi=100)


# ---------------------------------------------------------------------------------------------------------- CLI
def wants(argv) -> bool:
    """Is ``python -m minisr.train ARGV`` an SRGAN run: the model argument ``srgan``, or ``--resume`` of one?"""
    argv = list(argv)
    takes_value = {o for a in T.build_parser()._actions for o in a.option_strings if a.nargs != 0}
    resume = None
    for i, tok in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if tok == "srgan" and prev not in takes_value:
            return True
        if prev == "--resume":
            resume = tok
        elif tok.startswith("--resume="):
            resume = tok.split("=", 1)[1]
    if resume and Path(resume).is_file():
        try:
            with np.load(resume, allow_pickle=False) as z:
                import json

                return json.loads(str(z["meta"])).get("train_config", {}).get("model") == "srgan"
        except Exception:  # not a checkpoint: minisr.train reports it
            return False
    return False


def build_parser() -> argparse.ArgumentParser:
    p = T.build_parser()
    p.prog = "python -m minisr.train srgan"
    g = p.add_argument_group("SRGAN (python -m minisr.train srgan --init srresnet-x4)")
    g.add_argument("--adv-weight", type=float, help="weight of the adversarial loss (default 1e-3)")
    g.add_argument("--d-lr", type=float, help="discriminator learning rate (default: --lr)")
    g.add_argument("--d-feats", type=int, help="discriminator width n: n..8n channels (default 64)")
    g.add_argument("--d-fc", type=int, help="discriminator dense layer width (default 16 x --d-feats = 1024)")
    g.add_argument("--crops-every", type=int, help="write crops/step_N.png every this many steps (500; 0: never)")
    g.add_argument("--fail-window", type=int, help="steps a failure condition must hold to be reported (100)")
    g.add_argument("--d-win-loss", type=float, help="discriminator loss below which it 'wins' (0.05)")
    g.add_argument("--collapse-ratio", type=float, help="generated / target batch spread below which the outputs "
                                                        "'collapse' (0.1)")
    g.add_argument("--stop-on-failure", action="store_true",
                   help="stop (code 3, last good checkpoint kept) when D wins or the outputs collapse, not only on NaN")
    return cli_checks.validated(p, cli_checks.SRGAN)


GAN_ARGS = ("adv_weight", "d_lr", "d_feats", "d_fc", "crops_every", "fail_window", "d_win_loss", "collapse_ratio")


def config_from_args(args) -> GANConfig:
    base = T.config_from_args(args)
    cfg = GANConfig(**asdict(base))
    cfg.model_cfg = dict(cfg.model_cfg, scale=cfg.scale)  # the generator enlarges by itself
    cfg.scales = None
    for k in GAN_ARGS:
        if getattr(args, k) is not None:
            setattr(cfg, k, getattr(args, k))
    cfg.stop_on_failure = bool(args.stop_on_failure)
    return cfg
