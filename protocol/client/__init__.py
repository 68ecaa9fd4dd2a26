"""The client side of the protocol as a sans-I/O state machine, over a `KeyStore`.

Owns: `Connection` (python-websockets style: `receive_data(bytes)`, `events()`,
`data_to_send()`, with `rng` and `now` injected) for one socket's life — intro + Noise
handshake, registration or login payload, node framing, IQ ids, QR and pairing-code pairing,
prekeys, sending and receiving 1:1 text, receipts and retry receipts, stream errors — the
typed events it emits (`events.py`), the persisted device credentials (`device.py`) and the
bounded memory retry receipts need (`retry.py`: recent sent plaintexts, retry counts).

It sits outside protocol.core because it calls the synchronous `KeyStore` through
protocol.signal_store (protocol.core must not import the store); it is still sans-I/O: no
asyncio, sockets, clock or randomness of its own (import-linter enforces it). The asyncio
`protocol.aio.Client` runs `Connection` calls in a worker thread, since a SQL store blocks.

Must not import: asyncio, socket, time, os, random, secrets, threading, websockets,
protocol.aio, protocol.simulator, storage, tasks, workers, config.

Entry points: `Connection`, `Device`, the event classes.
"""

from protocol.client.connection import Connection, ConnectionState
from protocol.client.device import Device, load_or_create_device
from protocol.client.events import (
    NOT_ON_WHATSAPP,
    Connected,
    Disconnected,
    DisconnectReason,
    Event,
    IqResponse,
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
    "Connected",
    "Connection",
    "ConnectionState",
    "Device",
    "DisconnectReason",
    "Disconnected",
    "Event",
    "IqResponse",
    "LoggedOut",
    "Message",
    "MessageStatus",
    "Paired",
    "PairingCode",
    "Qr",
    "Receipt",
    "Status",
    "Undecryptable",
    "load_or_create_device",
]
