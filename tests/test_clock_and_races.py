"""Issue 28's cluster defects, on SQLite and on a real PostgreSQL server:

* leases, heartbeats and stalls are judged by the database server's clock, so a worker whose own
  clock runs ahead takes no live unit over and re-sends nothing of a live job;
* two identical submissions at the same moment make one job (a partial unique index on the live
  jobs' request key, migration 0004), and ``--force`` still mines again beside it.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading

import pytest
from sqlalchemy import func, select

from miner.pipeline import corpora, jobs, orchestration, steps
from miner.runtime import db
from miner.runtime.config import Config
from miner.runtime.db import Job, JobLease, session_scope
from miner.embedding.encoders import resolve_model
from miner.runtime.errors import UnitTaken
from miner.pipeline.jobs import JobOptions, create_job
from miner.runtime.migrate import ensure_schema, upgrade

from .conftest import TATOEBA, read_lines

SKEW = dt.timedelta(seconds=15)


@pytest.fixture(params=["sqlite", "postgresql"])
def cfg(request, home, monkeypatch):
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        name = "t_clock_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-40:]
        monkeypatch.setenv("MINER_DB_URL", server.create_database(name))
    monkeypatch.setenv("MINER_LEASE_SECONDS", "10")
    monkeypatch.setenv("MINER_HEARTBEAT_SECONDS", "2")
    config = Config.from_env()
    config.ensure_dirs()
    if request.param == "postgresql":
        upgrade(config.db_url)  # `miner db upgrade`: a server database is never created implicitly
    ensure_schema(config.db_url)
    return config


def _job(cfg, tmp_path) -> int:
    src, tgt = tmp_path / "a.de", tmp_path / "b.en"
    src.write_text("Hallo Welt.\n", encoding="utf-8")
    tgt.write_text("Hello world.\n", encoding="utf-8")
    options = JobOptions(src_lang="de", tgt_lang="en", model="muse", model_key=resolve_model("muse").key)
    return create_job(cfg, src, tgt, options)


def _run_ahead(monkeypatch, by: dt.timedelta) -> None:
    """This process's clock runs ``by`` ahead of the other hosts' (as a worker whose NTP failed):
    every module's view of this host's time moves, the database server's does not."""
    true_now = db.utcnow

    def ahead():
        return true_now() + by

    for module in (db, orchestration, corpora, jobs, steps):
        monkeypatch.setattr(module, "utcnow", ahead, raising=False)


def test_a_worker_whose_clock_runs_ahead_takes_no_live_unit_over(cfg, tmp_path, monkeypatch):
    """A unit's lease was renewed a moment ago by its (live) task. A worker whose clock is 15 s ahead
    (lease_seconds 10) must see it as live: its delivery of the unit is dropped, recover() re-sends
    nothing and leaves the lease, and the job's hand-over a moment ago is not a stall. Judged by
    each host's clock (before), it took the unit over and the live task aborted."""
    job_id = _job(cfg, tmp_path)
    assert orchestration.hand_over(cfg, job_id, None, "ingest", lambda stage, units: None)
    token = orchestration._take_lease(cfg, job_id, "ingest", "src", cfg.lease_seconds)  # the live task

    _run_ahead(monkeypatch, SKEW)
    with pytest.raises(UnitTaken):
        orchestration._take_lease(cfg, job_id, "ingest", "src", cfg.lease_seconds)
    sent = []
    actions = orchestration.recover(cfg, lambda job, stage, units: sent.append((stage, list(units))),
                                    queue_busy=lambda: False)
    assert actions == [] and sent == []
    assert orchestration.sweep(cfg, lambda job, stage, units: sent.append(stage), cfg.lease_seconds,
                               when_busy=None) == []
    assert sent == []
    with session_scope(cfg.db_url) as s:
        lease = s.execute(select(JobLease).where(JobLease.job_id == job_id)).scalar_one()
        assert lease.started_at == token  # still the live task's
    running = jobs.job_status(cfg, job_id)["running"]  # `miner status` ages by the database's clock too
    assert [(r["unit"], r["heartbeat_age_s"] < 5) for r in running] == [("src", True)]


def test_the_database_clock_is_the_one_that_judges(cfg, tmp_path):
    """A lease not renewed for lease_seconds by the database's clock is still taken over (the fix
    must not make dead tasks' units unrecoverable), and rows get the database's time."""
    job_id = _job(cfg, tmp_path)
    with session_scope(cfg.db_url) as s:
        now = db.server_now(s)
        s.add(JobLease(job_id=job_id, stage="ingest", unit="tgt", worker="dead@host",
                       started_at=now - dt.timedelta(seconds=60), heartbeat_at=now - dt.timedelta(seconds=11)))
        created = s.scalar(select(Job.created_at).where(Job.id == job_id))
    assert abs((now - created).total_seconds()) < 60
    taken = orchestration._take_lease(cfg, job_id, "ingest", "tgt", cfg.lease_seconds)
    assert taken > now
    with session_scope(cfg.db_url) as s:
        assert s.scalar(select(JobLease.worker).where(JobLease.unit == "tgt")) != "dead@host"


