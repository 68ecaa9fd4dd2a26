"""`INSERT ... ON CONFLICT DO NOTHING RETURNING id` for Postgres and SQLite (≥ 3.35).

The one dialect switch the repositories need: idempotent writes learn in one round trip whether
they inserted (the new id) or hit an existing row (None), without a savepoint. The `_many` forms
write a whole batch in one statement (multi-row VALUES): `insert_many_or_ignore` returns the
rows it inserted, `upsert_many` (`ON CONFLICT DO UPDATE`) the rows it inserted or updated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, TextClause, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session

from storage.errors import StorageError


def _dialect_module(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect not in {"postgresql", "sqlite"}:
        raise StorageError("unsupported database dialect", dialect=dialect)
    return postgresql if dialect == "postgresql" else sqlite


def insert_many_or_ignore(
    session: Session,
    model: type[DeclarativeBase],
    rows: Sequence[dict[str, Any]],
    conflict_columns: Sequence[str] | None,
    returning: Sequence[str],
) -> list[Row[Any]]:
    """Insert `rows` in one statement, skipping those that conflict on `conflict_columns`
    (None: on any unique constraint); the `returning` columns of the rows inserted."""
    if not rows:
        return []
    module = _dialect_module(session)
    table: Any = model.__table__
    stmt = (
        module.insert(table)
        .on_conflict_do_nothing(
            index_elements=None if conflict_columns is None else list(conflict_columns)
        )
        .returning(*(table.c[name] for name in returning))
    )
    return _execute_many(session, stmt, rows)


def upsert_many(
    session: Session,
    model: type[DeclarativeBase],
    rows: Sequence[dict[str, Any]],
    conflict_columns: Sequence[str],
    update: Callable[[Any], dict[str, Any]],
    returning: Sequence[str],
    conflict_where: ColumnElement[bool] | TextClause | None = None,
) -> list[Row[Any]]:
    """`INSERT ... ON CONFLICT (conflict_columns) DO UPDATE SET update(excluded)` for `rows` in
    one statement; the `returning` columns of every row inserted or updated. No two rows may
    share their conflict columns (Postgres refuses to update one row twice in a statement)."""
    if not rows:
        return []
    module = _dialect_module(session)
    table: Any = model.__table__
    insert = module.insert(table)
    stmt = insert.on_conflict_do_update(
        index_elements=list(conflict_columns),
        index_where=conflict_where,
        set_=update(insert.excluded),
    ).returning(*(table.c[name] for name in returning))
    return _execute_many(session, stmt, rows)


def _execute_many(session: Session, stmt: Any, rows: Sequence[dict[str, Any]]) -> list[Row[Any]]:
    """One Core statement over many parameter sets: SQLAlchemy's "insertmanyvalues" sends them
    as multi-row VALUES (1,000 rows a statement) from ONE cached compilation. (Building a
    `.values([...])` statement instead recompiles every batch: most of a batch's CPU.)"""
    return list(session.connection().execute(stmt, list(rows)).all())


def insert_or_ignore(
    session: Session,
    model: type[DeclarativeBase],
    values: dict[str, Any],
    conflict_columns: Sequence[str],
    conflict_where: ColumnElement[bool] | TextClause | None = None,
) -> Any | None:
    """Insert one row unless it conflicts on `conflict_columns`; the new primary key or None."""
    module = _dialect_module(session)
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


def insert_many_or_find(
    session: Session,
    model: type[DeclarativeBase],
    rows: Sequence[dict[str, Any]],
    conflict_columns: Sequence[str],
) -> list[Stored]:
    """`insert_or_find` for a batch, in two statements at most: one `Stored` per row, in order.

    A key that occurs twice in `rows` is created by its first row and found by the later ones.
    """
    table: Any = model.__table__
    (pk,) = table.primary_key.columns
    keys = [tuple(row[name] for name in conflict_columns) for row in rows]
    inserted = insert_many_or_ignore(
        session, model, rows, conflict_columns, (pk.name, *conflict_columns)
    )
    new: dict[tuple[Any, ...], int] = {tuple(r[1:]): int(r[0]) for r in inserted}
    missing = sorted({k for k in keys if k not in new}, key=repr)
    found: dict[tuple[Any, ...], int] = {}
    if missing:
        columns = [table.c[name] for name in conflict_columns]
        found = {
            tuple(r[1:]): int(r[0])
            for r in session.execute(select(pk, *columns).where(tuple_(*columns).in_(missing)))
        }
    result: list[Stored] = []
    seen: set[tuple[Any, ...]] = set()
    for key in keys:
        if key in new:
            result.append(Stored(new[key], key not in seen))
        elif key in found:
            result.append(Stored(found[key], False))
        else:  # deleted between the two statements: a concurrent purge
            raise StorageError("row vanished during an idempotent insert", table=table.name)
        seen.add(key)
    return result
