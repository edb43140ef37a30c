"""Preemptible machines (issue 16): whole workers killed with SIGKILL three times, at three stages, on
Redis + PostgreSQL. Their units are sent again as soon as their leases are not renewed
(MINER_LEASE_SECONDS), not after the stall sweep: the sweep is set to 10 minutes here, so a job that
finishes within the waits below was recovered through its leases. The export is byte-identical to
the undisturbed run's and every unit is recorded exactly once."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import func, select

from miner.runtime.db import JobLease, JobStep

from .conftest import SHORT_LEASE, start_workers, stop_workers
from .test_reliability import JobWatch, _check_same_export, _kill9, _submit

pytestmark = pytest.mark.slow

LEASE = {"MINER_STALL_SECONDS": "600", **SHORT_LEASE}


def _cut_short(watch: JobWatch, stage: str) -> int:
    """Units of ``stage`` leased but not recorded (a unit recorded just before the kill leaves its
    lease behind too, and has nothing to be sent again)."""
    with watch.engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(JobLease)
            .where(JobLease.job_id == watch.job_id, JobLease.stage == stage,
                   JobLease.unit.not_in(select(JobStep.unit).where(JobStep.job_id == watch.job_id,
                                                                   JobStep.stage == stage)))).scalar()


def test_three_whole_workers_killed_at_three_stages(tmp_path, cluster_env, deu_cluster):
    assert deu_cluster["result"].returncode == 0
    home, env = tmp_path / "home", dict(cluster_env, **LEASE)
    job_id = _submit(home, env, deu_cluster["case"])
    watch = JobWatch(env, job_id)
    workers = start_workers(tmp_path, home, env, 1)
    started = time.monotonic()
    interrupted = []  # (stage, number of the worker killed in the middle of a unit of it)
    try:
        for stage in ("embed", "knn", "finish"):
            for _attempt in range(10):  # a unit may end between the look and the kill: then again
                watch.wait(lambda: watch.running(stage) >= 1 or watch.state() == "done", 240,
                           f"a running {stage} unit")
                if watch.state() == "done":
                    break
                killed = len(workers) - 1
                _kill9(workers[-1])  # the worker and its pool child
                held = _cut_short(watch, stage)  # a lease that outlives its worker, its unit not recorded
                workers += start_workers(tmp_path, home, env, 1, first=len(workers))
                if held:
                    interrupted.append((stage, killed))
                    break
        watch.wait(lambda: watch.state() == "done", 240, "the job to finish")
    finally:
        stop_workers([w for w in workers if w.poll() is None])
        watch.close()
    assert time.monotonic() - started < 600  # never waited for the stall sweep
    _check_same_export(tmp_path, home, env, job_id, deu_cluster)
    assert [stage for stage, _ in interrupted][:2] == ["embed", "knn"]  # finish may end before its kill
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker*.log"))
    for stage, n in interrupted:  # each cut-short unit was sent again through its stale lease
        assert re.search(rf"job {job_id}: {stage} \S+ lost with w{n}@test \(lease not renewed for \d+s\); sent again",
                         logs), logs[-3000:]
