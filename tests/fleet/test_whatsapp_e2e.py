"""The fleet end to end against the simulator: a real session worker (the production
`workers.session.whatsapp` factory), a real routing worker, real Postgres and Redis.

An instance asked to connect shows a QR (as a `whatsapp:qr` event on the tenant's stream);
the simulated owner phone scans it; the instance connects; an accepted outbound message reaches
the simulated client's phone with the preassigned WhatsApp id; the client's reply lands in
Postgres as contact + message + pending booking; the owner's own phone message becomes a note.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from protocol.simulator import Simulator
from storage.bus import EventBus
from storage.crypto import Keyring
from storage.models import (
    Booking,
    Contact,
    Instance,
    InstanceStatus,
    Message,
    Note,
    OutboxMessage,
    OutboxStatus,
)
from storage.repositories import instances, tenants
from tasks.queues import SEND_MESSAGE_TASK
from tests.fleet.conftest import MASTER_KEY, ROOT, log_file, worker_env

Factory = sessionmaker[Session]
WAIT = 60.0
OWNER = "5511990000001"
CLIENT = "5511990000002"


class SimulatorThread:
    """The simulator on its own event loop thread, for subprocess workers to connect to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sim = Simulator()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Simulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(30)
        return self.sim

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with SimulatorThread() as sim:
        yield sim


def poll(what: str, check: Any) -> Any:
    tick = threading.Event()
    for _ in range(int(WAIT * 10)):
        value = check()
        if value:
            return value
        tick.wait(0.1)  # polling state written by other processes
    raise AssertionError(f"timed out waiting for {what}")


def test_link_send_receive_and_notes(
    routing_worker: subprocess.Popen[bytes],
    producer: Celery,
    fleet_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    simulator: Simulator,
) -> None:
    http = httpx.Client(base_url=simulator.http_url, timeout=WAIT)
    for phone in (OWNER, CLIENT):
        assert http.post("/control/accounts", json={"phone": phone}).status_code == 201
    keyring = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, f"e2e-{uuid.uuid4().hex[:6]}")
        inst = instances.create_instance(s, keyring, tenant.id, "front-desk")
        inst.status = InstanceStatus.CONNECTING  # a connect was requested
        tenant_id, instance_id = tenant.id, inst.id

    settings = fleet_settings.model_copy(
        update={
            "wa_server_url": simulator.ws_url,
            "wa_root_key": simulator.root_public_key.hex(),
            "lease_ttl": 10.0,
            "lease_renew": 2.0,
            "rebalance_interval": 0.2,
            "heartbeat_interval": 0.5,
        }
    )
    log = open(log_file("session-e2e.log"), "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "worker",
            "session",
            "--session-factory",
            "workers.session.whatsapp:make_factory",
            "--node-id",
            "e2e",
        ],
        env=worker_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    bus = EventBus(redis_client, fleet_settings.redis_prefix)
    try:

        def event(kind: str) -> dict[str, Any] | None:
            for e in bus.read(tenant_id).events:
                if e.type == kind:
                    return e.data
            return None

        qr = poll("a QR event", lambda: event("whatsapp:qr"))
        assert (
            http.post(f"/control/accounts/{OWNER}/link", json={"qr": qr["qr"]}).status_code == 200
        )
        poll("connected", lambda: event("whatsapp:connected"))

        def status() -> InstanceStatus:
            with pg() as s:
                return s.get(Instance, instance_id).status  # type: ignore[union-attr]

        poll("instance connected", lambda: status() is InstanceStatus.CONNECTED)

        # Outbound: accept → outbox → owner → simulator → the client's phone.
        sent = producer.send_task(
            SEND_MESSAGE_TASK,
            kwargs={
                "tenant_id": str(tenant_id),
                "instance_id": str(instance_id),
                "to": CLIENT,
                "text": "Seu horário está confirmado",
                "idempotency_key": "appt-1",
            },
        ).get(WAIT)

        def client_inbox() -> list[dict[str, Any]]:
            return list(http.get(f"/control/accounts/{CLIENT}/messages").json())

        received = poll("the client's phone got it", client_inbox)
        assert [(m["id"], m["text"]) for m in received] == [
            (sent["wa_message_id"], "Seu horário está confirmado")
        ]

        def outbox_status() -> OutboxStatus:
            with pg() as s:
                return s.scalars(select(OutboxMessage.status)).one()

        poll(
            "outbox sent",
            lambda: (
                outbox_status() in (OutboxStatus.SENT, OutboxStatus.DELIVERED, OutboxStatus.READ)
            ),
        )

        # Inbound from a client → contact + message + pending booking.
        assert http.post(
            f"/control/accounts/{CLIENT}/messages",
            json={"to": OWNER, "text": "Obrigado! Posso levar minha filha?"},
        ).status_code in (200, 201)
        # The owner's own phone writes to the client → a note (sent "from me").
        assert http.post(
            f"/control/accounts/{OWNER}/messages",
            json={"to": CLIENT, "text": "lembrar: cadeira extra"},
        ).status_code in (200, 201)

        def counts() -> tuple[int, int, int, int]:
            with pg() as s:
                return tuple(
                    int(s.scalar(select(func.count()).select_from(m)) or 0)
                    for m in (Contact, Message, Booking, Note)
                )  # type: ignore[return-value]

        poll("inbound routed", lambda: counts() == (1, 1, 1, 1))
        with pg() as s:
            contact = s.scalars(select(Contact)).one()
            assert contact.phone_number == CLIENT
            assert s.scalars(select(Message.body)).one() == "Obrigado! Posso levar minha filha?"
            assert s.scalars(select(Note.body)).one() == "lembrar: cadeira extra"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        http.close()
