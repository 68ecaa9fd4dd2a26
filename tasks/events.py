"""Recording fleet events: the webhook outbox rows (in the caller's transaction) and the
per-tenant Redis stream (after commit). Event types are listed in storage.bus."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.bus import EventBus
from storage.models import WebhookEndpoint
from storage.repositories.webhooks import enqueue_delivery


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
    endpoints = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    payload = {
        "id": event_id,
        "type": event_type,
        "instance_id": None if instance_id is None else str(instance_id),
        "data": data,
    }
    new: list[int] = []
    for endpoint in endpoints:
        if wants(endpoint, event_type, instance_id):
            stored = enqueue_delivery(
                session,
                endpoint=endpoint,
                event_id=event_id,
                event_type=event_type,
                payload=payload,
            )
            if stored.created:
                new.append(stored.id)
    return new


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
