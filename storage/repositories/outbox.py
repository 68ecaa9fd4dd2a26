"""The outbound outbox (DESIGN §3.3): accept is idempotent per tenant and assigns the per-chat
sequence that fixes send order; the WhatsApp message id is chosen by the caller at accept time
and reused on every retry.

The owner's side (the instance's outbound actor) works through the prebuilt, fenced statements
at the end: `claim_heads` (due chat heads → `sending`, one statement), `head_state`, and the
moves `mark_sent`/`mark_failed`/`mark_expired`/`release`, all keyed by a `Fence`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import constraint_name
from storage.errors import Conflict, InvalidValue, NotFound
from storage.models import Instance, InstanceLease, OutboxMessage, OutboxStatus

MAX_IDEMPOTENCY_KEY = 200
SEQ_ATTEMPTS = 10  # concurrent accepts to one chat race for the next sequence number


def accept_outbound(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    instance_id: uuid.UUID,
    idempotency_key: str,
    wa_message_id: str,
    chat_jid: str,
    kind: str,
    payload: dict[str, Any],
    batch_id: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[OutboxMessage, bool]:
    """Write the outbox row, or return the existing one for this idempotency key.

    Returns (row, created). A repeat with the same key returns the same row (and so the same
    WhatsApp message id); a repeat with the same key but a different instance, chat or payload
    raises Conflict, since silently sending something else would be worse.
    """
    if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidValue(
            f"idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
            field="idempotency_key",
        )
    for _ in range(SEQ_ATTEMPTS):
        existing = find_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            if (existing.instance_id, existing.chat_jid, existing.kind, existing.payload) != (
                instance_id,
                chat_jid,
                kind,
                payload,
            ):
                raise Conflict(
                    "idempotency key was already used for a different message",
                    constraint="uq_outbox_tenant_id_idempotency_key",
                    idempotency_key=idempotency_key,
                )
            return existing, False
        seq = (
            session.scalar(
                select(func.max(OutboxMessage.chat_seq)).where(
                    OutboxMessage.instance_id == instance_id, OutboxMessage.chat_jid == chat_jid
                )
            )
            or 0
        ) + 1
        row = OutboxMessage(
            tenant_id=tenant_id,
            instance_id=instance_id,
            idempotency_key=idempotency_key,
            wa_message_id=wa_message_id,
            chat_jid=chat_jid,
            chat_seq=seq,
            kind=kind,
            payload=payload,
            batch_id=batch_id,
            expires_at=expires_at,
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError as exc:
            name = constraint_name(exc)
            if "wa_message_id" in name:
                raise Conflict(
                    "WhatsApp message id already used on this instance",
                    constraint="uq_outbox_instance_id_wa_message_id",
                    wa_message_id=wa_message_id,
                ) from None
            continue  # lost a race on the chat sequence or the idempotency key: look again
        return row, True
    raise Conflict("could not allocate a chat sequence number", constraint="uq_outbox_chat_seq")


def find_by_idempotency_key(
    session: Session, tenant_id: uuid.UUID, idempotency_key: str
) -> OutboxMessage | None:
    return session.scalar(
        select(OutboxMessage).where(
            OutboxMessage.tenant_id == tenant_id, OutboxMessage.idempotency_key == idempotency_key
        )
    )


def get_outbox(
    session: Session, outbox_id: int, tenant_id: uuid.UUID | None = None
) -> OutboxMessage:
    row = session.get(OutboxMessage, outbox_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFound("unknown outbound message", outbox_id=outbox_id)
    return row


def pending_for_instance(session: Session, instance_id: uuid.UUID) -> Sequence[OutboxMessage]:
    """The instance's unfinished backlog in per-chat order (what a new owner rebuilds)."""
    return session.scalars(
        select(OutboxMessage)
        .where(
            OutboxMessage.instance_id == instance_id,
            OutboxMessage.status.in_((OutboxStatus.QUEUED, OutboxStatus.SENDING)),
        )
        .order_by(OutboxMessage.chat_jid, OutboxMessage.chat_seq)
    ).all()


