"""Test scaffolding around the real simulator: an event reader and a linked-client factory.

No mocks: every test talks to an in-process `Simulator` on 127.0.0.1:0 over real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
