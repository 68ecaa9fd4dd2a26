"""The sans-I/O core of the WhatsApp stack: pure functions and state machines over bytes.

Owns: errors (the error tree), inject (rng/clock types), curve (X25519, curve25519
signatures), framing and noise (transport), binary (nodes and token tables), jid, payload
(ClientPayload/DeviceProps builders and the client identity constants), proto (our .proto
files, their generated Python and the `parse` boundary), signal (X3DH, Double Ratchet, sender
keys, as pure functions over records), pairing (QR payload, ADV identity, link code; companion
and primary roles), message (padding, Message wrapping and content, message ids) and media
(key expansion, streaming encryption, upload tokens). The client `Connection` state machine
lives in protocol.client (it calls the key store).

Must not import: asyncio, socket, time, os, random, secrets, threading, websockets, sqlalchemy,
redis, celery, kombu, or protocol.aio / protocol.simulator / protocol.store (enforced by
import-linter). Randomness arrives as `rng(n) -> bytes`, time as `now() -> float`, so every step
replays from a recorded vector.

Entry points: the modules themselves; nothing runs on import.
"""
