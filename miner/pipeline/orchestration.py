"""How a job moves through its stages, on any task queue (no Celery here).

A job is a fixed chain of stages: ``ingest`` (per side) -> ``embed`` (per shard of both sides) ->
``index`` (per side) -> ``knn`` (per query shard, both directions) -> ``score`` (per query shard)
-> ``finish``. The database is the only source of truth:

* **bookkeeping**: every finished unit of work is recorded once in ``job_steps``
  (:func:`record_step`); the size of each stage, once planned, in ``job_stages`` (:func:`plan`);
* **hand-over** (no chords): every task, once its unit is recorded, calls :func:`advance`; the one
  caller that sees its stage complete and wins :func:`claim_stage` (a compare-and-set on
  ``jobs.dispatched``) sends every task of the next stage through the ``send`` callback it was given
  (``workers/dispatch.py`` sends Celery tasks by name; the tests use a list);
* **leases**: a running unit holds a row in ``job_leases`` whose heartbeat a thread refreshes
  (:func:`leased`), and which tells the unit when its job was cancelled (:func:`check_stop`);
* **stall sweep**: :func:`sweep` re-sends the missing tasks of a job with no sign of life (tasks lost
  with a killed worker or a restarted broker).

The compute steps themselves are in :mod:`miner.pipeline.steps` and :mod:`miner.pipeline.corpora`.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update

from miner.runtime.config import Config
from miner.runtime.db import (Corpus, CorpusState, Job, JobLease, JobStage, JobState, JobStep, db_now, insert_ignore,
                      server_now, session_scope)
from miner.runtime.errors import JobCancelled, JobNotFound, MinerError, UnitTaken
from miner.pipeline.spec import job_spec
from miner.pipeline import stages
from miner.pipeline.stages import DIRECTIONS, SIDES, shard_spans  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

STAGES = stages.NAMES  # in order (miner/pipeline/stages.py declares them)


@dataclass(frozen=True)
class Side:
    """A job's side once ingested."""

    name: str
    corpus_id: int
    key: str
    n: int




# --------------------------------------------------------------------------- bookkeeping


def load_job(cfg: Config, job_id: int) -> Job:
    """The job row (detached), or JobNotFound."""
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}; `miner jobs` lists the jobs")
        return job


def ensure_active(cfg: Config, job_id: int) -> Job:
    """Load the job; stop if it was cancelled; mark it running on its first step."""
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}; `miner jobs` lists the jobs")
        if job.state == JobState.CANCELLED.value:
            raise JobCancelled(f"job {job_id} was cancelled")
        if job.state == JobState.FAILED.value:
            # Another task of this job failed: stop here; `miner retry` puts the job back in the queue.
            raise JobCancelled(f"job {job_id} failed: {job.error}")
        if job.state == JobState.QUEUED.value:
            job.state = JobState.RUNNING.value
            job.error = None
            job.exit_code = None
            job.started_at = job.started_at or server_now(s)
        return job


