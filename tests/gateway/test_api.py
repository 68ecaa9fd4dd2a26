"""The REST API against the real app on real Postgres/Redis: authentication and scopes, the one
error body, instances, sending through tasks.accept with precise codes, idempotency, outbox
status, pagination of stored records, bookings and stats."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from config.settings import Settings
from tasks.queues import out_queue
from tests.gateway.conftest import (
    ADMIN,
    TenantHandle,
    assert_error,
    inbound,
    make_key,
)
from workers.gateway import errors

NO_SUCH = "00000000-0000-4000-8000-000000000000"


# --- authentication and scopes --------------------------------------------------------------
def test_requests_without_a_valid_key_are_refused(client: TestClient, tenant: TenantHandle) -> None:
    url = "/v1/instances"
    assert_error(client.get(url), 401, "missing_api_key")
    assert_error(client.get(url, headers={"Authorization": "Basic abc"}), 401, "missing_api_key")
    bad = {"Authorization": "Bearer wfk_" + "a" * 32}
    body = assert_error(client.get(url, headers=bad), 401, "invalid_api_key")
    assert "wfk_" not in body["message"]
    assert_error(client.get(url, headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
    assert client.get(url, headers=tenant.headers).status_code == 200


def test_revoked_key_is_refused(client: TestClient, tenant: TenantHandle) -> None:
    key = make_key(client, tenant.id, ["read"])
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/instances", headers=headers).status_code == 200
    keys = client.get(f"/v1/tenants/{tenant.id}/api-keys", headers=ADMIN).json()
    (row,) = [k for k in keys if key.startswith(k["prefix"])]
    assert "key" not in row
    r = client.delete(f"/v1/tenants/{tenant.id}/api-keys/{row['id']}", headers=ADMIN)
    assert r.status_code == 204
    assert_error(client.get("/v1/instances", headers=headers), 401, "invalid_api_key")


@pytest.mark.parametrize(
    ("scopes", "method", "path", "json"),
    [
        (["read"], "post", "/v1/instances/{i}/send/text", {"to": "5511988887777", "text": "x"}),
        (["send"], "get", "/v1/instances/{i}", None),
        (["read", "send"], "patch", "/v1/instances/{i}", {"outbound_paused": True}),
        (["read", "send"], "post", "/v1/webhooks", {"url": "https://example.com/h"}),
        (["read", "send"], "post", "/v1/instances", {"name": "second"}),
    ],
)
def test_scopes_are_enforced(
    client: TestClient,
    tenant: TenantHandle,
    scopes: list[str],
    method: str,
    path: str,
    json: Any,
) -> None:
    headers = tenant.key_headers(client, scopes)
    r = client.request(method, path.format(i=tenant.instance_id), json=json, headers=headers)
    body = assert_error(r, 403, "insufficient_scope")
    assert body["details"]["granted"] == sorted(scopes)


def test_instance_restricted_key_sees_only_its_instance(
    client: TestClient, tenant: TenantHandle
) -> None:
    second = client.post("/v1/instances", json={"name": "second"}, headers=tenant.headers).json()
    restricted = tenant.key_headers(client, ["read", "send", "admin"], tenant.instance_id)
    listed = client.get("/v1/instances", headers=restricted).json()
    assert [i["id"] for i in listed] == [tenant.instance_id]
    assert client.get(f"/v1/instances/{tenant.instance_id}", headers=restricted).status_code == 200
    assert_error(client.get(f"/v1/instances/{second['id']}", headers=restricted), 404)
    send = {"to": "5511988887777", "text": "oi"}
    r = client.post(f"/v1/instances/{second['id']}/send/text", json=send, headers=restricted)
    assert_error(r, 404, "not_found")
    inbound(second["id"], "5511977770000", "for the other desk")
    inbound(tenant.instance_id, "5511977770001", "for this desk")
    messages = client.get("/v1/messages", headers=restricted).json()["items"]
    assert [m["body"] for m in messages] == ["for this desk"]
    contacts = client.get("/v1/contacts", headers=restricted).json()["items"]
    assert [c["phone_number"] for c in contacts] == ["5511977770001"]
    # Tenant-wide configuration needs a tenant-wide key.
    r = client.post("/v1/instances", json={"name": "third"}, headers=restricted)
    assert_error(r, 403, "instance_restricted_key")
    assert_error(client.get("/v1/webhooks", headers=restricted), 403, "instance_restricted_key")


def test_key_restricted_to_a_deleted_instance_stops_working(
    client: TestClient, tenant: TenantHandle
) -> None:
    restricted = tenant.key_headers(client, ["read"], tenant.instance_id)
    assert (
        client.delete(f"/v1/instances/{tenant.instance_id}", headers=tenant.headers).status_code
        == 204
    )
    assert_error(client.get("/v1/instances", headers=restricted), 401, "invalid_api_key")


def test_admin_api_needs_the_admin_key(client: TestClient, tenant: TenantHandle) -> None:
    assert_error(client.get("/v1/tenants"), 401, "missing_admin_key")
    wrong = {"Authorization": "Bearer not-the-admin-key"}
    assert_error(client.get("/v1/tenants", headers=wrong), 401, "invalid_admin_key")
    assert_error(client.get("/v1/tenants", headers=tenant.headers), 403, "admin_key_required")
    tenants = client.get("/v1/tenants", headers=ADMIN).json()
    assert tenant.id in {t["id"] for t in tenants}
    r = client.post("/v1/tenants", json={"name": tenant.name}, headers=ADMIN)
    assert_error(r, 409, "conflict")
    assert_error(client.get(f"/v1/tenants/{NO_SUCH}", headers=ADMIN), 404, "not_found")


def test_disabled_tenant_keys_stop_working(client: TestClient, tenant: TenantHandle) -> None:
    url = f"/v1/tenants/{tenant.id}"
    r = client.patch(url, json={"disabled": True}, headers=ADMIN)
    assert r.json()["disabled"] is True
    assert_error(client.get("/v1/instances", headers=tenant.headers), 401, "invalid_api_key")
    r = client.patch(url, json={"disabled": False, "name": "renamed"}, headers=ADMIN)
    assert r.json() | {"created_at": None} == {
        "id": tenant.id,
        "name": "renamed",
        "disabled": False,
        "created_at": None,
    }
    assert client.get("/v1/instances", headers=tenant.headers).status_code == 200
    assert_error(client.patch(url, json={"disabled": 1}, headers=ADMIN), 400, "invalid_request")


def test_created_key_is_shown_once_and_works(client: TestClient, tenant: TenantHandle) -> None:
    r = client.post(
        f"/v1/tenants/{tenant.id}/api-keys",
        json={"name": "crm", "scopes": ["read"]},
        headers=ADMIN,
    )
    created = r.json()
    assert created["key"].startswith("wfk_")
    assert created["scopes"] == ["read"]
    listed = client.get(f"/v1/tenants/{tenant.id}/api-keys", headers=ADMIN).json()
    assert all("key" not in k and created["key"] not in str(k) for k in listed)
    (row,) = [k for k in listed if k["id"] == created["id"]]
    assert row["last_used_at"] is None
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert client.get(f"/v1/instances/{tenant.instance_id}", headers=headers).status_code == 200
    listed = client.get(f"/v1/tenants/{tenant.id}/api-keys", headers=ADMIN).json()
    (row,) = [k for k in listed if k["id"] == created["id"]]
    assert row["last_used_at"] is not None
    r = client.post(
        f"/v1/tenants/{tenant.id}/api-keys",
        json={"name": "crm", "scopes": ["root"]},
        headers=ADMIN,
    )
    assert_error(r, 400, "invalid_request")


# --- the one error body ---------------------------------------------------------------------
def test_errors_share_one_body(client: TestClient, tenant: TenantHandle) -> None:
    body = assert_error(client.get("/v1/nowhere", headers=tenant.headers), 404, "not_found")
    assert body["message"] == "no such route"
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.put("/v1/instances", headers=tenant.headers), 405, "method_not_allowed")
    r = client.get("/v1/instances/not-a-uuid", headers=tenant.headers)
    body = assert_error(r, 400, "invalid_request")
    assert body["details"]["errors"][0]["location"] == ["path", "instance_id"]
    r = client.post(
        f"/v1/instances/{tenant.instance_id}/send/text",
        content=b"{not json",
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request")
    r = client.post(
        f"/v1/instances/{tenant.instance_id}/send/text",
        json={"to": "5511988887777", "text": "x", "unexpected": 1},
        headers=tenant.headers,
    )
    assert_error(r, 400, "invalid_request")
    r = client.get("/v1/messages?limit=0", headers=tenant.headers)
    assert_error(r, 400, "invalid_request")
    r = client.get("/v1/messages?cursor=abc", headers=tenant.headers)
    assert_error(r, 400, "invalid_cursor")


def test_unexpected_failures_are_a_500_without_details() -> None:
    # errors.install on a bare app with one failing route: the catch-all a bug would reach.
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("connection string postgres://user:secret@db")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    body = assert_error(r, 500, "internal_error")
    assert body["message"] == "internal error"
    assert "secret" not in r.text
    assert "RuntimeError" not in r.text


def test_openapi_documents_errors_with_the_one_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)


# --- instances ------------------------------------------------------------------------------
def test_instance_lifecycle(client: TestClient, tenant: TenantHandle) -> None:
    h = tenant.headers
    r = client.post(
        "/v1/instances", json={"name": "clinic", "phone_number": "+55 11 91234-5678"}, headers=h
    )
    assert r.status_code == 201, r.text
    inst = r.json()
    assert inst["phone_number"] == "5511912345678"
    assert inst["status"] == "created"
    r = client.post("/v1/instances", json={"name": "clinic"}, headers=h)
    assert_error(r, 409, "conflict")
    r = client.post("/v1/instances", json={"name": "x", "phone_number": "12"}, headers=h)
    assert_error(r, 400, "invalid_value")
    url = f"/v1/instances/{inst['id']}"
    r = client.patch(
        url,
        json={"pacing": {"min_gap": 30, "max_gap": 45, "gap_jitter": 10}, "outbound_paused": True},
        headers=h,
    )
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["pacing"] == {"min_gap": 30, "max_gap": 45, "gap_jitter": 10}
    assert updated["outbound_paused"]
    assert updated["pause_reason"]
    r = client.patch(url, json={"pacing": {"min_gap": 50, "max_gap": 10}}, headers=h)
    assert_error(r, 400, "invalid_value")
    r = client.patch(
        url, json={"pacing": {}, "outbound_paused": False, "name": "desk 2"}, headers=h
    )
    assert r.json()["pacing"] is None
    assert not r.json()["outbound_paused"]
    assert r.json()["name"] == "desk 2"
    assert r.json()["pause_reason"] is None
    assert_error(client.patch(url, json={"name": "front-desk"}, headers=h), 409, "conflict")
    assert client.delete(url, headers=h).status_code == 204
    assert_error(client.get(url, headers=h), 404)
    assert_error(client.delete(url, headers=h), 404)
    assert inst["id"] not in {i["id"] for i in client.get("/v1/instances", headers=h).json()}


# --- sending --------------------------------------------------------------------------------
def _send(
    client: TestClient, t: TenantHandle, body: dict[str, Any], instance: str | None = None
) -> Any:
    return client.post(
        f"/v1/instances/{instance or t.instance_id}/send/text", json=body, headers=t.headers
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"to": "12345", "text": "hi"}, 400, "invalid_phone"),
        ({"to": "+55 11 9abc", "text": "hi"}, 400, "invalid_phone"),
        ({"to": "5511988887777", "text": "x" * 4097}, 400, "text_too_long"),
        ({"to": "5511988887777", "text": "   "}, 400, "empty_message"),
        ({"to": "5511988887777", "text": "x", "expires_in": -1}, 400, "invalid_request"),
        (
            {"to": "5511988887777", "text": "x", "idempotency_key": "k" * 201},
            400,
            "invalid_request",
        ),
    ],
)
def test_send_validation_codes(
    client: TestClient, tenant: TenantHandle, body: dict[str, Any], status: int, code: str
) -> None:
    assert_error(_send(client, tenant, body), status, code)


def test_unstorable_text_is_a_400_not_a_500(client: TestClient, tenant: TenantHandle) -> None:
    # Found by schemathesis: JSON allows NUL and lone surrogates, Postgres text does not.
    nul = {"to": "5511988887777", "text": "a\u0000b"}
    assert_error(_send(client, tenant, nul), 400, "invalid_request")
    url = f"/v1/instances/{tenant.instance_id}"
    surrogate = b'{"name": "desk \\udc00"}'
    r = client.patch(
        url, content=surrogate, headers={**tenant.headers, "Content-Type": "application/json"}
    )
    assert_error(r, 400, "invalid_request")
    r = client.get("/v1/outbox/by-key", params={"idempotency_key": "k\x00"}, headers=tenant.headers)
    assert_error(r, 400, "invalid_request")
    with client.websocket_connect("/v1/events") as ws:
        ws.send_text('{"token": "wfk_\\udc00"}')
        assert ws.receive_json()["code"] == "invalid_api_key"


def test_send_to_unknown_or_deleted_instance(client: TestClient, tenant: TenantHandle) -> None:
    body = {"to": "5511988887777", "text": "hi"}
    assert_error(_send(client, tenant, body, NO_SUCH), 404, "not_found")
    client.delete(f"/v1/instances/{tenant.instance_id}", headers=tenant.headers)
    assert_error(_send(client, tenant, body), 404, "not_found")


def test_text_of_exactly_4096_characters_is_accepted(
    client: TestClient, tenant: TenantHandle
) -> None:
    r = _send(client, tenant, {"to": "5511988887777", "text": "x" * 4096})
    assert r.status_code == 202, r.text


def test_send_is_idempotent_and_wakes_the_instance_queue(
    client: TestClient,
    tenant: TenantHandle,
    redis_client: redis.Redis,
    gateway_settings: Settings,
) -> None:
    body = {"to": "+55 11 98888-7777", "text": "Confirmado: 10h", "idempotency_key": "appt-1"}
    first = _send(client, tenant, body)
    assert first.status_code == 202, first.text
    again = _send(client, tenant, {**body, "to": "5511988887777"})
    assert first.json()["created"]
    assert not again.json()["created"]
    assert first.json()["outbox_id"] == again.json()["outbox_id"]
    assert first.json()["wa_message_id"] == again.json()["wa_message_id"]
    conflict = _send(client, tenant, {**body, "text": "Confirmado: 11h"})
    assert_error(conflict, 409, "idempotency_conflict")
    queue = f"{gateway_settings.redis_prefix}:{out_queue(tenant.instance_id)}"
    assert redis_client.llen(queue) == 2  # each accept wakes the owner
    status = client.get(f"/v1/outbox/{first.json()['outbox_id']}", headers=tenant.headers).json()
    assert status["status"] == "queued"
    assert status["chat_jid"] == "5511988887777@s.whatsapp.net"
    by_key = client.get(
        "/v1/outbox/by-key", params={"idempotency_key": "appt-1"}, headers=tenant.headers
    )
    assert by_key.json() == status
    r = client.get("/v1/outbox/by-key", params={"idempotency_key": "nope"}, headers=tenant.headers)
    assert_error(r, 404)


def test_send_media_by_url_base64_and_upload(client: TestClient, tenant: TenantHandle) -> None:
    base = f"/v1/instances/{tenant.instance_id}/send"
    h = tenant.headers
    by_url: dict[str, Any] = {
        "to": "5511988887777",
        "media": {"kind": "image", "mimetype": "image/jpeg", "url": "https://cdn.example/a.jpg"},
    }
    assert client.post(f"{base}/media", json=by_url, headers=h).status_code == 202
    inline = {
        "to": "5511988887777",
        "media": {
            "kind": "document",
            "mimetype": "application/pdf",
            "data": base64.b64encode(b"%PDF-1.4 test").decode(),
            "filename": "receipt.pdf",
            "caption": "your receipt",
        },
    }
    r = client.post(f"{base}/media", json=inline, headers=h)
    assert r.status_code == 202, r.text
    wrong = {**by_url, "media": {**by_url["media"], "mimetype": "video/mp4"}}
    assert_error(client.post(f"{base}/media", json=wrong, headers=h), 400, "invalid_media")
    both = {**by_url, "media": {**by_url["media"], "data": "aGk="}}
    assert_error(client.post(f"{base}/media", json=both, headers=h), 400, "invalid_media")
    big = {
        **by_url,
        "media": {
            "kind": "sticker",
            "mimetype": "image/webp",
            "data": base64.b64encode(b"x" * 600_000).decode(),
        },
    }
    assert_error(client.post(f"{base}/media", json=big, headers=h), 400, "media_too_large")
    r = client.post(
        f"{base}/upload",
        data={"to": "5511988887777", "kind": "image", "caption": "look"},
        files={"file": ("photo.jpg", b"\xff\xd8\xff jpeg bytes", "image/jpeg")},
        headers=h,
    )
    assert r.status_code == 202, r.text
    row = client.get(f"/v1/outbox/{r.json()['outbox_id']}", headers=h).json()
    assert row["kind"] == "image"
    r = client.post(
        f"{base}/upload",
        data={"to": "5511988887777", "kind": "image"},
        files={"file": ("big.jpg", b"x" * (5 * 1024 * 1024 + 1), "image/jpeg")},
        headers=h,
    )
    assert_error(r, 400, "media_too_large")
    r = client.post(
        f"{base}/upload",
        data={"to": "55", "kind": "image"},
        files={"file": ("a.jpg", b"jpeg", "image/jpeg")},
        headers=h,
    )
    assert_error(r, 400, "invalid_phone")


def test_oversized_bodies_are_refused_before_reading(
    client: TestClient, tenant: TenantHandle
) -> None:
    url = f"/v1/instances/{tenant.instance_id}/send/media"
    huge = b'{"to": "5511988887777", "media": {"data": "' + b"A" * (9 * 1024 * 1024) + b'"}}'
    headers = {**tenant.headers, "Content-Type": "application/json"}
    assert_error(client.post(url, content=huge, headers=headers), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(9):
            yield b"A" * (1024 * 1024)

    r = client.post(url, content=chunks(), headers=headers)
    assert_error(r, 413, "payload_too_large")


def test_bulk_reports_each_item(client: TestClient, tenant: TenantHandle) -> None:
    items = [
        {"to": "5511988880001", "text": "one", "idempotency_key": "b-1"},
        {"to": "123", "text": "bad number"},
        {"to": "5511988880002", "text": "x" * 5000},
        {
            "to": "5511988880003",
            "media": {"kind": "image", "mimetype": "image/png", "url": "https://x.example/p.png"},
        },
    ]
    r = client.post(
        f"/v1/instances/{tenant.instance_id}/send/bulk",
        json={"items": items, "batch_id": "promo-1"},
        headers=tenant.headers,
    )
    assert r.status_code == 202, r.text
    result = r.json()
    assert result["batch_id"] == "promo-1"
    assert [x.get("error") for x in result["results"]] == [
        None,
        "invalid_phone",
        "text_too_long",
        None,
    ]
    listed = client.get(
        f"/v1/instances/{tenant.instance_id}/outbox",
        params={"batch_id": "promo-1"},
        headers=tenant.headers,
    ).json()["items"]
    assert sorted(x["kind"] for x in listed) == ["image", "text"]
    r = client.post(
        f"/v1/instances/{tenant.instance_id}/send/bulk", json={"items": []}, headers=tenant.headers
    )
    assert_error(r, 400, "invalid_request")


# --- stored records, pagination, bookings, stats --------------------------------------------
def test_messages_and_contacts_paginate_with_a_stable_order(
    client: TestClient, tenant: TenantHandle
) -> None:
    for n in range(7):
        inbound(tenant.instance_id, f"55119777700{n:02d}", f"message {n}")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/messages", params=params, headers=tenant.headers).json()
        pages += 1
        if pages == 1:
            inbound(tenant.instance_id, "5511977779999", "arrives while paging")
        seen += [m["body"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"message {n}" for n in reversed(range(7))]  # newest first, none skipped
    contacts = client.get("/v1/contacts", params={"limit": 100}, headers=tenant.headers).json()
    assert len(contacts["items"]) == 8
    assert contacts["next_cursor"] is None
    contact = contacts["items"][0]
    got = client.get(f"/v1/contacts/{contact['id']}", headers=tenant.headers).json()
    assert got == contact
    by_contact = client.get(
        "/v1/messages", params={"contact_id": contact["id"]}, headers=tenant.headers
    ).json()["items"]
    assert [m["contact_id"] for m in by_contact] == [contact["id"]]


def test_notes_from_the_owner(client: TestClient, tenant: TenantHandle) -> None:
    inbound(tenant.instance_id, "5511977770001", "remember: call back", from_me=True)
    notes = client.get(
        "/v1/notes", params={"instance_id": tenant.instance_id}, headers=tenant.headers
    ).json()["items"]
    assert [n["body"] for n in notes] == ["remember: call back"]
    one = client.get(f"/v1/notes/{notes[0]['id']}", headers=tenant.headers).json()
    assert one == notes[0]
    assert client.get("/v1/messages", headers=tenant.headers).json()["items"] == []


def test_booking_confirm_and_cancel(client: TestClient, tenant: TenantHandle) -> None:
    inbound(tenant.instance_id, "5511977770001", "can I book for Friday?")
    inbound(tenant.instance_id, "5511977770001", "10h please")
    (booking,) = client.get("/v1/bookings", headers=tenant.headers).json()["items"]
    assert booking["status"] == "pending"
    assert booking["message_count"] == 2
    url = f"/v1/bookings/{booking['id']}"
    r = client.post(f"{url}/confirm", headers=tenant.headers)
    assert r.status_code == 200
    assert r.json()["status"] == "confirmed"
    assert client.post(f"{url}/confirm", headers=tenant.headers).json()["status"] == "confirmed"
    assert_error(client.post(f"{url}/cancel", headers=tenant.headers), 409, "booking_not_pending")
    reader = tenant.key_headers(client, ["read"])
    assert_error(client.post(f"{url}/confirm", headers=reader), 403, "insufficient_scope")
    # The next message opens a new pending booking for the same contact.
    inbound(tenant.instance_id, "5511977770001", "and another for Monday")
    pending = client.get("/v1/bookings", params={"status": "pending"}, headers=tenant.headers)
    (second,) = pending.json()["items"]
    r = client.post(f"/v1/bookings/{second['id']}/cancel", headers=tenant.headers)
    assert r.json()["status"] == "cancelled"
    assert_error(client.get("/v1/bookings/999999", headers=tenant.headers), 404)


def test_stats_count_the_tenants_records(
    client: TestClient, tenant: TenantHandle, other: TenantHandle
) -> None:
    inbound(tenant.instance_id, "5511977770001", "hello")
    inbound(tenant.instance_id, "5511977770001", "note", from_me=True)
    _send(client, tenant, {"to": "5511988887777", "text": "hi"})
    inbound(other.instance_id, "5511977770002", "other tenant")
    stats = client.get("/v1/stats", headers=tenant.headers).json()
    assert stats["instances"] == {"created": 1}
    assert stats["outbox"] == {"queued": 1}
    assert stats["messages"] == {"in": 1}
    assert stats["contacts"] == 1
    assert stats["notes"] == 1
    assert stats["bookings"] == {"pending": 1}
    admin_view = client.get(f"/v1/tenants/{tenant.id}/stats", headers=ADMIN).json()
    assert admin_view == stats


def test_unreachable_database_is_a_retryable_503(
    gateway_settings: Settings, gateway_app: Any
) -> None:
    from tasks import runtime
    from workers.gateway import create_app

    broken = gateway_settings.model_copy(
        update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    )
    try:
        with TestClient(create_app(broken)) as c:
            r = c.get("/v1/instances", headers={"Authorization": "Bearer wfk_" + "a" * 32})
            body = assert_error(r, 503, "database_unavailable")
            assert body["retryable"]
            assert r.headers["Retry-After"] == "5"
            assert "psycopg" not in r.text
            assert "nobody" not in r.text
            ready = c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"]["ok"] is False
            assert ready.json()["checks"]["redis"]["ok"] is True
    finally:
        runtime.configure(gateway_app.state.gateway.runtime)


def test_tenant_names_are_unique_ids(client: TestClient) -> None:
    r = client.post("/v1/tenants", json={"name": ""}, headers=ADMIN)
    assert_error(r, 400, "invalid_request")
    r = client.post("/v1/tenants", json={"name": f"n-{uuid.uuid4().hex}"}, headers=ADMIN)
    assert r.status_code == 201


def test_resuming_outbound_wakes_the_owner(
    client: TestClient,
    tenant: TenantHandle,
    redis_client: redis.Redis,
    gateway_settings: Settings,
) -> None:
    url = f"/v1/instances/{tenant.instance_id}"
    queue = f"{gateway_settings.redis_prefix}:{out_queue(tenant.instance_id)}"
    r = client.patch(url, json={"outbound_paused": True}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert _send(client, tenant, {"to": "5511988887777", "text": "held"}).status_code == 202

    def depth() -> int:
        length: Any = redis_client.llen(queue)
        return int(length)

    before = depth()
    r = client.patch(url, json={"outbound_paused": False}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert depth() == before + 1  # the owner rescans its backlog now
    r = client.patch(url, json={"outbound_paused": False}, headers=tenant.headers)
    assert depth() == before + 1  # not paused: nothing to wake


def test_a_repeated_query_parameter_is_refused(client: TestClient, tenant: TenantHandle) -> None:
    # One value per parameter: `?limit=3&limit=100` must not silently mean 100.
    r = client.get("/v1/messages?limit=3&limit=100", headers=tenant.headers)
    assert assert_error(r, 400, "invalid_request")["details"] == {"field": "limit"}
    base = f"/v1/instances/{tenant.instance_id}/diagnose"
    r = client.get(f"{base}?phone=3&phone=5511999990000", headers=tenant.headers)
    assert assert_error(r, 400, "invalid_request")["details"] == {"field": "phone"}
    ok = client.get(f"{base}?phone=5511999990000", headers=tenant.headers)
    assert ok.status_code == 200, ok.text
