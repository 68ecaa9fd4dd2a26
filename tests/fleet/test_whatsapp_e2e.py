"""The fleet end to end against the simulator: a real session worker (the production
`workers.session.whatsapp` factory), a real routing worker, real Postgres and Redis.

An instance asked to connect shows a QR (as a `whatsapp:qr` event on the tenant's stream);
the simulated owner phone scans it; the instance connects; an accepted outbound message reaches
the simulated client's phone with the preassigned WhatsApp id; the client's reply lands in
Postgres as contact + message + pending booking; the owner's own phone message becomes a note.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import redis
from celery import Celery
from sqlalchemy import func, select, update
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
from tests.fleet.conftest import (
    MASTER_KEY,
    SESSION_FACTORY,
    poll_until,
    start_session_worker,
    stop_process,
)

Factory = sessionmaker[Session]
WAIT = 60.0
OWNER = "5511990000001"
CLIENT = "5511990000002"


poll = partial(poll_until, wait=WAIT, every=0.1)


@dataclass
class Linked:
    """One instance linked by QR to the simulated OWNER phone, owned by a real session worker."""

    tenant_id: uuid.UUID
    instance_id: uuid.UUID
    http: httpx.Client
    bus: EventBus
    pg: Factory
    producer: Celery
    worker: subprocess.Popen[bytes]

    def event(self, kind: str) -> dict[str, Any] | None:
        for e in self.bus.read(self.tenant_id).events:
            if e.type == kind:
                return e.data
        return None

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [
            e.data for e in self.bus.read(self.tenant_id, count=100_000).events if e.type == kind
        ]

    def instance(self) -> Instance:
        with self.pg() as s:
            inst = s.get(Instance, self.instance_id)
            assert inst is not None
            return inst

    def send(self, to: str, text: str) -> dict[str, Any]:
        result: dict[str, Any] = self.producer.send_task(
            SEND_MESSAGE_TASK,
            kwargs={
                "tenant_id": str(self.tenant_id),
                "instance_id": str(self.instance_id),
                "to": to,
                "text": text,
                "idempotency_key": text,
            },
        ).get(WAIT)
        return result

    def inbox(self, phone: str) -> list[dict[str, Any]]:
        return list(self.http.get(f"/control/accounts/{phone}/messages").json())


@contextmanager
def linked(
    simulator: Simulator,
    fleet_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    producer: Celery,
    *,
    factory: str = SESSION_FACTORY,
    overrides: dict[str, Any] | None = None,
) -> Iterator[Linked]:
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
            "wa_prekey_count": 30,
            **(overrides or {}),
        }
    )
    worker, log = start_session_worker(settings, "e2e", "session-e2e.log", factory)
    rig = Linked(
        tenant_id,
        instance_id,
        http,
        EventBus(redis_client, fleet_settings.redis_prefix),
        pg,
        producer,
        worker,
    )
    try:
        qr = poll("a QR event", lambda: rig.event("whatsapp:qr"))
        linked_now = http.post(f"/control/accounts/{OWNER}/link", json={"qr": qr["qr"]})
        assert linked_now.status_code == 200
        poll("connected", lambda: rig.event("whatsapp:connected"))
        poll("instance connected", lambda: rig.instance().status is InstanceStatus.CONNECTED)
        yield rig
    finally:
        stop_process(worker, log)
        http.close()


def test_link_send_receive_and_notes(
    e2e_routing: subprocess.Popen[bytes],
    e2e_producer: Celery,
    e2e_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    simulator: Simulator,
) -> None:
    with linked(simulator, e2e_settings, pg, redis_client, e2e_producer) as rig:
        # Outbound: accept → outbox → owner → simulator → the client's phone.
        sent = rig.send(CLIENT, "Seu horário está confirmado")
        received = poll("the client's phone got it", lambda: rig.inbox(CLIENT))
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
        assert rig.http.post(
            f"/control/accounts/{CLIENT}/messages",
            json={"to": OWNER, "text": "Obrigado! Posso levar minha filha?"},
        ).status_code in (200, 201)
        # The owner's own phone writes to the client → a note (sent "from me").
        assert rig.http.post(
            f"/control/accounts/{OWNER}/messages",
            json={"to": CLIENT, "text": "lembrar: cadeira extra"},
        ).status_code in (200, 201)

        def counts() -> tuple[int, ...]:
            with pg() as s:
                return tuple(
                    int(s.scalar(select(func.count()).select_from(m)) or 0)
                    for m in (Contact, Message, Booking, Note)
                )

        poll("inbound routed", lambda: counts() == (1, 1, 1, 1))
        with pg() as s:
            contact = s.scalars(select(Contact)).one()
            assert contact.phone_number == CLIENT
            assert s.scalars(select(Message.body)).one() == "Obrigado! Posso levar minha filha?"
            assert s.scalars(select(Note.body)).one() == "lembrar: cadeira extra"


def test_463_pauses_the_instance_until_resumed(
    e2e_routing: subprocess.Popen[bytes],
    e2e_producer: Celery,
    e2e_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    simulator: Simulator,
) -> None:
    """A 463 ack (reach-out timelock) pauses the instance's outbound: the row keeps its code,
    nothing else leaves; once the restriction is gone and outbound resumed, both go out."""
    with linked(simulator, e2e_settings, pg, redis_client, e2e_producer) as rig:
        assert (
            rig.http.post(
                "/control/faults", json={"kind": "ack_error", "phone": CLIENT, "code": 463}
            ).status_code
            == 200
        )
        first = rig.send(CLIENT, "primeira")
        poll("instance paused", lambda: rig.instance().outbound_paused)
        assert rig.instance().pause_reason == "463"
        second = rig.send(CLIENT, "segunda")
        with pg() as s:
            row = s.scalars(
                select(OutboxMessage).where(OutboxMessage.wa_message_id == first["wa_message_id"])
            ).one()
            assert (row.status, row.last_error_code, row.attempts) == (
                OutboxStatus.QUEUED,
                "463",
                1,
            )
        assert rig.inbox(CLIENT) == []
        assert (
            rig.http.post(
                "/control/faults", json={"kind": "ack_error", "phone": CLIENT, "off": True}
            ).status_code
            == 200
        )
        with pg.begin() as s:  # resume outbound, and make the retry due now (not in 5 s)
            s.execute(
                update(Instance)
                .where(Instance.id == rig.instance_id)
                .values(outbound_paused=False, pause_reason=None)
            )
            s.execute(update(OutboxMessage).values(next_attempt_at=OutboxMessage.created_at))
        rig.send(CLIENT, "primeira")  # a repeat wakes the owner (same row, same id)
        got = poll(
            "both delivered in order", lambda: box if len(box := rig.inbox(CLIENT)) == 2 else None
        )
        assert [m["id"] for m in got] == [first["wa_message_id"], second["wa_message_id"]]
