"""Inbound batching of one session: decrypted messages → one `wafleet.route_inbound_batch`.

`InboundBatcher.add` queues a message with its id and the `confirm` of the client that received
it (`Client.confirm_many`: the WhatsApp acks plus one key-store write removing the plaintexts
from the inbox) and returns at once, so the session's event pump keeps reading. Its `run` loop
gathers messages until `max_messages` are waiting or `linger` seconds have passed since the
first one, publishes them as ONE task (a publisher-confirmed `send_task`, in a thread), and only
then confirms them, in order, one call per run of messages from the same client (ack after
persist, DESIGN §3.7, for every message of the batch). While a batch
is being published the next one gathers, so a busy session sends full batches and an idle one
waits at most `linger`. One batcher serves every session of a worker process (their messages
share batches, so a worker with many quiet instances still sends full batches under load).

A failed publish confirms nothing: WhatsApp redelivers those messages (routing is idempotent).
A crash loses only unacknowledged messages, which WhatsApp redelivers too. `flush` publishes
what is waiting at once (a closing session). Confirmations that fail (the socket went away) are
logged and dropped: the server redelivers and routing stores nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

Publish = Callable[[list[dict[str, Any]]], None]  # blocking: returns once the broker has it
Confirm = Callable[[list[str]], Awaitable[object]]  # acks these message ids to WhatsApp


@dataclass(frozen=True, slots=True)
class _Pending:
    payload: dict[str, Any]
    message_id: str
    confirm: Confirm


class InboundBatcher:
    def __init__(self, publish: Publish, *, max_messages: int, linger: float) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self._publish = publish
        self._max = max_messages
        self._linger = max(0.0, linger)
        self._waiting: list[_Pending] = []
        self._arrived = asyncio.Event()
        self._lock = asyncio.Lock()  # one publish at a time: batches leave in arrival order
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the loop on the running event loop unless it already runs (a batcher shared by
        every session of a worker is started by the first that opens)."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self.run())

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def add(self, payload: dict[str, Any], message_id: str, confirm: Confirm) -> None:
        self._waiting.append(_Pending(payload, message_id, confirm))
        self._arrived.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            deadline = loop.time() + self._linger
            while len(self._waiting) < self._max:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            await self._send_some()

    async def flush(self) -> None:
        """Publish (and then confirm) everything waiting now."""
        while self._waiting:
            await self._send_some()

    async def _send_some(self) -> None:
        async with self._lock:
            batch = self._waiting[: self._max]
            del self._waiting[: self._max]
            if not self._waiting:
                self._arrived.clear()
            if not batch:
                return
            try:
                await asyncio.to_thread(self._publish, [p.payload for p in batch])
            except Exception:  # the broker refused or is gone: no ack, WhatsApp redelivers
                logger.exception("publishing %d inbound messages failed", len(batch))
                return
            start = 0
            while start < len(batch):
                confirm = batch[start].confirm
                end = start + 1
                while end < len(batch) and batch[end].confirm == confirm:
                    end += 1  # the same client (bound methods compare equal)
                try:
                    await confirm([p.message_id for p in batch[start:end]])
                except Exception as exc:  # the socket closed: redelivered, stored once
                    logger.info("confirming %d inbound messages failed: %r", end - start, exc)
                start = end