def worker_name() -> str:
    """The Celery worker running this process (set by miner.workers.app), else host:pid."""
    return os.environ.get("MINER_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"


def record_step(cfg: Config, job_id: int, stage: str, unit: str, items: int, reused: bool = False,
                seconds: float = 0.0) -> None:
    """Record one finished unit of work, once: a second record of the same unit (a re-run, or the
    same task delivered twice) is ignored by the unique key, also when both race. ``unit`` is
    ``part:start`` or ``part``, where part is the side (src, tgt) or direction (fwd, bwd)."""
    values = dict(job_id=job_id, stage=stage, unit=unit, part=unit.split(":")[0], items=items,
                  reused=int(reused), worker=worker_name()[:128], seconds=float(seconds), finished_at=db_now())
    with session_scope(cfg.db_url) as s:
        s.execute(insert_ignore(s, JobStep, values, ["job_id", "stage", "unit"]))


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

NEXT_STAGE = stages.NEXT_STAGE


def stage_complete(cfg: Config, job_id: int, stage: str) -> bool:
    with session_scope(cfg.db_url) as s:
        if stage == stages.FIRST:
            units = len(stages.stage(stage).units(None, 1))
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
            .values(dispatched=stage, dispatched_at=db_now(), swept_at=None)
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
        if stage == stages.FIRST:  # the sides' sizes are known now: plan every later stage
            plan(cfg, job_id)
        return hand_over(cfg, job_id, stage, following, send)
    except JobCancelled:
        return False


def unit_name(stage: str, args: tuple) -> str:
    """The ``job_steps.unit`` of a task of ``stage`` with ``args`` (after the job id)."""
    return stages.stage(stage).unit_name(args)


# --------------------------------------------------------------------------- leases and stalls

_stop_event: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("miner_stop", default=None)
_lost_event: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("miner_lost", default=None)


def check_stop(job_id: int) -> None:
    """Raise JobCancelled when the lease of the running task saw its job cancelled or failed, or
    UnitTaken when another task took its unit over (this one was taken for lost)."""
    lost = _lost_event.get()
    if lost is not None and lost.is_set():
        raise UnitTaken(f"job {job_id}: another task took this unit over (its lease was not renewed in time)")
    event = _stop_event.get()
    if event is not None and event.is_set():
        raise JobCancelled(f"job {job_id} was cancelled or failed while this task ran")


def unit_recorded(cfg: Config, job_id: int, stage: str, unit: str) -> bool:
    """Whether the unit's completion is recorded (a task delivered again finds its work done)."""
    with session_scope(cfg.db_url) as s:
        return s.scalar(select(func.count(JobStep.id)).where(
            JobStep.job_id == job_id, JobStep.stage == stage, JobStep.unit == unit)) > 0


def _take_lease(cfg: Config, job_id: int, stage: str, unit: str, lost_after: float) -> dt.datetime:
    """Take the unit's lease: a new one, or one not renewed for ``lost_after`` seconds (its task is
    gone). Returns our token (its ``started_at``); raises UnitTaken when a live task holds it."""
    with session_scope(cfg.db_url) as s:
        now = server_now(s)  # the database's clock, not this host's: hosts' clocks disagree
        values = dict(job_id=job_id, stage=stage, unit=unit, worker=worker_name()[:128], started_at=now,
                      heartbeat_at=now)
        inserted = s.execute(insert_ignore(s, JobLease, values, ["job_id", "stage", "unit"])
                             .returning(JobLease.job_id)).first()  # (rowcount is -1 here on psycopg)
        if inserted is not None:
            return now
        taken = s.execute(
            update(JobLease)
            .where(JobLease.job_id == job_id, JobLease.stage == stage, JobLease.unit == unit,
                   JobLease.heartbeat_at < now - dt.timedelta(seconds=lost_after))
            .values(worker=values["worker"], started_at=now, heartbeat_at=now)
        ).rowcount
    if taken != 1:
        raise UnitTaken(f"job {job_id}: {stage} {unit} is being run by another task; this delivery is dropped")
    return now


@contextmanager
def leased(cfg: Config, job_id: int, stage: str, unit: str, interval: float | None = None,
           lost_after: float | None = None):
    """Hold the lease on one unit while the block runs, so that no other task runs it at the same
    time: a thread renews it every ``interval`` seconds (default ``cfg.heartbeat_seconds``). A lease
    not renewed for ``lost_after`` seconds (default ``cfg.lease_seconds``) is lost: :func:`recover`
    sends its unit again, and the task that starts it takes the lease over. Raises UnitTaken when a
    live task holds the lease; the block's :func:`check_stop` raises UnitTaken once another task
    took the lease over, and JobCancelled once the job was cancelled or failed."""
    interval = cfg.heartbeat_seconds if interval is None else interval
    lost_after = cfg.lease_seconds if lost_after is None else lost_after
    mine = _take_lease(cfg, job_id, stage, unit, lost_after)
    key = (JobLease.job_id == job_id, JobLease.stage == stage, JobLease.unit == unit, JobLease.started_at == mine)
    stop = threading.Event()
    job_stopped, lease_lost = threading.Event(), threading.Event()
    tokens = (_stop_event.set(job_stopped), _lost_event.set(lease_lost))

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with session_scope(cfg.db_url) as s:
                    renewed = s.execute(update(JobLease).where(*key).values(heartbeat_at=db_now())).rowcount
                    state = s.scalar(select(Job.state).where(Job.id == job_id))
                if not renewed:
                    lease_lost.set()
                    return
                if state in (JobState.CANCELLED.value, JobState.FAILED.value):
                    job_stopped.set()
            except Exception as exc:  # the database is away for a moment: the task itself will notice
                log.debug("lease heartbeat of job %s %s %s failed: %s", job_id, stage, unit, exc)

    thread = threading.Thread(target=beat, name=f"lease-{job_id}-{stage}-{unit}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        _lost_event.reset(tokens[1])
        _stop_event.reset(tokens[0])
        stop.set()
        thread.join(10)
        try:
            with session_scope(cfg.db_url) as s:
                s.execute(delete(JobLease).where(*key))
        except Exception as exc:  # a stale lease only delays a recovery; never hide the real error
            log.debug("could not release the lease of job %s %s %s: %s", job_id, stage, unit, exc)


def database_now(cfg: Config) -> dt.datetime:
    """The database server's clock: leases, hand-overs and stalls are judged by it, never by the
    clock of the host asking (:func:`miner.runtime.db.db_now`)."""
    with session_scope(cfg.db_url) as s:
        return server_now(s)


def recover(cfg: Config, send, queue_busy=lambda: False, now: dt.datetime | None = None,
            quiet_jobs: bool = True) -> list[str]:
    """Send again, at once, the work of workers that died (run every heartbeat by each worker):

    * a unit whose lease was not renewed for ``cfg.lease_seconds``: its task is gone (the worker was
      killed, its machine preempted). The first caller to remove the stale lease (compare-and-set
      on its heartbeat) sends the unit again, unless its completion is recorded;
    * a job with no live lease and no sign of life for ``cfg.lease_seconds`` while the broker's
      queues are empty: its missing units (lost before their task took a lease) or its hand-over
      (lost after the last unit was recorded) are sent, as :func:`sweep` does for quiet jobs.

    A message of the dead worker that comes back later finds its unit recorded or leased and is
    dropped (:func:`leased`, workers/tasks.py). ``send(job_id, stage, units)`` queues tasks.
    ``quiet_jobs=False``: the stale leases only (one query; the workers check them every heartbeat,
    the quiet jobs less often)."""
    now = now or database_now(cfg)
    cutoff = now - dt.timedelta(seconds=cfg.lease_seconds)
    active = [JobState.QUEUED.value, JobState.RUNNING.value]
    with session_scope(cfg.db_url) as s:
        stale = s.execute(
            select(JobLease.job_id, JobLease.stage, JobLease.unit, JobLease.heartbeat_at, JobLease.worker)
            .join(Job, Job.id == JobLease.job_id)
            .where(Job.state.in_(active), JobLease.heartbeat_at < cutoff)
        ).all()
    actions = []
    for job_id, stage, unit, seen, worker in stale:
        with session_scope(cfg.db_url) as s:
            won = s.execute(delete(JobLease).where(
                JobLease.job_id == job_id, JobLease.stage == stage, JobLease.unit == unit,
                JobLease.heartbeat_at == seen)).rowcount == 1
        if not won or unit_recorded(cfg, job_id, stage, unit):
            continue
        args = [a for a in stage_units(cfg, job_id, stage) if unit_name(stage, a) == unit]
        if args:
            send(job_id, stage, args)
            with session_scope(cfg.db_url) as s:  # a sign of life: the quiet-job check below waits again
                s.execute(update(Job).where(Job.id == job_id).values(swept_at=now))
            age = (now - seen).total_seconds()
            actions.append(f"job {job_id}: {stage} {unit} lost with {worker} (lease not renewed for {age:.0f}s); sent again")
    for action in actions:
        log.warning("%s", action)
    if not quiet_jobs:
        return actions
    return actions + sweep(cfg, send, cfg.lease_seconds, queue_busy, now=now, when_busy=None)


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


def sweep(cfg: Config, send, stall_seconds: float, queue_busy=lambda: False, now: dt.datetime | None = None,
          when_busy: float | None = 10) -> list[str]:
    """Find active jobs with no sign of life for ``stall_seconds`` and send their missing tasks
    again (tasks lost with a killed worker, a restarted broker, or a hand-over that failed to send).

    ``send(job_id, stage, units)`` queues tasks. ``queue_busy()`` says whether the broker still holds
    queued tasks; while it does, a quiet job is probably only waiting its turn, so it is left alone
    unless it has been quiet for ``when_busy`` times ``stall_seconds`` (never, for None). Safe to
    run in every worker at once:
    each stalled job is claimed by one sweeper (compare-and-set on ``jobs.swept_at``). Re-sent
    tasks that were not lost after all only find their unit done. ``now``: the time to judge by
    (default: the database's clock; tests pass a later one instead of waiting)."""
    now = now or database_now(cfg)
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
        if when_busy is None or (now - quiet_since).total_seconds() < when_busy * stall_seconds:
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
    """The arguments (after ``job_id``) of every task of ``stage`` (:meth:`miner.pipeline.stages.Stage.units`)."""
    declared = stages.stage(stage)
    if declared.unit in ("side", "job"):
        return declared.units(None, 1)
    job = load_job(cfg, job_id)
    sides = job_sides(cfg, job)
    return declared.units({name: side.n for name, side in sides.items()}, job_spec(job).shard_size)


def mark_failed(cfg: Config, job_id: int, message: str, exit_code: int = 1) -> None:
    """Mark the job failed (unless it was cancelled) with a one-line reason."""
    with session_scope(cfg.db_url) as s:
        job = s.get(Job, job_id)
        if job is not None and job.state != JobState.CANCELLED.value:
            job.state = JobState.FAILED.value
            job.error = message.strip().splitlines()[0][:2000] if message.strip() else "unknown error"
            job.exit_code = exit_code
            job.finished_at = server_now(s)


def job_sides(cfg: Config, job: Job) -> dict[str, Side]:
    with session_scope(cfg.db_url) as s:
        out = {}
        for side, cid in (("src", job.src_corpus_id), ("tgt", job.tgt_corpus_id)):
            corpus = s.get(Corpus, cid) if cid is not None else None
            if corpus is None or corpus.state != CorpusState.READY.value:
                raise MinerError(f"job {job.id}: the {side} side is not ingested yet; run `miner retry {job.id}`")
            out[side] = Side(side, corpus.id, corpus.key, corpus.n_sentences)
        return out



# --------------------------------------------------------------------------- plan


def plan(cfg: Config, job_id: int) -> dict[str, list[tuple[int, int]]]:
    """Shard both sides and record the size of every stage after the first
    (:meth:`miner.pipeline.stages.Stage.planned`); returns the shard spans per side."""
    job = ensure_active(cfg, job_id)
    sides = job_sides(cfg, job)
    size = job_spec(job).shard_size
    sizes = {name: side.n for name, side in sides.items()}
    for declared in stages.STAGES[1:]:
        set_stage(cfg, job_id, declared.name, declared.planned(sizes, size))
    return {name: shard_spans(n, size) for name, n in sizes.items()}

