"""The status of a job, as ``miner status`` and ``GET /jobs/ID`` show it, read with plain SQL.

``miner status --json`` is what scripts and dashboards poll while workers run on the same
machine. It is read over a plain DBAPI connection (:mod:`miner.runtime.dbapi`), so a call does
not import SQLAlchemy's ORM: on two cores shared with PostgreSQL and two busy workers that import
alone made a call take 1.3 s (bench/service_scale.py). The rows are the ORM's tables
(:mod:`miner.runtime.db`); ``tests/test_pipeline.py`` checks the answer against the rows written
by the pipeline. No SQLAlchemy and no numpy here.
"""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from miner.runtime.config import Config
from miner.runtime.dbapi import Connection, as_datetime, as_json, connect
from miner.runtime.errors import JobNotFound
from miner.pipeline import stages
from miner.pipeline.spec import JobOptions
from miner.pipeline.threshold import threshold_status

_JOB_COLUMNS = ("id", "state", "src_path", "tgt_path", "src_lang", "tgt_lang", "model", "options",
                "src_corpus_id", "tgt_corpus_id", "error", "exit_code", "n_candidates", "attempt",
                "dispatched", "threshold_info", "created_at", "started_at", "finished_at")
_JSON = {"options", "threshold_info"}
_TIMES = {"created_at", "started_at", "finished_at"}


def latest_job_id(cfg: Config) -> int:
    """The newest job's id (JobNotFound when there is none)."""
    with connect(cfg.db_url) as db:
        job_id = db.one("SELECT max(id) FROM jobs")[0]
    if job_id is None:
        raise JobNotFound("no jobs yet; start one with `miner mine` or `miner submit`")
    return int(job_id)


