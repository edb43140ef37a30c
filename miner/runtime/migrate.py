"""Run the Alembic migrations (the only way the schema changes)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import miner.migrations as _migrations_pkg

MIGRATIONS = Path(_migrations_pkg.__file__).resolve().parent


def _engine(url: str):
    from miner.runtime.db import get_engine  # SQLAlchemy loads only where a command needs more than the check

    return get_engine(url)


def _alembic_config(url: str):
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision of the migrations folder, read from the scripts' ``revision`` and
    ``down_revision`` lines: every command checks it, and loading Alembic's script directory for
    that took about a third of a second of each `miner status` (tests/test_cli.py checks that
    Alembic finds the same head). Several heads, or none: Alembic decides."""
    revisions, parents = set(), set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        text = script.read_text(encoding="utf-8")
        found = _REVISION.search(text)
        if found:
            revisions.add(found.group(1))
            down = _DOWN_REVISION.search(text)
            if down and down.group(1):
                parents.add(down.group(1))
    heads = sorted(revisions - parents)
    if len(heads) != 1:
        from alembic.script import ScriptDirectory  # several heads or odd scripts: Alembic decides

        return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    return heads[0]


_REVISION = re.compile(r"^revision\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN_REVISION = re.compile(r"^down_revision\s*=\s*(?:['\"]([^'\"]+)['\"]|None)", re.M)


def current_revision(url: str) -> str | None:
    """The database's revision (Alembic's ``alembic_version`` table), None without one."""
    from sqlalchemy import inspect, text

    with _engine(url).connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``."""
    from alembic import command

    cfg = _alembic_config(url)
    with _engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    cfg = _alembic_config(url)
    with _engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _sqlite_lock(url: str):
    """An exclusive lock on ``<database>.lock`` beside a SQLite file (none for an in-memory one)."""
    from miner.runtime.config import sqlite_path
    from miner.runtime.locks import file_lock

    path = sqlite_path(url)
    if path is None:
        return contextlib.nullcontext()
    path.parent.mkdir(parents=True, exist_ok=True)
    return file_lock(f"{path}.lock")


def _at_head(url: str, head: str) -> bool:
    """Whether the database is at ``head``, asked over a plain DBAPI connection: most commands only
    check, and SQLAlchemy's engine and dialect cost them about a fifth of a second to import. Any
    doubt (no file yet, no table, an error) is left to the full check, which also says what is wrong."""
    from miner.runtime import dbapi
    from miner.runtime.config import sqlite_path

    if not dbapi.supported(url) or (url.startswith("sqlite") and not sqlite_path(url).is_file()):
        return False
    try:
        return dbapi.current_revision(url) == head
    except Exception:
        return False


def ensure_schema(url: str) -> None:
    """Check that the database is at head. The embedded default (a new, empty SQLite file) is
    created here so that a laptop needs no set-up; any other database changes schema only through
    ``miner db upgrade``."""
    head = head_revision()
    if _at_head(url, head):
        return
    if url.startswith("sqlite"):
        # Several processes may meet a new embedded database at once (`miner worker` started beside
        # the first `submit`): one creates it (and switches it to WAL) while the others wait, then
        # find it at head.
        with _sqlite_lock(url):
            current = current_revision(url)
            if current == head:
                return
            if current is None and not _has_tables(url):
                upgrade(url)
                return
    else:
        current = current_revision(url)
        if current == head:
            return
    from miner.runtime.config import mask_url
    from miner.runtime.errors import MinerError

    where = f"at revision {current}" if current else "without the miner schema"
    raise MinerError(f"the database {mask_url(url)} is {where}; this version needs {head}: "
                     "run `miner db upgrade` (once, from any machine with the same MINER_DB_URL)")


def _has_tables(url: str) -> bool:
    from sqlalchemy import inspect

    with _engine(url).connect() as conn:
        return bool(inspect(conn).get_table_names())
