"""One training run per output folder: a lock file, ``OUT/.minisr-train.lock``, holding the owner's pid.

Two runs writing the same ``--out`` would overwrite each other's checkpoints and history. The lock is an advisory
``fcntl.flock`` on the lock file, which the kernel drops when its process ends in any way (``kill -9`` included), so a
lock left by a dead process is taken over without anyone deleting it; the file's content (pid, host, start time) is
only there for the message the second run gets. Where ``fcntl`` is missing (Windows) the file is created exclusively
and a lock whose pid is no longer running is taken over.

``cleanup_partial_files(folder)`` removes the temporary files a killed writer left (``minisr.atomic``'s
``.NAME.XXXXXXXX.tmp``), which only the lock holder may do.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

LOCK_NAME = ".minisr-train.lock"


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


class RunLock:
    """``with RunLock(folder):`` or ``lock = RunLock(folder).acquire()`` ... ``lock.release()``."""

    def __init__(self, folder, what: str = "training run"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._fd = None

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, owner: dict):
        since = owner.get("started")
        since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if since else ""
        host = owner.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        raise FolderLockedError(
            f"{self.folder} is in use by another {self.what} (pid {owner.get('pid', '?')}{where}{since}): two runs "
            f"writing one folder would overwrite each other's checkpoints; give another --out, or wait for it "
            f"(the lock is {self.path})")

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        try:
            import fcntl
        except ImportError:  # no flock: an exclusive create, and a dead owner's file taken over
            return self._acquire_exclusive(me)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self._refuse(self._owner())
        try:
            os.ftruncate(fd, 0)
            os.write(fd, me.encode())
        except BaseException:  # (a full disk): not held, nor left open
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _acquire_exclusive(self, me: str) -> RunLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                owner = self._owner()
                if owner.get("pid") and owner.get("host") == socket.gethostname() and not _alive(int(owner["pid"])):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                self._refuse(owner)
            os.write(fd, me.encode())
            self._fd = fd
            self._exclusive = True
            return self
        self._refuse(self._owner())

    def release(self) -> None:
        if self._fd is None:
            return
        if getattr(self, "_exclusive", False):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # drops the flock; the file stays (deleting it would race a waiting opener)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{8}\.[^.]+$")  # minisr.atomic.create_beside's temporary names


def cleanup_partial_files(folder) -> list[Path]:
    """Remove the temporary files that writers killed mid-write left in ``folder`` and its subfolders (SRGAN's
    ``crops/``); returns them. Call it only while holding the folder's :class:`RunLock` (another live writer's
    temporary file would go too)."""
    removed = []
    for p in sorted(Path(folder).rglob(".*")):
        if p.is_file() and _PARTIAL.match(p.name) and p.name != LOCK_NAME:
            p.unlink(missing_ok=True)
            removed.append(p)
    tmp = Path(folder) / "history.csv.tmp"
    if tmp.is_file():
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