# -- the owner's side: prebuilt, fenced statements (workers.session.actor) ----------------------
#
# Built once at import with bind parameters, so the hot path pays neither statement
# construction nor compilation (SQLAlchemy caches the compiled form by the statement's memoized
# cache key). Core tables, executed on the session's Connection: no ORM bookkeeping per row.
# Every state change carries the fencing predicate (storage.leases.held_by, inlined here with
# bind parameters :iid/:owner/:token/:now). Bind names avoid the outbox's column names, which
# SQLAlchemy reserves in UPDATE statements.

OPEN = (OutboxStatus.QUEUED, OutboxStatus.SENDING)
_OUT = cast(Table, OutboxMessage.__table__)
_HEAD = _OUT.alias("head")
_PRIOR = _OUT.alias("prior")
_INST = cast(Table, Instance.__table__)
_LEASE = cast(Table, InstanceLease.__table__)

_FENCE = exists().where(
    _LEASE.c.instance_id == bindparam("iid"),
    _LEASE.c.owner == bindparam("owner"),
    _LEASE.c.token == bindparam("token"),
    _LEASE.c.expires_at > bindparam("now"),
)
_SENDABLE = exists().where(
    _INST.c.id == bindparam("iid"),
    _INST.c.outbound_paused.is_(False),
    _INST.c.deleted_at.is_(None),
)
# Per-chat order: a head is the chat's lowest unfinished row; only heads may be sent.
_IS_HEAD = ~exists().where(
    _PRIOR.c.instance_id == _HEAD.c.instance_id,
    _PRIOR.c.chat_jid == _HEAD.c.chat_jid,
    _PRIOR.c.status.in_(OPEN),
    _PRIOR.c.chat_seq < _HEAD.c.chat_seq,
)
_OPEN_HEADS = (_HEAD.c.instance_id == bindparam("iid"), _HEAD.c.status.in_(OPEN), _IS_HEAD)

