"""Alembic migrations of the wafleet schema, driven from code (no alembic.ini needed).

`upgrade(url)` brings a database to the newest revision (`wafleet db upgrade`); `downgrade(url,
revision)` goes back; `current(url)` names the revision a database is at. The same revision
files run on Postgres and SQLite (SQLite through Alembic's batch mode).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from storage.db import create_engine_from_url, normalise_url

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is ConfigParser interpolation syntax; a password may contain it.
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    rev = script.get_current_head()
    assert rev is not None
    return rev


def current(url: str) -> str | None:
    engine = create_engine_from_url(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
