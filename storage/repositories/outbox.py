"""The outbound outbox (DESIGN §3.3): accept is idempotent per tenant and assigns the per-chat
sequence that fixes send order; the WhatsApp message id is chosen by the caller at accept time
and reused on every retry."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import constraint_name
from storage.errors import Conflict, InvalidValue, NotFound
from storage.models import OutboxMessage, OutboxStatus

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
