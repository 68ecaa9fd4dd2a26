"""Webhooks through a real routing worker and a local HTTP receiver: signed deliveries, persisted
retries, dead-lettering and replay, the SSRF guard, and per-endpoint isolation."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.crypto import Keyring
from storage.models import DeliveryStatus, Instance, WebhookAttempt, WebhookDelivery, utcnow
from storage.repositories import instances, tenants, webhooks
from tasks.inbound import InboundMessage
from tasks.queues import ROUTE_INBOUND_TASK, WEBHOOK_REPLAY_TASK, WEBHOOK_SWEEP_TASK
from tasks.webhooks import BlockedDestination, check_destination
from tests.fleet.conftest import MASTER_KEY

Factory = sessionmaker[Session]
TIMEOUT = 60
KEYRING = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))


@dataclass
class Receiver:
    base: str
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)  # path → statuses to answer
    release_slow: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(
        self, count: int, path: str | None = None
    ) -> list[tuple[str, dict[str, str], bytes]]:
        def matching() -> list[tuple[str, dict[str, str], bytes]]:
            return [r for r in self.requests if path is None or r[0] == path]

        with self.arrived:
            assert self.arrived.wait_for(lambda: len(matching()) >= count, timeout=TIMEOUT), (
                f"expected {count} webhook requests on {path}, got {len(matching())}"
            )
            return matching()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.arrived:
                state.requests.append((self.path, dict(self.headers), body))
                state.arrived.notify_all()
            if self.path == "/slow":
                state.release_slow.wait(TIMEOUT)
            script = state.scripts.get(self.path)
            status = script.pop(0) if script else 200
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.release_slow.set()
    server.shutdown()
    server.server_close()


# Only the message event (a client's first message also opens a booking: `booking:created`).
MESSAGES = ["whatsapp:message"]


def _tenant(pg: Factory, url: str, **filters: Any) -> tuple[Instance, bytes]:
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, f"t-{uuid.uuid4().hex[:8]}")
        inst = instances.create_instance(s, KEYRING, tenant.id, "desk")
        _, secret = webhooks.create_endpoint(s, KEYRING, tenant.id, url, filters or None)
        return inst, secret


def _inbound(app: Celery, inst: Instance, wa_id: str) -> None:
    msg = InboundMessage(
        instance_id=str(inst.id),
        wa_message_id=wa_id,
        chat_jid="5511955550001@s.whatsapp.net",
        sender_jid="5511955550001@s.whatsapp.net",
        timestamp=1_790_000_000,
        type="text",
        text="olá",
        sender_phone="5511955550001",
    )
    app.send_task(ROUTE_INBOUND_TASK, args=[msg.to_dict()]).get(timeout=TIMEOUT)


def _deliveries(pg: Factory) -> list[WebhookDelivery]:
    with pg() as s:
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def _wait_status(pg: Factory, status: DeliveryStatus, count: int = 1) -> list[WebhookDelivery]:
    deadline = threading.Event()
    for _ in range(TIMEOUT * 10):
        rows = [d for d in _deliveries(pg) if d.status is status]
        if len(rows) >= count:
            return rows
        deadline.wait(0.1)  # polling the database for the worker's write
    raise AssertionError(f"no {count} deliveries reached {status}")


def test_signed_delivery(
    routing_worker: subprocess.Popen[bytes], producer: Celery, pg: Factory, receiver: Receiver
) -> None:
    inst, secret = _tenant(pg, f"{receiver.base}/hook", types=MESSAGES)
    _inbound(producer, inst, "3EB0W1")
    path, headers, body = receiver.wait_for(1)[0]
    assert path == "/hook"
    assert headers["X-Wafleet-Event"] == "whatsapp:message"
    ts = headers["X-Wafleet-Timestamp"]
    expected = hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["X-Wafleet-Signature"] == f"v1={expected}"
    event = json.loads(body)
    assert event["type"] == "whatsapp:message"
    assert event["data"]["id"] == "3EB0W1"
    delivered = _wait_status(pg, DeliveryStatus.DELIVERED)
    assert delivered[0].attempts == 1
    assert delivered[0].last_status_code == 200


def test_retries_survive_in_the_outbox_then_dead_and_replay(
    routing_worker: subprocess.Popen[bytes], producer: Celery, pg: Factory, receiver: Receiver
) -> None:
    receiver.scripts["/flaky"] = [500, 503, 200]
    inst, _ = _tenant(pg, f"{receiver.base}/flaky", types=MESSAGES)
    _inbound(producer, inst, "3EB0W2")
    for attempt in (1, 2, 3):
        receiver.wait_for(attempt, "/flaky")
        if attempt < 3:
            # The retry waits in the row (next_attempt_at), not in the broker: move the clock
            # of that row, then let the housekeeping sweep find it, as beat would.
            with pg.begin() as s:
                for _ in range(TIMEOUT * 10):
                    d = s.scalars(select(WebhookDelivery)).one()
                    s.refresh(d)
                    if d.attempts == attempt:
                        break
                    threading.Event().wait(0.1)
                assert d.next_attempt_at > utcnow()
                s.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))
            producer.send_task(WEBHOOK_SWEEP_TASK).get(timeout=TIMEOUT)
    delivered = _wait_status(pg, DeliveryStatus.DELIVERED)[0]
    assert delivered.attempts == 3
    with pg() as s:
        log = s.scalars(select(WebhookAttempt.status_code).order_by(WebhookAttempt.attempt)).all()
    assert log == [500, 503, 200]

    receiver.scripts["/gone"] = [410]
    inst2, _ = _tenant(pg, f"{receiver.base}/gone", types=MESSAGES)
    _inbound(producer, inst2, "3EB0W3")
    dead = _wait_status(pg, DeliveryStatus.DEAD)[0]
    assert dead.last_status_code == 410
    assert producer.send_task(WEBHOOK_REPLAY_TASK, args=[dead.id]).get(timeout=TIMEOUT)
    receiver.wait_for(2, "/gone")
    _wait_status(pg, DeliveryStatus.DELIVERED, count=2)


def test_a_slow_receiver_does_not_delay_another_tenant(
    routing_worker: subprocess.Popen[bytes], producer: Celery, pg: Factory, receiver: Receiver
) -> None:
    slow, _ = _tenant(pg, f"{receiver.base}/slow")
    fast, _ = _tenant(pg, f"{receiver.base}/fast")
    for n in range(4):
        _inbound(producer, slow, f"3EB0S{n}")
    receiver.wait_for(1, "/slow")  # the slow receiver now holds one attempt open
    _inbound(producer, fast, "3EB0F1")
    # The slow receiver is only released once the other tenant's webhook has arrived; if the
    # slow endpoint could occupy every worker slot, this would time out.
    receiver.wait_for(1, "/fast")
    receiver.release_slow.set()
    assert len([r for r in receiver.requests if r[0] == "/slow"]) == 1  # others were deferred


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://10.1.2.3/x",
        "http://[::1]/x",
        "http://169.254.169.254/latest",
        "ftp://example.com/x",
        "http:///nohost",
    ],
)
def test_ssrf_guard_refuses_non_public_destinations(url: str) -> None:
    with pytest.raises(BlockedDestination):
        check_destination(url, allow_private=False)
    if url.startswith("http://") and "///" not in url:
        check_destination(url, allow_private=True)  # explicitly allowed by configuration


def test_beat_sweeps_due_deliveries_nobody_enqueued(
    routing_worker: subprocess.Popen[bytes],
    producer: Celery,
    pg: Factory,
    receiver: Receiver,
    fleet_settings: Any,
) -> None:
    """A delivery whose wake-up was lost (worker restart, gateway crash) is found by beat's
    sweep from the outbox and delivered."""
    from storage.models import WebhookEndpoint
    from storage.repositories.webhooks import enqueue_delivery
    from tests.fleet.conftest import ROOT, log_file, worker_env

    _tenant(pg, f"{receiver.base}/orphan")
    with pg.begin() as s:
        endpoint = s.scalars(select(WebhookEndpoint)).one()
        enqueue_delivery(
            s,
            endpoint=endpoint,
            event_id="orphan-1",
            event_type="whatsapp:test",
            payload={"id": "orphan-1"},
        )
    log = open(log_file("beat.log"), "wb")  # noqa: SIM115
    beat = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "beat"],
        env=worker_env(fleet_settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        receiver.wait_for(1, "/orphan")
        _wait_status(pg, DeliveryStatus.DELIVERED)
    finally:
        beat.terminate()
        beat.wait(timeout=30)
        log.close()
