"""What an instance shows while it is being linked: the current QR code and pairing code.

The instance's owner writes them on `Qr` / `PairingCode` events and clears them when the
instance connects, is logged out or is told to disconnect; the gateway reads them for
GET /v1/instances/{id}/qr and /pairing-code. They live in Redis with a TTL equal to their
expiry, so a stale code disappears by itself even if its owner crashed.

Keys (under the deployment's prefix): `<prefix>:link:<instance_id>:qr` and `...:code`, each a
JSON object. `expires_at` is unix seconds.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

PAIRING_CODE_TTL = 180.0  # seconds a pairing code is shown when the server states no expiry


@dataclass(frozen=True, slots=True)
class ShownQr:
    qr: str
    expires_at: float  # unix seconds
    index: int


@dataclass(frozen=True, slots=True)
class ShownCode:
    code: str
    expires_at: float  # unix seconds


class LinkingCodes:
    def __init__(
        self, client: redis.Redis, prefix: str, now: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._now = now

    def _key(self, instance_id: uuid.UUID | str, what: str) -> str:
        return f"{self._prefix}:link:{instance_id}:{what}"

    def _put(self, key: str, value: dict[str, Any], expires_at: float) -> None:
        ttl_ms = math.ceil((expires_at - self._now()) * 1000)
        if ttl_ms <= 0:
            self._client.delete(key)
            return
        self._client.set(key, json.dumps(value, separators=(",", ":")), px=ttl_ms)

    def put_qr(self, instance_id: uuid.UUID | str, qr: str, expires_at: float, index: int) -> None:
        """Show `qr` until `expires_at`; a pairing code shown before is no longer current."""
        self._client.delete(self._key(instance_id, "code"))
        self._put(
            self._key(instance_id, "qr"),
            {"qr": qr, "expires_at": expires_at, "index": index},
            expires_at,
        )

    def put_code(
        self, instance_id: uuid.UUID | str, code: str, expires_at: float | None = None
    ) -> ShownCode:
        """Show a pairing code (replaces the QR: linking goes on by code)."""
        until = self._now() + PAIRING_CODE_TTL if expires_at is None else expires_at
        self._client.delete(self._key(instance_id, "qr"))
        self._put(self._key(instance_id, "code"), {"code": code, "expires_at": until}, until)
        return ShownCode(code, until)

    def qr(self, instance_id: uuid.UUID | str) -> ShownQr | None:
        raw: Any = self._client.get(self._key(instance_id, "qr"))
        if raw is None:
            return None
        value = json.loads(raw)
        return ShownQr(str(value["qr"]), float(value["expires_at"]), int(value["index"]))

    def code(self, instance_id: uuid.UUID | str) -> ShownCode | None:
        raw: Any = self._client.get(self._key(instance_id, "code"))
        if raw is None:
            return None
        value = json.loads(raw)
        return ShownCode(str(value["code"]), float(value["expires_at"]))

    def clear(self, instance_id: uuid.UUID | str) -> None:
        self._client.delete(self._key(instance_id, "qr"), self._key(instance_id, "code"))


__all__ = ["PAIRING_CODE_TTL", "LinkingCodes", "ShownCode", "ShownQr"]
