"""Advisory locks between processes on one machine: ``flock`` on a lock file."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: Path | str, how: int = fcntl.LOCK_EX) -> Iterator[int]:
    """Hold ``flock(how)`` on ``path`` (created 0600 if missing) for the block; yields the fd.
    With ``LOCK_NB`` in ``how`` a lock held elsewhere raises BlockingIOError."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how)
        yield fd
    finally:
        os.close(fd)
