"""Realtime events over the websocket (auth, filters, resume, gap notice), per-key rate limiting,
health and readiness, and the Prometheus exposition."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from storage.bus import EventBus
from tests.gateway.conftest import TenantHandle, assert_error, inbound
from workers.gateway.state import RateLimit

STATUS = "whatsapp:message-status"


@pytest.fixture
def bus(gateway_app: FastAPI) -> EventBus:
    return gateway_app.state.gateway.bus  # type: ignore[no-any-return]


def _ready(ws: Any) -> str:
    frame = ws.receive_json()
    assert frame["type"] == "ready", frame
    return str(frame["last_event_id"])


# --- realtime events ------------------------------------------------------------------------
def test_events_arrive_with_filters(
    client: TestClient, tenant: TenantHandle, other: TenantHandle, bus: EventBus
) -> None:
    second = client.post("/v1/instances", json={"name": "second"}, headers=tenant.headers).json()
    url = f"/v1/events?token={tenant.key}&instance_id={tenant.instance_id}&types=whatsapp:message"
    with client.websocket_connect(url) as ws:
        _ready(ws)
        bus.publish(tenant.id, STATUS, tenant.instance_id, {"status": "read"})  # other type
        inbound(second["id"], "5511977770009", "other instance")  # other instance
        inbound(other.instance_id, "5511977770008", "other tenant")  # other tenant's stream
        inbound(tenant.instance_id, "5511977770001", "olá")
        event = ws.receive_json()
    assert set(event) == {"id", "type", "instance_id", "timestamp", "data"}
    assert event["type"] == "whatsapp:message"
    assert event["instance_id"] == tenant.instance_id
    assert event["data"]["text"] == "olá"
    assert re.match(r"^\d+-\d+$", event["id"])


def test_first_message_authentication_and_resume(
    client: TestClient, tenant: TenantHandle, bus: EventBus
) -> None:
    ids = [bus.publish(tenant.id, STATUS, tenant.instance_id, {"n": n}) for n in range(3)]
    with client.websocket_connect("/v1/events") as ws:
        ws.send_json({"token": tenant.key, "last_event_id": ids[0]})
        assert _ready(ws) == ids[0]
        got = [ws.receive_json() for _ in range(2)]
    assert [e["id"] for e in got] == ids[1:]
    assert [e["data"]["n"] for e in got] == [1, 2]


def test_resume_after_trimmed_events_sends_a_gap_notice_first(
    client: TestClient, tenant: TenantHandle, bus: EventBus, redis_client: redis.Redis
) -> None:
    ids = [bus.publish(tenant.id, STATUS, tenant.instance_id, {"n": n}) for n in range(4)]
    redis_client.xtrim(bus.stream(tenant.id), maxlen=2, approximate=False)  # retention ran
    with client.websocket_connect(f"/v1/events?token={tenant.key}&last_event_id={ids[0]}") as ws:
        _ready(ws)
        gap = ws.receive_json()
        got = [ws.receive_json() for _ in range(2)]
    assert gap["type"] == "gap"
    assert gap["last_event_id"] == ids[0]
    assert gap["resume_from"] == ids[2]
    assert [e["id"] for e in got] == ids[2:]


def test_new_subscriber_gets_only_new_events(
    client: TestClient, tenant: TenantHandle, bus: EventBus
) -> None:
    old = bus.publish(tenant.id, STATUS, tenant.instance_id, {"n": "old"})
    with client.websocket_connect(f"/v1/events?token={tenant.key}") as ws:
        assert _ready(ws) == old
        new = bus.publish(tenant.id, STATUS, tenant.instance_id, {"n": "new"})
        event = ws.receive_json()
    assert event["id"] == new


@pytest.mark.parametrize(
    ("query", "first", "close", "code"),
    [
        ("?token=wfk_nope", None, 4401, "invalid_api_key"),
        ("", "not json", 4400, "invalid_request"),
        ("", '{"no": "token"}', 4401, "missing_api_key"),
        ("?token={key}&last_event_id=abc", None, 4400, "invalid_request"),
        ("?token={key}&instance_id=nope", None, 4400, "invalid_request"),
        ("?token={reader}", None, 4403, "insufficient_scope"),
    ],
)
def test_websocket_refusals(
    client: TestClient,
    tenant: TenantHandle,
    query: str,
    first: str | None,
    close: int,
    code: str,
) -> None:
    sender = tenant.key_headers(client, ["send"])["Authorization"].removeprefix("Bearer ")
    url = "/v1/events" + query.format(key=tenant.key, reader=sender)
    with client.websocket_connect(url) as ws:
        if first is not None:
            ws.send_text(first)
        frame = ws.receive_json()
        assert frame["type"] == "error"
        assert frame["code"] == code
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == close


# --- rate limiting --------------------------------------------------------------------------
@pytest.fixture
def limited(gateway_app: FastAPI) -> Iterator[None]:
    gateway = gateway_app.state.gateway
    saved = gateway.rate_limit
    # A window of ~11 days: the counter cannot roll over during the test.
    gateway.rate_limit = RateLimit(requests=3, window=1_000_000)
    yield
    gateway.rate_limit = saved


def test_rate_limit_per_key(client: TestClient, tenant: TenantHandle, limited: None) -> None:
    other_key = tenant.key_headers(client, ["read"])
    answers = [client.get("/v1/instances", headers=tenant.headers) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in answers] == ["2", "1", "0"]
    r = client.get("/v1/instances", headers=tenant.headers)
    body = assert_error(r, 429, "rate_limited")
    assert body["retryable"] is True
    assert 0 < body["retry_after"] <= 1_000_000
    assert int(r.headers["Retry-After"]) >= 1
    assert body["details"] == {"limit": 3, "window": 1_000_000}
    # Another key has its own budget.
    assert client.get("/v1/instances", headers=other_key).status_code == 200


# --- health, readiness, metrics -------------------------------------------------------------
def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {
            "database": {"ok": True, "error": None},
            "redis": {"ok": True, "error": None},
            "broker": {"ok": True, "error": None},
        },
    }


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    match = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    assert match, f"{name}{{{want}}} not exposed"
    return float(match.group(1))


def test_metrics_exposition(client: TestClient, tenant: TenantHandle) -> None:
    h = tenant.headers
    client.get(f"/v1/instances/{tenant.instance_id}", headers=h)
    client.get("/v1/no/such/route", headers=h)
    client.post(
        f"/v1/instances/{tenant.instance_id}/send/text",
        json={"to": "5511988887777", "text": "hi"},
        headers=h,
    )
    hook = client.post(
        "/v1/webhooks", json={"url": "https://a.example/h", "enabled": False}, headers=h
    ).json()
    client.post(f"/v1/webhooks/{hook['id']}/test", headers=h)  # stays pending: disabled
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    route = "/v1/instances/{instance_id}"
    assert (
        _sample(text, "wafleet_http_requests_total", method="GET", route=route, status="200") >= 1
    )
    assert (
        _sample(text, "wafleet_http_requests_total", method="GET", route="unmatched", status="404")
        >= 1
    )
    assert (
        _sample(text, "wafleet_http_request_duration_seconds_count", method="GET", route=route) >= 1
    )
    assert _sample(text, "wafleet_outbox_depth", status="queued") == 1
    assert _sample(text, "wafleet_outbox_depth", status="sending") == 0
    assert _sample(text, "wafleet_webhook_pending") == 1
    assert _sample(text, "wafleet_webhook_lag_seconds") >= 0
    for queue in ("wa.accept", "wa.inbound", "wa.webhooks", "wa.housekeeping"):
        assert _sample(text, "wafleet_queue_depth", queue=queue) >= 0
    # Bounded labels: no tenant, instance or webhook ids, and no raw unknown paths.
    for value in (tenant.id, tenant.instance_id, hook["id"], "/v1/no/such/route"):
        assert value not in text
