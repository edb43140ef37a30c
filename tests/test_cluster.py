"""The same CLI on a cluster: a real Redis broker, a real PostgreSQL database (both started by the
test run itself) and two separate worker processes."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text


from .conftest import db_counts, read_tsv, run_miner, start_workers, stop_workers, wait_for_workers

pytestmark = pytest.mark.slow


def test_migrations_on_postgres_match_the_models(tmp_path, cluster_env):
    """`miner db upgrade` is the only way the schema changes: a fresh PostgreSQL database is refused
    until it runs; after it, the schema equals the SQLAlchemy models (no autogenerate diff), and
    downgrade/upgrade round-trips."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from miner.runtime.db import Base
    from miner.runtime.migrate import head_revision

    home = tmp_path / "home"
    result = run_miner(home, "jobs", **cluster_env)
    assert result.returncode == 1
    assert "without the miner schema" in result.stderr and "miner db upgrade" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_miner(home, "db", "upgrade", **cluster_env)
    assert result.returncode == 0, result.stderr
    assert f"at revision {head_revision()}" in result.stdout
    assert "postgresql+psycopg://postgres@127.0.0.1" in result.stdout
    result = run_miner(home, "db", "current", **cluster_env)
    assert result.stdout.startswith(head_revision())

    engine = create_engine(cluster_env["MINER_DB_URL"])
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        indexes = {row[0] for row in conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'candidates'"))}
        assert "ix_candidates_job_score" in indexes
    assert run_miner(home, "db", "downgrade", "base", "--yes", **cluster_env).returncode == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('public.jobs')")).scalar() is None
    assert run_miner(home, "db", "upgrade", **cluster_env).returncode == 0
    engine.dispose()


def test_sqlite_schema_matches_the_models(home):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from miner.runtime.config import Config
    from miner.runtime.db import Base
    from miner.runtime.migrate import ensure_schema

    cfg = Config.from_env()
    cfg.ensure_dirs()
    ensure_schema(cfg.db_url)  # the embedded default creates a new database on first use
    engine = create_engine(cfg.db_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_cluster_gives_the_same_pairs_as_the_embedded_default(deu_cluster, deu_embedded):
    """Tatoeba deu vs eng + 5,000 distractors through Redis + PostgreSQL with 2 worker processes and
    8+ shards per side: the same exported pairs and scores as the embedded default on one worker."""
    assert deu_embedded["result"].returncode == 0, deu_embedded["result"].stderr[-3000:]
    result, env, home, out = (deu_cluster[k] for k in ("result", "env", "home", "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    job_id = deu_cluster["job_id"]
    assert "workers seen: 2" in result.stderr  # the progress line of the job

    reference = read_tsv(deu_embedded["out"])
    cluster = read_tsv(out)
    assert len(cluster) == len(reference) > 900
    # Byte for byte, at --threshold auto: shard size 125 against 10,000, PostgreSQL against SQLite,
    # two workers against one give the same vectors, scores and cut.
    assert out.read_bytes() == deu_embedded["out"].read_bytes()
    assert deu_cluster["status"]["threshold"]["method"] == "auto"

    status = deu_cluster["status"]
    assert status["state"] == "done"
    stages = {st["stage"]: st for st in status["stages"]}
    assert stages["embed"]["parts"]["src"]["total"] == 8  # 1,000 German lines / 125
    assert stages["embed"]["parts"]["tgt"]["total"] == 48  # 6,000 English lines / 125
    for stage in status["stages"]:
        assert stage["done"] == stage["total"], stage
        assert sum(p["done"] for p in stage["parts"].values()) == stage["total"], stage
        if stage["stage"] in ("embed", "knn", "score"):
            assert stage["items_done"] == stage["items_total"] == 7000, stage
            assert sum(p["items_done"] for p in stage["parts"].values()) == 7000
    assert {w["name"] for w in status["workers"]} == {"w0@test", "w1@test"}
    assert sum(w["units"] for w in status["workers"]) == sum(st["total"] for st in status["stages"])
    assert all(w["units"] > 5 for w in status["workers"])  # both did a real share
    assert deu_cluster["candidates"] == status["candidates_stored"] >= len(cluster)

    text_status = run_miner(home, "status", job_id, **env).stdout
    assert "workers seen: 2" in text_status and "w0@test" in text_status
    assert "postgres@" not in text_status  # no URLs (credentials) in status


def test_cluster_retry_force_duplicates_nothing(tmp_path, cluster_env, deu_embedded):
    """Every task of a finished cluster job again (retry --force): the same export, the same rows."""
    case = deu_embedded["case"]
    home = tmp_path / "home"
    assert run_miner(home, "db", "upgrade", **cluster_env).returncode == 0
    workers = start_workers(tmp_path, home, cluster_env, 1)
    try:
        wait_for_workers(home, cluster_env, ["w0@test"])
        out = tmp_path / "out.tsv"
        result = run_miner(home, "mine", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en",
                           "--shard-size", "2000", "-q", "-o", out, **cluster_env)
        assert result.returncode == 0, result.stderr[-3000:]
        job_id = int(result.stdout.strip().splitlines()[-1])
        before = db_counts(cluster_env, job_id)
        assert before["candidates"] >= len(read_tsv(out)) > 900
        result = run_miner(home, "retry", job_id, "--force", "--wait", **cluster_env)
        assert result.returncode == 0, result.stderr[-3000:]
        again = tmp_path / "again.tsv"
        assert run_miner(home, "export", job_id, "-o", again, **cluster_env).returncode == 0
        assert again.read_bytes() == out.read_bytes()
        assert db_counts(cluster_env, job_id) == before
    finally:
        stop_workers(workers)


def test_shard_size_does_not_change_the_export(tmp_path, deu_embedded):
    """The same pair mined on the embedded default in shards of 200 (5 + 30 shards) and of 10,000
    (one per side): byte-identical exports at --threshold auto. Each sentence is encoded in a batch
    aligned on sentence numbers and each similarity recomputed pair by pair, so no score depends on
    the shards; before, scores differed by ~1e-6 and the automatic cut by 0.04."""
    assert deu_embedded["result"].returncode == 0, deu_embedded["result"].stderr[-3000:]
    case, out = deu_embedded["case"], tmp_path / "small-shards.tsv"
    result = run_miner(tmp_path / "home", "mine", case["src"], case["tgt"], "--src-lang", "de", "--tgt-lang", "en",
                       "--shard-size", "200", "-q", "-o", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_tsv(out)) > 900
    assert out.read_bytes() == deu_embedded["out"].read_bytes()
