"""`python -m protocol.simulator --data DIR`: the state survives a restart of the process.

A real simulator process (stopped with SIGTERM, started again on the same DIR), a real client
over real sockets: the same root key, login from stored credentials without a QR, a message
queued for the offline companion before the restart delivered after it, text both ways on the
Signal sessions both sides kept."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol.aio import Client, ClientOptions, Connected, Message, MessageStatus, Qr, Status
from protocol.core.message import Text
from protocol.simulator import persist
from protocol.store import MemoryKeyStore
from tests.protocol.simulated import WAIT, Events

OWNER = "15550001111"
BOB = "15550002222"
COMPANION = f"{OWNER}:1@s.whatsapp.net"
SCENARIO_LIMIT = 120.0


@contextmanager
def simulator(data: Path) -> Iterator[dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "protocol.simulator", "--port", "0", "--data", str(data)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info: dict[str, Any] = json.loads(proc.stdout.readline())
        info["http"] = info["ws_url"].removesuffix("/ws/chat").replace("ws://", "http://")
        yield info
    finally:
        proc.terminate()
        code = proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
        assert code == 0


def options(info: dict[str, Any]) -> ClientOptions:
    return ClientOptions(
        url=info["ws_url"],
        trusted_root=bytes.fromhex(info["root_public_key"]),
        prekey_upload_count=30,
        backoff_base=0.05,
        backoff_cap=0.5,
    )


async def call(info: dict[str, Any], method: str, path: str, body: object = None) -> Any:
    async with httpx.AsyncClient(base_url=info["http"], timeout=WAIT) as http:
        r = await http.request(method, path, json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_state_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "sim"
    store = MemoryKeyStore()

    async def before(info: dict[str, Any]) -> str:
        await call(info, "POST", "/control/accounts", {"phone": OWNER, "name": "Owner"})
        await call(info, "POST", "/control/accounts", {"phone": BOB, "name": "Bob"})
        client = Client(store, options(info))
        events = Events(client)
        await client.start()
        qr = await events.next(Qr)
        await call(info, "POST", f"/control/accounts/{OWNER}/link", {"qr": qr.code})
        await events.next(Connected)
        sent = await client.send_text(BOB, "before the restart")
        await events.next(MessageStatus, lambda s: s.id == sent and s.status is Status.DELIVERED)
        got = await call(
            info, "POST", f"/control/accounts/{BOB}/messages", {"to": OWNER, "text": "hi"}
        )
        incoming = await events.next(Message, lambda m: m.id == got["id"])
        assert await client.confirm(incoming.id)
        await client.stop()
        # The companion is offline: this one waits in the simulator's queue.
        queued = await call(
            info, "POST", f"/control/accounts/{BOB}/messages", {"to": OWNER, "text": "queued"}
        )
        return str(queued["id"])

    async def after(info: dict[str, Any], queued_id: str) -> None:
        client = Client(store, options(info))
        events = Events(client)
        await client.start()
        await events.next(Connected)
        assert not any(isinstance(e, Qr) for e in events.seen)
        queued = await events.next(Message, lambda m: m.id == queued_id)
        assert queued.offline
        assert queued.content == Text("queued")
        assert await client.confirm(queued_id)
        sent = await client.send_text(BOB, "after the restart")
        await events.next(MessageStatus, lambda s: s.id == sent and s.status is Status.DELIVERED)
        got = await call(
            info, "POST", f"/control/accounts/{BOB}/messages", {"to": OWNER, "text": "still here"}
        )
        reply = await events.next(Message, lambda m: m.id == got["id"])
        assert reply.content == Text("still here")
        await client.confirm(reply.id)
        bob = await call(info, "GET", f"/control/accounts/{BOB}/messages")
        assert [m["text"] for m in bob if m["from"] == COMPANION] == [
            "before the restart",
            "after the restart",
        ]
        account = await call(info, "GET", f"/control/accounts/{OWNER}")
        assert [d["device"] for d in account["devices"]] == [0, 1]
        await client.stop()

    async def bounded(coro: Any) -> Any:
        async with asyncio.timeout(SCENARIO_LIMIT):
            return await coro

    with simulator(data) as first:
        queued_id = asyncio.run(bounded(before(first)))
    assert persist.state_path(data).exists()
    with simulator(data) as second:
        assert second["root_public_key"] == first["root_public_key"]
        asyncio.run(bounded(after(second, queued_id)))


def test_a_bad_state_file_is_a_clear_error(tmp_path: Path) -> None:
    persist.state_path(tmp_path).write_text("{not json", encoding="utf-8")
    with pytest.raises(persist.StateError):
        persist.load(tmp_path)
    persist.state_path(tmp_path).write_text(json.dumps({"format": 99}), encoding="utf-8")
    with pytest.raises(persist.StateError):
        persist.load(tmp_path)
