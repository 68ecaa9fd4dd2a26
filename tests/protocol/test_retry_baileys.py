"""Retry receipts between our client and Baileys 7.0.0-rc14 (SPEC §15.4), through the simulator.

Our `Client` is a companion of OWNER, Baileys a companion of BOB. The simulator's `corrupt`
fault breaks the Signal MAC of one message to a device; that device sends a retry receipt in
its own client's format and the other client, as the original sender, must resend the same id
so it gets through: Baileys asks and we answer, then we ask and Baileys answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol.aio import Client, ClientOptions, Connected, Message, Qr, Receipt
from protocol.core.message import Text
from protocol.store import MemoryKeyStore
from tests.interop.node import NodePeer
from tests.protocol.simulated import Events, simulator_process

pytestmark = pytest.mark.interop

OWNER = "15550001111"
BOB = "15550002222"
OURS = f"{OWNER}:1@s.whatsapp.net"
BAILEYS = f"{BOB}:1@s.whatsapp.net"
WAIT_MS = 30_000
SCENARIO_LIMIT = 120.0


@pytest.fixture
def simulator() -> Iterator[tuple[dict[str, Any], httpx.Client]]:
    with simulator_process("retry-baileys") as running:
        yield running


def link_baileys(peer: NodePeer, info: dict[str, Any], http: httpx.Client, auth: Path) -> None:
    peer.call(
        {"op": "start", "url": info["ws_url"], "root": info["root_public_key"]} | {"dir": str(auth)}
    )
    qr = peer.call({"op": "wait", "kind": "qr", "timeoutMs": WAIT_MS})
    linked = http.post(f"/control/accounts/{BOB}/link", json={"qr": qr})
    assert linked.status_code == 200, linked.text
    assert peer.call({"op": "wait", "kind": "close", "timeoutMs": WAIT_MS})["code"] == 515
    assert peer.call({"op": "wait", "kind": "open", "timeoutMs": WAIT_MS})["me"] == BAILEYS


def test_retry_receipts_between_our_client_and_baileys(
    simulator: tuple[dict[str, Any], httpx.Client], tmp_path: Path
) -> None:
    info, http = simulator
    for phone in (OWNER, BOB):
        assert http.post("/control/accounts", json={"phone": phone}).status_code == 201
    peer = NodePeer("baileys_client.mjs", timeout=90)

    def call(request: dict[str, Any]) -> Any:
        return peer.call(request)

    async def scenario() -> None:
        await asyncio.to_thread(link_baileys, peer, info, http, tmp_path / "auth")
        client = Client(
            MemoryKeyStore(),
            ClientOptions(
                url=info["ws_url"],
                trusted_root=bytes.fromhex(info["root_public_key"]),
                prekey_upload_count=30,
            ),
        )
        events = Events(client)
        await client.start()
        qr = await events.next(Qr)
        linked = await asyncio.to_thread(
            http.post, f"/control/accounts/{OWNER}/link", json={"qr": qr.code}
        )
        assert linked.status_code == 200, linked.text
        await events.next(Connected)

        # Baileys cannot decrypt our message: its retry receipt, our resend.
        await asyncio.to_thread(
            http.post, "/control/faults", json={"kind": "corrupt", "device": BAILEYS}
        )
        sent = await client.send_text(BOB, "to baileys, twice")
        retry = await events.next(Receipt, lambda r: r.type == "retry")
        assert retry.ids == (sent,)
        assert str(retry.sender) == BAILEYS
        got = await asyncio.to_thread(call, {"op": "wait", "kind": "message", "timeoutMs": WAIT_MS})
        assert (got["id"], got["text"], got["fromMe"]) == (sent, "to baileys, twice", False)

        # We cannot decrypt Baileys' message: our retry receipt, Baileys' resend.
        await asyncio.to_thread(
            http.post, "/control/faults", json={"kind": "corrupt", "device": OURS}
        )
        their_id = await asyncio.to_thread(
            call, {"op": "send", "to": f"{OWNER}@s.whatsapp.net", "text": "to wafleet, twice"}
        )
        incoming = await events.next(Message, lambda m: m.id == their_id, seconds=WAIT_MS / 1000)
        assert incoming.content == Text("to wafleet, twice")
        assert str(incoming.sender) == BAILEYS
        assert await client.confirm(their_id)
        stats = (await asyncio.to_thread(http.get, "/control/stats")).json()
        assert stats["corrupted"] == 2
        assert stats["retry_receipts"] >= 2
        await client.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), SCENARIO_LIMIT))
    finally:
        try:
            peer.call({"op": "stop"})
        finally:
            peer.close()
