"""The steps of a job run in-process (no Celery): sharded results equal one-shot mining, re-runs
never duplicate, and a second job reuses the corpora, embeddings and kNN of the first."""

from __future__ import annotations

import datetime as dt
import random
import time

import numpy as np
import pytest
from sqlalchemy import delete, func, insert, select, update

from miner.core import mining
from miner.pipeline import corpora, orchestration, steps
from miner.runtime.config import Config
from miner.runtime.db import Candidate, Corpus, JobLease, Sentence, session_scope, utcnow
from miner.embedding.encoders import encode, load_model, resolve_model
from miner.io.artifacts import Artifacts
from miner.io.export import export_pairs
from miner.pipeline.jobs import JobOptions, create_job, job_status
from miner.runtime.migrate import ensure_schema

from .conftest import DISTRACTORS, TATOEBA, read_lines, read_tsv


@pytest.fixture(scope="module")
def muse():
    return load_model(resolve_model("muse"), threads=2)


@pytest.fixture
def cfg(home):
    config = Config.from_env()
    config.ensure_dirs()
    ensure_schema(config.db_url)
    return config


def small_case(folder):
    de = read_lines(TATOEBA / "tatoeba.deu-eng.deu")[:300]
    en = read_lines(TATOEBA / "tatoeba.deu-eng.eng")[:300][::-1] + read_lines(DISTRACTORS)[:200]
    src, tgt = folder / "src.de", folder / "tgt.en"
    src.write_text("\n".join(de) + "\n", encoding="utf-8")
    tgt.write_text("\n".join(en) + "\n", encoding="utf-8")
    return src, tgt


STEP_FUNCTIONS = steps.STEP_FUNCTIONS


def run_job(cfg, src, tgt, seed=0, redeliver=0.0, sent=None, **overrides) -> int:
    """Run a job's tasks in-process through the same stage hand-over the workers use: a local list
    stands in for the broker, tasks run in random order, and a share ``redeliver`` of them runs
    twice (a broker delivering a task again)."""
    options = dict(src_lang="de", tgt_lang="en", model="muse", model_key=resolve_model("muse").key,
                   k=4, margin="ratio", retrieval="max", threshold=1.06, shard_size=64)
    options.update(overrides)
    job_id = create_job(cfg, src, tgt, JobOptions(**options))
    queue = []

    def send(stage, units):
        queue.extend((stage, args) for args in units)
        if sent is not None:
            sent.append((stage, len(units)))

    assert orchestration.hand_over(cfg, job_id, None, "ingest", send)
    assert not orchestration.hand_over(cfg, job_id, None, "ingest", send)  # a second submit sends nothing
    rng = random.Random(seed)
    while queue:
        stage, args = queue.pop(rng.randrange(len(queue)))
        for _ in range(2 if rng.random() < redeliver else 1):
            STEP_FUNCTIONS[stage](cfg, job_id, *args)
            orchestration.advance(cfg, job_id, stage, send)
    return job_id


def texts(cfg, corpus_id):
    with session_scope(cfg.db_url) as s:
        return list(s.scalars(select(Sentence.text).where(Sentence.corpus_id == corpus_id).order_by(Sentence.idx)))


def candidates(cfg, job_id):
    with session_scope(cfg.db_url) as s:
        rows = s.execute(
            select(Candidate.src_idx, Candidate.tgt_idx, Candidate.score).where(Candidate.job_id == job_id)
        ).all()
    return sorted(rows)


@pytest.mark.slow
@pytest.mark.parametrize("margin, retrieval", [("ratio", "max"), ("distance", "intersect"), ("absolute", "fwd")])
def test_sharded_job_equals_one_shot_mining(cfg, tmp_path, muse, margin, retrieval):
    src, tgt = small_case(tmp_path)
    job_id = run_job(cfg, src, tgt, margin=margin, retrieval=retrieval)
    job = orchestration.load_job(cfg, job_id)
    x = encode(muse, texts(cfg, job.src_corpus_id))
    y = encode(muse, texts(cfg, job.tgt_corpus_id))
    want_src, want_tgt, want_scores, _ = mining.mine(x, y, k=4, margin=margin, retrieval=retrieval)
    got = candidates(cfg, job_id)
    want = sorted(zip(want_src.tolist(), want_tgt.tolist(), want_scores.tolist()))
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in want]
    np.testing.assert_allclose([c for *_, c in got], [c for *_, c in want], atol=1e-5)
    if retrieval == "max":
        # Recovered pairs are the real translations: line i of the German side is line 299 - i of the English side.
        de_lines = texts(cfg, job.src_corpus_id)
        rows = read_tsv(_export(cfg, job_id, tmp_path))
        gold = {(d, e) for d, e in zip(read_lines(TATOEBA / "tatoeba.deu-eng.deu")[:300],
                                       read_lines(TATOEBA / "tatoeba.deu-eng.eng")[:300])}
        hits = sum((s, t) in gold for _, s, t in rows)
        assert hits >= 0.9 * len(de_lines)


