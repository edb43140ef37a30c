"""Celery settings derived from a :class:`miner.runtime.config.Config` (for ``app.config_from_object``)."""

from __future__ import annotations

from miner.runtime import broker
from miner.runtime.config import DEFAULT_QUEUE, Config
from miner.pipeline.stages import STAGES


class CelerySettings:
    """Celery settings derived from a :class:`Config`."""

    def __init__(self, cfg: Config) -> None:
        self.broker_url = cfg.broker_url
        self.result_backend = cfg.result_backend
        self.task_default_queue = DEFAULT_QUEUE
        # Each stage's tasks go to its declared queue (miner/pipeline/stages.py; embed has one of its own).
        self.task_routes = {stage.task: {"queue": stage.queue} for stage in STAGES if stage.queue != DEFAULT_QUEUE}
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
        # Stages hand over through the database (miner.pipeline.orchestration), not through task results.
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
