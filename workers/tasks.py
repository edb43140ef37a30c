"""Thin Celery tasks: each takes ids, calls one :mod:`miner.steps` function under a lease, then
hands over to the next stage when its own is complete (:func:`workers.workflows.advance`).

Failures: a cancelled (or already failed) job stops quietly. A transient error -- the database or
the broker away for a moment -- retries the task with exponential backoff; if even the retry
cannot be sent, the job's stall sweep sends the task again later. Any other error marks the job
failed with a one-line reason and exit code, and ``miner retry`` resumes it.
"""

from __future__ import annotations

import logging
import os

from celery.exceptions import Retry

from miner import steps
from miner.config import Config
from miner.errors import JobCancelled
from workers.app import app

log = logging.getLogger(__name__)

_config: Config | None = None

TRANSIENT_RETRIES = 8


def config() -> Config:
    global _config
    if _config is None:
        _config = Config.from_env(threads=int(os.environ.get("MINER_THREADS") or 1))
    return _config


def is_transient(exc: BaseException) -> bool:
    """Lost connections to the database or the broker, not errors in the data or the code."""
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError, DisconnectionError, BrokerError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    try:
        import redis

        return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))
    except ImportError:
        return False


def _trusts_remote_code(cfg: Config, job_id: int) -> bool:
    """The job's --trust-remote-code: whether its model may run code of its own when loaded here."""
    from miner.jobs import get_job

    return bool((get_job(cfg, job_id).options or {}).get("trust_remote_code"))


def _run(task, fn, stage: str, job_id: int, *args):
    from workers.workflows import advance

    from miner.encoders import trusting

    cfg = config()
    try:
        beat = max(0.5, min(steps.HEARTBEAT_SECONDS, cfg.stall_seconds / 3))
        trust = stage == "embed" and _trusts_remote_code(cfg, job_id)
        with trusting(trust), steps.leased(cfg, job_id, stage, steps.unit_name(stage, args), interval=beat):
            result = fn(cfg, job_id, *args)
        advance(cfg, job_id, stage)
        return result
    except JobCancelled as exc:
        log.info("%s", exc)  # the job was cancelled or failed elsewhere: stop quietly
        return None
    except Exception as exc:
        if is_transient(exc) and task.request.retries < TRANSIENT_RETRIES:
            countdown = min(60, 2 ** task.request.retries)
            log.warning("job %s %s %s: %s; retrying in %ss", job_id, stage, args, str(exc).splitlines()[0], countdown)
            try:
                raise task.retry(countdown=countdown, exc=exc)
            except Retry:
                raise
            except Exception as cannot_retry:
                log.error("job %s %s %s: cannot schedule a retry (%s); the stall sweep will send it again",
                          job_id, stage, args, cannot_retry)
                return None
        try:
            steps.mark_failed(cfg, job_id, f"{fn.__name__}: {exc}", getattr(exc, "exit_code", 1))
        except Exception as cannot_mark:
            log.error("job %s: cannot mark it failed (%s)", job_id, cannot_mark)
        raise


@app.task(name="miner.ingest", bind=True, acks_late=True)
def ingest(self, job_id: int, side: str) -> int:
    return _run(self, steps.ingest, "ingest", job_id, side)


@app.task(name="miner.embed", bind=True, acks_late=True)
def embed(self, job_id: int, side: str, start: int, end: int) -> str:
    return _run(self, steps.embed, "embed", job_id, side, start, end)


@app.task(name="miner.build_index", bind=True, acks_late=True)
def build_index(self, job_id: int, side: str) -> str:
    return _run(self, steps.build_index, "index", job_id, side)


@app.task(name="miner.knn", bind=True, acks_late=True)
def knn(self, job_id: int, direction: str, start: int, end: int) -> str:
    return _run(self, steps.knn, "knn", job_id, direction, start, end)


@app.task(name="miner.score", bind=True, acks_late=True)
def score(self, job_id: int, direction: str, start: int, end: int) -> str:
    return _run(self, steps.score, "score", job_id, direction, start, end)


@app.task(name="miner.finish", bind=True, acks_late=True)
def finish(self, job_id: int) -> int:
    return _run(self, steps.finish, "finish", job_id)