# One statement: pick the due heads (at most one per chat, by construction) and move them to
# `sending`, only while the lease is held with this token and outbound is not paused. SKIP
# LOCKED (Postgres; SQLite has no row locks and ignores it) passes over a row another
# transaction is changing: it is picked up by the next claim.
_CLAIM = (
    update(_OUT)
    .where(
        _OUT.c.id.in_(
            select(_HEAD.c.id)
            .where(*_OPEN_HEADS, _HEAD.c.next_attempt_at <= bindparam("now"))
            .order_by(_HEAD.c.next_attempt_at, _HEAD.c.id)
            .limit(bindparam("n"))
            .with_for_update(skip_locked=True)
        ),
        _OUT.c.status.in_(OPEN),
        _FENCE,
        _SENDABLE,
    )
    .values(status=OutboxStatus.SENDING, updated_at=bindparam("now"))
    .returning(
        _OUT.c.id,
        _OUT.c.wa_message_id,
        _OUT.c.chat_jid,
        _OUT.c.chat_seq,
        _OUT.c.kind,
        _OUT.c.payload,
        _OUT.c.attempts,
        _OUT.c.next_attempt_at,
        _OUT.c.expires_at,
        _OUT.c.created_at,
    )
)
# Why a claim found nothing, and when the next head falls due: one statement.
_STATE = select(
    _FENCE.label("fenced_in"),
    select(_INST.c.outbound_paused)
    .where(_INST.c.id == bindparam("iid"), _INST.c.deleted_at.is_(None))
    .scalar_subquery()
    .label("paused"),
    select(func.min(_HEAD.c.next_attempt_at))
    .where(*_OPEN_HEADS)
    .scalar_subquery()
    .label("next_due"),
)
_IS_SENDABLE = select(_SENDABLE)
_ONE_ROW = (_OUT.c.id == bindparam("row_id"), _FENCE)
_MARK_SENT = (
    update(_OUT)
    .where(*_ONE_ROW, _OUT.c.status == OutboxStatus.SENDING)
    .values(
        status=OutboxStatus.SENT,
        sent_at=bindparam("acked_at"),
        attempts=_OUT.c.attempts + 1,
        updated_at=bindparam("now"),
    )
    .returning(_OUT.c.id)
)
# A receipt (routing worker) may move a `sending` row on before its server ack is recorded.
_MARK_SENT_LATE = (
    update(_OUT)
    .where(*_ONE_ROW, _OUT.c.status.in_((OutboxStatus.DELIVERED, OutboxStatus.READ)))
    .values(
        sent_at=bindparam("acked_at"), attempts=_OUT.c.attempts + 1, updated_at=bindparam("now")
    )
    .returning(_OUT.c.id)
)
_MARK_FAILED = (
    update(_OUT)
    .where(*_ONE_ROW, _OUT.c.status == OutboxStatus.SENDING)
    .values(
        status=bindparam("new_status"),
        attempts=bindparam("new_attempts"),
        next_attempt_at=bindparam("next_at"),
        last_error_code=bindparam("code"),
        last_error_text=bindparam("error"),
        updated_at=bindparam("now"),
    )
    .returning(_OUT.c.id)
)
_MARK_EXPIRED = (
    update(_OUT)
    .where(*_ONE_ROW, _OUT.c.status == OutboxStatus.SENDING)
    .values(status=OutboxStatus.EXPIRED, last_error_code="expired", updated_at=bindparam("now"))
)
_RELEASE = (
    update(_OUT)
    .where(
        _OUT.c.id.in_(bindparam("row_ids", expanding=True)),
        _OUT.c.status == OutboxStatus.SENDING,
        _FENCE,
    )
    .values(status=OutboxStatus.QUEUED, updated_at=bindparam("now"))
)
_COUNT_SENT = (
    update(_INST)
    .where(_INST.c.id == bindparam("iid"))
    .values(messages_sent=_INST.c.messages_sent + bindparam("k"))
)
_PAUSE = (
    update(_INST)
    .where(_INST.c.id == bindparam("iid"))
    .values(outbound_paused=True, pause_reason=bindparam("reason"))
)
_EXPIRE_PARKED = (
    update(_OUT)
    .where(
        _OUT.c.instance_id == bindparam("iid"),
        _OUT.c.status == OutboxStatus.QUEUED,
        or_(
            _OUT.c.expires_at <= bindparam("now"),
            _OUT.c.created_at <= bindparam("parked_before"),
        ),
        _FENCE,
    )
    .values(status=OutboxStatus.EXPIRED, updated_at=bindparam("now"), last_error_code="expired")
)
_NEXT_EXPIRY = select(
    select(func.min(_OUT.c.expires_at))
    .where(
        _OUT.c.instance_id == bindparam("iid"),
        _OUT.c.status == OutboxStatus.QUEUED,
        _OUT.c.expires_at > bindparam("now"),
    )
    .scalar_subquery()
    .label("expires"),
    select(func.min(_OUT.c.created_at))
    .where(_OUT.c.instance_id == bindparam("iid"), _OUT.c.status == OutboxStatus.QUEUED)
    .scalar_subquery()
    .label("oldest"),
)
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Fence:
    """Who may change the instance's rows: the lease holder with this token, at `now`."""

    instance_id: uuid.UUID
    owner: str
    token: int
    now: datetime

    def params(self) -> dict[str, Any]:
        return {"iid": self.instance_id, "owner": self.owner, "token": self.token, "now": self.now}


@dataclass(frozen=True, slots=True)
class Claimed:
    """A head row moved to `sending` by `claim_heads`."""

    id: int
    wa_message_id: str
    chat_jid: str
    chat_seq: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    next_attempt_at: datetime
    expires_at: datetime | None
    created_at: datetime  # accepted at: the start of the accept → ack latency


