"""Export a job's pairs, best first, UTF-8.

Formats (``--format``; by default ``.jsonl``/``.jsonl.gz`` names give JSONL, anything else TSV):

* ``tsv`` -- ``score<TAB>source<TAB>target`` with the score as ``%.6f``; ``--header`` adds
  ``score<TAB>source<TAB>target``; a name ending in ``.gz`` is gzip-compressed; ``-`` is stdout.
  ``--with-probability`` adds a 4th column ``probability`` (``%.6f``; empty when the job has none).
* ``jsonl`` -- one object per line: ``{"score", "src", "tgt", "src_line", "tgt_line"}``, the score
  at full precision, the line numbers 1-based in the original input files (as ``miner eval`` reads
  BUCC ids); ``.gz`` compresses. ``--with-probability`` adds ``"probability"`` (null when none).
* ``moses`` -- two line-aligned plain-text files ``OUT.SRC_LANG`` and ``OUT.TGT_LANG`` with the job's
  (normalised, ISO 639-1 where one exists) language codes as suffixes, e.g. ``-o corpus`` gives
  ``corpus.de`` and ``corpus.en``; ``-o corpus.gz`` gives ``corpus.de.gz`` and ``corpus.en.gz``.
  When both languages are the same, the suffixes are ``src`` and ``tgt``.

The score floor defaults to the job's threshold (:func:`miner.pipeline.jobs.effective_threshold`: the cut the
job chose, automatic or not); ``--min-score`` replaces it. Probabilities are estimated by
``--threshold auto`` jobs only (``candidates.probability``); ``--min-probability`` needs them.

Files appear only when complete (written to a temporary name, then renamed). Filters: see
:mod:`miner.io.filters`.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from miner.io.artifacts import as_user_file, atomic_path
from miner.io.storage import is_url
from miner.runtime.config import Config
from miner.runtime.db import Candidate, Job, JobState, Sentence, SentenceDuplicate, session_scope
from miner.runtime.errors import JobNotFound, JobStateError, MinerError, OutputClosed, UsageError
from miner.io.filters import FilterChain, FilterOptions
from miner.io.records import display_id

FORMATS = ("tsv", "jsonl", "moses")
ID_SEPARATOR = ","  # between the ids of a sentence that occurs on several lines (--with-ids)


def header_line(with_probability: bool = False, with_ids: bool = False) -> str:
    """The TSV header: score, source, target[, probability][, src_id, tgt_id]."""
    names = ["score", "source", "target"] + ["probability"] * with_probability + ["src_id", "tgt_id"] * with_ids
    return "\t".join(names) + "\n"


def load_done_job(cfg: Config, job_id: int, action: str = "export") -> Job:
    """The job row, or a clear error when there is no such job or it is not done."""
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}; `miner jobs` lists the jobs")
        if job.state != JobState.DONE.value:
            raise JobStateError(f"job {job_id} is {job.state}, not done; nothing to {action} yet (`miner status {job_id}`)")
        return job


def iter_rows(cfg: Config, job_id: int, min_score: float | None, min_probability: float | None = None,
              provenance: bool = False) -> Iterator[tuple]:
    """(score, source, target, source line, target line, probability) of a job's pairs, best first;
    line numbers are the 0-based physical lines of the input files (``Sentence.line_no``), the
    probability is the estimated one (None when the job has none). Optionally only pairs with
    ``probability >= min_probability``; ``provenance`` adds the sentence indices, and each side's
    input id (None: the line number is the id) and metadata (None: none) of its first occurrence."""
    job = load_done_job(cfg, job_id)
    src, tgt = aliased(Sentence), aliased(Sentence)
    extra = (Candidate.src_idx, Candidate.tgt_idx, src.ext_id, tgt.ext_id, src.meta, tgt.meta) if provenance else ()
    with session_scope(cfg.db_url) as s:
        query = (
            select(Candidate.score, src.text, tgt.text, src.line_no, tgt.line_no, Candidate.probability, *extra)
            .join(src, (src.corpus_id == job.src_corpus_id) & (src.idx == Candidate.src_idx))
            .join(tgt, (tgt.corpus_id == job.tgt_corpus_id) & (tgt.idx == Candidate.tgt_idx))
            .where(*_floors(job_id, min_score, min_probability))
            .order_by(Candidate.score.desc(), Candidate.src_idx, Candidate.tgt_idx)
        )
        for row in s.execute(query.execution_options(yield_per=10000)):
            yield (float(row[0]), row[1], row[2], int(row[3]), int(row[4]),
                   None if row[5] is None else float(row[5]), *row[6:])


def duplicate_occurrences(cfg: Config, corpus_id: int) -> dict[int, list[tuple[int, str | None, dict | None]]]:
    """{sentence idx: [(line_no, input id, metadata), ...]} of the later lines of a corpus that repeat
    an earlier sentence (:class:`miner.runtime.db.SentenceDuplicate`), in file order."""
    out: dict[int, list] = {}
    with session_scope(cfg.db_url) as s:
        query = (select(SentenceDuplicate.idx, SentenceDuplicate.line_no, SentenceDuplicate.ext_id,
                        SentenceDuplicate.meta)
                 .where(SentenceDuplicate.corpus_id == corpus_id).order_by(SentenceDuplicate.line_no))
        for idx, line_no, ext_id, meta in s.execute(query.execution_options(yield_per=20000)):
            out.setdefault(int(idx), []).append((int(line_no), ext_id, meta))
    return out


class Provenance:
    """The ids of a job's sentences for the export: the first occurrence's (on the sentence row) and
    those of later lines with the same text (:func:`duplicate_occurrences`)."""

    def __init__(self, cfg: Config, job: Job) -> None:
        self.more = {"src": duplicate_occurrences(cfg, job.src_corpus_id),
                     "tgt": duplicate_occurrences(cfg, job.tgt_corpus_id)}

    def ids(self, side: str, idx: int, line_no: int, ext_id: str | None) -> list[str]:
        return [display_id(ext_id, line_no)] + [display_id(e, ln) for ln, e, _ in self.more[side].get(idx, ())]


def _floors(job_id: int, min_score: float | None, min_probability: float | None = None) -> list:
    conditions = [Candidate.job_id == job_id]
    if min_score is not None:
        conditions.append(Candidate.score >= min_score)
    if min_probability is not None:
        conditions.append(Candidate.probability >= min_probability)
    return conditions


def count_candidates(cfg: Config, job_id: int, min_score: float | None = None,
                     min_probability: float | None = None) -> int:
    with session_scope(cfg.db_url) as s:
        query = select(func.count()).select_from(Candidate).where(*_floors(job_id, min_score, min_probability))
        return int(s.scalar(query) or 0)


def has_probabilities(cfg: Config, job_id: int) -> bool:
    """True when the job stored an estimated probability for its candidates (``--threshold auto``)."""
    with session_scope(cfg.db_url) as s:
        found = s.scalar(select(Candidate.probability)
                         .where(Candidate.job_id == job_id, Candidate.probability.is_not(None)).limit(1))
    return found is not None


def no_probabilities_reason(job: Job) -> str:
    """Why a job has no probabilities, for the ``--min-probability`` error."""
    from miner.pipeline.jobs import threshold_status

    threshold = threshold_status(job)
    method = threshold.get("method")
    if method in ("fixed", "calibrated"):
        return f"its threshold is {method} ({threshold.get('value')}); only --threshold auto jobs estimate them"
    if method == "fallback":
        return f"its automatic threshold fell back to the fixed default: {threshold.get('reason')}"
    if method == "auto":
        return "it was mined before probabilities were stored; `miner retry --force` computes them"
    return "only --threshold auto jobs estimate them"


@contextmanager
def _open_out(out: str) -> Iterator[IO[str]]:
    if out == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    if is_url(out):
        with _url_out(out) as fh:
            yield fh
        return
    path = Path(out)
    if path.parent and not path.parent.exists():
        raise UsageError(f"cannot write {out}: folder {path.parent} does not exist")
    if _existing_non_file(path):
        # A device, a named pipe or a link to one (/dev/null, /dev/stdout, a FIFO a reader waits
        # on): written to in place. The atomic rename of a regular file would have replaced it with
        # a file (it replaced /dev/full).
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
        return
    with atomic_path(path) as tmp:
        if path.suffix == ".gz":
            with gzip.open(tmp, "wt", encoding="utf-8", newline="\n") as fh:
                yield fh
        else:
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                yield fh
        as_user_file(tmp)


def _existing_non_file(path: Path) -> bool:
    """Whether ``path`` exists and is (or links to) something other than a regular file."""
    import stat

    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@contextmanager
def _url_out(url: str) -> Iterator[IO[str]]:
    """``-o s3://bucket/pairs.tsv[.gz]``: written to a local temporary file, then sent in one upload
    (the object appears complete or not at all)."""
    import tempfile

    from miner.io.storage import filesystem, storage_error

    with tempfile.TemporaryDirectory(prefix="miner-export-") as folder:
        tmp = Path(folder) / Path(url.rsplit("/", 1)[-1] or "export").name
        opener = gzip.open if url.endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8", newline="\n") as fh:
            yield fh
        fs, path = filesystem(url)
        try:
            fs.put_file(str(tmp), path)
        except Exception as exc:
            raise storage_error(url, exc, "upload") from None


def _check_folder(out: str) -> None:
    """The folder of a local output must exist; the bucket of a URL must answer."""
    if out == "-":
        return
    if is_url(out):
        from miner.io.storage import check_store

        check_store(out)
    elif not Path(out).parent.exists():
        raise UsageError(f"cannot write {out}: folder {Path(out).parent} does not exist")


def infer_format(out: str) -> str:
    name = out.lower()
    return "jsonl" if name.endswith((".jsonl", ".jsonl.gz")) else "tsv"


def moses_paths(out: str, src_lang: str, tgt_lang: str) -> tuple[str, str]:
    """``OUT.SRC_LANG`` and ``OUT.TGT_LANG`` (``.gz`` moves to the end; ``src``/``tgt`` when the
    languages are the same)."""
    if out == "-":
        raise UsageError("--format moses writes two files; give -o a file name prefix, not -")
    base, gz = (out[:-3], ".gz") if out.endswith(".gz") else (out, "")
    a, b = (src_lang, tgt_lang) if src_lang != tgt_lang else ("src", "tgt")
    return f"{base}.{a}{gz}", f"{base}.{b}{gz}"


def check_output(out: str, fmt: str | None = None, header: bool = False, with_probability: bool = False,
                 with_ids: bool = False) -> str:
    """The output format (``fmt``, else from the name: :func:`infer_format`), or a UsageError when the
    options do not fit it or the output's folder does not exist. ``miner mine`` calls it before mining."""
    fmt = fmt or infer_format(out)
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if header and fmt != "tsv":
        raise UsageError("--header applies to TSV output only")
    if with_probability and fmt == "moses":
        raise UsageError("--with-probability applies to TSV and JSONL output, not moses")
    if with_ids and fmt == "moses":
        raise UsageError("--with-ids applies to TSV output (JSONL always has ids), not moses")
    if fmt == "moses" and out == "-":
        moses_paths(out, "src", "tgt")  # raises: moses writes two files
    _check_folder(out)
    return fmt


