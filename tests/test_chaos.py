"""Preemptible machines (issue 16): whole workers killed with SIGKILL three times, at three stages, on
Redis + PostgreSQL. Their units are sent again as soon as their leases are not renewed
(MINER_LEASE_SECONDS), not after the stall sweep: the sweep is set to 10 minutes here, so a job that
finishes within the waits below was recovered through its leases. The export is byte-identical to
the undisturbed run's and every unit is recorded exactly once."""

from __future__ import annotations

import re
import time

import pytest

from .conftest import start_workers, stop_workers
from .test_reliability import JobWatch, _check_same_export, _kill9, _submit

pytestmark = pytest.mark.slow

LEASE = {"MINER_STALL_SECONDS": "600", "MINER_HEARTBEAT_SECONDS": "0.5", "MINER_LEASE_SECONDS": "3"}


def test_three_whole_workers_killed_at_three_stages(tmp_path, cluster_env, deu_cluster):
    assert deu_cluster["result"].returncode == 0
    home, env = tmp_path / "home", dict(cluster_env, **LEASE)
    job_id = _submit(home, env, deu_cluster["case"])
    watch = JobWatch(env, job_id)
    workers = start_workers(tmp_path, home, env, 1)
    started = time.monotonic()
    try:
        for n, stage in enumerate(("embed", "knn", "finish")):
            watch.wait(lambda: watch.running(stage) >= 1, 240, f"a running {stage} unit")
            _kill9(workers[-1])  # the worker and its pool child, mid-unit
            assert watch.state() == "running" and watch.running(stage) >= 1  # its lease outlives it
            workers += start_workers(tmp_path, home, env, 1, first=n + 1)
        watch.wait(lambda: watch.state() == "done", 240, "the job to finish")
    finally:
        stop_workers([w for w in workers if w.poll() is None])
        watch.close()
    assert time.monotonic() - started < 600  # never waited for the stall sweep
    _check_same_export(tmp_path, home, env, job_id, deu_cluster)
    logs = "".join((tmp_path / f"worker{i}.log").read_text(errors="replace") for i in range(1, 4))
    for n, stage in enumerate(("embed", "knn", "finish")):  # w<n> was killed during <stage>
        assert re.search(rf"job {job_id}: {stage} \S+ lost with w{n}@test \(lease not renewed for \d+s\); sent again",
                         logs), logs[-3000:]
