"""``--threshold auto`` end to end (issue 10): how a job's cut is chosen (auto, a number, a calibrated
threshold), stored (``jobs.threshold_info``, ``candidates.probability``), shown (``status``,
``report``) and used (``export``, ``eval``). The estimator itself is tested in test_autocut.py."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine


def test_migration_0002_round_trip(home):
    """0001 -> 0002 keeps the rows and adds jobs.threshold_info and candidates.probability (NULL);
    the schema then equals the models; 0002 -> 0001 drops both columns and keeps the rows."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from miner.config import Config
    from miner.db import Base
    from miner.migrate import current_revision, downgrade, upgrade

    cfg = Config.from_env()
    cfg.ensure_dirs()
    upgrade(cfg.db_url, "0001")
    path = cfg.home / "miner.db"
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO jobs (id, state, src_path, tgt_path, src_lang, tgt_lang, model, options, attempt, "
                     "created_at) VALUES (1, 'done', 'a', 'b', 'de', 'en', 'muse', '{\"threshold\": 1.05}', 1, "
                     "'2026-11-27 00:00:00')")
        conn.execute("INSERT INTO candidates (job_id, src_idx, tgt_idx, score, direction) VALUES (1, 0, 0, 1.2, 'both')")

    def columns(table):
        with sqlite3.connect(path) as conn:
            return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]

    assert "threshold_info" not in columns("jobs") and "probability" not in columns("candidates")
    upgrade(cfg.db_url)
    assert current_revision(cfg.db_url) == "0002"
    assert "threshold_info" in columns("jobs") and "probability" in columns("candidates")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT threshold_info, options FROM jobs").fetchall() == [(None, '{"threshold": 1.05}')]
        assert conn.execute("SELECT score, probability FROM candidates").fetchall() == [(1.2, None)]
    engine = create_engine(cfg.db_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
    downgrade(cfg.db_url, "0001")
    assert current_revision(cfg.db_url) == "0001"
    assert "threshold_info" not in columns("jobs") and "probability" not in columns("candidates")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT score, direction FROM candidates").fetchall() == [(1.2, "both")]
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(candidates)")}
    assert "ix_candidates_job_score" in indexes
    upgrade(cfg.db_url)
    assert current_revision(cfg.db_url) == "0002"
