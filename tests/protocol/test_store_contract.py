"""The KeyStore contract (tests/protocol/store_contract.py) on `MemoryKeyStore`, plus what
only the memory store promises (thread serialization)."""

from __future__ import annotations

import threading

import pytest

from protocol.store import KeyStore, MemoryKeyStore
from tests.protocol.store_contract import KeyStoreContract, StoreFactory


class TestMemoryKeyStore(KeyStoreContract):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        return MemoryKeyStore


def test_memory_store_satisfies_protocol() -> None:
    store: KeyStore = MemoryKeyStore()
    assert "MemoryKeyStore" in repr(store)


def test_concurrent_transactions_do_not_lose_updates() -> None:
    store = MemoryKeyStore()
    store.put_sessions({"n.0": (0).to_bytes(4, "big")})
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait(timeout=30)
        for _ in range(250):
            with store.transaction():
                value = int.from_bytes(store.get_sessions(["n.0"])["n.0"], "big")
                store.put_sessions({"n.0": (value + 1).to_bytes(4, "big")})

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert int.from_bytes(store.get_sessions(["n.0"])["n.0"], "big") == 1000
