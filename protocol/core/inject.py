"""What the sans-I/O core is handed instead of doing I/O itself.

`protocol.core` never reads the clock or an entropy source: callers pass `rng(n) -> n bytes` and
`now() -> unix seconds`. Production passes `os.urandom` and `time.time`; tests and vectors pass
deterministic ones, so every handshake, key and message replays byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

Rng = Callable[[int], bytes]
"""Returns n uniformly random bytes."""

Clock = Callable[[], float]
"""Returns the current unix time in seconds."""


class CountingRng:
    """A deterministic rng for tests and simulations: SHA-256 in counter mode over a seed.

    Not for production keys; it exists so seeded runs (the simulator's `--seed`) replay exactly.
    """

    __slots__ = ("_buffer", "_counter", "_seed")

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out
