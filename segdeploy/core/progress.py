"""Rich progress bars and the shared console, in one place."""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

# Results (tables, paths) go to stdout; progress bars and errors to stderr. Off a terminal rich
# would wrap tables at 80 columns, which truncates numbers: give it room instead.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
T = TypeVar("T")


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (shown on a terminal only)."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total if total is not None else len(items), info="")
        for item in items:
            yield item
            progress.advance(task)
