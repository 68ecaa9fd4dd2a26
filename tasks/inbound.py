"""Inbound routing (DESIGN §2, §3.7, §3.8): `wafleet.route_inbound_batch`, `wafleet.route_inbound`
and `wafleet.message_status`.

The session worker decrypts messages, gathers them briefly (up to `inbound_batch_size` messages
or `inbound_batch_linger` seconds), enqueues one `route_inbound_batch` durably, and only then
acks each of them to WhatsApp. `route_inbound` (one message) stays for other producers and tasks
already queued; it is a batch of one. Routing writes a batch in ONE transaction, with multi-row
statements (instances read once; contacts, messages, notes, bookings, webhook rows, counters):
  * the instance owner's own messages (sent from the phone, or "from me") → an internal note;
  * any other sender → contact upsert (phone number and LID, merged), the message, and one open
    pending booking per contact (source `whatsapp`), plus webhook outbox rows;
and publishes the events on the tenant's stream after commit: `whatsapp:message`, and
`booking:created` when the message opened the contact's pending booking. Every write is
idempotent through unique constraints, so a redelivered task stores nothing twice and publishes
nothing twice. A message that cannot be stored (malformed, unknown instance, no sender) is
rejected with its code and logged; the rest of its batch is stored. `booking:created` carries
the booking as the batch left it (its `message_count` counts the batch's messages).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.models import BookingStatus, Instance, OutboxMessage, OutboxStatus, utcnow
from storage.repositories import contacts, inbound
from storage.repositories.upsert import Stored
from tasks.app import app
from tasks.errors import Rejected
from tasks.events import BOOKING_CREATED, record_webhooks, record_webhooks_many
from tasks.queues import (
    INBOUND_QUEUE,
    MESSAGE_STATUS_TASK,
    ROUTE_INBOUND_BATCH_TASK,
    ROUTE_INBOUND_TASK,
)
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


def _parse(item: InboundMessage | dict[str, Any]) -> tuple[InboundMessage, uuid.UUID, datetime]:
    msg = item if isinstance(item, InboundMessage) else InboundMessage.from_dict(item)
    try:
        instance_id = uuid.UUID(msg.instance_id)
    except (ValueError, TypeError, AttributeError):
        raise Rejected("unknown_instance", "instance id is not a UUID") from None
    if not isinstance(msg.wa_message_id, str) or not isinstance(msg.chat_jid, str):
        raise Rejected("invalid_inbound", "message id and chat must be strings")
    try:
        when = datetime.fromtimestamp(msg.timestamp, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise Rejected("invalid_inbound", "timestamp is not a unix time") from None
    return msg, instance_id, when


def _rejection(exc: Rejected, item: InboundMessage | dict[str, Any]) -> dict[str, Any]:
    wa_id = item.wa_message_id if isinstance(item, InboundMessage) else None
    if isinstance(item, dict):
        wa_id = item.get("wa_message_id")
    return {"rejected": exc.code, "text": exc.text, "wa_message_id": wa_id}


def route(msg: InboundMessage) -> dict[str, Any]:
    """Store one inbound message; returns what happened (used by tests and the task result).

    A batch of one (`route_batch`): a rejected message raises its `Rejected`."""
    (result,) = route_batch([msg])
    if "rejected" in result:
        raise Rejected(result["rejected"], result["text"])
    return result


def route_batch(items: Sequence[InboundMessage | dict[str, Any]]) -> list[dict[str, Any]]:
    """Store a batch of inbound messages in ONE transaction; one result per message, in order.

    A result is `{"kind": "message"|"note", "id": row id, "created": bool}`, or for a message
    that cannot be stored `{"rejected": code, "text": ..., "wa_message_id": ...}` (codes as the
    single task's `Rejected`: invalid_inbound, unknown_instance); a rejected message is logged
    and the others are stored. Messages are written in batch order (ids, pending-booking counts
    and events follow it, so each chat keeps its order). If the database refuses the batch as a
    whole for a reason other than a lost connection or a deadlock (say a value too long for its
    column), each message is routed on its own, so only the offending one is rejected.
    """
    rt = current()
    results: list[dict[str, Any] | None] = [None] * len(items)
    parsed: list[tuple[int, InboundMessage, uuid.UUID, datetime]] = []
    for index, item in enumerate(items):
        try:
            parsed.append((index, *_parse(item)))
        except Rejected as exc:
            logger.warning("inbound message rejected (%s): %s", exc.code, exc.text)
            results[index] = _rejection(exc, item)
    if parsed:
        try:
            published, deliveries = _store(rt.sessions, parsed, results)
        except (OperationalError, InterfaceError):
            raise  # the connection or a deadlock: the task retries the whole batch
        except DBAPIError:
            if len(parsed) == 1:
                raise
            logger.warning("inbound batch of %d refused; routing one by one", len(parsed))
            for index, msg, _, _ in parsed:
                try:
                    results[index] = route_batch([msg])[0]
                except DBAPIError as exc:
                    logger.warning("inbound message %s refused: %r", msg.wa_message_id, exc.orig)
                    results[index] = _rejection(
                        Rejected("invalid_inbound", f"refused by the database: {type(exc.orig)}"),
                        msg,
                    )
            return [r for r in results if r is not None]
        rt.bus.publish_many(published)
        enqueue_webhooks(deliveries)
    return [r for r in results if r is not None]


Published = tuple[uuid.UUID, str, uuid.UUID, dict[str, Any]]


def _store(
    sessions: sessionmaker[Session],
    parsed: list[tuple[int, InboundMessage, uuid.UUID, datetime]],
    results: list[dict[str, Any] | None],
) -> tuple[list[Published], list[int]]:
    """The batch's one transaction; fills `results`, returns the events and new deliveries."""
    with sessions.begin() as s:
        ids = {iid for _, _, iid, _ in parsed}
        loaded = {i.id: i for i in s.scalars(select(Instance).where(Instance.id.in_(ids)))}
        notes: list[tuple[int, InboundMessage, Instance, datetime]] = []
        clients: list[tuple[int, InboundMessage, Instance, datetime]] = []
        for index, msg, iid, when in parsed:
            instance = loaded.get(iid)
            if instance is None or instance.deleted_at is not None:
                # Not silent: the message cannot belong anywhere, so it is logged and reported.
                logger.warning(
                    "inbound message %s for unknown or deleted instance %s",
                    msg.wa_message_id,
                    iid,
                    extra={"instance_id": str(iid)},
                )
                exc = Rejected("unknown_instance", "inbound message for an unknown instance")
                results[index] = _rejection(exc, msg)
            elif _is_owner(msg, instance):
                notes.append((index, msg, instance, when))
            elif not msg.sender_phone and not msg.sender_lid:
                exc = Rejected("invalid_inbound", "sender has neither phone number nor LID")
                logger.warning("inbound message %s rejected: %s", msg.wa_message_id, exc.text)
                results[index] = _rejection(exc, msg)
            else:
                clients.append((index, msg, instance, when))

        # Contacts: one batch per tenant, sightings in message order.
        by_tenant: dict[uuid.UUID, list[int]] = {}
        for n, (_, _, instance, _) in enumerate(clients):
            by_tenant.setdefault(instance.tenant_id, []).append(n)
        contact_of: dict[int, int] = {}
        for tenant_id, members in by_tenant.items():
            sightings = [
                (clients[n][1].sender_phone, clients[n][1].sender_lid, clients[n][1].push_name)
                for n in members
            ]
            resolved = contacts.upsert_contacts(s, tenant_id, sightings)
            contact_of.update(zip(members, resolved, strict=True))

        stored_notes = inbound.store_notes(
            s,
            [
                {
                    "tenant_id": instance.tenant_id,
                    "instance_id": instance.id,
                    "wa_message_id": msg.wa_message_id,
                    "chat_jid": msg.chat_jid,
                    "body": msg.text,
                    "media": msg.media,
                    "wa_timestamp": when,
                }
                for _, msg, instance, when in notes
            ],
        )
        stored_messages = inbound.store_inbound_messages(
            s,
            [
                {
                    "tenant_id": instance.tenant_id,
                    "instance_id": instance.id,
                    "wa_message_id": msg.wa_message_id,
                    "chat_jid": msg.chat_jid,
                    "sender_jid": msg.sender_jid,
                    "contact_id": contact_of[n],
                    "type": msg.type,
                    "body": msg.text,
                    "media": msg.media,
                    "wa_timestamp": when,
                }
                for n, (_, msg, instance, when) in enumerate(clients)
            ],
        )

        # Pending bookings: per contact, its first newly stored message and how many.
        new_by_contact: dict[int, inbound.NewMessages] = {}
        for n, (_, _, instance, _) in enumerate(clients):
            stored = stored_messages[n]
            if not stored.created:
                continue  # a redelivery counts nothing again
            cid = contact_of[n]
            seen = new_by_contact.get(cid)
            new_by_contact[cid] = inbound.NewMessages(
                instance.tenant_id,
                cid,
                instance.id if seen is None else seen.instance_id,
                stored.id if seen is None else seen.first_message_id,
                1 if seen is None else seen.count + 1,
            )
        opened: dict[int, dict[str, Any]] = {}  # first message id → the booking it opened
        for row, created in inbound.attach_to_pending_bookings(s, list(new_by_contact.values())):
            if created:
                opened[row.first_message_id] = {
                    "id": row.id,
                    "contact_id": row.contact_id,
                    "status": BookingStatus(row.status).value,
                    "source": row.source,
                    "first_message_id": row.first_message_id,
                    "message_count": row.message_count,
                }

        # Events in message order (a booking:created right after the message that opened it),
        # webhook outbox rows per tenant, counters per instance.
        routed: list[tuple[int, InboundMessage, Instance, str, Stored, int | None]] = sorted(
            [(i, m, inst, "note", stored_notes[n], None) for n, (i, m, inst, _) in enumerate(notes)]
            + [
                (i, m, inst, "message", stored_messages[n], contact_of[n])
                for n, (i, m, inst, _) in enumerate(clients)
            ],
            key=lambda r: r[0],
        )
        published: list[Published] = []
        webhook_events: dict[uuid.UUID, list[tuple[str, str, uuid.UUID, dict[str, Any]]]] = {}
        received: dict[uuid.UUID, int] = {}
        for index, msg, instance, kind, stored, contact_id in routed:
            results[index] = {"kind": kind, "id": stored.id, "created": stored.created}
            if not stored.created:
                continue
            tenant_id, iid = instance.tenant_id, instance.id
            received[iid] = received.get(iid, 0) + 1
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
            hooks = webhook_events.setdefault(tenant_id, [])
            hooks.append((f"in:{iid}:{msg.wa_message_id}", MESSAGE_EVENT, iid, data))
            published.append((tenant_id, MESSAGE_EVENT, iid, data))
            booking = opened.get(stored.id) if kind == "message" else None
            if booking is not None:
                event_id = f"{BOOKING_CREATED}:{booking['id']}:{booking['status']}"
                hooks.append((event_id, BOOKING_CREATED, iid, booking))
                published.append((tenant_id, BOOKING_CREATED, iid, booking))
        for iid, count in sorted(received.items()):  # one lock order for concurrent batches
            s.execute(
                update(Instance)
                .where(Instance.id == iid)
                .values(messages_received=Instance.messages_received + count)
            )
        deliveries: list[int] = []
        for tenant_id, hooks in webhook_events.items():
            deliveries += record_webhooks_many(s, tenant_id, hooks)
    return published, deliveries


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


@app.task(
    name=ROUTE_INBOUND_BATCH_TASK,
    acks_late=True,
    queue=INBOUND_QUEUE,
    autoretry_for=(OSError, OperationalError, InterfaceError),
    throws=(Rejected,),
    retry_backoff=True,
    max_retries=None,
)
def route_inbound_batch(messages: Any) -> list[dict[str, Any]]:
    """Public name `wafleet.route_inbound_batch`; argument: a list of InboundMessage.to_dict()
    (the session workers' form). Returns one result per message (see `route_batch`); rejected
    messages are reported there, never by failing the batch."""
    if not isinstance(messages, list):
        raise Rejected("invalid_inbound", "a batch is a list of messages")
    return route_batch(messages)


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
