"""Booking events on real services: inbound routing opening a pending booking publishes
`booking:created`, a decision through the gateway publishes `booking:updated` — each on the
tenant's Redis stream and as a webhook delivery row that the real routing worker delivers."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from typing import Any

from celery import Celery
from fastapi.testclient import TestClient
from sqlalchemy import select

from storage.bus import EventBus
from storage.models import WebhookDelivery
from tasks.queues import WEBHOOK_SWEEP_TASK
from tests.fleet.test_webhooks import Receiver, receiver  # noqa: F401  (fixture)
from tests.gateway.conftest import TenantHandle, inbound
from workers.gateway.state import Gateway

TIMEOUT = 60


def _events(g: Gateway, tenant: TenantHandle, kind: str) -> list[dict[str, Any]]:
    return [
        e.as_json() for e in g.bus.read(uuid.UUID(tenant.id), count=1000).events if e.type == kind
    ]


def _deliveries(g: Gateway, kind: str) -> list[WebhookDelivery]:
    with g.sessions() as s:
        return list(
            s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.event_type == kind)
                .order_by(WebhookDelivery.id)
            )
        )


def test_booking_created_and_updated_events(
    client: TestClient,
    tenant: TenantHandle,
    other: TenantHandle,
    receiver: Receiver,  # noqa: F811
    routing_worker: subprocess.Popen[bytes],
    producer: Celery,
) -> None:
    g: Gateway = client.app.state.gateway  # type: ignore[attr-defined]
    assert isinstance(g.bus, EventBus)
    hook = client.post(
        "/v1/webhooks",
        json={
            "url": f"{receiver.base}/bookings",
            "event_types": ["booking:created", "booking:updated"],
        },
        headers=tenant.headers,
    ).json()

    # Two messages from one client: the first opens the pending booking, the second joins it.
    inbound(tenant.instance_id, "5511977776666", "quero marcar")
    inbound(tenant.instance_id, "5511977776666", "amanhã às 10h?")
    (created,) = _events(g, tenant, "booking:created")
    (booking,) = client.get("/v1/bookings", headers=tenant.headers).json()["items"]
    assert created["instance_id"] == tenant.instance_id
    assert created["data"]["id"] == booking["id"]
    assert created["data"]["status"] == "pending"
    assert created["data"]["contact_id"] == booking["contact_id"]
    assert created["data"]["source"] == "whatsapp"

    # A status change through the gateway; repeating the decision publishes nothing more.
    assert (
        client.post(f"/v1/bookings/{booking['id']}/confirm", headers=tenant.headers).status_code
        == 200
    )
    assert (
        client.post(f"/v1/bookings/{booking['id']}/confirm", headers=tenant.headers).status_code
        == 200
    )
    (updated,) = _events(g, tenant, "booking:updated")
    assert updated["data"]["id"] == booking["id"]
    assert updated["data"]["status"] == "confirmed"
    assert updated["data"]["previous_status"] == "pending"
    assert updated["instance_id"] == tenant.instance_id
    assert _events(g, other, "booking:created") == []
    assert _events(g, other, "booking:updated") == []

    # One delivery row per event for the tenant's endpoint, delivered by the routing worker.
    rows = _deliveries(g, "booking:created") + _deliveries(g, "booking:updated")
    assert [(str(r.endpoint_id), r.event_type) for r in rows] == [
        (hook["id"], "booking:created"),
        (hook["id"], "booking:updated"),
    ]
    # The endpoint takes one request at a time here (webhook_max_inflight=1): the second
    # delivery is deferred and comes back through the housekeeping sweep, as beat would run it.
    receiver.wait_for(1, "/bookings")
    pause = threading.Event()
    for _ in range(TIMEOUT * 2):
        if len(receiver.requests) >= 2:
            break
        producer.send_task(WEBHOOK_SWEEP_TASK).get(timeout=TIMEOUT)
        pause.wait(0.5)
    got = receiver.wait_for(2, "/bookings")
    bodies = sorted((json.loads(body) for _, _, body in got), key=lambda b: b["type"])
    assert [(b["type"], b["data"]["status"]) for b in bodies] == [
        ("booking:created", "pending"),
        ("booking:updated", "confirmed"),
    ]
    assert {h["X-Wafleet-Event"] for _, h, _ in got} == {"booking:created", "booking:updated"}
