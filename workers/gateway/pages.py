"""Cursor pagination over tables with increasing integer ids: newest first, stable under
concurrent inserts (a new row never shifts a page the client is walking). The cursor is the
last id of the previous page, opaque to clients."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Path, Query
from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from workers.gateway.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

Row = TypeVar("Row")
Out = TypeVar("Out")

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")]
Cursor = Annotated[str | None, Query(max_length=20, description="next_cursor of the previous page")]


def parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit():
        raise ApiError(400, "invalid_cursor", "cursor must be a next_cursor value from a page")
    return int(cursor)


def page(
    session: Session,
    stmt: Select[Row],
    id_column: InstrumentedAttribute[int],
    limit: int,
    cursor: str | None,
    convert: Callable[[Row], Out],
) -> dict[str, Any]:
    """One page of `stmt` (already filtered by tenant): {"items": [...], "next_cursor"}."""
    after = parse_cursor(cursor)
    if after is not None:
        stmt = stmt.where(id_column < after)
    rows: Sequence[Row] = session.scalars(stmt.order_by(id_column.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(getattr(rows[-1], id_column.key)) if more and rows else None
    return {"items": [convert(r) for r in rows], "next_cursor": next_cursor}


# Integer ids in paths and filters are BIGINT in Postgres: larger values can only be unknown.
MAX_ID = 2**63 - 1
IdPath = Path(ge=1, le=MAX_ID)
