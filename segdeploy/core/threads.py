"""CPU threads for torch, set for the length of a command and restored after it.

`torch.set_num_threads` changes the whole process: library code (runners, the bench sweep, the training
loop) never calls it; each command's entry function runs inside `torch_threads(n)`, so a notebook, a study
or a test suite that calls several commands in one process gets its own setting back after each.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op thread count set to `threads` inside the block (None or 0: left as it is), restored
    after it; yields the count in effect."""
    import torch

    from segdeploy.core.env import cap_threads

    threads = cap_threads(threads)
    before = torch.get_num_threads()
    if threads and threads != before:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
