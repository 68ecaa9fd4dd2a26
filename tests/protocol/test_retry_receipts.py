"""Retry receipts (SPEC §15.4) over real sockets: the asyncio `Client` and the simulator's
phones recover a message that did not decrypt, in both directions, and give up after five.

The simulator's `corrupt` fault breaks the Signal MAC of the next messages delivered to a
device; `forget_session` makes a phone lose its session with a device."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from protocol.aio import Message, MessageStatus, Receipt, Status, Undecryptable
from protocol.client.retry import MAX_RETRIES, RetryCache
from protocol.core.jid import JID
from protocol.core.message import Text
from protocol.core.proto import e2e_pb2
from protocol.simulator import Simulator
from tests.protocol.simulated import account, control, linked_client

OWNER = "15550001111"
BOB = "15550002222"
COMPANION = f"{OWNER}:1@s.whatsapp.net"
SCENARIO_LIMIT = 90.0
POLL = 0.05


def run(scenario: Callable[[Simulator], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Simulator(seed=b"retry-tests") as sim:
            await account(sim, OWNER, "Owner")
            await account(sim, BOB, "Bob")
            async with asyncio.timeout(SCENARIO_LIMIT):
                await scenario(sim)

    asyncio.run(main())


async def fault(sim: Simulator, **body: Any) -> dict[str, Any]:
    r = await control(sim, "POST", "/control/faults", body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def stats(sim: Simulator) -> dict[str, Any]:
    return dict((await control(sim, "GET", "/control/stats")).json())


async def phone_send(sim: Simulator, phone: str, to: str, text: str) -> str:
    r = await control(sim, "POST", f"/control/accounts/{phone}/messages", {"to": to, "text": text})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def received(sim: Simulator, phone: str) -> list[dict[str, Any]]:
    return list((await control(sim, "GET", f"/control/accounts/{phone}/messages")).json())


async def receipts(sim: Simulator, phone: str) -> list[dict[str, Any]]:
    return list((await control(sim, "GET", f"/control/accounts/{phone}/receipts")).json())


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    """Poll a condition; fails (with `check`'s name) when it does not hold in time."""
    try:
        async with asyncio.timeout(seconds):
            while True:  # the state lives behind the control API: poll it
                if await check():
                    return
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"{check.__name__} did not hold within {seconds} s") from None


def test_phone_to_client_recovered_by_a_retry_receipt() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(sim, OWNER)
        await fault(sim, kind="corrupt", device=COMPANION)
        msg_id = await phone_send(sim, BOB, OWNER, "through the retry")
        got = await events.next(Message, lambda m: m.id == msg_id)
        assert got.content == Text("through the retry")
        assert await client.confirm(msg_id)
        assert not await client.confirm(msg_id)

        async def delivered_once() -> bool:
            got = await receipts(sim, BOB)
            mine = [r for r in got if r["id"] == msg_id and r["from"] == COMPANION]
            return [r["type"] for r in mine] == ["retry", None]  # one delivery receipt

        await until(delivered_once)
        s = await stats(sim)
        assert s["corrupted"] == 1
        assert s["retry_receipts"] == 1
        # The session the resend built keeps working for the next message.
        second = await phone_send(sim, BOB, OWNER, "and after")
        after = await events.next(Message, lambda m: m.id == second)
        assert after.content == Text("and after")
        await client.confirm(second)
        assert [e.id for e in events.seen if isinstance(e, Message)] == [msg_id, second]
        await client.stop()

    run(scenario)


def test_own_phone_copy_recovered_by_a_retry_receipt() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(sim, OWNER)
        await fault(sim, kind="corrupt", device=COMPANION)
        msg_id = await phone_send(sim, OWNER, BOB, "sent from my phone")
        mine = await events.next(Message, lambda m: m.id == msg_id)
        assert mine.from_me
        assert mine.chat.user == BOB
        assert mine.content == Text("sent from my phone")
        await client.confirm(msg_id)
        assert [m["text"] for m in await received(sim, BOB)] == ["sent from my phone"]
        assert (await stats(sim))["retry_receipts"] == 1
        await client.stop()

    run(scenario)


