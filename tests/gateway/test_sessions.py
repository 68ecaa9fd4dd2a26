"""Session endpoints of the gateway (routes.sessions) on the real app, Postgres and Redis:
commands are durable on the instance row (no session worker runs here, so nobody owns the
instance and the row is what its next owner applies), the QR and pairing code are what an owner
stored in Redis (storage.linking), status and diagnose. Commands reaching real owners are in
tests/fleet/test_commands.py."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from storage.bus import EventBus
from storage.linking import LinkingCodes
from storage.models import (
    DesiredState,
    DeviceCredentials,
    Instance,
    InstanceStatus,
    LinkMethod,
    OutboxMessage,
    OutboxStatus,
)
from tests.gateway.conftest import TenantHandle, assert_error


def _row(pg: sessionmaker[Session], instance_id: str) -> Instance:
    with pg() as s:
        inst = s.get(Instance, uuid.UUID(instance_id))
        assert inst is not None
        s.expunge(inst)
        return inst


def _codes(redis_client: Any, gateway_settings: Settings) -> LinkingCodes:
    return LinkingCodes(redis_client, gateway_settings.redis_prefix)


def test_connect_by_qr_and_by_code_is_durable_on_the_row(
    client: TestClient, tenant: TenantHandle, pg: Any
) -> None:
    base = f"/v1/instances/{tenant.instance_id}"
    r = client.post(f"{base}/connect", json={"method": "qr"}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    out = r.json()
    assert (out["state"], out["connected"], out["owner"]) == ("connecting", False, None)
    assert out["desired_state"] == "connect"
    row = _row(pg, tenant.instance_id)
    assert (row.desired_state, row.link_method, row.command_seq) == (
        DesiredState.CONNECT,
        LinkMethod.QR,
        1,
    )

    r = client.post(
        f"{base}/connect",
        json={"method": "code", "phone": "+55 11 98888-7777"},
        headers=tenant.headers,
    )
    assert r.status_code == 202, r.text
    row = _row(pg, tenant.instance_id)
    assert (row.link_method, row.link_phone, row.command_seq) == (
        LinkMethod.CODE,
        "5511988887777",
        2,
    )

    # Without a phone, code linking uses the instance's own number.
    r = client.post(f"{base}/connect", json={"method": "code"}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    assert _row(pg, tenant.instance_id).link_phone == "5511900000001"


def test_connect_refuses_bad_phones_and_methods(
    client: TestClient, tenant: TenantHandle, other: TenantHandle, pg: Any
) -> None:
    base = f"/v1/instances/{tenant.instance_id}"
    h = tenant.headers
    bad = client.post(f"{base}/connect", json={"method": "code", "phone": "12"}, headers=h)
    assert_error(bad, 400, "invalid_phone")
    assert_error(
        client.post(f"{base}/connect", json={"method": "qr", "phone": "+5511988887777"}, headers=h),
        400,
        "invalid_request",
    )
    assert_error(client.post(f"{base}/connect", json={"method": "fax"}, headers=h), 400)
    # An instance without its own number needs the phone for code linking.
    created = client.post("/v1/instances", json={"name": "no-number"}, headers=h).json()
    missing = client.post(
        f"/v1/instances/{created['id']}/connect", json={"method": "code"}, headers=h
    )
    assert_error(missing, 400, "invalid_phone")
    assert _row(pg, tenant.instance_id).command_seq == 0  # nothing was recorded
    # The command scope is admin; a read+send key is refused.
    weak = tenant.key_headers(client, ["read", "send"])
    assert_error(client.post(f"{base}/disconnect", headers=weak), 403)
    assert_error(client.post(f"{base}/logout", headers=weak), 403)


def test_disconnect_and_logout_record_the_desired_state(
    client: TestClient,
    tenant: TenantHandle,
    pg: Any,
    redis_client: Any,
    gateway_settings: Settings,
) -> None:
    base = f"/v1/instances/{tenant.instance_id}"
    codes = _codes(redis_client, gateway_settings)
    codes.put_qr(tenant.instance_id, "2@stale,qr", time.time() + 60, 0)
    r = client.post(f"{base}/disconnect", headers=tenant.headers)
    assert r.status_code == 202, r.text
    assert r.json()["desired_state"] == "disconnect"
    assert codes.qr(tenant.instance_id) is None  # a disconnected instance offers no QR
    r = client.post(f"{base}/logout", headers=tenant.headers)
    assert r.status_code == 202, r.text
    row = _row(pg, tenant.instance_id)
    assert (row.desired_state, row.command_seq) == (DesiredState.LOGOUT, 2)


def test_qr_string_png_svg_and_pairing_code(
    client: TestClient, tenant: TenantHandle, redis_client: Any, gateway_settings: Settings
) -> None:
    base = f"/v1/instances/{tenant.instance_id}"
    h = tenant.headers
    for path, code in (("qr", "no_qr"), ("qr.png", "no_qr"), ("qr.svg", "no_qr")):
        assert_error(client.get(f"{base}/{path}", headers=h), 404, code)
    assert_error(client.get(f"{base}/pairing-code", headers=h), 404, "no_pairing_code")

    codes = _codes(redis_client, gateway_settings)
    expires = time.time() + 60
    codes.put_qr(tenant.instance_id, "2@ref,noise,identity,adv,1", expires, 2)
    got = client.get(f"{base}/qr", headers=h)
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["qr"], body["index"]) == ("2@ref,noise,identity,adv,1", 2)
    assert abs(_epoch(body["expires_at"]) - expires) < 0.01
    png = client.get(f"{base}/qr.png", headers=h)
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    svg = client.get(f"{base}/qr.svg", headers=h)
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content

    codes.put_code(tenant.instance_id, "ABCD-EFGH")
    assert_error(client.get(f"{base}/qr", headers=h), 404, "no_qr")  # the code replaced it
    code = client.get(f"{base}/pairing-code", headers=h).json()
    assert code["code"] == "ABCD-EFGH"
    assert _epoch(code["expires_at"]) > time.time()
    codes.clear(tenant.instance_id)
    assert_error(client.get(f"{base}/pairing-code", headers=h), 404, "no_pairing_code")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_status_and_diagnose(
    client: TestClient,
    tenant: TenantHandle,
    pg: Any,
    redis_client: Any,
    gateway_settings: Settings,
) -> None:
    base = f"/v1/instances/{tenant.instance_id}"
    h = tenant.headers
    sent = client.post(
        f"{base}/send/text", json={"to": "5511988887777", "text": "oi"}, headers=h
    ).json()
    with pg.begin() as s:
        row = s.get(OutboxMessage, sent["outbox_id"])
        assert row is not None
        row.status, row.last_error_code, row.last_error_text = (
            OutboxStatus.FAILED,
            "not_on_whatsapp",
            "recipient is not on WhatsApp",
        )
        s.add(
            OutboxMessage(
                tenant_id=row.tenant_id,
                instance_id=row.instance_id,
                idempotency_key="second",
                wa_message_id="3EB0SECOND",
                chat_jid=row.chat_jid,
                chat_seq=row.chat_seq + 1,
                kind="text",
                payload={"text": "again"},
                status=OutboxStatus.QUEUED,
            )
        )
        inst = s.get(Instance, uuid.UUID(tenant.instance_id))
        assert inst is not None
        inst.status, inst.outbound_paused, inst.pause_reason = (
            InstanceStatus.DISCONNECTED,
            True,
            "463",
        )
    bus = EventBus(redis_client, gateway_settings.redis_prefix)
    bus.publish(
        tenant.id,
        "whatsapp:disconnected",
        tenant.instance_id,
        {"reason": "connection_lost", "will_reconnect": True},
    )
    status = client.get(f"{base}/status", headers=h).json()
    assert status["state"] == "disconnected"
    assert (status["queued"], status["outbound_paused"], status["owner"]) == (1, True, None)

    diag = client.get(f"{base}/diagnose", params={"phone": "+55 11 98888-7777"}, headers=h)
    assert diag.status_code == 200, diag.text
    d = diag.json()
    assert d["instance"]["state"] == "disconnected"
    assert d["phone"] == {
        "input": "+55 11 98888-7777",
        "valid": True,
        "e164": "+5511988887777",
        "on_whatsapp": None,
        "jid": "5511988887777@s.whatsapp.net",
    }
    codes = {e["code"] for e in d["recent_errors"]}
    assert {"not_on_whatsapp", "disconnected"} <= codes
    failed = next(e for e in d["recent_errors"] if e["code"] == "not_on_whatsapp")
    assert failed["outbox_id"] == sent["outbox_id"]
    advice = " ".join(d["advice"])
    assert "/connect" in advice
    assert "paused (463)" in advice
    assert "no session worker" in advice
    assert "1 message(s) wait" in advice

    invalid = client.get(f"{base}/diagnose", params={"phone": "12ab"}, headers=h).json()
    assert invalid["phone"]["valid"] is False
    assert invalid["phone"]["e164"] is None
    assert any("not a valid phone number" in a for a in invalid["advice"])
    assert client.get(f"{base}/diagnose", headers=h).json()["phone"] is None


def test_delete_of_an_unlinked_instance_needs_no_logout(
    client: TestClient, tenant: TenantHandle, pg: Any
) -> None:
    r = client.delete(f"/v1/instances/{tenant.instance_id}", headers=tenant.headers)
    assert r.status_code == 204
    row = _row(pg, tenant.instance_id)
    assert row.deleted_at is not None
    assert row.command_seq == 0  # nothing to log out: no command was sent


def test_delete_of_a_linked_instance_without_owner_still_deletes(
    client: TestClient, tenant: TenantHandle, pg: Any
) -> None:
    """No session worker runs: the logout cannot reach WhatsApp; the delete goes on (keys
    destroyed) instead of hanging, and the command is recorded for the record."""
    with pg.begin() as s:
        s.add(DeviceCredentials(instance_id=uuid.UUID(tenant.instance_id), ciphertext=b"x"))
    r = client.delete(f"/v1/instances/{tenant.instance_id}", headers=tenant.headers)
    assert r.status_code == 204
    row = _row(pg, tenant.instance_id)
    assert row.deleted_at is not None
    assert (row.desired_state, row.command_seq) == (DesiredState.LOGOUT, 1)
    with pg() as s:
        assert s.scalars(select(DeviceCredentials)).all() == []