@dataclass(frozen=True, slots=True)
class HeadState:
    fenced_in: bool
    paused: bool
    gone: bool  # the instance was deleted
    next_due: datetime | None  # the earliest next_attempt_at of a chat head, due or not


def claim_heads(conn: Connection, fence: Fence, limit: int) -> list[Claimed]:
    """Move up to `limit` due chat heads to `sending` (fenced; nothing while paused), in the
    order they fell due."""
    rows = conn.execute(_CLAIM, {**fence.params(), "n": limit}).all()
    claimed = [Claimed(*row) for row in rows]
    claimed.sort(key=lambda c: (c.next_attempt_at, c.id))
    return claimed


def head_state(conn: Connection, fence: Fence) -> HeadState:
    row = conn.execute(_STATE, fence.params()).one()
    return HeadState(bool(row.fenced_in), bool(row.paused), row.paused is None, row.next_due)


def sendable(conn: Connection, fence: Fence) -> bool:
    """Outbound is not paused (and the instance not deleted)."""
    return bool(conn.execute(_IS_SENDABLE, fence.params()).scalar())


def is_fenced_in(conn: Connection, fence: Fence) -> bool:
    return bool(conn.execute(_STATE, fence.params()).one().fenced_in)


def mark_sent(conn: Connection, fence: Fence, row_id: int, acked_at: datetime) -> bool:
    """`sending` → `sent` (or, if a receipt got there first, only record the send); False if
    the row moved elsewhere or the fence is gone (`is_fenced_in` tells which)."""
    params = {**fence.params(), "row_id": row_id, "acked_at": acked_at}
    if conn.execute(_MARK_SENT, params).first() is not None:
        return True
    return conn.execute(_MARK_SENT_LATE, params).first() is not None


def mark_failed(
    conn: Connection,
    fence: Fence,
    row_id: int,
    *,
    status: OutboxStatus,
    attempts: int,
    next_attempt_at: datetime,
    code: str,
    text: str,
) -> bool:
    """A failed attempt: back to `queued` for a retry, or `failed`; False as in mark_sent."""
    params = {
        **fence.params(),
        "row_id": row_id,
        "new_status": status,
        "new_attempts": attempts,
        "next_at": next_attempt_at,
        "code": code[:32],
        "error": text[:500],
    }
    return conn.execute(_MARK_FAILED, params).first() is not None


def mark_expired(conn: Connection, fence: Fence, row_id: int) -> None:
    conn.execute(_MARK_EXPIRED, {**fence.params(), "row_id": row_id})


def release(conn: Connection, fence: Fence, row_ids: Sequence[int]) -> None:
    """Claimed rows that were not sent go back to `queued` (no attempt counted)."""
    if row_ids:
        conn.execute(_RELEASE, {**fence.params(), "row_ids": list(row_ids)})


def count_sent(conn: Connection, instance_id: uuid.UUID, k: int) -> None:
    if k:
        conn.execute(_COUNT_SENT, {"iid": instance_id, "k": k})


def pause_outbound(conn: Connection, instance_id: uuid.UUID, reason: str) -> None:
    conn.execute(_PAUSE, {"iid": instance_id, "reason": reason[:200]})


def expire_parked(
    conn: Connection, fence: Fence, park_expiry: float
) -> tuple[datetime | None, datetime | None]:
    """Expire queued rows past `expires_at` (or parked longer than `park_expiry` seconds, if
    set); returns when the next one would: (earliest `expires_at`, oldest `created_at`)."""
    parked_before = fence.now - timedelta(seconds=park_expiry) if park_expiry else _NEVER
    conn.execute(_EXPIRE_PARKED, {**fence.params(), "parked_before": parked_before})
    row = conn.execute(_NEXT_EXPIRY, fence.params()).one()
    return row.expires, row.oldest
