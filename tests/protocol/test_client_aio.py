"""The asyncio `Client` against the in-process simulator (aio tier): pairing, login, text both
ways, own-phone messages, receipts only after `confirm`, offline delivery, faults."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

import pytest

from protocol.aio import (
    NOT_ON_WHATSAPP,
    Client,
    ClientError,
    Connected,
    Disconnected,
    DisconnectReason,
    LoggedOut,
    Message,
    MessageStatus,
    Paired,
    PairingCode,
    Qr,
    Status,
)
from protocol.core.binary import Node
from protocol.core.media import MediaType
from protocol.core.message import Media, Text
from protocol.simulator import Simulator
from protocol.store import MemoryKeyStore
from tests.protocol.simulated import Events, account, control, linked_client, options

OWNER = "15550001111"
BOB = "15550002222"
SCENARIO_LIMIT = 60.0  # a hung scenario fails instead of blocking the suite


def run(scenario: Callable[[Simulator], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Simulator(seed=b"aio-tests") as sim:
            await account(sim, OWNER, "Owner")
            await account(sim, BOB, "Bob")
            async with asyncio.timeout(SCENARIO_LIMIT):
                await scenario(sim)

    asyncio.run(main())


async def bob_received(sim: Simulator) -> list[dict[str, object]]:
    r = await control(sim, "GET", f"/control/accounts/{BOB}/messages")
    assert r.status_code == 200
    return list(r.json())


def test_qr_link_login_and_text_both_ways() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(sim, OWNER)
        paired = next(e for e in events.seen if isinstance(e, Paired))
        paired_jid = f"{OWNER}:1@s.whatsapp.net"
        assert str(paired.jid) == paired_jid
        restart = next(e for e in events.seen if isinstance(e, Disconnected))
        assert restart.reason is DisconnectReason.RESTART_REQUIRED
        assert restart.will_reconnect

        msg_id = await client.send_text(f"{BOB}@s.whatsapp.net", "hello bob")
        await events.next(MessageStatus, lambda s: s.id == msg_id and s.status is Status.SERVER_ACK)
        await events.next(MessageStatus, lambda s: s.id == msg_id and s.status is Status.DELIVERED)
        got = await bob_received(sim)
        assert [(m["id"], m["text"], m["from"]) for m in got] == [
            (msg_id, "hello bob", f"{OWNER}:1@s.whatsapp.net")
        ]

        r = await control(
            sim, "POST", f"/control/accounts/{BOB}/messages", {"to": OWNER, "text": "hi"}
        )
        bob_id = r.json()["id"]
        incoming = await events.next(Message, lambda m: m.id == bob_id)
        assert incoming.content == Text("hi")
        assert not incoming.from_me
        assert incoming.chat.user == BOB
        assert incoming.push_name == "Bob"
        assert await client.confirm(bob_id)

        r = await control(
            sim, "POST", f"/control/accounts/{OWNER}/messages", {"to": BOB, "text": "from my phone"}
        )
        mine = await events.next(Message, lambda m: m.id == r.json()["id"])
        assert mine.from_me
        assert mine.chat.user == BOB
        assert mine.content == Text("from my phone")
        await client.confirm(mine.id)

        # A second message reuses the session (msg, not pkmsg) and still arrives.
        second = await client.send_text(BOB, "again")
        await events.next(MessageStatus, lambda s: s.id == second and s.status is Status.DELIVERED)
        from_companion = [m["text"] for m in await bob_received(sim) if m["from"] == paired_jid]
        assert from_companion == ["hello bob", "again"]
        await client.stop()

    run(scenario)


def test_restart_logs_in_without_qr_and_gets_offline_messages() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, store = await linked_client(sim, OWNER)
        r = await control(
            sim, "POST", f"/control/accounts/{BOB}/messages", {"to": OWNER, "text": "one"}
        )
        first = await events.next(Message, lambda m: m.id == r.json()["id"])
        # Never confirmed: after a dropped socket the server delivers it again and the client
        # hands it out again (it cannot decrypt it twice).
        device = f"{OWNER}:1@s.whatsapp.net"
        await control(sim, "POST", "/control/faults", {"kind": "drop", "device": device})
        again_first = await events.next(Message, lambda m: m.id == first.id)
        assert again_first.offline
        assert again_first.content == Text("one")
        await client.stop()

        r = await control(
            sim, "POST", f"/control/accounts/{BOB}/messages", {"to": OWNER, "text": "two"}
        )
        second_id = r.json()["id"]
        again = Client(store, options(sim))
        events = Events(again)
        await again.start()
        await events.next(Connected)
        assert not any(isinstance(e, Qr) for e in events.seen)
        redelivered = await events.next(Message, lambda m: m.id == second_id)
        assert redelivered.offline
        assert redelivered.content == Text("two")
        assert await again.confirm(second_id)
        stats = (await control(sim, "GET", "/control/stats")).json()
        assert stats["delivery_counts"][first.id] >= 2
        assert stats["offline_delivered"] >= 1
        await again.stop()

    run(scenario)


def test_a_number_without_an_account_fails_without_sending() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(sim, OWNER)
        before = (await control(sim, "GET", "/control/stats")).json()["messages_relayed"]
        msg_id = await client.send_text("15550009999@s.whatsapp.net", "anyone there?")
        failed = await events.next(MessageStatus, lambda s: s.id == msg_id)
        assert (failed.status, failed.reason, failed.error) == (Status.ERROR, NOT_ON_WHATSAPP, None)
        # Nothing went out (not even the copy for our own phone), and the session goes on.
        bob_id = await client.send_text(f"{BOB}@s.whatsapp.net", "hi bob")
        await events.next(MessageStatus, lambda s: s.id == bob_id and s.status is Status.SERVER_ACK)
        after = (await control(sim, "GET", "/control/stats")).json()["messages_relayed"]
        assert after == before + 1
        await client.stop()

    run(scenario)


def test_decrypted_but_unconfirmed_message_survives_the_process() -> None:
    # The process dies after decrypting (the ratchet moved on, in the store) but before the
    # application confirmed: the server redelivers a message that can no longer be decrypted,
    # and a new client on the same store hands it out from the store's inbox, exactly once.
    async def scenario(sim: Simulator) -> None:
        client, events, store = await linked_client(sim, OWNER)
        r = await control(
            sim, "POST", f"/control/accounts/{BOB}/messages", {"to": OWNER, "text": "kept"}
        )
        msg_id = r.json()["id"]
        await events.next(Message, lambda m: m.id == msg_id)
        await client.stop()  # no confirm: as if the process had died here

        again = Client(store, options(sim))
        events = Events(again)
        await again.start()
        redelivered = await events.next(Message, lambda m: m.id == msg_id)
        assert redelivered.content == Text("kept")
        assert redelivered.offline
        assert await again.confirm(msg_id)
        assert store.get_inbox([msg_id]) == {}
        await again.stop()

        # Confirmed now: a third start gets no copy (the server has the receipt).
        third = Client(store, options(sim))
        events = Events(third)
        await third.start()
        await events.next(Connected)
        r = await control(
            sim, "POST", f"/control/accounts/{BOB}/messages", {"to": OWNER, "text": "after"}
        )
        after = await events.next(Message, lambda m: m.id == r.json()["id"])
        assert after.content == Text("after")
        assert [e.id for e in events.seen if isinstance(e, Message)] == [after.id]
        await third.stop()

    run(scenario)


def _has_id(msg_id: str, message: Message) -> bool:
    return message.id == msg_id


def test_confirm_many_acks_a_batch_and_empties_the_inbox() -> None:
    # The session worker confirms a routed batch at once: one inbox write, every receipt sent.
    async def scenario(sim: Simulator) -> None:
        client, events, store = await linked_client(sim, OWNER)
        ids = []
        for text in ("a", "b"):
            r = await control(
                sim, "POST", f"/control/accounts/{BOB}/messages", {"to": OWNER, "text": text}
            )
            msg_id: str = r.json()["id"]
            ids.append(msg_id)
            await events.next(Message, partial(_has_id, msg_id))
        assert await client.confirm_many([*ids, "3EB0NOTRECEIVED"]) == [True, True, False]
        assert store.get_inbox(ids) == {}
        await client.stop()

        again = Client(store, options(sim))
        events = Events(again)
        await again.start()
        await events.next(Connected)
        r = await control(
            sim, "POST", f"/control/accounts/{BOB}/messages", {"to": OWNER, "text": "after"}
        )
        after = await events.next(Message, lambda m: m.id == r.json()["id"])
        assert [e.id for e in events.seen if isinstance(e, Message)] == [after.id]
        await again.stop()

    run(scenario)


def test_pairing_code() -> None:
    async def scenario(sim: Simulator) -> None:
        client = Client(MemoryKeyStore(), options(sim))
        events = Events(client)
        await client.start()
        await events.next(Qr)
        code = await client.request_pairing_code(OWNER)
        assert (await events.next(PairingCode)).code == code
        r = await control(sim, "POST", f"/control/accounts/{OWNER}/link", {"code": code})
        assert r.status_code == 200, r.text
        connected = await events.next(Connected)
        assert connected.jid.user == OWNER
        await client.stop()

    run(scenario)


def test_link_errors() -> None:
    async def scenario(sim: Simulator) -> None:
        r = await control(sim, "POST", f"/control/accounts/{OWNER}/link", {"qr": "nonsense"})
        assert r.status_code == 400
        bogus = "2@abc," + ",".join(["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="] * 3)
        r = await control(sim, "POST", f"/control/accounts/{OWNER}/link", {"qr": bogus})
        assert r.status_code == 404
        assert "error" in r.json()
        r = await control(sim, "POST", "/control/accounts", {"phone": OWNER})
        assert r.status_code == 409
        r = await control(sim, "GET", "/control/info")
        info = r.json()
        assert info["ws_url"] == sim.ws_url
        assert info["dictionaries"] == [2, 3]
        assert bytes.fromhex(info["root_public_key"]) == sim.root_public_key

    run(scenario)


def test_second_login_replaces_the_first() -> None:
    async def scenario(sim: Simulator) -> None:
        first, first_events, store = await linked_client(sim, OWNER)
        second = Client(store, options(sim))
        second_events = Events(second)
        await second.start()
        await second_events.next(Connected)
        gone = await first_events.next(Disconnected)
        assert gone.reason is DisconnectReason.CONNECTION_REPLACED
        assert not gone.will_reconnect
        await first.wait_stopped(15)
        stats = (await control(sim, "GET", "/control/stats")).json()
        assert stats["max_concurrent_logins_per_device"] == 2
        await second.stop()

    run(scenario)


def test_logout_from_the_phone_is_terminal() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(sim, OWNER)
        r = await control(sim, "POST", f"/control/accounts/{OWNER}/devices/1/logout")
        assert r.status_code == 200
        out = await events.next(LoggedOut)
        assert out.reason is DisconnectReason.LOGGED_OUT
        gone = await events.next(Disconnected)
        assert not gone.will_reconnect
        await client.wait_stopped(15)
        r = await control(sim, "POST", f"/control/accounts/{OWNER}/devices/1/logout")
        assert r.status_code == 404

    run(scenario)


@pytest.mark.parametrize("fault", ["drop", "stall"])
def test_reconnects_after_dropped_or_stalled_socket(fault: str) -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(
            sim, OWNER, keepalive_interval=1.0, keepalive_grace=0.5
        )
        device = f"{OWNER}:1@s.whatsapp.net"
        r = await control(sim, "POST", "/control/faults", {"kind": fault, "device": device})
        assert r.json()["affected"] == 1
        lost = await events.next(Disconnected)
        assert lost.will_reconnect
        await events.next(Connected)
        msg_id = await client.send_text(BOB, "after the fault")
        await events.next(MessageStatus, lambda s: s.id == msg_id and s.status is Status.DELIVERED)
        await client.stop()

    run(scenario)


def test_bad_stanzas_stream_errors_and_ack_errors_are_survived() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(sim, OWNER)
        device = f"{OWNER}:1@s.whatsapp.net"
        await control(sim, "POST", "/control/faults", {"kind": "garbage", "device": device})
        msg_id = await client.send_text(BOB, "still alive")
        await events.next(MessageStatus, lambda s: s.id == msg_id and s.status is Status.DELIVERED)

        await control(
            sim, "POST", "/control/faults", {"kind": "ack_error", "phone": BOB, "code": 463}
        )
        refused = await client.send_text(BOB, "refused")
        status = await events.next(MessageStatus, lambda s: s.id == refused)
        assert status.status is Status.ERROR
        assert status.error == 463
        await control(sim, "POST", "/control/faults", {"kind": "clear"})

        await control(
            sim, "POST", "/control/faults", {"kind": "stream_error", "device": device, "code": 503}
        )
        err = await events.next(Disconnected)
        assert err.reason is DisconnectReason.STREAM_ERROR
        assert err.code == 503
        assert err.will_reconnect
        await events.next(Connected)
        await client.stop()

    run(scenario)


def test_refused_login_is_a_temporary_ban() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, store = await linked_client(sim, OWNER)
        await client.stop()
        await control(sim, "POST", "/control/faults", {"kind": "refuse_login", "phone": OWNER})
        again = Client(store, options(sim))
        events = Events(again)
        await again.start()
        banned = await events.next(Disconnected)
        assert banned.reason is DisconnectReason.TEMPORARY_BAN
        assert banned.code == 402
        assert not banned.will_reconnect
        await again.wait_stopped(15)

    run(scenario)


def test_media_round_trip_through_the_simulator_media_endpoint() -> None:
    async def scenario(sim: Simulator) -> None:
        sender, sender_events, _ = await linked_client(sim, OWNER, media_scheme="http")
        receiver, receiver_events, _ = await linked_client(sim, BOB, media_scheme="http")
        picture = bytes(range(256)) * 40
        msg_id = await sender.send_media(
            BOB, MediaType.IMAGE, picture, mimetype="image/png", caption="a picture"
        )
        await sender_events.next(
            MessageStatus, lambda s: s.id == msg_id and s.status is Status.SERVER_ACK
        )
        got = await receiver_events.next(Message, lambda m: m.id == msg_id)
        assert isinstance(got.content, Media)
        assert got.content.caption == "a picture"
        assert await receiver.download(got.content) == picture
        await receiver.confirm(msg_id)
        await sender.stop()
        await receiver.stop()

    run(scenario)


def test_iq_round_trips_errors_and_latency() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(sim, OWNER)
        pong = await client.query("w:p", "get", [Node("ping")])
        assert pong.attr("type") == "result"
        with pytest.raises(ClientError) as refused:
            await client.query("no-such-namespace", "get")
        assert refused.value.details["reason"] == "iq_error"

        await control(sim, "POST", "/control/faults", {"kind": "iq_error", "xmlns": "usync"})
        failed = await client.send_text(BOB, "no devices today")
        status = await events.next(MessageStatus, lambda s: s.id == failed)
        assert (status.status, status.error) == (Status.ERROR, 500)
        await control(sim, "POST", "/control/faults", {"kind": "clear"})

        device = f"{OWNER}:1@s.whatsapp.net"
        fault = {"kind": "latency", "device": device, "seconds": 0.05}
        assert (await control(sim, "POST", "/control/faults", fault)).json()["affected"] == 1
        slow = await client.send_text(BOB, "slowly")
        await events.next(MessageStatus, lambda s: s.id == slow and s.status is Status.DELIVERED)
        await client.stop()

    run(scenario)


def test_client_logout_and_iq_timeout() -> None:
    async def scenario(sim: Simulator) -> None:
        client, events, _ = await linked_client(sim, OWNER)
        device = f"{OWNER}:1@s.whatsapp.net"
        await control(sim, "POST", "/control/faults", {"kind": "stall", "device": device})
        with pytest.raises(ClientError) as late:
            await client.query("w:p", "get", [Node("ping")], seconds=0.5)
        assert late.value.details["reason"] == "iq_timeout"
        await control(sim, "POST", "/control/faults", {"kind": "drop", "device": device})
        await events.next(Disconnected)
        await events.next(Connected)

        await client.logout()
        assert (await events.next(LoggedOut)).reason is DisconnectReason.LOGGED_OUT
        await client.wait_stopped(15)
        account = (await control(sim, "GET", f"/control/accounts/{OWNER}")).json()
        assert [d["device"] for d in account["devices"]] == [0]

    run(scenario)
