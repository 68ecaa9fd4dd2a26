"""The `KeyStore` contract: one suite every implementation must pass (STYLE.md, the
mautrix-python model).

Each backend subclasses `KeyStoreContract` in its own test module and provides a
`store_factory` fixture returning a callable that makes a fresh, empty store for one device:

    tests/protocol/test_store_contract.py   MemoryKeyStore
    tests/storage/test_sql_key_store.py     SqlKeyStore (Postgres fixture from its conftest)

The methods here must not assume anything the Protocol does not promise.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protocol.store import KeyStore

StoreFactory = Callable[[], KeyStore]


class Boom(Exception):
    """Raised inside transactions to force a rollback."""


class KeyStoreContract:
    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> KeyStore:
        return store_factory()

    # -- plain reads and writes -------------------------------------------------------------

    def test_device_blob(self, store: KeyStore) -> None:
        assert store.get_device() is None
        store.put_device(b"creds-1")
        store.put_device(b"creds-2")
        assert store.get_device() == b"creds-2"

    def test_sessions_batch(self, store: KeyStore) -> None:
        assert store.get_sessions(["a.0", "b.1"]) == {}
        store.put_sessions({"a.0": b"A", "b.1": b"B", "c.2": b"C"})
        assert store.get_sessions(["a.0", "b.1", "zz.9"]) == {"a.0": b"A", "b.1": b"B"}
        store.put_sessions({"a.0": b"A2"})
        store.delete_sessions(["b.1", "missing.0"])
        assert store.get_sessions(["a.0", "b.1", "c.2"]) == {"a.0": b"A2", "c.2": b"C"}
        assert store.get_sessions([]) == {}

    def test_identities_batch(self, store: KeyStore) -> None:
        store.put_identities({"a.0": b"\x01" * 32, "b.0": b"\x02" * 32})
        assert store.get_identities(["a.0", "x.0"]) == {"a.0": b"\x01" * 32}
        store.put_identities({"a.0": b"\x03" * 32})
        store.delete_identities(["b.0", "nope.0"])
        assert store.get_identities(["a.0", "b.0"]) == {"a.0": b"\x03" * 32}

    def test_sender_keys_batch(self, store: KeyStore) -> None:
        name = "120363000000000001@g.us::15551234567::3"
        store.put_sender_keys({name: b"S", "g@g.us::x::0": b"T"})
        assert store.get_sender_keys([name, "other"]) == {name: b"S"}
        store.delete_sender_keys([name, "other"])
        assert store.get_sender_keys([name, "g@g.us::x::0"]) == {"g@g.us::x::0": b"T"}

    def test_inbox_batch(self, store: KeyStore) -> None:
        store.put_inbox({"3EB0A1": b"\x00\x03a.0hello", "3EB0A2": b"x"})
        assert store.get_inbox(["3EB0A1", "missing"]) == {"3EB0A1": b"\x00\x03a.0hello"}
        store.put_inbox({"3EB0A1": b"again"})
        assert store.get_inbox(["3EB0A1"]) == {"3EB0A1": b"again"}
        store.delete_inbox(["3EB0A1", "missing"])
        assert store.get_inbox(["3EB0A1", "3EB0A2"]) == {"3EB0A2": b"x"}

    def test_inbox_rolls_back_with_the_transaction(self, store: KeyStore) -> None:
        store.put_inbox({"kept": b"k"})

        def failing() -> None:
            with store.transaction():
                store.put_sessions({"a.0": b"ratchet"})
                store.put_inbox({"new": b"n"})
                store.delete_inbox(["kept"])
                raise Boom

        with pytest.raises(Boom):
            failing()
        assert store.get_inbox(["kept", "new"]) == {"kept": b"k"}
        assert store.get_sessions(["a.0"]) == {}

    def test_binary_values_round_trip_exactly(self, store: KeyStore) -> None:
        value = bytes(range(256)) * 40
        store.put_sessions({"a.0": value})
        store.put_device(b"\x00")
        assert store.get_sessions(["a.0"])["a.0"] == value
        assert store.get_device() == b"\x00"

    # -- prekeys ----------------------------------------------------------------------------

    def test_prekey_ids_start_at_one_and_never_repeat(self, store: KeyStore) -> None:
        assert store.next_prekey_id() == 1
        store.put_prekeys({1: b"p1", 2: b"p2", 3: b"p3"})
        assert store.next_prekey_id() == 4
        store.remove_prekeys([3, 2])
        assert store.next_prekey_id() == 4
        assert store.get_prekeys([1, 2, 3]) == {1: b"p1"}

    def test_prekey_upload_tracking(self, store: KeyStore) -> None:
        store.put_prekeys({i: b"k%d" % i for i in range(1, 11)})
        assert store.count_unuploaded_prekeys() == 10
        first = store.unuploaded_prekeys(4)
        assert list(first) == [1, 2, 3, 4]
        assert first[2] == b"k2"
        store.mark_prekeys_uploaded(list(first))
        assert store.count_unuploaded_prekeys() == 6
        assert list(store.unuploaded_prekeys(100)) == [5, 6, 7, 8, 9, 10]
        store.remove_prekeys([1, 5])  # used (1) and unuploaded (5) alike
        assert store.count_unuploaded_prekeys() == 5
        assert list(store.unuploaded_prekeys(2)) == [6, 7]
        assert store.get_prekeys([1, 2]) == {2: b"k2"}
        store.mark_prekeys_uploaded([99])  # unknown ids are ignored
        assert store.count_unuploaded_prekeys() == 5

    def test_signed_prekeys(self, store: KeyStore) -> None:
        assert store.latest_signed_prekey_id() is None
        assert store.get_signed_prekey(1) is None
        store.put_signed_prekey(1, b"s1")
        store.put_signed_prekey(2, b"s2")
        assert store.latest_signed_prekey_id() == 2
        assert store.get_signed_prekey(1) == b"s1"
        store.remove_signed_prekey(2)
        assert store.latest_signed_prekey_id() == 1

    # -- transactions -----------------------------------------------------------------------

    def _fill(self, store: KeyStore) -> None:
        store.put_device(b"dev")
        store.put_sessions({"a.0": b"A"})
        store.put_identities({"a.0": b"I" * 32})
        store.put_prekeys({1: b"p1", 2: b"p2"})
        store.mark_prekeys_uploaded([1])
        store.put_signed_prekey(1, b"s1")
        store.put_sender_keys({"g::a::0": b"G"})

    def _snapshot(self, store: KeyStore) -> tuple[object, ...]:
        return (
            store.get_device(),
            store.get_sessions(["a.0", "b.0"]),
            store.get_identities(["a.0", "b.0"]),
            store.get_prekeys([1, 2, 3, 4]),
            store.next_prekey_id(),
            store.count_unuploaded_prekeys(),
            store.unuploaded_prekeys(10),
            store.latest_signed_prekey_id(),
            store.get_signed_prekey(1),
            store.get_signed_prekey(2),
            store.get_sender_keys(["g::a::0", "g::b::0"]),
        )

    def _mutate_everything(self, store: KeyStore) -> None:
        store.put_device(b"dev2")
        store.put_sessions({"a.0": b"A2", "b.0": b"B"})
        store.delete_identities(["a.0"])
        store.put_identities({"b.0": b"J" * 32})
        store.put_prekeys({3: b"p3", 4: b"p4"})
        store.remove_prekeys([1])
        store.mark_prekeys_uploaded([2, 3])
        store.put_signed_prekey(2, b"s2")
        store.remove_signed_prekey(1)
        store.put_sender_keys({"g::b::0": b"H"})
        store.delete_sender_keys(["g::a::0"])

    def test_transaction_commits_everything(self, store: KeyStore) -> None:
        self._fill(store)
        with store.transaction():
            self._mutate_everything(store)
            inside = self._snapshot(store)
        assert self._snapshot(store) == inside
        assert store.get_sessions(["a.0", "b.0"]) == {"a.0": b"A2", "b.0": b"B"}
        assert store.next_prekey_id() == 5

    def test_transaction_rolls_back_everything(self, store: KeyStore) -> None:
        self._fill(store)
        before = self._snapshot(store)
        seen: list[dict[str, bytes]] = []

        def failing() -> None:
            with store.transaction():
                self._mutate_everything(store)
                seen.append(store.get_sessions(["b.0"]))  # visible inside
                raise Boom

        with pytest.raises(Boom):
            failing()
        assert seen == [{"b.0": b"B"}]
        assert self._snapshot(store) == before

    def test_nested_transaction_inner_rollback_keeps_outer_work(self, store: KeyStore) -> None:
        self._fill(store)
        with store.transaction():
            store.put_sessions({"a.0": b"outer"})

            def inner() -> None:
                with store.transaction():
                    store.put_sessions({"a.0": b"inner", "b.0": b"inner"})
                    store.put_prekeys({9: b"p9"})
                    raise Boom

            with pytest.raises(Boom):
                inner()
            assert store.get_sessions(["a.0", "b.0"]) == {"a.0": b"outer"}
        assert store.get_sessions(["a.0", "b.0"]) == {"a.0": b"outer"}
        assert store.get_prekeys([9]) == {}

    def test_outer_rollback_undoes_committed_inner(self, store: KeyStore) -> None:
        self._fill(store)
        before = self._snapshot(store)

        def outer() -> None:
            with store.transaction():
                with store.transaction():
                    self._mutate_everything(store)
                raise Boom

        with pytest.raises(Boom):
            outer()
        assert self._snapshot(store) == before
