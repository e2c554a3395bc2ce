"""Checkpoints as ``.npz`` files, readable with ``np.load(path, allow_pickle=False)``.

Layout: ``model/<param>`` arrays, ``optim/<key>`` arrays, and ``meta``: one JSON string with the model name and
config, epoch, step, RNG state and anything else the trainer keeps. Files are written to a temporary file beside the
target and renamed, so a crash never leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import create_beside, fsync_dir

_JSON_VALUES = "_values_as_json"  # meta entry: {"optim/<key>": value} for values that are not arrays (None)


def save(path, model_state: dict, meta: dict, optim_state: dict | None = None, groups: dict | None = None) -> Path:
    """Atomically write a checkpoint; returns its path. ``groups`` ({name: {key: array}}) adds more state beside the
    model's (``<name>/<key>``: SRGAN's discriminator and its optimizer), which :func:`load` returns under ``name``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, json_values = {}, {}
    entries = [(f"model/{k}", v) for k, v in model_state.items()]
    entries += [(f"optim/{k}", v) for k, v in (optim_state or {}).items()]
    for group, state in (groups or {}).items():
        if group in ("model", "optim", "meta") or "/" in group:
            raise ValueError(f"checkpoint.save({str(path)!r}): extra group name {group!r} is reserved or has a '/'")
        entries += [(f"{group}/{k}", v) for k, v in state.items()]
    for key, v in entries:  # never write what load() (allow_pickle=False) would refuse: no object arrays
        a = np.asarray(v)
        if not a.dtype.hasobject:
            arrays[key] = a
            continue
        if a.ndim == 0:
            v = a.item()  # (Optimizer.state_dict wraps every value with np.asarray)
        try:  # None (e.g. in an optimizer param group) and other plain values go into the JSON meta
            json.dumps(v)
        except (TypeError, ValueError):
            raise ValueError(f"checkpoint.save({str(path)!r}): {key} holds {type(v).__name__} {v!r:.80}, which an "
                             ".npz loaded with allow_pickle=False cannot hold; use numbers, strings or numeric "
                             "arrays") from None
        json_values[key] = v
    if json_values:
        meta = dict(meta, **{_JSON_VALUES: json_values})
    arrays["meta"] = np.array(json.dumps(meta))
    fd, tmp = create_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so a crash cannot leave a truncated file in place
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)  # ... and the rename itself on disk
    return path


def load(path) -> dict:
    """``{"meta": dict, "model": {name: array}, "optim": {key: array}}`` from a checkpoint written by :func:`save`,
    plus ``{group: {key: array}}`` for the extra groups it was given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError
        raise ValueError(f"{path} is not a minisr checkpoint (.npz): {e}") from e
    if "meta" not in files:
        raise ValueError(f"{path} is not a minisr checkpoint: it has no 'meta' entry")
    try:
        meta = json.loads(str(files.pop("meta")))
    except ValueError as e:
        raise ValueError(f"{path} is not a minisr checkpoint: its 'meta' entry is not JSON ({e})") from e
    out = {"meta": meta, "model": {}, "optim": {}}
    files.update(meta.pop(_JSON_VALUES, None) or {})
    for k, v in files.items():
        group, _, name = k.partition("/")
        if group in ("model", "optim"):
            out[group][name] = v
        elif name:  # an extra group (save's ``groups``)
            out.setdefault(group, {})[name] = v
    return out


def export_weights(src, dst, **card) -> Path:
    """A small inference-only copy of a training checkpoint: the weights and the model part of ``meta`` (name,
    config, scales, channels) plus ``card`` entries; no optimizer state or history. Used for the shipped weights."""
    ckpt = load(src)
    keep = ("model", "config", "scale", "scales", "channels", "epoch", "step", "best_psnr")
    meta = {k: ckpt["meta"][k] for k in keep if k in ckpt["meta"]}
    meta.update(card)
    return save(dst, ckpt["model"], meta)
