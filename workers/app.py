"""The Celery app, configured once from :class:`miner.runtime.config.Config` (env vars ``MINER_*``).

Start a worker with ``miner worker`` (or ``celery -A miner.workers.app worker -Q miner,embed``).
Importing this module has no side effect beyond reading the environment: the worker's folders,
umask and thread sizing are set when a worker starts (:mod:`miner.workers.hooks`).

``app.miner_config`` is the one configuration of the process: tasks read it, a worker sizes its
``threads`` when it starts, and :func:`use_config` re-points it.
"""

from __future__ import annotations

import logging
import warnings

from celery import Celery
from celery.exceptions import SecurityWarning

import miner.workers.hooks  # noqa: F401 - connects the worker's signal handlers
import miner.workers.transport  # noqa: F401 - registers the miner+socket:// transport (the embedded broker)
from miner.runtime.config import Config
from miner.workers.settings import CelerySettings


class _NoDefaultHostWarning(logging.Filter):
    """kombu warns "No hostname was supplied" on every connection to a broker URL without a host
    (``filesystem://``, ``miner+socket:///...``), where there is nothing to supply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No hostname was supplied")


logging.getLogger("kombu.connection").addFilter(_NoDefaultHostWarning())

# Celery warns in every worker log when the worker runs as root ("absolutely not recommended",
# `--uid`). What it guards against is a root worker that unpickles messages; these workers accept
# JSON only (miner.workers.settings), run only this package's tasks, and keep their files private to
# their user (miner.io.artifacts.make_private). Containers and CI run as root by default, and a user
# who wants another uid runs the worker as that user; the warning said nothing actionable there.
warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges",
                        category=SecurityWarning)


def make_app(cfg: Config | None = None) -> Celery:
    cfg = cfg or Config.from_env()
    celery_app = Celery("miner", include=["miner.workers.tasks"])
    celery_app.config_from_object(CelerySettings(cfg))
    celery_app.miner_config = cfg
    return celery_app


app = make_app()


def use_config(cfg: Config) -> Celery:
    """Point the app at ``cfg`` (a process that changes MINER_HOME after importing this module, as
    the tests do, or a command with its own configuration); returns the app."""
    if app.miner_config.broker_url != cfg.broker_url:
        app.close()
        if "amqp" in app.__dict__:
            app.amqp._producer_pool = None
        app.conf.update(vars(CelerySettings(cfg)))
    app.miner_config = cfg
    return app
