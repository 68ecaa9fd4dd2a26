"""The thin asyncio client: the `Client` pumps bytes between a websocket and a `Connection`.

Owns: `Client` (connect with the Origin header, IQ futures with timeouts, keepalive with a
timeout → reconnect, reconnect with exponential backoff + full jitter + a cap, none after a
logout or device removal) and `ClientOptions`. Store work (the `Connection` calls the
synchronous `KeyStore`) runs in `asyncio.to_thread`, one call at a time.

Events are the `protocol.client.events` values, re-exported here: `Qr`, `PairingCode`,
`Paired`, `Connected`, `Disconnected`, `LoggedOut`, `Message`, `Receipt`, `MessageStatus`,
`Undecryptable`.

Must not import: protocol.simulator, storage, tasks, workers, config. protocol.core must never
import this package.

Entry point: `Client`.
"""

from protocol.aio.client import Client, ClientError, ClientOptions
from protocol.client.events import (
    NOT_ON_WHATSAPP,
    Connected,
    Disconnected,
    DisconnectReason,
    Event,
    LoggedOut,
    Message,
    MessageStatus,
    Paired,
    PairingCode,
    Qr,
    Receipt,
    Status,
    Undecryptable,
)

__all__ = [
    "NOT_ON_WHATSAPP",
    "Client",
    "ClientError",
    "ClientOptions",
    "Connected",
    "DisconnectReason",
    "Disconnected",
    "Event",
    "LoggedOut",
    "Message",
    "MessageStatus",
    "Paired",
    "PairingCode",
    "Qr",
    "Receipt",
    "Status",
    "Undecryptable",
]
