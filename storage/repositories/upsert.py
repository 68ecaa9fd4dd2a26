"""`INSERT ... ON CONFLICT DO NOTHING RETURNING id` for Postgres and SQLite (≥ 3.35).

The one dialect switch the repositories need: idempotent writes learn in one round trip whether
they inserted (the new id) or hit an existing row (None), without a savepoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, TextClause, select
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


@dataclass(frozen=True, slots=True)
class Stored:
    """The row id and whether this call created it (False = it was already there)."""

    id: int
    created: bool


def insert_or_find(
    session: Session,
    model: type[DeclarativeBase],
    values: dict[str, Any],
    conflict_columns: Sequence[str],
) -> Stored:
    """Insert one row, or find the existing one with the same `conflict_columns` values.

    The idempotent write of every redeliverable record (inbound messages, notes, webhook
    deliveries): one round trip when new, two when it was already stored.
    """
    new_id = insert_or_ignore(session, model, values, conflict_columns)
    if new_id is not None:
        return Stored(int(new_id), True)
    table: Any = model.__table__
    (pk,) = table.primary_key.columns
    existing = session.scalar(
        select(pk).where(*(table.c[name] == values[name] for name in conflict_columns))
    )
    if existing is None:  # deleted between the two statements: a concurrent purge
        raise StorageError("row vanished during an idempotent insert", table=table.name)
    return Stored(int(existing), False)
