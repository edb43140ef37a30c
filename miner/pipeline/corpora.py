"""The ingest step: read one side of a job into a corpus of sentences, or reuse an identical one.

A corpus is keyed by the file's content and the reader's settings (:func:`corpus_key`), so two jobs
on the same file share it. One task fills a corpus; others wait for it, and take over one whose
filler stopped beating (:func:`_claim_corpus`, compare-and-set on ``corpora.heartbeat_at``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

from sqlalchemy import delete, insert, select, update

from miner.runtime.config import Config
from miner.runtime.db import Corpus, CorpusState, Job, Sentence, SentenceDuplicate, db_now, server_now, session_scope
from miner.runtime.errors import InputFileError, JobCancelled
from miner.pipeline.orchestration import ensure_active, record_step
from miner.io.reader import ReadStats, batched, check_input_file, file_digest
from miner.io.records import RowParser, read_records
from miner.pipeline.spec import JobOptions, job_spec

READER_VERSION = 2  # 2: ids, metadata and duplicate occurrences are stored (miner.io.records)
INGEST_BATCH = 5000
STALE_INGEST_SECONDS = 120  # the longest a corpus whose filler stopped beating waits to be taken over


def stale_ingest_seconds(cfg: Config) -> float:
    """How long a corpus's heartbeat may stand still before another task takes the filling over.
    The filler beats once per batch of INGEST_BATCH lines (well under a second of reading and
    inserting), so twice a unit's lease is ample; a task killed mid-ingest (``kill -9`` of
    ``miner mine``) then costs the next run half a minute by default, not two."""
    return min(STALE_INGEST_SECONDS, 2 * cfg.lease_seconds)


def corpus_key(sha256: str, settings: dict) -> str:
    blob = json.dumps({"sha256": sha256, **settings}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def ingest(cfg: Config, job_id: int, side: str) -> int:
    """Read one side of a job into a corpus (or reuse an identical one); returns the corpus id."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    path = job.src_path if side == "src" else job.tgt_path
    check_input_file(path)
    settings = reader_settings(job_spec(job), path)
    sha = file_digest(path)
    key = corpus_key(sha, settings)
    corpus_id, reused = _claim_corpus(cfg, key, sha, path, settings)
    if not reused:
        _fill_corpus(cfg, corpus_id, path, settings)
    with session_scope(cfg.db_url) as s:
        corpus = s.get(Corpus, corpus_id)
        job = s.get(Job, job_id)
        if side == "src":
            job.src_corpus_id = corpus_id
        else:
            job.tgt_corpus_id = corpus_id
        n, stats = corpus.n_sentences, dict(corpus.stats or {})
    if n == 0:
        raise InputFileError(
            f"{path} has no sentences left after ingest ({_describe_stats(stats)}); "
            "check the file and --max-line-length"
        )
    record_step(cfg, job_id, "ingest", side, stats.get("lines", n), reused, seconds=time.monotonic() - started)
    return corpus_id


def reader_settings(options: JobOptions, path) -> dict:
    """What the reader needs to read one side of a job (its typed options); part of the corpus key."""
    from miner.io.records import parse_columns, resolve_format

    settings = {
        "max_chars": int(options.max_line_length),
        "on_decode_error": options.on_decode_error,
        "reader": READER_VERSION,
        "input_format": resolve_format(options.input_format or "auto", path),
    }
    if settings["input_format"] != "text":
        settings["on_bad_row"] = options.on_bad_row or "skip"
    if settings["input_format"] == "tsv":
        settings["columns"] = parse_columns(options.columns)
    return settings


def _describe_stats(stats: dict) -> str:
    names = ("lines", "blank", "duplicates", "too_long", "decode_errors", "bad_rows")
    return ", ".join(f"{name.replace('_', ' ')}: {stats.get(name, 0)}" for name in names)


