"""Plain DBAPI connections and queries, without SQLAlchemy: for the reads a short-lived command
makes (``miner status`` and the schema check every command starts with).

Importing SQLAlchemy's ORM and its PostgreSQL dialect costs about half a second of CPU. A
``status`` call that does only that plus a few ``SELECT``\\ s took 1.3 s of wall time with two busy
workers and PostgreSQL on the same two cores (bench/service_scale.py, 300k cluster run). The
drivers themselves (``sqlite3``, ``psycopg``) are what SQLAlchemy uses underneath, so the rows
are the same; only their types need the conversions SQLAlchemy would make (:func:`as_datetime`,
:func:`as_json`).

Queries are written with ``?`` placeholders; :meth:`Connection.rows` turns them into psycopg's
``%s``. The schema and every write stay with :mod:`miner.runtime.db` and Alembic.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from contextlib import contextmanager
from typing import Any, Iterator

from miner.runtime.config import sqlite_path


class Connection:
    """A DBAPI connection and the placeholder style of its driver."""

    def __init__(self, conn: Any, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params)
            return [tuple(row) for row in cur.fetchall()]
        finally:
            cur.close()

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def now(self) -> dt.datetime:
        """The database server's clock (UTC, naive), as :func:`miner.runtime.db.server_now`."""
        if self.dialect == "postgresql":
            value = self.one("SELECT clock_timestamp() AT TIME ZONE 'UTC'")[0]
        else:
            value = self.one("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'")[0]
        return as_datetime(value)


def supported(url: str) -> bool:
    """Whether :func:`connect` opens ``url`` itself (a SQLite file or PostgreSQL through psycopg)."""
    return _dialect(url) is not None


def _dialect(url: str) -> str | None:
    if url.startswith("sqlite:///") and sqlite_path(url) is not None and ":memory:" not in url:
        return "sqlite"
    scheme = url.split("://", 1)[0]
    if scheme in ("postgresql", "postgresql+psycopg", "postgres"):
        return "postgresql"
    return None


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """A read connection to the database at the SQLAlchemy URL ``url``, closed afterwards. URLs that
    :func:`supported` does not cover go through SQLAlchemy's engine (its raw DBAPI connection)."""
    dialect = _dialect(url)
    if dialect == "sqlite":
        conn = sqlite3.connect(str(sqlite_path(url)), timeout=60)
    elif dialect == "postgresql":
        import psycopg

        # libpq reads the same URL once the SQLAlchemy driver name is gone (user, password, host,
        # port, database and query parameters such as sslmode).
        conn = psycopg.connect("postgresql://" + url.split("://", 1)[1], autocommit=True)
    else:
        from miner.runtime.db import get_engine

        engine = get_engine(url)
        conn = engine.raw_connection()
        dialect = engine.dialect.name
    try:
        yield Connection(conn, dialect)
    finally:
        conn.close()


def is_database_error(exc: BaseException) -> bool:
    """An error of SQLAlchemy or of a database driver, which the CLI and the API report as a
    database error (reads here raise the drivers' own errors). Only modules already loaded are
    asked; none is imported for it."""
    import sys

    if isinstance(exc, sqlite3.Error):
        return True
    for module, name in (("sqlalchemy.exc", "SQLAlchemyError"), ("psycopg", "Error")):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name, ())):
            return True
    return False


def as_datetime(value: Any) -> dt.datetime | None:
    """A stored time stamp as a naive UTC datetime (SQLite keeps them as text)."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def as_json(value: Any) -> Any:
    """A JSON column's value (SQLite returns the text, psycopg the decoded value)."""
    if isinstance(value, (bytes, str)):
        return json.loads(value)
    return value


def current_revision(url: str) -> str | None:
    """The database's Alembic revision, read without SQLAlchemy; None when there is none (no
    ``alembic_version`` table, or not exactly one row)."""
    with connect(url) as db:
        if db.dialect == "postgresql":
            found = db.one("SELECT to_regclass('alembic_version') IS NOT NULL")[0]
        else:
            found = db.one("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'")[0]
        if not found:
            return None
        rows = db.rows("SELECT version_num FROM alembic_version")
    return rows[0][0] if len(rows) == 1 else None
