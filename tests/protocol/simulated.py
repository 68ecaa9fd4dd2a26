"""Test scaffolding around the real simulator: an event reader, a linked-client factory, and
the simulator as its own process for outside clients (Baileys).

No mocks: every test talks to a real simulator on 127.0.0.1:0 over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from protocol.aio import Client, ClientOptions, Connected, Event, Qr
from protocol.simulator import Simulator
from protocol.store import MemoryKeyStore

E = TypeVar("E")
WAIT = 15.0  # generous per-event bound; events normally arrive in milliseconds


@dataclass(slots=True)
class Events:
    """Reads a client's event queue; `next` waits for one kind, keeping what it skipped."""

    client: Client
    seen: list[Event] = field(default_factory=list)

    async def next(
        self, kind: type[E], where: Callable[[E], bool] | None = None, seconds: float = WAIT
    ) -> E:
        async with asyncio.timeout(seconds):
            while True:
                event = await self.client.events.get()
                self.seen.append(event)
                if isinstance(event, kind) and (where is None or where(event)):
                    return event


def options(sim: Simulator, **kw: Any) -> ClientOptions:
    base: dict[str, Any] = {
        "url": sim.ws_url,
        "trusted_root": sim.root_public_key,
        "prekey_upload_count": 30,
        "backoff_base": 0.05,
        "backoff_cap": 0.5,
    }
    base.update(kw)
    return ClientOptions(**base)


async def control(
    sim: Simulator, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.http_url, timeout=WAIT) as http:
        return await http.request(method, path, json=body)


async def account(sim: Simulator, phone: str, name: str | None = None) -> None:
    r = await control(sim, "POST", "/control/accounts", {"phone": phone, "name": name or phone})
    assert r.status_code == 201, r.text


async def linked_client(
    sim: Simulator, phone: str, store: MemoryKeyStore | None = None, **kw: Any
) -> tuple[Client, Events, MemoryKeyStore]:
    """A companion of `phone` paired by QR and logged in."""
    store = store or MemoryKeyStore()
    client = Client(store, options(sim, **kw))
    events = Events(client)
    await client.start()
    qr = await events.next(Qr)
    r = await control(sim, "POST", f"/control/accounts/{phone}/link", {"qr": qr.code})
    assert r.status_code == 200, r.text
    await events.next(Connected)
    return client, events, store


@contextmanager
def simulator_process(seed: str) -> Iterator[tuple[dict[str, Any], httpx.Client]]:
    """`python -m protocol.simulator` as its own process (for outside clients such as Baileys):
    yields its `/control/info` line and a control client."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "protocol.simulator", "--port", "0", "--seed", seed],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        base = info["ws_url"].removesuffix("/ws/chat").replace("ws://", "http://")
        with httpx.Client(base_url=base, timeout=30) as http:
            yield info, http
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
