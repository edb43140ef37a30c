"""The steps of a mining job, each a plain function of ids (no Celery here).

``ingest`` -> ``plan`` -> ``embed`` (per shard) -> ``build_index`` (per side) -> ``knn`` (per query
shard, both directions) -> ``score`` (per query shard) -> ``finish`` (retrieval, candidates).

Every step is idempotent: its output is an artifact written atomically under a key of what
determines it, or rows keyed uniquely in the database, and its completion is recorded once per
(job, stage, unit) in ``job_steps``. A re-run finds the output and only records it.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, insert, select, update

from miner import indexes, mining
from miner.artifacts import Artifacts, load_npz, save_npy, save_npz
from miner.config import Config
from miner.db import (
    Candidate,
    Corpus,
    CorpusState,
    Job,
    JobLease,
    JobStage,
    JobState,
    JobStep,
    Sentence,
    session_scope,
    utcnow,
)
from miner.errors import InputFileError, JobCancelled, MinerError, ModelError
from miner.reader import ReadStats, batched, check_input_file, file_digest, read_sentences

log = logging.getLogger(__name__)

SIDES = ("src", "tgt")
DIRECTIONS = {"fwd": ("src", "tgt"), "bwd": ("tgt", "src")}  # direction -> (query side, target side)
STAGES = ("ingest", "embed", "index", "knn", "score", "finish")
READER_VERSION = 1
INGEST_BATCH = 5000
STALE_INGEST_SECONDS = 120
DIRECTION_NAMES = {1: "fwd", 2: "bwd", 3: "both"}


@dataclass(frozen=True)
class Side:
    """A job's side once ingested."""

    name: str
    corpus_id: int
    key: str
    n: int


def shard_spans(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(0, s), (s, 2s), ...]`` covering ``range(n)``."""
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


# --------------------------------------------------------------------------- bookkeeping


def load_job(cfg: Config, job_id: int) -> Job:
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise MinerError(f"job {job_id} does not exist")
        return job


def ensure_active(cfg: Config, job_id: int) -> Job:
    """Load the job; stop if it was cancelled; mark it running on its first step."""
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise MinerError(f"job {job_id} does not exist")
        if job.state == JobState.CANCELLED.value:
            raise JobCancelled(f"job {job_id} was cancelled")
        if job.state == JobState.FAILED.value:
            # Another task of this job failed: stop here; `miner retry` puts the job back in the queue.
            raise JobCancelled(f"job {job_id} failed: {job.error}")
        if job.state == JobState.QUEUED.value:
            job.state = JobState.RUNNING.value
            job.error = None
            job.exit_code = None
            job.started_at = job.started_at or utcnow()
        return job


def worker_name() -> str:
    """The Celery worker running this process (set by workers.app), else host:pid."""
    return os.environ.get("MINER_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"


def record_step(cfg: Config, job_id: int, stage: str, unit: str, items: int, reused: bool = False,
                seconds: float = 0.0) -> None:
    """Record one finished unit of work, once: a second record of the same unit (a re-run, or the
    same task delivered twice) is ignored by the unique key, also when both race. ``unit`` is
    ``part:start`` or ``part``, where part is the side (src, tgt) or direction (fwd, bwd)."""
    values = dict(job_id=job_id, stage=stage, unit=unit, part=unit.split(":")[0], items=items,
                  reused=int(reused), worker=worker_name()[:128], seconds=float(seconds), finished_at=utcnow())
    with session_scope(cfg.db_url) as s:
        s.execute(insert_ignore(s, JobStep, values, ["job_id", "stage", "unit"]))


def insert_ignore(session, model, values: dict, keys: list[str]):
    """``INSERT ... ON CONFLICT (keys) DO NOTHING`` for SQLite and PostgreSQL."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(model).values(**values).on_conflict_do_nothing(index_elements=keys)


def set_stage(cfg: Config, job_id: int, stage: str, parts: dict[str, tuple[int, int]]) -> None:
    """Record the size of a stage, ``{part: (units, items)}`` (an upsert: safe when two tasks plan
    the same job at once)."""
    units = sum(u for u, _ in parts.values())
    items = sum(i for _, i in parts.values())
    stored = {part: [int(u), int(i)] for part, (u, i) in parts.items()}
    with session_scope(cfg.db_url) as s:
        s.execute(insert_ignore(s, JobStage, dict(job_id=job_id, stage=stage, units=units, items=items, parts=stored),
                                ["job_id", "stage"]))
        s.execute(update(JobStage).where(JobStage.job_id == job_id, JobStage.stage == stage)
                  .values(units=units, items=items, parts=stored))


