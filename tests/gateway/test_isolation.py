"""Tenant isolation at EVERY endpoint: tenant B, holding a key with every scope, calls each route
of the app with tenant A's ids and must get 403 or 404 (never A's data, never a hint that the
ids exist). The routes are enumerated from the app's own OpenAPI document (every HTTP route but
/metrics is in it), so a new endpoint without a case here fails `test_every_route_is_covered`
until it is added. The one websocket route is checked on its own."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.gateway.conftest import ADMIN, TenantHandle, assert_error, inbound

TEXT = {"to": "5511988887777", "text": "hi"}
MEDIA = {
    "to": "5511988887777",
    "media": {"kind": "image", "mimetype": "image/png", "url": "https://x.example/a.png"},
}
# Bodies that pass validation, so that the isolation check itself is what answers.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/instances/{instance_id}/send/text"): {"json": TEXT},
    ("POST", "/v1/instances/{instance_id}/send/media"): {"json": MEDIA},
    ("POST", "/v1/instances/{instance_id}/send/bulk"): {"json": {"items": [TEXT]}},
    ("POST", "/v1/instances/{instance_id}/send/upload"): {
        "data": {"to": "5511988887777", "kind": "image"},
        "files": {"file": ("a.png", b"png", "image/png")},
    },
    ("PATCH", "/v1/instances/{instance_id}"): {"json": {"outbound_paused": True}},
    ("POST", "/v1/instances/{instance_id}/connect"): {
        "json": {"method": "code", "phone": "+5511988887777"}
    },
    ("PATCH", "/v1/webhooks/{webhook_id}"): {"json": {"enabled": False}},
    ("POST", "/v1/tenants"): {"json": {"name": "intruder"}},
    ("PATCH", "/v1/tenants/{tenant_id}"): {"json": {"disabled": True}},
    ("POST", "/v1/tenants/{tenant_id}/api-keys"): {"json": {"name": "x", "scopes": ["read"]}},
    ("POST", "/v1/instances"): {"json": {"name": "x"}},
    ("POST", "/v1/webhooks"): {"json": {"url": "https://x.example/h", "instance_ids": ["{a}"]}},
}
# Routes whose path carries no id of A: the isolation check is a query parameter naming one of
# A's ids (404 expected), or, for plain lists, that nothing of A's appears in the answer.
QUERIES: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/v1/outbox/by-key"): {"idempotency_key": "a-secret-key"},
    ("GET", "/v1/messages"): {"instance_id": "{instance_id}"},
    ("GET", "/v1/notes"): {"instance_id": "{instance_id}"},
    ("GET", "/v1/bookings"): {"contact_id": "{contact_id}"},
}
LISTS = {
    ("GET", "/v1/instances"),
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/contacts"),
    ("GET", "/v1/stats"),
}
# Routes whose body names one of A's ids (in BODIES).
BODY_IDS = {("POST", "/v1/webhooks")}
# Creating something names no id of A's: it must land in B's tenant (checked at the end).
CREATES = {("POST", "/v1/instances")}
ADMIN_ROUTES = re.compile(r"^/v1/tenants")
PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _operations(app: FastAPI) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, operations in app.openapi()["paths"].items()
        if path not in PUBLIC
        for method, operation in operations.items()
    }


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    return sorted(_operations(app))


@pytest.fixture
def victim(client: TestClient, tenant: TenantHandle) -> dict[str, str]:
    """Tenant A with one of everything: outbox row, contact, message, booking, note, webhook
    and delivery, API key."""
    h = tenant.headers
    sent = client.post(
        f"/v1/instances/{tenant.instance_id}/send/text",
        json={**TEXT, "idempotency_key": "a-secret-key"},
        headers=h,
    ).json()
    inbound(tenant.instance_id, "5511977770001", "private message")
    inbound(tenant.instance_id, "5511977770001", "private note", from_me=True)
    contact = client.get("/v1/contacts", headers=h).json()["items"][0]
    booking = client.get("/v1/bookings", headers=h).json()["items"][0]
    note = client.get("/v1/notes", headers=h).json()["items"][0]
    hook = client.post("/v1/webhooks", json={"url": "https://a.example/hook"}, headers=h).json()
    test = client.post(f"/v1/webhooks/{hook['id']}/test", headers=h).json()
    keys = client.get(f"/v1/tenants/{tenant.id}/api-keys", headers=ADMIN).json()
    return {
        "tenant_id": tenant.id,
        "instance_id": tenant.instance_id,
        "outbox_id": str(sent["outbox_id"]),
        "contact_id": str(contact["id"]),
        "booking_id": str(booking["id"]),
        "note_id": str(note["id"]),
        "webhook_id": hook["id"],
        "delivery_id": str(test["delivery_id"]),
        "key_id": keys[0]["id"],
    }


def test_every_route_is_covered(gateway_app: FastAPI) -> None:
    operations = _operations(gateway_app)
    assert len(operations) >= 40
    for (method, path), operation in operations.items():
        has_ids = "{" in path
        covered = (
            has_ids
            or (method, path) in QUERIES
            or (method, path) in LISTS
            or (method, path) in CREATES
            or (method, path) in BODY_IDS
            or ADMIN_ROUTES.match(path)
        )
        assert covered, f"add {method} {path} to the isolation test"
        if "requestBody" in operation:
            assert (method, path) in BODIES, f"add a valid body for {method} {path}"


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.replace("{a}", ids["instance_id"]).format(**ids) if "{" in value else value
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


def test_another_tenant_gets_403_or_404_everywhere(
    client: TestClient,
    gateway_app: FastAPI,
    victim: dict[str, str],
    other: TenantHandle,
) -> None:
    intruder = other.headers  # read + send + admin, tenant-wide
    # What must never show: A's UUIDs, its contact's number, its texts (integer ids are too
    # short to search for as text; they only appear in A's own rows, which carry these too).
    secrets = [v for v in victim.values() if len(v) >= 32]
    secrets += ["5511977770001", "private", "a-secret-key"]
    created: list[str] = []
    checked = 0
    for method, path in _routes(gateway_app):
        url = path.format(**victim)
        kwargs = _fill(BODIES.get((method, path), {}), victim)
        params = _fill(QUERIES.get((method, path), {}), victim)
        r = client.request(method, url, params=params, headers=intruder, **kwargs)
        if (method, path) in CREATES:
            assert r.status_code == 201, (method, path, r.text)
            created.append(r.json()["id"])
        elif (method, path) in LISTS:
            assert r.status_code in {200, 403}, (method, path, r.text)
            for secret in secrets:
                assert secret not in r.text, (method, path, secret)
        elif ADMIN_ROUTES.match(path):
            assert_error(r, 403, "admin_key_required")
        else:
            assert r.status_code in {403, 404}, (method, path, r.status_code, r.text)
            body = assert_error(r, r.status_code)
            for secret in secrets:
                assert secret not in r.text, (method, path, secret)
            assert body["code"] in {"not_found", "admin_key_required"}, (method, path, body)
        checked += 1
    assert checked >= 40
    # Nothing of A's changed: the instance is not paused, the booking still pending.
    a = {"Authorization": f"Bearer {victim_key(client, victim)}"}
    inst = client.get(f"/v1/instances/{victim['instance_id']}", headers=a).json()
    assert inst["outbound_paused"] is False
    status = client.get(f"/v1/instances/{victim['instance_id']}/status", headers=a).json()
    assert status["desired_state"] == "auto"  # no connect/disconnect/logout of B's reached A
    a_instances = {i["id"] for i in client.get("/v1/instances", headers=a).json()}
    assert a_instances == {victim["instance_id"]}
    b_instances = {i["id"] for i in client.get("/v1/instances", headers=intruder).json()}
    assert set(created) <= b_instances
    booking = client.get(f"/v1/bookings/{victim['booking_id']}", headers=a).json()
    assert booking["status"] == "pending"
    hook = client.get(f"/v1/webhooks/{victim['webhook_id']}", headers=a).json()
    assert hook["enabled"] is True


def victim_key(client: TestClient, victim: dict[str, str]) -> str:
    r = client.post(
        f"/v1/tenants/{victim['tenant_id']}/api-keys",
        json={"name": "check", "scopes": ["read"]},
        headers=ADMIN,
    )
    key: str = r.json()["key"]
    return key


def test_websocket_events_of_another_tenants_instance(
    client: TestClient, gateway_app: FastAPI, victim: dict[str, str], other: TenantHandle
) -> None:
    url = f"/v1/events?token={other.key}&instance_id={victim['instance_id']}"
    with client.websocket_connect(url) as ws:
        frame = ws.receive_json()
        assert frame["type"] == "error"
        assert frame["code"] == "not_found"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4404