def _load_job(db: Connection, job_id: int) -> SimpleNamespace:
    row = db.one(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
    if row is None:
        raise JobNotFound(f"no job {job_id}; `miner jobs` lists the jobs")
    values = dict(zip(_JOB_COLUMNS, row))
    for name in _JSON:
        values[name] = as_json(values[name])
    for name in _TIMES:
        values[name] = as_datetime(values[name])
    values["options"] = values["options"] or {}
    return SimpleNamespace(**values)


def job_status(cfg: Config, job_id: int) -> dict:
    """Everything ``miner status`` shows, as a JSON-ready dict."""
    with connect(cfg.db_url) as db:
        job = _load_job(db, job_id)
        planned = {stage: (units, items, as_json(parts)) for stage, units, items, parts in db.rows(
            "SELECT stage, units, items, parts FROM job_stages WHERE job_id = ?", (job_id,))}
        rows = [(stage, part, units, items, reused, as_datetime(first), as_datetime(last), seconds)
                for stage, part, units, items, reused, first, last, seconds in db.rows(
                    "SELECT stage, part, count(id), sum(items), sum(reused), min(finished_at), max(finished_at),"
                    " sum(seconds) FROM job_steps WHERE job_id = ? GROUP BY stage, part", (job_id,))]
        computed = {
            stage: (int(items or 0), as_datetime(first), as_datetime(last), float(seconds or 0))
            for stage, items, first, last, seconds in db.rows(
                "SELECT stage, sum(items), min(finished_at), max(finished_at), sum(seconds) FROM job_steps"
                " WHERE job_id = ? AND reused = 0 GROUP BY stage", (job_id,))
        }
        workers = [
            {"name": name, "units": int(units), "last_seen": _iso(as_datetime(last))}
            for name, units, last in db.rows(
                "SELECT worker, count(id), max(finished_at) FROM job_steps WHERE job_id = ?"
                " GROUP BY worker ORDER BY worker", (job_id,))
        ]
        sides = {}
        corpora = {}
        for side, cid in (("src", job.src_corpus_id), ("tgt", job.tgt_corpus_id)):
            corpus = db.one("SELECT id, n_sentences, stats, state FROM corpora WHERE id = ?", (cid,)) if cid else None
            if corpus:
                stats = as_json(corpus[2]) or {}
                corpora[side] = {"corpus_id": corpus[0], "sentences": corpus[1], "skipped": _skipped(stats),
                                 "stats": stats}
                sides[side] = (corpus[1], corpus[3])
            else:
                corpora[side] = None
        stored = db.one("SELECT count(*) FROM candidates WHERE job_id = ?", (job_id,))[0]
        now = db.now()  # ages and the stall mark by the database's clock, as the workers judge them
        running = [{"stage": stage, "unit": unit, "worker": worker,
                    "heartbeat_age_s": round((now - as_datetime(beat)).total_seconds(), 1)}
                   for stage, unit, worker, beat in db.rows(
                       "SELECT stage, unit, worker, heartbeat_at FROM job_leases WHERE job_id = ?"
                       " ORDER BY stage, unit", (job_id,))]
        missing = _missing(db, job, sides)
    end = job.finished_at or now
    elapsed = (end - (job.started_at or job.created_at)).total_seconds() if job.started_at else 0.0
    done: dict[str, dict] = {}
    for stage, part, units, items, reused, first, last, _seconds in rows:
        entry = done.setdefault(stage, {"units": 0, "items": 0, "reused": 0, "first": first, "last": last, "parts": {}})
        entry["units"] += int(units)
        entry["items"] += int(items or 0)
        entry["reused"] += int(reused or 0)
        entry["first"] = min(entry["first"], first)
        entry["last"] = max(entry["last"], last)
        entry["parts"][part] = (int(units), int(items or 0), int(reused or 0))
    out_stages = []
    for stage in stages.NAMES:
        plan = planned.get(stage)
        got = done.get(stage, {"units": 0, "items": 0, "reused": 0, "first": None, "last": None, "parts": {}})
        units_done = got["units"]
        total_units = plan[0] if plan else (2 if stage == "ingest" else None)
        total_items = plan[1] if plan else None
        if plan and plan[2]:
            part_totals = {part: tuple(value) for part, value in plan[2].items()}
        elif stage == "ingest":
            part_totals = {"src": (1, None), "tgt": (1, None)}
        else:
            part_totals = {}
        parts = {
            part: {"done": got["parts"].get(part, (0, 0, 0))[0], "total": units,
                   "items_done": got["parts"].get(part, (0, 0, 0))[1], "items_total": items,
                   "reused": got["parts"].get(part, (0, 0, 0))[2]}
            for part, (units, items) in part_totals.items()
        }
        rate = None
        items_computed, first_c, last_c, seconds = computed.get(stage, (0, None, None, 0.0))
        if items_computed and last_c is not None:
            # Wall-clock throughput over the stage so far: from the first unit's start to the last finish.
            span = (last_c - first_c).total_seconds() + seconds / max(got["units"] - got["reused"], 1)
            rate = round(items_computed / span, 1) if span > 0 else None
        eta = None
        if total_units and units_done and units_done < total_units and job.state == "running":
            started = job.started_at or got["first"]
            unit_rate = units_done / max((got["last"] - started).total_seconds(), 1e-3)
            eta = round((total_units - units_done) / unit_rate, 1) if unit_rate > 0 else None
        out_stages.append(
            {
                "stage": stage,
                "done": units_done,
                "total": total_units,
                "items_done": got["items"],
                "items_total": total_items,
                "reused": got["reused"],
                "rate": rate,
                "eta_s": eta,
                "parts": parts,
            }
        )
    last_step = max((w["last_seen"] for w in workers if w["last_seen"]), default=None)
    return {
        "id": job.id,
        "state": job.state,
        "stalled": stalled(cfg, job, now, running, last_step),
        "error": job.error,
        "exit_code": job.exit_code,
        "src": job.src_path,
        "tgt": job.tgt_path,
        "src_lang": job.src_lang,
        "tgt_lang": job.tgt_lang,
        "model": job.model,
        "options": {k: v for k, v in job.options.items() if k != "model_key"},
        "threshold": threshold_status(job),
        "corpora": corpora,
        "stages": out_stages,
        "workers": workers,
        "running": running,
        "missing": missing,
        "pairs": job.n_candidates,
        "candidates_stored": int(stored or 0),
        "attempt": job.attempt,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "elapsed_s": round(elapsed, 1),
    }


def stalled(cfg: Config, job, now, running: list[dict], last_step: str | None) -> dict | None:
    """For a running job with no sign of life for more than twice ``MINER_LEASE_SECONDS`` (no lease
    renewed, no unit finished, no unit started): ``{"quiet_s": seconds, "hint": what to do}``; else
    None. A worker renews its leases every few seconds while it works, so a job this quiet has no
    live worker on it (or waits behind another job's tasks)."""
    if job.state != "running":
        return None
    marks = [job.started_at or job.created_at]
    if last_step:
        marks.append(dt.datetime.fromisoformat(last_step).replace(tzinfo=None))
    quiet = min([(now - max(marks)).total_seconds()] + [lease["heartbeat_age_s"] for lease in running])
    if quiet <= 2 * cfg.lease_seconds:
        return None
    return {"quiet_s": round(quiet, 1),
            "hint": f"no worker has renewed a lease or finished a unit of it for {quiet:.0f}s: if no worker is "
                    f"running, start one (`miner worker`) or resume the job (`miner retry {job.id}`)"}


def _missing(db: Connection, job, sides: dict[str, tuple[int, str]]) -> dict[str, list[str]]:
    """The units of the stage being run (``jobs.dispatched``) not recorded as done yet
    (:func:`miner.pipeline.orchestration.missing_units`, from the rows read here)."""
    if job.state == "done" or not job.dispatched:
        return {}
    try:
        declared = stages.stage(job.dispatched)
    except ValueError:
        return {}
    if declared.unit in ("side", "job"):
        units = declared.units(None, 1)
    else:
        if set(sides) != set(stages.SIDES) or any(state != "ready" for _, state in sides.values()):
            return {}  # the sides are not ingested yet: nothing to list
        try:
            shard_size = JobOptions.load(job.options, job.src_lang, job.tgt_lang, job.model).shard_size
        except Exception:  # options this version cannot read: status still shows the rest
            return {}
        units = declared.units({side: n for side, (n, _) in sides.items()}, shard_size)
    done = {unit for (unit,) in db.rows("SELECT unit FROM job_steps WHERE job_id = ? AND stage = ?",
                                        (job.id, job.dispatched))}
    names = [declared.unit_name(args) for args in units]
    return {job.dispatched: [name for name in names if name not in done]}


def _skipped(stats: dict) -> dict:
    return {key: stats.get(key, 0) for key in ("blank", "duplicates", "too_long", "decode_errors", "bad_rows")}


def _iso(value: dt.datetime | None) -> str | None:
    return value.replace(tzinfo=dt.timezone.utc).isoformat() if value else None
