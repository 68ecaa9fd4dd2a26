"""Alembic environment: runs online against the URL set by storage.migrations."""

from __future__ import annotations

from alembic import context

from storage.db import create_engine_from_url
from storage.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url is not None

engine = create_engine_from_url(url)
try:
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
