"""The outbound actor on real Postgres and on SQLite (the embedded default) (DESIGN §3.3–§3.6):
per-chat order with retries, progressive retries from the outbox, permanent failures, pause on
463, parking while disconnected without burning attempts, stopping when fenced out, batched
claims (one head per chat, fenced), and idle actors that wake on a known due time or a safety
rescan without a wake-up. The WhatsApp side is a scripted `Sender` (the session's send path).
Actors here rescan only hourly unless a test says otherwise, so nothing relies on polling."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.bus import EventBus
from storage.crypto import Keyring
from storage.leases import Lease, Leases
from storage.models import Instance, OutboxMessage, OutboxStatus, WebhookDelivery, utcnow
from storage.repositories import instances, outbox, tenants, webhooks
from workers.delivery import Pacer, RetryPolicy, SendFailure
from workers.session.actor import OutboundActor, OutboundMessage, SendFailed, StatusEvents

Factory = sessionmaker[Session]


class ScriptedSender:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.attempts: list[str] = []
        self.failures: dict[str, list[str]] = {}  # text → failure codes for its next attempts
        self.always: dict[str, str] = {}  # text → failure code on every attempt
        self.is_connected = True
        self.progress = asyncio.Event()

    def connected(self) -> bool:
        return self.is_connected

    async def send(self, message: OutboundMessage) -> None:
        text = str(message.payload["text"])
        self.attempts.append(text)
        self.progress.set()
        code = self.always.get(text)
        if code is None and self.failures.get(text):
            code = self.failures[text].pop(0)
        if code:
            raise SendFailed(SendFailure(code, f"scripted {code}"))
        self.sent.append(text)


class Rig:
    def __init__(self, pg: Factory, keyring: Keyring) -> None:
        self.pg = pg
        self.keyring = keyring
        self.rescan = 3600.0
        self.uniform: Callable[[float, float], float] = lambda a, b: a
        self.events: StatusEvents | None = None
        with pg.begin() as s:
            tenant = tenants.create_tenant(s, f"actor-{uuid.uuid4().hex[:6]}")
            self.tenant_id = tenant.id
            self.instance_id = instances.create_instance(s, keyring, tenant.id, "desk").id
        self.leases = Leases(pg, ttl=60)
        lease = self.leases.acquire(self.instance_id, "w1")
        assert lease is not None
        self.lease: Lease = lease
        self.sender = ScriptedSender()
        self.actor = self.make_actor()

    def make_actor(self) -> OutboundActor:
        return OutboundActor(
            instance_id=self.instance_id,
            lease=lambda: self.lease,
            sessions=self.pg,
            sender=self.sender,
            policy=RetryPolicy(schedule=(0.05, 0.1), jitter=0.0, max_attempts=3),
            pacer=Pacer(rate=1000, burst=1000, uniform=lambda a, b: a),
            uniform=self.uniform,
            loop_time=lambda: asyncio.get_running_loop().time(),
            events=self.events,
            rescan=self.rescan,
        )

    def accept(self, chat: str, text: str, due_in: float = 0.0) -> None:
        with self.pg.begin() as s:
            row, _ = outbox.accept_outbound(
                s,
                tenant_id=self.tenant_id,
                instance_id=self.instance_id,
                idempotency_key=f"{chat}-{text}",
                wa_message_id=f"3EB0{uuid.uuid4().hex[:18]}",
                chat_jid=f"{chat}@s.whatsapp.net",
                kind="text",
                payload={"text": text},
            )
            if due_in:
                row.next_attempt_at = utcnow() + timedelta(seconds=due_in)

    def fence(self, lease: Lease | None = None) -> outbox.Fence:
        lease = lease or self.lease
        return outbox.Fence(self.instance_id, lease.owner, lease.token, utcnow())

    def rows(self) -> dict[str, OutboxMessage]:
        with self.pg() as s:
            return {r.payload["text"]: r for r in s.scalars(select(OutboxMessage))}

    async def run_until(self, done: Callable[[], bool], limit: float = 30) -> None:
        self.sender.progress = asyncio.Event()  # bound to this run's event loop
        self.actor = self.make_actor()  # a stopped actor is not restarted
        task = asyncio.create_task(self.actor.run())
        try:
            async with asyncio.timeout(limit):
                while not await asyncio.to_thread(done):
                    self.sender.progress.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.sender.progress.wait(), 0.5)
        finally:
            self.actor.stop()
            await task


@pytest.fixture
def rig(db: Factory, keyring: Keyring) -> Rig:
    return Rig(db, keyring)


def _by_chat(texts: list[str], chat: str) -> list[str]:
    return [t for t in texts if t.startswith(chat)]


def test_sends_every_chat_in_accept_order(rig: Rig) -> None:
    for n in range(1, 5):
        for chat in ("A", "B", "C"):
            rig.accept(chat, f"{chat}{n}")
    asyncio.run(rig.run_until(lambda: len(rig.sender.sent) == 12))
    for chat in ("A", "B", "C"):
        assert _by_chat(rig.sender.sent, chat) == [f"{chat}{n}" for n in range(1, 5)]
    rows = rig.rows()
    assert {r.status for r in rows.values()} == {OutboxStatus.SENT}
    assert {r.attempts for r in rows.values()} == {1}
    with rig.pg() as s:
        assert s.get(Instance, rig.instance_id).messages_sent == 12  # type: ignore[union-attr]


def test_a_retry_keeps_its_chat_in_order_and_does_not_block_others(rig: Rig) -> None:
    rig.sender.failures["A1"] = ["timeout"]
    for text in ("A1", "A2", "A3", "B1", "B2"):
        rig.accept(text[0], text)
    asyncio.run(rig.run_until(lambda: len(rig.sender.sent) == 5))
    assert _by_chat(rig.sender.sent, "A") == ["A1", "A2", "A3"]
    assert rig.sender.sent.index("B2") < rig.sender.sent.index("A1")  # B flowed meanwhile
    a1 = rig.rows()["A1"]
    assert (a1.status, a1.attempts, a1.last_error_code) == (OutboxStatus.SENT, 2, "timeout")


def test_permanent_and_exhausted_failures(rig: Rig) -> None:
    rig.sender.always["A1"] = "not_on_whatsapp"
    rig.sender.always["B1"] = "timeout"
    for text in ("A1", "A2", "B1", "B2"):
        rig.accept(text[0], text)
    asyncio.run(rig.run_until(lambda: sorted(rig.sender.sent) == ["A2", "B2"]))
    rows = rig.rows()
    assert (rows["A1"].status, rows["A1"].attempts, rows["A1"].last_error_code) == (
        OutboxStatus.FAILED,
        1,
        "not_on_whatsapp",
    )
    assert (rows["B1"].status, rows["B1"].attempts) == (OutboxStatus.FAILED, 3)
    assert rig.sender.attempts.count("B1") == 3


def test_463_pauses_the_instance_until_resumed(rig: Rig) -> None:
    rig.sender.failures["A1"] = ["463"]
    rig.accept("A", "A1")
    rig.accept("A", "A2")

    def paused() -> bool:
        with rig.pg() as s:
            return bool(s.get(Instance, rig.instance_id).outbound_paused)  # type: ignore[union-attr]

    asyncio.run(rig.run_until(paused))
    assert rig.sender.sent == []
    with rig.pg.begin() as s:
        assert s.get(Instance, rig.instance_id).pause_reason == "463"  # type: ignore[union-attr]
        s.execute(update(Instance).values(outbound_paused=False))  # resume
        s.execute(update(OutboxMessage).values(next_attempt_at=OutboxMessage.created_at))
    asyncio.run(rig.run_until(lambda: len(rig.sender.sent) == 2))
    assert rig.sender.sent == ["A1", "A2"]


def test_parked_while_disconnected_without_burning_attempts(rig: Rig) -> None:
    rig.sender.is_connected = False
    rig.accept("A", "A1")
    rig.accept("A", "A2")

    async def scenario() -> None:
        task = asyncio.create_task(rig.actor.run())
        await asyncio.sleep(0.3)  # let it look at the backlog while disconnected
        assert rig.sender.attempts == []
        rig.sender.is_connected = True
        rig.sender.failures["A1"] = ["closed"]  # the socket drops mid-send once
        rig.actor.wake()
        async with asyncio.timeout(30):
            while len(rig.sender.sent) < 2:
                rig.sender.progress.clear()
                await rig.sender.progress.wait()
                rig.actor.wake()
        rig.actor.stop()
        await task

    asyncio.run(scenario())
    assert rig.sender.sent == ["A1", "A2"]
    assert rig.rows()["A1"].attempts == 1  # the drop mid-send was not counted


def test_stops_when_fenced_out(rig: Rig) -> None:
    rig.accept("A", "A1")
    rig.leases.release(rig.lease)
    other = rig.leases.acquire(rig.instance_id, "w2")  # someone else owns it now
    assert other is not None

    async def scenario() -> None:
        await asyncio.wait_for(rig.actor.run(), 30)  # returns by itself: fenced out

    asyncio.run(scenario())
    assert rig.sender.sent == []
    assert rig.rows()["A1"].status is OutboxStatus.QUEUED


__all__ = ["Any"]


def test_an_early_receipt_does_not_stop_the_actor(rig: Rig) -> None:
    """A delivery receipt can move a `sending` row to `delivered` (via the routing worker)
    before the actor records the server ack; the actor must carry on, not think it lost its
    lease."""
    rig.accept("A", "A1")
    rig.accept("A", "A2")
    original = rig.sender.send

    async def send_with_early_receipt(message: OutboundMessage) -> None:
        await original(message)
        if message.payload["text"] == "A1":

            def receipt() -> None:
                with rig.pg.begin() as s:
                    s.execute(
                        update(OutboxMessage)
                        .where(OutboxMessage.id == message.outbox_id)
                        .values(status=OutboxStatus.DELIVERED)
                    )

            await asyncio.to_thread(receipt)

    rig.sender.send = send_with_early_receipt  # type: ignore[method-assign]
    asyncio.run(rig.run_until(lambda: len(rig.sender.sent) == 2))
    rows = rig.rows()
    assert rows["A1"].status is OutboxStatus.DELIVERED
    assert rows["A1"].sent_at is not None
    assert rows["A2"].status is OutboxStatus.SENT


def test_a_claim_takes_one_head_per_chat_and_only_under_the_fence(rig: Rig) -> None:
    for text in ("A1", "A2", "B1", "B2", "C1"):
        rig.accept(text[0], text)
    with rig.pg.begin() as s:
        claimed = outbox.claim_heads(s.connection(), rig.fence(), 10)
    assert sorted(str(c.payload["text"]) for c in claimed) == ["A1", "B1", "C1"]
    rows = rig.rows()
    assert {t for t, r in rows.items() if r.status is OutboxStatus.SENDING} == {"A1", "B1", "C1"}
    with rig.pg.begin() as s:  # a head left `sending` (a crash) is claimed again, nothing after it
        again = outbox.claim_heads(s.connection(), rig.fence(), 10)
    assert sorted(str(c.payload["text"]) for c in again) == ["A1", "B1", "C1"]
    with rig.pg.begin() as s:  # the limit: the heads that fell due first
        assert len(outbox.claim_heads(s.connection(), rig.fence(), 2)) == 2
    stale = rig.fence()
    rig.leases.release(rig.lease)
    other = rig.leases.acquire(rig.instance_id, "w2")
    assert other is not None
    with rig.pg.begin() as s:
        conn = s.connection()
        assert outbox.claim_heads(conn, stale, 10) == []
        assert not outbox.mark_sent(conn, stale, claimed[0].id, utcnow())
        assert not outbox.is_fenced_in(conn, stale)
        assert len(outbox.claim_heads(conn, rig.fence(other), 10)) == 3
    assert {r.status for r in rig.rows().values() if r.status is OutboxStatus.SENT} == set()


def test_a_fenced_out_owner_sends_nothing_more_of_its_batch(rig: Rig) -> None:
    """Three chats are claimed in one batch; the lease moves to another worker during the first
    send: the owner records nothing, sends nothing more and stops; the new owner claims all
    three (the first is sent again with its WhatsApp message id)."""
    for text in ("A1", "B1", "C1"):
        rig.accept(text[0], text)
    original = rig.sender.send
    taken: list[Lease] = []

    async def send_then_lose_the_lease(message: OutboundMessage) -> None:
        await original(message)
        if not taken:

            def take_over() -> None:
                rig.leases.release(rig.lease)
                lease = rig.leases.acquire(rig.instance_id, "w2")
                assert lease is not None
                taken.append(lease)

            await asyncio.to_thread(take_over)

    rig.sender.send = send_then_lose_the_lease  # type: ignore[method-assign]

    async def scenario() -> None:
        await asyncio.wait_for(rig.actor.run(), 30)  # returns by itself: fenced out

    asyncio.run(scenario())
    assert len(rig.sender.sent) == 1
    rows = rig.rows()
    assert {r.status for r in rows.values()} == {OutboxStatus.SENDING}
    with rig.pg.begin() as s:
        heads = outbox.claim_heads(s.connection(), rig.fence(taken[0]), 10)
    assert sorted(str(c.payload["text"]) for c in heads) == ["A1", "B1", "C1"]
    assert {c.wa_message_id for c in heads} == {r.wa_message_id for r in rows.values()}


def test_an_idle_actor_wakes_for_a_retry_without_a_wake_up(rig: Rig) -> None:
    """Nothing wakes the actor and it rescans only hourly: the retry leaves at its
    next_attempt_at, which the actor learned when it recorded the failure."""
    rig.sender.failures["A1"] = ["timeout"]
    rig.accept("A", "A1")
    asyncio.run(rig.run_until(lambda: rig.sender.sent == ["A1"]))
    assert rig.sender.attempts == ["A1", "A1"]
    assert rig.rows()["A1"].attempts == 2


def test_an_idle_actor_wakes_when_a_head_falls_due(rig: Rig) -> None:
    """A row due later (a previous owner's retry) is sent when due, without a wake-up."""
    rig.accept("A", "A1", due_in=0.5)
    asyncio.run(rig.run_until(lambda: rig.sender.sent == ["A1"]))
    assert rig.actor.passes >= 2  # the first pass found it not yet due


def test_the_safety_rescan_finds_a_row_accepted_without_a_wake_up(rig: Rig) -> None:
    rig.rescan = 0.2

    async def scenario() -> None:
        rig.sender.progress = asyncio.Event()
        sleeping = asyncio.Event()

        def uniform(a: float, b: float) -> float:
            sleeping.set()  # the actor draws its rescan jitter when a pass is over
            return a

        rig.uniform = uniform
        actor = rig.make_actor()
        task = asyncio.create_task(actor.run())
        try:
            async with asyncio.timeout(30):
                await sleeping.wait()  # the first pass found nothing and the actor sleeps
                await asyncio.to_thread(rig.accept, "A", "A1")  # no wake-up is sent
                while not rig.sender.sent:
                    rig.sender.progress.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(rig.sender.progress.wait(), 0.5)
        finally:
            actor.stop()
            await task
        assert actor.passes >= 2

    asyncio.run(scenario())
    assert rig.sender.sent == ["A1"]


def test_sent_and_failed_status_events_are_recorded_with_the_moves(
    rig: Rig, redis_client: redis.Redis, redis_prefix: str
) -> None:
    bus = EventBus(redis_client, f"{redis_prefix}-actor-{uuid.uuid4().hex[:6]}")
    enqueued: list[int] = []
    rig.events = StatusEvents(bus, rig.tenant_id, enqueued.extend)
    with rig.pg.begin() as s:
        webhooks.create_endpoint(s, rig.keyring, rig.tenant_id, "https://hooks.example/x")
    rig.sender.always["B1"] = "not_on_whatsapp"
    for text in ("A1", "A2", "B1"):
        rig.accept(text[0], text)
    asyncio.run(rig.run_until(lambda: len(rig.sender.attempts) == 3))
    with rig.pg() as s:
        deliveries = s.scalars(select(WebhookDelivery)).all()
        assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 3
    statuses = sorted(d.payload["data"]["status"] for d in deliveries)
    assert statuses == ["failed", "sent", "sent"]
    assert sorted(enqueued) == sorted(d.id for d in deliveries)
    events = bus.read(rig.tenant_id).events
    assert sorted((e.data["status"], e.data.get("code")) for e in events) == [
        ("failed", "not_on_whatsapp"),
        ("sent", None),
        ("sent", None),
    ]
    rows = rig.rows()
    assert {e.data["id"] for e in events} == {r.wa_message_id for r in rows.values()}


def test_a_parked_message_expires_on_time_without_a_wake_up(rig: Rig) -> None:
    """Disconnected, the actor sleeps until the earliest expiry it knows of (hourly rescans)."""
    rig.sender.is_connected = False
    rig.accept("A", "A1")
    rig.accept("B", "B1")
    with rig.pg.begin() as s:
        s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.payload["text"].as_string() == "A1")
            .values(expires_at=utcnow() + timedelta(seconds=0.5))
        )

    def expired() -> bool:
        return rig.rows()["A1"].status is OutboxStatus.EXPIRED

    asyncio.run(rig.run_until(expired))
    rows = rig.rows()
    assert (rows["A1"].attempts, rows["A1"].last_error_code) == (0, "expired")
    assert rows["B1"].status is OutboxStatus.QUEUED  # no expiry: parked, untouched
    assert rig.sender.attempts == []
