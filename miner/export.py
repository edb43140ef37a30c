"""Export a job's candidates as TSV: ``score<TAB>source<TAB>target``, best first, UTF-8."""

from __future__ import annotations

import gzip
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from sqlalchemy import select
from sqlalchemy.orm import aliased

from miner.config import Config
from miner.artifacts import atomic_path
from miner.db import Candidate, Job, JobState, Sentence, session_scope
from miner.errors import JobNotFound, UsageError

HEADER = "score\tsource\ttarget\n"


def iter_pairs(cfg: Config, job_id: int, min_score: float | None) -> Iterator[tuple[float, str, str]]:
    """(score, source, target) of a job, best first (ties by source then target id)."""
    src, tgt = aliased(Sentence), aliased(Sentence)
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}; `miner jobs` lists the jobs")
        if job.state != JobState.DONE.value:
            raise UsageError(f"job {job_id} is {job.state}, not done; nothing to export yet (`miner status {job_id}`)")
        query = (
            select(Candidate.score, src.text, tgt.text)
            .join(src, (src.corpus_id == job.src_corpus_id) & (src.idx == Candidate.src_idx))
            .join(tgt, (tgt.corpus_id == job.tgt_corpus_id) & (tgt.idx == Candidate.tgt_idx))
            .where(Candidate.job_id == job_id)
            .order_by(Candidate.score.desc(), Candidate.src_idx, Candidate.tgt_idx)
        )
        if min_score is not None:
            query = query.where(Candidate.score >= min_score)
        for row in s.execute(query.execution_options(yield_per=10000)):
            yield float(row[0]), row[1], row[2]


@contextmanager
def _open_out(out: str) -> Iterator[IO[str]]:
    if out == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(out)
    if path.parent and not path.parent.exists():
        raise UsageError(f"cannot write {out}: folder {path.parent} does not exist")
    with atomic_path(path) as tmp:
        if path.suffix == ".gz":
            with gzip.open(tmp, "wt", encoding="utf-8", newline="\n") as fh:
                yield fh
        else:
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                yield fh


def export_tsv(cfg: Config, job_id: int, out: str, *, min_score: float | None = None, header: bool = False) -> int:
    """Write the job's pairs with ``score >= min_score`` (default: the job's threshold) to ``out``.

    ``out`` ending in ``.gz`` is gzip-compressed; ``-`` writes standard output. The file appears
    only when complete. Returns the number of pairs written.
    """
    if min_score is None:
        with session_scope(cfg.db_url) as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}; `miner jobs` lists the jobs")
            min_score = job.options.get("threshold")
    pairs = iter_pairs(cfg, job_id, min_score)
    first = next(pairs, None)  # raises before an output file is created
    n = 0
    try:
        with _open_out(out) as fh:
            if header:
                fh.write(HEADER)
            if first is not None:
                for score, source, target in _chain(first, pairs):
                    fh.write(f"{score:.6f}\t{source}\t{target}\n")
                    n += 1
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    return n


def _chain(first, rest):
    yield first
    yield from rest
