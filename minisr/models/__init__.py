"""SR models built by name: ``minisr.models.build("srcnn", kernels=(9, 5, 5))`` returns an ``nn.Module``.

Every model has ``config`` (the keyword arguments that rebuild it), ``in_channels`` (1 = Y, 3 = RGB),
``upsample_input`` (True when its input is the bicubic-upscaled image, SRCNN and VDSR; False for EDSR, which takes the
LR image), ``scale`` (the factor the network itself enlarges by) and ``border`` (pixels lost per side, valid SRCNN).

``load(spec)`` returns ``(model, meta)`` for a checkpoint path or a shipped model name such as ``"srcnn-x3"``.
"""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint
from .discriminator import Discriminator
from .edsr import EDSR
from .espcn import ESPCN
from .fsrcnn import FSRCNN
from .srcnn import SRCNN
from .srresnet import SRResNet
from .vdsr import VDSR

MODELS = {"srcnn": SRCNN, "vdsr": VDSR, "edsr": EDSR}
MODELS.update(fsrcnn=FSRCNN, espcn=ESPCN)  # LR-input Y models (issue 16)
MODELS.update(srresnet=SRResNet)  # SRGAN's generator (issue 18)
# SRGAN: "srgan" is the generator trained against the discriminator (SRResNet's architecture; its checkpoints say
# srgan so that tables tell it from the MSE-trained srresnet), "srgan_discriminator" the discriminator
MODELS.update(srgan=SRResNet, srgan_discriminator=Discriminator)
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

__all__ = ["build", "load", "shipped", "MODELS", "SRCNN", "VDSR", "EDSR"]
__all__ += ["FSRCNN", "ESPCN", "SRResNet"]
__all__ += ["Discriminator"]


def build(name: str, **cfg):
    """A fresh model of architecture ``name`` (srcnn, vdsr, edsr) with the given config."""
    key = name.lower()
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[key](**cfg)


#: shipped names that another shipped file answers at one of its scales: VDSR is one network for x2, x3 and x4
#: (``vdsr.npz``), shipped as ``vdsr-x2``, ``vdsr-x3`` and ``vdsr-x4`` without three copies of its weights
ALIASES = {f"vdsr-x{s}": ("vdsr", s) for s in (2, 3, 4)}


def shipped(aliases: bool = True) -> dict[str, Path]:
    """Shipped weights: name (e.g. "srcnn-x3") -> .npz path inside the package; with ``aliases`` also the names of
    ALIASES whose file is shipped (``aliases=False``: each file once, e.g. for the paper table)."""
    files = {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.npz"))}
    if aliases:
        files.update({a: files[f] for a, (f, _) in ALIASES.items() if f in files and a not in files})
    return files


def trained_scales(meta: dict) -> list[int]:
    """The scales a checkpoint's model was trained for, each once and in order: ``meta["scales"]`` (mixed-scale runs;
    a scale repeated there, e.g. ``--scales 2,2,3,4``, was drawn more often), else its one scale."""
    return sorted({int(s) for s in (meta.get("scales") or [meta.get("scale")])})


def load(spec, device: str = "cpu"):
    """``(model, meta)`` from a checkpoint path or a shipped name; the model is in eval mode on ``device``. An alias
    (``vdsr-x3``) gives its file's model with ``meta["scale"]`` set to the alias's scale and ``meta["alias_of"]`` to
    the file's name."""
    path, alias = Path(spec), None
    if not path.is_file():
        known = shipped()
        if str(spec) not in known:
            raise FileNotFoundError(f"model {spec!r} is neither a checkpoint file nor a shipped model "
                                    f"(shipped: {', '.join(known) or 'none'})")
        path = known[str(spec)]
        alias = ALIASES.get(str(spec)) if path.stem != str(spec) else None
    ckpt = checkpoint.load(path)
    meta = ckpt["meta"]
    if alias:
        if alias[1] not in trained_scales(meta):
            raise ValueError(f"{path}: {spec} needs a model trained for x{alias[1]}, this one has "
                             f"scales {trained_scales(meta)}")
        meta = dict(meta, name=str(spec), scale=alias[1], alias_of=path.stem)
    if "model" not in meta or "config" not in meta:
        raise ValueError(f"{path}: checkpoint meta has no model name/config")
    model = build(meta["model"], **meta["config"])
    model.load_state_dict(ckpt["model"])
    model.to(device)
    model.eval()
    meta = dict(meta, path=str(path))
    return model, meta
