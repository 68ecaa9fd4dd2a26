"""The fleet's event bus: one Redis stream per tenant (DESIGN §4 "event pub/sub").

Channel naming: `<prefix>:events:<tenant_id>` is a Redis stream; each entry has one field
`event` holding the JSON event `{"type", "instance_id", "timestamp", "data"}`; the entry id is
the event id. Session workers and routing tasks publish; the gateway reads with XREAD, and a
reconnecting client resumes after its last event id for as long as the stream retains it
(trimmed to about `maxlen` entries per tenant). Event types are the gateway's names:
`whatsapp:qr`, `whatsapp:pairing-code`, `whatsapp:connected`, `whatsapp:disconnected`,
`whatsapp:logged-out`, `whatsapp:qr-exhausted`, `whatsapp:message`, `whatsapp:message-status`,
and the booking events `booking:created` (inbound routing opened a contact's pending booking) and
`booking:updated` (a booking's status changed; data carries `status` and `previous_status`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

DEFAULT_MAXLEN = 10_000


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    instance_id: str | None
    timestamp: str
    data: dict[str, Any]

    @classmethod
    def from_entry(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> Event:
        """The event of one stream entry (XREAD/XRANGE answer, sync or asyncio client)."""
        payload = json.loads(fields[b"event"])
        return cls(
            _text(entry_id),
            payload["type"],
            payload["instance_id"],
            payload["timestamp"],
            payload["data"],
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "instance_id": self.instance_id,
            "timestamp": self.timestamp,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Batch:
    events: list[Event]
    gap: bool  # True if events after the requested id were already trimmed away


class EventBus:
    def __init__(self, client: redis.Redis, prefix: str, maxlen: int = DEFAULT_MAXLEN) -> None:
        self._client = client
        self._prefix = prefix
        self._maxlen = maxlen

    @property
    def prefix(self) -> str:
        return self._prefix

    def key(self, *parts: object) -> str:
        """A Redis key under the deployment's prefix (for other fleet state, e.g. semaphores)."""
        return ":".join([self._prefix, *map(str, parts)])

    def stream(self, tenant_id: uuid.UUID | str) -> str:
        return f"{self._prefix}:events:{tenant_id}"

    def publish(
        self,
        tenant_id: uuid.UUID | str,
        event_type: str,
        instance_id: uuid.UUID | str | None,
        data: dict[str, Any],
    ) -> str:
        body = self._body(event_type, instance_id, data)
        entry_id: Any = self._client.xadd(
            self.stream(tenant_id), {"event": body}, maxlen=self._maxlen, approximate=True
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def publish_many(
        self,
        events: Sequence[tuple[uuid.UUID | str, str, uuid.UUID | str | None, dict[str, Any]]],
    ) -> list[str]:
        """Publish (tenant, type, instance, data) events in order, in one Redis round trip."""
        if not events:
            return []
        pipe = self._client.pipeline(transaction=False)
        for tenant_id, event_type, instance_id, data in events:
            pipe.xadd(
                self.stream(tenant_id),
                {"event": self._body(event_type, instance_id, data)},
                maxlen=self._maxlen,
                approximate=True,
            )
        return [_text(entry_id) for entry_id in pipe.execute()]

    @staticmethod
    def _body(event_type: str, instance_id: uuid.UUID | str | None, data: dict[str, Any]) -> str:
        return json.dumps(
            {
                "type": event_type,
                "instance_id": None if instance_id is None else str(instance_id),
                "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "data": data,
            },
            separators=(",", ":"),
        )

    def read(
        self,
        tenant_id: uuid.UUID | str,
        after: str = "0-0",
        count: int = 100,
        block_ms: int | None = None,
    ) -> Batch:
        """Events after `after` (an event id, or "$" for only new ones), oldest first."""
        key = self.stream(tenant_id)
        gap = False
        if after not in {"$", "0", "0-0"}:
            first: Any = self._client.xrange(key, count=1)
            if first and id_before(after, _text(first[0][0])):
                gap = True  # the client's last event is older than anything retained
        raw: Any = self._client.xread({key: after}, count=count, block=block_ms)
        events: list[Event] = []
        for _stream, entries in raw or []:
            for entry_id, fields in entries:
                events.append(Event.from_entry(entry_id, fields))
        return Batch(events, gap)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def id_before(a: str, b: str) -> bool:
    """Whether stream id `a` sorts before `b` (a malformed `a` counts as before anything)."""

    def parts(x: str) -> tuple[int, int]:
        ms, _, seq = x.partition("-")
        return int(ms), int(seq or 0)

    try:
        return parts(a) < parts(b)
    except ValueError:
        return True
