"""Inbound storage: messages, the owner's notes, and the open pending booking per contact.

Every write is idempotent on the WhatsApp message id through a unique constraint (DESIGN §3.7):
a redelivered message finds its row instead of creating a second one. The `_many` forms write a
batch (inbound routing of a batch) in one or two statements each.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, text
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
from storage.repositories.upsert import (
    Stored,
    insert_many_or_find,
    insert_or_find,
    insert_or_ignore,
    upsert_many,
)

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


def store_inbound_messages(session: Session, rows: Sequence[dict[str, Any]]) -> list[Stored]:
    """`store_inbound_message` for a batch: each row holds that function's keyword arguments
    (`media` and `wa_timestamp` included); one `Stored` per row, in order (ids in that order)."""
    now = utcnow()
    return insert_many_or_find(
        session,
        Message,
        [
            {
                **row,
                "direction": Direction.IN,
                "status": MessageStatus.RECEIVED,
                "created_at": now,
                "updated_at": now,
            }
            for row in rows
        ],
        ("instance_id", "direction", "wa_message_id"),
    )


def store_notes(session: Session, rows: Sequence[dict[str, Any]]) -> list[Stored]:
    """`store_note` for a batch: each row holds that function's keyword arguments."""
    now = utcnow()
    return insert_many_or_find(
        session,
        Note,
        [{**row, "created_at": now} for row in rows],
        ("instance_id", "wa_message_id"),
    )


@dataclass(frozen=True, slots=True)
class NewMessages:
    """A contact's messages newly stored by one batch, for `attach_to_pending_bookings`."""

    tenant_id: uuid.UUID
    contact_id: int
    instance_id: uuid.UUID | None
    first_message_id: int
    count: int


def attach_to_pending_bookings(
    session: Session, batch: Sequence[NewMessages], source: str = BOOKING_SOURCE_WHATSAPP
) -> list[tuple[Row[Any], bool]]:
    """`attach_to_pending_booking` for a batch, in one upsert: each contact's open pending
    booking is created (first message = its first new message) or has `count` added.

    Returns per contact (one entry each, at most once in `batch`) the booking row (id,
    contact_id, status, source, first_message_id, message_count) and whether it was created: a
    created booking is the only one whose first message is a message of this batch.
    """
    now = utcnow()
    rows = upsert_many(
        session,
        Booking,
        [
            {
                "tenant_id": b.tenant_id,
                "contact_id": b.contact_id,
                "instance_id": b.instance_id,
                "status": BookingStatus.PENDING,
                "source": source,
                "first_message_id": b.first_message_id,
                "message_count": b.count,
                "created_at": now,
                "updated_at": now,
            }
            for b in batch
        ],
        ("contact_id",),
        lambda excluded: {
            "message_count": Booking.message_count + excluded.message_count,
            "updated_at": excluded.updated_at,
        },
        ("id", "contact_id", "status", "source", "first_message_id", "message_count"),
        conflict_where=text("status = 'pending'"),
    )
    first = {b.contact_id: b.first_message_id for b in batch}
    return [(row, row.first_message_id == first[row.contact_id]) for row in rows]


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
