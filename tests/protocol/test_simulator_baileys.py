"""Issue 5 item 5: an outside client proves the simulator. Baileys 7.0.0-rc14 (npm, unmodified;
its trusted root key set at run time as shared/interop/README.md shows) links by QR with a
simulated phone, restarts on 515 and again later with its saved creds, and exchanges E2E text
both ways with a simulated contact; the owner's phone message reaches it as from-me.

The simulator runs as `python -m protocol.simulator` (its own process), so its entry point is
exercised too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.interop.node import NodePeer
from tests.protocol.simulated import simulator_process

pytestmark = pytest.mark.interop

OWNER = "15550001111"
BOB = "15550002222"
WAIT_MS = 30_000


@pytest.fixture
def simulator() -> Iterator[tuple[dict[str, Any], httpx.Client]]:
    with simulator_process("baileys") as running:
        yield running


def bob_texts(http: httpx.Client) -> list[tuple[str, str]]:
    return [(m["from"], m["text"]) for m in http.get(f"/control/accounts/{BOB}/messages").json()]


def test_baileys_links_reconnects_and_exchanges_text(
    simulator: tuple[dict[str, Any], httpx.Client], tmp_path: Path
) -> None:
    info, http = simulator
    assert http.get("/control/info").json()["root_public_key"] == info["root_public_key"]
    for phone, name in ((OWNER, "Owner"), (BOB, "Bob")):
        assert (
            http.post("/control/accounts", json={"phone": phone, "name": name}).status_code == 201
        )
    peer = NodePeer("baileys_client.mjs", timeout=90)
    start = {"op": "start", "url": info["ws_url"], "root": info["root_public_key"]}
    start["dir"] = str(tmp_path / "auth")
    try:
        peer.call(start)
        qr = peer.call({"op": "wait", "kind": "qr", "timeoutMs": WAIT_MS})
        assert qr.startswith("https://wa.me/settings/linked_devices#")
        linked = http.post(f"/control/accounts/{OWNER}/link", json={"qr": qr})
        assert linked.status_code == 200, linked.text
        assert peer.call({"op": "wait", "kind": "close", "timeoutMs": WAIT_MS})["code"] == 515
        opened = peer.call({"op": "wait", "kind": "open", "timeoutMs": WAIT_MS})
        assert opened["me"] == f"{OWNER}:1@s.whatsapp.net"

        # A fresh socket from the saved creds logs in without a QR.
        peer.call({"op": "stop"})
        peer.call({"op": "wait", "kind": "close", "timeoutMs": WAIT_MS})
        peer.call(start)
        assert peer.call({"op": "wait", "kind": "open", "timeoutMs": WAIT_MS})["me"]

        sent = http.post(f"/control/accounts/{BOB}/messages", json={"to": OWNER, "text": "hi B"})
        got = peer.call({"op": "wait", "kind": "message", "timeoutMs": WAIT_MS})
        assert (got["id"], got["text"], got["fromMe"]) == (sent.json()["id"], "hi B", False)
        assert got["from"] == f"{BOB}@s.whatsapp.net"

        sent_id = peer.call({"op": "send", "to": f"{BOB}@s.whatsapp.net", "text": "from B"})
        # The phone decrypts first and then sends its delivery receipt (no type) to Baileys.
        while True:
            receipt = peer.call({"op": "wait", "kind": "receipt", "timeoutMs": WAIT_MS})
            if receipt["id"] == sent_id and receipt["from"] == f"{BOB}@s.whatsapp.net":
                break
        assert "type" not in receipt
        assert (f"{OWNER}:1@s.whatsapp.net", "from B") in bob_texts(http)

        mine = http.post(f"/control/accounts/{OWNER}/messages", json={"to": BOB, "text": "phone"})
        own = peer.call({"op": "wait", "kind": "message", "timeoutMs": WAIT_MS})
        assert (own["id"], own["text"], own["fromMe"]) == (mine.json()["id"], "phone", True)
        assert own["from"] == f"{BOB}@s.whatsapp.net"
    finally:
        try:
            peer.call({"op": "stop"})
        finally:
            peer.close()