# --------------------------------------------------------------------------- stage hand-over
#
# No chords: every task, once its unit is recorded, checks whether its stage is complete; the one
# that sees it complete and wins ``claim_stage`` (an atomic compare-and-set on ``jobs.dispatched``)
# sends the next stage's tasks. A task delivered twice, or run again after its worker died, finds
# its unit recorded and the next stage already claimed, so nothing runs twice and nothing is lost.

NEXT_STAGE = {"ingest": "embed", "embed": "index", "index": "knn", "knn": "score", "score": "finish"}


def stage_complete(cfg: Config, job_id: int, stage: str) -> bool:
    with session_scope(cfg.db_url) as s:
        if stage == "ingest":
            units = len(SIDES)
        else:
            units = s.scalar(select(JobStage.units).where(JobStage.job_id == job_id, JobStage.stage == stage))
            if units is None:
                return False
        done = s.scalar(select(func.count(JobStep.id)).where(JobStep.job_id == job_id, JobStep.stage == stage))
    return int(done or 0) >= int(units)


@contextmanager
def claim_stage(cfg: Config, job_id: int, previous: str | None, stage: str):
    """Yield True to exactly one caller per (job, stage) hand-over, inside a transaction that
    commits after the body: send the stage's tasks in the body, so a crash before the commit
    leaves the stage unclaimed for the re-delivered task to claim."""
    with session_scope(cfg.db_url) as s:
        condition = Job.dispatched.is_(None) if previous is None else Job.dispatched == previous
        result = s.execute(
            update(Job)
            .where(Job.id == job_id, condition, Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
            .values(dispatched=stage, dispatched_at=utcnow(), swept_at=None)
        )
        yield result.rowcount == 1


def hand_over(cfg: Config, job_id: int, previous: str | None, stage: str, send) -> bool:
    """Call ``send(stage, units)`` (which queues one task per unit) if this caller wins the claim."""
    units = stage_units(cfg, job_id, stage)
    with claim_stage(cfg, job_id, previous, stage) as claimed:
        if claimed:
            send(stage, units)
    return claimed


def advance(cfg: Config, job_id: int, stage: str, send) -> bool:
    """After a unit of ``stage`` is recorded: when the stage is complete, hand over to the next one
    (planning the shards after ingest). True for the one caller that sent the next stage."""
    following = NEXT_STAGE.get(stage)
    if following is None or not stage_complete(cfg, job_id, stage):
        return False
    try:
        if following == "embed":
            plan(cfg, job_id)
        return hand_over(cfg, job_id, stage, following, send)
    except JobCancelled:
        return False


def unit_name(stage: str, args: tuple) -> str:
    """The ``job_steps.unit`` of a task of ``stage`` with ``args`` (after the job id)."""
    if stage == "finish":
        return "all"
    if stage in ("ingest", "index"):
        return str(args[0])
    return f"{args[0]}:{args[1]}"


# --------------------------------------------------------------------------- leases and stalls

HEARTBEAT_SECONDS = 5.0
_stop_event: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("miner_stop", default=None)


def check_stop(job_id: int) -> None:
    """Raise JobCancelled when the lease of the running task saw its job cancelled or failed."""
    event = _stop_event.get()
    if event is not None and event.is_set():
        raise JobCancelled(f"job {job_id} was cancelled or failed while this task ran")


@contextmanager
def leased(cfg: Config, job_id: int, stage: str, unit: str, interval: float = HEARTBEAT_SECONDS):
    """Hold a lease on one unit while the block runs: a thread refreshes its heartbeat every
    ``interval`` seconds, so a job whose every lease is stale has no live task (see :func:`sweep`)."""
    values = dict(job_id=job_id, stage=stage, unit=unit, worker=worker_name()[:128], started_at=utcnow(),
                  heartbeat_at=utcnow())
    key = (JobLease.job_id == job_id, JobLease.stage == stage, JobLease.unit == unit)
    with session_scope(cfg.db_url) as s:
        s.execute(insert_ignore(s, JobLease, values, ["job_id", "stage", "unit"]))
        s.execute(update(JobLease).where(*key).values(worker=values["worker"], heartbeat_at=utcnow()))
    stop = threading.Event()
    job_stopped = threading.Event()
    token = _stop_event.set(job_stopped)

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with session_scope(cfg.db_url) as s:
                    s.execute(update(JobLease).where(*key).values(heartbeat_at=utcnow()))
                    state = s.scalar(select(Job.state).where(Job.id == job_id))
                if state in (JobState.CANCELLED.value, JobState.FAILED.value):
                    job_stopped.set()
            except Exception as exc:  # the database is away for a moment: the task itself will notice
                log.debug("lease heartbeat of job %s %s %s failed: %s", job_id, stage, unit, exc)

    thread = threading.Thread(target=beat, name=f"lease-{job_id}-{stage}-{unit}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        _stop_event.reset(token)
        stop.set()
        thread.join(10)
        try:
            with session_scope(cfg.db_url) as s:
                s.execute(delete(JobLease).where(*key))
        except Exception as exc:  # a stale lease only delays a stall sweep; never hide the real error
            log.debug("could not release the lease of job %s %s %s: %s", job_id, stage, unit, exc)


def last_activity(s, job: Job):
    """The latest sign of life of a job: a hand-over, a finished unit, a lease heartbeat, a sweep."""
    last_step = s.scalar(select(func.max(JobStep.finished_at)).where(JobStep.job_id == job.id))
    last_beat = s.scalar(select(func.max(JobLease.heartbeat_at)).where(JobLease.job_id == job.id))
    times = [t for t in (job.dispatched_at, job.swept_at, job.started_at, last_step, last_beat) if t is not None]
    return max(times) if times else job.created_at


def missing_units(cfg: Config, job_id: int, stage: str) -> list[tuple]:
    """Task arguments of the units of ``stage`` not recorded as done."""
    with session_scope(cfg.db_url) as s:
        done = set(s.scalars(select(JobStep.unit).where(JobStep.job_id == job_id, JobStep.stage == stage)))
    return [args for args in stage_units(cfg, job_id, stage) if unit_name(stage, args) not in done]


def sweep(cfg: Config, send, stall_seconds: float, queue_busy=lambda: False, now: dt.datetime | None = None) -> list[str]:
    """Find active jobs with no sign of life for ``stall_seconds`` and send their missing tasks
    again (tasks lost with a killed worker, a restarted broker, or a hand-over that failed to send).

    ``send(job_id, stage, units)`` queues tasks. ``queue_busy()`` says whether the broker still holds
    queued tasks; while it does, a quiet job is probably only waiting its turn, so it is left alone
    unless it has been quiet for ten times ``stall_seconds``. Safe to run in every worker at once:
    each stalled job is claimed by one sweeper (compare-and-set on ``jobs.swept_at``). Re-sent
    tasks that were not lost after all only find their unit done. ``now``: the time to judge by
    (default: the clock; tests pass a later one instead of waiting)."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=stall_seconds)
    active = [JobState.QUEUED.value, JobState.RUNNING.value]
    with session_scope(cfg.db_url) as s:
        candidates = []
        for job in s.scalars(select(Job).where(Job.state.in_(active), Job.dispatched.is_not(None))):
            quiet_since = last_activity(s, job)
            if quiet_since <= cutoff:
                candidates.append((job.id, job.dispatched, quiet_since))
    actions = []
    busy = None
    for job_id, stage, quiet_since in candidates:
        if (now - quiet_since).total_seconds() < 10 * stall_seconds:
            if busy is None:
                busy = bool(queue_busy())
            if busy:
                continue
        with session_scope(cfg.db_url) as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(active), Job.dispatched == stage,
                       (Job.swept_at.is_(None)) | (Job.swept_at <= cutoff))
                .values(swept_at=now)
            ).rowcount == 1
        if not claimed:
            continue
        quiet = (now - quiet_since).total_seconds()
        if stage_complete(cfg, job_id, stage):
            if advance(cfg, job_id, stage, lambda following, units: send(job_id, following, units)):
                actions.append(f"job {job_id}: quiet for {quiet:.0f}s after {stage}; sent the next stage")
            continue
        units = missing_units(cfg, job_id, stage)
        if units:
            send(job_id, stage, units)
            actions.append(f"job {job_id}: quiet for {quiet:.0f}s; sent {len(units)} missing {stage} task(s) again")
    for action in actions:
        log.warning("%s", action)
    return actions


def stage_units(cfg: Config, job_id: int, stage: str) -> list[tuple]:
    """The arguments (after ``job_id``) of every task of ``stage``."""
    if stage in ("ingest", "index"):
        return [(side,) for side in SIDES]
    if stage == "finish":
        return [()]
    job = load_job(cfg, job_id)
    sides = job_sides(cfg, job)
    size = int(job.options["shard_size"])
    if stage == "embed":
        return [(name, s, e) for name in SIDES for s, e in shard_spans(sides[name].n, size)]
    if stage in ("knn", "score"):
        return [(direction, s, e) for direction, (query, _) in DIRECTIONS.items()
                for s, e in shard_spans(sides[query].n, size)]
    raise ValueError(f"unknown stage {stage!r}")


def mark_failed(cfg: Config, job_id: int, message: str, exit_code: int = 1) -> None:
    """Mark the job failed (unless it was cancelled) with a one-line reason."""
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, job_id)
        if job is not None and job.state != JobState.CANCELLED.value:
            job.state = JobState.FAILED.value
            job.error = message.strip().splitlines()[0][:2000] if message.strip() else "unknown error"
            job.exit_code = exit_code
            job.finished_at = utcnow()


def job_sides(cfg: Config, job: Job) -> dict[str, Side]:
    with session_scope(cfg.db_url) as s:
        out = {}
        for side, cid in (("src", job.src_corpus_id), ("tgt", job.tgt_corpus_id)):
            corpus = s.get(Corpus, cid) if cid is not None else None
            if corpus is None or corpus.state != CorpusState.READY.value:
                raise MinerError(f"job {job.id}: the {side} side is not ingested yet; run `miner retry {job.id}`")
            out[side] = Side(side, corpus.id, corpus.key, corpus.n_sentences)
        return out


# --------------------------------------------------------------------------- ingest


def corpus_key(sha256: str, settings: dict) -> str:
    blob = json.dumps({"sha256": sha256, **settings}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def ingest(cfg: Config, job_id: int, side: str) -> int:
    """Read one side of a job into a corpus (or reuse an identical one); returns the corpus id."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    path = job.src_path if side == "src" else job.tgt_path
    check_input_file(path)
    settings = {
        "max_chars": int(job.options["max_line_length"]),
        "on_decode_error": job.options["on_decode_error"],
        "reader": READER_VERSION,
    }
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


def _describe_stats(stats: dict) -> str:
    names = ("lines", "blank", "duplicates", "too_long", "decode_errors")
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
            corpus_id, seen = corpus.id, corpus.heartbeat_at
        if (utcnow() - seen).total_seconds() > STALE_INGEST_SECONDS and _take_over(cfg, corpus_id, seen):
            return corpus_id, False  # the task that was filling it died
        time.sleep(1.0)


def _take_over(cfg: Config, corpus_id: int, seen) -> bool:
    """Compare-and-set on the heartbeat: True for the one caller that moves it on from ``seen``."""
    with session_scope(cfg.db_url) as s:
        moved = s.execute(
            update(Corpus)
            .where(Corpus.id == corpus_id, Corpus.heartbeat_at == seen, Corpus.state != CorpusState.READY.value)
            .values(heartbeat_at=utcnow())
        ).rowcount
    return moved == 1


def _beat_corpus(s, corpus_id: int, beat):
    """Move the corpus's heartbeat on from ``beat`` (ours); raise when another task took it over."""
    now = utcnow()
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
        s.execute(delete(Sentence).where(Sentence.corpus_id == corpus_id))
    sentences = read_sentences(
        path, max_chars=settings["max_chars"], on_decode_error=settings["on_decode_error"], stats=stats
    )
    idx = 0
    for batch in batched(sentences, INGEST_BATCH):
        rows = [{"corpus_id": corpus_id, "idx": idx + i, "line_no": ln, "text": text} for i, (ln, text) in enumerate(batch)]
        idx += len(rows)
        with session_scope(cfg.db_url) as s:
            beat = _beat_corpus(s, corpus_id, beat)  # first: a task that lost the corpus writes nothing
            s.execute(insert(Sentence), rows)
    with session_scope(cfg.db_url) as s:
        beat = _beat_corpus(s, corpus_id, beat)
        s.execute(
            update(Corpus)
            .where(Corpus.id == corpus_id)
            .values(state=CorpusState.READY.value, n_sentences=idx, stats=stats.as_dict())
        )


# --------------------------------------------------------------------------- plan


def plan(cfg: Config, job_id: int) -> dict[str, list[tuple[int, int]]]:
    """Shard both sides and record the size of every stage; returns the shard spans per side."""
    job = ensure_active(cfg, job_id)
    sides = job_sides(cfg, job)
    size = int(job.options["shard_size"])
    spans = {name: shard_spans(side.n, size) for name, side in sides.items()}
    by_side = {name: (len(spans[name]), sides[name].n) for name in SIDES}
    by_direction = {direction: by_side[query] for direction, (query, _) in DIRECTIONS.items()}
    set_stage(cfg, job_id, "embed", by_side)
    set_stage(cfg, job_id, "index", {name: (1, n) for name, (_, n) in by_side.items()})
    set_stage(cfg, job_id, "knn", by_direction)
    set_stage(cfg, job_id, "score", by_direction)
    set_stage(cfg, job_id, "finish", {"all": (1, 0)})
    return spans


# --------------------------------------------------------------------------- embed / index / knn / score

_models: dict[tuple[str, bool], object] = {}
_models_lock = threading.Lock()


def model_for(cfg: Config, name: str, expected_key: str | None = None):
    """The loaded model ``name`` (one per worker process at a time; thread-safe, so a preload
    thread and the first embed task never load it twice). Keyed by the model's content
    (:attr:`ModelSpec.key`: a retrained model is loaded anew) and by the trust in effect
    (:func:`miner.encoders.trusting`), so a model loaded for a job that trusts its code is never
    reused for a job that does not.

    ``expected_key``: the key the job recorded at submit; a model whose content changed since
    raises :class:`ModelError` (its embeddings would be stored under the old model's key)."""
    from miner.encoders import load_model, resolve_model, trust_in_effect

    spec = resolve_model(name)
    if expected_key is not None and spec.key != expected_key:
        raise ModelError(f"model {name!r} changed since the job was submitted (it was {expected_key}, it is now "
                         f"{spec.key}); submit the job again (--force) to mine with the new model")
    key = (spec.key, trust_in_effect())
    with _models_lock:
        if key not in _models:
            _models.clear()
            _models[key] = load_model(spec, threads=cfg.threads or 1, device=cfg.device)
        return _models[key]


def _model(cfg: Config, job: Job):
    return model_for(cfg, job.model, expected_key=job.options["model_key"])


def _side_texts(cfg: Config, corpus_id: int, start: int, end: int) -> list[str]:
    with session_scope(cfg.db_url) as s:
        rows = s.execute(
            select(Sentence.text)
            .where(Sentence.corpus_id == corpus_id, Sentence.idx >= start, Sentence.idx < end)
            .order_by(Sentence.idx)
        ).all()
    return [r[0] for r in rows]


def side_index(job: Job, side: Side, dim: int | None = None):
    """The index spec that searches ``side`` (miner.indexes.choose_index on the job's options)."""
    from miner.indexes import choose_index

    o = job.options
    return choose_index(side.n, dim, o.get("index", "auto"), o.get("nlist"), o.get("nprobe"))


def storage_dtype(job: Job, side: Side) -> str:
    """float16 or float32: how the side's embeddings are stored on disk."""
    storage = job.options.get("storage", "auto")
    if storage == "auto":
        return "float32" if side_index(job, side).exact else "float16"
    return storage


def knn_variant(job: Job, target: Side, dim: int | None = None) -> str:
    """What the kNN of a query shard depends on beyond k: the target's index and storage."""
    spec = side_index(job, target, dim)
    dtype = storage_dtype(job, target)
    # "gaps": missing IVF neighbours are stored as id -1 / -inf (older files held placeholders)
    parts = ([] if spec.exact else [spec.name, f"p{spec.nprobe}", "gaps"]) + ([] if dtype == "float32" else [dtype])
    if spec.kind == "ivfpq":
        parts.append(f"r{indexes.REFINE_FACTOR}")  # candidates re-scored with the stored vectors
    return "-".join(parts)


def _embeddings(art: Artifacts, job: Job, side: Side, start: int, end: int) -> Path:
    return art.embeddings(side.key, job.options["model_key"], start, end, storage_dtype(job, side))


def _shard_dim(art: Artifacts, job: Job, side: Side) -> int:
    first = shard_spans(side.n, int(job.options["shard_size"]))[0]
    return int(np.load(_embeddings(art, job, side, *first), mmap_mode="r").shape[1])


def embed(cfg: Config, job_id: int, side: str, start: int, end: int) -> str:
    """Embed sentences [start, end) of one side (skipped when the artifact exists)."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    corpus = job_sides(cfg, job)[side]
    path = _embeddings(Artifacts(cfg.artifacts), job, corpus, start, end)
    reused = path.exists()
    if not reused:
        from miner.encoders import encode

        texts = _side_texts(cfg, corpus.corpus_id, start, end)
        if len(texts) != end - start:
            raise MinerError(f"corpus {corpus.corpus_id} has {len(texts)} sentences in [{start}, {end}); re-ingest it")
        model = _model(cfg, job)
        chunk = max(1, cfg.embed_batch_size) * 8
        parts = []
        for lo in range(0, len(texts), chunk):
            check_stop(job_id)  # a cancelled job stops within one chunk, not at the end of the shard
            parts.append(encode(model, texts[lo:lo + chunk], batch_size=cfg.embed_batch_size))
        vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]
        save_npy(path, vectors.astype(storage_dtype(job, corpus), copy=False))
    record_step(cfg, job_id, "embed", f"{side}:{start}", end - start, reused, seconds=time.monotonic() - started)
    return str(path)


def build_index(cfg: Config, job_id: int, side: str) -> str:
    """Build what the other side's kNN searches: for an exact (flat) side, check its embedding
    shards and write the manifest that the search streams through -- no process ever holds a whole
    side; for an IVF side, train on a sample and add the shards one at a time (miner.indexes)."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    corpus = job_sides(cfg, job)[side]
    model_key = job.options["model_key"]
    art = Artifacts(cfg.artifacts)
    dim = _shard_dim(art, job, corpus)
    spec = side_index(job, corpus, dim)
    spans = shard_spans(corpus.n, int(job.options["shard_size"]))
    manifest = art.index(corpus.key, model_key, spec.name).with_suffix(f".{storage_dtype(job, corpus)}.json")
    reused = manifest.exists()
    if not reused:
        from miner.artifacts import atomic_path

        shards = []
        for start, end in spans:
            shard_path = _embeddings(art, job, corpus, start, end)
            vectors = np.load(shard_path, mmap_mode="r")
            if vectors.shape != (end - start, dim):
                raise MinerError(f"{shard_path} has shape {vectors.shape}, expected ({end - start}, {dim}); "
                                 f"delete it and `miner retry {job_id}`")
            shards.append([start, end, str(shard_path.relative_to(art.root))])
        info = {"kind": spec.kind, "n": corpus.n, "dim": dim, "shards": shards}
        if not spec.exact:
            def load_all():
                for start, end in spans:
                    check_stop(job_id)
                    yield np.load(_embeddings(art, job, corpus, start, end), mmap_mode="r")

            train = indexes.training_sample(load_all(), corpus.n, indexes.train_size(spec, corpus.n))
            index = indexes.build_ivf(spec, dim, train, load_all())
            del train
            index_path = art.index(corpus.key, model_key, spec.name)
            import faiss

            with atomic_path(index_path) as tmp:
                faiss.write_index(index, str(tmp))
            del index
            info.update(nlist=spec.nlist, m=spec.m, index=str(index_path.relative_to(art.root)))
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps(info))
    record_step(cfg, job_id, "index", side, corpus.n, reused, seconds=time.monotonic() - started)
    return str(manifest)


_indexes: dict[str, object] = {}


def _load_index(path: Path, nprobe: int):
    """One built index per worker process at a time (kNN tasks of a direction share it)."""
    key = f"{path}:{nprobe}"
    if key not in _indexes:
        _indexes.clear()
        _indexes[key] = indexes.read_index(str(path), nprobe)
    return _indexes[key]


def _checked(job_id: int, blocks):
    for block in blocks:
        check_stop(job_id)
        yield block


def _target_blocks(art: Artifacts, manifest_path: Path):
    """``(offset, vectors)`` of every shard of a side (from its index manifest), memory-mapped one
    at a time."""
    manifest = json.loads(manifest_path.read_text())
    for start, _end, relative in manifest["shards"]:
        yield start, np.load(art.root / relative, mmap_mode="r")


_maps: dict[str, list] = {}


def _mapped_blocks(art: Artifacts, manifest_path: Path) -> list:
    """Like :func:`_target_blocks`, but the memory maps stay open in this process for the next
    kNN task of the direction (one side at a time): re-scoring IVF-PQ candidates reads rows all
    over the side, and re-mapping the files for each query shard made every read a page fault."""
    key = str(manifest_path)
    if key not in _maps:
        _maps.clear()
        _maps[key] = list(_target_blocks(art, manifest_path))
    return _maps[key]


def knn(cfg: Config, job_id: int, direction: str, start: int, end: int) -> str:
    """k nearest neighbours of query shard [start, end) in the other side: its shards streamed
    through an exact search, or its IVF index."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    sides = job_sides(cfg, job)
    query, target = (sides[name] for name in DIRECTIONS[direction])
    model_key = job.options["model_key"]
    k = min(int(job.options["k"]), target.n)
    art = Artifacts(cfg.artifacts)
    path = _knn_path(art, job, query, target, k, start, end)
    reused = path.exists()
    if not reused:
        queries = np.asarray(np.load(_embeddings(art, job, query, start, end)), dtype=np.float32)
        spec = side_index(job, target, queries.shape[1])
        manifest = art.index(target.key, model_key, spec.name).with_suffix(f".{storage_dtype(job, target)}.json")
        if spec.exact:
            sims, ids = mining.knn_blocks(queries, _checked(job_id, _target_blocks(art, manifest)), k)
        else:
            info = json.loads(manifest.read_text())
            index = _load_index(art.root / info["index"], spec.nprobe)
            blocks = _mapped_blocks(art, manifest) if spec.kind == "ivfpq" else None
            sims, ids = indexes.search_side(index, spec, queries, k, blocks)
            sims, ids = indexes.mark_missing(sims, ids)  # missing neighbours: id -1, similarity -inf
        save_npz(path, sims=sims, ids=ids)
    record_step(cfg, job_id, "knn", f"{direction}:{start}", end - start, reused, seconds=time.monotonic() - started)
    return str(path)


def _knn_path(art: Artifacts, job: Job, query: Side, target: Side, k: int, start: int, end: int) -> Path:
    dim = None if side_index(job, target).kind != "ivfpq" else _shard_dim(art, job, target)
    return art.knn(query.key, target.key, job.options["model_key"], k, start, end, knn_variant(job, target, dim))


def _side_means(cfg: Config, job: Job, direction: str, sides: dict[str, Side]) -> np.ndarray:
    """Mean kNN similarity of every sentence of the query side of ``direction``."""
    query, target = (sides[name] for name in DIRECTIONS[direction])
    job.options["model_key"]
    k = min(int(job.options["k"]), target.n)
    art = Artifacts(cfg.artifacts)
    parts = [
        mining.knn_mean(load_npz(_knn_path(art, job, query, target, k, s, e))["sims"])
        for s, e in shard_spans(query.n, int(job.options["shard_size"]))
    ]
    return np.concatenate(parts) if parts else np.empty(0)


def score(cfg: Config, job_id: int, direction: str, start: int, end: int) -> str:
    """Best margin candidate of each query in shard [start, end), and its decoy score (the best
    score without that candidate; :func:`miner.mining.best_candidates_with_decoy`, for
    ``--threshold auto``)."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    sides = job_sides(cfg, job)
    query, target = (sides[name] for name in DIRECTIONS[direction])
    job.options["model_key"]
    k = min(int(job.options["k"]), target.n)
    art = Artifacts(cfg.artifacts)
    path = art.scores(job_id, direction, start, end)
    reused = path.exists()
    if not reused:
        shard = load_npz(_knn_path(art, job, query, target, k, start, end))
        other = "bwd" if direction == "fwd" else "fwd"
        target_mean = _side_means(cfg, job, other, sides)
        best, scores, decoy = mining.best_candidates_with_decoy(
            shard["sims"], shard["ids"], mining.knn_mean(shard["sims"]), target_mean, job.options["margin"]
        )
        save_npz(path, ids=best, scores=scores, decoy=decoy)
    record_step(cfg, job_id, "score", f"{direction}:{start}", end - start, reused, seconds=time.monotonic() - started)
    return str(path)


# --------------------------------------------------------------------------- finish


def _best(cfg: Config, job: Job, direction: str, side: Side) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(best ids, best scores, decoy scores) of every sentence of ``side``; the decoys are None
    when a score artifact predates them."""
    art = Artifacts(cfg.artifacts)
    parts = [load_npz(art.scores(job.id, direction, s, e)) for s, e in shard_spans(side.n, int(job.options["shard_size"]))]
    decoy = np.concatenate([p["decoy"] for p in parts]) if all("decoy" in p for p in parts) else None
    return np.concatenate([p["ids"] for p in parts]), np.concatenate([p["scores"] for p in parts]), decoy


CANDIDATE_BATCH = 20000


def store_candidates(s, job_id: int, src: np.ndarray, tgt: np.ndarray, scores: np.ndarray, names: np.ndarray,
                     probability: np.ndarray | None = None) -> None:
    """Insert candidate rows in the session's transaction: COPY on PostgreSQL, batched executemany
    elsewhere; either way at most ``CANDIDATE_BATCH`` Python rows exist at a time. ``probability``
    (one per candidate; nan stored as NULL) or None (all NULL)."""
    def probabilities(lo: int, hi: int) -> list:
        if probability is None:
            return [None] * len(src[lo:hi])
        return [None if p != p else p for p in probability[lo:hi].tolist()]  # nan -> NULL

    if s.get_bind().dialect.name == "postgresql":
        raw = s.connection().connection.driver_connection  # the psycopg connection of this transaction
        with raw.cursor() as cursor, cursor.copy(
            "COPY candidates (job_id, src_idx, tgt_idx, score, direction, probability) FROM STDIN"
        ) as copy:
            for lo in range(0, len(src), CANDIDATE_BATCH):
                hi = lo + CANDIDATE_BATCH
                for row in zip(src[lo:hi].tolist(), tgt[lo:hi].tolist(), scores[lo:hi].tolist(), names[lo:hi].tolist(),
                               probabilities(lo, hi)):
                    copy.write_row((job_id, *row))
        return
    for lo in range(0, len(src), CANDIDATE_BATCH):
        hi = lo + CANDIDATE_BATCH
        rows = [
            {"job_id": job_id, "src_idx": int(a), "tgt_idx": int(b), "score": float(c), "direction": str(d),
             "probability": p}
            for a, b, c, d, p in zip(src[lo:hi].tolist(), tgt[lo:hi].tolist(), scores[lo:hi].tolist(), names[lo:hi],
                                     probabilities(lo, hi))
        ]
        s.execute(insert(Candidate), rows)


def json_ready(value):
    """``value`` with numpy scalars and arrays as Python numbers and lists, and nan/inf as None
    (PostgreSQL's JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_ready(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def choose_threshold(job: Job, inputs) -> tuple[float | None, dict | None, np.ndarray | None]:
    """The cut of a finished job: (value, threshold_info, probability per candidate).

    ``auto``: :func:`miner.autocut.decide` on the job's own scores, falling back to the fixed default
    resolved when the job was created (``fallback_threshold``; for jobs without one, the model's
    default as ``miner.defaults`` resolves it now). ``fixed`` / ``calibrated``: the job's number.
    No method and no number (library callers): every candidate counts, nothing is recorded."""
    from miner import autocut, defaults
    from miner.jobs import threshold_method

    options = job.options or {}
    method = threshold_method(options)
    if method in ("fixed", "calibrated"):
        value = float(options["threshold"])
        return value, {"value": value, "method": method}, None
    if method != "auto":
        return None, None, None
    fixed = options.get("fallback_threshold")
    if fixed is None:
        from miner.encoders import ALIASES

        alias = job.model if job.model in ALIASES else ""
        fixed = defaults.default_threshold(alias, options["margin"], model_key=options.get("model_key"))
    decision = autocut.decide(inputs, options["margin"], float(fixed))
    info = json_ready(decision.to_json())
    probability = None
    if decision.probability is not None:
        probability = np.asarray(decision.probability, dtype=np.float64)
        if probability.shape != np.shape(inputs.scores):
            raise MinerError(f"job {job.id}: the automatic threshold gave {probability.shape[0]} probabilities for "
                             f"{len(inputs.scores)} candidates")
    return float(decision.value), info, probability


def finish(cfg: Config, job_id: int) -> int:
    """Apply the retrieval mode, choose the job's cut (:func:`choose_threshold`) and store the
    candidates with their probabilities (replacing any earlier ones) and the cut's record."""
    started = time.monotonic()
    job = ensure_active(cfg, job_id)
    sides = job_sides(cfg, job)
    fwd_best, fwd_scores, fwd_decoy = _best(cfg, job, "fwd", sides["src"])
    bwd_best, bwd_scores, bwd_decoy = _best(cfg, job, "bwd", sides["tgt"])
    src, tgt, scores, direction = mining.retrieve(
        fwd_best, fwd_scores, bwd_best, bwd_scores, job.options["retrieval"], threshold=None
    )
    from miner.autocut import CutInputs

    inputs = CutInputs(scores=scores, direction=direction, src=src, tgt=tgt, fwd_scores=fwd_scores,
                       bwd_scores=bwd_scores, fwd_decoy=fwd_decoy, bwd_decoy=bwd_decoy)
    threshold, info, probability = choose_threshold(job, inputs)
    above = int(np.count_nonzero(scores >= threshold)) if threshold is not None else len(scores)
    names = np.array(["", "fwd", "bwd", "both"])[direction]
    with session_scope(cfg.db_url) as s:
        # Lock the job row: a second delivery of this task waits, then replaces the same rows.
        job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
        s.execute(delete(Candidate).where(Candidate.job_id == job_id))
        store_candidates(s, job_id, src, tgt, scores, names, probability)
        if job.state == JobState.CANCELLED.value:
            raise JobCancelled(f"job {job_id} was cancelled")
        job.n_candidates = above
        job.threshold_info = info
        job.state = JobState.DONE.value
        job.finished_at = utcnow()
        job.error = None
    from miner.jobs import fallback_warning

    message = fallback_warning(job_id, info)
    if message:
        log.warning("%s", message)
    set_stage(cfg, job_id, "finish", {"all": (1, len(src))})
    record_step(cfg, job_id, "finish", "all", len(src), seconds=time.monotonic() - started)
    return above


def count_steps(cfg: Config, job_id: int) -> dict[str, tuple[int, int]]:
    """{stage: (units done, items done)}."""
    with session_scope(cfg.db_url) as s:
        rows = s.execute(
            select(JobStep.stage, func.count(JobStep.id), func.coalesce(func.sum(JobStep.items), 0))
            .where(JobStep.job_id == job_id)
            .group_by(JobStep.stage)
        ).all()
    return {stage: (int(units), int(items)) for stage, units, items in rows}
