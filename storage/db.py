"""Engines and sessions. Postgres via psycopg 3 in production; SQLite for the embedded default.

`create_engine_from_url` normalises the URL (plain `postgresql://` → psycopg 3 driver), makes
SQLite behave (foreign keys on, WAL, a busy timeout for several processes) and returns an engine;
`session_factory` makes sessions that do not expire objects on commit, so values read inside a
transaction stay usable after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import Conflict

SQLITE_BUSY_TIMEOUT_MS = 15_000


def normalise_url(url: str) -> str:
    """`postgres://` and `postgresql://` use psycopg 3; anything else passes through."""
    parsed = make_url(url)
    if parsed.drivername in {"postgres", "postgresql"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine_from_url(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling breaks SAVEPOINTs (nested transactions); let
            # SQLAlchemy emit BEGIN itself (the recipe in SQLAlchemy's SQLite dialect docs).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock up front: two processes that both read and then
            # write would otherwise deadlock on the lock upgrade (SQLITE_BUSY, no waiting).
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def constraint_name(exc: IntegrityError) -> str:
    """The violated constraint's name, from psycopg's diagnostics or SQLite's message."""
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    if name:
        return str(name)
    text = str(orig)
    # SQLite: "UNIQUE constraint failed: table.col1, table.col2" names columns, not constraints.
    return text.split(":", 1)[1].strip() if ":" in text else text


@contextmanager
def conflicts_wrapped() -> Iterator[None]:
    """Turn IntegrityError into storage's own `Conflict` naming the constraint."""
    try:
        yield
    except IntegrityError as exc:
        raise Conflict("constraint violated", constraint=constraint_name(exc)) from None