def test_stages_hand_over_once_in_any_order_with_redelivered_tasks(cfg, tmp_path, muse):
    src, tgt = small_case(tmp_path)
    ordered = run_job(cfg, src, tgt, seed=1)
    sent = []
    shuffled = run_job(cfg, src, tgt, seed=2, redeliver=0.5, sent=sent)
    # Every stage was sent exactly once, with one task per shard (5 src + 8 tgt shards of 64).
    assert sent == [("ingest", 2), ("embed", 13), ("index", 2), ("knn", 13), ("score", 13), ("finish", 1)]
    a, b = candidates(cfg, ordered), candidates(cfg, shuffled)
    assert [(s_, t) for s_, t, _ in a] == [(s_, t) for s_, t, _ in b]
    np.testing.assert_allclose([c for *_, c in a], [c for *_, c in b], rtol=1e-6)
    status = job_status(cfg, shuffled)
    assert status["state"] == "done"
    assert all(stage["done"] == stage["total"] for stage in status["stages"])


def test_each_direction_means_are_stored_once_and_reused(cfg, tmp_path, muse):
    """The score step reads one means file per direction (written by the first score task of the
    direction) instead of every kNN shard of the other direction; a second job reuses it."""
    src, tgt = small_case(tmp_path)
    job_id = run_job(cfg, src, tgt, seed=3)
    job = orchestration.load_job(cfg, job_id)
    sides = orchestration.job_sides(cfg, job)
    means = sorted(cfg.artifacts.rglob("means-*.npy"))
    assert len(means) == 2  # fwd and bwd
    for direction in ("fwd", "bwd"):
        query, target = (sides[name] for name in orchestration.DIRECTIONS[direction])
        knn_files = [steps._knn_path(Artifacts(cfg.artifacts), job, query, target, 4, s, e)
                     for s, e in orchestration.shard_spans(query.n, 64)]
        want = np.concatenate([mining.knn_mean(np.load(f)["sims"]) for f in knn_files])
        stored = np.load(knn_files[0].with_name(f"means-{64:010d}-{query.n:010d}.npy"))
        np.testing.assert_array_equal(stored, want)
    stamps = [m.stat().st_mtime_ns for m in means]
    again = run_job(cfg, src, tgt, seed=4, threshold=1.2)  # same neighbours: the means are reused as they are
    assert again != job_id and [m.stat().st_mtime_ns for m in means] == stamps
    assert len(candidates(cfg, again)) == len(candidates(cfg, job_id))


def test_cancelled_job_hands_over_nothing(cfg, tmp_path, muse):
    from miner.pipeline.jobs import cancel_job, reset_for_retry

    src, tgt = small_case(tmp_path)
    options = dict(src_lang="de", tgt_lang="en", model="muse", model_key=resolve_model("muse").key, shard_size=64)
    job_id = create_job(cfg, src, tgt, JobOptions(**options))
    sent = []
    send = lambda stage, units: sent.append(stage)  # noqa: E731
    assert orchestration.hand_over(cfg, job_id, None, "ingest", send)
    corpora.ingest(cfg, job_id, "src")
    corpora.ingest(cfg, job_id, "tgt")
    cancel_job(cfg, job_id)
    assert not orchestration.advance(cfg, job_id, "ingest", send)
    assert sent == ["ingest"]
    # A retry starts the hand-over again from ingest; finished units count at once.
    reset_for_retry(cfg, job_id)
    assert orchestration.hand_over(cfg, job_id, None, "ingest", send)
    assert orchestration.advance(cfg, job_id, "ingest", send)
    assert not orchestration.advance(cfg, job_id, "ingest", send)
    assert sent == ["ingest", "ingest", "embed"]


def _export(cfg, job_id, folder):
    out = folder / f"job{job_id}.tsv"
    export_pairs(cfg, job_id, str(out), fmt="tsv")
    return out


