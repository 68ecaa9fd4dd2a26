"""Envelope encryption at rest: round trip, wrong key, bound ciphertexts, rotation."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.crypto import (
    Keyring,
    MasterKey,
    RecordCipher,
    open_with_master,
    seal_with_master,
    unwrap_data_key,
    wrap_data_key,
)
from storage.errors import KeyUnavailable
from storage.models import InstanceDataKey
from storage.repositories import instances, secrets, tenants, webhooks


def test_record_round_trip_and_binding() -> None:
    iid = uuid.uuid4()
    cipher = RecordCipher(iid, os.urandom(32))
    blob = cipher.seal("session", "15550001111.0", b"secret state")
    assert b"secret state" not in blob
    assert cipher.open("session", "15550001111.0", blob) == b"secret state"
    with pytest.raises(KeyUnavailable):  # moved to another record name
        cipher.open("session", "15550002222.0", blob)
    with pytest.raises(KeyUnavailable):  # moved to another kind
        cipher.open("identity", "15550001111.0", blob)
    with pytest.raises(KeyUnavailable):  # moved to another instance
        RecordCipher(uuid.uuid4(), cipher.data_key).open("session", "15550001111.0", blob)
    with pytest.raises(KeyUnavailable):  # tampered
        cipher.open("session", "15550001111.0", blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(KeyUnavailable):  # truncated garbage
        cipher.open("session", "15550001111.0", b"\x01abc")


def test_wrong_master_key_cannot_unwrap() -> None:
    iid = uuid.uuid4()
    right = Keyring.from_bytes(os.urandom(32))
    wrong = Keyring.from_bytes(os.urandom(32))
    wrapped = wrap_data_key(right, iid, b"k" * 32)
    assert unwrap_data_key(right, iid, wrapped) == b"k" * 32
    with pytest.raises(KeyUnavailable) as err:
        unwrap_data_key(wrong, iid, wrapped)
    assert err.value.details["master_key_id"] == right.current.key_id
    # Same key id but a forged blob for another instance.
    with pytest.raises(KeyUnavailable):
        unwrap_data_key(right, uuid.uuid4(), wrapped)


def test_no_key_material_in_reprs() -> None:
    key = os.urandom(32)
    ring = Keyring.from_bytes(key)
    cipher = RecordCipher(uuid.uuid4(), key)
    wrapped = wrap_data_key(ring, uuid.uuid4(), key)
    for text in (repr(ring), repr(MasterKey(key)), repr(cipher), repr(wrapped), str(wrapped)):
        assert key.hex() not in text
        assert repr(key) not in text
    with pytest.raises(KeyUnavailable) as err:
        MasterKey(b"short")
    assert "short" not in str(err.value)
    assert "short" not in repr(err.value)


def test_rotation_rewraps_every_data_key_and_webhook_secret(
    db: sessionmaker[Session],
) -> None:
    old = os.urandom(32)
    new = os.urandom(32)
    old_ring = Keyring.from_bytes(old)
    with db.begin() as s:
        tenant = tenants.create_tenant(s, "salon")
        ids = [instances.create_instance(s, old_ring, tenant.id, f"i{n}").id for n in range(5)]
        endpoint, secret = webhooks.create_endpoint(
            s, old_ring, tenant.id, "https://example.test/h"
        )
        ciphers = {i: secrets.record_cipher(s, old_ring, i) for i in ids}
    sealed = {i: c.seal("creds", "device", f"creds-{i}".encode()) for i, c in ciphers.items()}

    # During rotation both keys are configured; rotate is idempotent.
    both = Keyring.from_bytes(new, (old,))
    report = secrets.rotate_master_key(db, both)
    assert (report.data_keys, report.webhook_secrets) == (5, 1)
    assert secrets.rotate_master_key(db, both).data_keys == 0

    new_only = Keyring.from_bytes(new)
    with db.begin() as s:
        rows = s.scalars(select(InstanceDataKey)).all()
        assert {r.master_key_id for r in rows} == {new_only.current.key_id}
        for i in ids:  # the data key itself is unchanged, so old records still open
            assert secrets.record_cipher(s, new_only, i).open("creds", "device", sealed[i]) == (
                f"creds-{i}".encode()
            )
            with pytest.raises(KeyUnavailable):
                secrets.record_cipher(s, old_ring, i)
        ep = webhooks.endpoint_secrets(new_only, s.get(type(endpoint), endpoint.id))  # type: ignore[arg-type]
        assert ep == (secret,)


def test_master_sealed_secrets_are_purpose_bound() -> None:
    ring = Keyring.from_bytes(os.urandom(32))
    blob = seal_with_master(ring, "webhook:a", b"s3cret")
    assert open_with_master(ring, ring.current.key_id, "webhook:a", blob) == b"s3cret"
    with pytest.raises(KeyUnavailable):
        open_with_master(ring, ring.current.key_id, "webhook:b", blob)
