"""How a job moves through its stages on Celery, without chords.

``submit`` sends the two ingest tasks. Every task, after its unit of work is recorded, calls
``advance``: when its stage is complete, the one caller that wins ``steps.claim_stage`` plans the
job (after ingest) and sends every task of the next stage -- embed per shard of both sides, an
index per side, kNN and scoring per query shard in both directions, then finish. The database is
the only source of truth; the result backend is not used for flow control (a chord on a database
result backend polls, and a group inside a chain may start its successor early).
"""

from __future__ import annotations

from miner import steps
from miner.config import Config
from workers import tasks

TASKS = {
    "ingest": tasks.ingest,
    "embed": tasks.embed,
    "index": tasks.build_index,
    "knn": tasks.knn,
    "score": tasks.score,
    "finish": tasks.finish,
}


def send_stage(stage: str, units: list[tuple], job_id: int) -> None:
    for args in units:
        TASKS[stage].si(job_id, *args).apply_async()


def submit(job_id: int, cfg: Config | None = None) -> bool:
    """Send a queued job's first tasks; False when they were sent already."""
    return steps.hand_over(cfg or tasks.config(), job_id, None, "ingest",
                           lambda stage, units: send_stage(stage, units, job_id))


def advance(cfg: Config, job_id: int, stage: str) -> bool:
    """Send the next stage when ``stage`` is complete (once per job, whoever calls)."""
    return steps.advance(cfg, job_id, stage, lambda following, units: send_stage(following, units, job_id))
