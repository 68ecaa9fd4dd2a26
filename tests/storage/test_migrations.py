"""Migrations upgrade and downgrade on real Postgres and on SQLite, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from storage import migrations
from storage.db import create_engine_from_url
from storage.models import Base
from tests.fixtures import create_database, drop_database

TABLES = {t.name for t in Base.metadata.sorted_tables}


def _tables(url: str) -> set[str]:
    engine = create_engine_from_url(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _schema_diff(url: str) -> list[object]:
    engine = create_engine_from_url(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    assert migrations.current(url) is None
    migrations.upgrade(url)
    assert migrations.current(url) == migrations.head()
    assert _tables(url) == TABLES
    assert _schema_diff(url) == []  # the migrations build exactly what the models declare
    migrations.downgrade(url, "base")
    assert migrations.current(url) is None
    assert _tables(url) == set()
    migrations.upgrade(url)  # and up again after a full downgrade
    assert _tables(url) == TABLES


def test_migrations_round_trip_on_postgres(pg_server: Engine) -> None:
    url = create_database(pg_server)
    try:
        _round_trip(url)
    finally:
        drop_database(pg_server, url)


def test_migrations_round_trip_on_sqlite(sqlite_url: str) -> None:
    _round_trip(sqlite_url)


def test_plain_postgresql_url_uses_psycopg3(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    assert migrations.current(plain) == migrations.head()
