"""Inbound routing (DESIGN §2, §3.7, §3.8): `wafleet.route_inbound` and `wafleet.message_status`.

The session worker decrypts a message, enqueues `route_inbound` durably, and only then acks it to
WhatsApp. Routing then writes, in ONE transaction:
  * the instance owner's own messages (sent from the phone, or "from me") → an internal note;
  * any other sender → contact upsert (phone number and LID, merged), the message, and one open
    pending booking per contact (source `whatsapp`), plus webhook outbox rows;
and publishes the events on the tenant's stream after commit: `whatsapp:message`, and
`booking:created` when the message opened the contact's pending booking. Every write is
idempotent through unique constraints, so a redelivered task stores nothing twice and publishes
nothing twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from storage.models import Booking, Instance, OutboxMessage, OutboxStatus, utcnow
from storage.repositories import contacts, inbound
from tasks.app import app
from tasks.errors import Rejected
from tasks.events import BOOKING_CREATED, booking_data, booking_event_id, record_webhooks
from tasks.queues import INBOUND_QUEUE, MESSAGE_STATUS_TASK, ROUTE_INBOUND_TASK
from tasks.runtime import current
from tasks.webhooks import enqueue as enqueue_webhooks

logger = logging.getLogger(__name__)

MESSAGE_EVENT = "whatsapp:message"
STATUS_EVENT = "whatsapp:message-status"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A decrypted inbound message, as the session worker hands it to routing (JSON-safe)."""

    instance_id: str
    wa_message_id: str
    chat_jid: str  # the conversation: the peer for 1:1 chats, the group for groups
    sender_jid: str  # the sending device's JID
    timestamp: int  # unix seconds, from the stanza's `t`
    type: str  # text, image, video, audio, document, sticker, location, contact, reaction...
    from_me: bool = False  # sent by one of the owner's own devices
    sender_phone: str | None = None  # E.164 digits when the sender's number is known
    sender_lid: str | None = None  # the sender's LID user part when known
    push_name: str | None = None
    text: str | None = None
    media: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InboundMessage:
        try:
            return cls(**data)
        except TypeError as exc:
            raise Rejected("invalid_inbound", f"malformed inbound message: {exc}") from None


def _is_owner(msg: InboundMessage, instance: Instance) -> bool:
    if msg.from_me:
        return True
    if instance.phone_number and msg.sender_phone == instance.phone_number:
        return True
    own_lid = (instance.wa_lid or "").split("@")[0].split(":")[0]
    return bool(own_lid) and msg.sender_lid == own_lid


def route(msg: InboundMessage) -> dict[str, Any]:
    """Store one inbound message; returns what happened (used by tests and the task result)."""
    rt = current()
    try:
        instance_id = uuid.UUID(msg.instance_id)
    except ValueError:
        raise Rejected("unknown_instance", "instance id is not a UUID") from None
    when = datetime.fromtimestamp(msg.timestamp, UTC)
    event_id = f"in:{instance_id}:{msg.wa_message_id}"
    booking_event: tuple[str, dict[str, Any]] | None = None  # (event id, data): a booking opened
    with rt.sessions.begin() as s:
        instance = s.get(Instance, instance_id)
        if instance is None or instance.deleted_at is not None:
            # Not silent: the message cannot belong anywhere, so it is logged and reported.
            logger.warning(
                "inbound message %s for unknown or deleted instance %s",
                msg.wa_message_id,
                instance_id,
                extra={"instance_id": str(instance_id)},
            )
            raise Rejected("unknown_instance", "inbound message for an unknown instance")
        tenant_id = instance.tenant_id
        if _is_owner(msg, instance):
            stored = inbound.store_note(
                s,
                tenant_id=tenant_id,
                instance_id=instance_id,
                wa_message_id=msg.wa_message_id,
                chat_jid=msg.chat_jid,
                body=msg.text,
                media=msg.media,
                wa_timestamp=when,
            )
            kind = "note"
            contact_id = None
        else:
            if not msg.sender_phone and not msg.sender_lid:
                raise Rejected("invalid_inbound", "sender has neither phone number nor LID")
            contact = contacts.upsert_contact(
                s, tenant_id, phone_number=msg.sender_phone, lid=msg.sender_lid, name=msg.push_name
            )
            contact_id = contact.id
            stored = inbound.store_inbound_message(
                s,
                tenant_id=tenant_id,
                instance_id=instance_id,
                wa_message_id=msg.wa_message_id,
                chat_jid=msg.chat_jid,
                sender_jid=msg.sender_jid,
                contact_id=contact.id,
                type=msg.type,
                body=msg.text,
                media=msg.media,
                wa_timestamp=when,
            )
            kind = "message"
            if stored.created:
                opened = inbound.attach_to_pending_booking(
                    s,
                    tenant_id=tenant_id,
                    contact_id=contact.id,
                    instance_id=instance_id,
                    message_id=stored.id,
                )
                if opened.created:
                    booking = s.get(Booking, opened.id)
                    assert booking is not None  # just inserted in this transaction
                    booking_event = (
                        booking_event_id(BOOKING_CREATED, booking),
                        booking_data(booking),
                    )
        data = {
            "kind": kind,
            "id": msg.wa_message_id,
            "chat": msg.chat_jid,
            "from": msg.sender_phone or msg.sender_lid,
            "from_me": kind == "note",
            "type": msg.type,
            "text": msg.text,
            "timestamp": msg.timestamp,
            "contact_id": contact_id,
        }
        deliveries: list[int] = []
        if booking_event is not None:
            deliveries += record_webhooks(
                s,
                tenant_id=tenant_id,
                event_id=booking_event[0],
                event_type=BOOKING_CREATED,
                instance_id=instance_id,
                data=booking_event[1],
            )
        if stored.created:
            s.execute(
                update(Instance)
                .where(Instance.id == instance_id)
                .values(messages_received=Instance.messages_received + 1)
            )
            deliveries += record_webhooks(
                s,
                tenant_id=tenant_id,
                event_id=event_id,
                event_type=MESSAGE_EVENT,
                instance_id=instance_id,
                data=data,
            )
    if stored.created:
        rt.bus.publish(tenant_id, MESSAGE_EVENT, instance_id, data)
    if booking_event is not None:
        rt.bus.publish(tenant_id, BOOKING_CREATED, instance_id, booking_event[1])
    enqueue_webhooks(deliveries)
    return {"kind": kind, "id": stored.id, "created": stored.created}


