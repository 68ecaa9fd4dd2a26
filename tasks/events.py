"""Recording fleet events: the webhook outbox rows (in the caller's transaction) and the
per-tenant Redis stream (after commit). Event types are listed in storage.bus.

Booking events: `booking:created` when inbound routing opens a contact's pending booking,
`booking:updated` when a booking's status changes (the gateway's confirm/cancel). Their data is
`booking_data(booking)`; their event ids are derived from the booking (and its new status), so a
redelivered task or a repeated decision records no second webhook delivery."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.bus import EventBus
from storage.models import Booking, WebhookDelivery, WebhookEndpoint
from storage.repositories.upsert import insert_many_or_ignore

BOOKING_CREATED = "booking:created"
BOOKING_UPDATED = "booking:updated"


def booking_data(booking: Booking, previous_status: str | None = None) -> dict[str, Any]:
    """The JSON data of a booking event."""
    data: dict[str, Any] = {
        "id": booking.id,
        "contact_id": booking.contact_id,
        "status": booking.status.value,
        "source": booking.source,
        "first_message_id": booking.first_message_id,
        "message_count": booking.message_count,
    }
    if previous_status is not None:
        data["previous_status"] = previous_status
    return data


def booking_event_id(event_type: str, booking: Booking) -> str:
    """A booking's status changes once per status at most: the id names both."""
    return f"{event_type}:{booking.id}:{booking.status.value}"


def wants(endpoint: WebhookEndpoint, event_type: str, instance_id: uuid.UUID | None) -> bool:
    spec = endpoint.events or {}
    types = spec.get("types")
    instances = spec.get("instances")
    if types and event_type not in types:
        return False
    return not (instances and (instance_id is None or str(instance_id) not in instances))


def record_webhooks(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    event_id: str,
    event_type: str,
    instance_id: uuid.UUID | None,
    data: dict[str, Any],
) -> list[int]:
    """Add a delivery for every enabled endpoint of the tenant that wants this event.

    Idempotent on (endpoint, event_id): a redelivered inbound message adds nothing twice.
    Returns the ids of the new deliveries (to enqueue after commit).
    """
    return record_webhooks_many(session, tenant_id, [(event_id, event_type, instance_id, data)])


def record_webhooks_many(
    session: Session,
    tenant_id: uuid.UUID,
    events: Sequence[tuple[str, str, uuid.UUID | None, dict[str, Any]]],
) -> list[int]:
    """`record_webhooks` for a batch of the tenant's (event id, type, instance, data) events:
    the endpoints are read once and the deliveries written in one statement."""
    if not events:
        return []
    endpoints = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    rows = [
        {
            "tenant_id": endpoint.tenant_id,
            "endpoint_id": endpoint.id,
            "event_id": event_id,
            "event_type": event_type,
            "payload": {
                "id": event_id,
                "type": event_type,
                "instance_id": None if instance_id is None else str(instance_id),
                "data": data,
            },
        }
        for event_id, event_type, instance_id, data in events
        for endpoint in endpoints
        if wants(endpoint, event_type, instance_id)
    ]
    inserted = insert_many_or_ignore(
        session, WebhookDelivery, rows, ("endpoint_id", "event_id"), ("id",)
    )
    return [int(r.id) for r in inserted]


def publish_event(
    sessions: sessionmaker[Session],
    bus: EventBus,
    *,
    tenant_id: uuid.UUID,
    instance_id: uuid.UUID | None,
    event_type: str,
    data: dict[str, Any],
    event_id: str | None = None,
) -> list[int]:
    """A fleet event: webhook outbox rows (one transaction), then the tenant's Redis stream.

    Returns the new delivery ids, for the caller to enqueue (tasks.webhooks.enqueue).
    """
    eid = event_id or f"ev:{uuid.uuid4()}"
    with sessions.begin() as s:
        deliveries = record_webhooks(
            s,
            tenant_id=tenant_id,
            event_id=eid,
            event_type=event_type,
            instance_id=instance_id,
            data=data,
        )
    bus.publish(tenant_id, event_type, instance_id, data)
    return deliveries
