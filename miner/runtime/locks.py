"""Advisory locks between processes on one machine (``flock`` on a lock file), the private folders
they live in, and children that do not outlive their parent."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
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


def private_folder(path: Path, error: type[Exception], hint: str) -> None:
    """Create ``path`` (mode 0700) or check the one that is there: it must belong to this user
    (another local user could have created it first, to read or replace what goes in it; then
    ``error`` is raised, its message ending with ``hint``), and it is made 0700 if it is more open."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise error(f"{path} belongs to another user; {hint}")
    if info.st_mode & 0o077:
        path.chmod(0o700)


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: the kernel sends the child ``signum`` when the
    process that started it dies, however it dies (``kill -9`` included). Linux only
    (``prctl(PR_SET_PDEATHSIG)``); elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signum))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def watch_parent(parent_pid: int, grace: float, poll: float = 0.2) -> None:
    """Start a daemon thread that SIGKILLs this process ``grace`` seconds after ``parent_pid`` stops
    being its parent -- its whole process group when it leads one (a worker that `miner mine` started
    in its own session: its pool children go with it), else itself alone. ``PR_SET_PDEATHSIG``
    alone is not enough: it is lost when the parent dies before the child sets it, and the cold
    shutdown it starts can wait on a pool child busy inside a long C call for many seconds."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll)
        time.sleep(grace)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="miner-parent-watch", daemon=True).start()
