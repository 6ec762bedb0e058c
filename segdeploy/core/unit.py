"""Files that change together (a graph and its sidecar, an engine and its manifest, bench.json and its
figures) are written as one unit: a reader finds the old set or the new set, never a mix.

Each new file is written to a temporary file beside its target. `commit` flushes them all, records the
renames in a journal (itself written atomically), performs them with Ctrl-C held back for those few
microseconds, and deletes the journal. A process killed during the renames leaves the journal: the next
`recover` (RunDir.open, a run lock) finishes them. Killed before the journal exists, the old files are
untouched and only temporary files remain, which `fileio.remove_stale_temps` clears.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

from segdeploy.core import fileio
from segdeploy.core.errors import OutputError

JOURNAL_PREFIX = ".unit-"
JOURNAL_SUFFIX = ".journal"


class FileUnit:
    """Stage files under `root` with `path`/`write_*`; `commit` puts them all in place at once."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.staged: dict[Path, Path] = {}  # target -> temporary file holding its new content
        self.removed: list[Path] = []  # targets the new unit no longer has
        self.folders: dict[Path, tuple[Path, bool]] = {}  # target folder -> (staging folder, replace)
        self.scratches: dict[Path, Path] = {}  # intermediate temporary file -> the target it is for

    def path(self, target: str | os.PathLike) -> Path:
        """Where to write `target`'s new content (a temporary file beside it, the same for the same target)."""
        target = Path(target)
        if target not in self.staged:
            self.staged[target] = fileio.temp_path_for(target)
        return self.staged[target]

    def write_bytes(self, target: str | os.PathLike, data: bytes) -> Path:
        self.path(target).write_bytes(data)
        return Path(target)

    def write_text(self, target: str | os.PathLike, text: str) -> Path:
        return self.write_bytes(target, text.encode("utf-8"))

    def write_json(self, target: str | os.PathLike, obj: Any) -> Path:
        return self.write_text(target, fileio.json_text(obj))

    def scratch(self, target: str | os.PathLike) -> Path:
        """A temporary file beside `target` for an intermediate step (never committed, always removed);
        errors writing it name `target`."""
        tmp = fileio.temp_path_for(target)
        self.scratches[tmp] = Path(target)
        return tmp

    def folder(self, target: str | os.PathLike, replace: bool = True) -> Path:
        """A staging folder whose files become `target`'s files (sub-folders kept). `replace`: files of
        `target` the staging folder does not have are removed, so `target` holds exactly the new set."""
        target = Path(target)
        if target not in self.folders:  # beside a folder it replaces, else inside the folder it adds to
            self.folders[target] = (fileio.temp_dir_for(target if replace else target / "staging"), replace)
        return self.folders[target][0]

    def remove(self, target: str | os.PathLike) -> None:
        """Delete `target` when the unit is committed (a file the new set no longer has)."""
        self.removed.append(Path(target))

    def _record(self) -> dict:
        renames = dict((tmp, target) for target, tmp in self.staged.items())
        removals = set(self.removed)
        for target, (staging, replace) in self.folders.items():
            new = {f: target / f.relative_to(staging) for f in staging.rglob("*") if f.is_file()}
            renames.update(new)
            if replace and target.is_dir():
                removals |= {f for f in target.rglob("*") if f.is_file()} - set(new.values())
        removals -= set(renames.values())
        return {"pid": os.getpid(), "renames": [[_rel(a, self.root), _rel(b, self.root)] for a, b in renames.items()],
                "removals": sorted(_rel(t, self.root) for t in removals),
                "folders": [_rel(staging, self.root) for staging, _ in self.folders.values()]}

    def commit(self) -> None:
        try:
            record = self._record()
            for tmp, _ in record["renames"]:
                with open(self.root / tmp, "rb+") as f:
                    os.fsync(f.fileno())
        except BaseException as exc:
            self._fail(exc)
        journal = self.root / f"{JOURNAL_PREFIX}{uuid.uuid4().hex}{JOURNAL_SUFFIX}"
        with sigint_deferred():
            try:
                fileio.write_json(journal, record)
            except BaseException as exc:
                self._fail(exc)
            _apply(self.root, record)  # an error here leaves the journal: `recover` finishes the renames
            journal.unlink()
        for folder in {(self.root / target).parent for _, target in record["renames"]}:
            fileio.fsync_dir(folder)
        self.abort()  # only scratch files are left to remove

    def _fail(self, exc: BaseException) -> None:
        target = next(iter(self.staged), self.root)
        self.abort()
        if isinstance(exc, OSError):
            fileio.raise_write_error(exc, target)
        raise exc

    def abort(self) -> None:
        for tmp in [*self.staged.values(), *self.scratches]:
            tmp.unlink(missing_ok=True)
        for staging, _ in self.folders.values():
            shutil.rmtree(staging, ignore_errors=True)
        self.staged.clear()
        self.folders.clear()
        self.scratches.clear()

    def __enter__(self) -> "FileUnit":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.commit()
            return
        if isinstance(exc, OutputError) and exc.args:  # name the file the user knows, not its stand-in
            exc.args = (self.real_names(str(exc.args[0])), *exc.args[1:])
        self.abort()

    def real_names(self, text: str) -> str:
        for tmp, target in [*((t, g) for g, t in self.staged.items()), *self.scratches.items()]:
            text = text.replace(str(tmp), str(target))
        for target, (staging, _) in self.folders.items():
            text = text.replace(str(staging), str(target))
        return text


def _rel(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)


def _apply(root: Path, journal: dict) -> None:
    for tmp, target in journal["renames"]:
        if (root / tmp).exists():  # else renamed before the process was killed
            (root / target).parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / tmp, root / target)
    for target in journal["removals"]:
        (root / target).unlink(missing_ok=True)
    for staging in journal.get("folders", []):
        shutil.rmtree(root / staging, ignore_errors=True)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Ctrl-C during the block is raised as KeyboardInterrupt right after it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt




def recover(root: str | os.PathLike) -> list[Path]:
    """Finish the commits that a killed process left half done under `root`; returns their journals.

    A journal whose writer is still running is left alone (it is finishing its own commit)."""
    root = Path(root)
    finished = []
    for journal in sorted(root.glob(f"{JOURNAL_PREFIX}*{JOURNAL_SUFFIX}")) if root.is_dir() else []:
        try:
            record = json.loads(journal.read_text())
            if record.get("pid") != os.getpid() and fileio.process_alive(int(record.get("pid", 0))):
                continue
            _apply(root, record)
            journal.unlink()
            finished.append(journal)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # read-only or damaged: readers still check hashes against what was recorded
    return finished