def test_client_to_phone_recovered_by_a_retry_receipt() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(sim, OWNER)
        await fault(sim, kind="corrupt", device=f"{BOB}@s.whatsapp.net")
        msg_id = await client.send_text(BOB, "corrupted once")
        await events.next(MessageStatus, lambda s: s.id == msg_id and s.status is Status.DELIVERED)
        retry = next(e for e in events.seen if isinstance(e, Receipt) and e.type == "retry")
        assert retry.ids == (msg_id,)
        assert retry.sender == JID(BOB, "s.whatsapp.net")
        from_companion = [m for m in await received(sim, BOB) if m["from"] == COMPANION]
        assert [(m["id"], m["text"]) for m in from_companion] == [(msg_id, "corrupted once")]
        errors = [e for e in events.seen if isinstance(e, MessageStatus) and e.error is not None]
        assert errors == []

        # The phone lost its session with the companion: a `msg` it cannot read, a retry
        # without keys, and the client starts over from fresh prekeys.
        r = await fault(sim, kind="forget_session", phone=BOB, peer=COMPANION)
        assert r["affected"] == 1
        later = await client.send_text(BOB, "after the phone forgot")
        await events.next(MessageStatus, lambda s: s.id == later and s.status is Status.DELIVERED)
        texts = [m["text"] for m in await received(sim, BOB) if m["from"] == COMPANION]
        assert texts == ["corrupted once", "after the phone forgot"]
        assert (await stats(sim))["retry_receipts"] == 2
        await client.stop()

    run(scenario)


def test_retries_exhausted_give_a_clear_event() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(sim, OWNER)
        await fault(sim, kind="corrupt", device=COMPANION, count=MAX_RETRIES + 5)
        msg_id = await phone_send(sim, BOB, OWNER, "never readable")
        lost = await events.next(Undecryptable, lambda u: u.id == msg_id)
        assert lost.retries == MAX_RETRIES
        assert lost.chat.user == BOB
        assert lost.sender == JID(BOB, "s.whatsapp.net")
        assert not any(isinstance(e, Message) and e.id == msg_id for e in events.seen)
        s = await stats(sim)
        assert s["retry_receipts"] == MAX_RETRIES
        assert s["corrupted"] == MAX_RETRIES + 1
        await fault(sim, kind="clear")
        # Nothing is stuck: the next message arrives on the session the last resend built.
        next_id = await phone_send(sim, BOB, OWNER, "readable again")
        got = await events.next(Message, lambda m: m.id == next_id)
        assert got.content == Text("readable again")
        await client.confirm(next_id)

        # The other way round: the phone gives up on the companion's message.
        await fault(sim, kind="corrupt", device=f"{BOB}@s.whatsapp.net", count=MAX_RETRIES + 5)
        await client.send_text(BOB, "the phone never reads this")

        async def phone_gave_up() -> bool:
            return bool((await stats(sim))["undecryptable"] == 1)

        await until(phone_gave_up)
        assert "the phone never reads this" not in [m["text"] for m in await received(sim, BOB)]
        await client.stop()

    run(scenario)


def test_retry_cache_bounds() -> None:
    cache = RetryCache(sent_limit=3, sent_max_age=100.0, count_limit=2)
    message = e2e_pb2.Message(conversation="x")
    chat = JID(BOB, "s.whatsapp.net")
    for i in range(5):
        cache.remember(f"m{i}", chat, message, now=float(i))
    assert len(cache) == 3
    assert cache.lookup("m1", now=5.0) is None
    found = cache.lookup("m4", now=5.0)
    assert found is not None
    assert found.to == chat
    assert cache.lookup("m2", now=102.5) is None  # older than the age bound
    assert cache.lookup("m4", now=102.5) is not None
    assert [cache.next_count("a"), cache.next_count("a"), cache.next_count("b")] == [1, 2, 1]
    cache.next_count("c")  # evicts "a", the oldest
    assert cache.next_count("a") == 1
    cache.forget_count("b")
    assert cache.next_count("b") == 1
