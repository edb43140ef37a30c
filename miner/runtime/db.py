"""Database models (SQLAlchemy 2) and the engine/session helpers.

Tables:

* ``corpora``    -- one row per distinct input (content hash + ingest settings), shared by jobs;
* ``sentences``  -- the kept sentences of a corpus: dense ``idx`` 0..n-1, original ``line_no``, text;
* ``jobs``       -- one mining run over a corpus pair with its options and state;
* ``job_stages`` -- the planned size of each stage of a job (units = shards, items = sentences);
* ``job_steps``  -- one row per finished unit of work, unique per (job, stage, unit), so progress
                    counts never exceed totals and re-runs never double count;
* ``candidates`` -- mined pairs, primary key (job, src idx, tgt idx), so a re-run cannot duplicate.

The schema is created and changed only by Alembic migrations (``miner db upgrade``).
"""

from __future__ import annotations

import datetime as dt
import enum
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def utcnow() -> dt.datetime:
    """This host's clock (UTC, naive). For display only: every lease, heartbeat and stall time is
    the database's clock (:func:`db_now`, :func:`server_now`), which all hosts share."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class db_now(FunctionElement):
    """The database server's clock in UTC, as SQL (``INSERT``/``UPDATE`` values, column defaults).

    Every time stamp that another host compares with its own (leases, heartbeats, hand-overs, the
    stall sweep) is written and judged by this one clock, so a worker whose clock runs ahead does
    not take a live unit over. SQLite is a local file: its clock is this host's."""

    type = DateTime()
    inherit_cache = True


@compiles(db_now, "postgresql")
def _db_now_postgresql(element, compiler, **kw):
    # clock_timestamp(), not now(): now() stands still for a whole transaction.
    return "(clock_timestamp() AT TIME ZONE 'UTC')"


@compiles(db_now)
def _db_now_sqlite(element, compiler, **kw):
    # SQLAlchemy's SQLite DateTime format, microseconds included ('%f' gives milliseconds).
    return "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"


def server_now(session) -> dt.datetime:
    """The database server's clock now (UTC, naive): what leases and stalls are judged by."""
    return session.scalar(select(db_now()))


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class CorpusState(str, enum.Enum):
    INGESTING = "ingesting"
    READY = "ready"


class Base(DeclarativeBase):
    # The time stamps db_now() fills in come back with the INSERT (RETURNING), so objects read
    # them after their session closed.
    __mapper_args__ = {"eager_defaults": True}


class Corpus(Base):
    __tablename__ = "corpora"
    __table_args__ = (UniqueConstraint("key", name="uq_corpora_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64))  # sha256 of content + ingest settings
    sha256: Mapped[str] = mapped_column(String(64))  # of the raw file bytes
    path: Mapped[str] = mapped_column(Text)  # where it was first read from (informative)
    state: Mapped[str] = mapped_column(String(16), default=CorpusState.INGESTING.value)
    n_sentences: Mapped[int] = mapped_column(Integer, default=0)
    stats: Mapped[dict] = mapped_column(JSON, default=dict)
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=db_now())
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=db_now())


class Sentence(Base):
    __tablename__ = "sentences"

    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_no: Mapped[int] = mapped_column(BigInteger)  # 0-based physical line of its first occurrence
    text: Mapped[str] = mapped_column(Text)
    # The input's id of its first occurrence (TSV/JSONL, miner.io.records); None: the id is line_no + 1.
    ext_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The row's other fields (TSV columns, JSONL keys), once per sentence; None when there are none.
    meta: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class SentenceDuplicate(Base):
    """A later line of an input file with the text of an earlier one: the sentence (``idx``) is
    stored once, and keeps this occurrence's id and metadata too."""

    __tablename__ = "sentence_duplicates"
    __table_args__ = (Index("ix_sentence_duplicates_idx", "corpus_id", "idx"),)

    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), primary_key=True)
    line_no: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    idx: Mapped[int] = mapped_column(Integer)
    ext_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)


