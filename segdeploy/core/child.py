"""Child processes that die with their parent, whatever stops it.

Parent side, `child_process`: the child runs in its own process group (session), which is terminated
(SIGTERM, then SIGKILL after a grace period) when the block ends: normally, on an exception, on Ctrl-C,
and on SIGTERM or SIGHUP to the parent (raised as KeyboardInterrupt in the main thread while the block
runs, then the previous handlers are restored). Its temporary folder, named after the parent's pid, is
removed; folders of parents that no longer run are removed by the next `child_process`.

Child side, `die_with_parent`: on Linux PR_SET_PDEATHSIG asks the kernel to send SIGTERM when the parent
dies (also by SIGKILL, which the parent cannot handle); the child then removes its temporary folder and
exits. A watchdog thread does the same when the parent is gone (other platforms, and a main thread busy
in native code).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from segdeploy.core.fileio import process_alive

ENV_PARENT = "SEGDEPLOY_PARENT_PID"
PR_SET_PDEATHSIG = 1
GRACE_S = 2.0


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt while the block runs (main thread only), so that the
    `finally` blocks that stop children and remove temporary folders run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    names = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    previous = {name: signal.signal(getattr(signal, name), interrupt) for name in names}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def temp_folder(prefix: str) -> Path:
    """A new temporary folder `PREFIX<pid>-XXXX`; folders with this prefix of processes that died are removed."""
    root = Path(tempfile.gettempdir())
    pattern = re.compile(re.escape(prefix) + r"(\d+)-")
    for stale in root.glob(f"{prefix}*"):
        match = pattern.match(stale.name)
        if match and not process_alive(int(match.group(1))):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))


def stop_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Terminate the child's process group: SIGTERM, then SIGKILL when it is still there after `grace_s`."""
    def kill(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    if proc.poll() is None:
        kill(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    kill(signal.SIGKILL)  # the child, if it ignored SIGTERM, and anything it started
    proc.wait()


@contextlib.contextmanager
def child_process(args: list[str], env: dict[str, str] | None = None, **popen: object) -> Iterator[subprocess.Popen]:
    """subprocess.Popen(args) in a process group of its own, stopped with everything it started when the
    block ends, however it ends."""
    env = dict(os.environ if env is None else env)
    env[ENV_PARENT] = str(os.getpid())
    with _signals_as_interrupt():
        proc = subprocess.Popen(args, env=env, start_new_session=True, **popen)
        try:
            yield proc
        finally:
            stop_group(proc)


def die_with_parent(cleanup: Path | None = None) -> None:
    """In a child started by `child_process`: exit (removing `cleanup`) when the parent dies."""
    parent = int(os.environ.get(ENV_PARENT) or 0)
    if not parent:
        return

    def leave(*_) -> None:
        if cleanup is not None and os.getppid() != parent:  # a live parent reads the folder, then removes it
            shutil.rmtree(cleanup, ignore_errors=True)
        os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, leave)
    # a cell that finishes after its parent died: nobody reads the folder, so it goes at exit
    atexit.register(lambda: os.getppid() != parent and cleanup is not None and shutil.rmtree(cleanup, ignore_errors=True))
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        leave()

    if os.getppid() != parent:  # the parent died before the signal was asked for
        leave()
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
