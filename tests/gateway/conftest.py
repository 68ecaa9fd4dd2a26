"""Gateway fixtures: the real app (create_app) on the real test Postgres and Redis, driven with
Starlette's TestClient, plus the fleet's routing worker subprocess where webhook deliveries must
really leave. Tenants, keys and instances are made through the admin and tenant APIs themselves.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from config.settings import Settings
from tasks.inbound import InboundMessage, route
from tests.fleet.conftest import (  # noqa: F401  (fixtures used by the gateway tests)
    MASTER_KEY,
    fleet_settings,
    producer,
    routing_worker,
)
from workers.gateway import create_app

ADMIN_KEY = "test-admin-" + "ab" * 16
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="session")
def gateway_settings(fleet_settings: Settings) -> Settings:  # noqa: F811
    return fleet_settings.model_copy(
        update={"admin_key": SecretStr(ADMIN_KEY), "gateway_rate_limit": 0}
    )


@pytest.fixture(scope="session")
def gateway_app(gateway_settings: Settings) -> FastAPI:
    return create_app(gateway_settings)


@pytest.fixture(scope="session")
def session_client(gateway_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(gateway_app) as client:
        yield client


@pytest.fixture
def client(session_client: TestClient, pg: Any) -> TestClient:
    """The app's client; every table is emptied after the test (the `pg` fixture)."""
    return session_client


@dataclass
class TenantHandle:
    id: str
    name: str
    key: str
    instance_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def key_headers(
        self, client: TestClient, scopes: list[str], instance_id: str | None = None
    ) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_key(client, self.id, scopes, instance_id)}"}


def make_key(
    client: TestClient, tenant_id: str, scopes: list[str], instance_id: str | None = None
) -> str:
    r = client.post(
        f"/v1/tenants/{tenant_id}/api-keys",
        json={"name": f"k-{uuid.uuid4().hex[:6]}", "scopes": scopes, "instance_id": instance_id},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def make_tenant(client: TestClient, phone: str | None = None) -> TenantHandle:
    name = f"tenant-{uuid.uuid4().hex[:8]}"
    r = client.post("/v1/tenants", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    tenant_id = r.json()["id"]
    key = make_key(client, tenant_id, ["read", "send", "admin"])
    r = client.post(
        "/v1/instances",
        json={"name": "front-desk", "phone_number": phone},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 201, r.text
    return TenantHandle(tenant_id, name, key, r.json()["id"])


@pytest.fixture
def tenant(client: TestClient) -> TenantHandle:
    return make_tenant(client, "5511900000001")


@pytest.fixture
def other(client: TestClient) -> TenantHandle:
    return make_tenant(client, "5511900000002")


def inbound(
    instance_id: str,
    sender: str,
    text: str = "olá",
    *,
    from_me: bool = False,
    wa_id: str | None = None,
) -> dict[str, Any]:
    """Route one inbound message in-process (the real routing logic, as a worker runs it)."""
    msg = InboundMessage(
        instance_id=instance_id,
        wa_message_id=wa_id or f"3EB0{uuid.uuid4().hex[:18].upper()}",
        chat_jid=f"{sender}@s.whatsapp.net",
        sender_jid=f"{sender}@s.whatsapp.net",
        timestamp=int(time.time()),
        type="text",
        text=text,
        from_me=from_me,
        sender_phone=sender,
        push_name="Maria",
    )
    return route(msg)


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error body, with the expected status (and code)."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details", "retryable", "retry_after"}, body
    assert isinstance(body["code"], str)
    assert body["code"]
    assert isinstance(body["message"], str)
    assert isinstance(body["details"], dict)
    assert isinstance(body["retryable"], bool)
    assert body["retry_after"] is None or isinstance(body["retry_after"], int | float)
    assert "Traceback" not in response.text
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.fixture(scope="session")
def live_url(gateway_app: FastAPI) -> Iterator[str]:
    """The same app served by uvicorn on 127.0.0.1 (an ephemeral port). The socket is bound and
    listening before the server thread starts, so requests queue in its backlog: no waiting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(gateway_app, lifespan="off", log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()
