"""Webhook management through the API, with deliveries really made by the fleet's routing worker
to a local receiver: CRUD, the secret shown once, rotation (both secrets sign until the overlap
is ended), test deliveries, the delivery log, replay."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import threading
from typing import Any

from fastapi.testclient import TestClient

from tests.fleet.test_webhooks import Receiver, receiver  # noqa: F401  (fixture)
from tests.gateway.conftest import TenantHandle, assert_error

TIMEOUT = 60


def _signatures(headers: dict[str, str], body: bytes, secret_hex: str) -> list[bool]:
    """For each v1= signature of the request: does it verify with this secret?"""
    signed = headers["X-Wafleet-Timestamp"].encode() + b"." + body
    expected = hmac.new(bytes.fromhex(secret_hex), signed, hashlib.sha256).hexdigest()
    return [
        hmac.compare_digest(part.removeprefix("v1="), expected)
        for part in headers["X-Wafleet-Signature"].split(",")
    ]


def _wait_delivery(client: TestClient, h: dict[str, str], hook: str, delivery: int) -> Any:
    """Poll the delivery log until the worker has recorded the outcome."""
    pause = threading.Event()
    for _ in range(TIMEOUT * 10):
        got = client.get(f"/v1/webhooks/{hook}/deliveries/{delivery}", headers=h).json()
        if got["status"] != "pending" and got["log"]:
            return got
        pause.wait(0.1)
    raise AssertionError(f"delivery {delivery} still pending")


def test_webhook_crud(client: TestClient, tenant: TenantHandle) -> None:
    h = tenant.headers
    r = client.post(
        "/v1/webhooks",
        json={
            "url": "https://crm.example/hooks",
            "event_types": ["whatsapp:message"],
            "instance_ids": [tenant.instance_id],
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert len(bytes.fromhex(created["secret"])) == 32
    assert created["event_types"] == ["whatsapp:message"]
    assert created["instance_ids"] == [tenant.instance_id]
    url = f"/v1/webhooks/{created['id']}"
    got = client.get(url, headers=h).json()
    assert "secret" not in got
    assert created["secret"] not in client.get("/v1/webhooks", headers=h).text
    r = client.patch(url, json={"event_types": None, "enabled": False}, headers=h)
    assert r.json()["event_types"] is None
    assert r.json()["instance_ids"] == [tenant.instance_id]
    assert r.json()["enabled"] is False
    assert_error(client.patch(url, json={"url": "ftp://x"}, headers=h), 400, "invalid_value")
    assert_error(client.post("/v1/webhooks", json={"url": "nope"}, headers=h), 400)
    r = client.post(
        "/v1/webhooks",
        json={"url": "https://x.example", "instance_ids": ["00000000-0000-4000-8000-000000000000"]},
        headers=h,
    )
    assert_error(r, 404, "not_found")
    assert client.delete(url, headers=h).status_code == 204
    assert_error(client.get(url, headers=h), 404)


def test_test_delivery_rotation_log_and_replay(
    client: TestClient,
    tenant: TenantHandle,
    receiver: Receiver,  # noqa: F811
    routing_worker: subprocess.Popen[bytes],
) -> None:
    h = tenant.headers
    hook = client.post("/v1/webhooks", json={"url": f"{receiver.base}/in"}, headers=h).json()
    base = f"/v1/webhooks/{hook['id']}"
    first_secret = hook["secret"]

    sent = client.post(f"{base}/test", headers=h)
    assert sent.status_code == 202
    (_, headers, body), *_ = receiver.wait_for(1, "/in")
    assert headers["X-Wafleet-Event"] == "whatsapp:test"
    assert _signatures(headers, body, first_secret) == [True]
    done = _wait_delivery(client, h, hook["id"], sent.json()["delivery_id"])
    assert done["status"] == "delivered"
    assert done["event_id"] == sent.json()["event_id"]
    assert [(a["attempt"], a["status_code"]) for a in done["log"]] == [(1, 200)]

    # Rotation: the new secret signs, and the previous one keeps signing during the overlap.
    rotated = client.post(f"{base}/rotate-secret", headers=h)
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret != first_secret
    assert client.get(base, headers=h).json()["rotating"] is True
    client.post(f"{base}/test", headers=h)
    _, headers, body = receiver.wait_for(2, "/in")[1]
    assert _signatures(headers, body, new_secret) == [True, False]
    assert _signatures(headers, body, first_secret) == [False, True]
    assert client.delete(f"{base}/previous-secret", headers=h).status_code == 204
    assert client.get(base, headers=h).json()["rotating"] is False
    client.post(f"{base}/test", headers=h)
    _, headers, body = receiver.wait_for(3, "/in")[2]
    assert _signatures(headers, body, new_secret) == [True]

    # Replay the first delivery: it is sent again, and the log numbers its attempts.
    delivery = sent.json()["delivery_id"]
    replay = client.post(f"{base}/deliveries/{delivery}/replay", headers=h)
    assert replay.status_code == 202
    again = receiver.wait_for(4, "/in")[3]
    assert again[1]["X-Wafleet-Delivery"] == str(delivery)
    replayed = _wait_delivery(client, h, hook["id"], delivery)
    assert [a["attempt"] for a in replayed["log"]] == [1, 2]

    listed = client.get(f"{base}/deliveries", params={"limit": 2}, headers=h).json()
    assert len(listed["items"]) == 2
    assert listed["next_cursor"] is not None
    rest = client.get(
        f"{base}/deliveries", params={"limit": 2, "cursor": listed["next_cursor"]}, headers=h
    ).json()
    assert [d["id"] for d in rest["items"]] == [delivery]
    assert rest["next_cursor"] is None


def test_replay_of_a_pending_delivery_is_refused(client: TestClient, tenant: TenantHandle) -> None:
    h = tenant.headers
    hook = client.post(
        "/v1/webhooks", json={"url": "https://x.example/h", "enabled": False}, headers=h
    ).json()
    sent = client.post(f"/v1/webhooks/{hook['id']}/test", headers=h).json()
    url = f"/v1/webhooks/{hook['id']}/deliveries/{sent['delivery_id']}"
    assert client.get(url, headers=h).json()["status"] == "pending"
    assert_error(client.post(f"{url}/replay", headers=h), 409, "delivery_pending")
    assert_error(client.get(f"/v1/webhooks/{hook['id']}/deliveries/999999", headers=h), 404)
