"""Service fixtures on REAL services, shared by every test package (tests/conftest.py): a fresh
Postgres database per test run (migrated once, tables truncated between tests), SQLite files for
the embedded backend, and a Redis client with a per-run key prefix. Missing services fail the
run under CI (tests/services.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage import migrations
from storage.crypto import Keyring
from storage.db import create_engine_from_url, session_factory
from storage.models import Base
from tests.services import DATABASE_URL, REDIS_URL, unavailable


def _admin_engine() -> Engine:
    return create_engine_from_url(DATABASE_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Engine]:
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        unavailable(f"PostgreSQL at {make_url(DATABASE_URL).host}: {exc.orig}")
    yield engine
    engine.dispose()


def create_database(admin: Engine) -> str:
    """A new empty database for this test run; returns its URL."""
    name = f"wafleet_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(DATABASE_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(admin: Engine, url: str) -> None:
    name = make_url(url).database
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url(pg_server: Engine) -> Iterator[str]:
    url = create_database(pg_server)
    migrations.upgrade(url)
    yield url
    drop_database(pg_server, url)


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine_from_url(pg_url)
    yield engine
    engine.dispose()


def _truncate(engine: Engine) -> None:
    """Empty every table. Worker processes may still be finishing background work (webhook
    retries) on these rows, so a lock conflict or deadlock is retried, not fatal."""
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            return
        except OperationalError:
            if attempt == 4:
                raise


@pytest.fixture
def pg(pg_engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions on the migrated test database; every table is emptied after the test."""
    yield session_factory(pg_engine)
    _truncate(pg_engine)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/wafleet.sqlite3"


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """The same repository test on both backends: Postgres (production) and SQLite (embedded)."""
    if request.param == "postgres":
        yield request.getfixturevalue("pg")
        return
    url = f"sqlite:///{tmp_path}/wafleet.sqlite3"
    migrations.upgrade(url)
    engine = create_engine_from_url(url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.from_bytes(os.urandom(32))


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    return f"wafleet-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_client(redis_prefix: str) -> Iterator[redis.Redis]:
    client: redis.Redis = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        unavailable(f"Redis at {REDIS_URL}: {exc}")
    yield client
    for key in client.scan_iter(match=f"{redis_prefix}:*", count=1000):
        client.delete(key)
    client.close()
