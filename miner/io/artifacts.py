"""Artifact paths and atomic writes.

Artifacts are keyed by what determines their content, never by job, so another job reuses them:

* ``emb/<corpus>/<model>/<start>-<end>.npy``        -- float32 embeddings of sentences [start, end)
* ``index/<corpus>/<model>/flat.faiss``             -- the FAISS index of a whole side
* ``knn/<query>__<target>/<model>/k<k>/<start>-<end>.npz`` -- kNN of a query shard in the other side
* ``jobs/<job>/<direction>-<start>-<end>.npz``      -- best margin candidates (depend on job options)

Every file is written under a temporary name in the same folder and renamed into place, so a
reader sees either nothing or the complete file, and a re-run that finds the file skips the work.

The root may also be an fsspec URL (``MINER_ARTIFACTS=s3://bucket/prefix``, :mod:`miner.io.storage`):
then a location is a URL string, a file is written locally and sent in one put (S3 shows an object
only once its upload is complete), and what a step reads is first copied to the bounded local
cache (:class:`miner.io.storage.Cache`) and memory-mapped from there. Steps use the same methods either
way: :meth:`Artifacts.exists`, :meth:`Artifacts.local`, :meth:`Artifacts.writing`, ...
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Union

from miner.io.storage import Cache, filesystem, is_url, storage_error

if TYPE_CHECKING:  # numpy is imported where arrays are read or written: `miner status` needs none
    import numpy as np

#: Where an artifact lives: a local Path, or a URL string under a remote root.
Location = Union[Path, str]


def _span(start: int, end: int) -> str:
    return f"{start:010d}-{end:010d}"


class Artifacts:
    """Locations under one artifact root (``MINER_ARTIFACTS``: a folder or an fsspec URL)."""

    def __init__(self, root: Path | str, cache: Cache | None = None) -> None:
        self.remote = is_url(root)
        self.root: Location = str(root).rstrip("/") if self.remote else Path(root)
        self.cache = cache
        self._fs = None

    def _at(self, *parts: str) -> Location:
        if self.remote:
            return "/".join([self.root, *parts])
        return self.root.joinpath(*parts)

    def embeddings(self, corpus_key: str, model_key: str, start: int, end: int, dtype: str = "float32") -> Location:
        suffix = "" if dtype == "float32" else f".{dtype}"
        return self._at("emb", corpus_key[:20], model_key, f"{_span(start, end)}{suffix}.npy")

    def index(self, corpus_key: str, model_key: str, kind: str = "flat") -> Location:
        return self._at("index", corpus_key[:20], model_key, f"{kind}.faiss")

    def manifest(self, corpus_key: str, model_key: str, kind: str, dtype: str) -> Location:
        """The manifest of a side's index (``<kind>.<dtype>.json`` beside the index)."""
        return self._at("index", corpus_key[:20], model_key, f"{kind}.{dtype}.json")

    def knn(self, query_key: str, target_key: str, model_key: str, k: int, start: int, end: int,
            variant: str = "") -> Location:
        """``variant`` names what else the neighbours depend on (index, nprobe, storage); "" = exact float32."""
        pair = f"{query_key[:20]}__{target_key[:20]}"
        folder = f"k{k}" + (f"-{variant}" if variant else "")
        return self._at("knn", pair, model_key, folder, f"{_span(start, end)}.npz")

    def beside(self, location: Location, name: str) -> Location:
        """The location named ``name`` in the folder of ``location``."""
        if self.remote:
            return location.rsplit("/", 1)[0] + "/" + name
        return location.with_name(name)

    def scores(self, job_key: str, direction: str, start: int, end: int) -> Location:
        """A job's score shard, under ``job_key`` (:func:`job_key`), never the job's id: ids start at
        1 again after a database reset, and two databases may share one artifacts store."""
        return self._at("jobs", job_key, f"{direction}-{_span(start, end)}.npz")

    def relative(self, location: Location) -> str:
        """``location`` relative to the root (what a manifest stores)."""
        if self.remote:
            return location[len(self.root) + 1:]
        return str(Path(location).relative_to(self.root))

    def at(self, relative: str) -> Location:
        return self._at(*relative.replace("\\", "/").split("/"))

    # ------------------------------------------------------------------ storage

    def _remote(self, url: str) -> tuple:
        if self._fs is None:
            self._fs = filesystem(self.root)[0]
        return self._fs, self._fs._strip_protocol(url)

    def exists(self, location: Location) -> bool:
        if not self.remote:
            return Path(location).exists()
        fs, path = self._remote(location)
        try:
            return bool(fs.exists(path))
        except Exception as exc:
            raise storage_error(location, exc) from None

    def local(self, location: Location) -> Path:
        """A local file with the content of ``location``, to open or memory-map: the file itself
        under a local root, else its copy in the cache (downloaded when missing)."""
        if not self.remote:
            return Path(location)
        fs, path = self._remote(location)
        return self._cache().fetch(fs, path, location)

    def _cache(self) -> Cache:
        if self.cache is None:
            raise storage_error(self.root, RuntimeError("no local cache configured (MINER_CACHE)"))
        return self.cache

    @contextmanager
    def writing(self, location: Location) -> Iterator[Path]:
        """Yield a local temporary path; when the block succeeds it becomes ``location`` at once:
        a rename under a local root, one upload (then kept in the cache) under a remote one."""
        if not self.remote:
            with atomic_path(Path(location)) as tmp:
                yield tmp
            return
        cache = self._cache()
        tmp = cache.temporary(location)
        try:
            yield tmp
            fs, path = self._remote(location)
            try:
                fs.put_file(str(tmp), path)
            except Exception as exc:
                raise storage_error(location, exc, "upload") from None
            cache.adopt(tmp, location)
        finally:
            if tmp.exists():
                tmp.unlink()

    def save_npy(self, location: Location, array: np.ndarray) -> None:
        import numpy as np

        with self.writing(location) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array)

    def save_npz(self, location: Location, **arrays: np.ndarray) -> None:
        import numpy as np

        with self.writing(location) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    def opened(self, location: Location, read):
        """``read(local path)`` of ``location``; under a remote root, a copy that another process
        evicted from the cache between its fetch and ``read`` is fetched again."""
        for attempt in range(3):
            path = self.local(location)
            try:
                return read(path)
            except FileNotFoundError:
                if not self.remote or attempt == 2:
                    raise

    def load_npz(self, location: Location) -> dict[str, np.ndarray]:
        return self.opened(location, load_npz)

    def load_npy(self, location: Location, mmap: bool = True) -> np.ndarray:
        import numpy as np

        return self.opened(location, lambda path: np.load(path, mmap_mode="r" if mmap else None))

    def read_text(self, location: Location) -> str:
        return self.opened(location, lambda path: path.read_text())

    def write_text(self, location: Location, text: str) -> None:
        with self.writing(location) as tmp:
            tmp.write_text(text)


def artifacts_for(cfg) -> Artifacts:
    """The artifacts of a configuration (``MINER_ARTIFACTS``, with its cache ``MINER_CACHE``)."""
    return Artifacts(cfg.artifacts, Cache(cfg.cache, cfg.cache_limit))


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


def load_npz(path: Path) -> dict[str, np.ndarray]:
    import numpy as np

    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def job_key(job) -> str:
    """What names a job's own artifacts: its request key (a hash of its inputs' contents and every
    option that changes results: two jobs with one key compute the same scores), else (a job made
    without one) its id and creation time, which a reset database does not repeat."""
    if getattr(job, "request_key", None):
        return f"r-{job.request_key[:40]}"
    created = job.created_at.strftime("%Y%m%dT%H%M%S%f") if job.created_at else "unknown"
    return f"id-{job.id:08d}-{created}"