def test_rerun_does_not_duplicate_and_second_job_reuses(cfg, tmp_path, muse):
    src, tgt = small_case(tmp_path)
    job_id = run_job(cfg, src, tgt)
    before = candidates(cfg, job_id)
    first_export = _export(cfg, job_id, tmp_path).read_bytes()
    assert len(before) > 250

    # Every task of the finished job again: nothing is recomputed or duplicated.
    spans = orchestration.plan(cfg, job_id)
    for side in orchestration.SIDES:
        corpora.ingest(cfg, job_id, side)
        for start, end in spans[side]:
            steps.embed(cfg, job_id, side, start, end)
    steps.finish(cfg, job_id)
    steps.finish(cfg, job_id)
    assert candidates(cfg, job_id) == before
    assert _export(cfg, job_id, tmp_path).read_bytes() == first_export
    status = job_status(cfg, job_id)
    for stage in status["stages"]:
        assert stage["done"] == stage["total"], stage

    # A second job on the same files with another margin reuses corpora, embeddings, index and kNN.
    job2 = run_job(cfg, src, tgt, margin="distance", threshold=0.0)
    with session_scope(cfg.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Corpus)) == 2
        assert s.scalar(select(func.count()).select_from(Sentence)) == 300 + 500
    stages = {st["stage"]: st for st in job_status(cfg, job2)["stages"]}
    assert stages["ingest"]["reused"] == 2
    assert stages["embed"]["reused"] == stages["embed"]["total"] == 5 + 8
    assert stages["index"]["reused"] == 2
    assert stages["knn"]["reused"] == stages["knn"]["total"]
    assert stages["score"]["reused"] == 0


def test_ingest_counts_skips(cfg, tmp_path, muse):
    src = tmp_path / "messy.de"
    src.write_bytes(
        b"Ich habe Hunger.\n\n   \nIch habe  Hunger.\r\n" + b"x" * 1_000_000 + b"\n"
        + b"Kaputt \xff\xfe hier.\n" + "Das ist gut.\tJa.\n".encode()
    )
    tgt = tmp_path / "clean.en"
    tgt.write_text("I am hungry.\nThat is good. Yes.\n", encoding="utf-8")
    job_id = run_job(cfg, src, tgt)
    status = job_status(cfg, job_id)
    assert status["corpora"]["src"]["sentences"] == 2
    assert status["corpora"]["src"]["skipped"] == {"blank": 2, "duplicates": 1, "too_long": 1, "decode_errors": 1, "bad_rows": 0}
    job = orchestration.load_job(cfg, job_id)
    with session_scope(cfg.db_url) as s:
        rows = s.execute(select(Sentence.line_no, Sentence.text).where(Sentence.corpus_id == job.src_corpus_id)
                         .order_by(Sentence.idx)).all()
    assert [tuple(r) for r in rows] == [(0, "Ich habe Hunger."), (6, "Das ist gut. Ja.")]
    rows = read_tsv(_export(cfg, job_id, tmp_path))
    assert {(s, t) for _, s, t in rows} == {("Ich habe Hunger.", "I am hungry."), ("Das ist gut. Ja.", "That is good. Yes.")}


