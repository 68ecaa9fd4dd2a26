"""The session endpoints against a real session worker (subprocess, production WhatsApp session)
and the simulator: what the admin page does. Connect by pairing code through the API, read the
code the owner stored, type it on the simulated phone, see the status connected with its owner,
ask diagnose whether numbers are on WhatsApp (answered through the owner), disconnect, connect
again, log out."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from config.settings import Settings
from protocol.simulator import Simulator
from tests.fleet.conftest import simulator  # noqa: F401  (fixture)
from tests.fleet.test_commands_fleet import session_worker
from tests.fleet.test_whatsapp_e2e import WAIT, poll
from tests.gateway.conftest import TenantHandle

pytestmark = pytest.mark.timeout(600)
OWN_NUMBER = "5511900000001"  # the `tenant` fixture's instance number


def test_link_by_code_status_diagnose_disconnect_logout(
    client: TestClient,
    tenant: TenantHandle,
    gateway_settings: Settings,
    simulator: Simulator,  # noqa: F811
) -> None:
    sim = httpx.Client(base_url=simulator.http_url, timeout=WAIT)
    assert sim.post("/control/accounts", json={"phone": OWN_NUMBER}).status_code == 201
    settings = gateway_settings.model_copy(
        update={
            "wa_server_url": simulator.ws_url,
            "wa_root_key": simulator.root_public_key.hex(),
            "lease_ttl": 10.0,
            "lease_renew": 2.0,
            "rebalance_interval": 0.2,
            "heartbeat_interval": 0.5,
            "wa_prekey_count": 30,
        }
    )
    base = f"/v1/instances/{tenant.instance_id}"
    h = tenant.headers

    def status() -> dict[str, Any]:
        r = client.get(f"{base}/status", headers=h)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    worker: subprocess.Popen[bytes]
    with session_worker(settings, "gw-live") as worker:
        poll("an owner", lambda: status()["owner"] == "gw-live")
        r = client.post(f"{base}/connect", json={"method": "code"}, headers=h)
        assert r.status_code == 202, r.text
        code = poll(
            "a pairing code",
            lambda: (
                (c := client.get(f"{base}/pairing-code", headers=h)).status_code == 200 and c.json()
            ),
        )
        assert status()["state"] == "code_pending"
        typed = sim.post(f"/control/accounts/{OWN_NUMBER}/link", json={"code": code["code"]})
        assert typed.status_code == 200, typed.text
        poll("connected", lambda: status()["connected"])
        assert client.get(f"{base}/pairing-code", headers=h).status_code == 404

        diag = client.get(f"{base}/diagnose", params={"phone": f"+{OWN_NUMBER}"}, headers=h)
        assert diag.json()["phone"]["on_whatsapp"] is True
        diag = client.get(f"{base}/diagnose", params={"phone": "+5511900009999"}, headers=h)
        assert diag.json()["phone"]["on_whatsapp"] is False
        assert any("no WhatsApp account" in a for a in diag.json()["advice"])

        assert client.post(f"{base}/disconnect", headers=h).status_code == 202
        poll("disconnected", lambda: status()["state"] == "disconnected")
        assert client.post(f"{base}/connect", json={"method": "qr"}, headers=h).status_code == 202
        poll("connected again", lambda: status()["connected"])

        assert client.post(f"{base}/logout", headers=h).status_code == 202
        poll("logged out", lambda: status()["state"] == "logged_out")
        account = sim.get(f"/control/accounts/{OWN_NUMBER}").json()
        assert [d["device"] for d in account["devices"]] == [0]
    assert worker.returncode == 0
    sim.close()
