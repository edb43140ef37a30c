"""Worker processes that ``miner mine`` starts on this machine when no worker is running, and
stops when its job is done (no Celery here: they are ``python -m miner worker`` subprocesses)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time

from miner.runtime.config import Config
from miner.runtime.locks import die_with_parent


def start_workers(cfg: Config, n: int, concurrency: int | None, model: str | None = None,
                  trust_remote_code: bool = False) -> list[subprocess.Popen]:
    """Start ``n`` worker processes, each logging to ``$MINER_HOME/logs/worker-<pid>-<i>.log``;
    ``model``: the job's model, loaded by the pool children while the job is being ingested."""
    procs = []
    env = dict(os.environ, MINER_PARENT_PID=str(os.getpid()))  # miner.workers.hooks watches it
    if model:
        env.update(MINER_PRELOAD_MODEL=model, MINER_PRELOAD_TRUST_REMOTE_CODE="1" if trust_remote_code else "0")
    cfg.log_folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        log = open(cfg.log_folder / f"worker-{os.getpid()}-{i}.log", "ab")
        cmd = [sys.executable, "-m", "miner", "worker", "--loglevel", "WARNING"]
        if concurrency:
            cmd += ["--concurrency", str(concurrency)]
        # Their own session (a Ctrl-C in the terminal reaches `mine`, which stops them), and a
        # cold shutdown (SIGQUIT) from the kernel if `mine` dies without stopping them (kill -9);
        # the worker's own watch of MINER_PARENT_PID kills what is left a few seconds later.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                preexec_fn=functools.partial(die_with_parent, signal.SIGQUIT))
        proc.log_path = log.name
        procs.append(proc)
    return procs


def log_tail(path, lines: int = 15) -> str:
    """The last ``lines`` lines of a worker's log, indented, for an error message."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 20000))
            tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError as exc:
        return f"  ({path}: {exc.strerror})"
    return f"  == {path}\n" + "\n".join("  " + line for line in tail)


def signal_workers(procs: list[subprocess.Popen]) -> None:
    """Ask the workers to stop (a warm shutdown: running tasks finish); does not wait."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)


def stop_workers(procs: list[subprocess.Popen], timeout: float = 30.0, now: bool = False) -> None:
    """Stop the workers, killing the ones (and their pool children) still there after ``timeout``.
    ``now``: a cold shutdown (SIGQUIT: running units are abandoned, not finished; their leases lapse
    and a retry runs them again), for an interrupted ``mine``."""
    if now:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)
    else:
        signal_workers(procs)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