def test_sweep_resends_lost_tasks_and_lost_hand_overs(cfg, tmp_path, muse):
    """Tasks lost with a dead worker (or a restarted broker) are sent again once the job has been
    quiet for the stall time -- once, whoever sweeps -- and a stage whose hand-over was lost is
    handed over."""

    src, tgt = small_case(tmp_path)
    options = dict(src_lang="de", tgt_lang="en", model="muse", model_key=resolve_model("muse").key, shard_size=64)
    job_id = create_job(cfg, src, tgt, JobOptions(**options))
    sent = []
    assert orchestration.hand_over(cfg, job_id, None, "ingest", lambda stage, units: None)  # both tasks lost
    resend = lambda job, stage, units: sent.append((job, stage, list(units)))  # noqa: E731
    # The sweeps judge by a given clock, 2 s on from now, instead of waiting for it.
    assert orchestration.sweep(cfg, resend, stall_seconds=60) == []  # not quiet long enough
    later = utcnow() + dt.timedelta(seconds=2)
    assert orchestration.sweep(cfg, resend, stall_seconds=1, queue_busy=lambda: True, now=later) == []  # waiting its turn
    actions = orchestration.sweep(cfg, resend, stall_seconds=1, now=later)
    assert sent == [(job_id, "ingest", [("src",), ("tgt",)])] and "2 missing ingest" in actions[0]
    assert orchestration.sweep(cfg, resend, stall_seconds=1, now=later) == []  # just swept: quiet again only later

    corpora.ingest(cfg, job_id, "src")
    corpora.ingest(cfg, job_id, "tgt")  # ... and its hand-over to embed is lost (broker down)
    sent.clear()
    later = max(utcnow(), later) + dt.timedelta(seconds=2)  # the clock never goes back
    orchestration.sweep(cfg, resend, stall_seconds=1, now=later)
    assert [(stage, len(units)) for _, stage, units in sent] == [("embed", 13)]
    job = orchestration.load_job(cfg, job_id)
    assert job.dispatched == "embed"

    # A lease with a fresh heartbeat is a sign of life: no sweep while a task runs ...
    sent.clear()
    later = max(utcnow(), later) + dt.timedelta(seconds=10)
    with orchestration.leased(cfg, job_id, "embed", "src:0", interval=3600):
        with session_scope(cfg.db_url) as s:  # its heartbeat thread has just beaten (by the given clock)
            s.execute(update(JobLease).where(JobLease.job_id == job_id)
                      .values(heartbeat_at=later - dt.timedelta(seconds=0.5)))
        assert orchestration.sweep(cfg, resend, stall_seconds=1, now=later) == []
    assert sent == []
    # ... and once it is gone, the same sweep sends the missing tasks.
    assert orchestration.sweep(cfg, resend, stall_seconds=1, now=later)
    assert [(stage, len(units)) for _, stage, units in sent] == [("embed", 13)]


def _embed_stage_job(cfg, tmp_path):
    """A job ingested and handed over to embed (its 13 embed tasks sent nowhere)."""
    src, tgt = small_case(tmp_path)
    options = dict(src_lang="de", tgt_lang="en", model="muse", model_key=resolve_model("muse").key, shard_size=64)
    job_id = create_job(cfg, src, tgt, JobOptions(**options))
    assert orchestration.hand_over(cfg, job_id, None, "ingest", lambda stage, units: None)
    for side in ("src", "tgt"):
        corpora.ingest(cfg, job_id, side)
    assert orchestration.advance(cfg, job_id, "ingest", lambda stage, units: None)
    return job_id


def _lease_row(cfg, job_id, unit, age_s):
    with session_scope(cfg.db_url) as s:
        s.execute(insert(JobLease).values(job_id=job_id, stage="embed", unit=unit, worker="dead@host",
                                          started_at=utcnow() - dt.timedelta(seconds=age_s + 60),
                                          heartbeat_at=utcnow() - dt.timedelta(seconds=age_s)))


def test_one_task_per_unit_and_a_dead_task_s_unit_is_taken_over(cfg, tmp_path):
    """A unit runs in one task at a time: a second delivery finds the lease held by a live task and
    stops (UnitTaken); a lease not renewed for lease_seconds is taken over; a task whose lease was
    taken over stops at its next chunk."""
    from miner.runtime.errors import UnitTaken

    job_id = _embed_stage_job(cfg, tmp_path)
    with orchestration.leased(cfg, job_id, "embed", "src:0", interval=0.05):
        with pytest.raises(UnitTaken):
            with orchestration.leased(cfg, job_id, "embed", "src:0"):
                pass
        orchestration.check_stop(job_id)  # still ours
    _lease_row(cfg, job_id, "src:64", age_s=cfg.lease_seconds + 1)  # its worker died
    with orchestration.leased(cfg, job_id, "embed", "src:64", interval=0.05):
        with session_scope(cfg.db_url) as s:
            lease = s.execute(select(JobLease).where(JobLease.unit == "src:64")).scalar_one()
            assert lease.worker != "dead@host" and (utcnow() - lease.heartbeat_at).total_seconds() < 5
            # Now another task takes it over in turn (this one looked dead: a long pause, a lost network).
            s.execute(update(JobLease).where(JobLease.unit == "src:64")
                      .values(worker="other@host", started_at=utcnow() + dt.timedelta(seconds=1)))
        assert orchestration._lost_event.get().wait(60)  # its next heartbeat finds the lease gone ...
        with pytest.raises(UnitTaken):
            orchestration.check_stop(job_id)  # ... and the task stops at its next chunk
    with session_scope(cfg.db_url) as s:  # the other task's lease is left alone
        assert s.execute(select(JobLease.worker).where(JobLease.unit == "src:64")).scalar_one() == "other@host"


