"""The KeyStore contract on `SqlKeyStore` (real Postgres and SQLite), plus what only the SQL
store promises: records are sealed at rest, bound to their instance, and survive reopening."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from protocol.store import KeyStore
from storage import migrations
from storage.crypto import Keyring
from storage.db import create_engine_from_url, session_factory
from storage.errors import KeyUnavailable
from storage.keystore import SqlKeyStore
from storage.models import SignalRecord
from storage.repositories import instances, tenants
from tests.protocol.store_contract import KeyStoreContract, StoreFactory


def _factory_for(db: sessionmaker[Session], keyring: Keyring) -> Callable[[], SqlKeyStore]:
    with db.begin() as s:
        tenant_id = tenants.create_tenant(s, f"t-{uuid.uuid4().hex[:8]}").id

    def make() -> SqlKeyStore:
        with db.begin() as s:
            inst = instances.create_instance(s, keyring, tenant_id, f"i-{uuid.uuid4().hex[:8]}")
        return SqlKeyStore.open(db, keyring, inst.id)

    return make


class TestSqlKeyStoreOnPostgres(KeyStoreContract):
    @pytest.fixture
    def store_factory(self, pg: sessionmaker[Session], keyring: Keyring) -> StoreFactory:
        return _factory_for(pg, keyring)


class TestSqlKeyStoreOnSqlite(KeyStoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path, keyring: Keyring) -> Iterator[StoreFactory]:
        url = f"sqlite:///{tmp_path}/keys.sqlite3"
        migrations.upgrade(url)
        engine = create_engine_from_url(url)
        yield _factory_for(session_factory(engine), keyring)
        engine.dispose()


def test_records_are_sealed_and_bound_to_their_instance(
    pg: sessionmaker[Session], keyring: Keyring
) -> None:
    make = _factory_for(pg, keyring)
    a, b = make(), make()
    store: KeyStore = a
    store.put_sessions({"15550001111.0": b"session-state-secret"})
    store.put_device(b"noise-and-identity-keys")
    with pg() as s:
        blobs = [r.ciphertext for r in s.scalars(select(SignalRecord))]
    assert blobs
    assert all(b"session-state-secret" not in blob for blob in blobs)
    assert b.get_sessions(["15550001111.0"]) == {}  # one device never sees another's records
    # A row copied into the other instance does not open there.
    with pg.begin() as s:
        row = s.scalars(select(SignalRecord)).one()
        s.add(
            SignalRecord(
                instance_id=b._instance_id,
                kind=row.kind,
                name=row.name,
                ciphertext=row.ciphertext,
            )
        )
    with pytest.raises(KeyUnavailable):
        b.get_sessions(["15550001111.0"])
    # Reopening (a new process) reads the same state with the master key.
    reopened = SqlKeyStore.open(pg, keyring, a._instance_id)
    assert reopened.get_sessions(["15550001111.0"]) == {"15550001111.0": b"session-state-secret"}
    assert reopened.get_device() == b"noise-and-identity-keys"
    with pytest.raises(KeyUnavailable):
        SqlKeyStore.open(pg, Keyring.from_bytes(b"\x09" * 32), a._instance_id)
