"""Sending a job's tasks on Celery: stages by task name (nothing here imports the tasks), the
queue check and the stall sweeper thread. How and when a stage is handed over is decided in
:mod:`miner.pipeline.orchestration`; this module only gives it a ``send`` that queues Celery tasks."""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery

from miner.pipeline import orchestration
from miner.runtime.config import Config
from miner.pipeline.stages import QUEUES, STAGES

log = logging.getLogger(__name__)

#: The Celery task of each stage, from the stages' declarations (miner/pipeline/stages.py; the tasks are
#: made from the same declarations in workers/tasks.py, their routes in workers/settings.py).
TASK_NAMES = {stage.name: stage.task for stage in STAGES}


def send_stage(app: Celery, job_id: int, stage: str, units: list[tuple]) -> None:
    """Queue one task of ``stage`` per unit (its arguments after the job id)."""
    for args in units:
        app.send_task(TASK_NAMES[stage], args=(job_id, *args))


def sender(app: Celery, job_id: int):
    """The ``send(stage, units)`` callback that :mod:`miner.pipeline.orchestration` hands a stage to."""
    return lambda stage, units: send_stage(app, job_id, stage, units)


def queue_busy(app: Celery) -> bool:
    """True when the broker holds queued tasks (or cannot tell)."""
    from kombu.exceptions import ChannelError

    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in QUEUES:
                try:
                    if channel.queue_declare(queue=name, passive=True).message_count:
                        return True
                except ChannelError:  # the transport drops an empty queue (Redis deletes empty lists)
                    continue
            return False
    except Exception:
        return True


def sweep_once(app: Celery, cfg: Config) -> list[str]:
    return orchestration.sweep(cfg, lambda job_id, stage, units: send_stage(app, job_id, stage, units),
                               cfg.stall_seconds, lambda: queue_busy(app))


def recover_once(app: Celery, cfg: Config, quiet_jobs: bool = True) -> list[str]:
    return orchestration.recover(cfg, lambda job_id, stage, units: send_stage(app, job_id, stage, units),
                                 lambda: queue_busy(app), quiet_jobs=quiet_jobs)


def start_sweeper(app: Celery, cfg: Config) -> threading.Thread:
    """A daemon thread in the worker's main process: every heartbeat, send again the units of dead
    workers (:func:`miner.pipeline.orchestration.recover`: leases not renewed for ``MINER_LEASE_SECONDS``);
    every few seconds, the missing tasks of jobs quiet for ``MINER_STALL_SECONDS``
    (:func:`miner.pipeline.orchestration.sweep`: tasks lost with a restarted broker)."""
    every = max(0.5, cfg.heartbeat_seconds)
    quiet_every = max(every, cfg.lease_seconds / 3)  # jobs quiet with no lease: a few queries per job
    sweep_every = max(1.0, min(30.0, cfg.stall_seconds / 3))

    def loop() -> None:
        next_quiet = time.monotonic() + quiet_every
        next_sweep = time.monotonic() + sweep_every
        while True:
            time.sleep(every)
            try:
                quiet = time.monotonic() >= next_quiet
                if quiet:
                    next_quiet = time.monotonic() + quiet_every
                recover_once(app, cfg, quiet_jobs=quiet)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + sweep_every
                    sweep_once(app, cfg)
            except Exception as exc:  # database or broker away: try again next round
                log.warning("stall sweep failed: %s", str(exc).splitlines()[0] if str(exc) else exc)

    thread = threading.Thread(target=loop, name="miner-sweeper", daemon=True)
    thread.start()
    return thread
