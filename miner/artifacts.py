"""Artifact paths and atomic writes.

Artifacts are keyed by what determines their content, never by job, so another job reuses them:

* ``emb/<corpus>/<model>/<start>-<end>.npy``        -- float32 embeddings of sentences [start, end)
* ``index/<corpus>/<model>/flat.faiss``             -- the FAISS index of a whole side
* ``knn/<query>__<target>/<model>/k<k>/<start>-<end>.npz`` -- kNN of a query shard in the other side
* ``jobs/<job>/<direction>-<start>-<end>.npz``      -- best margin candidates (depend on job options)

Every file is written under a temporary name in the same folder and renamed into place, so a
reader sees either nothing or the complete file, and a re-run that finds the file skips the work.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


def _span(start: int, end: int) -> str:
    return f"{start:010d}-{end:010d}"


class Artifacts:
    """Paths under one artifact root (``MINER_ARTIFACTS``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def embeddings(self, corpus_key: str, model_key: str, start: int, end: int, dtype: str = "float32") -> Path:
        suffix = "" if dtype == "float32" else f".{dtype}"
        return self.root / "emb" / corpus_key[:20] / model_key / f"{_span(start, end)}{suffix}.npy"

    def index(self, corpus_key: str, model_key: str, kind: str = "flat") -> Path:
        return self.root / "index" / corpus_key[:20] / model_key / f"{kind}.faiss"

    def knn(self, query_key: str, target_key: str, model_key: str, k: int, start: int, end: int,
            variant: str = "") -> Path:
        """``variant`` names what else the neighbours depend on (index, nprobe, storage); "" = exact float32."""
        pair = f"{query_key[:20]}__{target_key[:20]}"
        folder = f"k{k}" + (f"-{variant}" if variant else "")
        return self.root / "knn" / pair / model_key / folder / f"{_span(start, end)}.npz"

    def scores(self, job_id: int, direction: str, start: int, end: int) -> Path:
        return self.root / "jobs" / f"{job_id:08d}" / f"{direction}-{_span(start, end)}.npz"


#: The umask this process had before :func:`make_private` (None when it was never called).
_user_umask: int | None = None


def make_private() -> None:
    """Files and folders this process creates from now on (database, logs, artifacts, broker
    messages) are for its user only: 0600 / 0700. The database holds whole corpora. Outputs the user
    names (export, report) get the user's own mode back through :func:`as_user_file`."""
    global _user_umask
    previous = os.umask(0o077)
    if _user_umask is None:
        _user_umask = previous


def as_user_file(path: Path) -> None:
    """Give a file the user asked for (``-o``) the mode the user's umask gives, not miner's own 0600."""
    if _user_umask is not None:
        os.chmod(path, 0o666 & ~_user_umask)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}