@dataclass
class ExportResult:
    written: int
    paths: list[str]
    candidates: int = 0
    summary: str | None = None  # the filter summary line, when filters beyond min-score were on
    counts: dict = field(default_factory=dict)


@dataclass
class ExportPlan:
    """An export checked and started (:func:`prepare_export`): the job, its filters, and the first
    record read, so that every error is raised before anything is written."""

    job_id: int
    fmt: str
    paths: list[str]
    header: bool
    with_probability: bool
    with_ids: bool
    filters: FilterOptions
    chain: FilterChain
    total: int | None
    above: int | None
    provenance: Provenance | None
    records: Iterator[tuple]
    written: int = 0

    def lines(self, on_row: Callable[[], None] | None = None) -> Iterator[tuple[int, str]]:
        """``(output index, text)`` of every line to write, in order: the header, then each kept pair
        (output 1 is the target file of ``moses``). ``on_row()`` is called for each pair read."""
        if self.header:
            yield 0, header_line(self.with_probability, self.with_ids)
        for row in self.records:
            score, source, target, src_line, tgt_line, probability = row[:6]
            if on_row is not None:
                on_row()
            if not self.chain.keep(source, target, score):
                continue
            if self.provenance is not None:
                src_idx, tgt_idx, src_ext, tgt_ext, src_meta, tgt_meta = row[6:]
                src_ids = self.provenance.ids("src", src_idx, src_line, src_ext)
                tgt_ids = self.provenance.ids("tgt", tgt_idx, tgt_line, tgt_ext)
            if self.fmt == "tsv":
                line = f"{score:.6f}\t{source}\t{target}"
                if self.with_probability:
                    line += "\t" + ("" if probability is None else f"{probability:.6f}")
                if self.with_ids:
                    line += f"\t{ID_SEPARATOR.join(src_ids)}\t{ID_SEPARATOR.join(tgt_ids)}"
                yield 0, line + "\n"
            elif self.fmt == "jsonl":
                record = {"score": score, "src": source, "tgt": target,
                          "src_line": src_line + 1, "tgt_line": tgt_line + 1,
                          "src_id": src_ids[0], "tgt_id": tgt_ids[0], "src_ids": src_ids, "tgt_ids": tgt_ids,
                          "src_meta": src_meta or {}, "tgt_meta": tgt_meta or {}}
                if self.with_probability:
                    record["probability"] = probability
                yield 0, json.dumps(record, ensure_ascii=False) + "\n"
            else:
                yield 0, source + "\n"
                yield 1, target + "\n"
            self.written += 1

    def result(self) -> ExportResult:
        summary = self.chain.summary(self.total, self.written) if self.filters.any_beyond_min_score else None
        return ExportResult(written=self.written, paths=self.paths, candidates=self.total or 0, summary=summary,
                            counts=dict(self.chain.counts))