def test_recover_resends_a_dead_worker_s_units_at_once(cfg, tmp_path):
    """recover() sends a unit whose lease was not renewed for lease_seconds again, once whoever
    calls; not a unit with a live lease, nor a recorded one; and, when the queues are empty, the
    units of a quiet job that no task holds (lost before their task took a lease)."""
    job_id = _embed_stage_job(cfg, tmp_path)
    sent = []
    resend = lambda job, stage, units: sent.append((job, stage, list(units)))  # noqa: E731
    _lease_row(cfg, job_id, "src:0", age_s=cfg.lease_seconds + 5)   # dead
    _lease_row(cfg, job_id, "src:64", age_s=1)                      # alive
    _lease_row(cfg, job_id, "src:128", age_s=cfg.lease_seconds + 5)  # dead, but its unit was recorded
    orchestration.record_step(cfg, job_id, "embed", "src:128", 64)
    # A delivery of a recorded unit is dropped (workers/tasks.py).
    assert orchestration.unit_recorded(cfg, job_id, "embed", "src:128")
    assert not orchestration.unit_recorded(cfg, job_id, "embed", "src:0")
    actions = orchestration.recover(cfg, resend, queue_busy=lambda: True)
    assert sent == [(job_id, "embed", [("src", 0, 64)])]
    assert "src:0 lost with dead@host" in actions[0] and len(actions) == 1
    assert orchestration.recover(cfg, resend, queue_busy=lambda: True) == []  # sent once
    assert len(sent) == 1
    with session_scope(cfg.db_url) as s:  # the stale leases are gone, the live one stays
        assert set(s.scalars(select(JobLease.unit).where(JobLease.job_id == job_id))) == {"src:64"}

    # Later, with no live lease and nothing queued: the units no task holds are sent.
    with session_scope(cfg.db_url) as s:
        s.execute(delete(JobLease).where(JobLease.job_id == job_id))
    sent.clear()
    later = utcnow() + dt.timedelta(seconds=cfg.lease_seconds + 5)
    assert orchestration.recover(cfg, resend, queue_busy=lambda: True, now=later) == []  # tasks queued: wait
    assert orchestration.recover(cfg, resend, queue_busy=lambda: False, now=later)
    assert [(stage, len(units)) for _, stage, units in sent] == [("embed", 12)]  # 13 less the recorded one


def test_cancel_stops_a_running_task_at_its_next_chunk(cfg, tmp_path):
    """The lease heartbeat of a running task sees its job cancelled; the task stops at its next
    chunk of work (check_stop) instead of finishing the shard. Another job's task runs on."""

    from miner.runtime.errors import JobCancelled
    from miner.pipeline.jobs import cancel_job

    src, tgt = small_case(tmp_path)
    options = dict(src_lang="de", tgt_lang="en", model="muse", model_key=resolve_model("muse").key)
    doomed = create_job(cfg, src, tgt, JobOptions(**options))
    other = create_job(cfg, src, tgt, JobOptions(**options))
    with orchestration.leased(cfg, doomed, "embed", "src:0", interval=0.1):
        orchestration.check_stop(doomed)  # running: goes on
        cancel_job(cfg, doomed)
        assert orchestration._stop_event.get().wait(60)  # the heartbeat sees the cancel ...
        with pytest.raises(JobCancelled):
            orchestration.check_stop(doomed)  # ... and the task stops at its next chunk
    with orchestration.leased(cfg, other, "embed", "src:0", interval=0.1):
        with session_scope(cfg.db_url) as s:
            first = s.scalar(select(JobLease.heartbeat_at).where(JobLease.job_id == other))
        deadline = time.monotonic() + 60
        while True:  # wait until the heartbeat has looked at the other job at least once
            with session_scope(cfg.db_url) as s:
                if s.scalar(select(JobLease.heartbeat_at).where(JobLease.job_id == other)) > first:
                    break
            assert time.monotonic() < deadline, "the lease heartbeat never beat"
            time.sleep(0.02)
        orchestration.check_stop(other)  # the other job is untouched
    orchestration.check_stop(doomed)  # outside a task nothing is checked


