"""How a job moves through its stages on Celery, without chords.

``submit`` sends the two ingest tasks. Every task, after its unit of work is recorded, calls
``advance``: when its stage is complete, the one caller that wins ``steps.claim_stage`` plans the
job (after ingest) and sends every task of the next stage -- embed per shard of both sides, an
index per side, kNN and scoring per query shard in both directions, then finish. The database is
the only source of truth; the result backend is not used for flow control (a chord on a database
result backend polls, and a group inside a chain may start its successor early).
"""

from __future__ import annotations

import logging
import threading
import time

from miner import steps
from miner.config import Config
from workers import tasks

log = logging.getLogger(__name__)

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
    from workers.app import use_config

    if cfg is not None:
        use_config(cfg)
    return steps.hand_over(cfg or tasks.config(), job_id, None, "ingest",
                           lambda stage, units: send_stage(stage, units, job_id))


def advance(cfg: Config, job_id: int, stage: str) -> bool:
    """Send the next stage when ``stage`` is complete (once per job, whoever calls)."""
    return steps.advance(cfg, job_id, stage, lambda following, units: send_stage(following, units, job_id))


def queue_busy() -> bool:
    """True when the broker holds queued tasks (or cannot tell)."""
    from kombu.exceptions import ChannelError

    from miner.config import DEFAULT_QUEUE, EMBED_QUEUE
    from workers.app import app

    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in (DEFAULT_QUEUE, EMBED_QUEUE):
                try:
                    if channel.queue_declare(queue=name, passive=True).message_count:
                        return True
                except ChannelError:  # the transport drops an empty queue (Redis deletes empty lists)
                    continue
            return False
    except Exception:
        return True


def sweep_once(cfg: Config) -> list[str]:
    return steps.sweep(cfg, lambda job_id, stage, units: send_stage(stage, units, job_id),
                       cfg.stall_seconds, queue_busy)


def start_sweeper(cfg: Config) -> threading.Thread:
    """A daemon thread in the worker's main process: every few seconds, re-send the missing tasks
    of stalled jobs (see miner.steps.sweep)."""
    interval = max(1.0, min(30.0, cfg.stall_seconds / 3))

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                sweep_once(cfg)
            except Exception as exc:  # database or broker away: try again next round
                log.warning("stall sweep failed: %s", str(exc).splitlines()[0] if str(exc) else exc)

    thread = threading.Thread(target=loop, name="miner-sweeper", daemon=True)
    thread.start()
    return thread