def prepare_export(
    cfg: Config,
    job_id: int,
    out: str,
    *,
    fmt: str | None = None,
    header: bool = False,
    filters: FilterOptions | None = None,
    warn: Callable[[str], None] | None = None,
    count: bool = False,
    with_probability: bool = False,
    with_ids: bool = False,
) -> ExportPlan:
    """Check the options and the job and read the first pair: every error of an export, before
    anything is written (``count``: also count the candidates, for a progress bar)."""
    from miner.pipeline.jobs import effective_threshold

    fmt = check_output(out, fmt, header, with_probability, with_ids)
    job = load_done_job(cfg, job_id)
    filters = filters or FilterOptions()
    if filters.min_probability is not None and not has_probabilities(cfg, job_id):
        raise UsageError(f"job {job_id} has no estimated probabilities, so --min-probability cannot filter: "
                         f"{no_probabilities_reason(job)}; use --min-score instead")
    threshold = effective_threshold(job)
    if filters.min_score is None and threshold is not None:
        filters = dataclasses.replace(filters, min_score=threshold)
    chain = FilterChain(filters, job.src_lang, job.tgt_lang, warn=warn)
    paths = list(moses_paths(out, job.src_lang, job.tgt_lang)) if fmt == "moses" else [out]
    for path in paths:
        if not is_url(path):
            _check_folder(path)
    total = above = None
    if filters.any_beyond_min_score or count:
        total = count_candidates(cfg, job_id)
        above = count_candidates(cfg, job_id, filters.min_score)
        if "min-score" in chain.counts:
            chain.counts["min-score"] = total - above
        if filters.min_probability is not None:
            likely = count_candidates(cfg, job_id, filters.min_score, filters.min_probability)
            chain.counts["min-probability"] = above - likely
            above = likely
    provenance = Provenance(cfg, job) if (with_ids or fmt == "jsonl") else None
    records = iter_rows(cfg, job_id, filters.min_score, filters.min_probability, provenance=provenance is not None)
    first = next(records, None)  # raises before an output file is created
    return ExportPlan(job_id=job_id, fmt=fmt, paths=paths, header=header, with_probability=with_probability,
                      with_ids=with_ids, filters=filters, chain=chain, total=total, above=above,
                      provenance=provenance, records=iter(()) if first is None else _chain(first, records))


