"""The outbound actor on real Postgres (DESIGN §3.3–§3.6): per-chat order with retries,
progressive retries from the outbox, permanent failures, pause on 463, parking while
disconnected without burning attempts, and stopping when fenced out. The WhatsApp side is a
scripted `Sender` (the session's send path)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.crypto import Keyring
from storage.leases import Lease, Leases
from storage.models import Instance, OutboxMessage, OutboxStatus
from storage.repositories import instances, outbox, tenants
from workers.delivery import Pacer, RetryPolicy, SendFailure
from workers.session.actor import OutboundActor, OutboundMessage, SendFailed

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
            uniform=lambda a, b: a,
            loop_time=lambda: asyncio.get_running_loop().time(),
        )

    def accept(self, chat: str, text: str) -> None:
        with self.pg.begin() as s:
            outbox.accept_outbound(
                s,
                tenant_id=self.tenant_id,
                instance_id=self.instance_id,
                idempotency_key=f"{chat}-{text}",
                wa_message_id=f"3EB0{uuid.uuid4().hex[:18]}",
                chat_jid=f"{chat}@s.whatsapp.net",
                kind="text",
                payload={"text": text},
            )

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
def rig(pg: Factory, keyring: Keyring) -> Rig:
    return Rig(pg, keyring)


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
