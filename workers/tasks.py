"""Thin Celery tasks: each takes ids, calls one :mod:`miner.steps` function, returns ids.

A step that raises marks the job failed (with a one-line reason) and re-raises, so the rest of
the job's canvas stops. A cancelled job raises :class:`JobCancelled` at its next step.
"""

from __future__ import annotations

import os

from miner import steps
from miner.config import Config
from miner.errors import JobCancelled
from workers.app import app

_config: Config | None = None


def config() -> Config:
    global _config
    if _config is None:
        _config = Config.from_env(threads=int(os.environ.get("MINER_THREADS") or 1))
    return _config


def _run(fn, job_id: int, *args):
    cfg = config()
    try:
        return fn(cfg, job_id, *args)
    except JobCancelled:
        raise
    except Exception as exc:
        steps.mark_failed(cfg, job_id, f"{fn.__name__}: {exc}", getattr(exc, "exit_code", 1))
        raise


@app.task(name="miner.ingest", acks_late=True)
def ingest(job_id: int, side: str) -> int:
    return _run(steps.ingest, job_id, side)


@app.task(name="miner.plan", bind=True, acks_late=True)
def plan(self, job_id: int):
    from workers.workflows import mining_canvas

    spans = _run(steps.plan, job_id)
    return self.replace(mining_canvas(job_id, spans))


@app.task(name="miner.embed", acks_late=True)
def embed(job_id: int, side: str, start: int, end: int) -> str:
    return _run(steps.embed, job_id, side, start, end)


@app.task(name="miner.build_index", acks_late=True)
def build_index(job_id: int, side: str) -> str:
    return _run(steps.build_index, job_id, side)


@app.task(name="miner.knn", acks_late=True)
def knn(job_id: int, direction: str, start: int, end: int) -> str:
    return _run(steps.knn, job_id, direction, start, end)


@app.task(name="miner.score", acks_late=True)
def score(job_id: int, direction: str, start: int, end: int) -> str:
    return _run(steps.score, job_id, direction, start, end)


@app.task(name="miner.finish", acks_late=True)
def finish(job_id: int) -> int:
    return _run(steps.finish, job_id)
