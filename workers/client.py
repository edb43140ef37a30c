"""What the command line asks of the task queue: send a job's first tasks, ping the workers, and
tell a broker error from others (so that ``miner.faces.cli`` imports no Celery or kombu itself)."""

from __future__ import annotations

from miner.pipeline import orchestration
from miner.runtime import broker
from miner.runtime.config import Config, mask_url
from miner.runtime.errors import JobFailed
from miner.workers.app import use_config
from miner.workers.dispatch import sender


def broker_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the broker cannot be reached."""
    from kombu.exceptions import OperationalError as BrokerError

    return (BrokerError, ConnectionError, TimeoutError)


def is_broker_error(exc: BaseException) -> bool:
    from kombu.exceptions import OperationalError as BrokerError

    return isinstance(exc, BrokerError)


def submit(cfg: Config, job_id: int) -> bool:
    """Send a queued job's first tasks; False when they were sent already."""
    app = use_config(cfg)
    return orchestration.hand_over(cfg, job_id, None, "ingest", sender(app, job_id))


def send_or_fail(cfg: Config, job_id: int) -> None:
    """Send the job's first tasks. When the broker cannot be reached, the job is marked failed (not
    left queued, where nothing would ever pick it up and a new submit would call it a duplicate),
    and ``miner retry JOB`` sends it again: raises :class:`JobFailed` saying so."""
    try:
        submit(cfg, job_id)
    except broker_errors() as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = (f"could not reach the broker at {mask_url(cfg.broker_url)}: {detail}; "
                   f"`miner retry {job_id}` sends it again once the broker is up")
        orchestration.mark_failed(cfg, job_id, message)
        raise JobFailed(f"job {job_id}: {message}") from None


def broker_problem(cfg: Config, timeout: float = 2.0) -> str | None:
    """None when the broker accepts a connection, else why not (one line; ``miner serve``'s /healthz)."""
    try:
        app = use_config(cfg)
        if broker.is_embedded_url(cfg.broker_url):
            broker.ensure(cfg.home)
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # any failure means: not reachable
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"cannot reach the broker at {mask_url(cfg.broker_url)}: {detail}"
    return None


def ping(cfg: Config, timeout: float = 1.0) -> list[str]:
    """Names of the workers that answer a ping (empty when none, or the transport cannot broadcast)."""
    try:
        app = use_config(cfg)
        if broker.is_embedded_url(cfg.broker_url):
            broker.ensure(cfg.home)
            if broker.alone(cfg.home):
                return []  # no other process uses this broker: no worker could answer
        replies = app.control.ping(timeout=timeout) or []
        return [name for reply in replies for name in reply]
    except Exception:
        return []
