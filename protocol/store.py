"""The key store: everything one WhatsApp device must remember, as opaque byte records.

`KeyStore` is the interface (a `typing.Protocol`, the mautrix-python model of STYLE.md);
`MemoryKeyStore` is the in-memory implementation; `storage/` implements it in SQL (encrypted
at rest). One contract suite (tests/protocol/test_store_contract.py) runs over all of them.

Rules every implementation keeps:

* one store instance = one WhatsApp device; records are opaque `bytes` made and read by
  `protocol.core.signal` (and the pairing code for the device credentials);
* methods are synchronous (the asyncio client runs them in a worker thread) and safe to call
  from several threads;
* `transaction()` makes everything inside it commit together or not at all, also for the
  memory store; transactions nest (an inner failure that is caught rolls back only the inner
  part). Calls outside a transaction are each atomic on their own;
* batch getters return only the keys that exist; deleting a missing key is not an error;
* prekey ids are handed out by `next_prekey_id()` (starting at 1, never reused, even after a
  prekey was removed), so core can generate the keys from `rng` and the store only persists.

Must not import: storage, tasks, workers, config, and nothing from protocol.core either
(records are bytes here). The glue that loads, decrypts and stores atomically is
`protocol.signal_store`; `protocol.core` must never import this module.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

FIRST_PREKEY_ID = 1  # SPEC §12.3: prekey ids start at 1 and increase


class KeyStore(Protocol):
    """Storage of one device's credentials and Signal state (opaque byte records)."""

    def transaction(self) -> AbstractContextManager[None]:
        """All calls inside commit together when the block exits normally, else none do."""
        ...

    # device credentials (identity, registration id, noise key, adv… — a blob made by pairing)
    def get_device(self) -> bytes | None: ...
    def put_device(self, blob: bytes) -> None: ...

    # 1:1 sessions by Signal address string `name.deviceId` (SPEC §5.2)
    def get_sessions(self, addresses: Sequence[str]) -> dict[str, bytes]: ...
    def put_sessions(self, records: Mapping[str, bytes]) -> None: ...
    def delete_sessions(self, addresses: Sequence[str]) -> None: ...

    # trusted identity key (raw 32 bytes) per Signal address
    def get_identities(self, addresses: Sequence[str]) -> dict[str, bytes]: ...
    def put_identities(self, identities: Mapping[str, bytes]) -> None: ...
    def delete_identities(self, addresses: Sequence[str]) -> None: ...

    # one-time prekeys by 24-bit id
    def next_prekey_id(self) -> int:
        """The id for the next generated prekey: 1 at first, then above every id ever put."""
        ...

    def put_prekeys(self, records: Mapping[int, bytes]) -> None:
        """Store freshly generated prekeys (not yet uploaded)."""
        ...

    def get_prekeys(self, ids: Sequence[int]) -> dict[int, bytes]: ...
    def remove_prekeys(self, ids: Sequence[int]) -> None: ...

    def unuploaded_prekeys(self, limit: int) -> dict[int, bytes]:
        """Up to `limit` prekeys not yet marked uploaded, lowest ids first."""
        ...

    def count_unuploaded_prekeys(self) -> int: ...
    def mark_prekeys_uploaded(self, ids: Sequence[int]) -> None: ...

    # signed prekeys by id
    def get_signed_prekey(self, key_id: int) -> bytes | None: ...
    def put_signed_prekey(self, key_id: int, record: bytes) -> None: ...
    def latest_signed_prekey_id(self) -> int | None:
        """The highest signed prekey id stored (the current one), or None."""
        ...

    def remove_signed_prekey(self, key_id: int) -> None: ...

    # sender keys by name string `<group>::<name>::<device>` (SPEC §5.2)
    def get_sender_keys(self, names: Sequence[str]) -> dict[str, bytes]: ...
    def put_sender_keys(self, records: Mapping[str, bytes]) -> None: ...
    def delete_sender_keys(self, names: Sequence[str]) -> None: ...

    # decrypted inbound messages the application has not confirmed yet, by message id: written
    # in the same transaction as the ratchet step that decrypted them, so a redelivery after a
    # crash (which can no longer be decrypted) is handed out again (SPEC §15.2, DESIGN §3.7)
    def get_inbox(self, message_ids: Sequence[str]) -> dict[str, bytes]: ...
    def put_inbox(self, records: Mapping[str, bytes]) -> None: ...
    def delete_inbox(self, message_ids: Sequence[str]) -> None: ...