#: The states in which a job holds its ``live_key`` (the partial unique index uq_jobs_live_key).
LIVE_STATES = ("queued", "running")
_LIVE = text("state IN ('queued', 'running')")


class Job(Base):
    __tablename__ = "jobs"
    # One live job per request (miner.pipeline.jobs.create_job): two identical submissions at the same
    # moment cannot both mine; the second finds the first.
    __table_args__ = (Index("uq_jobs_live_key", "live_key", unique=True, sqlite_where=_LIVE, postgresql_where=_LIVE),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value, index=True)
    src_path: Mapped[str] = mapped_column(Text)
    tgt_path: Mapped[str] = mapped_column(Text)
    src_lang: Mapped[str] = mapped_column(String(16))
    tgt_lang: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(Text)
    options: Mapped[dict] = mapped_column(JSON, default=dict)  # k, margin, retrieval, threshold, ...
    src_corpus_id: Mapped[int | None] = mapped_column(ForeignKey("corpora.id"), nullable=True)
    tgt_corpus_id: Mapped[int | None] = mapped_column(ForeignKey("corpora.id"), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)  # of the error, for the CLI
    n_candidates: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    # The last stage whose tasks were sent (see miner.pipeline.orchestration.claim_stage); reset by a retry.
    dispatched: Mapped[str | None] = mapped_column(String(16), nullable=True)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # When a worker last re-sent the missing tasks of this stalled job (miner.pipeline.orchestration.sweep).
    swept_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # Hash of both files' contents and the options that change results: finds duplicate submissions.
    request_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # The request key while this job is the one that mines it (None for a --force submission):
    # unique among queued and running jobs.
    live_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The cut the finished job uses: {"value", "method" (auto, fallback, fixed, calibrated), "reason",
    # ...evidence} (miner.core.autocut.Decision.to_json); None until finish, and for jobs mined before it.
    threshold_info: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=db_now())
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class JobStage(Base):
    __tablename__ = "job_stages"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    units: Mapped[int] = mapped_column(Integer, default=0)
    items: Mapped[int] = mapped_column(BigInteger, default=0)
    # {part: [units, items]}: per side (src, tgt) or direction (fwd, bwd).
    parts: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class JobLease(Base):
    """A unit of work being run now: written when its task starts, refreshed every few seconds by
    the task, deleted when it ends. A lease gone stale means its worker died."""

    __tablename__ = "job_leases"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    unit: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=db_now())
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=db_now())


class JobStep(Base):
    __tablename__ = "job_steps"
    __table_args__ = (UniqueConstraint("job_id", "stage", "unit", name="uq_job_steps"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str] = mapped_column(String(64))
    part: Mapped[str] = mapped_column(String(16), default="")
    items: Mapped[int] = mapped_column(BigInteger, default=0)
    reused: Mapped[bool] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime, default=db_now())


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (Index("ix_candidates_job_score", "job_id", "score"),)

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    src_idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    tgt_idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    direction: Mapped[str] = mapped_column(String(8))  # fwd, bwd or both
    # Estimated probability of being a translation (``--threshold auto`` jobs), else None.
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)


_engines: dict[str, Engine] = {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=60000")
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        cursor.execute("PRAGMA journal_mode=WAL")  # once per database file (it stays WAL)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def get_engine(url: str) -> Engine:
    """One engine per URL and process (SQLite gets WAL mode and a long busy timeout)."""
    engine = _engines.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 60})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        _engines[url] = engine
    return engine


def dispose_engines() -> None:
    """Close pooled connections (call after fork, e.g. in Celery's worker_process_init)."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    factory = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def insert_ignore(session, model, values: dict, keys: list[str]):
    """``INSERT ... ON CONFLICT (keys) DO NOTHING`` for SQLite and PostgreSQL."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(model).values(**values).on_conflict_do_nothing(index_elements=keys)

