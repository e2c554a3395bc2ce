"""Every command-line option checked at parse time, in one place: the value types, their ranges, and the combinations.

Each CLI builds its ``argparse`` parser as usual and passes it through :func:`validated` with its table below
(``TRAIN``, ``EVAL``, ``UPSCALE``, ``PRS``, ``SERVE``): every option named there gets the checking ``type=``, and
:class:`Parser`'s ``error`` prints one line, ``error: argument --epochs: 0 is not allowed: an integer >= 1``, and
exits with code 2 (no traceback, no usage dump). The combinations of options (``check_train`` ...) are checked right
after parsing, by the CLI's ``main``, with the same message format.

A value checker is ``text -> value`` raising :class:`argparse.ArgumentTypeError` with a message that says what the
value is and what is allowed; argparse puts the option's name in front. ``tests/test_hardening_cli.py`` checks that
every numeric option of every CLI has an entry here, so a new option cannot skip validation.
"""

from __future__ import annotations

import argparse
import math
import re

__all__ = ["Parser", "validated", "positive_int", "nonneg_int", "int_range", "positive_float", "nonneg_float",
           "float_range", "memory_size", "int_list", "float_list", "device", "port", "fail", "check_train",
           "check_eval", "check_upscale", "TRAIN", "SRGAN", "EVAL", "UPSCALE", "PRS", "SERVE"]
__all__ += ["CROPS"]


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error: ...`` line on stderr and exit code 2, as every other
    error of minisr's CLIs (argparse's default prints the usage first, then ``prog: error: ...``)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def validated(parser: argparse.ArgumentParser, table: dict) -> argparse.ArgumentParser:
    """Give each option of ``parser`` named in ``table`` (by its dest) the checker found there; return the parser.

    Unknown names are a programming error (a renamed option would otherwise lose its check silently)."""
    actions = {a.dest: a for a in parser._actions}
    for dest, check in table.items():
        if dest not in actions:
            raise KeyError(f"{parser.prog}: no option with dest {dest!r} to validate")
        actions[dest].type = check
    if not isinstance(parser, Parser):  # one error format for every CLI
        parser.error = Parser.error.__get__(parser)
    return parser


def fail(parser: argparse.ArgumentParser, message: str):
    """A combination of options that cannot work: the same one-line error and exit code 2 as a bad value."""
    validated(parser, {})
    parser.error(message)


# ---------------------------------------------------------------------------------------------- value checkers
def _bad(text, allowed: str):
    return argparse.ArgumentTypeError(f"{text!r} is not allowed: {allowed}")


def _int(text, allowed: str) -> int:
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        raise _bad(text, allowed) from None
    return value


