"""wafleet's own WhatsApp Web multi-device stack (facts: shared/protocol/SPEC.md).

Owns:
    protocol.core       sans-I/O: framing, Noise, binary nodes, JIDs, protobuf, Signal, pairing,
                        media crypto, the `Connection` state machine. Bytes in, events/bytes out.
    protocol.store      the `KeyStore` interface (typing.Protocol) and `MemoryKeyStore`.
    protocol.signal_store  Signal operations over a `KeyStore`: load records, run the pure
                        protocol.core.signal functions, store results in one transaction.
    protocol.client     the client `Connection` state machine (sans-I/O, over a `KeyStore`),
                        its events and the device credentials record.
    protocol.aio        the thin asyncio `Client`: websocket, IQ by id, keepalive, reconnect.
    protocol.simulator  a protocol-faithful local WhatsApp server for tests, demo and benchmarks.

Must not import: storage, tasks, workers, config (it is the bottom layer; settings arrive as
plain values). protocol.core imports no asyncio, socket, time, os, random/secrets, websockets,
sqlalchemy, redis or celery; randomness and time are injected (protocol.core.inject).
protocol.simulator is imported only by tests, the demo and its own __main__.

Entry points: `python -m protocol.simulator`; `protocol.aio.Client`.
"""
