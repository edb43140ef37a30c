"""Thin Celery tasks: each takes ids, runs one unit of its stage (:data:`miner.pipeline.steps.STEP_FUNCTIONS`)
under a lease, then hands over to the next stage when its own is complete
(:func:`miner.pipeline.orchestration.advance`, sending by task name through :mod:`miner.workers.dispatch`).

Failures: a cancelled (or already failed) job stops quietly, and so does a task whose unit is
recorded already or leased by another live task (a message delivered twice, or a dead worker's
message that came back after :func:`miner.pipeline.orchestration.recover` sent its unit again). A transient error -- the database or
the broker away for a moment -- is retried by Celery (``autoretry_for`` with exponential backoff and
jitter, up to 8 times); if even the retry cannot be sent, Celery drops the message and the job's
stall sweep sends the task again later. Any other error, or a transient one that outlasts the
retries, marks the job failed with a one-line reason and exit code (:meth:`StageTask.on_failure`),
and ``miner retry`` resumes it.
"""

from __future__ import annotations

import logging

from miner.pipeline import orchestration
from miner.embedding.encoders import trusting
from miner.runtime.errors import JobCancelled
from miner.pipeline.jobs import get_job
from miner.pipeline.stages import STAGES, Stage
from miner.pipeline.steps import STEP_FUNCTIONS
from miner.workers.app import app
from miner.workers.dispatch import sender
from miner.workers.hooks import size_threads

log = logging.getLogger(__name__)

TRANSIENT_RETRIES = 8


class TransientError(Exception):
    """A lost connection to the database or the broker, not an error in the data or the code."""


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


class StageTask(app.Task):
    """One unit of a stage. Transient errors are retried by Celery; on failure the job is marked failed."""

    acks_late = True
    autoretry_for = (TransientError,)
    max_retries = TRANSIENT_RETRIES
    retry_backoff = True  # 1, 2, 4, ... seconds
    retry_backoff_max = 60
    retry_jitter = True
    stage = ""

    def run_unit(self, job_id: int, *args):
        size_threads(self.app)  # this process's share of the host's cores, now
        cfg = self.app.miner_config
        fn = STEP_FUNCTIONS[self.stage]
        try:
            unit = orchestration.unit_name(self.stage, args)
            if orchestration.unit_recorded(cfg, job_id, self.stage, unit):
                # Delivered again (a dead worker's message back after its unit was sent anew): drop it.
                log.info("job %s %s %s: already done; this delivery is dropped", job_id, self.stage, unit)
                orchestration.advance(cfg, job_id, self.stage, sender(self.app, job_id))
                return None
            beat = max(0.5, min(cfg.heartbeat_seconds, cfg.stall_seconds / 3))
            trust = self.stage == "embed" and bool((get_job(cfg, job_id).options or {}).get("trust_remote_code"))
            with trusting(trust), orchestration.leased(cfg, job_id, self.stage, unit, interval=beat):
                result = fn(cfg, job_id, *args)
            orchestration.advance(cfg, job_id, self.stage, sender(self.app, job_id))
            return result
        except JobCancelled as exc:
            log.info("%s", exc)  # the job was cancelled or failed elsewhere: stop quietly
            return None
        except Exception as exc:
            if is_transient(exc):
                raise TransientError(f"{fn.__name__}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
            raise

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        when = getattr(einfo.exception, "when", None)
        log.warning("job %s %s %s: %s; retrying in %ss", args[0] if args else "?", self.stage, tuple(args[1:]),
                    exc, f"{when:.1f}" if isinstance(when, (int, float)) else when)

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if not args:
            return
        job_id = args[0]
        message = str(exc) if isinstance(exc, TransientError) else f"{STEP_FUNCTIONS[self.stage].__name__}: {exc}"
        try:
            orchestration.mark_failed(self.app.miner_config, job_id, message, getattr(exc, "exit_code", 1))
        except Exception as cannot_mark:
            log.error("job %s: cannot mark it failed (%s)", job_id, cannot_mark)


def _stage_task(stage: Stage):
    """The Celery task of one declared stage: it runs one unit (its arguments after the job id)."""

    def run(self, job_id: int, *args):
        return self.run_unit(job_id, *args)

    run.__name__ = run.__qualname__ = stage.name
    run.__doc__ = f"One unit of the {stage.name} stage ({stage.unit}): {stage.run}."
    return app.task(name=stage.task, bind=True, base=StageTask, stage=stage.name)(run)


#: The task of each stage, made from the stages' declarations (miner/pipeline/stages.py).
TASKS = {stage.name: _stage_task(stage) for stage in STAGES}