def _float(text, allowed: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise _bad(text, allowed) from None
    if not math.isfinite(value):
        raise _bad(text, allowed + " (a finite number)")
    return value


def int_range(lo: int | None = None, hi: int | None = None):
    """An integer in [lo, hi] (either bound may be None: unbounded)."""
    if lo is not None and hi is not None:
        allowed = f"an integer from {lo} to {hi}"
    elif lo is not None:
        allowed = f"an integer >= {lo}"
    else:
        allowed = f"an integer <= {hi}"

    def check(text):
        v = _int(text, allowed)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _bad(text, allowed)
        return v

    check.__name__ = f"int_range({lo}, {hi})"
    check.allowed = allowed
    return check


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """A finite float in the interval given (open or closed at each end; None: unbounded)."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    allowed = "a number " + " and ".join(parts) if parts else "a number"

    def check(text):
        v = _float(text, allowed)
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise _bad(text, allowed)
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise _bad(text, allowed)
        return v

    check.__name__ = f"float_range({lo}, {hi})"
    check.allowed = allowed
    return check


positive_int = int_range(1)
nonneg_int = int_range(0)
positive_float = float_range(0.0, lo_open=True)
nonneg_float = float_range(0.0)
fraction = float_range(0.0, 1.0)  # [0, 1]
open_fraction = float_range(0.0, 1.0, lo_open=True, hi_open=True)  # (0, 1)
seed = int_range(0, 2 ** 32 - 1)
port = int_range(0, 65535)

_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}


def memory_size(text) -> int:
    """``2G``, ``500M``, ``1.5g``, ``800MiB``, ``1048576``: bytes (binary units: K = 1024); at least 1 MiB."""
    allowed = "a size such as 500M, 2G or 1.5GiB (at least 1M)"
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtKMGT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise _bad(text, allowed)
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value < 2 ** 20:
        raise _bad(text, allowed)
    return int(value)


memory_size.allowed = "a size such as 500M or 2G"


def _each(one, items, text, allowed) -> tuple:
    """``one`` applied to every item of a list option, or the whole option's error (an empty list is one too)."""
    if not items:
        raise _bad(text, allowed)
    try:
        return tuple(one(v) for v in items)
    except argparse.ArgumentTypeError:
        raise _bad(text, allowed) from None


def int_list(lo: int = 1, hi: int | None = None, *, odd: bool = False, length: int | None = None):
    """``9,5,5`` or ``9x5x5``: integers, each in [lo, hi] (odd if asked), ``length`` of them if given."""
    one = int_range(lo, hi)
    allowed = f"comma-separated integers, each {one.allowed[len('an integer '):]}" + (", odd" if odd else "") + \
        (f", {length} of them" if length else "")

    def check(text):
        items = [v for v in str(text).replace("x", ",").split(",") if v.strip()]
        if length and len(items) != length:
            raise _bad(text, allowed)
        values = _each(one, items, text, allowed)
        if odd and any(v % 2 == 0 for v in values):
            raise _bad(text, allowed)
        return values

    check.__name__ = "int_list"
    check.allowed = allowed
    return check


def float_list(lo: float = 0.0, hi: float | None = None, *, lo_open: bool = False):
    """``1,0.9,0.8``: numbers, each in the interval given (as :func:`float_range`)."""
    one = float_range(lo, hi, lo_open=lo_open)
    allowed = f"comma-separated numbers, each {one.allowed[len('a number '):]}"

    def check(text):
        return _each(one, [v for v in str(text).split(",") if v.strip()], text, allowed)

    check.__name__ = "float_list"
    check.allowed = allowed
    return check


def device(text) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``."""
    name = str(text).strip().lower()
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", name):
        raise _bad(text, "cpu, cuda or cuda:N")
    return name


device.allowed = "cpu, cuda or cuda:N"

# ---------------------------------------------------------------------------------------------- the tables
#: python -m minisr.train (dest -> checker)
TRAIN = dict(
    scale=int_range(2, 4), scales=int_list(2, 4), epochs=positive_int, max_steps=positive_int,
    batch_size=positive_int, patch=int_range(2), stride=nonneg_int, patches_per_image=positive_int,
    rescale=float_list(0.0, 1.0, lo_open=True),
    lr=positive_float, momentum=float_range(0.0, 1.0, hi_open=True), weight_decay=nonneg_float,
    lr_step=nonneg_int, lr_gamma=float_range(0.0, 1.0, lo_open=True), clip=positive_float, clip_norm=nonneg_float,
    warmup=nonneg_int, min_lr=fraction, save_every=nonneg_int, smoothness=nonneg_float, seed=seed, device=device,
    ema=float_range(0.0, 1.0, hi_open=True),
    dsm=int_list(1, length=3), kernels=int_list(1), features=int_list(1), depth=int_range(2),
    n_resblocks=positive_int, n_blocks=positive_int, n_feats=positive_int, res_scale=positive_float,
)
#: python -m minisr.train srgan: TRAIN's options and these
SRGAN = dict(adv_weight=nonneg_float, d_lr=positive_float, d_feats=positive_int, d_fc=positive_int,
             crops_every=nonneg_int, fail_window=positive_int, d_win_loss=positive_float, collapse_ratio=fraction)
#: python -m minisr.eval
EVAL = dict(device=device)
#: python -m minisr.upscale
UPSCALE = dict(scale=int_range(2, 16), tile=int_range(8), device=device)
#: python -m minisr.prs
PRS = dict(scale=int_range(2, 16), epochs=positive_int, seed=seed, test_fraction=open_fraction, limit=int_range(2),
           device=device)
#: python -m minisr.crops (SSIM's window needs crops of 11x11 or more)
CROPS = dict(scale=int_range(2, 16), size=int_range(11), context=nonneg_int, device=device)
#: python -m minisr.serve
SERVE = dict(port=port, max_upload_mb=positive_float, max_pixels=positive_int, max_video_frames=positive_int,
             workers=positive_int, queue=nonneg_int, retry_after=nonneg_int, tile=int_range(8),
             drain_timeout=nonneg_float, device=device)


# ---------------------------------------------------------------------------------------------- combinations
def _given(argv_or_args, *names) -> list[str]:
    return [n for n in names if getattr(argv_or_args, n, None) not in (None, False)]


def _flag(dest: str) -> str:
    return "--" + {"max_steps": "steps"}.get(dest, dest).replace("_", "-")


# train: model options -> the recipe's model-config key that says a model takes them
_MODEL_OPTIONS = {"kernels": "kernels", "padding": "padding", "depth": "depth", "no_residual": "depth",
                  "n_resblocks": "n_resblocks", "n_blocks": "n_blocks", "n_feats": "n_feats", "res_scale": "res_scale",
                  "dsm": "d", "features": "features", "channels": None}
_CHANNEL_MODELS = ("srcnn", "vdsr", "fsrcnn", "espcn")
# train: what --resume takes beside the checkpoint (model and scale only to check them against the run's)
_RESUME_OPTIONS = ("resume", "epochs", "max_steps", "out", "model", "scale", "init")


def check_train(parser, args, recipes: dict) -> None:
    """The combinations of ``python -m minisr.train``'s options that cannot work (or would be silently ignored)."""
    if args.model is None and not args.resume:
        fail(parser, "the model is required (one of " + ", ".join(sorted(recipes)) + "), unless you --resume a run")
    if args.resume and args.init:
        fail(parser, f"--init {args.init} starts a new run from weights; --resume {args.resume} continues one: "
                     "give one of them")
    if args.resume:  # the run's own configuration; train.run_cli checks --model/--scale against it
        ignored = [a.option_strings[0] for a in parser._actions
                   if a.option_strings and a.dest not in _RESUME_OPTIONS and a.default != argparse.SUPPRESS
                   and getattr(args, a.dest, a.default) != a.default]
        if ignored:
            fail(parser, f"{', '.join(ignored)} with --resume {args.resume}: a resumed run keeps the settings it "
                         "was started with (only --epochs, --steps and --out apply); start a new run (--init "
                         "its weights) to change them")
        return
    if args.init_matching and not args.init:
        fail(parser, "--init-matching says how to load --init weights: give --init too")
    model_cfg = recipes[args.model].get("model", {})
    for dest, key in _MODEL_OPTIONS.items():
        value = getattr(args, dest, None)
        if value in (None, False):
            continue
        takes = args.model in _CHANNEL_MODELS if dest == "channels" else key in model_cfg
        if not takes:
            users = [m for m, r in sorted(recipes.items())
                     if (m in _CHANNEL_MODELS if dest == "channels" else key in r.get("model", {}))]
            fail(parser, f"{_flag(dest)} does not apply to {args.model} (it is an option of {', '.join(users)})")
    if args.scales and args.model not in ("srcnn", "vdsr"):
        fail(parser, f"--scales {','.join(map(str, args.scales))}: {args.model} enlarges by itself, one scale per "
                     "model (--scale); mixed scales are for srcnn and vdsr")
    if args.schedule == "cosine" and _given(args, "lr_step"):
        fail(parser, f"--lr-step {args.lr_step} is for --schedule step; --schedule cosine decays to --min-lr")
    if args.schedule == "step" and _given(args, "min_lr"):
        fail(parser, f"--min-lr {args.min_lr} is for --schedule cosine; --schedule step multiplies by --lr-gamma")
    if args.stride and args.patches_per_image:
        fail(parser, f"--stride {args.stride} cuts a grid of sub-images; --patches-per-image "
                     f"{args.patches_per_image} counts random crops (--stride 0): give one of them")


def check_eval(parser, args) -> None:
    """``python -m minisr.eval``: one image set and model, or ``--table``."""
    if not args.table:
        stray = _given(args, "models", "datasets")
        if stray:
            fail(parser, f"{', '.join(_flag(s) for s in stray)} belong to --table; for one model and dataset use "
                         "--model and --dataset")
        missing = [f"--{k}" for k in ("model", "dataset", "scale") if getattr(args, k) is None]
        if missing:
            fail(parser, f"{', '.join(missing)} required (or --table)")


def check_upscale(parser, args) -> None:
    """``python -m minisr.upscale``: --tile and --max-memory both choose the tile size."""
    if getattr(args, "max_memory", None) is not None and args.tile is not None:
        fail(parser, f"--tile {args.tile} and --max-memory both set the tile size: give one of them")