def _claim_corpus(cfg: Config, key: str, sha: str, path: str, settings: dict) -> tuple[int, bool]:
    """Find or create the corpus row. Returns (id, True) when it is ready to reuse, (id, False) when
    this caller must fill it. Waits while another live task is filling it; takes over one whose
    filler stopped beating, with a compare-and-set so that only one caller takes it over."""
    from sqlalchemy.exc import IntegrityError

    while True:
        with session_scope(cfg.db_url) as s:
            corpus = s.scalar(select(Corpus).where(Corpus.key == key))
            if corpus is None:
                corpus = Corpus(key=key, sha256=sha, path=str(path), settings=settings, stats={})
                s.add(corpus)
                try:
                    s.flush()
                except IntegrityError:
                    s.rollback()
                    continue
                return corpus.id, False
            if corpus.state == CorpusState.READY.value:
                return corpus.id, True
            corpus_id, seen, now = corpus.id, corpus.heartbeat_at, server_now(s)
        if (now - seen).total_seconds() > stale_ingest_seconds(cfg) and _take_over(cfg, corpus_id, seen):
            return corpus_id, False  # the task that was filling it died
        time.sleep(1.0)


def _take_over(cfg: Config, corpus_id: int, seen) -> bool:
    """Compare-and-set on the heartbeat: True for the one caller that moves it on from ``seen``."""
    with session_scope(cfg.db_url) as s:
        moved = s.execute(
            update(Corpus)
            .where(Corpus.id == corpus_id, Corpus.heartbeat_at == seen, Corpus.state != CorpusState.READY.value)
            .values(heartbeat_at=db_now())
        ).rowcount
    return moved == 1


def _beat_corpus(s, corpus_id: int, beat):
    """Move the corpus's heartbeat on from ``beat`` (ours); raise when another task took it over."""
    now = server_now(s)  # the database's clock: the other hosts judge this heartbeat by it
    if now <= beat:
        now = beat + dt.timedelta(microseconds=1)
    moved = s.execute(update(Corpus).where(Corpus.id == corpus_id, Corpus.heartbeat_at == beat)
                      .values(heartbeat_at=now)).rowcount
    if moved != 1:
        raise JobCancelled(f"corpus {corpus_id} was taken over by another task while this one filled it; "
                           "that task fills it")
    return now


def _fill_corpus(cfg: Config, corpus_id: int, path: str, settings: dict) -> None:
    stats = ReadStats()
    with session_scope(cfg.db_url) as s:
        beat = s.scalar(select(Corpus.heartbeat_at).where(Corpus.id == corpus_id))
        beat = _beat_corpus(s, corpus_id, beat)
        s.execute(delete(SentenceDuplicate).where(SentenceDuplicate.corpus_id == corpus_id))
        s.execute(delete(Sentence).where(Sentence.corpus_id == corpus_id))
    fmt = settings.get("input_format", "text")
    parse = None if fmt == "text" else RowParser(fmt, path, columns=settings.get("columns"),
                                                 policy=settings.get("on_bad_row", "skip"), stats=stats)
    records = read_records(path, parse=parse, max_chars=settings["max_chars"],
                           on_decode_error=settings["on_decode_error"], stats=stats)
    idx = 0
    for batch in batched(records, INGEST_BATCH):
        rows, dups = [], []
        for line_no, text, ext_id, meta, dup_of in batch:
            if dup_of is None:
                rows.append({"corpus_id": corpus_id, "idx": idx, "line_no": line_no, "text": text,
                             "ext_id": ext_id, "meta": meta})
                idx += 1
            else:
                dups.append({"corpus_id": corpus_id, "line_no": line_no, "idx": dup_of, "ext_id": ext_id,
                             "meta": meta})
        with session_scope(cfg.db_url) as s:
            beat = _beat_corpus(s, corpus_id, beat)  # first: a task that lost the corpus writes nothing
            if rows:
                s.execute(insert(Sentence), rows)
            if dups:
                s.execute(insert(SentenceDuplicate), dups)
    with session_scope(cfg.db_url) as s:
        beat = _beat_corpus(s, corpus_id, beat)
        s.execute(
            update(Corpus)
            .where(Corpus.id == corpus_id)
            .values(state=CorpusState.READY.value, n_sentences=idx, stats=stats.as_dict())
        )