@app.task(
    name=ROUTE_INBOUND_TASK,
    acks_late=True,
    queue=INBOUND_QUEUE,
    autoretry_for=(OSError,),
    throws=(Rejected,),
    retry_backoff=True,
    max_retries=None,
)
def route_inbound(message: dict[str, Any]) -> dict[str, Any]:
    """Public name `wafleet.route_inbound`; argument: InboundMessage.to_dict()."""
    return route(InboundMessage.from_dict(message))


# --- receipts -----------------------------------------------------------------------------
_RANK = {
    OutboxStatus.QUEUED: 0,
    OutboxStatus.SENDING: 1,
    OutboxStatus.SENT: 2,
    OutboxStatus.DELIVERED: 3,
    OutboxStatus.READ: 4,
}
_FROM_RECEIPT = {
    "sent": OutboxStatus.SENT,
    "delivered": OutboxStatus.DELIVERED,
    "read": OutboxStatus.READ,
    "played": OutboxStatus.READ,
}


def apply_status(instance_id: str, wa_message_ids: list[str], status: str) -> int:
    """Advance outbox rows to a receipt's status; never backwards, never out of failed/expired.

    Receipts arrive late, twice, or out of order (a read before the delivered); only forward
    moves are applied, so the result is the same whatever order they come in.
    """
    target = _FROM_RECEIPT.get(status)
    if target is None:
        raise Rejected("invalid_status", f"unknown receipt status {status!r}")
    rt = current()
    iid = uuid.UUID(instance_id)
    changed = 0
    with rt.sessions.begin() as s:
        rows = s.scalars(
            select(OutboxMessage)
            .where(
                OutboxMessage.instance_id == iid, OutboxMessage.wa_message_id.in_(wa_message_ids)
            )
            .with_for_update()
        ).all()
        now = utcnow()
        events = []
        deliveries: list[int] = []
        for row in rows:
            if row.status not in _RANK or _RANK[row.status] >= _RANK[target]:
                continue
            row.status = target
            if target is OutboxStatus.DELIVERED:
                row.delivered_at = now
            elif target is OutboxStatus.READ:
                row.read_at = now
                row.delivered_at = row.delivered_at or now
            changed += 1
            data = {
                "id": row.wa_message_id,
                "status": target.value,
                "chat": row.chat_jid,
                "outbox_id": row.id,
                "idempotency_key": row.idempotency_key,
            }
            deliveries += record_webhooks(
                s,
                tenant_id=row.tenant_id,
                event_id=f"st:{iid}:{row.wa_message_id}:{target.value}",
                event_type=STATUS_EVENT,
                instance_id=iid,
                data=data,
            )
            events.append((row.tenant_id, data))
    for tenant_id, data in events:
        rt.bus.publish(tenant_id, STATUS_EVENT, iid, data)
    enqueue_webhooks(deliveries)
    return changed


@app.task(name=MESSAGE_STATUS_TASK, acks_late=True, queue=INBOUND_QUEUE, throws=(Rejected,))
def message_status(instance_id: str, wa_message_ids: list[str], status: str) -> int:
    """Public name `wafleet.message_status`: receipts from WhatsApp for sent messages."""
    return apply_status(instance_id, wa_message_ids, status)
