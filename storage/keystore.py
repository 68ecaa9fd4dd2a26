"""`SqlKeyStore`: the `protocol.store.KeyStore` interface in SQL, encrypted at rest.

One store = one instance (one WhatsApp device). Records are the opaque bytes made by
`protocol.core`; each is sealed with the instance's data key (storage.crypto.RecordCipher), with
associated data binding it to (instance, kind, name), and kept in `signal_records` (the device
credentials blob in `device_credentials`). Names are zero-padded for numeric ids so the
database orders them like numbers.

Transactions: `transaction()` opens one database transaction for everything inside it (nested
ones become savepoints), so decrypting a pkmsg and consuming its one-time prekey commit together
or not at all. A per-store re-entrant lock serializes threads of one process; across processes
the fleet's lease guarantees a single owner per instance (DESIGN §3.1). Calls made outside a
transaction each run in their own short transaction.

Must not import: tasks, workers, config.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.crypto import Keyring, RecordCipher
from storage.models import DeviceCredentials, SignalRecord, utcnow
from storage.repositories.secrets import record_cipher

FIRST_PREKEY_ID = 1  # SPEC §12.3
_ID_WIDTH = 10  # zero padding of numeric ids (prekey ids are 24-bit, signed prekey ids 32-bit)

SESSION = "session"
IDENTITY = "identity"
PREKEY = "prekey"
SIGNED_PREKEY = "signed_prekey"
SENDER_KEY = "sender_key"
META = "meta"
NEXT_PREKEY_ID = "next_prekey_id"
DEVICE = "device"
INBOX = "inbox"


def _num(key_id: int) -> str:
    return str(key_id).zfill(_ID_WIDTH)


class SqlKeyStore:
    """The encrypted SQL key store of one instance."""

    def __init__(self, factory: sessionmaker[Session], cipher: RecordCipher) -> None:
        self._factory = factory
        self._cipher = cipher
        self._instance_id = cipher.instance_id
        self._lock = threading.RLock()
        self._local = threading.local()

    @classmethod
    def open(
        cls, factory: sessionmaker[Session], keyring: Keyring, instance_id: uuid.UUID
    ) -> SqlKeyStore:
        """The store for `instance_id`; KeyUnavailable/NotFound if its data key cannot open."""
        with factory() as session:
            cipher = record_cipher(session, keyring, instance_id)
        return cls(factory, cipher)

    def __repr__(self) -> str:
        return f"SqlKeyStore(instance={self._instance_id})"

    # -- transactions --------------------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[None]:
        return self._transaction()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            session: Session | None = getattr(self._local, "session", None)
            if session is not None:
                with session.begin_nested():
                    yield
                return
            with self._factory.begin() as session:
                self._local.session = session
                try:
                    yield
                finally:
                    self._local.session = None

    @contextmanager
    def _session(self) -> Iterator[Session]:
        session: Session | None = getattr(self._local, "session", None)
        if session is not None:
            yield session
            return
        with self._lock, self._factory.begin() as own:
            yield own

    # -- records -------------------------------------------------------------------------------

    def _get(self, kind: str, names: Sequence[str]) -> dict[str, bytes]:
        if not names:
            return {}
        with self._session() as s:
            rows = s.execute(
                select(SignalRecord.name, SignalRecord.ciphertext).where(
                    SignalRecord.instance_id == self._instance_id,
                    SignalRecord.kind == kind,
                    SignalRecord.name.in_(list(dict.fromkeys(names))),
                )
            ).all()
        return {name: self._cipher.open(kind, name, blob) for name, blob in rows}

    def _put(self, kind: str, records: Mapping[str, bytes], uploaded: bool | None = None) -> None:
        if not records:
            return
        with self._session() as s:
            existing = {
                r.name: r
                for r in s.scalars(
                    select(SignalRecord).where(
                        SignalRecord.instance_id == self._instance_id,
                        SignalRecord.kind == kind,
                        SignalRecord.name.in_(list(records)),
                    )
                )
            }
            for name, plain in records.items():
                blob = self._cipher.seal(kind, name, bytes(plain))
                row = existing.get(name)
                if row is None:
                    s.add(
                        SignalRecord(
                            instance_id=self._instance_id,
                            kind=kind,
                            name=name,
                            ciphertext=blob,
                            uploaded=uploaded,
                        )
                    )
                else:
                    row.ciphertext = blob
                    row.updated_at = utcnow()
                    if uploaded is not None:
                        row.uploaded = uploaded
            s.flush()

    def _delete(self, kind: str, names: Sequence[str]) -> None:
        if not names:
            return
        with self._session() as s:
            s.execute(
                delete(SignalRecord).where(
                    SignalRecord.instance_id == self._instance_id,
                    SignalRecord.kind == kind,
                    SignalRecord.name.in_(list(names)),
                )
            )

    # -- device credentials --------------------------------------------------------------------

    def get_device(self) -> bytes | None:
        with self._session() as s:
            row = s.get(DeviceCredentials, self._instance_id)
            return None if row is None else self._cipher.open(DEVICE, DEVICE, row.ciphertext)

    def put_device(self, blob: bytes) -> None:
        sealed = self._cipher.seal(DEVICE, DEVICE, bytes(blob))
        with self._session() as s:
            row = s.get(DeviceCredentials, self._instance_id)
            if row is None:
                s.add(DeviceCredentials(instance_id=self._instance_id, ciphertext=sealed))
            else:
                row.ciphertext = sealed
                row.updated_at = utcnow()
            s.flush()

    # -- sessions, identities, sender keys -----------------------------------------------------

    def get_sessions(self, addresses: Sequence[str]) -> dict[str, bytes]:
        return self._get(SESSION, addresses)

    def put_sessions(self, records: Mapping[str, bytes]) -> None:
        self._put(SESSION, records)

    def delete_sessions(self, addresses: Sequence[str]) -> None:
        self._delete(SESSION, addresses)

    def get_identities(self, addresses: Sequence[str]) -> dict[str, bytes]:
        return self._get(IDENTITY, addresses)

    def put_identities(self, identities: Mapping[str, bytes]) -> None:
        self._put(IDENTITY, identities)

    def delete_identities(self, addresses: Sequence[str]) -> None:
        self._delete(IDENTITY, addresses)

    def get_sender_keys(self, names: Sequence[str]) -> dict[str, bytes]:
        return self._get(SENDER_KEY, names)

    def put_sender_keys(self, records: Mapping[str, bytes]) -> None:
        self._put(SENDER_KEY, records)

    def delete_sender_keys(self, names: Sequence[str]) -> None:
        self._delete(SENDER_KEY, names)

    # -- unconfirmed inbound messages ----------------------------------------------------------

    def get_inbox(self, message_ids: Sequence[str]) -> dict[str, bytes]:
        return self._get(INBOX, message_ids)

    def put_inbox(self, records: Mapping[str, bytes]) -> None:
        self._put(INBOX, records)

    def delete_inbox(self, message_ids: Sequence[str]) -> None:
        self._delete(INBOX, message_ids)

    # -- one-time prekeys ----------------------------------------------------------------------

    def next_prekey_id(self) -> int:
        value = self._get(META, [NEXT_PREKEY_ID]).get(NEXT_PREKEY_ID)
        return int.from_bytes(value, "big") if value is not None else FIRST_PREKEY_ID

    def put_prekeys(self, records: Mapping[int, bytes]) -> None:
        if not records:
            return
        with self._session():
            top = max(self.next_prekey_id(), max(records) + 1)
            self._put(PREKEY, {_num(k): v for k, v in records.items()}, uploaded=False)
            self._put(META, {NEXT_PREKEY_ID: top.to_bytes(8, "big")})

    def get_prekeys(self, ids: Sequence[int]) -> dict[int, bytes]:
        return {int(k): v for k, v in self._get(PREKEY, [_num(i) for i in ids]).items()}

    def remove_prekeys(self, ids: Sequence[int]) -> None:
        self._delete(PREKEY, [_num(i) for i in ids])

    def unuploaded_prekeys(self, limit: int) -> dict[int, bytes]:
        with self._session() as s:
            rows = s.execute(
                select(SignalRecord.name, SignalRecord.ciphertext)
                .where(self._unuploaded())
                .order_by(SignalRecord.name)
                .limit(limit)
            ).all()
        return {int(name): self._cipher.open(PREKEY, name, blob) for name, blob in rows}

    def count_unuploaded_prekeys(self) -> int:
        with self._session() as s:
            count = s.scalar(
                select(func.count()).select_from(SignalRecord).where(self._unuploaded())
            )
            return int(count or 0)

    def mark_prekeys_uploaded(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._session() as s:
            for row in s.scalars(
                select(SignalRecord).where(
                    SignalRecord.instance_id == self._instance_id,
                    SignalRecord.kind == PREKEY,
                    SignalRecord.name.in_([_num(i) for i in ids]),
                )
            ):
                row.uploaded = True
            s.flush()

    def _unuploaded(self) -> ColumnElement[bool]:
        return and_(
            SignalRecord.instance_id == self._instance_id,
            SignalRecord.kind == PREKEY,
            SignalRecord.uploaded.is_(False),
        )

    # -- signed prekeys ------------------------------------------------------------------------

    def get_signed_prekey(self, key_id: int) -> bytes | None:
        return self._get(SIGNED_PREKEY, [_num(key_id)]).get(_num(key_id))

    def put_signed_prekey(self, key_id: int, record: bytes) -> None:
        self._put(SIGNED_PREKEY, {_num(key_id): record})

    def latest_signed_prekey_id(self) -> int | None:
        with self._session() as s:
            name = s.scalar(
                select(func.max(SignalRecord.name)).where(
                    SignalRecord.instance_id == self._instance_id,
                    SignalRecord.kind == SIGNED_PREKEY,
                )
            )
        return int(name) if name is not None else None

    def remove_signed_prekey(self, key_id: int) -> None:
        self._delete(SIGNED_PREKEY, [_num(key_id)])
