"""What a worker does when it starts, through Celery's signals (connected when :mod:`miner.workers.app`
is imported, so ``celery -A miner.workers.app worker`` gets them too):

* main process, before the pool starts: files for this user only, the configuration's folders, and
  the worker's registration among the workers of this host (:mod:`miner.runtime.cores`);
* main process, once ready: the stall sweeper (:func:`miner.workers.dispatch.start_sweeper`);
* each pool child: fresh database connections, bounded thread pools (sized again before each task,
  :func:`size_threads`), and the job's model loaded ahead of the first embed task when ``miner
  mine`` said which (``MINER_PRELOAD_MODEL``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading

from celery import signals

from miner.runtime import cores
from miner.runtime.config import available_cores, limit_threads
from miner.runtime.locks import watch_parent

log = logging.getLogger(__name__)

PARENT_GRACE = 3.0  # seconds a worker whose `miner mine` died gets for its cold shutdown
_worker_app = None  # the app of the worker this process belongs to (set before the pool forks)


@signals.celeryd_init.connect
def _prepare_worker(sender=None, instance=None, conf=None, options=None, **kwargs) -> None:
    """Files for this user only, the configuration's folders, and how the pool processes size their
    threads: ``MINER_THREADS`` when given, else a share of this host's cores (:mod:`miner.runtime.cores`)."""
    global _worker_app
    from miner.io.artifacts import make_private

    make_private()  # database, logs, artifacts: for this user only
    parent = os.environ.get("MINER_PARENT_PID")
    if parent and parent.isdigit():
        # Started by `miner mine`: when it is gone (kill -9 included), the kernel's SIGQUIT starts a
        # cold shutdown (miner.runtime.local_workers); PARENT_GRACE seconds later SIGKILL ends this
        # worker and its pool children, whatever the shutdown waits on.
        watch_parent(int(parent), PARENT_GRACE)
    concurrency = int((options or {}).get("concurrency") or available_cores())
    app = getattr(instance, "app", None)
    if app is not None:
        _worker_app = app
        if not os.environ.get("MINER_THREADS"):
            cores.register(concurrency, app.miner_config.cores_dir)
        app.miner_config = dataclasses.replace(app.miner_config, threads=task_threads())
        app.miner_config.ensure_dirs()


_threads_now: int | None = None


def task_threads() -> int:
    """The threads of one task process: ``MINER_THREADS`` when given (``miner worker --threads``),
    else this host's cores divided among the task processes of its live workers."""
    fixed = os.environ.get("MINER_THREADS")
    folder = _worker_app.miner_config.cores_dir if _worker_app is not None else None
    return int(fixed) if fixed else cores.threads_per_slot(available_cores(), folder)


def size_threads(app) -> int:
    """Before each task: take this process's share of the cores now (workers come and go); the
    thread pools and a loaded model follow when it changed."""
    global _threads_now
    threads = task_threads()
    if threads != _threads_now:
        from miner.pipeline import steps

        limit_threads(threads)
        steps.set_threads(threads)
        app.miner_config = dataclasses.replace(app.miner_config, threads=threads)
        if _threads_now is not None:
            log.info("now %d thread(s) per task process (%s)", threads, "MINER_THREADS" if os.environ.get(
                "MINER_THREADS") else f"{available_cores()} cores shared by the task processes of this host's workers")
        _threads_now = threads
    return threads


@signals.worker_shutdown.connect
def _unregister(sender=None, **kwargs) -> None:
    """A clean shutdown leaves no registration behind (:func:`miner.runtime.cores.unregister`)."""
    cores.unregister()


@signals.celeryd_after_setup.connect
def _remember_name(sender=None, instance=None, **kwargs) -> None:
    """Pool children inherit the node name; steps record it ("workers seen" in `miner status`)."""
    if sender:
        os.environ["MINER_WORKER_NAME"] = str(sender)


@signals.worker_ready.connect
def _start_sweeper(sender=None, **kwargs) -> None:
    """The main process of every worker watches for stalled jobs (tasks lost with a dead worker or
    a restarted broker) and sends their missing tasks again."""
    from miner.workers.dispatch import start_sweeper

    app = getattr(sender, "app", None) or _worker_app
    start_sweeper(app, app.miner_config)


@signals.worker_process_init.connect
def _init_child(**kwargs) -> None:
    from miner.runtime.db import dispose_engines

    dispose_engines()  # never share pooled connections across fork
    # A pool child never outlives its worker's main process (it would hold a unit's lease and a
    # share of the cores for nothing): SIGKILL to itself once its parent is gone.
    watch_parent(os.getppid(), 0.0, poll=0.5)
    if _worker_app is not None:
        size_threads(_worker_app)
    model = os.environ.get("MINER_PRELOAD_MODEL")
    if model and _worker_app is not None:
        # `miner mine` knows its job's model: load it while the job is still being ingested.
        cfg = _worker_app.miner_config
        trust = os.environ.get("MINER_PRELOAD_TRUST_REMOTE_CODE") == "1"  # the job's --trust-remote-code

        def preload() -> None:
            from miner.pipeline import steps
            from miner.embedding.encoders import trusting

            try:
                with trusting(trust):
                    steps.model_for(cfg, model)
            except Exception as exc:  # the embed task will report it properly
                log.warning("could not preload model %s: %s", model, exc)
            steps.warm_imports()

        threading.Thread(target=preload, name="miner-preload", daemon=True).start()
