"""Files written whole: under a temporary name beside the target, renamed over it only once complete.

A failure (an exception, a full disk, Ctrl-C) then never leaves a partial file under the final name, and a
crash after the rename cannot lose it (``fsync_dir``). The temporary file is created with mode 0o666, which the
kernel reduces by the umask as for any new file, so the result gets the permissions any new file of the user
gets -- not ``tempfile.mkstemp``'s private 0o600 -- without a process-wide ``os.umask()`` call (which would race
other threads creating files).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def create_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A new temporary file in ``path``'s folder, opened for writing: ``(fd, name)``; its name ends in ``suffix``."""
    path = Path(path)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def fsync_dir(folder: Path) -> None:
    """Flush a directory entry change (the rename) to disk, where the OS allows it (not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_figure(fig, path, close: bool = False, **savefig_kw) -> Path:
    """``fig.savefig(path)`` written whole: to a temporary name beside ``path`` (same extension, so matplotlib picks
    the format), then renamed; nothing is left under either name if it fails. ``close``: close the figure after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_beside(path, suffix=path.suffix or ".png")
    os.close(fd)
    try:
        fig.savefig(tmp, **savefig_kw)
        os.replace(tmp, path)
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
