"""`INSERT ... ON CONFLICT DO NOTHING RETURNING id` for Postgres and SQLite (≥ 3.35).

The one dialect switch the repositories need: idempotent writes learn in one round trip whether
they inserted (the new id) or hit an existing row (None), without a savepoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, TextClause
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session

from storage.errors import StorageError


def insert_or_ignore(
    session: Session,
    model: type[DeclarativeBase],
    values: dict[str, Any],
    conflict_columns: Sequence[str],
    conflict_where: ColumnElement[bool] | TextClause | None = None,
) -> Any | None:
    """Insert one row unless it conflicts on `conflict_columns`; the new primary key or None."""
    dialect = session.get_bind().dialect.name
    if dialect not in {"postgresql", "sqlite"}:
        raise StorageError("unsupported database dialect", dialect=dialect)
    module: Any = postgresql if dialect == "postgresql" else sqlite
    table: Any = model.__table__
    (pk,) = table.primary_key.columns
    stmt = (
        module.insert(model)
        .values(**values)
        .on_conflict_do_nothing(index_elements=list(conflict_columns), index_where=conflict_where)
        .returning(pk)
    )
    return session.execute(stmt).scalar_one_or_none()
