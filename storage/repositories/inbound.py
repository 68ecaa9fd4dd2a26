"""Inbound storage: messages, the owner's notes, and the open pending booking per contact.

Every write is idempotent on the WhatsApp message id through a unique constraint (DESIGN §3.7):
a redelivered message finds its row instead of creating a second one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from storage.models import (
    Booking,
    BookingStatus,
    Direction,
    Message,
    MessageStatus,
    Note,
    utcnow,
)
from storage.repositories.upsert import Stored, insert_or_find, insert_or_ignore

BOOKING_SOURCE_WHATSAPP = "whatsapp"


def store_inbound_message(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    instance_id: uuid.UUID,
    wa_message_id: str,
    chat_jid: str,
    sender_jid: str | None,
    contact_id: int | None,
    type: str,
    body: str | None,
    media: dict[str, Any] | None = None,
    wa_timestamp: datetime | None = None,
) -> Stored:
    return insert_or_find(
        session,
        Message,
        {
            "tenant_id": tenant_id,
            "instance_id": instance_id,
            "direction": Direction.IN,
            "wa_message_id": wa_message_id,
            "chat_jid": chat_jid,
            "sender_jid": sender_jid,
            "contact_id": contact_id,
            "type": type,
            "body": body,
            "media": media,
            "status": MessageStatus.RECEIVED,
            "wa_timestamp": wa_timestamp,
            "created_at": utcnow(),
            "updated_at": utcnow(),
        },
        ("instance_id", "direction", "wa_message_id"),
    )


def store_note(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    instance_id: uuid.UUID,
    wa_message_id: str,
    chat_jid: str,
    body: str | None,
    media: dict[str, Any] | None = None,
    wa_timestamp: datetime | None = None,
) -> Stored:
    return insert_or_find(
        session,
        Note,
        {
            "tenant_id": tenant_id,
            "instance_id": instance_id,
            "wa_message_id": wa_message_id,
            "chat_jid": chat_jid,
            "body": body,
            "media": media,
            "wa_timestamp": wa_timestamp,
            "created_at": utcnow(),
        },
        ("instance_id", "wa_message_id"),
    )


def attach_to_pending_booking(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    contact_id: int,
    instance_id: uuid.UUID | None,
    message_id: int | None,
    source: str = BOOKING_SOURCE_WHATSAPP,
) -> Stored:
    """Ensure the contact's one open pending booking exists and count `message_id` in it.

    The partial unique index `uq_bookings_one_pending_per_contact` makes concurrent callers
    converge on one row. Call it once per newly stored message (not for redeliveries).
    """
    now = utcnow()
    new_id = insert_or_ignore(
        session,
        Booking,
        {
            "tenant_id": tenant_id,
            "contact_id": contact_id,
            "instance_id": instance_id,
            "status": BookingStatus.PENDING,
            "source": source,
            "first_message_id": message_id,
            "message_count": 0,
            "created_at": now,
            "updated_at": now,
        },
        ("contact_id",),
        conflict_where=text("status = 'pending'"),
    )
    booking = session.scalar(
        select(Booking)
        .where(Booking.contact_id == contact_id, Booking.status == BookingStatus.PENDING)
        .with_for_update()
    )
    assert booking is not None
    booking.message_count += 1
    booking.updated_at = now
    session.flush()
    return Stored(booking.id, new_id is not None)
