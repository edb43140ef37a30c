"""The Celery app, configured once from :class:`miner.config.Config` (env vars ``MINER_*``).

Start a worker with ``miner worker`` (or ``celery -A workers.app worker -Q miner,embed``).
"""

from __future__ import annotations

import logging
import os

from celery import Celery, signals

import workers.transport  # noqa: F401 - registers the miner+socket:// transport (the embedded broker)
from miner import broker
from miner.config import DEFAULT_QUEUE, EMBED_QUEUE, Config, available_cores

log = logging.getLogger(__name__)


class CelerySettings:
    """Celery settings derived from a :class:`Config` (passed to ``app.config_from_object``)."""

    def __init__(self, cfg: Config) -> None:
        self.broker_url = cfg.broker_url
        self.result_backend = cfg.result_backend
        self.task_default_queue = DEFAULT_QUEUE
        self.task_routes = {"miner.embed": {"queue": EMBED_QUEUE}}
        self.task_serializer = "json"
        self.result_serializer = "json"
        self.accept_content = ["json"]
        # Steps are idempotent, so a task whose worker died is safe to run again.
        self.task_acks_late = True
        self.task_reject_on_worker_lost = True
        self.worker_prefetch_multiplier = 1
        self.broker_connection_retry_on_startup = True
        self.worker_hijack_root_logger = False
        self.result_expires = 7 * 24 * 3600
        self.result_backend_always_retry = True
        # Stages hand over through the database (workers.workflows), not through task results.
        self.task_ignore_result = True
        self.database_engine_options = {"connect_args": {"timeout": 60}} if cfg.result_backend.startswith("db+sqlite") else {}
        if cfg.broker_url.startswith("filesystem://"):
            folder = cfg.broker_folder
            self.broker_transport_options = {
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                "processed_folder": str(folder / "processed"),
                "control_folder": str(folder / "control"),
                "store_processed": False,
                "polling_interval": 0.1,
            }
        elif cfg.broker_url.startswith(("redis", f"{broker.SCHEME}+")):
            # Longer than the slowest shard, so a running task is not redelivered to another worker.
            self.broker_transport_options = {"visibility_timeout": 6 * 3600}
            if broker.is_embedded_url(cfg.broker_url):
                # BRPOP returns every 0.2 s instead of 1 s: a worker told to stop leaves its consumer
                # loop that much sooner; the server is on this machine, so the extra calls cost nothing.
                self.broker_transport_options["polling_interval"] = 0.2


def make_app(cfg: Config | None = None) -> Celery:
    os.umask(0o077)  # database, logs, artifacts: for this user only (also under `celery -A workers.app`)
    cfg = cfg or Config.from_env()
    cfg.ensure_dirs()
    celery_app = Celery("miner", include=["workers.tasks"])
    celery_app.config_from_object(CelerySettings(cfg))
    celery_app.miner_config = cfg
    return celery_app


app = make_app()


def use_config(cfg: Config) -> Celery:
    """Point the app at ``cfg``'s broker when it was made for another one (a process that changes
    MINER_HOME after importing this module, as the tests do); returns the app."""
    if app.miner_config.broker_url != cfg.broker_url:
        app.close()
        if "amqp" in app.__dict__:
            app.amqp._producer_pool = None
        app.conf.update(vars(CelerySettings(cfg)))
        app.miner_config = cfg
    return app


@signals.celeryd_init.connect
def _remember_concurrency(sender=None, conf=None, options=None, **kwargs) -> None:
    """Size each child's thread pools: the cores given to this worker divided by its concurrency."""
    cores = available_cores()
    concurrency = (options or {}).get("concurrency") or cores
    if not os.environ.get("MINER_THREADS"):
        os.environ["MINER_THREADS"] = str(max(1, cores // int(concurrency)))


@signals.celeryd_after_setup.connect
def _remember_name(sender=None, instance=None, **kwargs) -> None:
    """Pool children inherit the node name; steps record it ("workers seen" in `miner status`)."""
    if sender:
        os.environ["MINER_WORKER_NAME"] = str(sender)


@signals.worker_ready.connect
def _start_sweeper(sender=None, **kwargs) -> None:
    """The main process of every worker watches for stalled jobs (tasks lost with a dead worker or
    a restarted broker) and sends their missing tasks again."""
    from workers.tasks import config
    from workers.workflows import start_sweeper

    start_sweeper(config())


@signals.worker_process_init.connect
def _init_child(**kwargs) -> None:
    from miner.db import dispose_engines

    dispose_engines()  # never share pooled connections across fork
    limit_threads(int(os.environ.get("MINER_THREADS") or 1))
    model = os.environ.get("MINER_PRELOAD_MODEL")
    if model:
        # `miner mine` knows its job's model: load it while the job is still being ingested.
        import threading

        trust = os.environ.get("MINER_PRELOAD_TRUST_REMOTE_CODE") == "1"  # the job's --trust-remote-code

        def preload() -> None:
            from miner import steps
            from miner.encoders import trusting
            from workers.tasks import config

            try:
                with trusting(trust):
                    steps.model_for(config(), model)
            except Exception as exc:  # the embed task will report it properly
                log.warning("could not preload model %s: %s", model, exc)

        threading.Thread(target=preload, name="miner-preload", daemon=True).start()


def limit_threads(threads: int) -> None:
    """One bounded thread pool per process for BLAS, torch and FAISS (no oversubscription)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except Exception:  # threadpoolctl finds nothing to limit: fine
        pass
    try:
        import torch

        torch.set_num_threads(threads)
    except Exception:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except Exception:
        pass
