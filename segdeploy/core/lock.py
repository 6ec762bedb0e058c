"""A run directory being written is locked: RUN/.segdeploy.lock holds the writer's pid and command.

The lock is an flock on that file, so the kernel releases it when its process dies however it dies; a
lock file left by a dead process is taken over with a message. Within one process the lock is re-entrant
(a study trains, then evaluates, the same run). While holding the lock a writer finishes what killed
writers left (unit journals, temporary files): nobody else writes there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from segdeploy.core import fileio, unit
from segdeploy.core.errors import WRITE_ERRNOS, OutputError, SegdeployError

LOCK_NAME = ".segdeploy.lock"
_held: dict[Path, int] = {}  # folders this process holds -> nesting depth


class RunLocked(SegdeployError):
    """Another live process is writing this run directory."""


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} (segdeploy {holder.get('command', '?')}, since {started})"


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except ValueError:
        return {}


def _acquire(path: Path, command: str) -> int:
    """An open, flock-ed file descriptor of `path` with this process's record in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunLocked(f"{path.parent} is being written by {_describe(holder)}: wait for it to finish "
                            "or stop it, then run this command again") from None
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:  # else the holder released and removed it between our open and flock: retry
            break
        os.close(fd)
    stale = _read(fd)
    if stale.get("pid"):
        from segdeploy.core.progress import console

        console.print(f"[yellow]note[/]: took over the lock of {path.parent} from {_describe(stale)}, "
                      "which is no longer running", highlight=False, soft_wrap=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return fd


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the lock of `folder` (made if missing) for the block; a live holder is a one-line error."""
    folder = Path(folder).absolute()
    if folder in _held:
        _held[folder] += 1
        try:
            yield
        finally:
            _held[folder] -= 1
        return
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, command)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:  # a read-only run: say so before any work
            raise OutputError(f"cannot write to run directory {folder}: {exc.strerror}") from None
        raise
    _held[folder] = 1
    try:
        unit.recover(folder)
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
            fileio.remove_stale_temps(sub)
        yield
    finally:
        del _held[folder]
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def is_lock_file(path: Path) -> bool:
    return path.name == LOCK_NAME
