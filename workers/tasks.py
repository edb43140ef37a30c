"""Thin Celery tasks: each takes ids, calls one :mod:`miner.steps` function, then hands over to
the next stage when its own is complete (:func:`workers.workflows.advance`).

A step that raises marks the job failed (with a one-line reason) and re-raises, so the rest of
the job's canvas stops. A cancelled job raises :class:`JobCancelled` at its next step.
"""

from __future__ import annotations

import logging
import os

from miner import steps
from miner.config import Config
from miner.errors import JobCancelled
from workers.app import app

log = logging.getLogger(__name__)

_config: Config | None = None


def config() -> Config:
    global _config
    if _config is None:
        _config = Config.from_env(threads=int(os.environ.get("MINER_THREADS") or 1))
    return _config


def _run(fn, stage: str, job_id: int, *args):
    from workers.workflows import advance

    cfg = config()
    try:
        result = fn(cfg, job_id, *args)
        advance(cfg, job_id, stage)
        return result
    except JobCancelled as exc:
        log.info("%s", exc)  # the job was cancelled or failed elsewhere: stop quietly
        return None
    except Exception as exc:
        steps.mark_failed(cfg, job_id, f"{fn.__name__}: {exc}", getattr(exc, "exit_code", 1))
        raise


@app.task(name="miner.ingest", acks_late=True)
def ingest(job_id: int, side: str) -> int:
    return _run(steps.ingest, "ingest", job_id, side)


@app.task(name="miner.embed", acks_late=True)
def embed(job_id: int, side: str, start: int, end: int) -> str:
    return _run(steps.embed, "embed", job_id, side, start, end)


@app.task(name="miner.build_index", acks_late=True)
def build_index(job_id: int, side: str) -> str:
    return _run(steps.build_index, "index", job_id, side)


@app.task(name="miner.knn", acks_late=True)
def knn(job_id: int, direction: str, start: int, end: int) -> str:
    return _run(steps.knn, "knn", job_id, direction, start, end)


@app.task(name="miner.score", acks_late=True)
def score(job_id: int, direction: str, start: int, end: int) -> str:
    return _run(steps.score, "score", job_id, direction, start, end)


@app.task(name="miner.finish", acks_late=True)
def finish(job_id: int) -> int:
    return _run(steps.finish, "finish", job_id)
