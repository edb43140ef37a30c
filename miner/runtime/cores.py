"""Sharing one machine's cores between the worker processes on it, with no arithmetic by the user.

Every worker started without ``--threads`` / ``MINER_THREADS`` registers in a folder on the host
(``MINER_CORES_DIR``, default ``/tmp/bitext-miner-<uid>/cores``; docker-compose mounts one volume
there in every worker container): one file named after the host and process, holding the number of
task processes (slots) the worker runs, and an exclusive ``flock`` that the kernel drops however the
worker ends. Before each task, a pool process counts the slots of the live registrations and takes
``cores // slots`` threads (at least 1) for BLAS, torch, FAISS and the model. So one worker alone
uses every core, and two workers on one host split them instead of running twice as many threads
as there are cores (which made a two-thread encode up to 5x slower).

No Celery here: :mod:`miner.workers.hooks` registers the worker and sizes each task's threads.
"""

from __future__ import annotations

import fcntl
import os
import socket
import uuid
from pathlib import Path

_registration: int | None = None  # the fd holding this worker's lock (inherited by its pool processes)
_registration_path: Path | None = None


def share_dir() -> Path:
    """``MINER_CORES_DIR``, else ``/tmp/bitext-miner-<uid>/cores`` (:attr:`miner.runtime.config.Config.cores_dir`)."""
    from miner.runtime.config import Config

    return Config.from_env().cores_dir


def register(slots: int, folder: Path | None = None) -> Path:
    """Register this process as a worker with ``slots`` task processes until it exits; returns the
    registration file. The lock is taken before the file gets its name, so no other process ever
    sees it unlocked (and takes it for a dead worker's)."""
    global _registration, _registration_path
    from miner.runtime.errors import MinerError
    from miner.runtime.locks import private_folder

    folder = folder or share_dir()
    private_folder(folder, MinerError, "set MINER_CORES_DIR to a folder of your own (or give the worker --threads)")
    name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.slots"
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, str(int(slots)).encode())
    os.replace(tmp, folder / name)
    if _registration is not None:
        os.close(_registration)
    _registration, _registration_path = fd, folder / name
    return folder / name


def unregister() -> None:
    """Remove this worker's registration (a clean shutdown); a killed worker's file is removed by
    the next :func:`live_slots` instead, its lock being free."""
    global _registration, _registration_path
    if _registration_path is not None:
        _registration_path.unlink(missing_ok=True)
    if _registration is not None:
        os.close(_registration)
    _registration = _registration_path = None


def live_slots(folder: Path | None = None) -> int:
    """Task processes of the live workers registered in ``folder``; files of workers that are gone
    (their lock is free) are removed."""
    folder = folder or share_dir()
    total = 0
    try:
        entries = list(folder.glob("*.slots"))
    except OSError:
        return 0
    for path in entries:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # removed meanwhile
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a live worker
                total += max(0, int(os.read(fd, 32).decode() or 0))
                continue
            path.unlink(missing_ok=True)  # nobody holds it: its worker is gone
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
    return total


def threads_per_slot(cores: int, folder: Path | None = None) -> int:
    """The threads one task process takes now: the cores divided among the live slots, at least 1."""
    return max(1, int(cores) // max(1, live_slots(folder)))