def _submit(cfg, src, tgt, **extra):
    from miner.faces.api import JobRequest

    options = JobRequest(src=str(src), tgt=str(tgt), src_lang="de", tgt_lang="en").model_dump()
    options.pop("src"), options.pop("tgt")
    options.update(extra)
    warnings = []
    job_id, existing = jobs.prepare_job(cfg, src, tgt, warn=warnings.append, open_db=lambda: cfg, **options)
    return job_id, existing, warnings


def test_identical_submissions_at_the_same_moment_make_one_job(cfg, tmp_path, monkeypatch):
    """Two submitters both look for a duplicate before either inserts (a barrier holds them there):
    one job is created and the other submission gets it. Before, both created a job and both mined."""
    src, tgt = tmp_path / "a.de", tmp_path / "b.en"
    src.write_text("\n".join(read_lines(TATOEBA / "tatoeba.deu-eng.deu")[:20]) + "\n", encoding="utf-8")
    tgt.write_text("\n".join(read_lines(TATOEBA / "tatoeba.deu-eng.eng")[:20]) + "\n", encoding="utf-8")
    barrier = threading.Barrier(2, timeout=60)
    real = jobs.find_duplicate

    def both_look_first(*args):
        found = real(*args)
        barrier.wait()
        return found

    monkeypatch.setattr(jobs, "find_duplicate", both_look_first)
    results, errors = [], []

    def submit():
        try:
            results.append(_submit(cfg, src, tgt))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len({job_id for job_id, _, _ in results}) == 1
    assert sorted(existing for _, existing, _ in results) == [False, True]
    joined = next(w for _, existing, w in results if existing)
    assert any("already mines these files" in line for line in joined)
    with session_scope(cfg.db_url) as s:
        assert s.scalar(select(func.count(Job.id))) == 1

    # Later submissions find it as before; --force mines again beside it; a retry of a cancelled
    # twin while the other is live is allowed (it runs beside it, as asked).
    monkeypatch.setattr(jobs, "find_duplicate", real)
    first = results[0][0]
    assert _submit(cfg, src, tgt)[:2] == (first, True)
    forced, existing, _ = _submit(cfg, src, tgt, force=True)
    assert forced != first and not existing
    jobs.cancel_job(cfg, first)
    assert _submit(cfg, src, tgt)[:2] == (forced, True)  # the newest live one
    jobs.reset_for_retry(cfg, first)
    with session_scope(cfg.db_url) as s:
        live = s.scalars(select(Job.id).where(Job.state.in_(db.LIVE_STATES))).all()
    assert first in live

    # A retry of a cancelled job while an identical one holds the live key: it runs beside it, keyless.
    jobs.cancel_job(cfg, forced)
    holder, raced = jobs.claim_job(cfg, src, tgt, _options(cfg, first), "k2")
    jobs.cancel_job(cfg, holder)
    twin, raced = jobs.claim_job(cfg, src, tgt, _options(cfg, first), "k2")
    assert not raced
    jobs.reset_for_retry(cfg, holder)  # twin holds "k2"
    with session_scope(cfg.db_url) as s:
        keys = dict(s.execute(select(Job.id, Job.live_key).where(Job.id.in_([holder, twin]))).all())
        states = dict(s.execute(select(Job.id, Job.state).where(Job.id.in_([holder, twin]))).all())
    assert keys == {holder: None, twin: "k2"} and states == {holder: "queued", twin: "queued"}


def _options(cfg, job_id):
    from miner.pipeline.spec import job_spec

    return job_spec(jobs.load_job(cfg, job_id))


def test_migration_0004_keeps_one_live_job_per_request(home):
    """0003 -> 0004 on a database where the race already happened (two live jobs, one key): the
    newest keeps the key, the older runs on without; 0004 -> 0003 drops the column, keeps the rows."""
    from miner.runtime.migrate import current_revision, downgrade

    cfg = Config.from_env()
    cfg.ensure_dirs()
    upgrade(cfg.db_url, "0003")
    path = cfg.home / "miner.db"
    with sqlite3.connect(path) as conn:
        for job_id, state, key in ((1, "running", "k"), (2, "queued", "k"), (3, "done", "k"), (4, "queued", None)):
            conn.execute("INSERT INTO jobs (id, state, src_path, tgt_path, src_lang, tgt_lang, model, options, "
                         "attempt, request_key, created_at) VALUES (?, ?, 'a', 'b', 'de', 'en', 'muse', '{}', 1, ?, "
                         "'2026-12-01')", (job_id, state, key))
    upgrade(cfg.db_url, "0004")
    assert current_revision(cfg.db_url) == "0004"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id, live_key FROM jobs ORDER BY id").fetchall() == \
            [(1, None), (2, "k"), (3, None), (4, None)]
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE jobs SET live_key = 'k' WHERE id = 1")
    downgrade(cfg.db_url, "0003")
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
        assert "live_key" not in columns and conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (4,)
