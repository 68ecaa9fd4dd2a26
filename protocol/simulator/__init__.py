"""A protocol-faithful local WhatsApp server for tests, the demo and benchmarks.

Owns: `Simulator` (one asyncio TCP port serving the WebSocket endpoint `/ws/chat` and the
HTTP JSON control API under `/control`), `ServerConnection` (the sans-I/O server side of one
socket: intro, Noise responder with the simulator's own root key and certificate chain, the
v2/v3 token dictionary the intro asks for), `World` (accounts, devices, prekeys, routing,
offline queues, receipts and retry receipts, faults, stats), `Phone` (a scripted primary
device with its own identity and Signal state in a `MemoryKeyStore`; it answers and sends
retry receipts, SPEC §15.4) and `persist` (the `--data DIR` state file, written atomically).

Server behaviour follows SPEC §17; what the clients do not show is marked [inferred] in the
code. Deterministic for a seed (`CountingRng`), apart from wall-clock timestamps.

Imported only by tests, the demo and its own `__main__` (import-linter enforces it). Must not
import storage, tasks, workers, config, protocol.aio.

Entry points: `python -m protocol.simulator --host H --port P [--seed S] [--data DIR]`;
`Simulator` in process (`async with Simulator(...) as sim`, `data_dir=` to persist).
"""

from protocol.simulator.server import Simulator
from protocol.simulator.world import World

__all__ = ["Simulator", "World"]
