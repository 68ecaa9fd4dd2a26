"""Opening an instance's secrets, and master-key rotation (`wafleet keys rotate`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.crypto import (
    Keyring,
    RecordCipher,
    WrappedKey,
    open_with_master,
    rewrap_data_key,
    seal_with_master,
    unwrap_data_key,
)
from storage.errors import NotFound
from storage.models import InstanceDataKey, WebhookEndpoint, utcnow

ROTATE_BATCH = 200


def record_cipher(session: Session, keyring: Keyring, instance_id: uuid.UUID) -> RecordCipher:
    """The cipher for an instance's records; KeyUnavailable if the master key does not fit."""
    row = session.get(InstanceDataKey, instance_id)
    if row is None:
        raise NotFound(
            "instance has no data key (deleted or never created)", instance=str(instance_id)
        )
    data_key = unwrap_data_key(keyring, instance_id, WrappedKey(row.master_key_id, row.wrapped_key))
    return RecordCipher(instance_id, data_key)


@dataclass(frozen=True, slots=True)
class RotationReport:
    data_keys: int
    webhook_secrets: int


def rotate_master_key(factory: sessionmaker[Session], keyring: Keyring) -> RotationReport:
    """Re-wrap every data key and re-seal every webhook secret under `keyring.current`.

    Runs in short transactions of ROTATE_BATCH rows so live processes are never blocked for
    long; rows already under the current key are skipped, so an interrupted rotation can simply
    be run again. Rows wrapped by a key missing from the keyring raise KeyUnavailable.
    """
    current = keyring.current.key_id
    data_keys = 0
    while True:
        with factory.begin() as session:
            rows = session.scalars(
                select(InstanceDataKey)
                .where(InstanceDataKey.master_key_id != current)
                .limit(ROTATE_BATCH)
                .with_for_update()
            ).all()
            for row in rows:
                wrapped = rewrap_data_key(
                    keyring, row.instance_id, WrappedKey(row.master_key_id, row.wrapped_key)
                )
                row.master_key_id, row.wrapped_key = wrapped.master_key_id, wrapped.blob
                row.rotated_at = utcnow()
            data_keys += len(rows)
        if len(rows) < ROTATE_BATCH:
            break
    secrets = 0
    while True:
        with factory.begin() as session:
            endpoints = session.scalars(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.master_key_id != current)
                .limit(ROTATE_BATCH)
                .with_for_update()
            ).all()
            for ep in endpoints:
                purpose = f"webhook:{ep.id}"
                secret = open_with_master(keyring, ep.master_key_id, purpose, ep.secret_ciphertext)
                ep.secret_ciphertext = seal_with_master(keyring, purpose, secret)
                if ep.previous_secret_ciphertext is not None:
                    prev = open_with_master(
                        keyring,
                        ep.master_key_id,
                        purpose + ":previous",
                        ep.previous_secret_ciphertext,
                    )
                    ep.previous_secret_ciphertext = seal_with_master(
                        keyring, purpose + ":previous", prev
                    )
                ep.master_key_id = current
            secrets += len(endpoints)
        if len(endpoints) < ROTATE_BATCH:
            break
    return RotationReport(data_keys=data_keys, webhook_secrets=secrets)
