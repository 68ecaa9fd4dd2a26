"""Webhook endpoints (secrets sealed with the master key) and the delivery outbox."""

from __future__ import annotations

import os
import uuid
from typing import Any

from sqlalchemy.orm import Session

from storage.crypto import Keyring, open_with_master, seal_with_master
from storage.db import conflicts_wrapped
from storage.errors import InvalidValue
from storage.models import WebhookDelivery, WebhookEndpoint
from storage.repositories.upsert import Stored, insert_or_find

SECRET_BYTES = 32


def create_endpoint(
    session: Session,
    keyring: Keyring,
    tenant_id: uuid.UUID,
    url: str,
    events: dict[str, Any] | None = None,
) -> tuple[WebhookEndpoint, bytes]:
    """A new endpoint and its signing secret (returned once, stored sealed)."""
    if not url.startswith(("http://", "https://")):
        raise InvalidValue("webhook URL must be http(s)", field="url")
    endpoint_id = uuid.uuid4()
    secret = os.urandom(SECRET_BYTES)
    row = WebhookEndpoint(
        id=endpoint_id,
        tenant_id=tenant_id,
        url=url,
        events=events,
        secret_ciphertext=seal_with_master(keyring, f"webhook:{endpoint_id}", secret),
        master_key_id=keyring.current.key_id,
    )
    session.add(row)
    with conflicts_wrapped():
        session.flush()
    return row, secret


def endpoint_secrets(keyring: Keyring, endpoint: WebhookEndpoint) -> tuple[bytes, ...]:
    """The current secret and, during a rotation, the previous one (both sign deliveries)."""
    purpose = f"webhook:{endpoint.id}"
    secrets = [
        open_with_master(keyring, endpoint.master_key_id, purpose, endpoint.secret_ciphertext)
    ]
    if endpoint.previous_secret_ciphertext is not None:
        secrets.append(
            open_with_master(
                keyring,
                endpoint.master_key_id,
                purpose + ":previous",
                endpoint.previous_secret_ciphertext,
            )
        )
    return tuple(secrets)


def enqueue_delivery(
    session: Session,
    *,
    endpoint: WebhookEndpoint,
    event_id: str,
    event_type: str,
    payload: dict[str, Any],
) -> Stored:
    """Record one event for one endpoint; idempotent on (endpoint, event id)."""
    return insert_or_find(
        session,
        WebhookDelivery,
        {
            "tenant_id": endpoint.tenant_id,
            "endpoint_id": endpoint.id,
            "event_id": event_id,
            "event_type": event_type,
            "payload": payload,
        },
        ("endpoint_id", "event_id"),
    )
