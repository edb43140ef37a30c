"""The stages are declared once (miner/pipeline/stages.py): the stage list, the hand-over, the units and
their names, the planned sizes, the step functions, the Celery tasks, their names, routes and the
queues a worker consumes all come from the declarations."""

from __future__ import annotations

import pytest

from miner.pipeline import orchestration, stages, steps
from miner.pipeline.stages import Stage


def test_the_declared_stages():
    assert stages.NAMES == ("ingest", "embed", "index", "knn", "score", "finish")
    assert stages.NEXT_STAGE == {"ingest": "embed", "embed": "index", "index": "knn", "knn": "score",
                                 "score": "finish"}


def test_orchestration_and_steps_come_from_the_declarations():
    assert orchestration.STAGES == tuple(s.name for s in stages.STAGES)
    assert orchestration.NEXT_STAGE == {a.name: b.name for a, b in zip(stages.STAGES, stages.STAGES[1:])}
    assert steps.STEP_FUNCTIONS == {s.name: s.function() for s in stages.STAGES}
    assert steps.STEP_FUNCTIONS["ingest"].__module__ == "miner.pipeline.corpora"
    assert steps.STEP_FUNCTIONS["index"] is steps.build_index
    for s in stages.STAGES:
        units = s.units({"src": 5, "tgt": 3}, 2)
        assert [orchestration.unit_name(s.name, u) for u in units] == [s.unit_name(u) for u in units]


def test_celery_tasks_names_routes_and_queues_come_from_the_declarations():
    from miner.runtime.config import Config
    from miner.workers import dispatch, tasks
    from miner.workers.settings import CelerySettings

    assert dispatch.TASK_NAMES == {s.name: s.task for s in stages.STAGES}
    assert set(tasks.TASKS) == set(stages.NAMES)
    for s in stages.STAGES:
        task = tasks.app.tasks[s.task]
        assert task.name == tasks.TASKS[s.name].name and task.stage == s.name
    routes = CelerySettings(Config.from_env()).task_routes
    assert routes == {"miner.embed": {"queue": "embed"}}
    assert stages.QUEUES == ("miner", "embed") and dispatch.QUEUES == stages.QUEUES


def test_units_names_and_plans_by_unit_shape():
    """What each unit shape gives, on sides of 5 and 3 sentences in shards of 2."""
    sizes = {"src": 5, "tgt": 3}
    side = Stage("a", "miner.a", "miner.pipeline.steps:embed", "side")
    assert side.units(None, 2) == [("src",), ("tgt",)]
    assert [side.unit_name(u) for u in side.units(None, 2)] == ["src", "tgt"]
    assert side.planned(sizes, 2) == {"src": (1, 5), "tgt": (1, 3)}

    shards = Stage("b", "miner.b", "miner.pipeline.steps:embed", "side-shard")
    assert shards.units(sizes, 2) == [("src", 0, 2), ("src", 2, 4), ("src", 4, 5), ("tgt", 0, 2), ("tgt", 2, 3)]
    assert shards.unit_name(("src", 4, 5)) == "src:4"
    assert shards.planned(sizes, 2) == {"src": (3, 5), "tgt": (2, 3)}

    directions = Stage("c", "miner.c", "miner.pipeline.steps:knn", "direction-shard")
    assert directions.units(sizes, 2) == [("fwd", 0, 2), ("fwd", 2, 4), ("fwd", 4, 5), ("bwd", 0, 2), ("bwd", 2, 3)]
    assert directions.planned(sizes, 2) == {"fwd": (3, 5), "bwd": (2, 3)}

    job = Stage("d", "miner.d", "miner.pipeline.steps:finish", "job")
    assert job.units(None, 2) == [()] and job.unit_name(()) == "all" and job.planned(sizes, 2) == {"all": (1, 0)}

    with pytest.raises(ValueError, match="unknown unit shape"):
        Stage("e", "miner.e", "miner.pipeline.steps:finish", "per-line")
    with pytest.raises(ValueError, match="need the sides' sizes"):
        shards.units(None, 2)
    with pytest.raises(ValueError, match="unknown stage 'dedup'"):
        stages.stage("dedup")


def test_a_job_s_stages_are_planned_from_the_declarations(home, tmp_path):
    """plan() records every stage after ingest with the size its declaration gives."""
    from sqlalchemy import select

    from miner.runtime.config import Config
    from miner.runtime.db import JobStage, session_scope
    from miner.embedding.encoders import resolve_model
    from miner.pipeline.jobs import JobOptions, create_job
    from miner.pipeline import corpora
    from miner.runtime.migrate import ensure_schema

    cfg = Config.from_env()
    cfg.ensure_dirs()
    ensure_schema(cfg.db_url)
    src, tgt = tmp_path / "a.de", tmp_path / "b.en"
    src.write_text("".join(f"Satz {i}.\n" for i in range(5)), encoding="utf-8")
    tgt.write_text("".join(f"Sentence {i}.\n" for i in range(3)), encoding="utf-8")
    job_id = create_job(cfg, src, tgt, JobOptions(src_lang="de", tgt_lang="en", model="muse",
                                                  model_key=resolve_model("muse").key, shard_size=2))
    assert orchestration.hand_over(cfg, job_id, None, "ingest", lambda stage, units: None)
    for side in stages.SIDES:
        corpora.ingest(cfg, job_id, side)
    sent = []
    assert orchestration.advance(cfg, job_id, "ingest", lambda stage, units: sent.append((stage, units)))
    assert sent == [("embed", stages.stage("embed").units({"src": 5, "tgt": 3}, 2))]
    with session_scope(cfg.db_url) as s:
        planned = {row.stage: (row.units, row.parts) for row in s.scalars(select(JobStage).where(JobStage.job_id == job_id))}
    for declared in stages.STAGES[1:]:
        parts = declared.planned({"src": 5, "tgt": 3}, 2)
        assert planned[declared.name][0] == sum(units for units, _ in parts.values())