@pytest.mark.slow
@pytest.mark.parametrize("index", ["ivf", "ivfpq"])
def test_ivf_jobs_find_the_pairs_exact_search_finds(cfg, tmp_path, muse, index):
    """A job searched through an IVF (or IVF-PQ) index built from float16 shards finds at least 95%
    of the pairs the exact float32 job finds; its artifacts do not collide with the exact job's."""
    src, tgt = small_case(tmp_path)
    exact = run_job(cfg, src, tgt, threshold=1.05, shard_size=128)
    approx = run_job(cfg, src, tgt, threshold=1.05, shard_size=128, index=index, storage="auto")
    a = {(s_, t) for s_, t, score in candidates(cfg, exact) if score >= 1.05}
    b = {(s_, t) for s_, t, score in candidates(cfg, approx) if score >= 1.05}
    assert len(a) > 250
    assert len(a & b) >= 0.95 * len(a)
    art = Artifacts(cfg.artifacts)
    job = orchestration.load_job(cfg, approx)
    side = orchestration.job_sides(cfg, job)["tgt"]
    assert steps.storage_dtype(job, side) == "float16"
    stored = np.load(art.embeddings(side.key, job.options["model_key"], 0, 128, "float16"))
    assert stored.dtype == np.float16 and stored.shape == (128, 512)
    spec = steps.side_index(job, side, 512)
    assert spec.kind == index and art.index(side.key, job.options["model_key"], spec.name).exists()


def test_status_read_in_plain_sql_agrees_with_the_orm(cfg, tmp_path, muse):
    """`miner status` reads the rows with plain DBAPI queries (miner.pipeline.status, no ORM): per
    stage its units and items, the candidates, the leases and the units still missing are what the
    ORM and the orchestration find in the same rows, for a job put back to running its knn stage
    with two units undone and one of them leased."""
    import json

    from miner.runtime.db import Job, JobStage, JobStep

    src, tgt = small_case(tmp_path)
    job_id = run_job(cfg, src, tgt)
    with session_scope(cfg.db_url) as s:
        knn_units = sorted(s.scalars(select(JobStep.unit).where(JobStep.job_id == job_id, JobStep.stage == "knn")))
        assert len(knn_units) >= 4
        s.execute(delete(JobStep).where(JobStep.job_id == job_id, JobStep.stage == "knn",
                                        JobStep.unit.in_(knn_units[:2])))
        s.execute(update(Job).where(Job.id == job_id).values(state="running", dispatched="knn", finished_at=None))
        s.add(JobLease(job_id=job_id, stage="knn", unit=knn_units[0], worker="w@test"))
    with session_scope(cfg.db_url) as s:
        done = dict(s.execute(select(JobStep.stage, func.count()).where(JobStep.job_id == job_id)
                              .group_by(JobStep.stage)).all())
        items = dict(s.execute(select(JobStep.stage, func.sum(JobStep.items)).where(JobStep.job_id == job_id)
                               .group_by(JobStep.stage)).all())
        planned = dict(s.execute(select(JobStage.stage, JobStage.units).where(JobStage.job_id == job_id)).all())
        stored = s.scalar(select(func.count()).select_from(Candidate).where(Candidate.job_id == job_id))
        n_src = s.scalar(select(Corpus.n_sentences).join(Job, Job.src_corpus_id == Corpus.id).where(Job.id == job_id))

    status = job_status(cfg, job_id)
    json.dumps(status)  # JSON-ready as it is
    assert status["state"] == "running" and status["finished_at"] is None
    by_stage = {st["stage"]: st for st in status["stages"]}
    assert {stage: st["done"] for stage, st in by_stage.items() if st["done"]} == done
    assert {stage: st["items_done"] for stage, st in by_stage.items() if st["done"]} == items
    assert {stage: by_stage[stage]["total"] for stage in planned} == planned
    assert by_stage["knn"]["done"] == by_stage["knn"]["total"] - 2
    assert status["candidates_stored"] == stored > 100
    assert status["corpora"]["src"]["sentences"] == n_src == 300
    missing = [orchestration.unit_name("knn", args) for args in orchestration.missing_units(cfg, job_id, "knn")]
    assert status["missing"] == {"knn": missing} and sorted(missing) == knn_units[:2]
    [lease] = status["running"]
    assert (lease["stage"], lease["unit"], lease["worker"]) == ("knn", knn_units[0], "w@test")
    assert 0 <= lease["heartbeat_age_s"] < 60  # the database's clock, read the same way as it was written
    assert status["stalled"] is None and status["threshold"]["value"] == 1.06