def export_pairs(
    cfg: Config,
    job_id: int,
    out: str,
    *,
    fmt: str | None = None,
    header: bool = False,
    filters: FilterOptions | None = None,
    warn: Callable[[str], None] | None = None,
    progress: bool = False,
    with_probability: bool = False,
    with_ids: bool = False,
) -> ExportResult:
    """Write the job's pairs that pass ``filters`` (the score floor defaults to the job's threshold,
    :func:`miner.pipeline.jobs.effective_threshold`); ``with_probability`` adds the estimated probability,
    ``with_ids`` the sentences' input ids to TSV (JSONL always has ids and metadata)."""
    plan = prepare_export(cfg, job_id, out, fmt=fmt, header=header, filters=filters, warn=warn, count=progress,
                          with_probability=with_probability, with_ids=with_ids)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=plan.above, desc=f"export job {job_id}", unit="pair", unit_scale=True, file=sys.stderr,
                   disable=None, mininterval=0.5)
    try:
        with ExitStack() as stack:
            handles = [stack.enter_context(_open_out(path)) for path in plan.paths]
            for index, text in plan.lines(on_row=None if bar is None else lambda: bar.update(1)):
                handles[index].write(text)
    except BrokenPipeError:
        if "-" not in plan.paths:
            raise
        raise OutputClosed(f"standard output was closed after {plan.written} pairs") from None
    except OSError as exc:  # a disk full or an I/O error while writing: a runtime error (exit 1), not bad options
        kept = "" if any(_existing_non_file(Path(p)) for p in plan.paths if p != "-") else \
            " (an existing file there is left as it was)"
        raise MinerError(f"cannot write {out}: {exc.strerror or exc}{kept}") from None
    finally:
        if bar is not None:
            bar.close()
    return plan.result()


def stream_export(cfg: Config, job_id: int, *, fmt: str = "tsv", header: bool = False,
                  filters: FilterOptions | None = None, with_probability: bool = False, with_ids: bool = False,
                  chunk_chars: int = 1 << 16) -> tuple[ExportPlan, Iterator[bytes]]:
    """The bytes ``export_pairs(..., out="-")`` writes for one TSV or JSONL output, in chunks (the
    HTTP export of :mod:`miner.faces.api`). Errors are raised here, before the first chunk."""
    plan = prepare_export(cfg, job_id, "-", fmt=fmt, header=header, filters=filters,
                          with_probability=with_probability, with_ids=with_ids)

    def chunks() -> Iterator[bytes]:
        parts, size = [], 0
        for _, text in plan.lines():
            parts.append(text)
            size += len(text)
            if size >= chunk_chars:
                yield "".join(parts).encode("utf-8")
                parts, size = [], 0
        if parts:
            yield "".join(parts).encode("utf-8")

    return plan, chunks()


def _chain(first, rest):
    yield first
    yield from rest
