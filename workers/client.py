"""What the command line asks of the task queue: send a job's first tasks, ping the workers, and
tell a broker error from others (so that ``miner.cli`` imports no Celery or kombu itself)."""

from __future__ import annotations

from miner import broker, orchestration
from miner.config import Config
from workers.app import use_config
from workers.dispatch import sender


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