class _Missing:
    __slots__ = ()


_MISSING = _Missing()
_Key = tuple[str, object]


class MemoryKeyStore:
    """A `KeyStore` in process memory (tests, the simulator, the embedded demo).

    Transactions keep an undo log of the first old value of every key they touch, so a
    rollback costs only what was written. A re-entrant lock serializes threads: a transaction
    holds it from start to end, so other threads never see half of one.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tables: dict[str, dict[object, object]] = {
            "device": {},
            "session": {},
            "identity": {},
            "prekey": {},
            "uploaded": {},
            "signed": {},
            "sender": {},
            "meta": {},
            "inbox": {},
        }
        self._undo: list[dict[_Key, object]] = []

    def __repr__(self) -> str:  # never show key material (DESIGN §3.9)
        return f"MemoryKeyStore(sessions={len(self._tables['session'])})"

    # -- transactions ------------------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[None]:
        return self._transaction()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            log: dict[_Key, object] = {}
            self._undo.append(log)
            try:
                yield
            except BaseException:
                self._undo.pop()
                for (table, key), old in log.items():
                    if old is _MISSING:
                        self._tables[table].pop(key, None)
                    else:
                        self._tables[table][key] = old
                raise
            self._undo.pop()
            if self._undo:  # nested: the outer transaction must be able to undo this too
                outer = self._undo[-1]
                for k, old in log.items():
                    outer.setdefault(k, old)

    def _set(self, table: str, key: object, value: object) -> None:
        rows = self._tables[table]
        if self._undo:
            self._undo[-1].setdefault((table, key), rows.get(key, _MISSING))
        if value is _MISSING:
            rows.pop(key, None)
        else:
            rows[key] = value

    def _get_many(self, table: str, keys: Sequence[object]) -> dict[object, object]:
        rows = self._tables[table]
        with self._lock:
            return {k: rows[k] for k in keys if k in rows}

    # -- whole-store copy (the simulator's `--data` persistence) -------------------------------

    def export_rows(self) -> dict[str, list[tuple[object, object]]]:
        """Every row, table by table; keys are str or int, values bytes, bool or int."""
        with self._lock:
            return {name: list(rows.items()) for name, rows in self._tables.items()}

    def import_rows(self, tables: Mapping[str, Sequence[tuple[object, object]]]) -> None:
        """Replace the content with rows from `export_rows` (unknown tables are an error)."""
        with self._lock:
            for name in tables:
                if name not in self._tables:
                    raise KeyError(name)
            for name, rows in tables.items():
                self._tables[name] = dict(rows)

    # -- device ------------------------------------------------------------------------------

    def get_device(self) -> bytes | None:
        with self._lock:
            value = self._tables["device"].get("device")
        return value if isinstance(value, bytes) else None

    def put_device(self, blob: bytes) -> None:
        with self._lock:
            self._set("device", "device", bytes(blob))

    # -- sessions ----------------------------------------------------------------------------

    def get_sessions(self, addresses: Sequence[str]) -> dict[str, bytes]:
        return _typed(self._get_many("session", addresses))

    def put_sessions(self, records: Mapping[str, bytes]) -> None:
        with self._lock:
            for address, record in records.items():
                self._set("session", address, bytes(record))

    def delete_sessions(self, addresses: Sequence[str]) -> None:
        with self._lock:
            for address in addresses:
                self._set("session", address, _MISSING)

    # -- identities --------------------------------------------------------------------------

    def get_identities(self, addresses: Sequence[str]) -> dict[str, bytes]:
        return _typed(self._get_many("identity", addresses))

    def put_identities(self, identities: Mapping[str, bytes]) -> None:
        with self._lock:
            for address, key in identities.items():
                self._set("identity", address, bytes(key))

    def delete_identities(self, addresses: Sequence[str]) -> None:
        with self._lock:
            for address in addresses:
                self._set("identity", address, _MISSING)

    # -- prekeys -----------------------------------------------------------------------------

    def next_prekey_id(self) -> int:
        with self._lock:
            value = self._tables["meta"].get("next_prekey_id", FIRST_PREKEY_ID)
        assert isinstance(value, int)
        return value

    def put_prekeys(self, records: Mapping[int, bytes]) -> None:
        with self._lock:
            top = self.next_prekey_id()
            for key_id, record in records.items():
                self._set("prekey", key_id, bytes(record))
                self._set("uploaded", key_id, False)
                top = max(top, key_id + 1)
            self._set("meta", "next_prekey_id", top)

    def get_prekeys(self, ids: Sequence[int]) -> dict[int, bytes]:
        rows = self._get_many("prekey", ids)
        return {k: v for k, v in rows.items() if isinstance(k, int) and isinstance(v, bytes)}

    def remove_prekeys(self, ids: Sequence[int]) -> None:
        with self._lock:
            for key_id in ids:
                self._set("prekey", key_id, _MISSING)
                self._set("uploaded", key_id, _MISSING)

    def unuploaded_prekeys(self, limit: int) -> dict[int, bytes]:
        with self._lock:
            flags = self._tables["uploaded"]
            rows = self._tables["prekey"]
            ids = sorted(k for k, up in flags.items() if not up and isinstance(k, int))[:limit]
            return {k: v for k in ids if isinstance(v := rows[k], bytes)}

    def count_unuploaded_prekeys(self) -> int:
        with self._lock:
            return sum(1 for up in self._tables["uploaded"].values() if not up)

    def mark_prekeys_uploaded(self, ids: Sequence[int]) -> None:
        with self._lock:
            flags = self._tables["uploaded"]
            for key_id in ids:
                if key_id in flags:
                    self._set("uploaded", key_id, True)

    # -- signed prekeys ----------------------------------------------------------------------

    def get_signed_prekey(self, key_id: int) -> bytes | None:
        with self._lock:
            value = self._tables["signed"].get(key_id)
        return value if isinstance(value, bytes) else None

    def put_signed_prekey(self, key_id: int, record: bytes) -> None:
        with self._lock:
            self._set("signed", key_id, bytes(record))

    def latest_signed_prekey_id(self) -> int | None:
        with self._lock:
            ids = [k for k in self._tables["signed"] if isinstance(k, int)]
        return max(ids) if ids else None

    def remove_signed_prekey(self, key_id: int) -> None:
        with self._lock:
            self._set("signed", key_id, _MISSING)

    # -- sender keys -------------------------------------------------------------------------

    def get_sender_keys(self, names: Sequence[str]) -> dict[str, bytes]:
        return _typed(self._get_many("sender", names))

    def put_sender_keys(self, records: Mapping[str, bytes]) -> None:
        with self._lock:
            for name, record in records.items():
                self._set("sender", name, bytes(record))

    def delete_sender_keys(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._set("sender", name, _MISSING)

    # -- unconfirmed inbound messages ----------------------------------------------------------

    def get_inbox(self, message_ids: Sequence[str]) -> dict[str, bytes]:
        return _typed(self._get_many("inbox", message_ids))

    def put_inbox(self, records: Mapping[str, bytes]) -> None:
        with self._lock:
            for message_id, record in records.items():
                self._set("inbox", message_id, bytes(record))

    def delete_inbox(self, message_ids: Sequence[str]) -> None:
        with self._lock:
            for message_id in message_ids:
                self._set("inbox", message_id, _MISSING)


def _typed(rows: dict[object, object]) -> dict[str, bytes]:
    return {k: v for k, v in rows.items() if isinstance(k, str) and isinstance(v, bytes)}
